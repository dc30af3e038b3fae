"""``hemaseg export MODEL --format FORMAT --out PATH``: a trained model in another runtime's format.

:data:`EXPORTERS` maps a format name to ``exporter(model, out) -> dict`` (``model`` a bundled name,
weights file or run folder; ``out`` the file to write; the dict a summary the CLI prints as JSON).
Registering a format is one line: ``EXPORTERS["name"] = function``.

``onnx`` (:func:`export_onnx`) writes the U-Nets (NHWC float input ``image`` with dynamic batch,
height and width; output ``logits`` (N, K, H, W)) and the WBC classifier (input ``image`` (N, S, S,
3), ``extras`` (N, E) when the model takes the ruler; output ``logits`` (N, K)), checks ONNX Runtime
against torch on the bundled sample photo (largest difference of the softmax probabilities at most
``tolerance``) and writes the model card beside it with an ``"onnx"`` entry, so the file runs with
``--model PATH --backend onnx`` and in the light install. Exporting needs torch and onnx
(``pip install 'hemaseg[train]' onnx``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from hemaseg.data.transforms import crop_input, normalize, percentile_range
from hemaseg.engine.runtime import OnnxRunner, TorchRunner, require_torch, softmax
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.images import read_image
from hemaseg.io.writers import atomic_path, write_json
from hemaseg.models.registry import SAMPLE_PHOTO, load_model
from hemaseg.pipelines.bioimageio import export_bioimageio

DEFAULT_OPSET = 17
# Largest |p_onnx - p_torch| of a softmax probability an export may show on the check images.
# 1e-4 left a nuclei export on one thread 8.5e-05 (torch sums in another order on one thread; 1.9e-05 on two): a
# lab's export on a one-core machine would fail for no fault of the model (a walkthrough, stop 69). bioimage.io's
# own check uses 1e-3; a probability 1e-3 off moves no argmax but a near tie.
DEFAULT_TOLERANCE = 1e-3


CLASSIFIERS = ("wbc-classifier", "wbc-ensemble")  # architectures whose output is (N, K) class logits of a crop


def _is_classifier(card: dict) -> bool:
    return card["architecture"]["name"] in CLASSIFIERS


def _nhwc_wrapper(module, extras: int):
    """``module`` taking (N, H, W, C) input (the layout hemaseg cuts tiles and crops in), so the
    ONNX graph does the transpose and callers pass numpy arrays as they are."""
    from torch import nn

    class Nhwc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = module

        def forward(self, image, extras_in=None):
            x = image.permute(0, 3, 1, 2)
            return self.net(x, extras_in) if extras else self.net(x)

    return Nhwc().eval()


def _check_inputs(card: dict, stride: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Batches (NHWC float32, extras) cut from the bundled sample photo, normalised as the card says."""
    image = read_image(SAMPLE_PHOTO)
    norm = card.get("normalization", {})
    low, high = norm.get("low", 1.0), norm.get("high", 99.0)
    if _is_classifier(card):
        size = int(card.get("input_size", 96))
        rng = np.random.default_rng(0)
        crops = [image[y:y + size, x:x + size] for y, x in zip(rng.integers(0, image.shape[0] - size, 6),
                                                              rng.integers(0, image.shape[1] - size, 6))]
        # cell parts for a model that sees them: a disc with a smaller disc of nucleus in each crop
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        parts = (np.hypot(yy, xx) < 0.35 * size).astype(np.uint8) + (np.hypot(yy, xx) < 0.2 * size)
        x = np.stack([crop_input(c, norm.get("colour", "rgb"), low, high, parts) for c in crops]).astype(np.float32)
        e = card["architecture"].get("kwargs", {}).get("extras", 0)
        return [(x, rng.normal(size=(len(x), e)).astype(np.float32) if e else None)]
    prange = percentile_range(image, low, high)
    out = []
    for h, w in ((8 * stride, 12 * stride), (5 * stride, 7 * stride)):  # two sizes: the axes are dynamic
        out.append((normalize(image[:h, :w], prange=prange)[None].astype(np.float32), None))
    return out


def export_onnx(model, out: str | Path, opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE,
                write_card: bool = True) -> dict:
    """Write ``model`` (bundled name, weights file or run folder) as an ONNX file ``out``.

    Parameters
    ----------
    model : the model to export (a U-Net of any task, or the WBC classifier).
    out : the ``.onnx`` file to write (atomically).
    opset : ONNX opset version.
    tolerance : largest difference of a softmax probability between ONNX Runtime and torch on the
        check images; a larger one fails the export (the file is not written).
    write_card : also write the model card (with an ``"onnx"`` entry) as ``out`` with ``.json``.

    Returns
    -------
    The card's ``"onnx"`` entry: file, opset, bytes, sha256, inputs, stride, max_abs_prob_diff, tolerance.
    """
    require_torch("hemaseg export --format onnx")
    import torch

    out = Path(out)
    if out.suffix != ".onnx":
        raise HemasegUsageError("--out", f"{out}: an ONNX file ends in .onnx")
    module, card = load_model(model, "cpu")
    arch = card["architecture"]["name"]
    if arch == "maskrcnn-light":
        # torch.onnx does trace the bundled one (opset 17, 10.1 MB: over the 10 MB a bundled file may take;
        # ONNX Runtime found the same 259 detections on a test image), but hemaseg's detection step
        # (tasks/cells/infer.detect) reads torchvision's outputs on torch only.
        raise HemasegInputError(model, "a Mask R-CNN, not exported: its ONNX graph is 10.1 MB and hemaseg's "
                                       "detection step runs on torch only")
    module = module.to(memory_format=torch.contiguous_format).eval()
    extras = int(getattr(module, "extras", 0) or 0)
    stride = int(getattr(module, "stride", 32))
    wrapped = _nhwc_wrapper(module, extras)
    checks = _check_inputs(card, stride)
    x0, e0 = checks[0]
    names = ["image"] + (["extras"] if extras else [])
    axes = {"image": {0: "n"}, "logits": {0: "n"}} if _is_classifier(card) else \
        {"image": {0: "n", 1: "h", 2: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}
    if extras:
        axes["extras"] = {0: "n"}
    args = (torch.from_numpy(x0),) + ((torch.from_numpy(e0),) if extras else ())
    try:
        import onnx
    except ImportError:  # the light and train installs hold no onnx package: one line, not a traceback
        raise HemasegUsageError("--format", "onnx: needs the onnx package: pip install 'hemaseg[train,onnx]'") from None

    with atomic_path(out) as tmp:
        try:
            with torch.inference_mode():
                torch.onnx.export(wrapped, args, str(tmp), input_names=names, output_names=["logits"],
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
        except Exception as exc:  # an operator the exporter does not know, and the like: one line
            raise HemasegInputError(model, f"ONNX export failed ({type(exc).__name__}: "
                                           f"{str(exc).strip().splitlines()[0][:160]})") from None
        proto = onnx.load(str(tmp))
        meta = {"stride": str(stride), "extras": str(extras), "classes": ",".join(card.get("classes", [])),
                "hemaseg_model": str(card.get("name", model))}
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
        runner, reference = OnnxRunner(tmp, threads=1), TorchRunner(module)
        diff = 0.0
        for x, e in checks:
            p_onnx = softmax(runner(x, e), axis=1)
            p_torch = softmax(reference(x, e), axis=1)
            diff = max(diff, float(np.abs(p_onnx - p_torch).max()))
        if not diff <= tolerance:
            raise HemasegInputError(model, f"ONNX Runtime and torch differ by {diff:.2g} in a probability "
                                           f"(tolerance {tolerance:g}): not written")
        data = Path(tmp).read_bytes()
        entry = {"file": out.name, "opset": opset, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                 "inputs": names, "stride": stride, "max_abs_prob_diff": float(f"{diff:.3g}"),
                 "tolerance": tolerance, "checked_on": SAMPLE_PHOTO.name, "torch": torch.__version__,
                 "onnx": onnx.__version__}
        if write_card:  # before the ONNX file is put in place: a card that cannot be written leaves neither
            card = dict(card)
            # what benchmarks/export_bundled.py measured of the bundled file is no measure of this one: left out
            card["onnx"] = {**{k: v for k, v in card.get("onnx", {}).items()
                               if k not in ("auto", "pipeline_agrees", "seconds_per_batch")}, **entry}
            card["onnx"].pop("reason", None)
            try:
                write_json(out.with_suffix(".json"), card)
            except OSError as exc:
                raise HemasegInputError(out.with_suffix(".json"), f"cannot write the card ({exc.strerror or exc})") \
                    from None
    return entry


# Format name -> exporter(model, out) -> summary dict. One line registers another format.
# bioimageio (hemaseg/pipelines/bioimageio.py): a U-Net as a bioimage.io model package (TorchScript weights).
EXPORTERS: dict[str, Callable[..., dict]] = {"onnx": export_onnx, "bioimageio": export_bioimageio}


def export(model, fmt: str, out: str | Path) -> dict:
    """Export ``model`` as ``fmt`` (a key of :data:`EXPORTERS`) to ``out``; the exporter's summary."""
    if fmt not in EXPORTERS:
        raise HemasegUsageError("--format", f"{fmt!r} is not a format; use {', '.join(sorted(EXPORTERS))}")
    return EXPORTERS[fmt](model, out)
