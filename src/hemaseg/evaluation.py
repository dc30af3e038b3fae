"""Score a model on annotated images: WBC Dice/IoU, nuclei DSB metric per modality, worst-case grids."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hemaseg.errors import HemasegInputError
from hemaseg.infer.segment import get_model, segment
from hemaseg.io.datasets import Pair, find_dsb, find_pairs, load_instances, load_pair
from hemaseg.io.writers import atomic_path, overlay
from hemaseg.metrics import dsb_scores, wbc_scores
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


def _runner(task: str, model, cell_diameter: float | None, device: str, method: str | None):
    """image -> Segmentation, by the model or by a classical method."""
    if method:
        from hemaseg.classical import segment_classical

        return lambda image: segment_classical(image, task, method)
    loaded = get_model(model, device)
    return lambda image: segment(image, loaded, cell_diameter=cell_diameter, device=device)


def _score_each(pairs: list[Pair], load, run, score) -> list[dict]:
    """One row per pair: ``score(seg, target, image)`` plus the image, seconds, diameter and scale."""
    rows = []
    for pair in track(pairs, "evaluate"):
        image, target = load(pair)
        t0 = time.perf_counter()
        seg = run(image)
        seconds = time.perf_counter() - t0
        rows.append({"image": str(pair.image), **score(seg, target, image), "seconds": seconds,
                     "cell_diameter": seg.cell_diameter, "scale": seg.scale})
    return rows


def evaluate_wbc(pairs: list[Pair], model="wbc", cell_diameter: float | None = None,
                 device: str = "cpu", method: str | None = None) -> tuple[list[dict], dict[str, float]]:
    """Run :func:`segment` (or a classical ``method``) on each pair; return (per-image rows, means)."""
    run = _runner("wbc", model, cell_diameter, device, method)
    rows = _score_each(pairs, load_pair, run,
                       lambda seg, target, image: {**wbc_scores(seg.classes, target), "count": seg.count,
                                                   "_pred": seg.classes})
    keys = ["dice_cell", "iou_cell", "dice_nucleus", "iou_nucleus", "seconds"]
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}
    return rows, means


def modality(image: np.ndarray) -> str:
    """Imaging modality of a DSB-style image: fluorescence (grey, dark background),
    brightfield (grey, light background) or histology (coloured stain).

    >>> fl = np.zeros((8, 8, 3), np.uint8); fl[2:4, 2:4] = 200
    >>> he = 255 - fl; he[..., 1] //= 2
    >>> modality(fl), modality(255 - fl), modality(he)
    ('fluorescence', 'brightfield', 'histology')
    """
    from hemaseg.data.transforms import is_bright_background

    rgb = image.astype(np.int16)
    grey = int(np.abs(rgb[..., 0] - rgb[..., 1]).max()) <= 2 and int(np.abs(rgb[..., 1] - rgb[..., 2]).max()) <= 2
    if not grey:
        return "histology"
    return "brightfield" if is_bright_background(image) else "fluorescence"


def evaluate_nuclei(pairs: list[Pair], model="nuclei", cell_diameter: float | None = None, device: str = "cpu",
                    method: str | None = None) -> tuple[list[dict], dict[str, float], dict[str, dict]]:
    """Run :func:`segment` (or a classical ``method``) on each DSB sample; return (rows, means, means per modality)."""
    run = _runner("nuclei", model, cell_diameter, device, method)
    rows = _score_each(pairs, load_instances, run,
                       lambda seg, target, image: {"modality": modality(image), **dsb_scores(seg.instances, target),
                                                   "_pred": seg.instances})
    keys = ["dsb", "ap50", "ap75", "seconds"]
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in keys} | {"n_images": len(rs)}  # noqa: E731
    means = mean(rows) if rows else {}
    by_mod = {m: mean([r for r in rows if r["modality"] == m]) for m in sorted({r["modality"] for r in rows})}
    return rows, means, by_mod


def _score(row: dict) -> float:
    return row["dsb"] if "dsb" in row else (row["dice_cell"] + row["dice_nucleus"]) / 2


def _title(row: dict) -> str:
    if "dsb" in row:
        return f"pred: DSB {row['dsb']:.3f} AP50 {row['ap50']:.2f} ({row['n_pred']}/{row['n_true']})"
    return f"pred: cell {row['dice_cell']:.3f} nuc {row['dice_nucleus']:.3f}"


def worst_grid(rows: list[dict], path: Path, task_name: str = "wbc", n: int = 6) -> Path:
    """PNG grid of the ``n`` worst images: input | ground truth | prediction, the scores in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hemaseg.io.images import read_image

    task = get_task(task_name)
    worst = sorted(rows, key=_score)[:n]
    fig, axes = plt.subplots(len(worst), 3, figsize=(7.5, 2.5 * len(worst)), squeeze=False)
    for ax_row, r in zip(axes, worst):
        image = read_image(r["image"])
        target = r["_target"]
        if task.name == "nuclei":
            panels = [image, overlay(image, (target > 0).astype(np.uint8), task.colors, instances=target),
                      overlay(image, (r["_pred"] > 0).astype(np.uint8), task.colors, instances=r["_pred"])]
        else:
            panels = [image, overlay(image, target, task.colors), overlay(image, r["_pred"], task.colors)]
        titles = [Path(r["image"]).name[:24], "ground truth", _title(r)]
        for ax, p, t in zip(ax_row, panels, titles):
            ax.imshow(p)
            ax.set_title(t, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=60)
    plt.close(fig)
    return path


def evaluate_smear10(data: list[str | Path], model="smear10", cell_diameter: float | None = None,
                     device: str = "cpu", confusion_png: Path | None = None) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU (summed over all images) on seed-002 folders
    (``images/`` + ``segments/`` colour maps or ``classes/`` index maps); confusion matrix PNG."""
    from hemaseg.io.datasets import find_smear_pairs, read_smear_label
    from hemaseg.io.images import read_image
    from hemaseg.metrics import confusion_matrix, semantic_scores

    task = get_task("smear10")
    k = len(task.classes)
    pairs = [p for d in data for p in find_smear_pairs(d)]
    if not pairs:
        raise HemasegInputError(", ".join(map(str, data)), "no images/ with segments/ (seed-002 layout) found")
    run = _runner("smear10", model, cell_diameter, device, None)
    cm = np.zeros((k, k), np.int64)
    rows = []
    for image_path, label_path in track(pairs, "evaluate"):
        image, target = read_image(image_path), read_smear_label(label_path)
        t0 = time.perf_counter()
        seg = run(image)
        one = confusion_matrix(target.ravel(), seg.classes.ravel(), k)
        cm += one
        rows.append({"image": str(image_path), "seconds": time.perf_counter() - t0,
                     "pixel_accuracy": float(np.trace(one) / max(one.sum(), 1)), "cell_diameter": seg.cell_diameter,
                     "scale": seg.scale})
    scores = semantic_scores(cm, list(task.classes))
    if confusion_png is not None:
        from hemaseg.train.classify import plot_confusion

        plot_confusion(cm, list(task.classes), confusion_png, f"smear10 pixels, row %: {len(rows)} images, "
                       f"pixel accuracy {scores['pixel_accuracy']:.3f}, mean IoU {scores['mean_iou']:.3f}", percent=True)
    return {"task": "smear10", "model": str(model), "n_images": len(rows), "mean": scores, "confusion": cm.tolist(),
            "per_image": rows}


def evaluate(task: str, data: list[str | Path], model="wbc", split: str | Path | None = None,
             cell_diameter: float | None = None, device: str = "cpu", grid: Path | None = None,
             method: str | None = None) -> dict:
    """Evaluate ``model`` on the annotated images under ``data`` (optionally only a split's val list);
    ``grid`` is the worst-case PNG (smear10: the confusion matrix PNG)."""
    if task == "smear10":
        return evaluate_smear10(data, model, cell_diameter, device, grid)
    if task not in ("wbc", "nuclei"):
        raise HemasegInputError(task, "evaluation is implemented for the wbc, nuclei and smear10 tasks")
    find = (lambda d: find_dsb(d) or find_pairs(d)) if task == "nuclei" else find_pairs
    pairs = [p for d in data for p in find(d)]
    if not pairs:
        raise HemasegInputError(", ".join(map(str, data)), "no annotated images found")
    if split:
        pairs = select_split(pairs, split)
    by_mod = None
    if task == "nuclei":
        rows, means, by_mod = evaluate_nuclei(pairs, model, cell_diameter, device, method)
    else:
        rows, means = evaluate_wbc(pairs, model, cell_diameter, device, method)
    if grid is not None and rows:
        load = load_instances if task == "nuclei" else load_pair
        for r, p in zip(rows, pairs):
            r["_target"] = load(p)[1]
        worst_grid(rows, grid, task)
    per_image = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    res = {"task": task, "model": f"classical:{method}" if method else str(model), "n_images": len(rows),
           "mean": means, "per_image": per_image}
    if by_mod is not None:
        res["per_modality"] = by_mod
    return res
