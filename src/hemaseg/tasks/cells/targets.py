"""Training data for whole-smear cells: boxes -> pseudo-masks (seed 003's VOC-to-mask step),
instance maps and network targets (class interiors, a shared cell edge and each cell's core;
unannotated cells ignored)."""
from __future__ import annotations

import numpy as np

from hemaseg.classical import mask_in_box, stained
from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.engine.losses import IGNORE
from hemaseg.io.annotations import category_of, mask_record, rasterise

EDGE = len(CATEGORIES) + 1  # class index of the cell edge
CENTRE = EDGE + 1  # class index of a cell's core (its thickest part): one seed per cell
# The network's classes: each category's cell interior, plus a shared cell edge that keeps
# touching cells apart and each cell's core (its seed); the value written per class to a label PNG.
CLASSES = ("background", *CATEGORIES, "edge", "centre")
LABEL_VALUES = (0, 1, 2, 3, 0, 0)
CORE = 0.6  # core = pixels at least this fraction of the cell's largest distance to its outline
# Encoded instance maps hold (instance id << 2) | class (1 rbc, 2 wbc, 3 platelet) in uint16, so one
# map survives geometric augmentation (nearest-neighbour) with both pieces; UNKNOWN marks
# stained pixels that no annotation covers.
UNKNOWN = 0xFFFF


def pseudo_masks(image: np.ndarray, entry: dict) -> dict:
    """Replace box annotations of ``entry`` by masks cut inside each box by
    :func:`hemaseg.classical.mask_in_box` (WBC boxes by the HSV WBC mask). Classes other than
    rbc/wbc/platelet are dropped. Returns a new entry."""
    h, w = image.shape[:2]
    masks = []
    for m in entry["masks"]:
        cat = category_of(m["class_name"])
        if cat not in CATEGORIES:
            continue
        bb = m["bounding_box"]
        x1, y1, x2, y2 = max(0, bb["x1"]), max(0, bb["y1"]), min(w, bb["x2"]), min(h, bb["y2"])
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        sub = mask_in_box(image, (x1, y1, x2, y2), kind="wbc" if cat == "wbc" else None)
        if cat != "wbc":
            # Red cells and platelets are round: where touching cells merge into one stained
            # region (clipped square by the box), the box's inscribed ellipse parts them.
            # They are also convex: the hull fills pale centres and open rings.
            sub = sub & _ellipse(sub.shape, 1.08)
            if sub.any():
                from skimage.morphology import convex_hull_image

                sub = convex_hull_image(sub)
        full = np.zeros((h, w), bool)
        full[y1:y1 + sub.shape[0], x1:x1 + sub.shape[1]] = sub
        rec = mask_record(full, m["class_name"], m.get("score", 1.0))
        if rec is not None:
            rec["category"] = cat
            masks.append(rec)
    return {**entry, "height": h, "width": w, "masks": masks}


def _ellipse(shape: tuple[int, int], grow: float = 1.0) -> np.ndarray:
    """(h, w) bool: the ellipse inscribed in an h x w box, radii times ``grow``."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return (((yy + 0.5 - h / 2) / (grow * h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (grow * w / 2)) ** 2) <= 1


def encode_instances(entry: dict, image: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint16 encoded instance map of an entry's masks (larger cells first, so platelets and
    WBCs lying on red cells stay visible); with ``image``, stained pixels outside every
    annotation box are marked UNKNOWN (BCCD leaves many red cells unboxed: they are not background)."""
    h, w = int(entry["height"]), int(entry["width"])
    out = np.zeros((h, w), np.uint16)
    recs = [m for m in entry["masks"] if category_of(m["class_name"]) in CATEGORIES]
    area = [(m["bounding_box"]["x2"] - m["bounding_box"]["x1"]) * (m["bounding_box"]["y2"] - m["bounding_box"]["y1"])
            for m in recs]
    order = sorted(range(len(recs)), key=lambda i: (category_of(recs[i]["class_name"]) != "rbc", -area[i]))
    boxed = np.zeros((h, w), bool)
    for k, i in enumerate(order, 1):
        m = recs[i]
        cls = CATEGORIES.index(category_of(m["class_name"])) + 1
        out[rasterise(m["vertices"], (h, w))] = (k << 2) | cls
        bb = m["bounding_box"]
        boxed[max(0, bb["y1"]):bb["y2"], max(0, bb["x1"]):bb["x2"]] = True
    if image is not None:
        out[stained(image) & ~boxed] = UNKNOWN
    return out


def cell_targets(encoded: np.ndarray) -> np.ndarray:
    """Encoded instance map -> (H, W) uint8 targets: 0 background, 1-3 cell interiors by class,
    4 cell edge (each cell's outer pixel ring), 5 cell core (the pixels at least ``CORE`` of the
    cell's largest distance from its outline, one blob per cell even where cells overlap),
    255 ignored (unannotated stained pixels).

    >>> enc = np.zeros((7, 12), np.uint16); enc[1:6, 1:6] = (1 << 2) | 1; enc[1:6, 6:11] = (2 << 2) | 3
    >>> cell_targets(enc)[3].tolist()
    [0, 4, 1, 5, 1, 4, 4, 3, 5, 3, 4, 0]
    """
    import cv2
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    unknown = encoded == UNKNOWN
    enc = np.where(unknown, 0, encoded)
    inst, cls = (enc >> 2).astype(np.int32), (enc & 3).astype(np.uint8)
    out = cls.copy()
    edge = find_boundaries(inst, mode="inner") & (inst > 0)
    out[edge] = EDGE
    if inst.any():
        inner = (inst > 0) & ~edge
        dist = cv2.distanceTransform(inner.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        ids = np.unique(inst[inner])
        peak = np.zeros(int(inst.max()) + 1, np.float32)
        if ids.size:
            peak[ids] = ndi.maximum(dist, inst, ids)
        out[inner & (dist >= CORE * peak[inst])] = CENTRE
    out[unknown] = IGNORE
    return out
