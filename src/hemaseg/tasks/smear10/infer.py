"""The 10-class smear map (seed 002) on whole images: red-cell size check, tiled prediction,
one type per white cell and per platelet object."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from hemaseg.classical import grey_photo
from hemaseg.core.labels import instance_objects, measure_diameter, split_instances
from hemaseg.core.options import NO_MODEL
from hemaseg.core.resize import clamp_factor
from hemaseg.core.result import Segmentation
from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.data.transforms import percentile_range
from hemaseg.engine.predict import get_model, predict_probs
from hemaseg.engine.task import params_from_card
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.tasks.cells.infer import segment_cells
from hemaseg.tasks.smear10.classes import CLASSES, GROUP_OF, GROUPS
from hemaseg.tasks.wbc_type.crops import type_wbcs

log = logging.getLogger(__name__)


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """``mask`` with its enclosed holes of at most ``max_area`` px filled (a red cell's pale
    centre, which a model may call background, so that a large cell reads as a ring).

    >>> ring = np.zeros((9, 9), bool); ring[2:7, 2:7] = True; ring[4, 4] = False
    >>> bool(fill_small_holes(ring, 1)[4, 4]), bool(fill_small_holes(ring, 0)[4, 4])
    (True, False)
    """
    from scipy import ndimage as ndi

    holes = ndi.binary_fill_holes(mask) & ~mask
    lab, n = ndi.label(holes)
    if n == 0:
        return mask
    small = np.bincount(lab.ravel(), minlength=n + 1) <= max_area
    small[0] = False
    return mask | small[lab]


MAX_PALLOR_AREA = np.pi * (0.3 * 64) ** 2  # pale centre of a 64 px red cell (radius 0.3 d)
RBC_QUANTILE = 70.0  # percentile of the distance maxima read as a red cell's radius (SmearParams.rbc_quantile)


def rbc_diameter(classes: np.ndarray, min_diameter: float = 4.0, rbc_classes: tuple[int, ...] = GROUPS["rbc"],
                 quantile: float = RBC_QUANTILE) -> float | None:
    """Typical red-cell diameter (px) in a class map (red cells = ``rbc_classes``; smear10's by default):
    twice the ``quantile`` (percent) of the distance transform's local maxima over the red-cell
    pixels, which holds for touching cells too. Pale centres called background are filled first
    (:func:`fill_small_holes`): read as rings, big cells measured half their size. Besides one
    maximum per cell, the transform has lower ones on the ridges between touching or overlapping
    cells, which pull the median down: a higher ``quantile`` reads the cells' own centres.

    >>> yy, xx = np.mgrid[:80, :80]
    >>> c = np.zeros((80, 80), np.uint8); c[(yy - 40) ** 2 + (xx - 30) ** 2 < 100] = 9
    >>> c[(yy - 40) ** 2 + (xx - 49) ** 2 < 100] = 9              # two touching cells, 20 px across
    >>> 17 <= rbc_diameter(c) <= 21
    True
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    rbc = fill_small_holes(np.isin(classes, rbc_classes), MAX_PALLOR_AREA)
    if rbc.sum() < 20:
        return None
    dist = ndi.distance_transform_edt(rbc)
    peaks = peak_local_max(dist, min_distance=max(2, int(min_diameter / 2)), threshold_abs=min_diameter / 2,
                           exclude_border=False)
    if len(peaks) == 0:
        return None
    return float(2 * np.percentile(dist[tuple(peaks.T)], quantile) + 1)


def smear_factor(card: dict, diameter: float | None) -> float:
    """1 when red cells of ``diameter`` px are inside the trained range, else the factor that
    brings them to the trained middle."""
    lo, hi = card.get("diameter_range") or [0, 0]
    trained = float(card.get("cell_diameter") or 0)
    if not diameter or trained <= 0 or lo <= diameter <= hi:
        return 1.0
    return clamp_factor(trained / diameter)


def vote_per_object(classes: np.ndarray, probs: np.ndarray, members: tuple[int, ...],
                    labels: np.ndarray | None = None, weights: tuple[float, ...] | None = None) -> np.ndarray:
    """Give every object of the classes in ``members`` the single class whose summed probability
    over the object is highest (a white cell is one type, not a patchwork). Objects are the
    connected components, or the given ``labels`` (e.g. touching red cells split apart).
    ``weights`` (one per member) scale the sums before they are compared.

    >>> cls = np.array([[8, 9, 9, 9]], np.uint8); p = np.zeros((10, 1, 4), np.float32)
    >>> p[8] = [[1, 0.3, 0.3, 0.2]]; p[9] = 1 - p[8]
    >>> vote_per_object(cls, p, (8, 9)).tolist(), vote_per_object(cls, p, (8, 9), weights=(0.6, 0.4)).tolist()
    ([[9, 9, 9, 9]], [[8, 8, 8, 8]])
    """
    from scipy import ndimage as ndi

    out = classes.copy()
    if labels is None:
        lab, n = ndi.label(np.isin(classes, members))
    else:
        lab, n = np.where(np.isin(classes, members), labels, 0), int(labels.max())
    if n == 0:
        return out
    idx = np.arange(1, n + 1)
    sums = np.stack([ndi.sum(probs[k], lab, idx) for k in members], 1)
    if weights is not None:
        sums = sums * np.asarray(weights, np.float64)
    best = np.asarray(members, np.uint8)[sums.argmax(1)]
    sel = lab > 0
    out[sel] = best[lab[sel] - 1]
    return out


PLASMA = (235, 222, 225)  # RGB of the light plasma most typing crops were cut from
DARK_BACKGROUND = 110  # mean RGB below which a background counts as dark (cells pasted on grey/black)


def light_background(image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``image`` with its background (class 0) painted :data:`PLASMA` when that background is
    dark; unchanged otherwise. WBCs on black are typed as if on a slide's light plasma.

    >>> img = np.zeros((4, 4, 3), np.uint8); cls = np.zeros((4, 4), np.uint8); cls[1:3, 1:3] = 3
    >>> out = light_background(img, cls)
    >>> out[0, 0].tolist(), out[1, 1].tolist()
    ([235, 222, 225], [0, 0, 0])
    """
    bg = classes == 0
    if not bg.any() or image[bg].mean() >= DARK_BACKGROUND:
        return image
    out = image.copy()
    out[bg] = PLASMA
    return out


def type_wbc_objects(image: np.ndarray, classes: np.ndarray, type_model="wbc-type", device: str = "cpu") -> np.ndarray:
    """Name every connected WBC object of a smear10 class map with the WBC-type classifier
    (the segmentation model then only has to find WBCs). A dark background is first painted
    light (:func:`light_background`): typing 32 % -> 55 % right on dark composites."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(np.isin(classes, GROUPS["wbc"]))
    if n == 0:
        return classes
    image = light_background(image, classes)
    records = []
    for sl in ndi.find_objects(lab):
        records.append({"bounding_box": {"x1": sl[1].start, "x2": sl[1].stop, "y1": sl[0].start, "y2": sl[0].stop}})
    probs, _, names = type_wbcs(image, records, type_model, device)
    # A typer that knows more than the map's five types (PBC's ig, erythroblast, platelet) names
    # each object by the most probable of the five.
    five = [i for i, name in enumerate(names) if name in CLASSES and CLASSES.index(name) in GROUPS["wbc"]]
    index = np.array([0] + [CLASSES.index(names[five[int(p[five].argmax())]]) for p in probs], np.uint8)
    out = classes.copy()
    sel = lab > 0
    out[sel] = index[lab[sel]]
    return out


def carry_labels(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``labels`` kept on ``mask`` only, a ``mask`` pixel without a label given the label that reaches it
    first through ``mask`` (a sliver re-classed after the split joins the cell around it); a piece of
    ``mask`` that no label touches stays 0 (its own object for :func:`smear_objects`).

    >>> lab = np.array([[1, 1, 0, 0, 2, 0, 0, 0, 0]])
    >>> carry_labels(lab, np.array([[1, 1, 1, 0, 1, 1, 0, 1, 0]], bool)).tolist()
    [[1, 1, 1, 0, 2, 2, 0, 0, 0]]
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    out = np.where(mask, labels, 0)
    missing = mask & (out == 0)
    if not missing.any() or not out.any():
        return out
    pieces, _ = ndi.label(mask, np.ones((3, 3)))
    boxes = ndi.find_objects(pieces)
    for k in np.unique(pieces[missing]):  # only the pieces holding an unlabelled pixel
        sl = boxes[k - 1]
        inside = pieces[sl] == k
        grown = watershed(np.zeros(inside.shape, np.float32), out[sl] * inside, mask=inside)
        out[sl] = np.where(inside & (out[sl] == 0), grown, out[sl])
    return out


def smear_objects(classes: np.ndarray, probs: np.ndarray, typed_wbcs: bool = False,
                  rbc_cells: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """(H, W) int32 instances (connected objects of one class) and one record per object with
    ``class_name``, ``category`` (rbc / wbc / platelet) and ``score``, the map's mean probability of the
    object's class over its pixels; with ``typed_wbcs`` (the WBCs' types given by the typer, not the
    map) a WBC's score is the map's probability of any WBC type (a monocyte the map had called a
    lymphocyte scored 0.0). ``rbc_cells`` ((H, W) labels of the red-cell pixels split into round cells,
    :func:`~hemaseg.core.labels.split_instances`) makes each red cell one object, so touching red cells
    are counted one by one; without it they are one connected object.

    >>> from hemaseg.core.labels import split_instances
    >>> yy, xx = np.mgrid[:60, :100]
    >>> two = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 66) ** 2 < 400)
    >>> classes = np.where(two, GROUPS["rbc"][0], 0).astype(np.uint8)
    >>> probs = np.eye(len(CLASSES), dtype=np.float32)[classes].transpose(2, 0, 1)
    >>> len(smear_objects(classes, probs)[1]), len(smear_objects(classes, probs, rbc_cells=split_instances(two, 40))[1])
    (1, 2)
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    instances = np.zeros(classes.shape, np.int32)
    objects: list[dict] = []
    for k in range(1, len(CLASSES)):
        if rbc_cells is not None and k in GROUPS["rbc"]:
            # each split cell's pixels of this class, a piece the split left without a cell label its own object
            lab = np.where(classes == k, rbc_cells, 0).astype(np.int64)
            loose, _ = ndi.label((classes == k) & (lab == 0))
            lab[loose > 0] = loose[loose > 0] + int(lab.max())
            lab, _, _ = relabel_sequential(lab)
            n = int(lab.max())
        else:
            lab, n = ndi.label(classes == k)
        if n == 0:
            continue
        offset = int(instances.max())
        instances[lab > 0] = lab[lab > 0] + offset
        recs = instance_objects(np.where(lab > 0, lab + offset, 0).astype(np.int32), None, CLASSES[k])
        for r in recs:
            y1, y2, x1, x2 = (r["bounding_box"][c] for c in ("y1", "y2", "x1", "x2"))
            sel = instances[y1:y2, x1:x2] == r["id"]
            p = probs[list(GROUPS["wbc"]), y1:y2, x1:x2].sum(0) if typed_wbcs and k in GROUPS["wbc"] \
                else probs[k, y1:y2, x1:x2]
            r["score"] = round(float(p[sel].mean()), 4)
            r["category"] = GROUP_OF[k]
        objects += recs
    return instances, objects


DOWNSCALES = (0.71, 0.5, 0.35, 0.25)  # factors also tried when no size is given (cells larger than trained)
MIN_SIDE = 64  # px: a factor is not tried when it would make the image smaller than this


@dataclass
class SmearParams:
    """Post-processing of the ``smear10`` task (a model card's ``"postprocess"`` overrides the defaults).

    Parameters
    ----------
    downscales : factors also tried when no red-cell size is given (cells larger than trained).
    min_side : px; a factor is not tried when it would make the image smaller than this.
    fallback_diameter : px, the trained red-cell diameter assumed when a card gives none.
    agreement : two readings agree on the red-cell size when their estimates differ by less than
        this factor (:func:`consensus_diameter`).
    in_range : a reading's red cells count as seen at a size the model knows when they measure
        within the card's ``diameter_range`` widened by this factor on both sides.
    clump_ratio : a platelet object (thrombocyte or clump) wider than this many red-cell diameters
        is a clump, a narrower one a single thrombocyte (:func:`platelets_by_size`, e.g. 0.55);
        None (the default: on the validation composites 0.55 changed mean IoU by -0.0003): the
        network's vote decides.
    rbc_vote : each red cell (the red-cell pixels split into round cells by a distance-transform
        watershed at the red-cell diameter) is one class, healthy or infected, by its summed
        probability: a dark spot or a refractile artefact on a red cell does not make part of it
        "infected". On by default since stop 40: with the red-cell size read right
        (``rbc_quantile``) the map calls a dark spot in one of the bundled sample's red cells
        infected, and the vote clears it; on 30 validation composites of each of six looks it moved
        mean IoU by -0.005 to +0.002 (earlier maps: -0.01 to -0.02 infected IoU; on parasite-free
        real photos it removed a third to a half of the false calls, BCCD val 156 -> 95 with
        ``infected_share`` 0.4; docs/results.md).
    infected_share : with ``rbc_vote``, a red cell is infected when its summed infected
        probability is at least this share of its red-cell probability (0.5: the larger sum wins;
        lower keeps cells the network paints only partly infected).
    min_cell_fraction : a red- or white-cell object smaller than this share of a red cell's disc
        (at the red-cell diameter) is a sliver of a cell's outline, not a cell: it takes the class
        around it (:func:`absorb_fragments`). Platelets are small and are left alone.
    wbc_min_rbc : a white-cell object the frame does not cut, smaller than this share of a red cell's disc,
        is no white cell: it takes its most probable other class (:func:`small_wbcs_recast`). 0: off (until
        stop 69, when a walkthrough found red-cell slivers and platelets of a Raabin field called WBCs). 0.5
        (0.3 and 0.5 tried; chosen on TXL-PBC's `val` fields and 100 validation composites): WBC objects as many
        as WBC boxes on 0.951 -> 0.963 of the fields (Raabin 0.908 -> 0.939), boxes in the right group and
        infected calls unchanged, composites' mean IoU 0.6509 either way (0.3: no field changed).
    platelet_min_rbc : a platelet object smaller than this share of a red cell's disc takes the class around it
        (:func:`absorb_fragments`: background, or the red cell it lies on). 0: off (until stop 69, when a
        walkthrough found 8-px specks called thrombocytes). 0.02 (0.14 of a red cell's diameter; a platelet is
        0.25-0.4; 0.01 and 0.02 tried, chosen on TXL-PBC's `val` fields and 100 validation composites): fields
        whose platelet objects match their platelet boxes 0.496 -> 0.602 (objects 318 -> 250 for 107 boxes),
        boxed platelets in the right group 1.000 either way, composites' thrombocyte IoU 0.491 -> 0.498.

    size_model : a cells model (bundled name or path, e.g. ``"cells"``) whose red cells give the
        red-cell diameter when none is given; ``""`` or ``"none"`` (the default): the map's own
        reading at several scales. For photos: the bundled ``cells`` model, trained on the boxed
        red cells of four labs, measures them at 0.85-1.06x of their box side on 90 % of BCCD's
        validation photos, where the map's own reading was 0.75x in the median and 0.4x on some,
        calling platelets red cells there (platelets in the right group 0.904 -> 0.988). Not the
        default: on composites, which that model never saw, it cost 0.02-0.23 mean IoU
        (docs/results.md). The map's own reading decides when that model finds fewer than
        ``size_min_cells`` red cells or its size fails ``size_check``.
    size_min_cells : red cells the ``size_model`` must find for its size to be used.
    size_check : the ``size_model``'s size is used only when the red cells it finds in the image
        enlarged 1.5x measure at least this share of it (:func:`found_rbc_diameter`): clumps of
        small cells taken for red cells at the first pass measure about half there.
    rbc_quantile : percentile of the red cells' distance-transform maxima read as their radius
        (:func:`rbc_diameter`). The median (50, before stop 40) is pulled down by the lower maxima on
        the ridges between touching cells: BCCD's validation photos were read at 0.77x of their
        red-cell box side (19 of 38 off by more than 1.3x), and platelets, seen too big, were called
        red cells (0.904 in the right group). 70 (50, 65, 70, 75, 80 tried; chosen on BCCD's
        validation photos and 100 validation composites of each of six looks): BCCD 0.88x (4 of 38
        off), platelets 0.976 (75: 0.988); composites' mean IoU 0.6973 -> 0.6975 with ``rbc_vote``
        (75: 0.6935; crowded 0.685 -> 0.665, red cells 50-64 px 0.691 -> 0.724).

    Examples
    --------
    >>> SmearParams().downscales
    (0.71, 0.5, 0.35, 0.25)
    """

    downscales: tuple[float, ...] = DOWNSCALES
    min_side: int = MIN_SIDE
    fallback_diameter: float = 32.0
    agreement: float = 1.25
    in_range: float = 1.1
    clump_ratio: float | None = None
    rbc_vote: bool = True
    infected_share: float = 0.5
    min_cell_fraction: float = 0.05
    wbc_min_rbc: float = 0.5
    platelet_min_rbc: float = 0.02
    size_model: str = field(default="none", metadata={"model": "cells"})  # a cells model: checked by the CLI
    size_min_cells: int = 5
    size_check: float = 0.7
    rbc_quantile: float = RBC_QUANTILE

    # Each number's allowed range (inclusive; None: open), checked by ``--post`` and ``params=``: agreement
    # 1 or under and in_range 0 divided by zero, an rbc_quantile of 500 failed on every image.
    RANGES: ClassVar[dict] = {
        "downscales": (0.05, 1.0), "min_side": (16, None), "fallback_diameter": (2.0, 5000.0),
        "agreement": (1.01, 10.0), "in_range": (1.0, 10.0), "clump_ratio": (0.0, 100.0),
        "infected_share": (0.0, 1.0), "min_cell_fraction": (0.0, 4.0), "wbc_min_rbc": (0.0, 4.0),
        "platelet_min_rbc": (0.0, 1.0), "size_min_cells": (1, None),
        "size_check": (0.0, 1.0), "rbc_quantile": (0.0, 100.0)}


THROMBOCYTE, CLUMP = CLASSES.index("thrombocyte"), CLASSES.index("platelet clump")


def platelets_by_size(classes: np.ndarray, rbc_diameter: float, clump_ratio: float = 0.55) -> np.ndarray:
    """Name each platelet object by its size: a clump is several platelets stuck together, so
    an object whose equivalent diameter exceeds ``clump_ratio`` x ``rbc_diameter`` is a clump;
    a smaller one is a single thrombocyte (2-3 µm against a red cell's 7.5 µm: 0.25-0.4).
    Decided on the full-resolution map, where the network's half-resolution output may split
    a clump into thrombocytes or call a lone platelet a clump.

    >>> c = np.zeros((40, 40), np.uint8); c[2:6, 2:6] = 7; c[10:30, 10:30] = 6
    >>> out = platelets_by_size(c, 30.0)
    >>> int(out[3, 3]), int(out[20, 20])
    (6, 7)
    """
    from scipy import ndimage as ndi

    lab, n = ndi.label(np.isin(classes, GROUPS["platelet"]))
    if n == 0 or not rbc_diameter:
        return classes
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    kind = np.where(2 * np.sqrt(area / np.pi) > clump_ratio * rbc_diameter, CLUMP, THROMBOCYTE).astype(np.uint8)
    out = classes.copy()
    sel = lab > 0
    out[sel] = kind[lab[sel]]
    return out


def small_wbcs_recast(classes: np.ndarray, probs: np.ndarray, min_area: float) -> np.ndarray:
    """White-cell objects (connected pieces of the WBC group) smaller than ``min_area`` px that the frame does not
    cut take the class other than a white cell's with the highest summed probability over them (background, a
    platelet, a red cell): a white cell is at least about a red cell's size, and a frame-cut one may be any size.

    >>> c = np.zeros((12, 12), np.uint8); c[4:6, 4:6] = 1; c[0:2, 0:2] = 2
    >>> p = np.zeros((10, 12, 12), np.float32); p[6] = 0.4; p[1] = 0.6
    >>> out = small_wbcs_recast(c, p, 9)
    >>> int(out[4, 4]), int(out[0, 0])   # the inner speck is a thrombocyte; the frame-cut piece stays
    (6, 2)
    """
    from scipy import ndimage as ndi

    wbc = np.isin(classes, GROUPS["wbc"])
    lab, n = ndi.label(wbc)
    if n == 0:
        return classes
    area = np.bincount(lab.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    small = np.zeros(n + 1, bool)
    small[1:] = area[1:] < min_area
    small[edge] = False
    if not small[1:].any():
        return classes
    others = [k for k in range(probs.shape[0]) if k not in GROUPS["wbc"]]
    idx = np.flatnonzero(small)
    sums = np.stack([ndi.sum(probs[k], lab, idx) for k in others], 1)
    new = np.zeros(n + 1, np.uint8)
    new[idx] = np.asarray(others, np.uint8)[sums.argmax(1)]
    out = classes.copy()
    sel = small[lab]
    out[sel] = new[lab[sel]]
    return out


def absorb_fragments(classes: np.ndarray, min_area: float, members: tuple[int, ...]) -> np.ndarray:
    """Objects (4-connected pieces of one class) of the classes in ``members`` smaller than
    ``min_area`` px take the most common class on the ring of pixels around them (background when
    alone): slivers a class map leaves along a cell's outline are not cells.

    >>> c = np.zeros((9, 9), np.uint8); c[1:8, 1:8] = 9; c[4, 4] = 3; c[0, 8] = 8
    >>> out = absorb_fragments(c, 4, (3, 8, 9))
    >>> int(out[4, 4]), int(out[0, 8]), int(out[2, 2])
    (9, 0, 9)
    """
    import cv2
    from scipy import ndimage as ndi

    out = classes.copy()
    kernel = np.ones((3, 3), np.uint8)
    for k in members:
        lab, n = ndi.label(classes == k)
        if n == 0:
            continue
        area = np.bincount(lab.ravel(), minlength=n + 1)
        small = np.flatnonzero(area[1:] < min_area) + 1
        if not len(small):
            continue
        boxes = ndi.find_objects(lab)
        for i in small:
            sl = boxes[i - 1]
            y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
            y1, x1 = min(sl[0].stop + 1, lab.shape[0]), min(sl[1].stop + 1, lab.shape[1])
            piece = lab[y0:y1, x0:x1] == i
            ring = cv2.dilate(piece.view(np.uint8), kernel).astype(bool) & ~piece
            around = out[y0:y1, x0:x1][ring]
            out[y0:y1, x0:x1][piece] = np.bincount(around).argmax() if around.size else 0
    return out


def cell_confidence(probs: np.ndarray) -> float:
    """Mean top-class probability over the pixels a (K, H, W) smear10 prediction calls a cell:
    highest where the cells are at a size the model knows (used to pick the scale of big cells,
    which a model trained at 20-44 px reads as fragments and measures far too small)."""
    fg = probs[0] < 0.5
    return float(probs.max(0)[fg].mean()) if fg.any() else 0.0


def consensus_diameter(readings: list[tuple[float, float | None, float]], trained_range: tuple[float, float],
                       agreement: float = 1.25, in_range: float = 1.1) -> float | None:
    """The red-cell diameter (px in the image) most readings agree on.

    ``readings`` holds one ``(factor, measured, confidence)`` per scale the image was read at:
    the red cells measured in the map of the image resized by ``factor`` (px of the image, None
    if no red cell was seen) and :func:`cell_confidence`. A reading votes, with its confidence,
    for ``measured`` only when the cells were seen at a size the model was trained on
    (``measured * factor`` in ``trained_range``, widened by ``in_range``): there they are
    measured right; far outside it they come out as fragments that measure small, but at one or
    two scales, each a different size. The estimate with the most support from estimates within
    ``agreement`` of it wins (their confidence-weighted geometric mean); None when no reading votes.

    >>> r = [(1.0, 25.0, .8), (0.71, 42.0, .7), (0.5, 88.0, .8), (0.35, 90.0, .9), (0.25, 92.0, .85)]
    >>> round(consensus_diameter(r, (20, 44)))    # 90 px cells: read right at 0.5, 0.35 and 0.25
    90
    >>> round(consensus_diameter([(1.0, 32.0, .9), (0.71, 33.0, .8), (0.5, 20.0, .6)], (20, 44)))
    32
    """
    lo, hi = trained_range[0] / in_range, trained_range[1] * in_range
    votes = [(m, c) for f, m, c in readings if m and lo <= m * f <= hi]
    if not votes:
        return None
    tol = np.log(agreement)
    support = [sum(c2 for d2, c2 in votes if abs(np.log(d2 / d)) < tol) for d, _ in votes]
    best = int(np.argmax(support))
    agreeing = [(d2, c2) for d2, c2 in votes if abs(np.log(d2 / votes[best][0])) < tol]
    return float(np.exp(sum(np.log(d2) * c2 for d2, c2 in agreeing) / sum(c2 for _, c2 in agreeing)))


SIZE_CHECK_ZOOM = 1.5  # the cells model's red-cell size is checked on the image enlarged this much


def found_rbc_diameter(image: np.ndarray, model="cells", device: str = "cpu", min_cells: int = 5,
                       check: float = 0.7) -> float | None:
    """The red-cell diameter (px) a cells model measures in ``image``, or None when it finds fewer
    than ``min_cells`` red cells or its measurement does not hold when the image is enlarged.

    The model's own scale search (:func:`hemaseg.tasks.cells.infer.segment_cells`) gives a size;
    the image is then run again at :data:`SIZE_CHECK_ZOOM` times the scale that size implies, and the
    red cells found there are measured. A real size measures the same (BCCD's validation photos:
    0.79-1.00 of it); a first pass that took clumps of small cells for red cells (224-px composites at
    40x, red cells of 21-31 px measured as 62-97) sees them resolved and measures about half
    (0.44-0.54). The size is kept when the second measurement is at least ``check`` times the first.

    >>> found_rbc_diameter(np.full((96, 96, 3), 235, np.uint8)) is None   # an empty field
    True
    """
    seg = segment_cells(image, model, device=device)
    if sum(o.get("category") == "rbc" for o in seg.objects) < max(1, min_cells):
        return None
    first = float(seg.cell_diameter)
    again = segment_cells(image, model, cell_diameter=first / SIZE_CHECK_ZOOM, device=device)
    rbc = np.where(again.classes == CATEGORIES.index("rbc") + 1, again.instances, 0)
    second = measure_diameter(rbc, min_area=10) if rbc.any() else None
    return first if second is not None and second >= check * first else None


def segment_smear(image: np.ndarray, model="smear10", cell_diameter: float | None = None, device: str = "cpu",
                  tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, tta: bool | None = None,
                  params: SmearParams | None = None) -> Segmentation:
    """The 10-class map of an (H, W, 3) uint8 smear image (classes in :data:`~hemaseg.tasks.smear10.classes.CLASSES` order).

    ``cell_diameter`` is the red-cell diameter in px. When None, the image is read at 1x and at
    the smaller :data:`DOWNSCALES`, the red cells of each reading are measured and the size most
    readings agree on wins (:func:`consensus_diameter`); the image is then rescaled if that size
    is outside the sizes the model was trained on.
    ``tta`` averages the final pass over the image and its three flips (4x its time); None: as the
    model card's ``tta`` says (the bundled model: on, as nnU-Net's test-time mirroring).
    """
    module, card = get_model(model, device)
    sp = params or params_from_card(SmearParams, card, "smear10")
    if image.ndim == 3 and grey_photo(image):
        # a grey sample: a neutrophil at 0.94 and an infected red cell, unsaid (a walkthrough, stop 69)
        log.warning("a grey image: the map's WBC types and its infected red cells rest on the stain's colours, "
                    "which it lacks; read them as unsure (analyze lists such WBCs unsure)")
    if tta is None:
        tta = bool(card.get("tta", False))
    norm = card.get("normalization", {})
    prange = percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0))
    if cell_diameter is None and sp.size_model not in NO_MODEL:
        cell_diameter = found_rbc_diameter(image, sp.size_model, device, sp.size_min_cells, sp.size_check)
    factor = smear_factor(card, cell_diameter) if cell_diameter else 1.0
    probs = None  # the final pass's, once known
    if cell_diameter is None:
        # Only two maps are kept (each is K x H x W floats at the image's size): the 1x one, final
        # when the size found is inside the trained range, and the most confident, the fallback.
        readings, native, confident = [], None, (-1.0, 1.0, None)
        for f in (1.0, *sp.downscales):
            if f < 1.0 and min(image.shape[:2]) * f < sp.min_side:
                break
            p = predict_probs(module, card, image, f, tile, overlap, prange)
            readings.append((f, rbc_diameter(p.argmax(0), quantile=sp.rbc_quantile), cell_confidence(p)))
            native = p if f == 1.0 else native
            confident = max(confident, (readings[-1][2], f, p), key=lambda r: r[0])
            del p
        lo, hi = card.get("diameter_range") or [sp.fallback_diameter] * 2
        cell_diameter = consensus_diameter(readings, (lo, hi), sp.agreement, sp.in_range)
        if cell_diameter is None:  # no reading saw red cells at a known size: the most confident one
            factor, probs = confident[1], confident[2]
        else:
            factor = smear_factor(card, cell_diameter)
            probs = native if factor == 1.0 else None
    if probs is None or tta:
        probs = predict_probs(module, card, image, factor, tile, overlap, prange, tta=tta)
    classes = probs.argmax(0).astype(np.uint8)
    for group in ("wbc", "platelet"):
        classes = vote_per_object(classes, probs, GROUPS[group])
    measured = bool(cell_diameter)  # (given ones are said so by Task.predict)
    diameter = float(cell_diameter or float(card.get("cell_diameter") or sp.fallback_diameter) / factor)
    cells = split_instances(np.isin(classes, GROUPS["rbc"]), diameter)
    if sp.rbc_vote:
        infected = CLASSES.index("infected rbc")
        # Infected when s_infected / (s_infected + s_healthy) >= t, i.e. s_infected (1 - t) >= s_healthy t.
        weights = tuple(1 - sp.infected_share if k == infected else sp.infected_share for k in GROUPS["rbc"])
        classes = vote_per_object(classes, probs, GROUPS["rbc"], cells, weights=weights)
    if sp.min_cell_fraction:
        classes = absorb_fragments(classes, sp.min_cell_fraction * np.pi * (diameter / 2) ** 2,
                                   GROUPS["wbc"] + GROUPS["rbc"])
    if sp.wbc_min_rbc:
        classes = small_wbcs_recast(classes, probs, sp.wbc_min_rbc * np.pi * (diameter / 2) ** 2)
    if sp.platelet_min_rbc:
        classes = absorb_fragments(classes, sp.platelet_min_rbc * np.pi * (diameter / 2) ** 2, GROUPS["platelet"])
    if sp.clump_ratio:
        classes = platelets_by_size(classes, diameter, sp.clump_ratio)
    if card.get("wbc_typing"):
        classes = type_wbc_objects(image, classes, card["wbc_typing"], device)
    # each red cell one object; a sliver absorb_fragments made red joins the cell around it
    cells = carry_labels(cells, np.isin(classes, GROUPS["rbc"]))
    instances, objects = smear_objects(classes, probs, typed_wbcs=bool(card.get("wbc_typing")), rbc_cells=cells)
    return Segmentation(classes, instances, probs, diameter, factor, objects, "measured" if measured else "model")
