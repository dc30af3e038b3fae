"""Post-processing: clean class maps, split touching cells (distance transform + watershed),
polygons and boxes."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.morphology import remove_small_holes, remove_small_objects
from skimage.segmentation import watershed


def clean_wbc_classes(classes: np.ndarray, min_area: int) -> np.ndarray:
    """Drop cell specks smaller than ``min_area`` px and fill holes in cells: (H, W) uint8 classes.

    >>> c = np.zeros((20, 20), np.uint8); c[2:12, 2:12] = 1; c[5:8, 5:8] = 0; c[18, 18] = 2
    >>> out = clean_wbc_classes(c, min_area=10)
    >>> int(out[6, 6]), int(out[18, 18])
    (1, 0)
    """
    cell = classes > 0
    cell = remove_small_objects(cell, max_size=max(min_area - 1, 0))
    cell = remove_small_holes(cell, max_size=max(min_area - 1, 0))
    out = np.where(cell, np.maximum(classes, 1), 0).astype(np.uint8)
    # Specks of cytoplasm enclosed by nucleus are texture (granules), not anatomy.
    nucleus = remove_small_holes(out == 2, max_size=max(min_area // 10, 0))
    out[nucleus & cell] = 2
    return out


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
    dist = ndi.distance_transform_edt(comp)
    # Smoothing merges the ridge maxima of irregular outlines into one peak per cell.
    dist_s = ndi.gaussian_filter(dist, sigma=max(1.0, diameter / 20))
    peaks = peak_local_max(dist_s, min_distance=max(2, int(diameter / 3)), threshold_abs=max(1.0, diameter / 8),
                           labels=comp.astype(np.int32), exclude_border=False)
    if len(peaks) <= 1:
        return comp.astype(np.int32)
    markers = np.zeros(comp.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist_s, markers, mask=comp).astype(np.int32)


def open_cells(classes: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening of the cell mask (disk of ``radius`` px): cuts thin bridges and arms
    (a faint cytoplasm leaking into a neighbouring red cell) so they can be dropped as separate pieces.

    >>> c = np.zeros((40, 60), np.uint8); c[5:35, 5:35] = 1; c[18:21, 35:58] = 1
    >>> int(open_cells(c, 3)[19, 50]), int(open_cells(c, 3)[19, 20])
    (0, 1)
    """
    r = int(round(radius))
    if r < 1:
        return classes
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    cell = cv2.morphologyEx((classes > 0).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    return np.where(cell > 0, classes, 0).astype(np.uint8)


def split_instances(mask: np.ndarray, diameter: float, min_area: int | None = None) -> np.ndarray:
    """Split a binary mask of round cells into instances: (H, W) int32 labels 1..N.

    Markers are maxima of the (smoothed) distance transform at least a third of a cell
    diameter apart, so two touching cells give two markers and one cell gives one. Work is
    done per connected component, so the cost follows the cells' area, not the image's.

    >>> yy, xx = np.mgrid[:60, :100]
    >>> two = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 66) ** 2 < 400)
    >>> int(split_instances(two, diameter=40).max())
    2
    """
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
        up = cv2.resize(labels, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
        # Mask pixels the small copy missed (thin rims) join their nearest label.
        idx = ndi.distance_transform_edt(up == 0, return_distances=False, return_indices=True)
        full = np.where(mask, up[idx[0], idx[1]], 0).astype(np.int32)
        return drop_small(full, min_area)
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


def keep_nucleated(classes: np.ndarray, instances: np.ndarray, min_fraction: float = 0.1,
                   min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Drop cell instances whose nucleus is under ``min_fraction`` of their area or ``min_area`` px.

    Every WBC has a nucleus and red cells have none, so a "cell" without one is a red
    cell (or debris) that looked like cytoplasm under an unfamiliar stain. Returns the
    cleaned (classes, instances), instances relabelled 1..N.

    >>> c = np.zeros((10, 20), np.uint8); c[2:8, 2:8] = 1; c[4:6, 4:6] = 2; c[2:8, 12:18] = 1
    >>> inst = np.zeros((10, 20), np.int32); inst[2:8, 2:8] = 1; inst[2:8, 12:18] = 2
    >>> c2, i2 = keep_nucleated(c, inst)
    >>> int(i2.max()), int(c2[5, 15])
    (1, 0)
    """
    n = int(instances.max())
    if n == 0:
        return classes, instances
    area = np.bincount(instances.ravel(), minlength=n + 1)
    nuc = np.bincount(instances.ravel(), weights=(classes == 2).ravel(), minlength=n + 1)
    new_instances = relabel(instances, (nuc >= min_fraction * area) & (nuc >= max(min_area, 1)))
    new_classes = np.where(new_instances > 0, classes, 0).astype(np.uint8)
    return new_classes, new_instances


def limit_cytoplasm(classes: np.ndarray, instances: np.ndarray, max_reach: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip each cell to pixels within ``max_reach`` x its nucleus' equivalent diameter of the nucleus.

    In wbc-seg's annotations no cytoplasm pixel lies farther from the nucleus than 1.03x
    the nucleus' equivalent diameter (99th percentile 0.95x); a "cell" reaching farther
    has swallowed neighbouring red cells. Returns (classes, instances).
    """
    out_c, out_i = classes.copy(), instances.copy()
    for r in regionprops(instances):
        y1, x1, y2, x2 = r.bbox
        sel = instances[y1:y2, x1:x2] == r.label
        nuc = sel & (classes[y1:y2, x1:x2] == 2)
        if not nuc.any():
            continue
        reach = max_reach * 2.0 * np.sqrt(nuc.sum() / np.pi)
        far = sel & (ndi.distance_transform_edt(~nuc) > reach)
        if far.any():
            out_c[y1:y2, x1:x2][far] = 0
            out_i[y1:y2, x1:x2][far] = 0
    return out_c, out_i


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


def nuclei_targets(labels: np.ndarray) -> np.ndarray:
    """Instance labels -> training classes 0 background, 1 nucleus interior, 2 nucleus boundary: (H, W) uint8.

    The boundary is each nucleus' own outermost pixel ring, so two touching nuclei are
    separated by two boundary pixels and their interiors never touch.

    >>> lab = np.zeros((7, 12), np.uint16); lab[1:6, 1:6] = 1; lab[1:6, 6:11] = 2
    >>> t = nuclei_targets(lab)
    >>> t[3].tolist()
    [0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0]
    """
    from skimage.segmentation import find_boundaries

    out = (labels > 0).astype(np.uint8)
    out[find_boundaries(labels, mode="inner") & (labels > 0)] = 2
    return out


def nuclei_instances(probs: np.ndarray, min_area: int = 8, diameter: float | None = None,
                     seed_threshold: float = 0.5, fg_threshold: float = 0.5) -> np.ndarray:
    """Nuclei instances from (3, H, W) background/interior/boundary probabilities: (H, W) int32 labels 1..N.

    Seeds are the connected interiors (the boundary class keeps touching nuclei apart).
    With ``diameter`` (px, the nuclei's typical size) seeds are instead the maxima of the
    interiors' smoothed distance transform at least a third of a diameter apart, so two
    nuclei whose interiors still touch are split too (interiors without such a maximum
    keep a seed of their own). Each foreground component is flooded from its seeds by a
    watershed; foreground without a seed (a nucleus too small for an interior) is an
    instance of its own. Watershed runs only on components holding two or more seeds,
    so the cost follows the touching nuclei, not the image size.

    >>> p = np.zeros((3, 9, 16), np.float32); p[0] = 1
    >>> for x0 in (1, 8):
    ...     p[:, 1:8, x0:x0 + 7] = [[[0]], [[0.1]], [[0.9]]]; p[:, 3:6, x0 + 2:x0 + 5] = [[[0]], [[0.9]], [[0.1]]]
    >>> int(nuclei_instances(p, min_area=4).max())
    2
    """
    fg = (probs[1] + probs[2]) > fg_threshold
    interior = (probs[1] > seed_threshold) & fg
    n_fg, comps = cv2.connectedComponents(fg.astype(np.uint8), connectivity=4)
    if n_fg <= 1:
        return np.zeros(fg.shape, np.int32)
    n_int, markers = cv2.connectedComponents(interior.astype(np.uint8), connectivity=4)
    relief = -probs[1]
    if diameter is not None and n_int > 1:
        dist = cv2.distanceTransform(interior.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        dist = cv2.GaussianBlur(dist, (0, 0), max(0.5, diameter / 15))
        peaks = peak_local_max(dist, min_distance=max(2, int(diameter / 3)), threshold_abs=1.0, exclude_border=False)
        peak_markers = np.zeros(fg.shape, np.int32)
        peak_markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # Interiors left without a maximum (thin, or next to a bigger nucleus) keep their own seed.
        has_peak = np.zeros(n_int, bool)
        has_peak[markers[tuple(peaks.T)]] = True
        has_peak[0] = True
        lonely = ~has_peak[markers]
        markers = np.where(lonely, markers + len(peaks), peak_markers)
        relief = -dist
    seeds = markers > 0
    pairs = np.unique(np.stack([comps[seeds], markers[seeds]]), axis=1) if seeds.any() else np.zeros((2, 0), int)
    seeds_in = np.bincount(pairs[0], minlength=n_fg) if pairs.size else np.zeros(n_fg, int)
    out = np.zeros(fg.shape, np.int32)
    nxt = 1
    for i, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is None:
            continue
        comp = comps[sl] == i
        view = out[sl]
        if seeds_in[i] <= 1:
            view[comp] = nxt
            nxt += 1
            continue
        labels = watershed(relief[sl], np.where(comp, markers[sl], 0), mask=comp)
        # Pixels the watershed could not reach from a seed stay with their component.
        ids = np.unique(labels[labels > 0])
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[ids] = np.arange(nxt, nxt + len(ids))
        view[comp] = np.where(labels[comp] > 0, lut[labels[comp]], nxt + len(ids))
        nxt += len(ids) + int((labels[comp] == 0).any())
    return drop_small(out, min_area)


def instance_objects(instances: np.ndarray, probs: np.ndarray | None = None, class_name: str = "nucleus",
                     tolerance: float = 0.5) -> list[dict]:
    """One record per instance: id, box, outline vertices, area, diameter, score (mean foreground probability)."""
    h, w = instances.shape
    objs = []
    for r in regionprops(instances):
        y1, x1, y2, x2 = r.bbox
        sub = instances[y1:y2, x1:x2] == r.label
        outline = polygons(np.pad(sub, 1), tolerance)
        outline = max(outline, key=len) if outline else []
        score = float(1.0 - probs[0, y1:y2, x1:x2][sub].mean()) if probs is not None else 1.0
        objs.append({
            "id": int(r.label),
            "class_name": class_name,
            "score": round(score, 4),
            "bounding_box": {"x1": int(x1), "x2": int(x2), "y1": int(y1), "y2": int(y2)},
            "area": int(r.area),
            "diameter": round(float(r.equivalent_diameter_area), 2),
            "touches_border": bool(y1 == 0 or x1 == 0 or y2 == h or x2 == w),
            "vertices": [[x + x1 - 1, y + y1 - 1] for x, y in outline],
        })
    return objs
