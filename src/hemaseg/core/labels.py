"""Label tools every task uses: relabel, small objects, touching cells split by distance
transform + watershed, sizes, polygons and per-instance records (numpy, SciPy, scikit-image, OpenCV)."""
from __future__ import annotations

import cv2
import numpy as np

# Label values beside a task's classes, in training targets and label maps read from disk: IGNORE (unannotated: neither
# taught nor scored) and ANY_FOREGROUND (an object whose parts are not known: a WBC box's core, a binary WBC mask;
# the loss asks only that the foreground classes together be likely). hemaseg.engine.losses uses them.
IGNORE = 255
ANY_FOREGROUND = 254

# Cell diameter (px) at which touching cells are separated; larger cells are split on a
# downsampled copy, which is as good for round cells and much faster.
SPLIT_DIAMETER = 40.0


def relabel(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the labels where ``keep[label]`` is true (label 0 never) and renumber them 1..N."""
    keep = keep.copy()
    keep[0] = False
    lut = np.zeros(len(keep), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels]


def drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove labels under ``min_area`` px and renumber the rest 1..N."""
    return relabel(labels, np.bincount(labels.ravel()) >= max(min_area, 1))


def _split_component(comp: np.ndarray, diameter: float) -> np.ndarray:
    """Watershed of one connected component (bool crop) into round cells: int32 labels from 1."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(comp)
    # Smoothing merges the ridge maxima of irregular outlines into one peak per cell.
    dist_s = ndi.gaussian_filter(dist, sigma=max(1.0, diameter / 20))
    spacing, floor = max(2, int(diameter / 3)), max(1.0, diameter / 8)
    # Most components are one cell: when at most one pixel is the maximum of its neighbourhood
    # (peak_local_max's own test, made with OpenCV's dilation) there is nothing to split.
    inside = np.where(comp, dist_s, 0.0)
    size = 2 * spacing + 1
    if int(((inside == cv2.dilate(inside, np.ones((size, size), np.uint8))) & (inside > floor)).sum()) <= 1:
        return comp.astype(np.int32)
    peaks = peak_local_max(dist_s, min_distance=spacing, threshold_abs=floor,
                           labels=comp.astype(np.int32), exclude_border=False)
    if len(peaks) <= 1:
        return comp.astype(np.int32)
    markers = np.zeros(comp.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist_s, markers, mask=comp).astype(np.int32)


def remove_small(mask: np.ndarray, max_size: int, holes: bool = False) -> np.ndarray:
    """``mask`` without its 4-connected pieces of at most ``max_size`` px (``holes=True``: with its
    4-connected background pieces of at most ``max_size`` px filled): (H, W) bool.

    scikit-image's ``remove_small_objects`` / ``remove_small_holes`` (connectivity 1), with
    OpenCV's connected components: the same result several times faster on a large image.

    >>> m = np.zeros((6, 9), bool); m[1:5, 1:5] = True; m[2, 2] = False; m[1, 7] = True
    >>> int(remove_small(m, 1).sum()), int(remove_small(m, 1, holes=True).sum())
    (15, 17)
    """
    mask = np.asarray(mask, bool)
    if max_size <= 0:
        return mask.copy()
    target = ~mask if holes else mask
    n, comps, stats, _ = cv2.connectedComponentsWithStats(target.view(np.uint8), connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] <= max_size
    small[0] = False  # label 0 is the rest of the image
    drop = small[comps]
    return (mask | drop) if holes else (mask & ~drop)


def nearest_label(labels: np.ndarray) -> np.ndarray:
    """Every pixel takes the label of its nearest labelled (> 0) pixel: (H, W) int32.

    Used to give mask pixels a low-resolution labelling missed (thin rims) to their cell.
    OpenCV's 5x5 chamfer transform decides "nearest" (exact up to ties between two labels,
    and ~10x faster than an exact Euclidean feature transform on a 2048x2048 image).

    >>> lab = np.zeros((3, 8), np.int32); lab[1, 0] = 4; lab[1, 7] = 9
    >>> nearest_label(lab)[1].tolist()
    [4, 4, 4, 4, 9, 9, 9, 9]
    """
    labels = labels.astype(np.int32, copy=False)
    labelled = labels > 0
    if not labelled.any():
        return np.zeros(labels.shape, np.int32)
    _, near = cv2.distanceTransformWithLabels((~labelled).view(np.uint8), cv2.DIST_L2, 5,
                                              labelType=cv2.DIST_LABEL_PIXEL)
    # near numbers the labelled pixels; each takes its own number, so a lookup maps numbers to labels.
    lut = np.zeros(int(near.max()) + 1, np.int32)
    lut[near[labelled]] = labels[labelled]
    return lut[near]


def split_instances(mask: np.ndarray, diameter: float, min_area: int | None = None) -> np.ndarray:
    """Split a binary mask of round cells into instances: (H, W) int32 labels 1..N.

    Markers are maxima of the (smoothed) distance transform at least a third of a cell
    diameter apart, so two touching cells give two markers and one cell gives one. Work is
    done per connected component, so the cost follows the cells' area, not the image's.

    >>> yy, xx = np.mgrid[:60, :100]
    >>> two = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 66) ** 2 < 400)
    >>> int(split_instances(two, diameter=40).max())
    2
    >>> big = np.zeros((400, 700), bool); big[(np.mgrid[:400, :700][0] - 200) ** 2 + (np.mgrid[:400, :700][1] - 200) ** 2 < 150 ** 2] = True
    >>> big[190:210, 600:620] = True                      # a speck far from the 300-px cell
    >>> lab = split_instances(big, diameter=300, min_area=1000)
    >>> int(lab.max()), int(lab[200, 610])                 # one cell; the speck is no part of it
    (1, 0)
    """
    from scipy import ndimage as ndi

    mask = mask.astype(bool)
    if min_area is None:
        min_area = int(0.05 * np.pi * (diameter / 2) ** 2)
    if diameter > 2 * SPLIT_DIAMETER:
        # Big cells: find the split on a smaller copy (cells ~SPLIT_DIAMETER px across),
        # then carry the labels back to the full-resolution mask.
        f = SPLIT_DIAMETER / diameter
        size = (max(1, round(mask.shape[1] * f)), max(1, round(mask.shape[0] * f)))
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        labels = split_instances(small, SPLIT_DIAMETER, max(int(min_area * f * f), 1))
        full = (mask.shape[1], mask.shape[0])
        up = cv2.resize(labels, full, interpolation=cv2.INTER_NEAREST)
        # Each piece of the mask takes its nearest cell's label only if the small copy kept a cell
        # in it: a piece too small to be kept there is not given to a cell it does not touch.
        n, comps = cv2.connectedComponents(mask.view(np.uint8), connectivity=4)
        kept = np.bincount(comps[up > 0], minlength=n) > 0
        kept[0] = False
        inside = kept[comps]
        # "Nearest" is found on the small copy (the rims it left unlabelled are a pixel of it thick):
        # on the full-size mask the distance transform was a third of the split's time.
        near = cv2.resize(nearest_label(labels), full, interpolation=cv2.INTER_NEAREST)
        return drop_small(np.where(inside, near, 0).astype(np.int32), min_area)
    comps, _ = ndi.label(mask)
    out = np.zeros(mask.shape, np.int32)
    pad = 2
    nxt = 1
    for i, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is None:
            continue
        y0, x0 = max(sl[0].start - pad, 0), max(sl[1].start - pad, 0)
        y1, x1 = min(sl[0].stop + pad, mask.shape[0]), min(sl[1].stop + pad, mask.shape[1])
        comp = comps[y0:y1, x0:x1] == i
        labels = _split_component(comp, diameter)
        view = out[y0:y1, x0:x1]
        for k in range(1, int(labels.max()) + 1):
            sel = labels == k
            if sel.sum() >= max(min_area, 1):
                view[sel] = nxt
                nxt += 1
    return out


def polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[list[float]]]:
    """Outer contours of a binary mask as polygons [[x, y], ...] (pixel corners), simplified."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        if tolerance > 0:
            c = cv2.approxPolyDP(c, tolerance, True)
        if len(c) >= 3:
            out.append(c.reshape(-1, 2).astype(float).tolist())
    return out


def wbc_objects(classes: np.ndarray, instances: np.ndarray, probs: np.ndarray | None = None) -> list[dict]:
    """One record per WBC instance (seed-003 style): :func:`instance_objects`' box, outline, area and
    score, plus category, nucleus area and nucleus outlines."""
    objs = instance_objects(instances, probs, class_name="wbc", tolerance=1.0)
    for o in objs:
        b = o["bounding_box"]
        y1, x1 = b["y1"], b["x1"]
        nuc = (instances[y1:b["y2"], x1:b["x2"]] == o["id"]) & (classes[y1:b["y2"], x1:b["x2"]] == 2)
        o["category"] = "wbc"
        o["nucleus_area"] = int(nuc.sum())
        o["nucleus_vertices"] = [[[x + x1 - 1, y + y1 - 1] for x, y in poly] for poly in polygons(np.pad(nuc, 1))]
    return objs


def instance_objects(instances: np.ndarray, probs: np.ndarray | None = None, class_name: str = "nucleus",
                     tolerance: float = 0.5) -> list[dict]:
    """One record per instance: id, box, outline vertices, area, diameter, score (mean foreground probability)."""
    from scipy import ndimage as ndi

    h, w = instances.shape
    objs = []
    for label, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        y1, x1, y2, x2 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        sub = instances[y1:y2, x1:x2] == label
        area = int(sub.sum())
        outline = polygons(np.pad(sub, 1), tolerance)
        outline = max(outline, key=len) if outline else []
        score = float(1.0 - probs[0, y1:y2, x1:x2][sub].mean()) if probs is not None else 1.0
        objs.append({
            "id": label,
            "class_name": class_name,
            "score": round(score, 4),
            "bounding_box": {"x1": int(x1), "x2": int(x2), "y1": int(y1), "y2": int(y2)},
            "area": area,
            "diameter": round(float(np.sqrt(4 * area / np.pi)), 2),
            "touches_border": bool(y1 == 0 or x1 == 0 or y2 == h or x2 == w),
            "vertices": [[x + x1 - 1, y + y1 - 1] for x, y in outline],
        })
    return objs


def measure_diameter(instances: np.ndarray, min_area: int = 30) -> float | None:
    """Area-weighted median equivalent diameter (px) of labelled cells, preferring cells off the border.

    ``instances`` is an (H, W) label image (a boolean mask is labelled first). None when no cell.
    """
    from skimage.measure import label, regionprops

    if instances.dtype == bool:
        instances = label(instances)
    regions = [r for r in regionprops(instances) if r.area >= min_area]
    if not regions:
        return None
    h, w = instances.shape
    inner = [r for r in regions if r.bbox[0] > 0 and r.bbox[1] > 0 and r.bbox[2] < h and r.bbox[3] < w]
    use = inner or regions
    # Area-weighted median: fragments and specks do not drag the estimate down.
    d = np.array([r.equivalent_diameter_area for r in use])
    order = np.argsort(d)
    cum = np.cumsum(np.array([r.area for r in use], float)[order])
    return float(d[order][np.searchsorted(cum, cum[-1] / 2)])
