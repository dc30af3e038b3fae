"""Batches of smear photos for ``hemaseg analyze``: memory flat in the number of photos, resumable
after a kill, and the same per-photo work on a Dask cluster.

Each photo is analysed on its own (:func:`analyze_photo`, here or on a Dask worker), and what the
batch files need of it is written to ``OUT`` as soon as it is done: its overlay PNG, then
``OUT/parts/<stem>.json`` (the results entry, the counts, the report's downscaled overlay and WBC
thumbnails), atomically and last, so a part on disk means the photo is done. Nothing of a photo
stays in memory after that. ``results.json``, ``counts.csv`` and ``report.html`` are then rebuilt
from the parts, in input order, one part at a time (:func:`write_batch_files`), whether the photos
were analysed in this run, in a run that was killed half-way (``--resume``) or on a cluster: the
files are the same either way.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.engine.predict import backend_scope, get_model
from hemaseg.engine.tiling import DEFAULT_TILE
from hemaseg.errors import HemasegError, HemasegUsageError
from hemaseg.io.annotations import write_coco, write_cvat
from hemaseg.io.images import read_image, real_path
from hemaseg.io.writers import _jsonable, atomic_path, remove_temps, write_json, write_png, write_text
from hemaseg.pipelines.analyze import MIN_CONFIDENCE, analyze, draw_overlay, model_fingerprint
from hemaseg.pipelines.report import (
    counts_csv,
    export_labels,
    image_record,
    light_analysis,
    repeated_photos,
    timestamp,
    write_report_records,
)
from hemaseg.pipelines.segment import file_pixel_size
from hemaseg.progress import INPUT_NAMED, track
from hemaseg.tasks import get_task

log = logging.getLogger(__name__)

PARTS = "parts"  # OUT/parts/<stem>.json: one per photo done; OUT/parts/run.json: the options of the batch
RUN_FILE = "run.json"
# cells post-processing knobs added after batches began recording them, with the value that keeps the behaviour they
# were run with: a batch begun before one was added resumes (stop 70's grow_boxes was refused as "other options")
ADDED_KNOBS = {"grow_boxes": True}
# defaults changed since batches began recording the knobs, with their old value: a batch begun under one is told the
# --post that finishes it as begun (stop 71: wbc_min_score 0.6 -> 0.4)
CHANGED_DEFAULTS = {"wbc_min_score": 0.6}
BATCH_FILES = ("results.json", "counts.csv", "report.html")
PART_FORMAT = 1


@dataclass(frozen=True)
class BatchOptions:
    """What :func:`analyze_photo` needs besides the photo: the options of ``hemaseg analyze``.

    Parameters
    ----------
    model, type_model : cells model and WBC-type classifier (bundled name, file or run folder).
    cell_diameter : red-cell diameter in px; None: from ``pixel_size`` (or the file's pixel size)
        when known (:func:`hemaseg.pipelines.segment.diameter_from_pixel_size`), else estimated.
    device : torch device name (already resolved).
    tile : the U-Net cells backend's largest tile (px).
    min_confidence : WBCs typed with a lower calibrated probability are left untyped.
    sample_id : the sample the photos are of, recorded in each entry when given.
    pixel_size : µm per px of every photo; None: each file's own resolution tags, when given.
    backend : where the networks run: torch, onnx or auto (:mod:`hemaseg.engine.runtime`).
    post : the cells post-processing parameters given (``--post``), as ((name, value), ...) over the model card's.
    """

    model: str = "cells"
    type_model: str = "wbc-type"
    cell_diameter: float | None = None
    device: str = "cpu"
    tile: int = DEFAULT_TILE  # the command line's and hemaseg.analyze's (2048 here gave another library batch's results)
    min_confidence: float = MIN_CONFIDENCE
    sample_id: str | None = None
    pixel_size: float | None = None
    backend: str = "auto"
    post: tuple = ()

    def recorded(self) -> dict:
        """The options that shape the results (not the device or backend), as kept in ``OUT/parts/run.json``."""
        d = asdict(self)
        d.pop("device")
        d.pop("backend")  # torch and ONNX Runtime agree within a stated tolerance: a resume may switch
        if not d["post"]:
            d.pop("post")  # as batches begun before --post recorded them: they resume
        # the models' weights and cards, not only their names: one retrained under the same name is another model
        # (loaded as the batch runs them: an exported .onnx under --backend onnx, without torch where it is)
        with backend_scope(self.backend):
            d["fingerprints"] = {"model": model_fingerprint(self.model, self.device),
                                 "type_model": model_fingerprint(self.type_model, self.device)}
            # every cells post-processing knob as the batch runs it, defaults included: a default changed by another
            # hemaseg (stop 69: rescale_passes 2 -> 4) mixed two kinds of parts in one results.json unsaid
            card = get_model(self.model, self.device)[1]
            chosen = get_task("cells").params(card, **(self.params() or {}))
            d["postprocess"] = {k: v for k, v in asdict(chosen).items()
                                if k != "platelet_rescore"}  # (fitted to the model: in its card's fingerprint)
        return d

    def params(self) -> dict | None:
        """The cells post-processing parameters given (``post``) as names and values, which
        :func:`hemaseg.analyze` sets over the model card's; None when none was given."""
        return dict(self.post) or None


def part_path(out: Path, stem: str) -> Path:
    return Path(out) / PARTS / f"{stem}.json"


def _source(path: Path) -> dict:
    st = Path(path).stat()
    return {"path": str(path), "abspath": str(real_path(path)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _source_file(source: dict) -> Path:
    """The photo a part's ``source`` names, absolute: a batch resumed from another working folder (a cluster
    job's) gives the same photos by other spellings. Parts written before ``abspath`` was kept: as typed then."""
    return Path(source.get("abspath") or real_path(source["path"]))


def _same_source(source: dict | None, path: Path) -> bool:
    """``source`` (a part's) names ``path``, unchanged since (size and modification time)."""
    if not source or not source.get("path"):
        return False
    st = Path(path).stat()
    return (_source_file(source) == real_path(path) and source.get("size") == st.st_size
            and source.get("mtime_ns") == st.st_mtime_ns)


def analyze_photo(path: str | Path, stem: str, out: str | Path, opts: BatchOptions) -> str | None:
    """Analyse one photo and write its overlay (``OUT/<stem>_overlay.png``) and then its part
    (``OUT/parts/<stem>.json``). Returns None when done, else the reason it failed (one line):
    errors are returned, not raised, so that they cross a Dask cluster as plain text."""
    path, out = Path(path), Path(out)
    try:
        image = read_image(path)
        pixel_size = opts.pixel_size if opts.pixel_size is not None else file_pixel_size(path)
        a = analyze(image, str(path), opts.model, opts.type_model, opts.cell_diameter, opts.device, opts.tile,
                    min_confidence=opts.min_confidence, sample_id=opts.sample_id, pixel_size=pixel_size,
                    backend=opts.backend, params=opts.params())
        if not any(a.counts.get(c, 0) for c in CATEGORIES):  # analysed, but nothing a lab counts: said
            log.warning("%s: no cell found: a blank or unusable field?", path)
        overlay = draw_overlay(image, a)
        del image
        write_png(out / f"{stem}_overlay.png", overlay)
        record = image_record(a, overlay, analysed=timestamp())
        del a, overlay
        record.update(format=PART_FORMAT, source=_source(path), overlay_file=f"{stem}_overlay.png")
        write_json(part_path(out, stem), record)  # last: the photo is done
        return None
    except HemasegError as exc:
        return getattr(exc, "reason", str(exc))
    except Exception as exc:  # one bad photo must not stop the batch
        return f"{exc.__class__.__name__}: {exc}"


def read_part(out: Path, stem: str) -> dict | None:
    """The part of ``stem`` in ``out``, or None when there is none or it cannot be read."""
    try:
        return json.loads(part_path(out, stem).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(out: Path, stem: str, path: Path) -> bool:
    """``path`` was analysed into ``out`` as ``stem``, and has not changed since."""
    part = read_part(out, stem)
    try:
        return bool(part) and part.get("format") == PART_FORMAT and _same_source(part.get("source"), path)
    except OSError:
        return False


def prepare_batch(out: str | Path, opts: BatchOptions, resume: bool = False, overwrite: bool = False,
                  photos: list[Path] | None = None) -> bool:
    """Check ``out`` before a batch, as ``hemaseg train`` checks its run folder: a new batch may not
    go into a folder holding one (:class:`HemasegUsageError` naming ``--out``; one that ended with no photo done is
    replaced) unless ``overwrite``,
    which deletes that batch's files (parts, overlays, results.json, counts.csv, report.html);
    ``resume`` continues it, with the options it was started with (a different one is refused,
    naming ``--resume``, and so are ``photos`` that leave out one the batch has analysed: its results would
    lose it; more photos may be added, and a photo that failed may be left out); resuming where there is no
    batch yet starts one. Records the options.
    Returns whether an earlier batch is being continued."""
    out = Path(out)
    if resume and overwrite:
        raise HemasegUsageError("--overwrite", "cannot be used with --resume")
    parts = out / PARTS
    run_file = parts / RUN_FILE
    held = run_file.exists()
    stray = [] if held else [name for name in BATCH_FILES if (out / name).exists()]
    if stray and not overwrite:  # a report someone may have signed, its parts gone (or written by hand): not replaced
        raise HemasegUsageError("--resume" if resume else "--out",
                                f"{out} holds {', '.join(stray)} of an analysis with no {PARTS}/{RUN_FILE} to "
                                "continue it by; give another --out, or replace it with --overwrite")
    if held and resume:
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        now = json.loads(json.dumps(opts.recorded(), default=_jsonable))
        if not isinstance(before, dict):  # said "analysed with other options (model '?', ...)"
            raise HemasegUsageError("--resume", f"{run_file} cannot be read, so the batch's options are unknown; "
                                                "start afresh with --overwrite")
        if "fingerprints" not in before:
            now.pop("fingerprints")  # a batch begun before they were recorded: its models' names alone
        if isinstance(before.get("postprocess"), dict):  # knobs added since, as their old behaviour (not a change)
            before["postprocess"] = {**ADDED_KNOBS, **before["postprocess"]}
        if "postprocess" not in before:  # begun by a hemaseg that did not record them: what they were is unknown
            raise HemasegUsageError("--resume", f"{out} was begun by an earlier hemaseg, which did not record its "
                                                "post-processing (some defaults have changed since): start afresh "
                                                "with --overwrite, or finish it with that hemaseg")
        # The knobs as run decide, --post being only their spelling (so a batch begun under a changed default resumes
        # given that --post); a --post of a knob "postprocess" leaves out (platelet_rescore: the card's fitted
        # re-scorer is not copied in) is still compared as given
        given_before = {k for k, _ in before.get("post") or []}
        for d in (before, now):
            rest = [kv for kv in d.pop("post", None) or [] if kv[0] not in d["postprocess"]]
            if rest:
                d["post"] = rest
        if before != now:
            diff = [k for k in dict.fromkeys([*now, *(before or {})]) if not before or before.get(k) != now.get(k)]
            old = {n: v for n, v in before.get("postprocess", {}).items() if n in CHANGED_DEFAULTS and n not in
                   given_before and v == CHANGED_DEFAULTS[n] and now.get("postprocess", {}).get(n) != v}
            if old and diff == ["postprocess"] and all(  # only a changed default stands between: name the --post
                    before["postprocess"].get(n) == now["postprocess"].get(n) for n in now["postprocess"] if n not in old):
                raise HemasegUsageError("--resume", f"{out} was begun when " + ", ".join(
                    f"{n}'s default was {v!r} (now {now['postprocess'][n]!r})" for n, v in old.items())
                    + "; finish it as begun with " + " ".join(f"--post {n}={v}" for n, v in old.items())
                    + " beside --resume, or start afresh with --overwrite")
            said = []
            for k in diff:
                if k == "postprocess" and isinstance(before.get(k), dict) and isinstance(now.get(k), dict):
                    said += [f"{k}.{n} {before[k].get(n, '?')!r}, now {now[k].get(n, '?')!r}"  # the knobs apart only
                             for n in dict.fromkeys([*now[k], *before[k]]) if before[k].get(n) != now[k].get(n)]
                else:
                    said.append(f"{k} {before.get(k) if before else '?'!r}, now {now.get(k)!r}")
            raise HemasegUsageError("--resume", f"{out} was analysed with other options (" + ", ".join(said)
                                    + "); give the same ones (a default changed by another hemaseg: finish it with "
                                      "that one), or start afresh with --overwrite")
        if photos is not None:  # a photo analysed before must be given again, or the results would lose it
            given = {real_path(p) for p in photos}  # (a loop of links among them: one failed photo, later)
            lost = []
            for q in sorted(parts.glob("*.json")):
                source = (read_part(out, q.stem) or {}).get("source") if q.name != RUN_FILE else None
                if source and source.get("path") and _source_file(source) not in given:
                    lost.append(source["path"])
            if lost:
                raise HemasegUsageError("--resume", f"{out} holds {len(lost)} analysed photo(s) not given now (e.g. "
                                        f"{lost[0]}): the batch's results would lose them; give them again (more "
                                        "may be added), or start afresh with --overwrite")
        remove_temps(out)
        remove_temps(parts)
        return True
    n = sum(1 for p in parts.glob("*.json") if p.name != RUN_FILE) if held else 0
    # a batch that ended with no photo done (its one path mistyped) loses nothing: replaced; one still at its first
    # photo (no results.json yet) or killed there is not (another run took over a running batch's folder)
    if held and not overwrite and (n or not (out / "results.json").exists()):
        raise HemasegUsageError("--out", f"{out} already holds an analysis ({n} photo(s) done); continue it with "
                                         "--resume or start afresh with --overwrite")
    for name in stray:  # --overwrite: the earlier analysis' files (its overlays cannot be told from other files)
        (out / name).unlink(missing_ok=True)
    if held:
        for p in parts.glob("*.json"):
            overlay = (read_part(out, p.stem) or {}).get("overlay_file") if p.name != RUN_FILE else None
            if overlay and Path(overlay).name == overlay:
                (out / overlay).unlink(missing_ok=True)
        shutil.rmtree(parts)
        for name in BATCH_FILES:
            (out / name).unlink(missing_ok=True)
        remove_temps(out)
    parts.mkdir(parents=True, exist_ok=True)
    write_json(run_file, opts.recorded())
    return False


def run_photos(jobs: list[tuple[Path, str]], out: Path, opts: BatchOptions, client=None,
               on_failure: Callable[[Path, str], None] | None = None) -> list[tuple[Path, str]]:
    """Analyse each (path, stem) of ``jobs`` with :func:`analyze_photo`: in this process, or on
    the Dask ``client``'s workers (each process loads the models once: they are cached per
    process). Returns the failures, (path, reason), in input order; ``on_failure`` is told of
    each as it happens."""
    failed: dict[Path, str] = {}

    def note(path: Path, reason: str | None) -> None:
        if reason is not None:
            failed[path] = reason
            if on_failure:
                on_failure(path, reason)

    if client is None:
        for path, stem in track(jobs, "analyze"):
            with INPUT_NAMED.working_on(path):  # what is logged meanwhile names the photo (the scale-bound warning)
                note(path, analyze_photo(path, stem, out, opts))
    else:
        from distributed import as_completed

        futures = {client.submit(analyze_photo, str(path), stem, str(out), opts, pure=False,
                                 key=f"analyze-{k}-{stem}"): path for k, (path, stem) in enumerate(jobs)}
        for future in track(as_completed(futures), "analyze", total=len(futures)):
            try:
                reason = future.result()
            except Exception as exc:  # a worker lost, or the task could not run at all
                reason = f"{exc.__class__.__name__}: {exc}"
            note(futures.pop(future), reason)
            future.release()
    return [(p, failed[p]) for p, _ in jobs if p in failed]


class Parts:
    """The parts of the photos done, in input order, read from disk each time it is iterated
    (so the batch files are built holding one photo's part at a time)."""

    def __init__(self, out: Path, jobs: list[tuple[Path, str]]) -> None:
        self.out = Path(out)
        self.jobs = [(p, s) for p, s in jobs if is_done(self.out, s, p)]

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[dict]:
        for _, stem in self.jobs:
            part = read_part(self.out, stem)
            if part is not None:
                yield part


def drop_stale_parts(out: str | Path, current: set[str]) -> int:
    """Delete the parts in ``OUT/parts`` (and their overlays) whose stem is not in ``current`` (the stems of the
    batch's photos done as they are now): a photo analysed under another output name before (``s.jpg``, then
    ``a/s.jpg`` and ``b/s.jpg`` named apart), or one that changed and failed this time. Returns how many."""
    out = Path(out)
    dropped = 0
    for q in sorted((out / PARTS).glob("*.json")):
        if q.name == RUN_FILE or q.stem in current:
            continue
        part = read_part(out, q.stem)
        if part is None or part.get("format") != PART_FORMAT:  # not one of ours: left alone
            continue
        overlay = part.get("overlay_file")
        if overlay and Path(overlay).name == overlay:
            (out / overlay).unlink(missing_ok=True)
        q.unlink(missing_ok=True)
        dropped += 1
    return dropped


def write_results_stream(path: str | Path, entries: Iterable[dict]) -> Path:
    """``results.json`` (seed 003's ``{"data": {"0": entry, ...}}``) written one entry at a time:
    byte for byte what :func:`hemaseg.io.annotations.write_results` writes of the same entries."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        n = 0
        for entry in entries:
            f.write('{\n  "data": {\n' if n == 0 else ",\n")
            body = json.dumps(entry, indent=2, default=_jsonable).replace("\n", "\n    ")
            f.write(f'    "{n}": {body}')
            n += 1
        f.write('{\n  "data": {}\n}\n' if n == 0 else "\n  }\n}\n")
    return Path(path)


def write_batch_files(out: str | Path, jobs: list[tuple[Path, str]], failed: list[tuple[str, str]] | None = None,
                      cvat: Path | None = None, coco: Path | None = None, coco_rle: bool = False,
                      date: str | None = None, min_confidence: float | None = None,
                      types: tuple[str, ...] = ()) -> tuple[int, int]:
    """Rebuild ``OUT/results.json``, ``OUT/counts.csv`` and ``OUT/report.html`` (and the ``cvat`` /
    ``coco`` files) from the parts on disk of ``jobs`` ((path, stem), in input order), holding one
    photo's part at a time (the CVAT and COCO files are built whole), after deleting the parts and
    overlays of no such photo (:func:`drop_stale_parts`). Returns (photos, cells)."""
    out = Path(out)
    parts = Parts(out, jobs)
    drop_stale_parts(out, {stem for _, stem in parts.jobs})  # a renamed or failed photo's old part: not this batch's
    write_results_stream(out / "results.json", (p["entry"] for p in parts))
    light = [light_analysis(p) for p in parts]
    for name, first in repeated_photos([a.entry for a in light]):
        log.warning("%s: the same pixels as %s: its cells are counted twice in the totals", name, first)
    write_text(out / "counts.csv", counts_csv(light, types))  # (the typer's columns though every photo failed)
    write_report_records(out / "report.html", parts, failed, date=date, min_confidence=min_confidence)
    if cvat or coco:
        entries = [p["entry"] for p in parts]
        labels = export_labels(entries)
        if coco:  # first: a CVAT file can be refused (a photo name that is no UTF-8), a COCO one holds any name
            write_coco(coco, entries, rle=coco_rle, labels=labels)
        if cvat:
            write_cvat(cvat, entries, labels)
    return len(parts), sum(a.counts.get(c, 0) for a in light for c in CATEGORIES)


def dask_client(address: str, option: str = "--dask"):
    """A Dask distributed client: ``local`` or ``local:N`` starts a local cluster of N worker
    processes (default: one per CPU core) of one thread each; anything else is a scheduler's
    address (``tcp://host:8786``, or a scheduler file's path). Returns (client, cluster or None);
    close both when done. A bad spec or an unreachable scheduler raises :class:`HemasegUsageError`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise HemasegUsageError(option, "needs Dask: pip install 'hemaseg[dask]'") from None
    # Dask narrates every worker's start and stop at INFO; the progress bar and failures are ours.
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if address == "local" or address.startswith("local:"):
        n = address.partition(":")[2]
        if n and not (n.isdigit() and int(n) >= 1):
            raise HemasegUsageError(option, f"local:{n}: give local:N with N a number of workers >= 1")
        workers = int(n) if n else (os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        return Client(cluster), cluster
    try:
        if Path(address).is_file():
            return Client(scheduler_file=address, timeout="30s"), None
        return Client(address, timeout="30s"), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise HemasegUsageError(option, f"cannot reach the Dask scheduler at {address} ({exc})") from None
