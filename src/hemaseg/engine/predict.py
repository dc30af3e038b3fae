"""Model loading (cached) and whole-image prediction: normalise -> resize -> tile -> stitch ->
back to the input's size. Every task's inference goes through :func:`predict_probs`; the network
runs on torch or ONNX Runtime (:mod:`hemaseg.engine.runtime`)."""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

import numpy as np

from hemaseg.core.content import featureless
from hemaseg.core.resize import rescale, resize_probs
from hemaseg.data.transforms import normalize, percentile_range
from hemaseg.engine.runtime import check_backend, load_runner, torch_available
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, predict_tiled
from hemaseg.errors import HemasegUsageError


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``auto`` (cuda when torch sees a GPU) as a torch device name;
    :class:`HemasegUsageError` for another name or ``cuda`` without a GPU."""
    device = str(device)  # a torch.device too
    base, _, index = device.partition(":")
    if base not in ("cpu", "cuda", "auto") or (index and (base == "auto" or not index.isdigit())):
        raise HemasegUsageError("--device", f"{device!r} is not a device; use cpu, cuda (cuda:N) or auto")
    if base == "cpu":
        return device
    cuda = False
    if torch_available():
        import torch

        cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if not cuda:
        raise HemasegUsageError("--device", "cuda: torch sees no GPU on this machine; use cpu or auto")
    return device


# The backend get_model uses when its caller names none: the ``backend`` argument of the
# segment / classify / analyze call it runs inside (:func:`uses_backend`), else None: torch when
# it is installed (training, Grad-CAM and the tests get the torch module as before), else ONNX.
_BACKEND: ContextVar[str | None] = ContextVar("hemaseg_backend", default=None)


@contextmanager
def backend_scope(backend: str | None):
    """Within the block, :func:`get_model` calls that name no backend use ``backend``."""
    token = _BACKEND.set(check_backend(backend) if backend is not None else None)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def uses_backend(fn):
    """Decorator: run ``fn`` in :func:`backend_scope` of its own ``backend`` argument, so every model
    its tasks load by name runs there (``fn`` documents the argument; its default is ``fn``'s)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        with backend_scope(bound.arguments["backend"]):
            return fn(*args, **kwargs)

    return wrapper


def current_backend() -> str:
    """The backend :func:`get_model` uses when its caller names none (see :func:`backend_scope`)."""
    backend = _BACKEND.get()
    if backend is None:
        backend = "torch" if torch_available() else "auto"
    return backend


@lru_cache(maxsize=8)
def _cached_model(name: str, device: str, backend: str = "torch"):
    return load_runner(name, device, backend)


def get_model(model, device: str = "cpu", backend: str | None = None):
    """Return (model, card) for a model name/path, or pass a (model, card) tuple through.

    ``backend``: ``torch`` (the torch module), ``onnx`` (an ONNX Runtime runner), ``auto`` (ONNX
    Runtime where the model has an ONNX file, torch otherwise; :mod:`hemaseg.engine.runtime`);
    None: the enclosing call's (:func:`backend_scope`), else torch when installed, else auto (an ``.onnx``
    file: auto)."""
    if isinstance(model, tuple):
        return model
    if backend is None and _BACKEND.get() is None and str(model).lower().endswith(".onnx"):
        backend = "auto"  # an exported file names its runtime (evaluate and crop have no --backend to say it)
    return _cached_model(str(model), device, check_backend(backend) if backend else current_backend())


def model_of_task(model, task: str, device: str = "cpu", argument: str = "model"):
    """:func:`get_model`, refusing a model of another task (its card's ``"task"``) with a
    :class:`HemasegUsageError` naming ``argument``: a U-Net given as the typer, or a classifier as
    the cells model, would otherwise fail deep inside with an unrelated error."""
    loaded = get_model(model, device)
    found = loaded[1].get("task")
    if found is not None and found != task:
        name = loaded[1].get("name") or (model if isinstance(model, (str, Path)) else "the model")
        raise HemasegUsageError(argument, f"{name} is a {found} model; this needs a {task} model")
    return loaded


def card_range(card: dict, image: np.ndarray, max_pixels: int = 1_000_000) -> np.ndarray:
    """(2, C) percentile range of ``image`` as the model card's normalisation asks, from at most
    about ``max_pixels`` evenly spaced pixels (:func:`~hemaseg.data.transforms.percentile_range`)."""
    norm = card.get("normalization", {})
    return percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0), max_pixels)


def predict_probs(module, card: dict, image: np.ndarray, factor: float = 1.0,
                  tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, prange: np.ndarray | None = None,
                  invert: bool = False, tta: bool = False, check_content: bool = True) -> np.ndarray:
    """Class probabilities of ``image`` (H, W, 3) uint8 resized by ``factor``, back at (K, H, W) float32
    (then one channel per extra output the card lists in ``"aux_outputs"``, a sigmoid in [0, 1]).

    ``invert`` flips the normalised intensities (bright-background images for the nuclei model);
    ``tta`` averages the predictions of the image and its three flips (4x the time). An image with
    nothing in it (:func:`hemaseg.core.content.featureless`) is background (class 0) everywhere:
    a network asked about a flat or noise image answers with confident nonsense.
    ``check_content=False`` skips that check, for callers that made it once for several passes."""
    if check_content and card.get("classes") and featureless(image):
        probs = np.zeros((len(card["classes"]) + len(card.get("aux_outputs", [])), *image.shape[:2]), np.float32)
        probs[0] = 1.0
        return probs
    if tta:
        views = [(slice(None), slice(None)), (slice(None, None, -1), slice(None)),
                 (slice(None), slice(None, None, -1)), (slice(None, None, -1), slice(None, None, -1))]
        acc = None
        for vy, vx in views:
            p = predict_probs(module, card, np.ascontiguousarray(image[vy, vx]), factor, tile, overlap, prange, invert,
                              check_content=False)
            p = p[:, vy, vx]
            acc = p if acc is None else acc + p
        return acc / len(views)
    return resize_probs(predict_scaled(module, card, image, factor, tile, overlap, prange, invert), image.shape[:2])


def predict_scaled(module, card: dict, image: np.ndarray, factor: float = 1.0,
                   tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, prange: np.ndarray | None = None,
                   invert: bool = False) -> np.ndarray:
    """Class probabilities of ``image`` resized by ``factor``, left at the model's scale:
    (K, h, w) float32 with h, w the resized size. :func:`predict_probs` without the content check
    and the resize back, for callers that work region by region (give ``prange``, the whole
    image's range, so every region is normalised alike)."""
    if prange is None:
        norm = card.get("normalization", {})
        prange = percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0))
    small = rescale(image, factor)
    stride = int(getattr(module, "stride", 32))
    return predict_tiled(module, small, tile=tile, overlap=overlap, stride=stride,
                         preprocess=lambda t: normalize(t, prange=prange, invert=invert),
                         softmax_channels=len(card["classes"]) if card.get("classes") else None)
