"""Every RBC, WBC and platelet of a smear photo as an instance: red-cell size check, tiled
prediction of class interiors + cell edges, a watershed per class."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from hemaseg.core.content import featureless
from hemaseg.core.labels import instance_objects, measure_diameter, relabel
from hemaseg.core.resize import clamp_factor, rescale, resize_probs
from hemaseg.core.result import Segmentation
from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.engine.predict import card_range, get_model, predict_probs, predict_scaled
from hemaseg.engine.task import params_from_card
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.tasks.cells.targets import CENTRE, EDGE

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: importing hemaseg does not import it.

# Typical diameter of each category relative to a red cell (BCCD boxes: WBC ~1.9, platelet ~0.4);
# sets the smallest object kept.
RELATIVE_SIZE = {"rbc": 1.0, "wbc": 1.6, "platelet": 0.35}
MIN_AREA_FRACTION = 0.15  # of the area of a typical object of its category
# red_cell_labels runs again at the red cells' measured size when it is off the trained one by more than this factor.
RED_CELL_TOLERANCE = 1.3


@dataclass
class CellsParams:
    """Post-processing of the ``cells`` task (a model card's ``"postprocess"`` overrides the defaults).

    Parameters
    ----------
    relative_size : typical diameter of each category relative to a red cell (default WBC 1.6, platelet
        0.35; BCCD's boxes, drawn loose, measure ~1.9 and ~0.4); sets the smallest object kept.
    min_area_fraction : smallest object kept, as a fraction of the area of a typical object of
        its category.
    fallback_diameter : px at the model's input, the trained red-cell diameter assumed when a
        card gives none (both backends).
    score_threshold : Mask R-CNN backend: lowest detection score kept.
    overlap : Mask R-CNN backend: a WBC detection lying more than this share on an already taken
        WBC is the same cell and dropped.
    rescale_tolerance : the photo is run again at the trained red-cell size when the red cells
        measured on the first pass differ from it by more than this factor (1.15: by more than
        15 %); 0 keeps the older rule (only outside the trained range times the scale
        augmentation). On TXL-PBC's in-source validation fields 1.15 raised mAP@0.5 on Raabin
        from 0.652 to 0.761 and on BCDD from 0.795 to 0.839 (runs/cells-txl).
    rescale_passes : passes at most when the red-cell size is estimated: each pass after the first runs
        at the size the one before measured, while that is off by more than ``rescale_tolerance``
        (1: the first pass alone, at the card's ``input_scale``; U-Net backend only). 4 (2 until stop 69: a pass at a scale
        far off measures red cells badly, so the second was run at a wrong size): on TXL-PBC's `val`
        fields rescaled 0.4x-2.5x mean mAP@0.5 0.754 -> 0.832 (3) -> 0.853 (4), BCDD at 0.4x 0.075 -> 0.632,
        Raabin at 2.5x 0.750 -> 0.913; at 1x within -0.001 (Raabin +0.020).
    frame_sliver : a cell touching the image's frame whose extent across it is under this share of
        its extent along it (a sliver of a cell the frame cuts) is dropped: neither a cell to count
        nor a platelet (a red cell's sliver is platelet-sized). TXL-PBC's annotators box cells the
        frame cuts, but almost never such slivers (3 of the 1,505 boxes at the frame of its `val`
        fields are thinner than 0.4). 0 keeps every sliver.
    frame_piece : a cell touching the frame whose area is under this share of a whole cell of its
        category (a disc of ``relative_size`` x the red-cell diameter) is dropped: too little of it
        shows to count it (:func:`cut_by_frame`). 0 keeps every piece.
    platelet_rescore : U-Net backend: a logistic model (``features``, ``mean``, ``scale``, ``coef``,
        ``intercept``; :data:`PLATELET_FEATURES`) that gives each platelet call its probability of
        being a platelet from its colour against the photo's red cells and background, its size,
        shape and the network's own output (:func:`platelet_features`), as a detector's second
        stage re-scores its boxes. The bundled card holds one fitted on TXL-PBC's ``train`` fields
        (``benchmarks/platelet_rescore.py``); None or ``{}`` keeps the network's score.
    split_area : U-Net backend: a red-cell object larger than this share of a red-cell disc (at
        the measured red-cell diameter) is split where it holds the centres of several cells
        (:func:`split_merged_red_cells`: overlapping red cells whose cores the network ran
        together, TXL-PBC's most common lost red-cell box); 0: never split. Chosen with
        ``split_spacing`` and ``split_depth`` on TXL-PBC's ``val`` fields (area 0.8-1.6, spacing
        0.15-0.45, depth 0.1-0.25; the mean over the four sources of the red-cell AP@0.5): 1.0 / 0.15
        / 0.1 raised it from 0.859 to 0.887, every source up (BCDD 0.766 -> 0.827), WBCs and
        platelets unchanged.
    split_spacing : two centres of one object are two cells when they lie at least this many
        red-cell diameters apart.
    split_depth : a centre lies at least this many red-cell diameters inside the object's outline.
    split_neck : two pieces of a split are one cell again when the distance to the outline at their
        saddle is at least this share of the smaller piece's deepest point (no neck between them: an
        oval or a flat ridge; :func:`join_shallow_parts`); 0 (the default) never joins. On TXL-PBC's
        ``val`` fields every neck tried lost red-cell AP (mean over sources 0.887 with none; 0.98:
        0.884, BCDD -0.011; 0.9: 0.866; 0.8: 0.859, no better than no split): the objects worth
        splitting there are red cells overlapping so much that their union has hardly any neck.
        A smear of elongated cells (elliptocytes) may want 0.9: ``--post split_neck=0.9``.
    split_min_piece : a piece under this share of a red-cell disc is not a cell: its centre is
        dropped and the object flooded again. 0.4 chosen on TXL-PBC's ``val`` fields among 0, 0.25,
        0.4, 0.5 (the largest with the mean red-cell AP within 0.005 of none: 0.886 against 0.887;
        0.5: 0.882, BCDD -0.029); a capsule two discs long comes out in 2 pieces (10 with 0).
    platelet_min_score : platelet calls whose score (re-scored when ``platelet_rescore`` is set)
        is under this are dropped; 0 keeps them all (the default: on TXL-PBC's ``val`` fields 0.3
        made platelet counts exact on more photos but cost platelet AP).
    wbc_min_score : U-Net backend: WBC calls whose score (the core's peak probability times the WBC
        share of the object's probability) is under this are dropped, not counted; 0 keeps them all.
        0.4 chosen by nested leave-one-source-out (stop 71): the four runs that each left one TXL-PBC
        source out, scored on every photo of it, at 0 / 0.3 / 0.4 / 0.5 / 0.6; the floor whose worst
        run makes the most photos' WBC count exact (0.95 at 0.4; 0.84 at 0.6, stop 52's choice on
        in-source validation, which emptied 10 BCDD photos of their WBC; 0.94 with none). Low-scoring
        WBC calls on a source the model never saw are mostly red cells and pieces of WBCs, but real
        WBCs of a pale lab score low too.
    grow_boxes : each found cell's box is drawn as the model's training annotations drew theirs (the card's
        ``box_scale``: BCCD boxes platelets ~1.57x their extent), so it compares with such boxes; False: the
        cell's own extent, for a lab whose boxes are drawn tight (a platelet box grown 1.57x never reaches
        IoU 0.5 with a tight one: a walkthrough's tight boxes scored platelet AP 0.007 against 0.768).

    Examples
    --------
    >>> CellsParams().relative_size["wbc"], CellsParams().fallback_diameter
    (1.6, 34.0)
    """

    relative_size: dict = field(default_factory=lambda: dict(RELATIVE_SIZE))
    min_area_fraction: float = MIN_AREA_FRACTION
    fallback_diameter: float = 34.0
    score_threshold: float = 0.3
    overlap: float = 0.5
    rescale_tolerance: float = 1.15
    rescale_passes: int = 4
    frame_sliver: float = 0.4
    frame_piece: float = 0.3
    platelet_rescore: dict | None = None
    platelet_min_score: float = 0.0
    wbc_min_score: float = 0.4
    split_area: float = 1.0
    split_spacing: float = 0.15
    split_depth: float = 0.1
    split_neck: float = 0.0
    split_min_piece: float = 0.4
    grow_boxes: bool = True

    # Each number's allowed range (inclusive; None: open), checked by ``--post`` and ``params=``.
    CHECKS: ClassVar[dict] = {"platelet_rescore": lambda v: check_rescore(v)}  # knobs checked beyond their type
    RANGES: ClassVar[dict] = {
        "min_area_fraction": (0.0, 4.0), "fallback_diameter": (2.0, 5000.0), "score_threshold": (0.0, 1.0),
        "overlap": (0.0, 1.0), "rescale_tolerance": (0.0, 10.0), "rescale_passes": (1, 6), "frame_sliver": (0.0, 1.0),
        "frame_piece": (0.0, 1.0), "platelet_min_score": (0.0, 1.0), "wbc_min_score": (0.0, 1.0),
        "split_area": (0.0, 100.0), "split_spacing": (0.0, 10.0), "split_depth": (0.0, 10.0),
        "split_neck": (0.0, 10.0), "split_min_piece": (0.0, 10.0), "relative_size": (0.01, 10.0)}


DEFAULTS = CellsParams()


def whole_areas(rbc_d: float, p: CellsParams = DEFAULTS) -> np.ndarray:
    """(1 + categories,) float: the area (px) of a whole cell of each category, a disc of its
    ``relative_size`` x ``rbc_d`` (index 0, background, is 0).

    >>> whole_areas(20.0).round(1).tolist()
    [0.0, 314.2, 804.2, 38.5]
    """
    return np.array([0.0] + [np.pi * (p.relative_size[c] * rbc_d / 2) ** 2 for c in CATEGORIES])


def cell_instances(probs: np.ndarray, rbc_d: float, p: CellsParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    from skimage.segmentation import watershed


    fg = probs[0] < 0.5
    centre = cv2.GaussianBlur(probs[CENTRE], (0, 0), 1.0)
    core = (centre > 0.5) & fg
    typical = p.min_area_fraction * whole_areas(rbc_d, p)
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
    labels = merge_unparted(labels, probs[EDGE], owner == CATEGORIES.index("wbc") + 1)
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


def cut_by_frame(instances: np.ndarray, owner: np.ndarray, diameter: float, p: CellsParams = DEFAULTS) -> np.ndarray:
    """(N + 1,) bool per label of ``instances`` (classes ``owner``, red cells of ``diameter`` px):
    True for a cell that touches the image's frame (within 1 px) and shows too little of itself to
    be counted: a sliver, whose extent across the frame is under ``p.frame_sliver`` of its extent
    along it, or a piece whose area is under ``p.frame_piece`` of a whole cell of its category
    (a disc of ``p.relative_size`` x ``diameter``). Index 0 is False.

    >>> lab = np.zeros((60, 80), np.int32); lab[10:40, 0:5] = 1; lab[0:6, 30:40] = 2; lab[20:40, 25:45] = 3
    >>> cut_by_frame(lab, np.array([0, 1, 1, 1]), 20.0, CellsParams(frame_piece=0.3)).tolist()  # sliver, piece, cell
    [False, True, True, False]
    """
    from scipy import ndimage as ndi

    n = int(instances.max()) + 1
    out = np.zeros(n, bool)
    if p.frame_sliver <= 0 and p.frame_piece <= 0:
        return out
    h, w = instances.shape
    whole = whole_areas(diameter, p)
    for k, sl in enumerate(ndi.find_objects(instances), 1):
        if sl is None:
            continue
        (y0, y1), (x0, x1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        across = []
        if x0 <= 1 or x1 >= w - 1:   # cut by a side: its width is the extent across the frame
            across.append((x1 - x0) / (y1 - y0))
        if y0 <= 1 or y1 >= h - 1:   # cut by the top or bottom: its height
            across.append((y1 - y0) / (x1 - x0))
        if not across:
            continue
        out[k] = min(across) < p.frame_sliver or np.count_nonzero(instances[sl] == k) < p.frame_piece * whole[owner[k]]
    return out


def drop_cut_by_frame(instances: np.ndarray, owner: np.ndarray, diameter: float, p: CellsParams = DEFAULTS) -> None:
    """Set to 0, in place, the cells of ``instances`` that :func:`cut_by_frame` marks (no copy of
    the label map: a bool index of it only when a cell goes)."""
    drop = cut_by_frame(instances, owner, diameter, p)
    if drop.any():
        instances[drop[instances]] = 0


def join_shallow_parts(dist: np.ndarray, peaks: np.ndarray, mask: np.ndarray, neck: float,
                       min_area: float) -> np.ndarray:
    """Watershed of one object (``mask``) over its ``dist`` (distance to the outline) from the
    maxima ``peaks`` ((K, 2) rows, cols; those outside ``mask`` or repeated are ignored), keeping
    only the maxima that are cells of their own. Each round floods the object from the maxima kept,
    then drops, if ``neck`` > 0, the lower maximum of the two touching pieces with the least neck
    between them when the distance at their saddle (the largest along their shared border) is at
    least ``neck`` x the smaller of their two peaks (an oval, a flat ridge, the meeting point of
    three discs); else every piece under ``min_area`` px (the largest piece stays when all are);
    else it stops. Returns (H, W) int32 pieces 1..K' (0 outside ``mask``).

    >>> yy, xx = np.mgrid[:30, :60]
    >>> oval = ((yy - 15) / 10) ** 2 + ((xx - 30) / 20) ** 2 < 1
    >>> d = cv2.distanceTransform(oval.astype(np.uint8), cv2.DIST_L2, 5)
    >>> [int(join_shallow_parts(d, np.array([[15, 25], [15, 35]]), oval, neck=n, min_area=0).max()) for n in (0, 0.8)]
    [2, 1]
    >>> pair = (np.hypot(yy - 15, xx - 19) < 12) | (np.hypot(yy - 15, xx - 41) < 12)   # two discs overlapping
    >>> d = cv2.distanceTransform(pair.astype(np.uint8), cv2.DIST_L2, 5)
    >>> int(join_shallow_parts(d, np.array([[15, 19], [15, 41]]), pair, 0.8, 0).max())
    2
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    peaks = np.asarray(peaks, np.intp).reshape(-1, 2)
    peaks = peaks[mask[peaks[:, 0], peaks[:, 1]]]
    peaks = peaks[np.sort(np.unique(peaks, axis=0, return_index=True)[1])]
    keep = np.arange(len(peaks))
    while True:
        markers = np.zeros(mask.shape, np.int32)
        markers[peaks[keep, 0], peaks[keep, 1]] = np.arange(1, len(keep) + 1)
        parts = watershed(-dist, markers, mask=mask)
        n = len(keep)
        if n < 2:
            return parts
        area = np.bincount(parts.ravel(), minlength=n + 1)
        if neck > 0:
            peak = np.asarray(ndi.maximum(dist, parts, np.arange(n + 1)))
            saddle = np.zeros((n + 1) * (n + 1))
            for a, b, va, vb in ((parts[:, :-1], parts[:, 1:], dist[:, :-1], dist[:, 1:]),
                                 (parts[:-1], parts[1:], dist[:-1], dist[1:])):
                sel = (a > 0) & (b > 0) & (a != b)
                lo, hi = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])
                np.maximum.at(saddle, lo.astype(np.intp) * (n + 1) + hi, np.minimum(va[sel], vb[sel]))
            pairs = np.flatnonzero(saddle)
            if pairs.size:
                lo, hi = np.divmod(pairs, n + 1)
                ratio = saddle[pairs] / np.maximum(1e-6, np.minimum(peak[lo], peak[hi]))
                w = int(np.argmax(ratio))
                if ratio[w] >= neck:
                    keep = np.delete(keep, (lo[w] if peak[lo[w]] <= peak[hi[w]] else hi[w]) - 1)
                    continue
        small = area[1:] < min_area
        if not small.any():
            return parts
        if small.all():
            small[int(np.argmax(area[1:]))] = False
        keep = keep[~small]


def split_merged_red_cells(instances: np.ndarray, owner: np.ndarray, scores: np.ndarray, diameter: float,
                           p: CellsParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray]:
    """Split, in place in ``instances``, each red-cell object larger than ``p.split_area`` x a disc of
    ``diameter`` px that holds two or more maxima of its distance to its outline, at least
    ``p.split_spacing`` x ``diameter`` apart and ``p.split_depth`` x ``diameter`` deep: a watershed
    of the distance from those maxima parts it, maxima with no neck between them or whose piece is
    under ``p.split_min_piece`` x a disc dropped (:func:`join_shallow_parts`); each piece keeps the
    object's score.
    Returns (owner, scores) extended by the new labels (N + 1 + new,) and (N + new,); when a split
    happens, labels of ``instances`` past ``owner`` first get class 0 and score 0 (``segment_cells``
    makes none); with nothing split the arrays come back as given.

    >>> lab = np.zeros((40, 70), np.int32); yy, xx = np.mgrid[:40, :70]
    >>> lab[(np.hypot(yy - 20, xx - 22) < 14) | (np.hypot(yy - 20, xx - 46) < 14)] = 1   # two discs run together
    >>> owner, scores = split_merged_red_cells(lab, np.array([0, 1]), np.array([0.9]), 28.0)
    >>> np.unique(lab).tolist(), owner.tolist(), scores.tolist(), [int(lab[20, 22]), int(lab[20, 46])]
    ([0, 1, 2], [0, 1, 1], [0.9, 0.9], [1, 2])
    """
    from scipy import ndimage as ndi

    if p.split_area <= 0 or not instances.any():
        return owner, scores
    from skimage.feature import peak_local_max

    rbc = CATEGORIES.index("rbc") + 1
    disc = np.pi * (diameter / 2) ** 2
    smallest, min_piece = p.split_area * disc, p.split_min_piece * disc
    spacing, depth = max(1, int(round(p.split_spacing * diameter))), p.split_depth * diameter
    new_owner, new_scores = [], []
    nxt = max(len(owner), int(instances.max()) + 1)
    if nxt > len(owner):                          # labels past ``owner`` (none from segment_cells): no class
        owner = np.concatenate([owner, np.zeros(nxt - len(owner), owner.dtype)])
        scores = np.concatenate([scores, np.zeros(nxt - 1 - len(scores), scores.dtype)])
    for k, sl in enumerate(ndi.find_objects(instances), 1):
        if sl is None or owner[k] != rbc:
            continue
        cell = instances[sl] == k
        if np.count_nonzero(cell) < smallest:
            continue
        dist = cv2.distanceTransform(np.pad(cell, 1).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
        peaks = peak_local_max(dist, min_distance=spacing, threshold_abs=depth, labels=cell.view(np.uint8),
                               exclude_border=False)
        if len(peaks) < 2:
            continue
        parts = join_shallow_parts(dist, peaks, cell, p.split_neck, min_piece)
        view = instances[sl]
        for i in range(2, int(parts.max()) + 1):
            view[parts == i] = nxt
            nxt += 1
            new_owner.append(rbc)
            new_scores.append(scores[k - 1])
    if not new_owner:
        return owner, scores
    return (np.concatenate([owner, np.array(new_owner, owner.dtype)]),
            np.concatenate([scores, np.array(new_scores, scores.dtype)]))


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


# What the platelet re-scorer reads of each platelet call (:func:`platelet_features`).
PLATELET_FEATURES = ("score", "larea", "dL", "da", "db", "bgL", "ringL", "touch", "fill", "aspect", "p0", "p3")
PLATELET = CATEGORIES.index("platelet") + 1
WBC = CATEGORIES.index("wbc") + 1


def platelet_features(image: np.ndarray, instances: np.ndarray, owner: np.ndarray, probs: np.ndarray,
                      scores: np.ndarray, rbc_d: float) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (n, 12) features) of every platelet call: ``instances`` (H, W) labels 1..N of the
    (H, W, 3) uint8 RGB ``image``, ``owner`` (N + 1,) their categories (index 0 unused), ``probs``
    the network's (6, H, W) probabilities, ``scores`` (N,) and the red-cell diameter ``rbc_d`` px.

    In order (:data:`PLATELET_FEATURES`): the network's score; log of the area over a red cell's
    disc; the call's mean CIELAB L*, a*, b* minus the median of the photo's red cells (of every
    cell's pixels when under 50 red-cell pixels); its L* minus the background's; the L* of a
    2-px ring around it minus the background's; the share of that ring on red cells; its area
    over its extent's; its extent's long side over its short side; its mean background and
    platelet probability. A platelet is bluer and darker than the red cells, small, compact and
    round; a pale disc, a red cell's rim or a camera's colour fringe is not.

    >>> img = np.full((40, 40, 3), 230, np.uint8); inst = np.zeros((40, 40), np.int32)
    >>> img[10:14, 10:14] = (120, 60, 160); inst[10:14, 10:14] = 1
    >>> ids, f = platelet_features(img, inst, np.array([0, 3]), np.zeros((6, 40, 40), np.float32), np.array([0.5]), 20.0)
    >>> ids.tolist(), f.shape, bool(f[0, 4] < 0)       # bluer (lower b*) than the rest
    ([1], (1, 12), True)
    """
    from scipy import ndimage

    ids = np.nonzero(owner == PLATELET)[0]
    ids = ids[ids > 0]
    feats = np.zeros((len(ids), len(PLATELET_FEATURES)), np.float32)
    if not len(ids):
        return ids, feats

    def to_lab(rgb: np.ndarray) -> np.ndarray:  # converted where read: a whole photo's float CIELAB is 12 bytes a pixel
        rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)

    cls = owner[instances]
    step = max(1, int(np.sqrt(cls.size / 2 ** 21)))  # medians on at most ~2 Mpx
    sub_lab, sub_cls = to_lab(image[::step, ::step]), cls[::step, ::step]

    def median(sel: np.ndarray) -> np.ndarray:
        return np.median(sub_lab[sel] if sel.sum() > 50 else sub_lab.reshape(-1, 3), axis=0)

    rbc = median(sub_cls == 1) if (sub_cls == 1).sum() > 50 else median(sub_cls > 0)
    bg = median(sub_cls == 0)
    disc = np.pi * (rbc_d / 2) ** 2
    slices = ndimage.find_objects(instances.astype(np.int32))
    h, w = instances.shape
    ring_kernel = np.ones((5, 5), np.uint8)
    for i, k in enumerate(ids):
        sl = slices[k - 1]
        y0, y1 = max(0, sl[0].start - 2), min(h, sl[0].stop + 2)
        x0, x1 = max(0, sl[1].start - 2), min(w, sl[1].stop + 2)
        m = instances[y0:y1, x0:x1] == k
        lab = to_lab(image[y0:y1, x0:x1])
        ring = cv2.dilate(m.astype(np.uint8), ring_kernel).astype(bool) & ~m
        area = int(m.sum())
        ys, xs = np.nonzero(m)
        hh, ww = int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1
        mean = lab[m].mean(0)
        p = probs[:, y0:y1, x0:x1][:, m].mean(1) if probs.size else np.zeros(6)
        ring_l, ring_rbc = ((lab[ring][:, 0].mean() - bg[0], (cls[y0:y1, x0:x1][ring] == 1).mean()) if ring.any()
                            else (0.0, 0.0))
        feats[i] = (scores[k - 1], np.log(area / disc + 1e-3), *(mean - rbc), mean[0] - bg[0], ring_l, ring_rbc,
                    area / (hh * ww), max(hh, ww) / min(hh, ww), p[0], p[PLATELET])
    return ids, feats


def check_rescore(model) -> None:
    """:class:`ValueError` unless ``model`` is None, ``{}`` or a platelet re-scorer :func:`rescore_platelets` can
    run: ``features`` naming :data:`PLATELET_FEATURES` in order, ``mean``, ``scale`` and ``coef`` one finite number
    each (``scale`` not 0), a finite ``intercept``.

    >>> check_rescore({"features": ["score"], "mean": [0], "scale": [1], "coef": [1], "intercept": 0})
    Traceback (most recent call last):
    ...
    ValueError: platelet_rescore takes a re-scorer of the features score, larea, dL, da, db, bgL, ringL, touch, fill, aspect, p0, p3 (its features, mean, scale, coef and intercept), or null
    """
    if model is None or model == {}:
        return
    n = len(PLATELET_FEATURES)
    try:
        ok = (isinstance(model, dict) and list(model["features"]) == list(PLATELET_FEATURES)
              and all(len(model[k]) == n and np.isfinite(np.asarray(model[k], np.float64)).all()
                      for k in ("mean", "scale", "coef"))
              and np.all(np.asarray(model["scale"], np.float64) != 0) and np.isfinite(float(model["intercept"])))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"platelet_rescore takes a re-scorer of the features {', '.join(PLATELET_FEATURES)} (its "
                         "features, mean, scale, coef and intercept), or null")


def rescore_platelets(features: np.ndarray, model: dict) -> np.ndarray:
    """Probability that each platelet call is a platelet, from its :func:`platelet_features` and
    a logistic ``model`` (``mean``, ``scale``, ``coef``, ``intercept``; ``features`` must name
    :data:`PLATELET_FEATURES` in order).

    >>> m = {"features": list(PLATELET_FEATURES), "mean": [0] * 12, "scale": [1] * 12,
    ...      "coef": [2] + [0] * 11, "intercept": -1.0}
    >>> rescore_platelets(np.array([[0.5] + [0] * 11, [2.0] + [0] * 11]), m).round(3).tolist()
    [0.5, 0.953]
    """
    if list(model["features"]) != list(PLATELET_FEATURES):
        raise ValueError(f"platelet_rescore reads {model['features']}; this version computes {list(PLATELET_FEATURES)}")
    z = (features - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"]) + float(model["intercept"]))))


def cells_factor(card: dict, diameter: float | None, tolerance: float = 0.0) -> float:
    """Resize factor for an image whose red cells are ``diameter`` px: the trained red-cell
    diameter over it, or 1 when it is within ``tolerance`` (a factor, e.g. 1.15) of the trained
    diameter; with ``tolerance`` 0, 1 when it is inside the trained range times the scale
    augmentation.

    >>> card = {"cell_diameter": 40.0, "diameter_range": [35, 45], "training": {"scale_range": [0.6, 1.6]}}
    >>> cells_factor(card, 60.0), cells_factor(card, 60.0, 1.15), cells_factor(card, 44.0, 1.15)
    (1.0, 0.6666666666666666, 1.0)
    """
    trained = float(card.get("cell_diameter") or 0)
    if not diameter or trained <= 0:
        return 1.0
    if tolerance > 0:
        return 1.0 if abs(np.log(diameter / trained)) <= np.log(tolerance) else clamp_factor(trained / diameter)
    lo, hi = card.get("diameter_range") or [trained, trained]
    smin, smax = card.get("training", {}).get("scale_range", [1.0, 1.0])
    if lo * smin <= diameter <= hi * smax:
        return 1.0
    return clamp_factor(trained / diameter)


def segment_cells(image: np.ndarray, model="cells", cell_diameter: float | None = None, device: str = "cpu",
                  tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, params: CellsParams | None = None
                  ) -> Segmentation:
    """Instances of every RBC, WBC and platelet in an (H, W, 3) uint8 photo.

    ``cell_diameter`` is the red-cell diameter in px. When None, a first pass at the scale of
    the training photos (the card's ``input_scale``) measures it, and another pass runs at
    the trained red-cell size for that measurement when it is off by more than ``rescale_tolerance``,
    measuring again, up to ``rescale_passes`` passes (the scale within :func:`clamp_factor`'s bounds). ``classes``
    of the result holds 0 background, 1 rbc, 2 wbc, 3 platelet per pixel; each object's
    ``class_name``/``category`` is its category. The Mask R-CNN backend reads the whole image
    at once: ``tile`` and ``overlap`` apply to the U-Net backend only (:func:`is_detector`).
    """
    module, card = get_model(model, device)
    p = params or params_from_card(CellsParams, card, "cells")
    if is_detector(card):
        return _segment_detector(image, module, card, cell_diameter, p)
    prange = card_range(card, image)
    trained = float(card.get("cell_diameter") or p.fallback_diameter)

    def run(f: float) -> np.ndarray:  # probabilities at the model's scale (post-processing runs there too)
        return predict_probs(module, card, rescale(image, f), 1.0, tile, overlap, prange)

    if cell_diameter:
        factor = clamp_factor(trained / cell_diameter)
        probs = run(factor)
        small, owner, scores = cell_instances(probs, trained, p)
    else:
        factor = float(card.get("input_scale", 1.0))
        probs = run(factor)
        small, owner, scores = cell_instances(probs, trained, p)
        tried = {round(factor, 3)}
        for _ in range(max(p.rescale_passes - 1, 1)):
            # The red cells found on this pass are measured (px at the model's scale); far from the trained
            # size, the pass is run again at the size they measured, and they are measured again there (a
            # pass at a scale far off measures them badly: red cells of 14 px there were read as clumps of 29)
            rbc = np.where(owner[small] == 1, small, 0)
            measured = measure_diameter(rbc, min_area=10) if rbc.any() else None
            if measured is None:
                break
            cell_diameter = measured / factor
            if p.rescale_passes <= 1:  # the first pass alone: its red cells still give the diameter
                break
            new = clamp_factor(factor * cells_factor(card, measured, p.rescale_tolerance))  # the whole, not each step
            if abs(new - factor) <= 1e-3 or round(new, 3) in tried:
                break
            factor = new
            tried.add(round(factor, 3))
            probs = run(factor)
            small, owner, scores = cell_instances(probs, trained, p)
    measured = bool(cell_diameter)  # (given ones are said so by Task.predict)
    diameter = float(cell_diameter or trained / factor)
    h, w = image.shape[:2]
    instances = small if small.shape == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    probs = resize_probs(probs, (h, w))
    owner, scores = split_merged_red_cells(instances, owner, scores, diameter, p)
    drop_cut_by_frame(instances, owner, diameter, p)
    labels, owner, ids = visible(instances, owner)
    scores = scores[ids - 1]
    if p.platelet_rescore:
        pids, feats = platelet_features(image, labels, owner, probs, scores, diameter)
        scores[pids - 1] = rescore_platelets(feats, p.platelet_rescore)
    floor = np.zeros(len(CATEGORIES) + 1)              # lowest score kept per class (red cells: all)
    floor[PLATELET], floor[WBC] = p.platelet_min_score, p.wbc_min_score
    low = np.zeros(len(owner), bool)
    low[1:] = scores < floor[owner[1:]]
    if low.any():
        labels, owner, ids = visible(np.where(low[labels], 0, labels).astype(np.int32), owner)
        scores = scores[ids - 1]
    return _result(labels, owner, scores, probs, diameter, factor, card.get("box_scale") if p.grow_boxes else None,
                   "measured" if measured else "model")


def red_cell_labels(image: np.ndarray, rbc_diameter: float, model="cells", device: str = "cpu",
                    exclude: np.ndarray | None = None, tolerance: float = RED_CELL_TOLERANCE) -> np.ndarray:
    """(H, W) int32 labels 1..N of the red cells in an (H, W, 3) uint8 image region whose red cells
    are thought to be about ``rbc_diameter`` px, WBCs and platelets left 0: what another task asks
    when it must know where red cells are (:func:`hemaseg.tasks.wbc.reject_found_red_cells`).

    A cells model runs at its trained red-cell size for that diameter; the red cells it finds
    outside ``exclude`` (e.g. the WBCs, which a pass at a wrong scale can take for red cells) are
    measured (those lying mostly in it are not); when they differ from the trained size by more
    than ``tolerance`` (a factor) it runs again at their size (three passes at most). With none
    to measure it tries red cells twice as large, then gives up: no red cell is returned when the
    scale cannot be checked (a crop filled by its WBC).

    >>> int(red_cell_labels(np.full((64, 64, 3), 230, np.uint8), rbc_diameter=40).max())  # nothing in it
    0
    """
    h, w = image.shape[:2]
    if featureless(image):
        return np.zeros((h, w), np.int32)
    module, card = get_model(model, device)
    p = params_from_card(CellsParams, card, "cells")
    rbc = CATEGORIES.index("rbc") + 1
    if is_detector(card):
        seg = _segment_detector(image, module, card, rbc_diameter, p)
        return np.where(seg.classes == rbc, seg.instances, 0).astype(np.int32)
    trained = float(card.get("cell_diameter") or p.fallback_diameter)
    prange = card_range(card, image)
    factor = clamp_factor(trained / rbc_diameter)
    for attempt in range(3):
        small, owner, _ = cell_instances(predict_scaled(module, card, image, factor, prange=prange), trained, p)
        red = np.where(owner[small] == rbc, small, 0).astype(np.int32)
        if attempt == 2 or tolerance <= 0:
            break
        free = red
        if exclude is not None:  # red cells lying mostly in ``exclude`` are not measured
            inside = cv2.resize(exclude.astype(np.uint8), red.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            area = np.bincount(red.ravel())
            free = np.where(2 * np.bincount(red[inside], minlength=len(area))[red] < area[red], red, 0)
        measured = measure_diameter(free, min_area=10) if free.any() else None
        if measured is None:
            if attempt == 0:  # none seen: the red cells may be larger than thought (a WBC's size overstated)
                factor = clamp_factor(2 * factor)
                continue
            return np.zeros((h, w), np.int32)  # nothing to check the scale on: nothing is vouched for
        if abs(np.log(measured / trained)) <= np.log(tolerance):
            break
        factor = clamp_factor(factor * trained / measured)
    return red if red.shape == (h, w) else cv2.resize(red, (w, h), interpolation=cv2.INTER_NEAREST)


def _result(instances: np.ndarray, owner: np.ndarray, scores: np.ndarray, probs: np.ndarray | None,
            diameter: float, factor: float, box_scale: dict | None = None, diameter_from: str = "") -> Segmentation:
    """Segmentation with one record per instance (category, score, box, outline). Boxes are drawn
    as the model's training annotations drew them (``box_scale`` per category, from the card);
    the outline is the cell's own."""
    classes = owner[instances].astype(np.uint8)
    h, w = instances.shape
    objects = []
    for k, name in enumerate(CATEGORIES, 1):
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
                        diameter, factor, objects, diameter_from)


# The knobs only the U-Net backend reads (the Mask R-CNN backend, _segment_detector, does not): given with a
# detector they change nothing, and are said so (a review, stop 71: --post wbc_min_score=0.7 was recorded as applied)
UNET_ONLY = ("relative_size", "min_area_fraction", "rescale_passes", "platelet_rescore", "platelet_min_score",
             "wbc_min_score", "split_area", "split_spacing", "split_depth", "split_neck", "split_min_piece")


def is_detector(card: dict) -> bool:
    """The model is the Mask R-CNN backend (which reads whole images: no tiling)."""
    return card["architecture"]["name"].startswith("maskrcnn")


def _segment_detector(image: np.ndarray, module, card: dict, cell_diameter: float | None,
                      p: CellsParams = DEFAULTS) -> Segmentation:
    """The Mask R-CNN backend: same scale logic (first pass at the training photos' scale, then
    the trained red-cell size), detections painted into an instance map at the input's size."""
    trained = float(card.get("cell_diameter") or p.fallback_diameter)

    def run(f: float):
        inst, owner, scores = detect(module, rescale(image, f), p.score_threshold, p.overlap)
        if inst.shape != image.shape[:2]:
            inst = cv2.resize(inst.astype(np.float32), (image.shape[1], image.shape[0]),
                              interpolation=cv2.INTER_NEAREST).astype(np.int32)
        return inst, owner, scores

    if cell_diameter:
        factor = clamp_factor(trained / cell_diameter)
        inst, owner, scores = run(factor)
    else:
        factor = float(card.get("input_scale", 1.0))
        inst, owner, scores = run(factor)
        rbc = np.where(owner[inst] == 1, inst, 0)
        measured = measure_diameter(rbc, min_area=10) if rbc.any() else None
        if measured is not None:
            cell_diameter = measured
            new = factor * cells_factor(card, measured * factor, p.rescale_tolerance)
            if abs(new - factor) > 1e-3:
                factor = new
                inst, owner, scores = run(factor)
    # Slivers the frame cuts go; instances hidden by higher-scoring ones or lost in resizing are
    # dropped and the rest renumbered.
    measured = bool(cell_diameter)  # (given ones are said so by Task.predict)
    diameter = float(cell_diameter or trained / factor)
    drop_cut_by_frame(inst, owner, diameter, p)
    labels, owner, ids = visible(inst, owner)
    return _result(labels, owner, scores[ids - 1], None, diameter, factor, card.get("box_scale") if p.grow_boxes else None,
                   "measured" if measured else "model")


def grow_box(box: tuple[float, float, float, float], scale: float, width: float, height: float
             ) -> tuple[float, float, float, float]:
    """``box`` (x1, y1, x2, y2) scaled by ``scale`` about its centre, clipped to the image.

    >>> grow_box((10, 10, 20, 30), 1.5, 100, 100)
    (7.5, 5.0, 22.5, 35.0)
    """
    x1, y1, x2, y2 = box
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
    return max(0.0, cx - hw), max(0.0, cy - hh), min(float(width), cx + hw), min(float(height), cy + hh)


def to_input(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1] (the detector normalises itself)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def detect(model, image: np.ndarray, score_threshold: float = 0.3, overlap: float = 0.5,
           single: tuple[str, ...] = ("wbc",)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instances (H, W) int32 1..N, class per instance (N + 1,) with 0 unused, scores (N,)) of one image.

    Detections are taken from the highest score down and each pixel goes to the first that
    claims it. Categories in ``single`` never lie on one another (a WBC inside a WBC is the
    same cell, e.g. the cell and its nucleus, which torchvision's box NMS both keeps): a
    detection whose mask lies more than ``overlap`` on an already taken cell of its category
    is dropped. Red cells and platelets do overlap in smears and are kept.
    """
    import torch

    with torch.inference_mode():
        model.eval()
        out = model([to_input(image)])[0]
        keep = out["scores"] >= score_threshold
        scores, labels, masks = out["scores"][keep].numpy(), out["labels"][keep].numpy(), out["masks"][keep, 0].numpy()
        inst = np.zeros(image.shape[:2], np.int32)
        taken = {int(c): np.zeros(image.shape[:2], bool) for c in np.unique(labels)}
        for j in np.argsort(-scores, kind="stable"):
            m = masks[j] > 0.5
            area = int(m.sum())
            exclusive = CATEGORIES[int(labels[j]) - 1] in single
            if area == 0 or (exclusive and taken[int(labels[j])][m].sum() > overlap * area):
                continue
            inst[m & (inst == 0)] = j + 1
            taken[int(labels[j])] |= m

        out, owner, ids = visible(inst, np.concatenate([[0], labels]).astype(int))
        return out, owner, scores[ids - 1]
