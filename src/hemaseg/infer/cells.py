"""Every RBC, WBC and platelet of a smear photo as an instance: red-cell size check, tiled
prediction of class interiors + cell edges, a watershed per class."""
from __future__ import annotations

import numpy as np

from hemaseg.data.transforms import percentile_range
from hemaseg.infer.postprocess import instance_objects, relabel
from hemaseg.infer.segment import MAX_FACTOR, MIN_FACTOR, Segmentation, get_model, measure_diameter, predict_probs
from hemaseg.tasks import CELL_CATEGORIES

# Typical diameter of each category relative to a red cell (BCCD boxes: WBC ~1.9, platelet ~0.4);
# sets the smallest object kept.
RELATIVE_SIZE = {"rbc": 1.0, "wbc": 1.6, "platelet": 0.35}
MIN_AREA_FRACTION = 0.15  # of the area of a typical object of its category


def cell_instances(probs: np.ndarray, rbc_d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances from (6, H, W) probabilities of background / rbc / wbc / platelet interiors /
    cell edge / cell core, for red cells of ``rbc_d`` px: (H, W) int32 labels 1..N, (N + 1,) int
    class per instance (1 rbc, 2 wbc, 3 platelet; index 0 unused) and (N,) scores.

    Each predicted core is one cell's seed (overlapping red cells keep apart cores even where
    their outlines merge), and so is a blob of one category's interior holding no core (a
    platelet whose core was missed); the foreground is flooded from the seeds over the
    edge-minus-core relief, and foreground left without a seed is a cell of its own. An instance's class is
    the category with the most probability over its pixels; its score is its core's peak
    probability times that category's share.

    >>> p = np.zeros((6, 30, 60), np.float32); p[0] = 1
    >>> yy, xx = np.mgrid[:30, :60]
    >>> for cx in (18, 34):                    # two red cells overlapping by 4 px
    ...     d = np.hypot(yy - 15, xx - cx); p[:, d < 10] = 0; p[1, d < 10] = 0.5; p[5, d < 4] = 1
    >>> p[1][p[5] == 1] = 0
    >>> inst, owner, scores = cell_instances(p, rbc_d=20)
    >>> int(inst.max()), owner.tolist()
    (2, [0, 1, 1])
    """
    import cv2
    from skimage.segmentation import watershed

    from hemaseg.data.cells import CENTRE, EDGE

    fg = probs[0] < 0.5
    centre = cv2.GaussianBlur(probs[CENTRE], (0, 0), 1.0)
    core = (centre > 0.5) & fg
    typical = np.array([0.0] + [MIN_AREA_FRACTION * np.pi * (RELATIVE_SIZE[c] * rbc_d / 2) ** 2
                                for c in CELL_CATEGORIES])
    n_core, markers = cv2.connectedComponents(core.astype(np.uint8), connectivity=4)
    # A cell whose core was missed (small platelets most often, lying on a red cell) still shows
    # as a blob of its category's interior: such a blob without a core, if big enough, seeds itself.
    top = probs.argmax(0)
    nxt = n_core
    for k in range(1, EDGE):
        n_b, blobs = cv2.connectedComponents((((top == k) | core) & fg).astype(np.uint8), connectivity=4)
        lonely = np.bincount(blobs.ravel(), minlength=n_b) >= max(4, typical[k])
        lonely[np.unique(blobs[core])] = False
        lonely[0] = False
        sel = lonely[blobs] & (markers == 0)
        markers[sel] = blobs[sel] + nxt
        nxt += n_b
    n_fg, comps = cv2.connectedComponents(fg.astype(np.uint8), connectivity=4)
    seeded = np.zeros(n_fg, bool)
    seeded[comps[markers > 0]] = True
    seeded[0] = True
    markers = np.where(~seeded[comps], comps + nxt, markers)  # foreground without any seed: one cell
    labels = watershed(probs[EDGE] - centre, markers, mask=fg) if fg.any() else np.zeros(fg.shape, np.int32)

    def categories(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mass = np.stack([np.bincount(labels.ravel(), weights=probs[k].ravel(), minlength=int(labels.max()) + 1)
                         for k in range(1, EDGE)])
        return mass.argmax(0) + 1, mass

    # A WBC whose lobed nucleus gave two cores comes out in pieces with no cell edge between them:
    # touching WBC pieces are merged unless the network drew an edge along their contact.
    owner, _ = categories(labels)
    labels = merge_unparted(labels, probs[EDGE], owner == CELL_CATEGORIES.index("wbc") + 1)
    owner, mass = categories(labels)
    n = len(owner)
    flat = labels.ravel()
    share = mass.max(0) / np.maximum(mass.sum(0), 1e-6)
    area = np.bincount(flat, minlength=n)
    peak = np.zeros(n, np.float32)
    np.maximum.at(peak, flat, centre.ravel())
    # Confidence: the core's peak, or for a cell found without a core its category's mean probability.
    confidence = np.maximum(peak, mass.max(0) / np.maximum(area, 1))
    keep = area >= np.maximum(4, typical[owner])
    keep[0] = False
    out, owner, ids = visible(np.where(keep[labels], labels, 0).astype(np.int32), owner)
    return out, owner, (confidence[ids] * share[ids]).astype(np.float32)


def merge_unparted(labels: np.ndarray, edge: np.ndarray, mergeable: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Merge touching instances that are both ``mergeable`` (a bool per label) where the mean
    ``edge`` probability along their contact is below ``threshold``.

    >>> lab = np.array([[1, 1, 2, 2, 3, 3]]); edge = np.array([[0, 0.1, 0.1, 0.9, 0.9, 0]])
    >>> merge_unparted(lab, edge, np.array([False, True, True, True])).tolist()
    [[1, 1, 1, 1, 3, 3]]
    """
    n = int(labels.max()) + 1
    codes, weights = [], []
    for a, b, wa, wb in ((labels[:, :-1], labels[:, 1:], edge[:, :-1], edge[:, 1:]),
                         (labels[:-1], labels[1:], edge[:-1], edge[1:])):
        m = (a != b) & mergeable[a] & mergeable[b] & (a > 0) & (b > 0)
        codes.append(np.minimum(a[m], b[m]).astype(np.int64) * n + np.maximum(a[m], b[m]))
        weights.append((wa[m] + wb[m]) / 2)
    codes, weights = np.concatenate(codes), np.concatenate(weights)
    if codes.size == 0:
        return labels
    pairs, inv = np.unique(codes, return_inverse=True)
    mean = np.bincount(inv, weights=weights) / np.bincount(inv)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for code in pairs[mean < threshold]:
        ra, rb = root(int(code // n)), root(int(code % n))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])[labels]


def visible(instances: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop instances no pixel shows any more (painted over, lost in resizing) and renumber the
    rest 1..N: (labels, their classes with index 0 unused, the kept old ids)."""
    keep = np.bincount(instances.ravel(), minlength=len(owner)) > 0
    keep[0] = False
    ids = np.nonzero(keep)[0]
    return relabel(instances, keep), np.concatenate([[0], owner[ids]]).astype(int), ids


def cells_factor(card: dict, diameter: float | None) -> float:
    """Resize factor for an image whose red cells are ``diameter`` px: the trained red-cell
    diameter over it, or 1 when it is inside the trained range times the scale augmentation."""
    trained = float(card.get("cell_diameter") or 0)
    if not diameter or trained <= 0:
        return 1.0
    lo, hi = card.get("diameter_range") or [trained, trained]
    smin, smax = card.get("training", {}).get("scale_range", [1.0, 1.0])
    if lo * smin <= diameter <= hi * smax:
        return 1.0
    return float(np.clip(trained / diameter, MIN_FACTOR, MAX_FACTOR))


def segment_cells(image: np.ndarray, model="cells", cell_diameter: float | None = None, device: str = "cpu",
                  tile: int = 1024, overlap: int = 64) -> Segmentation:
    """Instances of every RBC, WBC and platelet in an (H, W, 3) uint8 photo.

    ``cell_diameter`` is the red-cell diameter in px. When None, a first pass at the scale of
    the training photos (the card's ``input_scale``) measures it, and a second pass runs at
    the trained red-cell size if the measurement is outside the trained range. ``classes``
    of the result holds 0 background, 1 rbc, 2 wbc, 3 platelet per pixel; each object's
    ``class_name``/``category`` is its category.
    """
    module, card = get_model(model, device)
    if card["architecture"]["name"].startswith("maskrcnn"):
        return _segment_detector(image, module, card, cell_diameter)
    import cv2

    from hemaseg.data.transforms import rescale

    norm = card.get("normalization", {})
    prange = percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0))
    trained = float(card.get("cell_diameter") or 40.0)

    def run(f: float) -> np.ndarray:  # probabilities at the model's scale (post-processing runs there too)
        return predict_probs(module, card, rescale(image, f), 1.0, tile, overlap, prange)

    if cell_diameter:
        factor = float(np.clip(trained / cell_diameter, MIN_FACTOR, MAX_FACTOR))
        probs = run(factor)
        small, owner, scores = cell_instances(probs, trained)
    else:
        factor = float(card.get("input_scale", 1.0))
        probs = run(factor)
        small, owner, scores = cell_instances(probs, trained)
        # The red cells found on this pass are measured (px at the model's scale).
        rbc = np.where(owner[small] == 1, small, 0)
        measured = measure_diameter(rbc, min_area=10) if rbc.any() else None
        if measured is not None:
            cell_diameter = measured / factor
            new = factor * cells_factor(card, measured)
            if abs(new - factor) > 1e-3:
                factor = new
                probs = run(factor)
                small, owner, scores = cell_instances(probs, trained)
    diameter = float(cell_diameter or trained / factor)
    h, w = image.shape[:2]
    instances = small if small.shape == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    if probs.shape[1:] != (h, w):
        probs = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])
    labels, owner, ids = visible(instances, owner)
    return _result(labels, owner, scores[ids - 1], probs, diameter, factor, card.get("box_scale"))


def _result(instances: np.ndarray, owner: np.ndarray, scores: np.ndarray, probs: np.ndarray | None,
            diameter: float, factor: float, box_scale: dict | None = None) -> Segmentation:
    """Segmentation with one record per instance (category, score, box, outline). Boxes are drawn
    as the model's training annotations drew them (``box_scale`` per category, from the card);
    the outline is the cell's own."""
    from hemaseg.train.cells import grow_box

    classes = owner[instances].astype(np.uint8)
    h, w = instances.shape
    objects = []
    for k, name in enumerate(CELL_CATEGORIES, 1):
        sel = np.where(owner[instances] == k, instances, 0)
        scale = (box_scale or {}).get(name, 1.0)
        for rec in instance_objects(sel, None, name):
            rec["score"] = round(float(scores[rec["id"] - 1]), 4)
            rec["category"] = name
            if scale != 1.0:
                b = rec["bounding_box"]
                grown = grow_box((b["x1"], b["y1"], b["x2"], b["y2"]), scale, w, h)
                rec["bounding_box"] = dict(zip(("x1", "y1", "x2", "y2"), (round(v) for v in grown)))
            objects.append(rec)
    objects.sort(key=lambda r: r["id"])
    return Segmentation(classes, instances, probs if probs is not None else np.zeros((0,) + instances.shape, np.float32),
                        diameter, factor, objects)


def _segment_detector(image: np.ndarray, module, card: dict, cell_diameter: float | None) -> Segmentation:
    """The Mask R-CNN backend: same scale logic (first pass at the training photos' scale, then
    the trained red-cell size), detections painted into an instance map at the input's size."""
    import cv2

    from hemaseg.data.transforms import rescale
    from hemaseg.train.maskrcnn import detect

    trained = float(card.get("cell_diameter") or 34.0)

    def run(f: float):
        inst, owner, scores = detect(module, rescale(image, f))
        if inst.shape != image.shape[:2]:
            inst = cv2.resize(inst.astype(np.float32), (image.shape[1], image.shape[0]),
                              interpolation=cv2.INTER_NEAREST).astype(np.int32)
        return inst, owner, scores

    if cell_diameter:
        factor = float(np.clip(trained / cell_diameter, MIN_FACTOR, MAX_FACTOR))
        inst, owner, scores = run(factor)
    else:
        factor = float(card.get("input_scale", 1.0))
        inst, owner, scores = run(factor)
        rbc = np.where(owner[inst] == 1, inst, 0)
        measured = measure_diameter(rbc, min_area=10) if rbc.any() else None
        if measured is not None:
            cell_diameter = measured
            new = factor * cells_factor(card, measured * factor)
            if abs(new - factor) > 1e-3:
                factor = new
                inst, owner, scores = run(factor)
    # Instances hidden by higher-scoring ones or lost in resizing are dropped and the rest renumbered.
    labels, owner, ids = visible(inst, owner)
    return _result(labels, owner, scores[ids - 1], None,
                   float(cell_diameter or trained / factor), factor, card.get("box_scale"))
