"""Command line (typer). Each command parses arguments and calls the library."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from typer.core import TyperGroup

from hemaseg.apps.web import DEFAULT_HOST, DEFAULT_PORT, MAX_UPLOAD_MB, check_address, require_flask
from hemaseg.apps.web import serve as run_serve
from hemaseg.classical import grown_box, hsv_wbc_mask, wbc_crops
from hemaseg.core.options import NO_MODEL, OPTION_RANGES, check_numbers, refuse_unused
from hemaseg.core.vocabulary import UNTYPED, canonical_name, category_of
from hemaseg.engine.evaluate import split_name
from hemaseg.engine.predict import backend_scope, get_model, resolve_device
from hemaseg.engine.runtime import BACKENDS, check_backend, require_torch
from hemaseg.engine.task import Task, param_value, params_help
from hemaseg.engine.tiling import DEFAULT_TILE
from hemaseg.engine.train import RUN_FILES, has_checkpoint, hold_run, prepare_run, remove_run_files
from hemaseg.errors import HemasegError, HemasegInputError, HemasegUsageError
from hemaseg.io.annotations import entries_on_photos
from hemaseg.io.convert import CONVERTERS, read_annotations
from hemaseg.io.convert import convert as run_convert
from hemaseg.io.datasets import IMAGE_DIRS, MASK_DIRS, label_images_among
from hemaseg.io.images import (
    IMAGE_SUFFIXES,
    LazyImage,
    expand_inputs,
    image_size,
    list_images,
    open_image,
    pixels_sha256,
    read_image,
    real_path,
)
from hemaseg.io.outputs import output_stems, write_segmentation
from hemaseg.io.writers import check_output, nan_as_null, write_json, write_png, write_text
from hemaseg.models.registry import SAMPLE_PHOTO, WEIGHTS_DIR, card_figures, list_models, load_card
from hemaseg.pipelines.analyze import MIN_CONFIDENCE, counted_types
from hemaseg.pipelines.batch import PARTS as BATCH_PARTS
from hemaseg.pipelines.batch import (
    RUN_FILE,
    BatchOptions,
    dask_client,
    is_done,
    prepare_batch,
    run_photos,
    write_batch_files,
)
from hemaseg.pipelines.export import EXPORTERS
from hemaseg.pipelines.export import export as run_export
from hemaseg.pipelines.segment import CELL_DIAMETER_UM, REGION_TASKS, diameter_from_pixel_size, file_pixel_size
from hemaseg.progress import INPUT_NAMED, track
from hemaseg.tasks import get_task, list_tasks
from hemaseg.tasks.cells.infer import is_detector
from hemaseg.tasks.cells.train import coco_photo_folders
from hemaseg.tasks.smear10.synth import PARTS, compose, image_seed, synth_config, write_smear
from hemaseg.tasks.smear10.synth import wbc_crops as cut_wbcs
from hemaseg.tasks.smear10.train import held_out_crops, load_bank
from hemaseg.tasks.wbc_type.crops import (
    ALL_CLASSES,
    crop_for,
    crops_each,
    group_probs,
    predict_crops,
    prediction_rows,
    takes_ruler,
)
from hemaseg.tasks.wbc_type.explain import cam_overlay, features, grad_cam, gradcam_mask, tsne_plot
from hemaseg.version import __version__

# The command-line library's own error classes, found from a public one (typer vendors click in
# recent versions, so ``click``'s classes are not the ones raised).
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLI_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """The command group: a usage error the command-line library finds itself (a number that is not
    one, an unknown option, a missing argument) is one line on stderr naming the command and the
    option, exit code 2, as hemaseg's own errors are, instead of a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help, as always
                exc.show()
            else:
                command = exc.ctx.command_path if exc.ctx is not None else "hemaseg"
                given = list(sys.argv[1:] if args is None else args)
                if (exc.ctx is None or exc.ctx.command is self) and given and given[0] in self.commands:
                    command = f"{command} {given[0]}"  # an option's value missing at the end: still the command's
                message = " ".join(exc.format_message().split())
                typer.echo(f"{command}: {message} (see {command} --help)", err=True)
            sys.exit(exc.exit_code)
        except _CLI_ERROR as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Blood-smear segmentation, counting and WBC typing on a CPU.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the hemaseg version and exit")) -> None:
    """Blood-smear segmentation, counting and WBC typing on a CPU."""


BACKEND_HELP = (f"where the networks run: {', '.join(BACKENDS)} (auto: ONNX Runtime where the model has an ONNX file, "
                "torch otherwise)")


def _device(device: str) -> str:
    try:
        return resolve_device(device)
    except HemasegUsageError as exc:
        raise typer.BadParameter(exc.reason, param_hint=exc.option) from None


def _check_pixel_size(task: str, pixel_size: float | None) -> None:
    """A ``--pixel-size`` that gives ``task`` a cell diameter outside the diameters it works at is a usage error
    naming the diameter (it was dropped without a word and the size estimated)."""
    if pixel_size is None or diameter_from_pixel_size(task, 1.0) is None:
        return
    if diameter_from_pixel_size(task, pixel_size) is None:  # (with --cell-diameter it is not used: refused there)
        r = OPTION_RANGES["cell_diameter"]
        cell = "white cell" if task == "wbc" else "red cell"  # (the size each task's diameter is of)
        raise HemasegUsageError("--pixel-size", f"{pixel_size:g} µm per px gives a {cell} of "
                                                f"{CELL_DIAMETER_UM[task] / pixel_size:.4g} px, outside the {r.lo:g}-"
                                                f"{r.hi:g} px hemaseg works at; is it in µm per px?")


def _usage_errors(command):
    """A usage error raised in a command's body (by the library or the command): one line naming
    the option and what is allowed, exit 2, before any work is done."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HemasegUsageError as exc:
            typer.echo(f"{exc.option}: {exc.reason}", err=True)
        except typer.BadParameter as exc:
            hint = exc.param_hint if isinstance(exc.param_hint, str) else "/".join(exc.param_hint or [])
            typer.echo(f"{hint + ': ' if hint else ''}{exc.message}", err=True)
        except RuntimeError as exc:  # Path.resolve() on a link that leads back to itself: a failed input, not a trace
            if not str(exc).startswith("Symlink loop from "):
                raise
            typer.echo(f"{str(exc)[len('Symlink loop from '):].strip(chr(39))}: a loop of links, no file", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(2)

    return wrapper


def _stems(paths, out: Path, endings, fixed=(), reserved=()) -> dict:
    """Output stem of each input (hemaseg.io.outputs.output_stems); renamed groups said on stderr."""
    stems, notes = output_stems(paths, out, endings, fixed=fixed, reserved=reserved)
    for note in notes:
        typer.echo(note, err=True)
    return stems


def _out_apart_from_inputs(images, out: Path, recursive: bool = False, paths=()) -> None:
    """Refuse an output folder that is an input folder (or lies inside one read ``recursive``ly), or the
    folder of one of the input files ``paths``: the outputs written there would be read as images by the
    next run (an analyze audit: a second run into the photos' folder took the overlays for photos), or
    replace the files beside the inputs (a segment audit: ``segment 'gt/*.bmp' --out gt`` replaced
    wbc-seg's ground-truth NNN.png beside each NNN.bmp)."""
    o = out.resolve()
    for item in images:
        p = Path(item)
        if p.is_dir() and (real_path(p) == o or (recursive and real_path(p) in o.parents)):
            where = "the input folder" if real_path(p) == o else "inside the input folder"
            raise HemasegUsageError("--out", f"{out} is {where} {item}: the next run would read what is written "
                                             "there as images; write to another folder")
    beside = next((p for p in paths if real_path(p).parent == o), None)
    if beside is not None:
        raise HemasegUsageError("--out", f"{out} is the folder of the input {beside}: what is written there would "
                                         "lie among the inputs and the files beside them; write to another folder")
    # the masks paired with an images/ input (a lab's ground truth: `segment data/images --out data/masks` replaced
    # every mask with a prediction, exit 0, and the next `train` learnt from them)
    folders = {real_path(p) for p in images if Path(p).is_dir()} | {real_path(p).parent for p in paths}
    paired = next((f for f in folders if f.name.lower() in IMAGE_DIRS and o.parent == f.parent
                   and o.name.lower() in MASK_DIRS), None)
    if paired is not None and o.is_dir():
        raise HemasegUsageError("--out", f"{out} holds the masks paired with the images in {paired}: the outputs would "
                                         "replace them; write to another folder")


def _keep_existing_export(path: Path, option: str, overwrite: bool) -> None:
    """Refuse an existing --cvat/--coco file of analyze unless --overwrite (a walkthrough's ``--coco
    lab/annotations.json`` replaced the lab's annotations with predictions; whether a COCO file is an earlier
    export of this batch no field tells: ``convert`` and ``serve`` write the same)."""
    if path.is_file() and not overwrite:
        raise HemasegUsageError(option, f"{path} exists and would be replaced (a lab's annotations?); give another "
                                        "file name, move it away, or --overwrite (not with --resume) to start afresh "
                                        "and replace it")


UNSEARCHED_CAP = 1000  # image files counted in sub-folders before saying "1000+" (a network share's tree is slow)


def _say_unsearched(images, out: Path | None = None, paths=()) -> None:
    """One line for each folder among ``images`` with images at its top whose sub-folders hold more, which are not
    searched (a walkthrough's `analyze batch` did its 18 top photos and passed over the 25 in batch/a, batch/b unsaid;
    with none at the top :func:`_none_found` says so). The ``out`` folder (this command's outputs), folders given too
    and the images among ``paths`` (given, or a glob's) are not counted, nor links to folders; one example is named,
    so that outputs of earlier runs are told from photos."""
    skip = {real_path(out)} if out is not None else set()
    skip |= {real_path(Path(i)) for i in images if Path(i).is_dir()}
    listed = {real_path(p) for p in paths}
    for item in images:
        if not Path(item).is_dir() or not expand_inputs([item]):
            continue
        n, example = 0, None
        for root, dirs, files in os.walk(item):
            dirs[:] = sorted(d for d in dirs if real_path(Path(root) / d) not in skip)
            if Path(root) == Path(item):
                continue
            for f in sorted(files):
                if Path(f).suffix.lower() in IMAGE_SUFFIXES and real_path(Path(root) / f) not in listed:
                    n += 1
                    example = example or Path(root) / f
            if n >= UNSEARCHED_CAP:
                break
        if n:
            typer.echo(f"{item}: {n}{'+' if n >= UNSEARCHED_CAP else ''} image file(s) in its sub-folders (e.g. "
                       f"{example}) are not searched; give those folders too if they hold photos, or quote a glob "
                       f"such as '{Path(item) / '**' / '*.jpg'}'", err=True)


def _none_found(images) -> str:
    """What to say when ``images`` hold no image: "no images found", and where a folder's sub-folders hold some,
    that they are not searched (a folder of sub-folders said "no images found" alone)."""
    deeper = next((item for item in images if Path(item).is_dir() and expand_inputs([item], True)), None)
    return "no images found" + (f" ({deeper}'s sub-folders are not searched: give them, or quote a glob such as "
                                f"'{Path(deeper) / '**' / '*.jpg'}')" if deeper else "")


def _empty_folders(images, recursive: bool = False) -> int:
    """One line for each folder among ``images`` that holds no image (a failed input, as a glob matching
    nothing is: a walkthrough's empty folder beside a photo gave exit 0 without a word); their number."""
    empty = [item for item in images if Path(item).is_dir() and not expand_inputs([item], recursive)]
    for item in empty:
        _fail(item, "no images found in this folder" + (" (sub-folders included)" if recursive else ""))
    return len(empty)


def _refuse_other_task(card: dict, model, task: str, option: str = "--model") -> None:
    """Exit 2 in one line when ``model``'s card is of another task than ``task`` (a card naming none is taken
    as ``task``'s), or its ``"postprocess"`` names or sets a parameter the task's does not take."""
    if card.get("task", task) != task:
        _fail(option, f"{model} is a {card.get('task')} model, not a {task} model")
        raise typer.Exit(2)
    spec = get_task(task)
    if spec.Params is not None:  # its card's thresholds must be the task's (each image failed on them, or --post)
        try:
            spec.params(card)
        except HemasegError as exc:
            _fail(option, f"{model}: {getattr(exc, 'reason', exc)}")
            raise typer.Exit(2) from None


def _fail_model(exc: HemasegError, model, option: str = "--model") -> None:
    """One line for a ``--model`` that does not load, naming the option (as every usage error does)."""
    _fail(option, f"{model}: {getattr(exc, 'reason', str(exc))}")


def _fail(path, reason: str) -> None:
    typer.echo(f"{path}: {reason}", err=True)


def _fail_error(exc: HemasegError, path=None) -> None:
    """One line for a hemaseg error: the given path (else the error's own) and the reason."""
    _fail(path if path is not None else getattr(exc, "path", ""), getattr(exc, "reason", str(exc)))


def _for_each(paths, label: str, work) -> int:
    """Run ``work(path)`` on every path with a progress bar; a failing input is reported as one
    line and the batch goes on, and what is logged meanwhile names it. Returns the number of failures."""
    failed = 0
    for path in track(paths, label):
        with INPUT_NAMED.working_on(path):
            try:
                work(path)
            except HemasegError as exc:
                failed += 1
                _fail_error(exc, path)
            except Exception as exc:  # one bad image must not stop the batch
                failed += 1
                _fail(path, f"{exc.__class__.__name__}: {exc}")
    return failed


def _task(name: str, hint: str = "--task"):
    """The task object of ``name``; a usage error (exit 2) listing the known ones otherwise."""
    try:
        return get_task(name)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint=hint) from None


def post_params(spec, card: dict, items: list[str]):
    """The task's post-processing parameters from ``--post NAME=VALUE`` items over the model card's: a
    usage error (exit 2) naming the item for an unknown name or a value of the wrong kind. The
    benchmarks' ``--post`` reads its items here too, so both take the same names and values."""
    if spec.Params is None:
        raise typer.BadParameter(f"task {spec.name} has no post-processing parameters", param_hint="--post")
    defaults = spec.params(card)
    if [i.strip().lower() for i in items] == ["help"]:  # what there is to set, with this model's values
        for line in params_help(defaults, spec.name):
            typer.echo(line)
        raise typer.Exit(0)
    given = {}
    known_names = [f.name for f in dataclasses.fields(defaults) if f.init]  # (not RANGES, __doc__, ...)
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known_names:
            known = ", ".join(known_names)
            raise typer.BadParameter(f"{item!r}: give NAME=VALUE with NAME one of {known}", param_hint="--post")
        try:
            value = param_value(defaults, name, text)
        except ValueError as exc:
            raise typer.BadParameter(f"{item!r}: {exc}", param_hint="--post") from None
        wants = next(f for f in dataclasses.fields(defaults) if f.name == name).metadata.get("model")
        if isinstance(value, str) and value not in NO_MODEL and wants:
            try:  # a parameter naming a model: it must load (not fail on every image later)
                task = get_model(value)[1].get("task", "wbc")
            except HemasegError as exc:
                raise typer.BadParameter(f"{item!r}: {getattr(exc, 'reason', exc)}", param_hint="--post") from None
            if isinstance(wants, str) and task != wants:  # a wbc-type model here failed on every image
                raise typer.BadParameter(f"{item!r}: {value} is a {task} model, not a {wants} model",
                                         param_hint="--post")
        given[name] = value
    return dataclasses.replace(defaults, **given)


def _distinct_data(data: list[str] | None, option: str = "--data") -> list[str] | None:
    """The ``--data`` folders, each once (a folder given twice counted its images twice, and a run then
    validated on images it trained on); one lying inside another is a usage error naming both."""
    if not data:
        return data
    seen: dict[Path, str] = {}
    for d in data:
        seen.setdefault(Path(d).resolve(), d)
    for q, d in seen.items():
        for r, e in seen.items():
            if r != q and r in q.parents:
                raise HemasegUsageError(option, f"{d} lies inside {e}: its images would count twice; give one of them")
    return list(seen.values())


def _check_method(spec, method: str) -> None:
    if method not in spec.classical_methods:
        raise typer.BadParameter(f"task {spec.name} has classical methods: {', '.join(spec.classical_methods) or 'none'}",
                                 param_hint="--method")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # a warning about one input of a batch names it
        if INPUT_NAMED not in handler.filters:
            handler.addFilter(INPUT_NAMED)


@app.command()
@_usage_errors
def analyze(
    images: Optional[List[str]] = typer.Argument(None, help="smear photos, folders or globs (none: the bundled sample)"),
    out: Path = typer.Option(Path("hemaseg-out"), help="output folder (created)"),
    model: str = typer.Option("cells", help="cells model: bundled name, .safetensors file or run folder"),
    type_model: str = typer.Option("wbc-type", help="WBC-type classifier"),
    cell_diameter: Optional[float] = typer.Option(None, help="red-cell diameter in px; default: estimated per image"),
    cvat: Optional[Path] = typer.Option(None, help="also write CVAT for images 1.1 XML (polygons with labels)"),
    coco: Optional[Path] = typer.Option(None, help="also write COCO JSON"),
    coco_rle: bool = typer.Option(False, "--coco-rle", help="COCO masks as RLE instead of polygons"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    tile: Optional[int] = typer.Option(None, help=f"largest tile for big images (px at model scale; default "
                                                 f"{DEFAULT_TILE}); the U-Net cells model only: a Mask R-CNN "
                                                 "model reads each image whole"),
    sample_id: Optional[str] = typer.Option(None, "--sample-id", help="the sample (slide, patient specimen) the "
                                                                      "photos are of: in the report and results.json"),
    min_confidence: float = typer.Option(MIN_CONFIDENCE, "--min-confidence",
                                         help="a WBC whose most probable type has a calibrated probability under "
                                              "this is left untyped, listed for review, and kept out of the "
                                              "differential"),
    pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="µm per px of the photos: in the "
                                                                          "report, and without --cell-diameter the "
                                                                          "red-cell diameter is 7.5 µm over it; "
                                                                          "default: from the files' resolution tags "
                                                                          "(TIFF, OME-TIFF, PNG, JPEG) when they "
                                                                          "give one"),
    resume: bool = typer.Option(False, "--resume", help="continue the batch in --out where it stopped: photos "
                                                        "already done are skipped, the report rebuilt"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start afresh in an --out folder that already holds "
                                                              "a batch (its files are deleted), and replace "
                                                              "existing --cvat/--coco files"),
    dask: Optional[str] = typer.Option(None, "--dask", help="run the photos on a Dask cluster: a scheduler "
                                                            "address (tcp://host:8786) or scheduler file, or "
                                                            "local:N for N local worker processes"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    post: Optional[List[str]] = typer.Option(None, "--post", help="cells post-processing parameter NAME=VALUE "
                                             "(repeatable; the names of `segment --task cells --post`), e.g. "
                                             "split_neck=0.9; --post help lists them with this model's values)"),
) -> None:
    """Whole smear: every RBC, WBC and platelet outlined, WBCs typed, counts and differential.

    Writes OUT/results.json (seed-003 schema), OUT/counts.csv (one row per photo, then all photos
    pooled; the differential with its 95 % intervals), OUT/<stem>_overlay.png, OUT/report.html, and
    OUT/parts/<stem>.json as each photo is done (what the report needs of it; --resume reads them).
    """
    _setup_logging(False)
    check_numbers(cell_diameter=cell_diameter, tile=tile, min_confidence=min_confidence, pixel_size=pixel_size)
    if cell_diameter is None:  # (beside --cell-diameter the pixel size is not used)
        _check_pixel_size("cells", pixel_size)
    if sample_id is not None and not sample_id.strip():
        raise HemasegUsageError("--sample-id", "empty; give the sample's identifier, or leave the option out")
    if not coco:
        refuse_unused("applies to the --coco file only: give --coco FILE", coco_rle=coco_rle)
    check_output(out, "--out", folder=True)
    for option, path in (("--cvat", cvat), ("--coco", coco)):
        if path is not None:
            check_output(path, option, folder=False)
            _keep_existing_export(path, option, overwrite)
    dev = _device(device)
    check_backend(backend)
    for option, name, task in (("--model", model, "cells"), ("--type-model", type_model, "wbc-type")):
        try:
            card = get_model(name, dev, backend)[1]
        except HemasegError as exc:
            _fail_model(exc, name, option)  # which of the two models it is
            raise typer.Exit(2) from None
        _refuse_other_task(card, name, task, option)  # before any photo (each photo failed on it, exit 1)
    overrides: tuple = ()
    if post:  # checked against the cells model's card now, not on each photo
        chosen = post_params(get_task("cells"), get_model(model, dev, backend)[1], post)
        names = dict.fromkeys(item.partition("=")[0].strip().replace("-", "_") for item in post)
        overrides = tuple(sorted((n, getattr(chosen, n)) for n in names))  # --resume: the same in any order
    if tile is not None and is_detector(get_model(model, dev, backend)[1]):
        typer.echo(f"--tile: not used by {model}, a Mask R-CNN model (it reads each image whole)", err=True)
    tile = tile or DEFAULT_TILE
    if not images:
        images = [str(SAMPLE_PHOTO)]
    paths = _without_label_images(images, list_images(images))
    _out_apart_from_inputs(images, out, paths=paths)
    if not paths:
        _fail(" ".join(images), _none_found(images))
        raise typer.Exit(1)
    _say_unsearched(images, out, paths)
    in_parts = next((p for p in paths if (out / BATCH_PARTS).resolve() in real_path(p).parents), None)
    if in_parts is not None:  # --overwrite deleted it with the batch's parts
        raise HemasegUsageError("--out", f"the photo {in_parts} lies in {out / BATCH_PARTS}, where the batch keeps "
                                         "its parts; move it out or give another --out")
    for option, path in (("--cvat", cvat), ("--coco", coco)):
        where = real_path(path) if path is not None else None  # OUT itself: output_stems refuses it
        if where is not None and (where == (out / BATCH_PARTS).resolve() or (out / BATCH_PARTS).resolve() in where.parents):
            raise HemasegUsageError(option, f"{path} lies in {out / BATCH_PARTS}, where the batch keeps its parts; "
                                            "give another file")
    stems = _stems(paths, out, ["_overlay.png"], fixed=[
        ("--out", out / "results.json"), ("--out", out / "counts.csv"), ("--out", out / "report.html"),
        ("--cvat", cvat), ("--coco", coco)], reserved=[RUN_FILE.removesuffix(".json")])
    opts = BatchOptions(model, type_model, cell_diameter, dev, tile, min_confidence, sample_id, pixel_size,
                        backend=backend, post=overrides)
    client = cluster = None
    if dask:  # reached before OUT is touched: an unreachable scheduler leaves no batch behind
        client, cluster = dask_client(dask)
    try:
        prepare_batch(out, opts, resume=resume, overwrite=overwrite, photos=paths)
        jobs = [(p, stems[p]) for p in paths]
        todo = [(p, s) for p, s in jobs if not (resume and is_done(out, s, p))]
        if len(todo) < len(jobs):
            typer.echo(f"--resume: {len(jobs) - len(todo)} of {len(jobs)} photos already done in {out}", err=True)
        failures = run_photos(todo, out, opts, client, on_failure=lambda p, reason: _fail(p, reason))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    n_failed = len(failures) + _empty_folders(images)
    failed = [(str(p), reason) for p, reason in failures]
    try:
        n, cells = write_batch_files(out, jobs, failed, cvat=cvat, coco=coco, coco_rle=coco_rle,
                                     min_confidence=opts.min_confidence,
                                     types=counted_types(load_card(opts.type_model)[1]))
    except HemasegInputError as exc:  # the CVAT file refused a photo's name: one line, the rest written (a review)
        _fail(exc.path, f"{exc.reason}; {cvat} not written")
        raise typer.Exit(1) from None
    typer.echo(f"{n}/{len(paths)} images analysed, {cells} cells; results in {out} "
               f"(report.html, results.json, counts.csv)", err=True)
    raise typer.Exit(1 if n_failed else 0)


@app.command()
@_usage_errors
def segment(
    images: Optional[List[str]] = typer.Argument(None, help="image files, folders or globs (none with --post help)"),
    task: str = typer.Option("wbc", help="wbc (cell + nucleus), nuclei (instances), smear10 (10-class map) or "
                                          "cells (RBC/WBC/platelet instances)"),
    out: Path = typer.Option(Path("hemaseg-out"), help="output folder (created)"),
    model: Optional[str] = typer.Option(None, help="bundled model name, .safetensors file or training run folder"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    cell_diameter: Optional[float] = typer.Option(None, help="WBC (nuclei: nucleus; smear10: red cell) diameter in px; "
                                                             "default: estimated per image"),
    overlay: bool = typer.Option(False, "--overlay", help="also write <stem>_overlay.png"),
    tile: Optional[int] = typer.Option(None, help=f"largest tile for big images (px at model scale; default "
                                                 f"{DEFAULT_TILE})"),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="smear10: average the map over the image's "
                                                                     "flips (default: the model card's choice)"),
    method: Optional[str] = typer.Option(None, help="classical method instead of the model: "
                                                    "wbc: hsv|watershed|blobs; nuclei: watershed|blobs"),
    pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="µm per px; without --cell-diameter "
                                                                          "it sets the diameter (wbc: 12 µm, "
                                                                          "smear10 and cells: a 7.5 µm red cell; "
                                                                          "nuclei: not used); default: the files' "
                                                                          "OME PhysicalSizeX or resolution tags"),
    post: Optional[List[str]] = typer.Option(None, "--post", help="post-processing parameter NAME=VALUE (repeatable; "
                                                                  "the names of the task's parameters, e.g. wbc "
                                                                  "red_ring=0.2, min_cell_fraction=0.3; default: "
                                                                  "the model card's, else the task's; --post help "
                                                                  "lists them with the model's values)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Segment images: OUT/<stem>.png (wbc: 0/128/255; nuclei: uint16 instance labels; smear10: class index 0-9
    + <stem>_color.png palette) and OUT/<stem>.json polygons."""
    _setup_logging(verbose)
    spec = _task(task)
    if not spec.can_segment:
        raise typer.BadParameter(f"task {task!r} has no segmentation model", param_hint="--task")
    asks_help = [i.strip().lower() for i in post or []] == ["help"]  # the README's `--post help` needs no image
    if not images and not asks_help:
        raise _USAGE_ERROR("Missing argument 'images'.")  # as the command line library said it
    images = images or []
    check_numbers(cell_diameter=cell_diameter, tile=tile, pixel_size=pixel_size)
    if pixel_size is not None and diameter_from_pixel_size(spec.name, 1.0) is None:  # help: 'nuclei: not used'
        raise HemasegUsageError("--pixel-size", f"not used by --task {spec.name} (no typical cell size in µm)")
    if cell_diameter is None and method is None:  # (not used beside --cell-diameter; --method refuses it below)
        _check_pixel_size(spec.name, pixel_size)
    check_output(out, "--out", folder=True)
    dev = _device(device)
    check_backend(backend)
    if tta is not None and (method or not spec.supports_tta):
        with_tta = ", ".join(n for n in list_tasks() if get_task(n).supports_tta)
        raise typer.BadParameter(f"test-time flips are for the {with_tta} models, not {spec.name}"
                                 + (" or a classical method" if method else ""), param_hint="--tta")
    loaded, params = None, None
    if method:
        _check_method(spec, method)
        refuse_unused(f"not used by --method {method} (a classical method: no model, no rescaling)",
                      model=model, cell_diameter=cell_diameter, tile=tile, pixel_size=pixel_size, post=post or None)
        model_name = f"classical:{method}"
    else:
        model_name = model or spec.default_model
        try:
            loaded = get_model(model_name, dev, backend)
        except HemasegError as exc:
            _fail_model(exc, model_name)
            raise typer.Exit(2) from None
        _refuse_other_task(loaded[1], model_name, spec.name)
        if post:
            params = post_params(spec, loaded[1], post)
    paths = _without_label_images(images, list_images(images))
    _out_apart_from_inputs(images, out, paths=paths)
    if not paths:
        _fail(" ".join(images), _none_found(images))
        raise typer.Exit(1)
    _say_unsearched(images, out, paths)
    endings = [f"{s}.png" for s in spec.label_suffixes] + [".json"] + (["_overlay.png"] if overlay else [])
    stems = _stems(paths, out, endings)
    out.mkdir(parents=True, exist_ok=True)

    def work(path):
        # A large TIFF is read region by region by the tasks that work so (wbc), else whole.
        image = open_image(path, lazy=spec.name in REGION_TASKS and method is None)
        if overlay and isinstance(image, LazyImage):  # refused before the work (it was refused after minutes of it,
            h, w = image.shape[:2]                   # its label PNG and JSON written, and counted failed)
            raise HemasegInputError(path, f"{w}x{h} px, read region by region: no overlay is drawn of an image this "
                                          "large (leave --overlay out)")
        diameter = cell_diameter
        if diameter is None and method is None:
            diameter = diameter_from_pixel_size(spec.name, pixel_size if pixel_size is not None
                                                else file_pixel_size(path, spec.name))
        with backend_scope(backend):  # and any further model the task loads by name (smear10's WBC typer)
            seg = spec.predict(image, loaded, cell_diameter=diameter, device=dev, tile=tile or DEFAULT_TILE,
                               tta=tta, params=params, method=method)
        if diameter is not None and cell_diameter is None:  # from --pixel-size or the file's tags, not given as such
            seg.diameter_from = "pixel size"
        write_segmentation(out, stems[path], path, image, seg, spec.label_images, spec.name, model_name,
                           spec.colors if overlay else None)

    failed = _for_each(paths, "segment", work)
    empty = _empty_folders(images)
    typer.echo(f"{len(paths) - failed}/{len(paths)} images segmented; results in {out}", err=True)
    raise typer.Exit(1 if failed or empty else 0)


@app.command()
@_usage_errors
def train(
    task: str = typer.Argument(..., help="wbc, nuclei, smear10, cells or wbc-type (any registered task)"),
    data: Optional[List[str]] = typer.Option(None, help="data folder(s): image/mask pairs, the DSB layout for nuclei, "
                                                        "ImageFolder trees or wbc-seg + class CSV for wbc-type, "
                                                        "folders to cut real cells from for smear10 (none: procedural)"),
    out: Optional[Path] = typer.Option(None, help="run folder (checkpoints, state.json, curves, model card)"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this folder where it stopped"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start afresh in an --out folder that already holds "
                                                              "a run (that run's files are deleted)"),
    arch: Optional[str] = typer.Option(None, help="architecture name (see `hemaseg models`; default unet-dropout); "
                                                 "cells: also maskrcnn"),
    epochs: Optional[int] = typer.Option(None, help="default: the task's (wbc 200, nuclei 100, smear10 130, cells 60, wbc-type 50)"),
    batch_size: Optional[int] = typer.Option(None, help="default: the task's (wbc 16, nuclei 8, smear10 16, cells 8 "
                                                        "(maskrcnn 4), wbc-type 32)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (default: the task's; wbc-type 3e-3, the "
                                                  "others 2e-3)"),
    crop: Optional[int] = typer.Option(None, help="training crop size in px (wbc 160, nuclei 224; wbc-type input 80)"),
    samples_per_epoch: Optional[int] = typer.Option(None, help="augmented samples per epoch (0: one pass; default: "
                                                               "the task's, e.g. nuclei 400, smear10 960, cells 400, "
                                                               "wbc-type 1536)"),
    patience: Optional[int] = typer.Option(None, help="early stop after this many epochs without improvement"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="scale and stain/colour augmentation "
                                                                            "(default: on)"),
    val_fraction: Optional[float] = typer.Option(None, help="validation share (wbc 0.2, nuclei 0.1)"),
    seed: Optional[int] = typer.Option(None, help="random seed of the split, augmentation and initialisation (default 0)"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
    device: str = typer.Option("cpu", help="cpu or auto (auto: cpu): training runs on the CPU, where every "
                                           "recipe was made and checked"),
    target_images: Optional[str] = typer.Option(None, help="wbc-type: unlabelled images of the lab to adapt to (DANN)"),
    backbone: Optional[str] = typer.Option(None, help="wbc-type: backbone (default resnet10-half, or a timm name; "
                                                    "never downloaded)"),
    normalise_cells: Optional[bool] = typer.Option(None, "--normalise-cells/--no-normalise-cells",
                                                   help="wbc-type: centre and rescale each crop to its WBC (default: on)"),
    recipe: Optional[str] = typer.Option(None, help="smear10: 'seed002' = the seed's recipe (lr 1e-3, then 1e-4 "
                                                    "after 5 of 35 epochs, batch 16)"),
    workers: Optional[int] = typer.Option(None, help="data-loader worker processes (smear10 composes its smears "
                                                     "in them; default: 1 for smear10, else 0 = in the training process)"),
    reuse: Optional[int] = typer.Option(None, help="smear10: each composed smear serves this many consecutive "
                                                   "epochs, re-augmented each time (faster epochs; default 4)"),
    ruler: Optional[bool] = typer.Option(None, "--ruler/--no-ruler", help="wbc-type: give the classifier each "
                                         "crop's size relative to its red cells and nucleus share (default: off)"),
    replay: Optional[List[str]] = typer.Option(None, help="wbc-type with --init: labelled crops of the labs the "
                                                       "fine-tune must not forget (drawn half the time)"),
    looks: Optional[List[str]] = typer.Option(None, help="wbc-type: unlabelled single-WBC crops of other labs "
                                              "(folders): half the training crops are redrawn in their colours, "
                                              "measured around the cell (repeatable)"),
    colour: Optional[str] = typer.Option(None, help="wbc-type: the crops' colours as the classifier sees them: "
                                         "rgb, grey (luminance only: stain colours cannot decide a type) or stain "
                                         "(each crop redrawn with reference dyes and light, Macenko) or shape "
                                         "(luminance beside the segmented nucleus and cell masks) or shape-hue "
                                         "(luminance, the dyes' red-blue balance, the cell's parts) "
                                         "(default rgb)"),
    crop_padding_: Optional[str] = typer.Option(None, "--crop-padding",
                                                help="wbc-type: where a crop's square around its WBC leaves the "
                                                     "image: reflect it, or background (the slide's own colour; "
                                                     "training then also cuts some crops tight around their cell, "
                                                     "as crops cut on a WBC's box are) (default reflect)"),
    lab_balance: Optional[int] = typer.Option(None, help="wbc-type: within each type, the --data labs share its "
                                              "draws in proportion to min(their crops of it, N), so a small lab is "
                                              "not drowned by a large one (default 0: class-balanced over all crops)"),
    held_out: Optional[str] = typer.Option(None, help="smear10: split JSON whose 'val' crops stay out of training "
                                                      "(the WBC-type classifier's: benchmarks/splits/wbc-type-3labs.json)"),
    real_fields: Optional[float] = typer.Option(None, help="smear10: share of the training draws that are real "
                                                "fields with every cell boxed (TXL-PBC among --data), learnt "
                                                "where the boxes are sure: red cells healthy, WBCs, background "
                                                "(default 0: composites only)"),
    unboxed: Optional[str] = typer.Option(None, help="cells (U-Net): stained pixels outside every box are 'ignore'd by "
                                               "the loss (learn every cell) or taught as 'background' (learn the "
                                               "boxes as they are; a detector such as maskrcnn always does)"),
    leave_out: Optional[List[str]] = typer.Option(None, help="cells: leave the photos of this source out of training "
                                                  "and validation (sources.csv beside a YOLO dataset, e.g. TXL-PBC's "
                                                  "BCCD; repeatable): leave-one-source-out runs"),
    paste_red_cells: Optional[float] = typer.Option(None, help="wbc: share of the pixel-annotated training images "
                                                    "that get real red cells (cut from boxed fields among --data, "
                                                    "e.g. TXL-PBC) pressed against their WBCs (default 0: off)"),
    split: Optional[Path] = typer.Option(None, help="wbc, nuclei, wbc-type: a split JSON (a run's split.json or one "
                                         "of benchmarks/splits) whose 'train' and 'val' lists decide the split "
                                         "(wbc, nuclei: by image file name; wbc-type: [crop, type] pairs) "
                                         "(default: a seeded split, written to the run)"),
    modality_transfer: Optional[float] = typer.Option(None, help="nuclei: share of the fluorescence training images "
                                                      "redrawn as brightfield or H&E (default 0: off)"),
    depth_weight: Optional[float] = typer.Option(None, help="nuclei: learn each nucleus' depth (distance to its "
                                                 "edge over its deepest pixel's) as one more output with this loss "
                                                 "weight; its maxima then seed the watershed (default 0: off)"),
    modalities: Optional[List[str]] = typer.Option(None, help="nuclei: train on these modalities only "
                                                   "(fluorescence, brightfield, histology; repeat the option), "
                                                   "the checkpoint chosen on them: a specialist model"),
    init: Optional[str] = typer.Option(None, help="start from this model's weights (bundled name such as smear10, "
                                       "a .safetensors file or a run folder): fine-tune on your images; "
                                       "its architecture is used"),
) -> None:
    """Train a model on a lab's annotated images; resumable after a kill."""
    require_torch("hemaseg train")
    import torch

    _setup_logging(True)
    spec = _task(task, "TASK")
    check_numbers(threads=threads)
    if device not in ("cpu", "auto"):  # (DESIGN.md: every command takes --device)
        raise typer.BadParameter(f"{device}: training runs on the CPU (its recipes were made and checked there); "
                                 "use cpu or auto", param_hint="--device")
    if threads:
        torch.set_num_threads(threads)
    try:
        if resume is not None:
            refuse_unused(f"not used with --resume: the run in {resume} keeps the options it was started with",
                          data=data, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, crop=crop,
                          samples_per_epoch=samples_per_epoch, patience=patience, augment=augment,
                          val_fraction=val_fraction, seed=seed, target_images=target_images, backbone=backbone,
                          normalise_cells=normalise_cells, recipe=recipe, workers=workers, reuse=reuse,
                          held_out=held_out, unboxed=unboxed, init=init, replay=replay, ruler=ruler,
                          looks=looks or None, leave_out=leave_out or None, paste_red_cells=paste_red_cells,
                          modality_transfer=modality_transfer, split=split, real_fields=real_fields,
                          modalities=modalities or None, depth_weight=depth_weight, colour=colour,
                          crop_padding=crop_padding_, lab_balance=lab_balance)
            if out is not None and out.resolve() != resume.resolve():
                raise HemasegUsageError("--out", "give --out RUN to start a run or --resume RUN to continue one, "
                                                 "not both")
            prepare_run(resume, resume=True, overwrite=overwrite)
            _resume_threads(resume, threads, spec.name)
            state, run = spec.fit(None, resume, resume=True), resume
        else:
            if out is None:
                raise typer.BadParameter("give --data DIR and --out RUN (or --resume RUN)")
            check_output(out, "--out", folder=True)
            data = _distinct_data(data)
            inputs = {"--data": data, "--replay": replay, "--looks": looks, "--held-out": [held_out] if held_out else [],
                      "--target-images": [target_images] if target_images else [], "--split": [split] if split else []}
            weights = None
            if init:  # a model that does not load is a wrong option, as --model is (exit 2), before any work
                try:
                    weights = load_card(init)[0]
                except HemasegError as exc:
                    raise HemasegUsageError("--init", f"{init}: {getattr(exc, 'reason', exc)}") from None
                if weights.suffix.lower() == ".onnx":  # (failed later, exit 1, as an input)
                    raise HemasegUsageError("--init", f"{init}: an ONNX file holds no weights to train on; give its "
                                                      ".safetensors, a run folder or a bundled name")
            # a path (not a bare bundled name, even beside a folder ./wbc/): absolute (a resume from elsewhere
            # finds it), never in --out
            if weights is not None and weights.parent != WEIGHTS_DIR and Path(init).exists():
                init = str(Path(init).resolve())
                inputs["--init"] = [weights.resolve()]
            here = out.resolve()
            written = set(RUN_FILES) | set(spec.run_files) | {"crops", ".pending"}  # what the run writes in --out
            for option, paths in inputs.items():  # ... and --overwrite clears: no input may be one of them
                for p in paths or []:
                    q = Path(p).resolve()
                    if q == here or (here in q.parents and q.relative_to(here).parts[0] in written):
                        raise HemasegUsageError(option, f"{p} lies in --out {out}, which the run writes (and "
                                                        "--overwrite clears); give another --out")
                    if option in ("--data", "--replay", "--looks", "--target-images") and q.is_dir() and \
                            q in here.parents:  # the next run on that folder read the run's files as data
                        raise HemasegUsageError("--out", f"{out} lies inside {option} {p}: the next run on it would "
                                                         "read this run's files as its data; give another --out")
            cfg = spec.train_config(
                data=[str(Path(d).resolve()) for d in data] if data else None, arch=arch, epochs=epochs,
                batch_size=batch_size, lr=lr, crop=crop, samples_per_epoch=samples_per_epoch, patience=patience,
                augment=augment, val_fraction=val_fraction, seed=seed, workers=workers, reuse=reuse, init=init,
                replay=[str(Path(d).resolve()) for d in replay] if replay else None, ruler=ruler,
                looks=[str(Path(d).resolve()) for d in looks] if looks else None,
                held_out=str(Path(held_out).resolve()) if held_out else None, recipe=recipe, unboxed=unboxed,
                target_images=str(Path(target_images).resolve()) if target_images else None, backbone=backbone,
                normalise_cells=normalise_cells, leave_out=leave_out or None, paste_red_cells=paste_red_cells,
                modality_transfer=modality_transfer, split=str(split.resolve()) if split else None,
                real_fields=real_fields, modalities=modalities or None, colour=colour, crop_padding=crop_padding_,
                depth_weight=depth_weight, lab_balance=lab_balance)
            created = not out.exists()
            if out.is_dir():  # before --overwrite deletes anything: a run another process trains is left alone
                hold_run(out, "--out")
            prepare_run(out, overwrite=overwrite, extra_files=spec.run_files)
            before = {n for n in RUN_FILES + tuple(spec.run_files) if (out / n).exists()}
            try:
                state, run = spec.fit(cfg, out), out
            except HemasegError:
                # refused before its first checkpoint: no run to --resume, so nothing of it is left to block
                # the same command once mended (its state.json was, with "continue it with --resume")
                if not has_checkpoint(out):
                    if created:
                        shutil.rmtree(out, ignore_errors=True)
                    else:  # what this attempt wrote (a smear10 bank or validation set too: reused unsaid)
                        remove_run_files(out, set(RUN_FILES + tuple(spec.run_files)) - before)
                raise
    except HemasegUsageError as exc:
        raise typer.BadParameter(exc.reason, param_hint=exc.option) from None
    except HemasegError as exc:
        _fail_error(exc)
        raise typer.Exit(1) from None
    typer.echo(f"run {run}: epoch {state['epoch']}, best {state['best_metric']:.4f} at epoch {state['best_epoch']}"
               + ("; its model is the start model (no epoch beat it)" if state.get("shipped") == "start" else ""),
               err=True)
    if not any(set(h) - NOT_VALIDATION for h in state.get("history", [])):  # (its "best" is minus the training loss)
        typer.echo("no validation images: the epoch kept is the one of lowest training loss, and nothing checked the "
                   "model (give more images per type or class, or a --val-fraction that leaves some)", err=True)
    left = state.get("left_out") or []
    if left:  # trained on the rest, but some inputs could not be used: exit 1, as any batch with a bad file
        typer.echo(f"{len(left)} input(s) left out of training, each named when the run began (state.json's "
                   "left_out); the model learnt from the rest", err=True)
        raise typer.Exit(1)


# what an epoch's history entry holds besides its validation figures (wbc's leak / false_cell are validation too)
NOT_VALIDATION = {"epoch", "lr", "train_loss", "domain_loss", "metric", "seconds"}


def _resume_threads(run: Path, threads: int, task: str | None = None) -> None:
    """A resumed run goes on with the torch threads it began with (``state.json``'s ``threads``), so that it ends
    bit-identical to an unbroken run; a ``--threads`` that differs is used, with a warning."""
    import torch

    try:
        state = json.loads((run / "state.json").read_text())
        began = state.get("threads")
        if task is not None and state["config"].get("task", "wbc-type") != task:
            return  # another task's run: refused by the resume itself, with nothing said about threads first
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return  # said by the resume itself
    if not began:
        return  # a run of an earlier version: its threads were not recorded
    if threads and threads != began:
        typer.echo(f"--threads {threads}: the run began on {began}; the resumed run will differ slightly from an "
                   f"unbroken one (sums in another order)", err=True)
    elif not threads and torch.get_num_threads() != began:
        n = min(int(began), os.cpu_count() or int(began))  # (not more threads than this machine has cores)
        torch.set_num_threads(n)
        typer.echo(f"--resume: going on with {n} torch thread(s), as the run began"
                   + (f" (it began on {began}; this machine has {n} cores: it will differ slightly)" if n != began
                      else ""), err=True)


CLASSIFY_BATCH = 256  # crops read, then cell-normalised together
CLASSIFY_BATCH_VALUES = 128 * 512 * 512 * 3  # ... or fewer, when they are large images (~100 MB)


@app.command()
@_usage_errors
def classify(
    mode: int = typer.Option(2, "-m", "--mode", help="1: MONONUCLEAR/POLYNUCLEAR; 2: four types (seed 004); 3: five; "
                                                     "4: PBC's eight classes (a model trained on PBC)"),
    file: Optional[List[str]] = typer.Option(None, "-f", "--file", help="one crop of a single WBC (repeatable)"),
    directory: Optional[List[str]] = typer.Option(None, "-d", "--dir", help="folder of crops (sub-folders included)"),
    output: Path = typer.Option(Path("predictions.csv"), "-o", "--output", help="CSV to write"),
    model: Optional[str] = typer.Option(None, help="bundled name, .safetensors file or run folder"),
    min_confidence: float = typer.Option(0.0, "--min-confidence", min=0.0, max=1.0,
                                         help="below this probability of the type called (the model's own, "
                                              "before -m 1/2/3 rescale their columns) the prediction is "
                                              "UNSURE (for review), as it is, with -m 1/2/3, when a white cell "
                                              "they have no column for is more likely (1e-9: that rule alone); "
                                              "0 (the default): always a type"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """WBC type of single-cell crops (seed 004's classify_WBC.py): CSV of filename, prediction, probabilities.
    A crop with no WBC is predicted NO_WBC; with --min-confidence above 0, one under it UNSURE, as is one
    that -m 1/2/3 have no column for (an immature granulocyte; in -m 2 a basophil) more likely than the type
    called."""
    import csv
    import io

    if mode not in (1, 2, 3, 4):
        raise typer.BadParameter("use 1, 2, 3 or 4", param_hint="-m")
    # Each crop by its path as given (DESIGN.md: the CSV's filename): -f as typed (a glob's matches as it
    # spells them), a -d folder's crops as the folder as typed joined with their path inside it
    # ("./crops/a.jpg" stays so, not "crops/a.jpg"). A -d that is no folder is one line, as a missing -f is.
    paths: list[str] = []
    bad_inputs = 0
    for f in file or []:
        paths += [f] if Path(f).is_dir() else expand_inputs(f)  # a folder given to -f is reported, not listed
    for d in directory or []:
        found = expand_inputs(d, recursive=True) if Path(d).is_dir() else None
        if found is None:
            _fail(d, "not a folder")
            bad_inputs += 1
        elif not found:  # a failed input (exit 1) alone or beside others, as analyze's empty folder is
            _fail(d, "no images in it (sub-folders included)")
            bad_inputs += 1
        else:
            paths += found
    seen: set[str] = set()  # one row per crop however it was spelt (a.jpg, ./a.jpg), between -f and -d too
    paths = [p for p in paths if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]
    if not paths:
        if bad_inputs:
            raise typer.Exit(1)
        raise typer.BadParameter("give -f FILE and/or -d DIR with images")
    if output.resolve() in {real_path(p) for p in paths}:  # said before "is an image": the likelier slip
        raise HemasegUsageError("--output", f"{output} is one of the crops; give another file")
    check_output(output, "--output", folder=False)
    if output.suffix.lower() in IMAGE_SUFFIXES:  # a CSV named x.png among crops failed the next classify -d
        raise HemasegUsageError("--output", f"{output}: the CSV would be named as an image and read as one; "
                                            "give a name ending in .csv")
    dev = _device(device)
    check_backend(backend)
    try:
        loaded = get_model(model or "wbc-type", dev, backend)
    except HemasegError as exc:
        _fail_model(exc, model or "wbc-type")
        raise typer.Exit(2) from None
    _refuse_other_task(loaded[1], model, "wbc-type")  # a segmentation model answered NO_WBC for every crop
    try:
        group_probs(np.zeros((0, len(loaded[1]["classes"]))), list(loaded[1]["classes"]), mode)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="-m") from None
    ok_paths, cells, pending = [], [], []

    def normalise_pending() -> int:
        # Crops are cell-normalised in batches (one pass of the WBC network for all); should a batch
        # fail, each of its crops is tried alone so that only the bad one is lost.
        failures = 0
        for (path, _), cell in zip(pending, crops_each([im for _, im in pending], loaded[1])):
            if isinstance(cell, Exception):
                failures += 1
                _fail(path, f"{cell.__class__.__name__}: {cell}")
            else:
                ok_paths.append(path)
                cells.append(cell)
        pending.clear()
        return failures

    def work(path):
        pending.append((path, read_image(path)))
        if len(pending) >= CLASSIFY_BATCH or sum(im.size for _, im in pending) > CLASSIFY_BATCH_VALUES:
            nonlocal late_failures
            late_failures += normalise_pending()

    late_failures = 0
    with backend_scope(backend):  # the WBC segmentation that normalises the crops too
        failed = _for_each(paths, "classify", work)
        failed += late_failures + normalise_pending() + bad_inputs
    if not cells:  # nothing classified: an earlier CSV at --output is left as it was
        typer.echo(f"0/{len(paths)} crops classified; {output} not written", err=True)
        raise typer.Exit(1)
    names, rows = prediction_rows(cells, loaded, dev, mode, min_confidence)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["filename", "prediction", *names])
    for path, (label, q) in zip(ok_paths, rows):
        w.writerow([path, label, *[f"{v:.6f}" for v in q]])
    write_text(output, buf.getvalue())
    typer.echo(f"{len(ok_paths)}/{len(paths)} crops classified; {output}"
               + (f"; {bad_inputs} -d folder(s) failed (above)" if bad_inputs else ""), err=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
@_usage_errors
def explain(
    images: List[str] = typer.Argument(..., help="single-WBC crops: files, folders or globs"),
    out: Path = typer.Option(Path("hemaseg-explain"), help="output folder"),
    model: Optional[str] = typer.Option(None, help="classifier: bundled name, .safetensors file or run folder"),
    tsne: bool = typer.Option(False, "--tsne", help="also a t-SNE map of all inputs' features, coloured by folder"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
) -> None:
    """Grad-CAM heat maps and masks (OUT/<stem>_gradcam.png, _gradcam_mask.png) of each crop as the classifier
    sees it (centred on its WBC and rescaled to the model's input size), of the class classify calls (the model's
    most probable, as -m 4 names it; OUT/explained.csv: each crop's map, class and probability), and a t-SNE map (OUT/tsne.png, 5 crops
    or more). Needs torch: pip install 'hemaseg\\[train]'."""
    require_torch("hemaseg explain")  # gradients: torch only
    check_output(out, "--out", folder=True)
    dev = _device(device)
    if model is not None and Path(model).suffix.lower() == ".onnx":
        raise HemasegUsageError("--model", f"{model} is an ONNX file; explain needs the gradients of the "
                                           "safetensors model: give its .safetensors file or run folder")
    try:
        module, card = get_model(model or "wbc-type", dev, "torch")
    except HemasegError as exc:
        _fail_model(exc, model or "wbc-type")
        raise typer.Exit(2) from None
    _refuse_other_task(card, model, "wbc-type")  # failed on every crop with an AttributeError
    paths = list_images(images, recursive=True)
    # nor the folder of an input file: the Grad-CAM PNGs were written among the crops, then classified as crops
    _out_apart_from_inputs(images, out, recursive=True, paths=paths)
    if not paths:
        _fail(" ".join(images), _none_found(images))
        raise typer.Exit(1)
    crops, parts, labels = [], [], []
    stems = _stems(paths, out, ["_gradcam.png", "_gradcam_mask.png"], fixed=[("--out", out / "tsne.png" if tsne else None)])

    explained: list[tuple[str, str, float]] = []

    def work(path):
        # the crop as classify sees it (centred on its WBC, or only resized for a model trained without that)
        cell = crop_for(read_image(path), card)
        if not cell.found:  # no heat map of a cell that is not there (classify calls it NO_WBC)
            raise HemasegInputError(path, "no WBC found in it: nothing to explain")
        crop = cell.image
        # the class classify -m 4 calls (its four rotations averaged), not one view's: a map of another class on
        # the borderline crops a reviewer opens it for (a walkthrough, stop 71: 8 of 173 crops)
        probs = predict_crops([crop], (module, card), dev, extras=cell.extras[None], parts=[cell.parts])[0]
        k = int(np.argmax(probs))
        cam, _ = grad_cam(module, card, crop, class_index=k, extras=cell.extras if takes_ruler(card) else None,
                          parts=cell.parts)
        mask = gradcam_mask(cam)
        write_png(out / f"{stems[path]}_gradcam.png", cam_overlay(crop, cam, mask))
        write_png(out / f"{stems[path]}_gradcam_mask.png", (mask * 255).astype(np.uint8))
        explained.append((path, card["classes"][k], float(probs[k])))
        crops.append(crop)
        parts.append(cell.parts)
        labels.append(Path(os.path.abspath(path)).parent.name)  # a crop named bare (x.jpg): its folder's all the same

    failed = _for_each(paths, "explain", work) + _empty_folders(images, recursive=True)
    if paths:  # which class each map shows, with its calibrated probability (header only when none was explained:
        import csv  # an earlier run's list in --out would name maps not made now)
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["filename", "gradcam_png", "explained", "probability"])
        for path, name, p in explained:
            w.writerow([path, f"{stems[path]}_gradcam.png", name.upper(), f"{p:.6f}"])
        write_text(out / "explained.csv", buf.getvalue())
    if tsne and len(crops) >= 5:
        tsne_plot(features(module, card, crops, parts=parts), labels, out / "tsne.png", f"t-SNE of {len(crops)} crops (colour: folder)")
    elif tsne:
        typer.echo(f"--tsne: a t-SNE map needs at least 5 explained crops, not {len(crops)}; no tsne.png written", err=True)
    typer.echo(f"{len(crops)}/{len(paths)} crops explained" + (f"; results in {out}" if crops else ""), err=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
@_usage_errors
def evaluate(
    task: str = typer.Argument(..., help="wbc, nuclei, smear10 or any registered task with annotated data"),
    data: List[str] = typer.Option(..., help="folder(s) of image/mask pairs (nuclei: also the DSB layout; "
                                             "smear10: images/ + segments/ colour maps or classes/ 0-9 index maps; wbc-type: labelled "
                                             "crops, <type>/ folders or wbc-seg with its class CSV)"),
    model: Optional[str] = typer.Option(None, help="bundled name, .safetensors file or run folder"),
    split: Optional[Path] = typer.Option(None, help="split.json: score only its 'val' images (cells on a YOLO "
                                                    "dataset: also a split's name, e.g. val or test)"),
    cell_diameter: Optional[float] = typer.Option(None, help="WBC (nuclei: nucleus; smear10 and cells: red cell) "
                                                             "diameter in px, as segment takes it; default: estimated"),
    device: str = typer.Option("cpu"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full results as JSON"),
    grid: Optional[Path] = typer.Option(Path("worst_cases.png"), help="PNG grid of the worst images "
                                                                      "(smear10, wbc-type: the confusion matrix)"),
    method: Optional[str] = typer.Option(None, help="score a classical method instead of a model (see segment)"),
    post: Optional[List[str]] = typer.Option(None, "--post", help="post-processing parameter NAME=VALUE, as segment "
                                                                  "and analyze take it (repeatable; `hemaseg segment "
                                                                  "--task TASK --post help` lists them with the "
                                                                  "model's values): score the settings you run"),
) -> None:
    """Score a model: wbc Dice/IoU of cell and nucleus; nuclei the DSB metric, AP@0.5/0.75, per modality;
    smear10 pixel accuracy, per-class and mean IoU, confusion matrix; wbc-type accuracy, macro-F1, recall
    per type, calibration error, confusion matrix. A file or folder that cannot be scored is one line and
    the rest is scored (exit 1)."""
    _setup_logging(False)
    spec = _task(task, "TASK")
    check_numbers(cell_diameter=cell_diameter)
    data = _distinct_data(data)
    if method:
        _check_method(spec, method)
        refuse_unused(f"not used by --method {method} (a classical method: no model, no rescaling)",
                      model=model, cell_diameter=cell_diameter, post=post or None)
    if json_out is not None and grid is not None and json_out.resolve() == grid.resolve():
        raise HemasegUsageError("--grid", f"{grid} is also --json; give the picture another name")
    for option, path in (("--json", json_out), ("--grid", grid)):
        if path is not None:
            _not_an_input(path, option, data, spec)
            check_output(path, option, folder=False, image=option == "--grid")
    named_split = spec.name == "cells" and split_name(split) is not None  # cells: a YOLO split's name (val, test)
    if split is not None and not split.is_file() and not named_split:
        raise HemasegUsageError("--split", f"{split}: no such file")
    if split is not None and split.is_file():
        _check_split_json(split)
    dev = _device(device)
    if not method:
        try:
            # loaded now (cached for the scoring): a model that cannot run here (no torch, no ONNX file) is a
            # usage error, exit 2, as segment says it, not a failed evaluation
            card = get_model(model or spec.default_model, dev)[1]
        except HemasegError as exc:
            _fail_model(exc, model or spec.default_model)
            raise typer.Exit(2) from None
        _refuse_other_task(card, model, spec.name)  # scored 0.0 everywhere, or failed deep inside
    params = post_params(spec, card, post) if post else None  # (a lab could not score the settings it ran)
    grid_before = _stamp(grid)
    try:
        res = spec.evaluate(data, model or spec.default_model, split, cell_diameter, dev, grid, method, params)
        if post:
            res["post"] = list(post)  # what was scored: not the card's settings
    except HemasegUsageError:
        raise  # an option the task does not take: exit 2, naming it
    except HemasegError as exc:
        _fail_error(exc)
        raise typer.Exit(1) from None
    for note in res.get("notes", []):  # what was scored that the user may not expect (cells: every split)
        typer.echo(note, err=True)
    for line in spec.table(res):
        typer.echo(line)
    if json_out:  # what was scored, by what, when: a figure a lab files must say it
        res["run"] = {"task": spec.name, "data": [str(d) for d in data], "split": None if split is None else str(split),
                      "model": None if method else (model or spec.default_model), "method": method,
                      "model_versions": None if method else card.get("versions"), "cell_diameter": cell_diameter,
                      "post": list(post or []), "hemaseg": __version__,
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(json_out, nan_as_null(res))  # standard JSON: a score with nothing to score is null
    if grid is not None and _stamp(grid) not in (None, grid_before):  # (the default writes one unasked): say where
        typer.echo(f"{spec.grid_title}: {grid}", err=True)
    for f in res.get("failed", []):  # each skipped image or folder: one line; the others were scored
        _fail(f["image"], f["reason"])
    if res.get("failed"):
        raise typer.Exit(1)


def _stamp(path: Optional[Path]) -> Optional[tuple[int, int]]:
    """(inode, modification time in ns) of a file, None when there is none: whether a run wrote it."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns) if st is not None else None


def _photos_named_by(coco: Path) -> set[Path]:
    """The photos a COCO JSON names (``images[].file_name``, beside it or in ``images/``, as the cells
    reader finds them); none when it is no such JSON."""
    try:
        names = [i.get("file_name") for i in json.loads(coco.read_text()).get("images", []) if isinstance(i, dict)]
    except (OSError, ValueError, AttributeError):
        return set()
    return {(base / n).resolve() for n in names if isinstance(n, str) and n for base in coco_photo_folders(coco)}


def _read_by(spec, folder: Path, p: Path) -> bool:
    """Whether ``p``, an existing file under ``folder``, is data ``spec`` reads there (or may be: refused to be
    safe): a file the task scores (:meth:`~hemaseg.engine.task.Task.scored_files`: an image, a mask, a DSB id's
    ``masks/``); for tasks with readers of their own also any label file (not an image) and any image beside
    a scored one. An earlier run's worst_cases.png at the data's root, beside no scored file, is not read."""
    try:
        files = [Path(f).resolve() for f in spec.scored_files(folder)]
    except Exception:  # not the task's layout: the evaluation says so; here, refuse to be safe
        return True
    if not files:
        return True
    if p in files or any(f.is_dir() and p.is_relative_to(f) for f in files):
        return True
    if p.suffix.lower() not in IMAGE_SUFFIXES:  # a label file, data.yaml, a class CSV: refused to be safe
        return True
    # image/mask pairs (the engine's evaluation): only those; own readers: no image beside a scored one
    return type(spec).evaluate is not Task.evaluate and p.parent in {f.parent for f in files}


def _check_split_json(split: Path) -> None:
    """A ``--split`` file that is no JSON object: a usage error (exit 2), as a missing one is."""
    try:
        ok = isinstance(json.loads(split.read_text()), dict)
    except (OSError, ValueError) as exc:
        raise HemasegUsageError("--split", f"{split}: cannot read it as a split JSON ({type(exc).__name__})") from None
    if not ok:
        raise HemasegUsageError("--split", f"{split}: a split JSON holds an object of lists, e.g. {{\"val\": [...]}}")


def _not_an_input(path: Path, option: str, folders: List[str], spec=None) -> None:
    """Refuse an output file that is one of the inputs (a COCO JSON given as --data), a photo such a JSON
    names, or an existing file under one of the input ``folders`` that the task reads there (a mask, an image
    or a label)."""
    p = path.resolve()
    data_file = p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() in (".txt", ".xml", ".csv", ".yaml", ".yml", ".names") \
        or p.name == "annotations.json"  # what the task readers read (a scores.json of an earlier run is not)
    inputs = [Path(f).resolve() for f in folders]
    listed = set().union(*(_photos_named_by(f) for f in inputs if f.is_file() and f.suffix.lower() == ".json"))
    # (not every image beside a COCO JSON or image/mask pairs: an earlier run's worst_cases.png there is no input)
    in_folder = data_file and p.exists() and any(p.is_relative_to(f) and (spec is None or _read_by(spec, f, p))
                                                 for f in inputs if f.is_dir())
    if p in inputs or p in listed or in_folder:
        raise HemasegUsageError(option, f"{path} is a file of the data being scored; give another file")


@app.command()
@_usage_errors
def crop(
    images: List[str] = typer.Argument(..., help="image files, folders or globs"),
    out: Path = typer.Option(Path("hemaseg-crops"), help="output folder: OUT/<class>/<stem>_<k>.png + crops.csv"),
    method: Optional[str] = typer.Option(None, help="hsv (seed 003 Algorithm 1, no model) or model (a WBC model: "
                                                    "--model) (default hsv)"),
    margin: float = typer.Option(0.15, help="context around the cell, as a fraction of its size"),
    types: Optional[Path] = typer.Option(None, help="no detection: the WBCs and their types from a results.json "
                                                    "of analyze or serve (types corrected there), a COCO or CVAT "
                                                    "file, VOC XML(s) or a YOLO folder; each WBC cut into "
                                                    "OUT/<its type>/ (untyped or unsure: unknown/), ready for "
                                                    "`train wbc-type`"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto (method model)"),
    model: Optional[str] = typer.Option(None, help="--method model: bundled name, weights file or run folder of a "
                                                   "wbc model (default: the bundled wbc)"),
    cell_diameter: Optional[float] = typer.Option(None, help="--method model: WBC diameter in px; default: "
                                                             "estimated per image"),
) -> None:
    """Cut every WBC out of whole images into an ImageFolder tree (class 'unknown' until typed); with --types,
    the WBCs an annotation file lists, each into its type's folder."""
    if method not in (None, "hsv", "model"):
        raise typer.BadParameter("use hsv or model", param_hint="--method")
    _setup_logging(False)  # a warning about one photo names it
    check_numbers(margin=margin, cell_diameter=cell_diameter)
    if types is not None:  # the file says where the WBCs are: no method, no model
        refuse_unused("not used with --types, whose file gives the WBCs", method=method,
                      device=None if device == "cpu" else device, model=model, cell_diameter=cell_diameter)
        return _crop_typed(images, types, out, margin)
    method = method or "hsv"
    if method == "hsv":  # 'banana' was taken without a word
        refuse_unused("not used by --method hsv, which has no model", device=None if device == "cpu" else device,
                      model=model, cell_diameter=cell_diameter)
    check_output(out, "--out", folder=True)
    wbc_task = get_task("wbc")
    if method == "model":
        try:
            loaded = get_model(model or wbc_task.default_model, _device(device))
        except HemasegError as exc:
            _fail_model(exc, model)
            raise typer.Exit(2) from None
        _refuse_other_task(loaded[1], model, "wbc")
    paths = list_images(images)
    if not paths:
        _fail(" ".join(images), _none_found(images))
        raise typer.Exit(1)
    _say_unsearched(images, out, paths)
    _out_apart_from_inputs(images, out, paths=paths)  # crops and crops.csv would lie among the photos
    inside = [p for p in paths if real_path(p).is_relative_to((out / "unknown").resolve())]
    if inside:  # a crop written there could replace it before it is read
        raise HemasegUsageError("--out", f"{inside[0]} lies in {out / 'unknown'}, where the crops go; give another "
                                         "--out")
    if _holds_crops(out):  # its crops would stay beside a crops.csv that no longer lists them
        raise HemasegUsageError("--out", f"{out} holds the crops of an earlier run (in unknown/ or crops.csv); give "
                                         "another folder")
    stems = _stems(paths, out / "unknown", ["_<k>.png"], fixed=[("--out", out / "crops.csv")])
    rows = []
    none_found = []  # read, but no WBC in them: named in the summary (a lab checks those photos)

    def work(path):
        image = read_image(path)
        instances = hsv_wbc_mask(image)[1] if method == "hsv" else \
            wbc_task.predict(image, loaded, cell_diameter=cell_diameter).instances
        crops = wbc_crops(image, instances, margin)
        if not crops:
            none_found.append(str(path))
        for k, c in enumerate(crops, start=1):
            x1, y1, x2, y2 = c["box"]
            name = f"{stems[path]}_{k}.png"
            write_png(out / "unknown" / name, np.ascontiguousarray(image[y1:y2, x1:x2]))
            rows.append([f"unknown/{name}", str(path), x1, y1, x2, y2, "unknown", method])

    failed = _for_each(paths, "crop", work)
    empty = _empty_folders(images)
    _write_crops_csv(out, rows)
    typer.echo(f"{len(rows)} WBC crops from {len(paths) - failed}/{len(paths)} images in {out}", err=True)
    if none_found:
        typer.echo(f"no WBC found in {len(none_found)} image(s): {', '.join(none_found[:5])}"
                   + (f" and {len(none_found) - 5} more" if len(none_found) > 5 else ""), err=True)
    raise typer.Exit(1 if failed or empty else 0)


def _write_crops_csv(out: Path, rows: list) -> None:
    """``OUT/crops.csv`` (DESIGN.md): one row per crop written, ``crop, source, x1, y1, x2, y2, class, method``."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["crop", "source", "x1", "y1", "x2", "y2", "class", "method"])
    writer.writerows(rows)
    write_text(out / "crops.csv", buf.getvalue())


def _names(label: str, names: list) -> str:
    """One summary line: ``label: N: a, b, c, d, e and N - 5 more``."""
    return f"{label}: {len(names)}: {', '.join(map(str, names[:5]))}" + (f" and {len(names) - 5} more"
                                                                         if len(names) > 5 else "")


def _crop_typed(images: List[str], types: Path, out: Path, margin: float) -> None:
    """``crop --types``: each WBC ``types`` lists cut from its photo (its box grown as ``crop`` grows a found
    cell's) into OUT/<its type>/<stem>_<k>.png, untyped and unsure ones into unknown/; crops.csv as ``crop``
    writes it, ``method`` the file's format. An entry is matched to its photo by name (the longest end of it a
    photo has) and, when it records its photo's pixels (``pixels_sha256``: analyze, serve), checked against them,
    or found by them when no name or several match. A class the file names that is neither a red cell, a platelet
    nor a type the typer knows is refused before anything is written (exit 2). Named, the rest cut, exit 1: a
    photo whose size or pixels differ from the file's, a WBC whose box lies outside its photo, an entry several
    photos match. Summed up: entries of photos not given (exit 1: corrections not cut), photos the file does not
    list (exit 0)."""
    check_output(out, "--out", folder=True)
    unread: list[dict] = []
    try:
        fmt, entries = read_annotations(types, unread)
    except HemasegError as exc:  # nothing to cut: the option is unusable
        raise HemasegUsageError("--types", f"{types}: {getattr(exc, 'reason', exc)}") from None
    paths = list_images(images)
    if not paths:
        _fail(" ".join(images), _none_found(images))
        raise typer.Exit(1)
    _say_unsearched(images, out, paths)
    _out_apart_from_inputs(images, out, paths=paths)

    def folder_of(record: dict) -> str | None:
        """The crop folder of a record (None: a red cell or a platelet, not cut)."""
        name = str(record.get("class_name") or "")
        group = record.get("category") or category_of(name)
        if group in ("rbc", "platelet"):
            return None
        kind = canonical_name(name)
        return UNTYPED if record.get("unsure") or kind == "wbc" else kind

    # a class of no known group (blast, band neutrophil, NRBC) was dropped unsaid: a lab's own cells lost
    strange = sorted({f for e in entries for r in e.get("masks", []) if (f := folder_of(r))} - {*ALL_CLASSES, UNTYPED})
    if strange:  # `train wbc-type` would refuse the whole tree for one such folder
        raise HemasegUsageError("--types", f"{types} names classes that are no red cell, platelet nor WBC type the "
                                           f"typer knows: {', '.join(strange)}; known types: {', '.join(ALL_CLASSES)} "
                                           "(rename them in the file, or remove them)")
    # crops of an earlier run in any type folder (not only those this run writes: `train wbc-type` reads them all);
    # refused before any photo is read
    taken = sorted(d for d in (out.iterdir() if out.is_dir() else ()) if d.is_dir() and any(
        f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()))
    if taken or _holds_crops(out):  # crops there would stay beside a crops.csv that does not list them
        raise HemasegUsageError("--out", f"{taken[0] if taken else out} holds crops of an earlier run; give another "
                                         "folder")
    for item in unread:  # an object the file cannot give: named, the rest cut
        _fail(item["image"], item["reason"])
    matched, unmatched, ambiguous = entries_on_photos(entries, paths)
    digests: dict = {}  # photo -> its pixels' SHA-256 (None: unreadable), read when an entry records its own

    def digest(path) -> str | None:
        if path not in digests:
            try:
                digests[path] = pixels_sha256(read_image(path))
            except HemasegError:
                digests[path] = None  # (named when it is cut)
        return digests[path]

    def sized(path, e: dict) -> bool:  # a photo of the entry's size, by its header: only those are decoded
        try:
            return not (e.get("height") and e.get("width")) or image_size(path) == (int(e["height"]), int(e["width"]))
        except (HemasegError, OSError, ValueError):
            return False

    # An entry recording its photo's pixels (analyze, serve) is that photo whatever its name: a name's match with
    # other pixels (another batch's x.png) is no match, and a tie of names, a photo renamed (serve's x~2.png of a
    # second x.png) or matched by name to another photo is found among the photos given by its pixels
    wrong: dict = {}  # id(entry) -> the photo its name matched, whose pixels differ
    for path in list(matched):
        for e in list(matched[path]):
            if e.get("pixels_sha256") and digest(path) not in (None, e["pixels_sha256"]):
                matched[path].remove(e)
                wrong[id(e)] = path
        if not matched[path]:
            del matched[path]
    search = [e for e, _ in ambiguous] + unmatched
    search += [e for e in entries if id(e) in wrong]
    settled = set()
    twice = []  # entries of a photo another entry of the file already holds (one photo listed twice): not cut again
    for e in (e for e in search if e.get("pixels_sha256")):
        hits = list(dict.fromkeys(real_path(p) for p in paths if sized(p, e) and digest(p) == e["pixels_sha256"]))
        if len(hits) == 1:
            photo = next(p for p in paths if real_path(p) == hits[0])
            matched.setdefault(photo, []).append(e)
            settled.add(id(e))
    # two entries of one photo's pixels (copy/x.png and x.png, by name or found by pixels): its WBCs were cut twice,
    # one crop a copy of the other (a walkthrough, stop 71); the first is cut, the others said
    for photo, held in matched.items():
        first: dict = {}
        for e in list(held):
            h = e.get("pixels_sha256")
            if h and h in first:
                twice.append((e, first[h]))
                held.remove(e)
            elif h:
                first[h] = e
    unmatched = [e for e in unmatched if id(e) not in settled]
    for e in entries:  # named by a photo that is another: its WBCs not cut (the entry named: the photo may be cut)
        if id(e) in wrong and id(e) not in settled:
            _fail(f"{types}: {e.get('filename')}", f"matched by name {wrong[id(e)]}, whose pixels differ (another photo "
                                                   "of that name?), and no photo given has its pixels: nothing cut for it")
    for e, held in twice:
        _fail(f"{types}: {e.get('filename')}", f"the same pixels as its entry {held.get('filename')} (one photo listed "
                                               "twice): its WBCs not cut again")
    for e, _ in (a for a in ambiguous if id(a[0]) not in settled):  # its WBCs would go to one photo or another
        _fail(f"{types}: {e.get('filename')}", "more than one of the photos given ends with this name: give one of "
                                               "them")
    ambiguous = [a for a in ambiguous if id(a[0]) not in settled]
    lost = [e for e in entries if id(e) in wrong and id(e) not in settled]
    wbcs = {p: [r for e in es for r in e.get("masks", []) if folder_of(r)] for p, es in matched.items()}
    given = list(matched)
    stems = _stems(given, out / UNTYPED, ["_<k>.png"], fixed=[("--out", out / "crops.csv")])
    rows, none_found, left_out = [], [], []

    def work(path):
        image = read_image(path)
        h, w = image.shape[:2]
        for e in matched[path]:
            if e.get("height") and e.get("width") and (int(e["height"]), int(e["width"])) != (h, w):
                raise HemasegInputError(path, f"is {w}x{h} px, {types} says {e['width']}x{e['height']}: its boxes "
                                              "would cut the wrong place")
        if not wbcs[path]:
            none_found.append(str(path))
        for k, r in enumerate(wbcs[path], start=1):
            bb = r["bounding_box"]
            x1, y1, x2, y2 = grown_box((bb["x1"], bb["y1"], bb["x2"], bb["y2"]), (h, w), margin)
            if not (bb["x2"] > bb["x1"] and bb["y2"] > bb["y1"]) or x2 <= x1 or y2 <= y1:
                _fail(path, f"WBC {k} of {types} ({bb['x1']}, {bb['y1']})-({bb['x2']}, {bb['y2']}) "
                            + ("has no area" if x2 > x1 and y2 > y1 else "lies outside the photo") + "; left out")
                left_out.append((path, k))
                continue
            kind = folder_of(r)
            name = f"{stems[path]}_{k}.png"
            write_png(out / kind / name, np.ascontiguousarray(image[y1:y2, x1:x2]))
            rows.append([f"{kind}/{name}", str(path), x1, y1, x2, y2, kind, fmt])

    failed = _for_each(given, "crop", work)
    _write_crops_csv(out, rows)
    counts = Counter(row[6] for row in rows)
    typer.echo(f"{len(rows)} WBC crops from {len(given) - failed}/{len(given)} photos in {out}"
               + (f" ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})" if counts else ""), err=True)
    cut = {real_path(p) for p in given}
    not_listed = [p for p in paths if real_path(p) not in cut]
    for label, names in ((f"entries of {types} that match none of the photos given",
                          [e.get("filename") or "(no file name)" for e in unmatched]),
                         (f"photos {types} does not list", not_listed),
                         ("photos in which it lists no WBC", none_found)):
        if names:
            typer.echo(_names(label, names), err=True)
    if not given:
        typer.echo(f"no photo given is one {types} lists ({len(entries)} entries): nothing cut", err=True)
    raise typer.Exit(1 if failed or ambiguous or left_out or unread or unmatched or lost or twice or not given else 0)


def _without_label_images(images, paths: list) -> list:
    """``paths`` without the label images a folder or glob brought in (``X_mask.png`` beside ``X.jpg``: a lab's
    training folder), said once on stderr; a label image given by name is kept."""
    named = {real_path(p) for p in images if Path(p).is_file()}
    labels = [p for p in label_images_among(paths, tuple(p for p in images if Path(p).is_dir()))
              if real_path(p) not in named]
    if labels:
        typer.echo(f"{len(labels)} label image(s) left out, each a photo's mask by its name or its masks folder "
                   f"(e.g. {labels[0]}): give one by name to segment it", err=True)
    left = set(labels)
    return [p for p in paths if p not in left]


def _holds_crops(out: Path) -> bool:
    """``out`` holds an earlier ``crop`` run's crops: its crops.csv lists one, or its unknown/ folder holds a file,
    with or without a crops.csv (a run stopped before writing it, or the file deleted); a run that cut nothing
    (every photo failed or none held a WBC) leaves a crops.csv of its header alone: that folder may be used again."""
    csv_file = out / "crops.csv"
    unknown = out / "unknown"
    crops = unknown.is_dir() and any(p.suffix.lower() == ".png" for p in unknown.iterdir())  # not a .DS_Store
    if not csv_file.exists():
        return crops
    try:
        lines = [ln for ln in csv_file.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return True
    return len(lines) > 1 or crops


@app.command()
@_usage_errors
def synth(
    n: int = typer.Option(..., "--n", help="number of images"),
    out: Path = typer.Option(..., help="output folder: images/, segments/, classes/, instances/, labels/"),
    size: int = typer.Option(224, help="image side in px"),
    seed: int = typer.Option(0),
    data: Optional[List[str]] = typer.Option(None, help="data folder(s) to cut real cells from (wbc-seg, bccd, "
                                                        "bccd-wbc); none: procedural cells only"),
    part: str = typer.Option("test", help="which crops to use: train, val or test (split by source photo)"),
    held_out: Optional[str] = typer.Option(None, help="split JSON whose 'val' crops alone make the val/test WBCs "
                                                      "(as used in training smear10)"),
    wbc_crops: Optional[Path] = typer.Option(None, "--wbc-crops", help="also write every composited WBC as a crop "
                                             "in DIR/<type>/ (a training set for `train wbc-type`)"),
    first: int = typer.Option(0, help="index of the first image (extends a set: --first 3000 continues --n 3000)"),
    param: Optional[List[str]] = typer.Option(None, "--param", help="synthesis parameter KEY=VALUE (JSON value; "
                                              "repeatable), e.g. dark_background=0.3 or rbc_diameter=[30,60]; "
                                              "fields of hemaseg.tasks.smear10.synth.SynthConfig"),
) -> None:
    """Synthetic smears (seed 002): image, palette map, class-index map, instance map, JSON labels."""
    _setup_logging(False)
    if part not in PARTS:
        raise typer.BadParameter(f"one of {', '.join(PARTS)}", param_hint="--part")
    check_numbers(n=n, size=size, first=first, seed=seed)
    check_output(out, "--out", folder=True)
    if wbc_crops is not None:
        check_output(wbc_crops, "--wbc-crops", folder=True)
    try:
        cfg = synth_config(param or [], size=size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--param") from None
    stems = {f"{part}_{i:05d}" for i in range(first, first + n)}
    taken = sorted(p.stem for p in (out / "images").glob(f"{part}_*")) if (out / "images").is_dir() else []
    clash = [s for s in taken if s in stems]
    if clash:  # smears of another run (another size, seed or look) would be mixed into this set
        raise HemasegUsageError("--out", f"{out} already holds {clash[0]} (and {len(clash) - 1} more) of an earlier "
                                         f"run; give another folder, or --first {int(taken[-1][-5:]) + 1} to add to it")
    for d in data or []:  # a folder that is not there gave procedural cells only, without a word
        if not Path(d).is_dir():
            raise HemasegUsageError("--data", f"{d}: not a folder")
    held = held_out_crops(held_out)
    try:
        bank = load_bank([str(d) for d in data or []], part, seed, held_out=held)
    except HemasegError as exc:
        _fail_error(exc)
        raise typer.Exit(1) from None
    for f in bank.left_out:  # a lab's own crops of a type no class is drawn from: named, exit 1 at the end
        _fail(f["image"], f["reason"])
    for i in track(range(first, first + n), "synth"):
        smear = compose(bank, cfg, image_seed(seed, part, i))
        write_smear(out, f"{part}_{i:05d}", smear)
        for k, (kind, crop) in enumerate(cut_wbcs(smear) if wbc_crops else []):
            write_png(wbc_crops / kind / f"{part}_{i:05d}_{k}.png", crop)
    real = ", ".join(f"{k} {v}" for k, v in bank.count().items()) or "none (procedural cells only)"
    if data and not bank.count():
        typer.echo(f"--data: no cells of the {part} part found in {', '.join(map(str, data))} (it reads wbc-seg, "
                   "bccd-wbc, pbc, malaria-crops, txl-pbc and BCCD's Annotations/ folders, and a lab's own typed "
                   "crops or boxed fields, split into parts by file: a small folder's may all lie in another --part)",
                   err=True)
    typer.echo(f"{n} smears in {out}; real crops used ({part}): {real}", err=True)
    if bank.left_out or (data and not bank.count()):  # (no cell found: drawn cells only, exit 0 before)
        raise typer.Exit(1)


@app.command()
@_usage_errors
def convert(
    inp: Path = typer.Argument(..., metavar="IN", help="input folder or file"),
    out: Path = typer.Argument(..., metavar="OUT", help="output folder (labels, dsb, yolo, voc) or file (rle, cvat, coco)"),
    src: str = typer.Option(..., "--from", help="dsb, labels, rle, cvat, coco, voc, yolo or results"),
    dst: str = typer.Option(..., "--to", help="labels, rle, dsb, cvat, coco, coco-rle, yolo or voc"),
) -> None:
    """Convert annotations between formats: DSB folders, uint16 label PNGs, Kaggle RLE CSV, CVAT for
    images 1.1 XML, COCO JSON (polygons or RLE), Pascal VOC XML, YOLO (a folder: images with a
    `class cx cy w h` .txt each, classes in data.yaml or classes.txt; written: OUT/<stem>.txt and
    OUT/classes.txt, images not copied), seed-003 results JSON; VOC written as OUT/<stem>.xml, one per image."""
    if (src, dst) not in CONVERTERS:
        known = ", ".join(f"{a}->{b}" for a, b in sorted(CONVERTERS))
        raise typer.BadParameter(f"no conversion {src}->{dst}; known: {known}", param_hint="--from/--to")
    failed: list[dict] = []
    try:
        n = run_convert(src, dst, inp, out, failed)
    except HemasegUsageError:
        raise  # OUT refused before any work: one line, exit 2 (_usage_errors)
    except HemasegError as exc:
        for f in failed:  # the files left out before the error stopped the conversion
            _fail(f["image"], f["reason"])
        _fail_error(exc)
        raise typer.Exit(1) from None
    for f in failed:  # each file that could not be read: one line; the others were converted
        _fail(f["image"], f["reason"])
    if failed and not n:
        typer.echo(f"nothing converted {src} -> {dst}: no input file could be read; {out} not written", err=True)
    else:
        typer.echo(f"{n} images converted {src} -> {dst}: {out}" + (f"; {len(failed)} left out" if failed else ""),
                   err=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
@_usage_errors
def serve(
    port: int = typer.Option(DEFAULT_PORT, help="port to listen on (0: any free one)"),
    host: str = typer.Option(DEFAULT_HOST, help="address to listen on; the default serves this computer only"),
    model: str = typer.Option("cells", help="cells model: bundled name, .safetensors file or run folder"),
    type_model: str = typer.Option("wbc-type", help="WBC-type classifier"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    min_confidence: float = typer.Option(MIN_CONFIDENCE, "--min-confidence",
                                         help="a WBC whose most probable type has a calibrated probability under "
                                              "this is left untyped, for the user to type on the page"),
    max_upload_mb: float = typer.Option(MAX_UPLOAD_MB, "--max-upload-mb", help="largest photo accepted, in MB"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Local web page: drop smear photos, see every cell outlined, the counts and the differential,
    correct WBC types, download results.json, counts.csv, COCO and CVAT that follow the corrections.

    Needs Flask (the package's web extra). Photos and results stay in a temporary folder, removed
    when the server stops (Ctrl+C).
    """
    _setup_logging(False)
    check_numbers(port=port, min_confidence=min_confidence, max_upload_mb=max_upload_mb)
    check_backend(backend)
    require_flask()
    check_address(host, port)
    dev = _device(device)
    for option, name, task in (("--model", model, "cells"), ("--type-model", type_model, "wbc-type")):
        try:
            card = get_model(name, dev, backend)[1]  # loaded now: the first photo is not slow, a bad name fails here
        except HemasegError as exc:
            _fail_model(exc, name, option)
            raise typer.Exit(2) from None
        _refuse_other_task(card, name, task, option)  # (as analyze: else every photo failed, blamed for it)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"--host {host}: anyone who can reach this address can upload photos and read the results",
                   err=True)
    run_serve(host, port, None, model, type_model, dev, min_confidence=min_confidence, max_upload_mb=max_upload_mb,
              backend=backend, ready=lambda url: typer.echo(f"hemaseg serve: open {url} (Ctrl+C stops)", err=True))


# Suffixes of files, not folders: a bioimage.io --out named so would become a folder of that name (pkg.v1 may be one)
FILE_SUFFIXES = (".onnx", ".json", ".safetensors", ".pt", ".pth", ".yaml", ".yml", ".tar", ".gz", ".tgz", ".7z",
                 ".npy", ".npz", ".h5", ".tif", ".tiff", ".png", ".jpg", ".txt")


def _earlier_export_card(card: Path, onnx: Path) -> bool:
    """Whether ``card`` is the card an earlier ``hemaseg export --format onnx --out ONNX`` wrote (it names that
    file and no run's weights use it: a run folder's best/last/model.safetensors all read its model.json)."""
    if card.name == "model.json" and any((card.parent / f"{w}.safetensors").exists() for w in ("model", "best", "last")):
        return False
    try:
        return json.loads(card.read_text()).get("onnx", {}).get("file") == onnx.name
    except (OSError, ValueError, AttributeError):
        return False


@app.command()
@_usage_errors
def export(
    model: str = typer.Argument(..., help="bundled name, .safetensors file or training run folder"),
    format: str = typer.Option("onnx", "--format", help="one of: " + ", ".join(sorted(EXPORTERS))),
    out: Path = typer.Option(..., help="file to write (onnx: PATH.onnx, and the model card beside it as PATH.json; "
                                       "bioimageio: PATH.zip, or a new folder)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the file at --out (an earlier export: its "
                                                              "file and card; a package folder is never replaced: "
                                                              "give a new or empty one)"),
) -> None:
    """Export a model for another runtime (onnx: the U-Nets and the WBC classifier, checked against torch).
    The ONNX file runs with --model PATH.onnx --backend onnx, without torch too. bioimageio: a U-Net as a
    bioimage.io model package (TorchScript weights, test tensors, processing described), validated with the
    bioimage.io spec library and bioimageio.core before it is written."""
    empty_folder = format == "bioimageio" and out.is_dir() and not any(out.iterdir())  # allowed, as --help says
    if format == "bioimageio" and not empty_folder and out.suffix.lower() != ".zip" and (
            out.is_file() or out.is_dir() or out.suffix.lower() in FILE_SUFFIXES):
        # (foo.onnx became a folder of that name; a folder with files in it was "a folder; give a file name")
        raise HemasegUsageError("--out", f"{out}: a bioimage.io package is PATH.zip or a new (or empty) folder")
    check_output(out, "--out", folder=empty_folder)
    if not overwrite:  # an earlier export of another run, or a lab's own file, was replaced unsaid (a walkthrough)
        taken = out if out.is_file() else out.with_suffix(".json") if format == "onnx" and \
            _earlier_export_card(out.with_suffix(".json"), out) else None
        if taken is not None:
            raise HemasegUsageError("--out", f"{taken} exists; give another name, or --overwrite to replace it")
    try:
        load_card(model)
    except HemasegError as exc:
        _fail_error(exc, model)
        raise typer.Exit(2) from None
    card_out = out.with_suffix(".json")
    if format == "onnx" and card_out.exists():
        check_output(card_out, "--out", folder=False)  # PATH.json a folder: one line, not a traceback
        if out.with_suffix(".safetensors").exists():
            # the card beside PATH.onnx would replace the card of the model PATH.safetensors (another model's, or
            # the one being exported): that model would no longer load
            raise HemasegUsageError("--out", f"{card_out} is the card of {out.with_suffix('.safetensors')}; "
                                             "give the ONNX file another name or folder")
        if not _earlier_export_card(card_out, out):  # a training run's model.json, a segment result, ...
            raise HemasegUsageError("--out", f"{card_out} exists and is not the card of an earlier export to "
                                             f"{out.name}; give the ONNX file another name or folder")
    try:
        summary = run_export(model, format, out)
    except HemasegInputError as exc:
        _fail_error(exc, model)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def models() -> None:
    """List registered architectures and bundled models."""
    typer.echo("architectures: " + ", ".join(list_models()))
    for card in sorted(WEIGHTS_DIR.glob("*.json")):
        d = json.loads(card.read_text())
        typer.echo(f"bundled: {card.stem}  task={d.get('task')}  arch={d['architecture']['name']}  "
                   + " ".join(card_figures(d)))


@app.command()
def version() -> None:
    """Print the hemaseg version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
