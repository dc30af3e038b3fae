"""Evaluation plumbing every task shares: find the annotated images, run the model (or a classical
method) on each, score with the task's ``score`` hook, means, a worst-case grid, a plain table."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from hemaseg.engine.predict import get_model
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.datasets import Pair
from hemaseg.io.images import read_image
from hemaseg.io.writers import GRID_MARK, atomic_path, overlay
from hemaseg.models.registry import load_card
from hemaseg.progress import INPUT_NAMED, track


def split_names(split_file: str | Path, part: str = "val") -> set[str]:
    """The image file names listed in ``part`` of a split.json (entries are paths, or lists whose first
    item is the image's path); :class:`HemasegInputError` naming the file when it is no such JSON."""
    try:
        d = json.loads(Path(split_file).read_text())
    except (OSError, ValueError) as exc:
        raise HemasegInputError(split_file, f"cannot read it as a split JSON ({type(exc).__name__})") from None
    if not isinstance(d, dict) or not isinstance(d.get(part), list):
        raise HemasegInputError(split_file, f"split file has no {part!r} list")
    try:
        return {Path(entry[0] if isinstance(entry, list) else entry).name for entry in d[part]}
    except (TypeError, IndexError):
        raise HemasegInputError(split_file, f"its {part!r} list holds something that is no image path") from None


def split_name(split: str | Path | None) -> str | None:
    """``split`` as the name of a dataset's own split (``val``, ``test``: no such file, no suffix, no
    folder part), else None (a split.json, or nothing given).

    >>> split_name("test"), split_name("splits/a.json"), split_name(None)
    ('test', None, None)
    """
    if split is None or Path(split).is_file() or Path(split).suffix or len(Path(split).parts) != 1:
        return None
    return str(split)


def select_split(items: list, split_file: str | Path, part: str = "val", path=lambda p: p.image,
                 failed: list[dict] | None = None) -> list:
    """Keep the items (pairs, or anything ``path`` gives an image path of) whose image file name is listed
    in ``part`` of a split.json; :class:`HemasegInputError` when none is. ``failed``: entries ({"image",
    ...}) of images found without labels; those the split does not list are taken out of it (in place):
    they are no failure of a run that would not have scored them."""
    names = split_names(split_file, part)
    if failed is not None:
        failed[:] = [f for f in failed if Path(f["image"]).name in names]
    chosen = [p for p in items if Path(path(p)).name in names]
    if not chosen:
        raise HemasegInputError(split_file, f"none of its {part!r} images are in the data folder")
    return chosen


def _score_each(pairs: list[Pair], load, run, score, failed: list[dict] | None = None) -> list[dict]:
    """One row per pair: ``score(seg, target, image)`` plus the image, seconds, diameter and scale. A pair
    that cannot be read or scored (a corrupt file, a mask of another size) is skipped and listed in
    ``failed`` ({"image", "reason"}) when given (else its error is raised): the others are still scored."""
    rows = []
    for pair in track(pairs, "evaluate"):
        try:
            with INPUT_NAMED.working_on(pair.image):  # what is logged meanwhile names the image
                image, target = load(pair)
                t0 = time.perf_counter()
                seg = run(image)
                seconds = time.perf_counter() - t0
                rows.append({"image": str(pair.image), **score(seg, target, image), "seconds": seconds,
                             "cell_diameter": seg.cell_diameter, "scale": seg.scale, "_pair": pair})
        except HemasegInputError as exc:
            if failed is None:
                raise
            failed.append({"image": str(exc.path), "reason": exc.reason})
        except (HemasegUsageError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - one image's unexpected failure costs that image, not the table
            if failed is None:
                raise
            failed.append({"image": str(pair.image), "reason": f"{type(exc).__name__}: {str(exc).strip()[:160]}"})
    return rows


def find_each(data: list, find, failed: list[dict]) -> list:
    """``find(folder)``'s samples of every folder in ``data``; a folder that is not there or holds none is
    listed in ``failed`` and the others are used. :class:`HemasegInputError` when none holds any."""
    out = []
    for d in data:
        try:
            found = list(find(d))
        except HemasegInputError as exc:
            failed.append({"image": str(exc.path), "reason": exc.reason})
            continue
        if not found:
            failed.append({"image": str(d), "reason": "no annotated images found"})
        out += found
    if not out:
        if len(failed) == 1:
            raise HemasegInputError(failed[0]["image"], failed[0]["reason"])
        raise HemasegInputError(", ".join(map(str, data)), "; ".join(f"{f['image']}: {f['reason']}" for f in failed)
                                or "no annotated images found")
    return out


def nothing_scored(data: list, failed: list[dict], what: str = "no image could be scored") -> HemasegInputError:
    """The error of an evaluation that scored nothing: ``what``, then the first three failures (``failed``)."""
    why = "; ".join(f"{f['image']}: {f['reason']}" for f in failed[:3])
    return HemasegInputError(", ".join(map(str, data)), what + (f": {why}" if why else ""))


def runner(task, model, cell_diameter: float | None = None, device: str = "cpu", method: str | None = None,
           params=None):
    """image -> Segmentation of ``task``: by ``model`` (loaded once) or by a classical ``method``, through
    :meth:`Task.predict` as ``hemaseg segment`` runs it (an image with nothing in it gives no object: scored
    through ``task.segment`` it got cells the user never sees); ``params``: the post-processing parameters (the
    task's ``Params``, as ``--post`` sets them; default the model card's)."""
    if method:
        return lambda image: task.predict(image, method=method)
    loaded = get_model(model or task.default_model, device)
    return lambda image: task.predict(image, loaded, cell_diameter=cell_diameter, device=device, params=params)


def means(rows: list[dict], keys: list[str]) -> dict[str, float]:
    """Mean of each of ``keys`` over the ``rows`` that score it (a NaN is no score: a binary WBC mask's nucleus);
    NaN when none does; empty when there are no rows."""
    def mean(values: list[float]) -> float:
        scored = [v for v in values if not np.isnan(v)]
        return float(np.mean(scored)) if scored else float("nan")

    return {k: mean([float(r[k]) for r in rows]) for k in keys} if rows else {}


# The folder the bundled cards' split files are named from (``benchmarks/splits/...``, their entries from it too):
# the repository of a clone or an editable install (src/hemaseg/engine/evaluate.py -> the repository); a wheel has none
REPO_ROOT = Path(__file__).resolve().parents[3]


def trained_on(model, card: dict) -> set[str]:
    """Resolved paths of the images a run trained on, from its split.json (beside the model, or the split file its
    card names: from the working folder, else from the repository, as the bundled cards name theirs,
    ``benchmarks/splits/...``); entries are paths, or [image, label] lists, or names in the split's ``source``
    folder (a DSB image in its ``<id>/images/`` folder); empty when neither is on this machine."""
    found = split_file(model, card)
    if found is None:
        return set()
    f, base = found
    try:
        split = json.loads(f.read_text())
        source = base / str(split.get("source", ""))
        seen = set()
        for e in split.get("train", []):
            e = Path(e[0] if isinstance(e, list) else e)
            seen |= {str((where / e).resolve()) for where in (base, source)}
            seen.add(str((source / e.stem / "images" / e.name).resolve()))
        return seen
    except (OSError, ValueError, AttributeError, TypeError, IndexError):
        return set()


def split_file(model, card: dict) -> tuple[Path, Path] | None:
    """(the split file a model trained by, the folder its entries are named from), or None when none is on this
    machine: RUN/split.json beside a run, else the file its card's ``training.split`` names, from the working folder
    or from the repository (:data:`REPO_ROOT`)."""
    named = Path(str((card.get("training") or {}).get("split") or ""))
    tried = [(Path(str(model)) / "split.json", Path.cwd())]
    if named.suffix == ".json":
        tried += [(named, Path.cwd())] + ([] if named.is_absolute() else [(REPO_ROOT / named, REPO_ROOT)])
    return next(((f, base) for f, base in tried if f.is_file()), None)


def own_training_note(model, card: dict, images: list, what: str = "images") -> list[str]:
    """A note when some of the ``images`` scored are the run's own training images (:func:`trained_on`): their
    scores flatter it. None for a run that shipped its start model (no epoch beat it): those weights never trained
    on them."""
    if (card.get("training") or {}).get("shipped"):
        return []
    seen = trained_on(model, card)
    own = sum(1 for p in images if str(Path(p).resolve()) in seen)
    if not own:
        return []
    f = split_file(model, card)[0]
    return [f"note: {own} of the {len(images)} {what} scored are this model's own training {what} ({f}): their "
            f"scores flatter it; --split {f} scores its validation {what}"]


def evaluate_pairs(task, data: list, model=None, split: str | Path | None = None,
                   cell_diameter: float | None = None, device: str = "cpu", grid: Path | None = None,
                   method: str | None = None, params=None) -> dict:
    """Evaluate ``model`` (or a classical ``method``) on the annotated pairs under ``data`` found by
    the task's ``find_samples`` (optionally only a split's val list), each scored by ``task.score``;
    ``grid`` is a PNG of the worst images; ``params`` the post-processing parameters (:func:`runner`). Returns {task, model, n_images, mean, per_image, ...}
    plus what ``task.summarise(rows)`` adds (e.g. means per modality)."""
    failed: list[dict] = []
    unscorable: list[dict] = []  # images found without labels: said unless a split leaves them out anyway
    pairs = find_each(data, lambda d: task.find_scored(d, unscorable), failed)
    if split:
        pairs = select_split(pairs, split, failed=unscorable)
    failed += unscorable
    run = runner(task, model, cell_diameter, device, method, params)
    rows = _score_each(pairs, task.load_sample, run,
                       lambda seg, target, image: {**task.score(seg, target, image), "_pred": (seg.classes, seg.instances)},
                       failed)
    if not rows:
        raise nothing_scored(data, failed)
    keys = [k for k in (task.mean_keys or [k for k, v in rows[0].items() if isinstance(v, float)])]
    if "seconds" not in keys:
        keys.append("seconds")
    if grid is not None and rows:
        worst = sorted(rows, key=task.headline)[:6]
        for r in worst:
            r["_target"] = task.load_sample(r["_pair"])[1]
        worst_grid(task, worst, grid)
    per_image = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    res = {"task": task.name, "model": f"classical:{method}" if method else str(model or task.default_model),
           "n_images": len(rows), "mean": means(rows, keys), "per_image": per_image, "failed": failed}
    if not method and not split:  # a run scored on its own training images (cells says so too)
        notes = own_training_note(model or task.default_model, load_card(model or task.default_model)[1],
                                  [r["image"] for r in rows])  # (the card alone: the model is loaded once)
        if notes:
            res["notes"] = notes
    res.update(task.summarise(rows, keys))
    return res


def worst_grid(task, rows: list[dict], path: Path, n: int = 6, key=None) -> Path:
    """PNG grid of the ``n`` worst images (lowest ``key(row)``, by default ``task.headline``): input |
    ground truth | prediction (``task.panels(image, row["_target"], row["_pred"])``), the scores in the
    title; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = sorted(rows, key=key or task.headline)[:n]
    fig, axes = plt.subplots(len(worst), 3, figsize=(7.5, 2.5 * len(worst)), squeeze=False)
    for ax_row, r in zip(axes, worst):
        image = read_image(r["image"])
        th, tw = r["_target"].shape[:2] if isinstance(r["_target"], np.ndarray) else image.shape[:2]
        if image.shape[:2] != (th, tw):  # a sample scored at its own scale (TXL-PBC fields as weak labels)
            image = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        panels = [image, *task.panels(image, r["_target"], r["_pred"])]
        titles = [Path(r["image"]).name[:24], "ground truth", task.row_title(r)]
        for ax, p, t in zip(ax_row, panels, titles):
            ax.imshow(p)
            ax.set_title(t, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=60, metadata={"Software": GRID_MARK})
    plt.close(fig)
    return path


def class_panels(image: np.ndarray, target: np.ndarray, pred, colors: dict) -> list[np.ndarray]:
    """Ground truth and prediction ((classes, instances) of a Segmentation) as class overlays."""
    return [overlay(image, target, colors), overlay(image, pred[0], colors)]


def instance_panels(image: np.ndarray, target: np.ndarray, pred, colors: dict) -> list[np.ndarray]:
    """Ground-truth and predicted instance labels as outlined overlays."""
    return [overlay(image, (target > 0).astype(np.uint8), colors, instances=target),
            overlay(image, (pred[1] > 0).astype(np.uint8), colors, instances=pred[1])]


def box_panels(image: np.ndarray, target: list, pred: list, colors: dict) -> list[np.ndarray]:
    """Ground-truth boxes ([(name, (x1, y1, x2, y2))], x2 and y2 exclusive) and predicted ones ([(name, score,
    box)]) outlined on the image in their class's colour (``colors``: name -> RGB): two (H, W, 3) uint8 panels."""
    t = max(1, round(max(image.shape[:2]) / 150))  # the grid shows a photo about 150 px wide
    panels = []
    for boxes in (target, [(name, box) for name, _, box in pred]):
        panel = np.ascontiguousarray(image[..., :3]).copy()
        for name, (x1, y1, x2, y2) in boxes:
            cv2.rectangle(panel, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), colors.get(name, (255, 255, 255)), t)
        panels.append(panel)
    return panels


def _cell(v: float) -> str:
    """A table's score: "-" for none (NaN)."""
    return f"{'-':>9}" if np.isnan(v) else f"{v:9.4f}"


def plain_table(res: dict, columns: list[tuple[str, str]] | None = None) -> list[str]:
    """Lines of a per-image table, then the mean row; ``columns`` are (score key, header) pairs
    (default: every mean key but seconds, headed by its first 9 letters)."""
    columns = columns or [(k, k[:9]) for k in res["mean"] if k != "seconds"]
    lines = [f"{'image':<40} " + " ".join(f"{h:>9}" for _, h in columns)]
    for r in res["per_image"]:
        lines.append(f"{Path(r['image']).name[:40]:<40} " + " ".join(_cell(r[k]) for k, _ in columns))
    lines.append(f"{'MEAN (' + str(res['n_images']) + ' images)':<40} "
                 + " ".join(_cell(res['mean'][k]) for k, _ in columns))
    return lines
