"""Model registry (a leaf: model families register into it, as timm's do; the package's
``__init__`` imports every family): name -> constructor, and model cards (safetensors + JSON)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hemaseg.errors import HemasegInputError
from hemaseg.io.writers import atomic_path, nan_as_null, write_json
from hemaseg.progress import warn_once

if TYPE_CHECKING:
    from torch import nn

# torch and safetensors.torch are imported inside the functions that build or load a torch model:
# importing hemaseg, and the ONNX Runtime backend of the light install, need neither.

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator adding a constructor to the registry under ``name``."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        return fn

    return deco


def list_models(bundled: bool = False) -> list[str]:
    """Names of the registered architectures, or with ``bundled`` of the models shipped with weights.

    As timm's ``list_models`` and ``list_models(pretrained=True)``.

    Parameters
    ----------
    bundled : bool, optional
        False (default): the architectures :func:`create_model` builds (``unet-dropout``,
        ``smp-unet``, ``maskrcnn-light``, ``wbc-classifier``, ``wbc-ensemble``). True: the models
        shipped in the package's ``weights`` folder, each a ``.safetensors`` file with its model
        card ``.json``, which :func:`load_model`, :func:`hemaseg.segment`, :func:`hemaseg.classify`
        and :func:`hemaseg.analyze` take by name: the segmentation models ``wbc``, ``nuclei``,
        ``smear10``, ``cells`` and ``cells-maskrcnn``, and the WBC-type classifiers ``wbc-type``
        and ``smear10-type``.

    Returns
    -------
    list of str
        The names, sorted.

    Examples
    --------
    >>> "wbc" in list_models(bundled=True)
    True
    >>> import hemaseg
    >>> {"cells", "nuclei", "smear10", "wbc", "wbc-type"} <= set(hemaseg.list_models(bundled=True))
    True
    >>> "unet-dropout" in hemaseg.list_models()
    True
    """
    if bundled:
        return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if p.with_suffix(".safetensors").exists())
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with ``kwargs``, randomly initialised (a torch module).

    Needs torch and the rest of the training stack (``pip install 'hemaseg[train]'``: timm for
    the classifiers, torchvision for ``maskrcnn-light``, segmentation_models_pytorch for
    ``smp-unet``). Nothing is downloaded: no pretrained weights.

    Parameters
    ----------
    name : str
        A registered architecture: one of :func:`list_models` (``unet-dropout``, ``smp-unet``,
        ``maskrcnn-light``, ``wbc-classifier``, ``wbc-ensemble``). A model card names its own under
        ``card["architecture"]["name"]``.
    **kwargs
        The architecture's constructor arguments, as a model card's ``card["architecture"]["kwargs"]``
        holds them (e.g. ``classes`` and ``widths`` for ``unet-dropout``); those not given take the
        constructor's defaults.

    Returns
    -------
    torch.nn.Module
        The network with random weights, in training mode, on the CPU.

    Raises
    ------
    KeyError
        ``name`` is not a registered architecture (the message lists the known ones).
    TypeError
        An argument the constructor does not take (a bad value raises the constructor's own error).

    Examples
    --------
    >>> import torch, hemaseg
    >>> net = hemaseg.create_model("unet-dropout", classes=3, widths=[8, 16, 32, 64, 128]).eval()
    >>> net(torch.zeros(1, 3, 64, 64)).shape  # (N, classes, H, W) logits
    torch.Size([1, 3, 64, 64])
    """
    if name not in _MODELS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)


# ---- model cards ---------------------------------------------------------------------------

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The bundled sample photo (BCCD, 640x480, one neutrophil): what the demo, exports and viewers open.
SAMPLE_PHOTO = WEIGHTS_DIR.parent / "samples" / "BloodImage_00000.jpg"


def save_file(tensors: dict, filename: str) -> None:
    """safetensors' ``save_file`` for torch tensors (safetensors.torch, and torch, imported on first use)."""
    from safetensors.torch import save_file as save

    save(tensors, filename)


def save_model(model: nn.Module, path: str | Path, card: dict) -> tuple[Path, Path]:
    """Write ``path``.safetensors and ``path``.json (the model card, NaN written as null), atomically."""
    path = Path(path)
    st = path.with_suffix(".safetensors")
    with atomic_path(st) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    js = write_json(path.with_suffix(".json"), nan_as_null(card))  # standard JSON: a score of nothing is null
    return st, js


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Find a model's safetensors file: a bundled name (``wbc``), a file, or a training run folder.

    A bare bundled name (a str without a folder part) is the bundled model even when the working folder
    holds a folder of that name (``segment --task wbc photos/ --out wbc`` made the next command's default
    model that output folder); write ``./wbc`` for a run folder named so."""
    if isinstance(name_or_path, str) and "/" not in name_or_path and os.sep not in name_or_path:
        bundled = WEIGHTS_DIR / f"{name_or_path}.safetensors"
        if name_or_path and bundled.exists():
            return bundled
    p = Path(name_or_path)
    if p.is_dir():
        for cand in ("model.safetensors", "best.safetensors", "last.safetensors"):
            if (p / cand).exists():
                if cand != "model.safetensors":  # a run not finished (killed, or training): used, but said
                    warn_once(logging.getLogger(__name__), ("unfinished run", str(p.resolve())),
                              "%s: no model.safetensors (the run is still training, or was stopped): its %s is "
                              "used, not a finished run's model", p, cand)
                return p / cand
        raise HemasegInputError(p, "folder holds no model.safetensors, best.safetensors or last.safetensors")
    if p.suffix == ".json" and p.with_suffix(".safetensors").exists():
        return p.with_suffix(".safetensors")
    if p.suffix == ".json" and p.with_suffix(".onnx").exists():  # an export's card: the ONNX file it was written for
        return p.with_suffix(".onnx")
    if p.suffix == ".json" and p.exists():  # read as weights, it failed "header too large" (a walkthrough, stop 71)
        raise HemasegInputError(p, "a model card with no weights beside it (no .safetensors or .onnx of its name): "
                                   "give the weights file, the run folder or a bundled name")
    if p.exists():
        return p
    bundled = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if bundled.exists():
        return bundled
    raise HemasegInputError(p, "no such model file, run folder or bundled model (bundled: "
                               + ", ".join(list_models(bundled=True)) + ")")


def load_card(name_or_path: str | Path) -> tuple[Path, dict]:
    """(safetensors path, model card) of a bundled name, a safetensors file or a run folder,
    without loading the weights."""
    st = resolve_model_path(name_or_path)
    if st.suffix.lower() == ".zip":  # its card's name-mate PATH.onnx ran instead, unsaid (a walkthrough, stop 69)
        raise HemasegInputError(st, "a bioimage.io package is for bioimage.io's tools (bioimageio.core, deepImageJ, "
                                    "ilastik); give hemaseg the .onnx export, the .safetensors file or the run folder")
    if st.suffix.lower() not in (".safetensors", ".onnx", ".json"):  # a photo given as --model (with a card beside it
        raise HemasegInputError(st, "not a model: give a bundled name, a .safetensors (or .onnx) file with its "  # too)
                                    "model card, or a training run folder")
    card_path = st.with_suffix(".json")
    if not card_path.exists():
        # Checkpoints in a run folder share one card (model.json) written by training.
        card_path = st.parent / "model.json"
    if not card_path.exists():
        raise HemasegInputError(st, "model card JSON not found beside the weights")
    try:
        card = json.loads(card_path.read_text())
        card["architecture"]  # every card names its architecture
    except (ValueError, KeyError) as exc:
        raise HemasegInputError(card_path, f"not a hemaseg model card ({exc})") from None
    return st, card


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"[:200]


def load_weights(model: nn.Module, state: dict, source: str | Path, arch: str) -> None:
    """Load a state dict into ``model``; weights of another architecture (or other arguments) are one
    :class:`HemasegInputError` line saying how many tensors are missing, unexpected or of another shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    other = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or other:
        first = (missing or unexpected or other)[0]
        raise HemasegInputError(source, f"weights do not fit architecture {arch}: {len(missing)} tensors missing, "
                                        f"{len(unexpected)} unexpected, {len(other)} of another shape "
                                        f"(first: {first}); the weights and the card disagree")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as exc:  # dtype trouble and the like: one line, not torch's page
        raise HemasegInputError(source, f"weights do not load into {arch} ({_first_line(exc)})") from None


def load_model(name_or_path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load a model (torch) and its model card from a bundled name, a weights file or a run folder.

    The weights are read with safetensors into the architecture the card names
    (:func:`create_model`); the network is put in eval mode, in channels-last memory format.
    Unlike the models :func:`hemaseg.segment` and the others load by name, nothing is cached and
    ONNX Runtime is never used: this needs torch (``pip install 'hemaseg[train]'``).

    Parameters
    ----------
    name_or_path : str or Path
        A bundled name (``wbc``, ``nuclei``, ``smear10``, ``cells``, ``cells-maskrcnn``,
        ``wbc-type``, ``smear10-type``: :func:`list_models` with ``bundled=True``); a ``.safetensors``
        file, its card the ``.json`` of the same name beside it, else ``model.json`` in its
        folder; a model card ``.json`` with its ``.safetensors`` beside it; or a training run
        folder (``model.safetensors``, else ``best.safetensors``, else ``last.safetensors``).
        An existing file or folder is taken before a bundled name.
    device : str or torch.device, optional
        Where the network is put, default ``"cpu"``; ``"auto"``: ``"cuda"`` when torch sees a GPU,
        else ``"cpu"``; anything else is given to torch's ``Module.to`` as it is (``"cuda"``,
        ``"cuda:1"``).

    Returns
    -------
    model : torch.nn.Module
        The network, in eval mode, on ``device``.
    card : dict
        The model card (the JSON training wrote): ``name``, ``task``, ``classes``,
        ``architecture`` (``name`` and ``kwargs``), ``normalization``, a segmentation model's
        trained ``cell_diameter`` (px), metrics and more. ``(model, card)`` may be given as the
        ``model`` of :func:`hemaseg.segment` and the other functions that take one.

    Raises
    ------
    HemasegInputError
        No such file, run folder or bundled model (the message lists the bundled ones); a folder
        with no weights; no model card beside the weights, or one that is not a hemaseg model
        card; an ``.onnx`` file (it runs on ONNX Runtime: ``backend="onnx"`` of
        :func:`hemaseg.segment`); an architecture the card names that cannot be built; weights
        that are not a readable safetensors file or do not fit the architecture. The error
        carries the path and the reason.

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> model, card = hemaseg.load_model("wbc")
    >>> card["task"], card["classes"], model.training
    ('wbc', ['background', 'cytoplasm', 'nucleus'], False)
    >>> seg = hemaseg.segment(np.full((64, 64, 3), 230, np.uint8), model=(model, card), cell_diameter=40)
    >>> seg.count
    0
    """
    import torch
    from safetensors.torch import load_file

    st, card = load_card(name_or_path)
    if st.suffix.lower() == ".onnx":
        raise HemasegInputError(st, "an ONNX file: it runs on ONNX Runtime (backend onnx), not torch")
    arch = card["architecture"]
    try:
        model = create_model(arch["name"], **arch.get("kwargs", {}))
    except Exception as exc:  # unknown architecture or arguments in the card
        raise HemasegInputError(st, f"the model card's architecture cannot be built ({_first_line(exc)})") from None
    try:
        state = load_file(str(st))
    except Exception as exc:
        raise HemasegInputError(st, f"not a readable safetensors file ({_first_line(exc)})") from None
    load_weights(model, state, st, arch["name"])
    if str(device) == "auto":  # as hemaseg.segment takes it: the GPU when torch sees one
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # channels_last runs oneDNN's faster convolution kernels on CPUs (about 1.5x here).
    model.eval().to(device, memory_format=torch.channels_last)
    return model, card


# Metric groups a model card records at training time (the checkpoint-picking check); any other
# group (val_pipeline, a benchmark's) was measured afterwards through the shipped pipeline.
TRAINING_TIME_METRICS = ("val", "val_native_scale", "val_union_best_epoch", "epoch", "note", "command")


def card_figures(card: dict, limit: int = 6) -> list[str]:
    """Headline figures of a model card as ``group.key=value``: the measured groups when the card has
    any (training-time figures are stale once the pipeline has been measured), else the training-time ones.

    >>> card_figures({"metrics": {"val": {"map50": 0.605}, "val_pipeline": {"map50": 0.881, "note": "x"}}})
    ['val_pipeline.map50=0.881']
    """
    metrics = card.get("metrics", {})
    measured = [k for k, v in metrics.items() if isinstance(v, dict) and k not in TRAINING_TIME_METRICS]
    groups = measured or [k for k, v in metrics.items() if isinstance(v, dict)]
    figures = []
    for key in groups:
        figures += [f"{key}.{k}={v:.3f}" for k, v in metrics[key].items() if isinstance(v, float)][:4]
    return figures[:limit]
