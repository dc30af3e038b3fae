"""Segmentation metrics: Dice and IoU on binary masks (NumPy)."""
from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|A∩B|/(|A|+|B|) of two boolean masks; 1.0 when both are empty.

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> dice(a, a), dice(a, ~a)
    (1.0, 0.0)
    """
    pred = pred.astype(bool)
    target = target.astype(bool)
    denom = pred.sum() + target.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, target).sum() / denom)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred = pred.astype(bool)
    target = target.astype(bool)
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


def wbc_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Dice and IoU of the whole cell (class > 0) and the nucleus (class 2) of two (H, W) class maps."""
    cell_p, cell_t = pred > 0, target > 0
    nuc_p, nuc_t = pred == 2, target == 2
    return {
        "dice_cell": dice(cell_p, cell_t),
        "iou_cell": iou(cell_p, cell_t),
        "dice_nucleus": dice(nuc_p, nuc_t),
        "iou_nucleus": iou(nuc_p, nuc_t),
    }
