"""Per-pixel loss weight maps, computed on the fly from each augmented training target."""
from __future__ import annotations

import numpy as np


def contact_weights(labels: np.ndarray, weight: float = 10.0, radius: int = 2) -> np.ndarray:
    """(H, W) float32 weights: 1, and ``1 + weight`` where two instances come within ``radius`` px.

    The thin gaps between touching nuclei are a tiny share of the pixels but decide
    whether two nuclei come out as one; this is the U-Net paper's border weighting,
    cut down to what a 3x3-style filter can do fast.

    >>> lab = np.zeros((5, 9), np.uint16); lab[1:4, 1:4] = 1; lab[1:4, 5:8] = 2
    >>> w = contact_weights(lab, weight=4, radius=2)
    >>> w[2].tolist()
    [1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0]
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels).astype(np.int64)
    size = 2 * radius + 1
    big = int(lab.max()) + 1
    highest = ndi.maximum_filter(lab, size=size)
    lowest = ndi.minimum_filter(np.where(lab > 0, lab, big), size=size)
    contact = (highest > 0) & (lowest < big) & (highest != lowest)
    return (1.0 + weight * contact).astype(np.float32)


def class_balance_weights(target: np.ndarray, n_classes: int, power: float = 0.5,
                          cap: float = 20.0) -> np.ndarray:
    """(H, W) float32 weights that balance the classes present in one class-index map.

    Each pixel of class c gets ``(f_median / f_c) ** power`` (median-frequency balancing,
    softened by ``power``, capped at ``cap``), where f are the class frequencies in this
    map; classes absent from the map do not count. Pixels of no class (``>= n_classes``, such as
    the loss's ignore value 255) weigh 0; the others average to 1.

    >>> t = np.zeros((10, 10), np.uint8); t[:1] = 1           # class 1 is 10 % of the map
    >>> w = class_balance_weights(t, 2, power=1.0)
    >>> round(float(w[0, 0] / w[5, 5]), 1)                     # 9x rarer, 9x the weight
    9.0
    >>> t[5:] = 255; float(class_balance_weights(t, 2)[9, 9])  # unlabelled
    0.0
    """
    t = np.asarray(target)
    valid = t < n_classes  # an unlabelled pixel (e.g. 255, ignored by the loss) weighs 0
    counts = np.bincount(t[valid].ravel(), minlength=n_classes).astype(np.float64)
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    if not present.any():
        return np.zeros(t.shape, np.float32)
    ref = np.median(freq[present])
    per_class = np.ones(n_classes + 1)
    per_class[:n_classes][present] = np.minimum((ref / freq[present]) ** power, cap)
    per_class[n_classes] = 0.0
    w = per_class[np.where(valid, t, n_classes)]
    return (w / w[valid].mean()).astype(np.float32)
