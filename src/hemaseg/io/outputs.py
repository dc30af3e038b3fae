"""Output files of ``hemaseg segment`` (DESIGN.md file contracts): the task's label images,
the JSON of objects, an optional overlay. Which label images a task writes is its own
``label_images`` hook; this module only writes them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaseg.core.result import Segmentation
from hemaseg.io.writers import overlay, write_json, write_png


def write_segmentation(out: Path, stem: str, source: Path, image: np.ndarray, seg: Segmentation,
                       labels: dict[str, np.ndarray], task_name: str, model_name: str,
                       colors: dict[int, tuple[int, int, int]] | None = None) -> list[Path]:
    """Write ``<stem><suffix>.png`` for each of ``labels`` ({suffix: array}), ``<stem>.json``, and
    ``<stem>_overlay.png`` when ``colors`` (class index -> RGB) are given, into ``out``."""
    h, w = seg.classes.shape
    files = [write_png(out / f"{stem}{suffix}.png", array) for suffix, array in labels.items()]
    files.append(write_json(out / f"{stem}.json", {
        "filename": str(source),
        "height": h,
        "width": w,
        "task": task_name,
        "model": model_name,
        "cell_diameter": round(seg.cell_diameter, 2),
        "scale": round(seg.scale, 4),
        "count": seg.count,
        "masks": seg.objects,
    }))
    if colors is not None:
        colors = {k: v for k, v in colors.items() if k > 0}
        files.append(write_png(out / f"{stem}_overlay.png", overlay(image, seg.classes, colors, instances=seg.instances)))
    return files
