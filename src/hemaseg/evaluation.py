"""Score a model on a folder of image/mask pairs: per-image and mean Dice/IoU, worst-case grid."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hemaseg.errors import HemasegInputError
from hemaseg.infer.segment import get_model, segment
from hemaseg.io.datasets import Pair, find_pairs, load_pair
from hemaseg.io.writers import atomic_path, overlay
from hemaseg.metrics import wbc_scores
from hemaseg.progress import track
from hemaseg.tasks import get_task


def select_split(pairs: list[Pair], split_file: str | Path, part: str = "val") -> list[Pair]:
    """Keep the pairs whose image file name is listed in ``part`` of a split.json."""
    d = json.loads(Path(split_file).read_text())
    if part not in d:
        raise HemasegInputError(split_file, f"split file has no {part!r} list")
    names = {Path(entry[0] if isinstance(entry, list) else entry).name for entry in d[part]}
    chosen = [p for p in pairs if p.image.name in names]
    if not chosen:
        raise HemasegInputError(split_file, f"none of its {part!r} images are in the data folder")
    return chosen


def evaluate_wbc(pairs: list[Pair], model="wbc", cell_diameter: float | None = None,
                 device: str = "cpu") -> tuple[list[dict], dict[str, float]]:
    """Run :func:`segment` on each pair; return (per-image rows, means)."""
    loaded = get_model(model, device)
    rows = []
    for pair in track(pairs, "evaluate"):
        image, target = load_pair(pair)
        t0 = time.perf_counter()
        seg = segment(image, loaded, cell_diameter=cell_diameter, device=device)
        rows.append({"image": str(pair.image), **wbc_scores(seg.classes, target),
                     "seconds": time.perf_counter() - t0, "cell_diameter": seg.cell_diameter,
                     "scale": seg.scale, "count": seg.count, "_pred": seg.classes})
    keys = ["dice_cell", "iou_cell", "dice_nucleus", "iou_nucleus", "seconds"]
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}
    return rows, means


def worst_grid(rows: list[dict], path: Path, task_name: str = "wbc", n: int = 6) -> Path:
    """PNG grid of the ``n`` worst images: input | ground truth | prediction, mean Dice in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hemaseg.io.images import read_image

    task = get_task(task_name)
    worst = sorted(rows, key=lambda r: (r["dice_cell"] + r["dice_nucleus"]) / 2)[:n]
    fig, axes = plt.subplots(len(worst), 3, figsize=(7.5, 2.5 * len(worst)), squeeze=False)
    for ax_row, r in zip(axes, worst):
        image = read_image(r["image"])
        target = r["_target"]
        panels = [image, overlay(image, target, task.colors), overlay(image, r["_pred"], task.colors)]
        titles = [Path(r["image"]).name, "ground truth",
                  f"pred: cell {r['dice_cell']:.3f} nuc {r['dice_nucleus']:.3f}"]
        for ax, p, t in zip(ax_row, panels, titles):
            ax.imshow(p)
            ax.set_title(t, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=60)
    plt.close(fig)
    return path


def evaluate(task: str, data: list[str | Path], model="wbc", split: str | Path | None = None,
             cell_diameter: float | None = None, device: str = "cpu", grid: Path | None = None) -> dict:
    """Evaluate ``model`` on the pairs under ``data`` (optionally only a split's val list)."""
    if task != "wbc":
        raise HemasegInputError(task, "evaluation is implemented for the wbc task")
    pairs = [p for d in data for p in find_pairs(d)]
    if not pairs:
        raise HemasegInputError(", ".join(map(str, data)), "no image/mask pairs found")
    if split:
        pairs = select_split(pairs, split)
    rows, means = evaluate_wbc(pairs, model, cell_diameter, device)
    if grid is not None and rows:
        for r, p in zip(rows, pairs):
            r["_target"] = load_pair(p)[1]
        worst_grid(rows, grid, task)
    per_image = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return {"task": task, "model": str(model), "n_images": len(rows), "mean": means, "per_image": per_image}
