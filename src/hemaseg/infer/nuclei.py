"""Nuclei instances at native resolution: invert bright-background images, check the nucleus
size, tile, stitch, split touching nuclei by watershed."""
from __future__ import annotations

import numpy as np

from hemaseg.data.transforms import is_bright_background, percentile_range
from hemaseg.infer.postprocess import instance_objects, nuclei_instances
from hemaseg.infer.segment import MAX_FACTOR, MIN_FACTOR, Segmentation, get_model, measure_diameter, predict_probs

# Smallest nucleus kept, as a fraction of the area of a nucleus of the image's diameter.
MIN_NUCLEUS_FRACTION = 0.04


def _min_area(diameter: float) -> int:
    return max(int(MIN_NUCLEUS_FRACTION * np.pi * (diameter / 2) ** 2), 4)


def nuclei_factor(card: dict, diameter: float | None) -> float:
    """Resize factor for nuclei of ``diameter`` px: 1 inside the sizes the model was trained on
    (5th-95th percentile of training nuclei times the scale augmentation's range), else what
    brings them to the trained median.

    >>> card = {"cell_diameter": 18.0, "diameter_range": [10.0, 49.0], "training": {"scale_range": [0.5, 2.0]}}
    >>> nuclei_factor(card, 60.0), nuclei_factor(card, 360.0), nuclei_factor(card, None)
    (1.0, 0.1, 1.0)
    """
    trained = float(card.get("cell_diameter") or 0)
    if not diameter or trained <= 0:
        return 1.0
    lo, hi = card.get("diameter_range") or [trained / 1.25, trained * 1.25]
    smin, smax = card.get("training", {}).get("scale_range", [1.0, 1.0])
    lo, hi = lo * smin, hi * smax
    if lo <= diameter <= hi:
        return 1.0
    return float(np.clip(trained / diameter, MIN_FACTOR, MAX_FACTOR))


def segment_nuclei(image: np.ndarray, model="nuclei", cell_diameter: float | None = None, device: str = "cpu",
                   tile: int = 1024, overlap: int = 64) -> Segmentation:
    """Find every nucleus in an (H, W, 3) uint8 image (fluorescence, brightfield or H&E).

    Bright-background images are inverted (if the model was trained so). With no
    ``cell_diameter`` (nucleus diameter, px) one pass at native scale measures the
    nuclei; if they lie outside the trained size range, a second pass runs at the scale
    that brings them to the trained median. Returns a :class:`Segmentation` whose
    ``instances`` are (H, W) int32 labels 1..N and ``classes`` the (H, W) uint8 nucleus mask.
    """
    module, card = get_model(model, device)
    norm = card.get("normalization", {})
    prange = percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0))
    invert = bool(norm.get("invert_bright")) and is_bright_background(image, prange)
    trained = float(card.get("cell_diameter") or 20.0)
    factor = 1.0 if cell_diameter is None else nuclei_factor(card, cell_diameter)
    probs = predict_probs(module, card, image, factor, tile, overlap, prange, invert)
    if cell_diameter is None:
        instances = nuclei_instances(probs, _min_area(trained))
        cell_diameter = measure_diameter(instances, min_area=_min_area(trained))
        new = nuclei_factor(card, cell_diameter)
        if new != factor:
            factor = new
            probs = predict_probs(module, card, image, factor, tile, overlap, prange, invert)
    diameter = float(cell_diameter or trained / factor)
    instances = nuclei_instances(probs, _min_area(diameter), diameter=diameter)
    classes = (instances > 0).astype(np.uint8)
    return Segmentation(classes, instances, probs, diameter, factor, instance_objects(instances, probs))
