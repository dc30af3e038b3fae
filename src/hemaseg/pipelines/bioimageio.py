"""``hemaseg export MODEL --format bioimageio --out PATH``: a U-Net as a bioimage.io model package.

The package (a ``.zip``, or a folder for any other ``--out``) holds ``rdf.yaml`` (bioimage.io model
spec 0.5), the network as TorchScript (``torch.jit.trace``: no hemaseg code needed to run it), a
test input and its expected output (``.npy``), a cover image, a README (documentation: what the
network does and what it leaves to hemaseg, the model card's figures) and the hemaseg model card.
Pre- and post-processing are described in the spec's own terms, so bioimage.io consumers
(bioimageio.core, deepImageJ, ilastik, the BioImage Model Zoo) apply them:

* input ``raw`` (batch, channel r/g/b, y, x), float32 0-255; ``ensure_dtype`` float32, then
  ``scale_range`` per channel over y and x between the card's percentiles (1 and 99): hemaseg's
  percentile normalisation (:func:`hemaseg.data.transforms.normalize`);
* output ``probabilities`` (batch, channel = the task's classes, y, x), ``softmax`` over channels;
  y and x as the input's, which must be a multiple of the network's stride.

The export checks itself before anything is written: the package is validated with the
bioimage.io spec library and :func:`bioimageio.core.test_model` runs the TorchScript weights
with the described processing on the test input and compares with the expected output (made by
hemaseg's own normalisation and the torch model). Needs torch and the ``bioimageio`` extra.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from hemaseg.core.resize import rescale
from hemaseg.data.transforms import normalize
from hemaseg.engine.runtime import require_torch, softmax
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.images import read_image
from hemaseg.models.registry import SAMPLE_PHOTO, card_figures, load_model
from hemaseg.pipelines.segment import segment
from hemaseg.tasks import get_task
from hemaseg.version import __version__

UNETS = ("unet-dropout", "smp-unet")
DEFAULT_TEST_SIZE = 256  # side of the square test input (px), rounded down to the network's stride
COVER_HEIGHT = 256  # px; a cover from a smaller test input is enlarged by a whole factor to at least this
BIOIMAGEIO_EXTRA = "pip install 'hemaseg[train,bioimageio]'"
UNET_CITATION = ("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image "
                 "Segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28")
TAGS = ("segmentation", "semantic-segmentation", "unet", "2d", "pytorch", "torchscript", "brightfield",
        "blood-smear", "hematology", "hemaseg")


def _identifier(name: str) -> str:
    """A class name as a bioimage.io identifier (``platelet clump`` -> ``platelet_clump``)."""
    return "".join(c if c.isalnum() else "_" for c in str(name)).strip("_") or "class"


def cut_test_input(image: np.ndarray, scale: float, stride: int, size: int = DEFAULT_TEST_SIZE) -> np.ndarray:
    """The test input: ``image`` resized by ``scale`` (the factor hemaseg's pipeline gives the network),
    its centre square of ``size`` px rounded down to a multiple of ``stride``: (S, S, 3) uint8.

    >>> cut_test_input(np.zeros((100, 300, 3), np.uint8), 1.0, 32).shape
    (96, 96, 3)
    """
    small = rescale(image, scale)
    side = min(size, *small.shape[:2]) // stride * stride
    if side < stride:
        raise HemasegInputError("sample", f"the image at the model's scale ({small.shape[1]}x{small.shape[0]} px) "
                                          f"is smaller than the network's stride ({stride} px)")
    y, x = (small.shape[0] - side) // 2, (small.shape[1] - side) // 2
    return np.ascontiguousarray(small[y:y + side, x:x + side, :3])


def _cover(tile: np.ndarray, probs: np.ndarray, colours: dict) -> Image.Image:
    """2:1 cover: the test input, and its most probable class painted over it."""
    classes = probs.argmax(0)
    overlay = tile.astype(np.float32).copy()
    for k, rgb in colours.items():
        if k:
            overlay[classes == k] = 0.45 * overlay[classes == k] + 0.55 * np.asarray(rgb, np.float32)
    cover = Image.fromarray(np.concatenate([tile, overlay.clip(0, 255).astype(np.uint8)], axis=1))
    grow = -(-COVER_HEIGHT // cover.height)  # a small test input is shown enlarged
    return cover.resize((cover.width * grow, cover.height * grow), Image.NEAREST) if grow > 1 else cover


def _readme(card: dict, task, stride: int, side: int, scale: float, low: float, high: float,
            source: str | None = None) -> str:
    """The package's documentation (Markdown). ``source``: the model as it was named to the export (a bundled
    name or a path), which the commands it shows take (a card's ``name`` may be no bundled name)."""
    name = card.get("name", "model")
    source = source or name
    classes = card.get("classes", [])
    training = card.get("training", {})
    figures = card_figures(card)
    lines = [
        f"# hemaseg {name}: {card.get('description') or task.description}",
        "",
        f"A U-Net ({card['architecture']['name']}) exported from hemaseg {__version__} "
        "(`hemaseg export {0} --format bioimageio`).".format(source),
        "",
        "## Input and output",
        "",
        "- input `raw`: (batch, channel, y, x) RGB, float32 in 0-255 (an 8-bit photo); y and x a multiple "
        f"of {stride} px.",
        f"- pre-processing (described in rdf.yaml): each channel scaled so that its percentiles {low:g} and "
        f"{high:g} over the image become 0 and 1 (`scale_range`, per sample).",
        f"- output `probabilities`: (batch, {len(classes)} classes, y, x) after `softmax` over the channels; "
        f"classes in order: {', '.join(classes)}.",
        "",
        "## Scale: what the package leaves to hemaseg",
        "",
        f"The network was trained on images where a cell is about {card.get('cell_diameter', 0):.0f} px across"
        + (f" (measured range {card['diameter_range'][0]:.0f}-{card['diameter_range'][1]:.0f} px)"
           if card.get("diameter_range") else "") + ". hemaseg measures each photo's cell size and resizes "
        f"the photo before the network (the test input is the bundled sample resized by {scale:.3g}, "
        f"centre {side}x{side} px); resize your image the same way for the best result. hemaseg's "
        "post-processing (instances from the class map: watershed splitting, size filters, per-cell "
        f"records) is not in this package: run `hemaseg segment --task {task.name} --model {source}` for it.",
        "",
        "## Training",
        "",
        *[f"- data: {d}" for d in training.get("data", [])],
        *([f"- {training['n_train']} training / {training.get('n_val', 0)} validation images"
           + (f", {training['epochs_run']} epochs" if training.get("epochs_run") else "")
           + (f" (best epoch {training['best_epoch']})" if training.get("best_epoch") else "")]
          if "n_train" in training else []),
        *([f"- fine-tuned from `{training['init']}`"] if training.get("init") else []),
        *([f"- shipped: {training['shipped']}"] if training.get("shipped") else []),
        *([f"- command: `{training['command']}`"] if training.get("command") else []),
        *(["- hemaseg's post-processing thresholds (card `postprocess`, not in this package): "
           + ", ".join(f"{k}={v}" for k, v in card["postprocess"].items() if not isinstance(v, dict))]
          if any(not isinstance(v, dict) for v in (card.get("postprocess") or {}).values()) else []),
        "",
        "## Validation",
        "",
        "Measured by hemaseg on held-out images (figures from the model card; `val_pipeline` and benchmark "
        "groups are the whole hemaseg pipeline, `val` and `val_native_scale` the network alone at its scale):",
        "",
        *([f"- {f}" for f in figures] or ["- none recorded"]),
        "",
        "The export checked that the TorchScript weights, through the pre- and post-processing described in "
        "rdf.yaml (bioimageio.core's `test_model`), reproduce `test_output.npy`, which hemaseg's own "
        "normalisation and the torch model computed.",
        "",
        "The full card is attached as `hemaseg_card.json`.",
        "",
    ]
    return "\n".join(lines)


def _spec_modules():
    try:
        from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise HemasegUsageError("--format bioimageio", f"needs the bioimage.io spec library: {BIOIMAGEIO_EXTRA}") from None
    return v0_5, save_bioimageio_package, save_bioimageio_package_as_folder


def describe(work: Path, card: dict, task, stride: int, pytorch_version: str, low: float, high: float,
             n_classes: int):
    """The :class:`bioimageio.spec.model.v0_5.ModelDescr` of the files in ``work``."""
    v, _, _ = _spec_modules()
    space = [v.SpaceInputAxis(id=v.AxisId(a), size=v.ParameterizedSize(min=stride, step=stride)) for a in "yx"]
    inputs = [v.InputTensorDescr(
        id=v.TensorId("raw"), description="RGB photo, 8-bit values as float32",
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in ("red", "green", "blue")]),
              *space],
        test_tensor=v.FileDescr(source=work / "test_input.npy"),
        sample_tensor=v.FileDescr(source=work / "sample_input.png"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 255.0)),
        preprocessing=[
            v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
            v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=[v.AxisId("y"), v.AxisId("x")], min_percentile=low,
                                                        max_percentile=high, eps=1e-6)),
        ])]
    names = [_identifier(c) for c in card.get("classes", [])] or [f"class{k}" for k in range(n_classes)]
    outputs = [v.OutputTensorDescr(
        id=v.TensorId("probabilities"), description="class probabilities (softmax), one channel per class",
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in names]),
              *[v.SpaceOutputAxis(id=v.AxisId(a), size=v.SizeReference(tensor_id=v.TensorId("raw"),
                                                                        axis_id=v.AxisId(a))) for a in "yx"]],
        test_tensor=v.FileDescr(source=work / "test_output.npy"),
        sample_tensor=v.FileDescr(source=work / "sample_output.tif"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=v.AxisId("channel")))])]
    name = card.get("name", "model")
    # training (data, start model, whether the start was shipped) and the post-processing thresholds the run chose
    # were left out: a fine-tune read as a model of its own (a walkthrough, stop 69)
    keep = ("name", "task", "classes", "label_values", "architecture", "normalization", "cell_diameter",
            "diameter_range", "input_scale", "box_scale", "postprocess", "training", "metrics", "versions")
    return v.ModelDescr(
        name=f"hemaseg {name}",
        description=(card.get("description") or task.description)[:1000],
        authors=[v.Author(name="hemaseg contributors")],
        cite=[v.CiteEntry(text=UNET_CITATION[0], doi=v.Doi(UNET_CITATION[1]))],
        license=v.LicenseId("MIT"),
        documentation=v.FileDescr(source=work / "README.md"),
        covers=[v.FileDescr(source=work / "cover.png")],
        attachments=[v.FileDescr(source=work / "hemaseg_card.json")],
        tags=[*TAGS, name],
        version=__version__,
        inputs=inputs,
        outputs=outputs,
        weights=v.WeightsDescr(torchscript=v.TorchscriptWeightsDescr(
            source=work / "weights_torchscript.pt", pytorch_version=v.Version(pytorch_version.split("+")[0]))),
        config={"hemaseg": json.loads(json.dumps({k: card[k] for k in keep if k in card}))},
    )


def _first_problem(summary) -> str:
    """The first failing detail of a bioimage.io validation summary, on one line."""
    for d in summary.details:
        if d.status == "failed":
            err = next(iter(d.errors), None)
            return f"{d.name}: {err.msg if err else ''}".replace("\n", " ")[:300]
    return str(summary.status)


def export_bioimageio(model, out: str | Path, sample: str | Path | None = None, scale: float | None = None,
                      test_size: int = DEFAULT_TEST_SIZE, test: bool = True) -> dict:
    """Write ``model`` (a U-Net: bundled name, weights file or run folder) as a bioimage.io model package.

    Parameters
    ----------
    model : the model to export: ``wbc``, ``nuclei``, ``smear10``, ``cells`` or a trained U-Net.
    out : a ``.zip`` file (the package as bioimage.io distributes it) or a folder (unzipped; must be
        new or empty). Written only after the checks pass.
    sample : the photo the test input is cut from (default: the bundled BCCD sample).
    scale : the factor ``sample`` is resized by before the test input is cut from its centre; None:
        the factor hemaseg's pipeline gives the network for it (one :func:`hemaseg.segment` run).
    test_size : side of the square test input in px (rounded down to a multiple of the stride).
    test : validate the package with the spec library and reproduce the test output with
        ``bioimageio.core.test_model`` (the TorchScript weights and the described processing); a
        failure writes nothing. False: build and save only.

    Returns
    -------
    Summary: file, format_version, weights, test input shape, stride, classes, the validation status
    (``passed`` when tested, else ``not tested``) and the checks run (:func:`validate_package`).
    """
    with warnings.catch_warnings():
        # bioimage.io's torchscript weights format is TorchScript, which torch now calls deprecated at each of
        # trace, save and load (five warnings a package): nothing the user can act on
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        return _export_bioimageio(model, out, sample, scale, test_size, test)


def _export_bioimageio(model, out: str | Path, sample: str | Path | None = None, scale: float | None = None,
                       test_size: int = DEFAULT_TEST_SIZE, test: bool = True) -> dict:
    """:func:`export_bioimageio`'s work."""
    require_torch("hemaseg export --format bioimageio")
    import torch

    v, save_zip, save_folder = _spec_modules()
    out = Path(out)
    if out.suffix.lower() != ".zip" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HemasegUsageError("--out", f"{out}: a bioimage.io package is a .zip file or a new (or empty) folder")
    if test_size < 1:
        raise HemasegUsageError("test_size", f"{test_size}: must be a positive number of px")
    module, card = load_model(model, "cpu")
    arch = card["architecture"]["name"]
    if arch not in UNETS:
        raise HemasegInputError(model, f"a {arch}, not a U-Net ({', '.join(UNETS)}): not exported to bioimage.io")
    if card.get("aux_outputs"):
        raise HemasegInputError(model, f"extra outputs {', '.join(card['aux_outputs'])} beside the classes have no "
                                       "bioimage.io description (one softmax over every channel)")
    norm = card.get("normalization", {})
    if norm.get("type", "percentile") != "percentile" or norm.get("invert_bright"):
        raise HemasegInputError(model, f"normalisation {norm} has no bioimage.io description (percentile only)")
    low, high = float(norm.get("low", 1.0)), float(norm.get("high", 99.0))
    module = module.to(memory_format=torch.contiguous_format).eval()
    stride = int(getattr(module, "stride", 32))
    task = get_task(card.get("task", "wbc"))
    image = read_image(sample or SAMPLE_PHOTO)
    if scale is None:
        scale = float(segment(image, model=model).scale)
    elif not 0 < scale <= 16:
        raise HemasegUsageError("scale", f"{scale}: must be in (0, 16]")
    tile = cut_test_input(image, scale, stride, test_size)
    x = np.ascontiguousarray(normalize(tile, low, high).transpose(2, 0, 1)[None])
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    probs = softmax(logits, axis=1).astype(np.float32)

    out.parent.mkdir(parents=True, exist_ok=True)
    # staged beside the output, so that putting it in place is a rename on one file system (atomic), not a copy
    with tempfile.TemporaryDirectory(prefix=".hemaseg-bioimageio-", dir=out.parent) as tmp:
        work = Path(tmp) / "files"
        work.mkdir()
        np.save(work / "test_input.npy", tile.transpose(2, 0, 1)[None].astype(np.float32))
        np.save(work / "test_output.npy", probs)
        Image.fromarray(tile).save(work / "sample_input.png")
        tifffile.imwrite(work / "sample_output.tif", probs[0])
        _cover(tile, probs[0], dict(task.colors)).save(work / "cover.png")
        (work / "README.md").write_text(_readme(card, task, stride, tile.shape[0], scale, low, high, str(model)))
        (work / "hemaseg_card.json").write_text(json.dumps(card, indent=2))
        with torch.no_grad():
            traced = torch.jit.trace(module, torch.from_numpy(x), check_trace=False)
            # The trace holds for other sizes too (fully convolutional): checked on a smaller input.
            other = torch.from_numpy(x[..., : max(stride, x.shape[2] - stride), :])
            if not torch.allclose(traced(other), module(other), atol=1e-4):
                raise HemasegInputError(model, "the TorchScript trace differs from the model on another input size")
        torch.jit.save(traced, str(work / "weights_torchscript.pt"))
        try:
            descr = describe(work, card, task, stride, torch.__version__, low, high, probs.shape[1])
        except Exception as exc:  # pydantic's ValidationError: the description itself is invalid
            raise HemasegInputError(model, f"bioimage.io description invalid ({' '.join(str(exc).split())[:400]})") from None
        staged = Path(tmp) / ("package.zip" if out.suffix.lower() == ".zip" else "package")
        if staged.suffix == ".zip":
            save_zip(descr, output_path=staged)
        else:
            save_folder(descr, output_path=staged)
        status, checks = "not tested", []
        if test:
            status, checks = validate_package(staged)
            if status != "passed":
                raise HemasegInputError(model, f"the bioimage.io package fails its checks ({status}): not written")
        if out.is_dir():
            out.rmdir()  # the new or empty folder checked above
        shutil.move(str(staged), str(out))
    return {"file": str(out), "format": "bioimageio", "format_version": str(descr.format_version),
            "weights": "torchscript", "test_input": list(tile.transpose(2, 0, 1)[None].shape), "stride": stride,
            "classes": card.get("classes", []), "status": status, "checks": checks}


def validate_package(path: str | Path) -> tuple[str, list[str]]:
    """Validate a bioimage.io package (zip, folder or rdf.yaml) with the spec library (format, files and
    their hashes), then run :func:`bioimageio.core.test_model` (the weights reproduce the test output
    through the described processing; inference at other sizes and batch sizes).

    Returns
    -------
    status : ``"passed"``, or the first failing check on one line.
    checks : the name of every check run, with its status (``"passed: Reproduce test outputs ..."``).
    """
    from bioimageio.spec import load_description

    summary = load_description(path, perform_io_checks=True).validation_summary
    checks = [f"{d.status}: {d.name}" for d in summary.details]
    if summary.status not in ("passed", "valid-format"):
        return _first_problem(summary), checks
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise HemasegUsageError("--format bioimageio", f"testing the package needs bioimageio.core: {BIOIMAGEIO_EXTRA}") from None
    summary = test_model(path)
    checks = [f"{d.status}: {d.name}" for d in summary.details]
    return ("passed" if summary.status == "passed" else _first_problem(summary)), checks
