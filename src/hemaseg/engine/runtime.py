"""Where a network runs: torch or ONNX Runtime behind one call.

A *runner* takes an (N, H, W, C) float32 batch (NHWC numpy, as tiles and crops are cut) and,
for a classifier, optional (N, E) ``extras``, and gives the network's float32 logits as numpy:
(N, K, H, W) for a U-Net, (N, K) for a classifier. :func:`hemaseg.engine.tiling.predict_tiled`
and the WBC typer call nothing else, so both backends run the same pre- and post-processing.

Backends (``backend``, the CLI's ``--backend``):

- ``torch``: the PyTorch module (needs ``hemaseg[train]``).
- ``onnx``: the model's ONNX file (``<weights>.onnx`` beside its ``.safetensors``, or an
  ``.onnx`` path) on ONNX Runtime's CPU provider; what the light install (``pip install hemaseg``)
  runs. A model without an ONNX file falls back to torch, or, without torch, to the model its
  card names under ``onnx.fallback`` (the Mask R-CNN cells model -> the cells U-Net), with a
  one-line message either way.
- ``auto`` (the default of ``segment``, ``classify`` and ``analyze``): ONNX Runtime on the CPU
  when the model has an ONNX file, onnxruntime is installed and the card does not say
  ``"onnx": {"auto": false}`` (``benchmarks/export_bundled.py`` sets it false for a model whose
  pipeline outputs differ from torch's on the bundled sample, or that is not faster), torch
  otherwise; without torch, ONNX Runtime whenever it can.

torch and onnxruntime are imported here only when a model is loaded on them, so importing
hemaseg imports neither.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.models.registry import load_card, load_model, resolve_model_path

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
TRAIN_EXTRA = "pip install 'hemaseg[train]'"


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    """``module`` can be imported (imported once to find out, as the backend would)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def torch_available() -> bool:
    """torch can be imported (the ``train`` extra is installed)."""
    return _importable("torch")


def onnxruntime_available() -> bool:
    """onnxruntime can be imported."""
    return _importable("onnxruntime")


def require_torch(what: str) -> None:
    """:class:`HemasegUsageError` naming ``what`` when torch is not installed (the light install)."""
    if not torch_available():
        raise HemasegUsageError(what, f"needs torch, which the light install leaves out: {TRAIN_EXTRA}")


def check_backend(backend: str) -> str:
    """``backend`` itself if it is one of :data:`BACKENDS`, else :class:`HemasegUsageError` on ``--backend``."""
    if backend not in BACKENDS:
        raise HemasegUsageError("--backend", f"{backend!r} is not a backend; use {', '.join(BACKENDS)}")
    return backend


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax of float32 ``logits`` along ``axis`` (numerically stable).

    >>> softmax(np.array([[0.0, np.log(3.0)]], np.float32)).round(3).tolist()
    [[0.25, 0.75]]
    """
    # A channels-last tensor's numpy view is strided along ``axis``: reductions over it run ~10x
    # slower than on a contiguous copy (measured: 71 vs 7 ms for a 3x1088x1088 tile, copy included).
    logits = np.ascontiguousarray(logits)
    e = logits - logits.max(axis=axis, keepdims=True)
    np.exp(e, out=e)  # in place: one full-size array instead of three
    e /= e.sum(axis=axis, keepdims=True)
    return e


class TorchRunner:
    """A torch module as a runner: NHWC numpy in (channels_last, no copy), numpy logits out."""

    backend = "torch"

    def __init__(self, module) -> None:
        self.module = module
        self.stride = int(getattr(module, "stride", 32))
        self.extras = int(getattr(module, "extras", 0) or 0)

    def __call__(self, batch: np.ndarray, extras: np.ndarray | None = None) -> np.ndarray:
        import torch

        device = next(self.module.parameters()).device
        with torch.inference_mode():
            # NHWC numpy is already channels_last memory: no copy, and oneDNN's fast conv path.
            x = torch.from_numpy(np.asarray(batch, np.float32)).permute(0, 3, 1, 2).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            if self.extras:
                e = None if extras is None else torch.from_numpy(np.asarray(extras, np.float32)).to(device)
                out = self.module(x, e)
            else:
                out = self.module(x)
            # Contiguous NCHW, like ONNX Runtime's: the channels_last output's numpy view would be strided
            # along the class axis, and every reduction over it (softmax, argmax) ~10x slower.
            return out.float().contiguous().cpu().numpy()


class OnnxRunner:
    """An ONNX file on ONNX Runtime's CPU provider as a runner. Its input ``image`` is NHWC float32,
    ``extras`` (when the classifier takes them) (N, E) float32, its output ``logits``.

    Parameters
    ----------
    path : the ``.onnx`` file (written by :func:`hemaseg.pipelines.export.export_onnx`).
    threads : ONNX Runtime intra-op threads; 0: its default (one per physical core).
    """

    backend = "onnx"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        # Worker threads sleep between runs instead of spinning: the pipelines post-process on the
        # CPU the network's threads would otherwise keep busy waiting.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # not an ONNX file, or one ONNX Runtime cannot run
            raise HemasegInputError(path, f"ONNX Runtime cannot load it ({str(exc).strip()[:160]})") from None
        self.path = Path(path)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.stride = int(meta.get("stride", 32))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.extras = int(meta.get("extras", 0))

    def __call__(self, batch: np.ndarray, extras: np.ndarray | None = None) -> np.ndarray:
        feeds = {"image": np.ascontiguousarray(batch, np.float32)}
        if "extras" in self.inputs:
            n = feeds["image"].shape[0]
            feeds["extras"] = (np.zeros((n, self.extras), np.float32) if extras is None
                               else np.ascontiguousarray(extras, np.float32))
        return self.session.run(["logits"], feeds)[0]


def as_runner(model):
    """``model`` as a runner: a runner passes through, a torch module is wrapped in :class:`TorchRunner`."""
    if isinstance(model, (TorchRunner, OnnxRunner)):
        return model
    return TorchRunner(model)


def onnx_file(name_or_path: str | Path) -> Path | None:
    """The ONNX file of a model (an ``.onnx`` path, or ``<weights>.onnx`` beside its safetensors), or None."""
    p = Path(name_or_path)
    if p.suffix.lower() == ".onnx":
        return p if p.exists() else None
    try:
        st = resolve_model_path(name_or_path)
    except HemasegInputError:
        return None
    cand = st if st.suffix.lower() == ".onnx" else st.with_suffix(".onnx")
    return cand if cand.exists() else None


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read a MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_pair(runner: OnnxRunner, card: dict) -> None:
    """Refuse an ONNX file with a card written for another one: a card copied beside another model's export
    ran silently with the wrong classes or thresholds (a walkthrough: nuclei weights under a wbc card found no
    WBC). The classes in the file's metadata must be the card's, and the file the one the card's ``onnx``
    entry hashed when it was exported."""
    meta = runner.session.get_modelmeta().custom_metadata_map
    classes = card.get("classes")
    if meta.get("classes") and classes and meta["classes"] != ",".join(map(str, classes)):
        raise HemasegInputError(runner.path, f"its classes ({meta['classes']}) are not its card's "
                                             f"({','.join(map(str, classes))}): the card beside it is another model's")
    entry = card.get("onnx") or {}
    digest = entry.get("sha256")
    # a card written for no ONNX file (a training run's model.json, a Mask R-CNN card) ran silently with the wrong
    # size (a walkthrough, stop 71); an export's card from before they hashed the file names it, and still loads
    if not digest and entry.get("file") != Path(runner.path).name:
        raise HemasegInputError(runner.path, "its card was not written for this ONNX file (no 'onnx' entry naming it: "
                                             "a training run's card, or another model's): export the model (hemaseg "
                                             "export) and give the .onnx with the card written beside it")
    if digest:
        if file_sha256(runner.path) != digest:
            raise HemasegInputError(runner.path, "is not the ONNX file its card was written for (SHA-256 differs: "
                                                 "another model's card, or the file changed since it was exported, "
                                                 "e.g. simplified or quantised): export the model again (hemaseg "
                                                 "export), or give the card that came with this file")


def load_runner(name_or_path: str | Path, device: str = "cpu", backend: str = "auto", threads: int = 0):
    """(model, card) of a bundled name, weights file, ``.onnx`` file or run folder on ``backend``:
    the torch module for ``torch``, an :class:`OnnxRunner` for ``onnx`` (see the module's text for
    ``auto`` and the fallbacks). ``threads`` sets ONNX Runtime's intra-op threads (0: its default)."""
    check_backend(backend)
    src, card = load_card(name_or_path)
    onnx = onnx_file(name_or_path)
    name = card.get("name") or str(name_or_path)
    if backend == "torch" and src.suffix.lower() == ".onnx":
        raise HemasegUsageError("--backend", f"torch: {src.name} is an ONNX file; use --backend onnx or auto")
    # auto: torch on a GPU, for a model without an ONNX file, or for one whose card says ONNX Runtime
    # was not both faster and in agreement through the pipeline (benchmarks/export_bundled.py).
    # (an .onnx file given: torch cannot run it, so it is not imported for it; a walkthrough: 570 MB and 1.5 s more)
    prefer_torch = src.suffix.lower() != ".onnx" and (device != "cpu" or onnx is None or not onnxruntime_available()
                                                      or not card.get("onnx", {}).get("auto", True))
    if backend == "torch" or (backend == "auto" and prefer_torch):
        if torch_available() and src.suffix.lower() != ".onnx":
            return load_model(name_or_path, device)
        if backend == "torch":
            raise HemasegUsageError("--backend", f"torch: not installed ({TRAIN_EXTRA}); use --backend onnx or auto")
    if device != "cpu":
        raise HemasegUsageError("--device", f"{device}: the ONNX backend runs on the CPU; use --backend torch")
    if not onnxruntime_available():
        raise HemasegUsageError("--backend", "onnx: onnxruntime is not installed (pip install onnxruntime)")
    if onnx is not None:
        runner = OnnxRunner(onnx, threads)
        try:
            _check_pair(runner, card)
        except HemasegInputError:  # an .onnx beside weights its card was not written for (a run retrained since
            # its export): under auto, the weights themselves run (a review, stop 71); given or asked for, refused
            if backend != "auto" or src.suffix.lower() == ".onnx" or not torch_available():
                raise
            log.warning("%s: %s beside its weights was not exported from them (its card does not name or hash it): "
                        "running the weights on torch (export them again to run on ONNX Runtime)", name,
                        Path(onnx).name)
            return load_model(name_or_path, device)
        return runner, card
    why = card.get("onnx", {}).get("reason", "no ONNX file beside its weights")
    if torch_available():
        log.warning("%s: cannot run on ONNX Runtime (%s); running it on torch", name, why)
        return load_model(name_or_path, device)
    fallback = card.get("onnx", {}).get("fallback")
    if fallback:
        log.warning("%s: needs torch (%s), which is not installed; using %s instead (%s)",
                    name, why, fallback, TRAIN_EXTRA)
        return load_runner(fallback, device, "onnx", threads)
    raise HemasegInputError(name_or_path, f"cannot run without torch ({why}): {TRAIN_EXTRA}, or export it "
                                          "on a machine with torch (hemaseg export MODEL --format onnx)")
