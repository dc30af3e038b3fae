"""Per-task output files of ``hemaseg segment`` (DESIGN.md file contracts)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaseg.infer.segment import Segmentation
from hemaseg.io.writers import overlay, write_json, write_png
from hemaseg.tasks import Task


def label_image(task: Task, classes: np.ndarray) -> np.ndarray:
    """Class indices -> the task's label values on disk (wbc: 0/128/255): (H, W) uint8."""
    lut = np.asarray(task.label_values, np.uint8)
    return lut[classes]


def write_segmentation(out: Path, stem: str, source: Path, image: np.ndarray, seg: Segmentation, task: Task,
                       model_name: str, with_overlay: bool) -> list[Path]:
    """Write <stem>.png, <stem>.json and optionally <stem>_overlay.png into ``out``."""
    h, w = seg.classes.shape
    if task.name == "nuclei":
        # Instance labels 0 background, 1..N: uint16 (DESIGN.md).
        if seg.instances.max() > 65535:
            raise ValueError(f"{seg.instances.max()} nuclei do not fit a uint16 label PNG")
        labels = seg.instances.astype(np.uint16)
        files = [write_png(out / f"{stem}.png", labels)]
    elif task.name == "smear10":
        from hemaseg.data.synth import colour_map

        files = [write_png(out / f"{stem}.png", seg.classes.astype(np.uint8)),
                 write_png(out / f"{stem}_color.png", colour_map(seg.classes))]
    else:
        files = [write_png(out / f"{stem}.png", label_image(task, seg.classes))]
    files.append(write_json(out / f"{stem}.json", {
        "filename": str(source),
        "height": h,
        "width": w,
        "task": task.name,
        "model": model_name,
        "cell_diameter": round(seg.cell_diameter, 2),
        "scale": round(seg.scale, 4),
        "count": seg.count,
        "masks": seg.objects,
    }))
    if with_overlay:
        colors = {k: v for k, v in task.colors.items() if k > 0}
        files.append(write_png(out / f"{stem}_overlay.png", overlay(image, seg.classes, colors, instances=seg.instances)))
    return files
