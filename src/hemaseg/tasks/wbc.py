"""The ``wbc`` task (seed 000): the outline of every white blood cell and its nucleus.

Labels on disk follow wbc-seg: 0 background, 128 cytoplasm, 255 nucleus. Inference scales the
image so its WBCs have the model's trained diameter (from the WBCs the ``cells`` model finds, else
estimated with the model itself, as Cellpose does), predicts tiled, then post-processes: opening,
small specks dropped, touching cells split by watershed, cells without a nucleus dropped (red
cells), cytoplasm clipped to a reach from the nucleus; then the red-cell rules (colour, the
``cells`` model's red cells, ``red_chroma``), the cut to the WBCs the ``cells`` model found, the
join of cut nuclei and each cell's opening. Every knob is a field of :class:`WbcParams`.
"""
from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from hemaseg.classical import (
    RED_MARGIN,
    WBC_METHODS,
    box_cell,
    label_medians,
    likelier_first,
    no_colour,
    segment_classical,
    stained,
    wbc_segmentation,
)
from hemaseg.core.content import featureless
from hemaseg.core.labels import drop_small, measure_diameter, relabel, remove_small, split_instances, wbc_objects
from hemaseg.core.options import NO_MODEL
from hemaseg.core.resize import clamp_factor, resize_argmax, resize_probs
from hemaseg.core.result import Segmentation
from hemaseg.core.vocabulary import CATEGORIES, category_of
from hemaseg.data.transforms import normalize
from hemaseg.engine.blocks import Block, centred_in_core, downscale, image_blocks, release_free_memory
from hemaseg.engine.evaluate import means, plain_table
from hemaseg.engine.losses import ANY_FOREGROUND, IGNORE
from hemaseg.engine.predict import card_range, get_model, model_of_task, predict_probs, predict_scaled, resolve_device
from hemaseg.engine.runtime import as_runner
from hemaseg.engine.task import Task, params_from_card
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.engine.train import pair_data, read_split
from hemaseg.errors import HemasegInputError
from hemaseg.io.annotations import find_yolo, read_yolo_labels, yolo_names
from hemaseg.io.datasets import Pair, find_pairs, load_pair
from hemaseg.io.images import as_photo, read_image
from hemaseg.metrics import wbc_scores
from hemaseg.progress import track
from hemaseg.tasks.cells.infer import CellsParams, red_cell_labels, segment_cells
from hemaseg.tasks.registry import register_task

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: importing hemaseg does not import it.

DEPENDS: tuple[str, ...] = ("cells",)


@dataclass
class WbcParams:
    """Post-processing of the ``wbc`` task (a model card's ``"postprocess"`` overrides the defaults).

    Parameters
    ----------
    min_cell_fraction : smallest WBC kept, as a fraction of the area of a cell of the estimated
        diameter: small lymphocytes (~0.5x the diameter of a monocyte) stay, platelets (<0.25x) go.
    max_reach : farthest cytoplasm from the nucleus, in nucleus diameters (default 1.0; wbc-seg annotations: max 1.03).
    open_radius : opening radius as a fraction of the cell diameter: removes arms thinner than ~1/8 of a cell.
    scale_deadband : rescaling is skipped when the estimated scale is within this factor of 1 (the
        model was trained over 0.5-2x, and resampling costs time and sharpness).
    first_pass_factors : first-pass scales, tried in order until nucleated cells are found. At 0.5
        the model (trained over 0.5-2x) sees cells of 1-4x its trained diameter, the usual case for
        images of other labs (higher magnification); 1.0 and 2.0 catch smaller cells.
    fallback_diameter : px, the trained diameter assumed when a card gives none.
    block_size : px in the input image. An image whose long side is at most this is processed
        whole, exactly as always. A larger one is processed region by region
        (:mod:`hemaseg.engine.blocks`): blocks of about ``block_size`` px a side (margins
        included; the core is at least a quarter of it), each predicted and post-processed on
        its own, each WBC kept by the block whose core holds its centroid, the uint8 classes
        and int32 instances written straight into the full-size outputs. Peak memory then
        follows the block, not the image (no full-size float map); the result's ``probs`` is a
        summary downsampled to :data:`PROBS_SUMMARY_SIZE` px on the long side, and an unknown
        cell diameter is estimated at full resolution on the central 2048-px square.
    block_margin : cell diameters of context around each block's core (a WBC whose centroid is in
        the core lies whole in the block, and its neighbours are seen as they are in the image);
        default 1.5, at least 0.6 (with none, cells cut by the blocks' edges came out as pieces).
    red_cytoplasm : drop "cytoplasm" whose colour is likelier this image's red cells' than that of
        the cytoplasm hugging the nuclei (:func:`reject_red_cytoplasm`; no fixed threshold).
    red_ring : cell diameters around the nucleus whose cytoplasm is the cytoplasm colour sample
        and is never dropped.
    red_piece : smallest red-coloured piece of cytoplasm dropped, as a share of a red cell's area
        (a red cell taken as 1/1.8 of the WBC diameter across): scattered pinkish pixels stay.
    red_nucleus : a cell is dropped when at least this share of its nucleus pixels has a red cell's
        colour rather than the image's nuclei's (:func:`reject_red_nuclei`: a dark fold of a red
        cell taken for a nucleus); above 1: never.
    red_cells : a cells model (bundled name or path) that finds the red cells around each WBC, which
        are then never its cytoplasm nor its nucleus (:func:`reject_found_red_cells`); ``""`` or
        ``"none"``: not asked. On TXL-PBC's validation fields of four labs it cut the cytoplasm
        leaking into red cells from 5.5-64 % to 0.6-26 % (wbc-seg's validation Dice unchanged).
    red_cell_ratio : WBC diameter over red-cell diameter assumed to run that model at its red cells'
        size (TXL-PBC's boxes: 1.5-2.1 by lab).
    red_outside : a red cell found by ``red_cells`` that touches a WBC's cytoplasm is also cut from it,
        whatever its colour (not in a grey image), when at least this share of its pixels lies
        outside every WBC (a red cell pressed against a WBC whose thin cytoplasm gives the colour
        vote nothing to compare with); above 1: never. TXL-PBC's validation fields, leak Raabin /
        PBC / BCDD / BCCD (Raabin without its field whose only WBC is boxed as a red cell): off 1.31
        / 1.98 / 0.79 / 0.34 %; 0.7: 1.31 / 1.72 / 0.79 / 0.29 %; 0.5: 1.31 / **1.62** / 0.79 / 0.29 %
        (default since stop 56), WBC box IoU PBC 0.909 -> 0.911, BCCD 0.773 -> 0.768, BCDD 0.670 ->
        0.667, wbc-seg's validation cell Dice 0.9833 -> 0.9832 (pink-purple at 2.5x 0.9728 -> 0.9712).
    red_cells_max_pixels : the cells models (``red_cells``, ``size_model``) are asked only about
        images of at most this many pixels (photos and crops, where other labs' red cells were
        taken for cytoplasm); the red-cell check costs about 30 ms a WBC (a second network around
        each), which on a 2048x2048 mosaic of 108 WBCs tripled the time (1.9 -> 5.5-6.0 s), and the
        size 2.6 s more there. 0: every image.
    size_model : a cells model (bundled name or path) whose WBCs give the WBC diameter when none
        is given (:func:`found_wbcs`); when it finds no WBC, on images over
        ``red_cells_max_pixels`` or longer than ``block_size`` (processed in blocks: there the
        ``found_*`` and ``red_chroma`` rules do not run either), or with ``""`` or ``"none"``, the
        ``wbc`` model's own scale
        search decides (and, when it was asked and found none, ``red_chroma`` applies). On TXL-PBC's
        validation fields the own search was off by more than 1.5x on 18 of 244 fields (BCDD's
        256-px fields up to 3x, the whole field then taken for cytoplasm), the bundled ``cells``
        model's WBCs on 6.
    found_share : when the ``size_model`` found WBCs, a cell less than this share of whose nucleus
        lies in one of them is dropped (:func:`keep_found_wbcs`: dark red cells taken for nuclei
        beside a pale WBC); 0: none is.
    found_margin : when the ``size_model`` found WBCs, every pixel of a cell farther than this many
        WBC diameters from the convex hull of one of them is cut (:func:`clip_to_found`: cytoplasm
        spreading between the red cells around a WBC, a red cell's dark centre taken for a piece of
        its nucleus), then the pieces cut off from a cell's nucleus go; negative: nothing is cut.
        Chosen on TXL-PBC's validation fields (0, 0.05, 0.1, 0.15, 0.2, 0.3 tried): 0.1.
    found_agree : a cell is cut by ``found_margin`` only when at least this share of its nucleus
        lies within reach of a found WBC (0, 0.8, 0.9, 0.95 tried); above 1: no cell is cut.
    found_solidity : a cell whose solidity is at least this is round already and is not cut: on
        wbc-seg's validation crops magnified 2.5x the ``cells`` model found only a part of the WBC
        (the rest taken for a red cell), and cutting to it cost 0.021 Dice (0.9797 -> 0.9588);
        with this gate 0.9797. TXL-PBC validation, leak BCDD / Raabin / PBC: no cut 3.0 / 4.5 /
        2.8 %; cut 1.0 / 3.1 / 2.5 % (WBC box IoU BCDD 0.658 -> 0.653).
    cell_open : last of all, each cell is opened by a disk of this fraction of its own equivalent
        diameter, its nucleus never cut, and what no longer joins the nucleus goes
        (:func:`open_each_cell`: the slivers and tails the red-cell rules leave between the red
        cells, arms into a pale neighbour); 0: not done. Chosen on TXL-PBC's validation fields
        (0.06, 0.08, 0.1, 0.15, 0.2 tried): leak Raabin / PBC / BCDD / BCCD 3.1 / 2.5 / 1.0 / 0.4 %
        -> 2.5 / 2.0 / 0.9 / 0.3 %, WBC box IoU PBC 0.899 -> 0.909, Raabin 0.830 -> 0.849, no WBC
        lost; larger radii leaked less but lost WBCs and box IoU on BCDD and BCCD.
    nucleus_contact : after the red-cell rules, cells whose nuclei touch along at least this
        fraction of the diameter are one cell (:func:`join_cut_nuclei`: a bent neutrophil whose pale
        cytoplasm was not seen, cut in two through its nucleus by the split of touching cells);
        0: never joined. TXL-PBC validation fields (0.05, 0.1, 0.2 gave the same): BCDD WBC recall
        0.875 -> 0.938, count exact 81 -> 88 %, leak 0.9 -> 0.8 %; Raabin count exact 93 -> 96 %,
        leak 2.6 -> 2.5 %; PBC, BCCD and wbc-seg's validation Dice unchanged.
    red_chroma : when the ``size_model`` was asked and found no WBC, a cell whose nucleus' median
        CIELAB a*b* lies within this many units (OpenCV's 8-bit scale) of the median a*b* of the red
        cells that model found outside every cell is a red cell taken for a WBC and goes
        (:func:`reject_red_coloured`: a crop of red cells alone, which the scale search blows up to
        a WBC's size); nothing goes in a grey image or with fewer than
        :data:`RED_CHROMA_MIN_PIXELS` such red-cell pixels; 0: never. Not tuned: 12 is the margin of
        the classical methods' :func:`~hemaseg.classical.red_cell_pieces` (:data:`hemaseg.classical.RED_MARGIN`;
        on TXL-PBC's fields of four labs nuclei lie 36-64 units from the red cells, the red cells' own
        dark parts about 10; on wbc-seg's validation crops where the cells model finds no WBC, 26-76).

    Examples
    --------
    >>> WbcParams().min_cell_fraction, WbcParams(max_reach=1.2).max_reach
    (0.15, 1.2)
    """

    min_cell_fraction: float = 0.15
    max_reach: float = 1.0
    open_radius: float = 0.06
    scale_deadband: float = 1.25
    first_pass_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    fallback_diameter: float = 50.0
    block_size: int = 2048
    block_margin: float = 1.5
    red_cytoplasm: bool = True
    red_ring: float = 0.12
    red_piece: float = 1 / 3
    red_nucleus: float = 0.5
    red_cells: str = field(default="cells", metadata={"model": "cells"})  # a cells model: checked by the CLI
    red_cell_ratio: float = 1.8
    red_outside: float = 0.5  # above 1: off
    red_cells_max_pixels: int = 2_000_000
    size_model: str = field(default="cells", metadata={"model": "cells"})  # a cells model: checked by the CLI
    found_share: float = 0.3
    found_margin: float = 0.1
    found_agree: float = 0.8
    found_solidity: float = 0.9
    cell_open: float = 0.06
    nucleus_contact: float = 0.1
    red_chroma: float = RED_MARGIN

    # Each number's allowed range (inclusive; None: open), checked by ``--post`` and ``params=``: values
    # outside them hung a run (block_size 0, open_radius 100), asked for petabytes (cell_open 1e6) or divided
    # by zero (scale_deadband 0, red_cell_ratio 0). Tuples: each element; a third number: the fewest elements.
    RANGES: ClassVar[dict] = {
        "min_cell_fraction": (0.0, 4.0), "max_reach": (0.05, 10.0), "open_radius": (0.0, 0.5),
        "scale_deadband": (1.0, 10.0), "first_pass_factors": (0.05, 8.0, 1), "fallback_diameter": (2.0, 5000.0),
        "block_size": (64, None), "block_margin": (0.6, 10.0), "red_ring": (0.0, 10.0), "red_piece": (0.0, 10.0),
        "red_nucleus": (0.0, 2.0), "red_cell_ratio": (0.5, 10.0), "red_outside": (0.0, 2.0),
        "red_cells_max_pixels": (0, None), "found_share": (0.0, 1.0), "found_margin": (-1.0, 10.0),
        "found_agree": (0.0, 2.0), "found_solidity": (0.0, 2.0), "cell_open": (0.0, 0.5),
        "nucleus_contact": (0.0, 10.0), "red_chroma": (0.0, 255.0)}


DEFAULTS = WbcParams()

# Long side (px) of ``Segmentation.probs`` for images processed region by region.
PROBS_SUMMARY_SIZE = 1024
# Side (px) of the central square on which the cell diameter of a large image is estimated.
ESTIMATE_SIZE = 2048
# Side (px) of the central square the scale search's first pass sees in a larger image.
FIRST_PASS_SIZE = 1024
# Most pixels of the scale search's first pass measured at full size (larger: a smaller copy).
MEASURE_PIXELS = 512 * 512


def clean_wbc_classes(classes: np.ndarray, min_area: int) -> np.ndarray:
    """Drop cell specks smaller than ``min_area`` px and fill holes in cells: (H, W) uint8 classes.

    >>> c = np.zeros((20, 20), np.uint8); c[2:12, 2:12] = 1; c[5:8, 5:8] = 0; c[18, 18] = 2
    >>> out = clean_wbc_classes(c, min_area=10)
    >>> int(out[6, 6]), int(out[18, 18])
    (1, 0)
    """
    cell = classes > 0
    cell = remove_small(cell, max(min_area - 1, 0))
    cell = remove_small(cell, max(min_area - 1, 0), holes=True)
    out = np.where(cell, np.maximum(classes, 1), 0).astype(np.uint8)
    # Specks of cytoplasm enclosed by nucleus are texture (granules), not anatomy.
    nucleus = remove_small(out == 2, max(min_area // 10, 0), holes=True)
    out[nucleus & cell] = 2
    return out


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


def join_cut_nuclei(classes: np.ndarray, instances: np.ndarray, min_contact: float) -> np.ndarray:
    """Join cells whose nuclei touch along at least ``min_contact`` px of the line between them:
    (H, W) instances, each group of joined cells under its smallest label (not renumbered).

    The split of touching cells (:func:`~hemaseg.core.labels.split_instances`) follows the
    outline's shape; a long, bent neutrophil whose pale cytoplasm was not seen looks like two
    cells to it and is cut through its nucleus. A nucleus is one cell's: two cells whose nuclei
    meet along a line are one. Two WBCs pressed together keep cytoplasm between their nuclei.

    >>> c = np.zeros((10, 30), np.uint8); c[1:9, 1:29] = 1; c[3:7, 4:26] = 2
    >>> inst = np.zeros((10, 30), np.int32); inst[1:9, 1:15] = 1; inst[1:9, 15:29] = 2
    >>> np.unique(join_cut_nuclei(c, inst, 3)).tolist(), np.unique(join_cut_nuclei(c, inst, 5)).tolist()
    ([0, 1], [0, 1, 2])
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(instances.max())
    if n < 2:
        return instances
    nuc = np.where(classes == 2, instances, 0)
    keys = []
    for a, b in ((nuc[:, :-1], nuc[:, 1:]), (nuc[:-1], nuc[1:])):
        meet = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[meet], b[meet]), np.maximum(a[meet], b[meet])
        keys.append(lo.astype(np.int64) * (n + 1) + hi)
    keys, counts = np.unique(np.concatenate(keys), return_counts=True)
    join = keys[counts >= max(min_contact, 1)]
    if not len(join):
        return instances
    graph = coo_matrix((np.ones(len(join)), (join // (n + 1), join % (n + 1))), shape=(n + 1, n + 1))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n + 1, np.int64)
    np.minimum.at(smallest, comp, np.arange(n + 1))
    lut = smallest[comp].astype(instances.dtype)
    lut[0] = 0
    return lut[instances]


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
    if n == 0:  # no cell: no cytoplasm or nucleus either (the class map never holds pixels of no cell)
        return np.zeros_like(classes), instances
    area = np.bincount(instances.ravel(), minlength=n + 1)
    nuc = np.bincount(instances[classes == 2], minlength=n + 1)
    new_instances = relabel(instances, (nuc >= min_fraction * area) & (nuc >= max(min_area, 1)))
    new_classes = np.where(new_instances > 0, classes, 0).astype(np.uint8)
    return new_classes, new_instances


def limit_cytoplasm(classes: np.ndarray, instances: np.ndarray, max_reach: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip each cell to pixels within ``max_reach`` x its nucleus' equivalent diameter of the nucleus.

    In wbc-seg's annotations no cytoplasm pixel lies farther from the nucleus than 1.03x
    the nucleus' equivalent diameter (99th percentile 0.95x); a "cell" reaching farther
    has swallowed neighbouring red cells. Returns (classes, instances).
    """
    from scipy import ndimage as ndi

    out_c, out_i = classes.copy(), instances.copy()
    for label, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        sel = instances[sl] == label
        nuc = sel & (classes[sl] == 2)
        if not nuc.any():
            continue
        reach = max_reach * 2.0 * np.sqrt(nuc.sum() / np.pi)
        far = sel & (cv2.distanceTransform((~nuc).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) > reach)
        if far.any():
            out_c[sl][far] = 0
            out_i[sl][far] = 0
    return out_c, out_i


def _ab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB a*b* (uint8) of (N, 3) RGB pixels."""
    if not len(rgb):
        return np.zeros((0, 2), np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb[:, None, :3]), cv2.COLOR_RGB2LAB)[:, 0, 1:]


def red_cell_colours(image: np.ndarray, cells: np.ndarray, diameter: float) -> np.ndarray:
    """(N, 2) CIELAB a*b* of the image's red cells: stained pixels (threshold found without the
    cells) more than half a cell diameter from every pixel of ``cells``, sampled on every k-th
    pixel (at most ~1024 px a side: a Gaussian needs no more, and whole-image colour conversions
    were most of the time on a large smear)."""
    far = cv2.distanceTransform((~cells).view(np.uint8), cv2.DIST_L2, 3) > 0.5 * diameter
    k = max(1, max(image.shape[:2]) // 1024)
    sub, far_sub = image[::k, ::k], far[::k, ::k]
    return _ab(sub[stained(sub, far_sub) & far_sub])


def reject_red_cytoplasm(image: np.ndarray, classes: np.ndarray, instances: np.ndarray, diameter: float,
                         ring: float = DEFAULTS.red_ring, red: np.ndarray | None = None,
                         piece: float = DEFAULTS.red_piece) -> tuple[np.ndarray, np.ndarray]:
    """Drop predicted cytoplasm that has a red cell's colour: (classes, instances).

    The image's own red cells (stained pixels more than half a cell from every WBC) and the WBCs'
    own cytoplasm (within ``ring`` x ``diameter`` of a nucleus) each give a CIELAB a*b* Gaussian
    (:func:`hemaseg.classical.likelier_first`); cytoplasm farther out that is likelier red is dropped
    where it makes a piece of ``piece`` of a red cell's area or more, then whatever of a cell no
    longer touches its nucleus. Nothing changes when either sample is
    too small (a crop filled by its WBC has no red cell to learn from).

    >>> yy, xx = np.mgrid[:120, :160]
    >>> img = np.full((120, 160, 3), 240, np.uint8)
    >>> rbc = [(20, 140), (100, 140), (100, 20), (20, 20)]
    >>> for cy, cx in rbc + [(60, 100)]:
    ...     img[(yy - cy) ** 2 + (xx - cx) ** 2 < 196] = (210, 120, 120)  # red cells, one touching the WBC
    >>> img[(yy - 60) ** 2 + (xx - 60) ** 2 < 900] = (180, 170, 215); img[(yy - 60) ** 2 + (xx - 60) ** 2 < 225] = (90, 40, 130)
    >>> img = np.clip(img + np.random.default_rng(0).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    >>> cls = np.zeros((120, 160), np.uint8); cls[(yy - 60) ** 2 + (xx - 60) ** 2 < 900] = 1
    >>> cls[(yy - 60) ** 2 + (xx - 100) ** 2 < 196] = 1; cls[(yy - 60) ** 2 + (xx - 60) ** 2 < 225] = 2
    >>> c2, i2 = reject_red_cytoplasm(img, cls, (cls > 0).astype(np.int32), diameter=60)
    >>> int(c2[60, 104]), int(c2[60, 82]), int(c2[60, 60])
    (0, 1, 2)
    """

    cell = instances > 0
    nucleus = classes == 2
    if not nucleus.any():
        return classes, instances

    if red is None:
        red = red_cell_colours(image, cell, diameter)
    near = cv2.distanceTransform((~nucleus).view(np.uint8), cv2.DIST_L2, 3) <= max(1.0, ring * diameter)
    cyto = (classes == 1) & cell
    drop = np.zeros(cyto.shape, bool)
    candidates = cyto & ~near
    if candidates.any():
        drop[candidates] = likelier_first(red, _ab(image[cyto & near]), _ab(image[candidates]))
    # Only red-cell-sized pieces (``piece`` of a red cell's area or more, a red cell being ~1/1.8 of
    # a WBC across): scattered pixels of a pinkish cytoplasm stay.
    drop = remove_small(drop, int(piece * np.pi / 4 * (diameter / 1.8) ** 2))
    if not drop.any():
        return classes, instances
    classes, instances = classes.copy(), instances.copy()
    classes[drop], instances[drop] = 0, 0
    _drop_loose(classes, instances)
    return classes, instances


def _drop_loose(classes: np.ndarray, instances: np.ndarray) -> None:
    """In place: clear every piece of cell (connected, any label) that holds no nucleus pixel, and
    every piece of a cell cut off from the piece holding most of its nucleus (a WBC is one piece:
    a dark spot of a red cell that cytoplasm leaking through the red cells had joined to it goes
    when the red cytoplasm is cut).

    >>> c = np.zeros((8, 20), np.uint8); c[1:7, 1:7] = 1; c[2:6, 2:6] = 2; c[3:5, 15:17] = 2
    >>> inst = np.where(c > 0, 1, 0).astype(np.int32)
    >>> _drop_loose(c, inst)
    >>> int(inst[4, 4]), int(inst[4, 16])
    (1, 0)
    """
    n, pieces = cv2.connectedComponents((instances > 0).astype(np.uint8), connectivity=4)
    holds = np.bincount(pieces[classes == 2], minlength=n) > 0
    holds[0] = True
    loose = ~holds[pieces]
    classes[loose], instances[loose] = 0, 0
    m = int(instances.max()) + 1
    nucleus = (classes == 2) & (instances > 0)
    if not nucleus.any():
        return
    key = pieces[nucleus].astype(np.int64) * m + instances[nucleus]
    keys, counts = np.unique(key, return_counts=True)
    best = np.zeros(m, np.int64)  # per cell, the key (piece * m + cell) of its piece with most nucleus
    order = np.argsort(counts, kind="stable")
    best[keys[order] % m] = keys[order]  # the largest count is written last
    ys, xs = np.nonzero(instances)
    cell = instances[ys, xs]
    off = pieces[ys, xs].astype(np.int64) * m + cell != best[cell]
    classes[ys[off], xs[off]], instances[ys[off], xs[off]] = 0, 0


def open_each_cell(classes: np.ndarray, instances: np.ndarray, fraction: float = DEFAULTS.cell_open
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Open each cell by a disk of ``fraction`` x its own equivalent diameter, never cutting its
    nucleus, then drop the pieces of it no longer joined to the piece holding most of its nucleus:
    (classes, instances), labels kept (a cell keeps at least part of its nucleus).

    >>> c = np.zeros((40, 70), np.uint8); c[5:35, 5:35] = 1; c[12:28, 12:28] = 2; c[18:21, 35:65] = 1
    >>> inst = np.where(c > 0, 1, 0).astype(np.int32)
    >>> c2, i2 = open_each_cell(c, inst, 0.1)
    >>> int(i2[19, 50]), int(i2[19, 8]), int(c2[20, 20])   # the arm goes, the body and nucleus stay
    (0, 1, 2)
    """
    from scipy import ndimage as ndi

    if fraction <= 0 or not instances.any():
        return classes, instances
    classes, instances = classes.copy(), instances.copy()
    for label, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        cell = instances[sl] == label
        r = int(round(fraction * 2 * np.sqrt(cell.sum() / np.pi)))
        if r < 1:
            continue
        # Padded with background beyond the box, with the cell's own edge where the box meets the
        # image's edge: a cell cut by the image's edge is not rounded off there.
        pad = r + 1
        padded = np.pad(cell.view(np.uint8), pad, mode="edge")
        if sl[0].start > 0:
            padded[:pad] = 0
        if sl[0].stop < instances.shape[0]:
            padded[-pad:] = 0
        if sl[1].start > 0:
            padded[:, :pad] = 0
        if sl[1].stop < instances.shape[1]:
            padded[:, -pad:] = 0
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        opened = cv2.morphologyEx(padded, cv2.MORPH_OPEN, kernel)[pad:-pad, pad:-pad]
        nucleus = cell & (classes[sl] == 2)
        kept = ((opened > 0) | nucleus) & cell
        n, pieces = cv2.connectedComponents(kept.view(np.uint8), connectivity=4)
        if n > 2:  # more than one piece: the one holding most of the nucleus stays
            counts = np.bincount(pieces[nucleus], minlength=n)
            counts[0] = 0
            kept = pieces == int(counts.argmax())
        gone = cell & ~kept
        classes[sl][gone], instances[sl][gone] = 0, 0
    return classes, instances


# reject_red_nuclei's second look: the nuclei within this red share of the least red cell's are the surest.
SURE_NUCLEI_MARGIN = 0.1


def reject_red_nuclei(image: np.ndarray, classes: np.ndarray, instances: np.ndarray, diameter: float,
                      share: float = DEFAULTS.red_nucleus, red: np.ndarray | None = None,
                      relabel_cells: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Drop cells whose "nucleus" has a red cell's colour: (classes, instances), relabelled.

    A Gaussian in CIELAB a*b* of the image's own red cells (stained pixels more than half a cell
    from every predicted cell) against one of all predicted nucleus pixels: a cell is dropped when
    at least ``share`` of its nucleus pixels are likelier red (a dark fold of a red cell taken for
    a nucleus); a real nucleus, blue to purple, stays even when false ones outnumber it. With
    several cells the test is made a second time against the surest nuclei alone (those of the
    cells the first test found least red, :data:`SURE_NUCLEI_MARGIN`), and a cell goes when either
    test says so: false nuclei in the majority no longer pass for the image's nuclei.
    ``red``: the red cells' a*b* if already sampled (:func:`red_cell_colours`);
    ``relabel_cells=False`` keeps the labels of the cells that stay.

    >>> yy, xx = np.mgrid[:160, :200]
    >>> img = np.full((160, 200, 3), 240, np.uint8); cls = np.zeros((160, 200), np.uint8)
    >>> disc = lambda cy, cx, r: (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    >>> for cy, cx in ((20, 180), (140, 180), (140, 20), (20, 20), (20, 100), (140, 100)):
    ...     img[disc(cy, cx, 14)] = (205, 110, 120)  # red cells far from the "cells"
    >>> img[disc(80, 50, 30)] = (185, 170, 215); img[disc(80, 50, 15)] = (90, 40, 130)  # a WBC
    >>> for cx in (120, 160):  # two red cells with a dark fold the network called a nucleus
    ...     img[disc(80, cx, 16)] = (205, 110, 120); img[disc(80, cx, 8)] = (160, 60, 75)
    >>> img = np.clip(img + np.random.default_rng(0).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    >>> inst = np.zeros((160, 200), np.int32)
    >>> for k, (cx, r, rn) in enumerate(((50, 30, 15), (120, 16, 8), (160, 16, 8)), start=1):
    ...     inst[disc(80, cx, r)] = k; cls[disc(80, cx, r)] = 1; cls[disc(80, cx, rn)] = 2
    >>> c2, i2 = reject_red_nuclei(img, cls, inst, diameter=60)
    >>> int(i2.max()), int(i2[80, 50]), int(i2[80, 120]), int(c2[80, 160])
    (1, 1, 0, 0)
    """
    cell = instances > 0
    nucleus = (classes == 2) & cell
    n = int(instances.max())
    if n == 0 or not nucleus.any():
        return classes, instances

    if red is None:
        red = red_cell_colours(image, cell, diameter)
    nuc_ab = _ab(image[nucleus])
    labels = instances[nucleus]
    counts = np.maximum(np.bincount(labels, minlength=n + 1), 1)
    red_share = np.bincount(labels, weights=likelier_first(red, nuc_ab, nuc_ab), minlength=n + 1) / counts
    if n > 1:
        # A second look against the surest nuclei alone (the cells least red by the first): red cells
        # taken for nucleated cells can outnumber the WBCs and pull the nuclei's Gaussian to their colour.
        sure = np.isin(labels, np.flatnonzero(red_share[1:] <= red_share[1:].min() + SURE_NUCLEI_MARGIN) + 1)
        again = likelier_first(red, nuc_ab[sure], nuc_ab)
        red_share = np.maximum(red_share, np.bincount(labels, weights=again, minlength=n + 1) / counts)
    keep = red_share < share
    if keep[1:].all():
        return classes, instances
    keep[0] = False
    instances = relabel(instances, keep) if relabel_cells else np.where(keep[instances], instances, 0)
    return np.where(instances > 0, classes, 0).astype(np.uint8), instances


def red_colour_rules(image: np.ndarray, classes: np.ndarray, instances: np.ndarray, diameter: float,
                     p: WbcParams = DEFAULTS, relabel_cells: bool = True, found_red_cells: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reject_red_cytoplasm` (``p.red_cytoplasm``) then :func:`reject_red_nuclei` (``p.red_nucleus``
    <= 1), the red cells' colour sampled once, then :func:`reject_found_red_cells` when
    :func:`asks_red_cells` (unless ``found_red_cells`` is False: the crop normaliser and the classical
    methods do without, and a block of a large image is not asked when the whole image is not).
    ``relabel_cells=False`` keeps the labels of the cells that stay (a dropped cell leaves a gap)."""
    if not (classes == 2).any():
        return classes, instances
    if p.red_cytoplasm or p.red_nucleus <= 1:
        red = red_cell_colours(image, instances > 0, diameter)
        if p.red_cytoplasm:
            classes, instances = reject_red_cytoplasm(image, classes, instances, diameter, p.red_ring, red, p.red_piece)
        if p.red_nucleus <= 1:
            classes, instances = reject_red_nuclei(image, classes, instances, diameter, p.red_nucleus, red,
                                                   relabel_cells)
    if found_red_cells and asks_red_cells(image.shape, p):
        classes, instances = reject_found_red_cells(image, classes, instances, diameter, p, relabel_cells)
    return classes, instances


def asks_red_cells(shape: tuple[int, ...], p: WbcParams = DEFAULTS, model: str | None = None) -> bool:
    """Whether an image of ``shape`` asks a cells model: ``model`` (default ``p.red_cells``, i.e.
    :func:`reject_found_red_cells`; ``p.size_model`` for the size) is set and the image has at most
    ``p.red_cells_max_pixels`` pixels.

    >>> everywhere = WbcParams(red_cells_max_pixels=0)
    >>> asks_red_cells((480, 640, 3)), asks_red_cells((2048, 2048, 3)), asks_red_cells((2048, 2048), everywhere)
    (True, False, True)
    >>> asks_red_cells((480, 640, 3), WbcParams(size_model="none"), WbcParams(size_model="none").size_model)
    False
    """
    return (p.red_cells if model is None else model) not in NO_MODEL and (
        p.red_cells_max_pixels <= 0 or shape[0] * shape[1] <= p.red_cells_max_pixels)


MIN_CHROMA_SPREAD = 1.0  # CIELAB a*/b* standard deviation under which a window is taken as grey
RED_CELL_WINDOW = 0.6  # WBC diameters around each WBC's box in which reject_found_red_cells looks


def reject_found_red_cells(image: np.ndarray, classes: np.ndarray, instances: np.ndarray, diameter: float,
                           p: WbcParams = DEFAULTS, relabel_cells: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Drop what a cells model finds to be red cells from the WBCs: (classes, instances).

    Around each WBC (its box grown by :data:`RED_CELL_WINDOW` diameters) the cells model
    ``p.red_cells``, trained on every red cell of four labs (:func:`hemaseg.tasks.cells.infer.red_cell_labels`),
    is run at red cells of ``diameter / p.red_cell_ratio``; a "red cell" more than twice that
    area is not trusted (a WBC cut in two by it). Then

    1. a cell whose nucleus lies at least half in red cells (a red cell taken for a nucleated cell,
       or a WBC merged with the red cells around it) loses its red-cell pixels, and goes unless what
       is left holds a nucleus of a quarter of the smallest WBC kept (``p.min_cell_fraction``);
    2. a red cell touching a WBC's cytoplasm is cut from it when most of its pixels there are likelier
       (CIELAB Gaussians, :func:`~hemaseg.classical.likelier_first`) the colour of the window's free red
       cells (touching no WBC) than that of the WBC's other cytoplasm; the vote cuts nothing in a window
       with no free red cell to learn from (a crop filled by its WBC), so a WBC's own cytoplasm, which
       the model can mistake for a red cell, stays; nothing at all is cut in a grey window
       (:data:`MIN_CHROMA_SPREAD`); a red cell is also cut, whatever its colour (except in a grey
       window), when at least ``p.red_outside`` of it lies outside every WBC (0.5 by default);
       then whatever of a cell no longer touches its nucleus goes.

    ``relabel_cells=False`` keeps the labels of the cells that stay.
    """
    from scipy import ndimage as ndi

    n = int(instances.max())
    if n == 0:
        return classes, instances
    h, w = image.shape[:2]
    rbc_d = diameter / p.red_cell_ratio
    largest = 2 * np.pi / 4 * rbc_d ** 2
    margin = int(RED_CELL_WINDOW * diameter)
    windows, found = [], np.zeros((h, w), bool)
    for sl in ndi.find_objects(instances):
        if sl is None:
            continue
        win = (slice(max(0, sl[0].start - margin), min(h, sl[0].stop + margin)),
               slice(max(0, sl[1].start - margin), min(w, sl[1].stop + margin)))
        red = red_cell_labels(np.ascontiguousarray(image[win][..., :3]), rbc_d, p.red_cells,
                              exclude=instances[win] > 0)
        red[(np.bincount(red.ravel()) > largest)[red]] = 0
        windows.append((win, red))
        found[win] |= red > 0
    classes, instances = classes.copy(), instances.copy()
    nucleus = (classes == 2) & (instances > 0)
    labels = instances[nucleus]
    share = np.bincount(labels, weights=found[nucleus], minlength=n + 1) / np.maximum(
        np.bincount(labels, minlength=n + 1), 1)
    # A cell whose "nucleus" is mostly red cells loses every red-cell pixel; what is left of it
    # stays only if a nucleus of its own is (a WBC merged with the red cells around it).
    suspect = share >= 0.5
    suspect[0] = False
    gone = suspect[instances] & found
    classes[gone], instances[gone] = 0, 0
    left = np.bincount(instances[classes == 2], minlength=n + 1)
    keep = ~suspect | (left >= max(_min_area(diameter, p) // 4, 1))
    keep[0] = True
    gone = ~keep[instances]
    classes[gone], instances[gone] = 0, 0
    cut = np.zeros((h, w), bool)
    for win, red in windows:
        cyto, cell = classes[win] == 1, instances[win] > 0
        inside = cyto & (red > 0)
        if not inside.any():
            continue
        touching = np.bincount(red[inside], minlength=int(red.max()) + 1) > 0  # red cells in a WBC's cytoplasm
        lab = cv2.cvtColor(np.ascontiguousarray(image[win][..., :3]), cv2.COLOR_RGB2LAB)
        if lab[..., 1:].reshape(-1, 2).std(0).max() < MIN_CHROMA_SPREAD:
            continue  # a grey image: lightness alone took WBCs' own cytoplasm for red cells
        free, own = lab[(red > 0) & ~touching[red] & ~cell], lab[cyto & (red == 0)]
        votes = likelier_first(free, own, lab[inside])
        labels = red[inside]
        redder = np.bincount(labels, weights=votes, minlength=len(touching)) >= 0.5 * np.bincount(
            labels, minlength=len(touching))
        if p.red_outside <= 1:  # above 1 the rule is off: nothing to count
            size = np.bincount(red.ravel(), minlength=len(touching))
            redder |= np.bincount(red[~cell], minlength=len(touching)) >= p.red_outside * size
        redder[0] = False
        cut[win] |= inside & redder[red]
    classes[cut], instances[cut] = 0, 0
    _drop_loose(classes, instances)
    keep[1:] &= np.bincount(instances.ravel(), minlength=n + 1)[1:] > 0
    if relabel_cells and not keep.all():
        instances = relabel(instances, keep)
    return classes, instances


def _min_area(diameter: float, p: WbcParams = DEFAULTS) -> int:
    return max(int(p.min_cell_fraction * np.pi * (diameter / 2) ** 2), 10)


def wbc_instances(probs: np.ndarray, diameter: float, p: WbcParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray]:
    """Post-process (3, H, W) probabilities into ((H, W) uint8 classes, (H, W) int32 instances) of
    nucleated cells of about ``diameter`` px."""
    return postprocess_classes(resize_argmax(probs, probs.shape[1:])[0], diameter, p)  # argmax, as uint8 directly


def postprocess_classes(classes: np.ndarray, diameter: float, p: WbcParams = DEFAULTS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`wbc_instances` from the (H, W) uint8 argmax of the probabilities."""
    min_area = _min_area(diameter, p)
    classes = clean_wbc_classes(open_cells(classes, p.open_radius * diameter), min_area)
    # A piece with too little nucleus can only give cells keep_nucleated drops (red cells taken for
    # cytoplasm): it is dropped before the per-piece watershed, which then runs on WBCs only.
    n, pieces = cv2.connectedComponents((classes > 0).view(np.uint8), connectivity=4)
    nucleated = np.bincount(pieces[classes == 2], minlength=n) >= max(min_area // 4, 1)
    nucleated[0] = False
    instances = split_instances(nucleated[pieces], diameter, min_area)
    # Every WBC has a nucleus, red cells have none: a "cell" without one is dropped, and
    # no cell reaches farther from its nucleus than annotated WBCs do.
    classes, instances = keep_nucleated(classes, instances, min_area=min_area // 4)
    return limit_cytoplasm(classes, instances, p.max_reach)


def _measure_at(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray,
                factor: float, tile: int, overlap: int, p: WbcParams = DEFAULTS, small: np.ndarray | None = None
                ) -> tuple[float | None, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Run the model at ``factor`` (or take its output at the model's scale, ``small``, already
    computed); return (diameter px in the input of the nucleated cells, probs,
    (classes, instances) post-processed for cells of the trained size at that factor). Cells are
    found at the input's scale (at the model's, a pass at a wrong scale measures them less
    consistently). The caller has checked the image's content."""
    trained = float(card.get("cell_diameter") or 0)
    if small is None:
        small = predict_scaled(module, card, image, factor, tile, overlap, prange)
    probs = resize_probs(small, image.shape[:2])
    classes, instances = wbc_instances(probs, trained / factor, p)
    return measure_diameter(instances, min_area=_min_area(trained / factor, p)), probs, (classes, instances)


def _measure_small(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray, factor: float,
                   tile: int, overlap: int, p: WbcParams = DEFAULTS) -> tuple[float | None, np.ndarray]:
    """Run the model at ``factor`` and measure the nucleated cells on its output at the model's
    scale (a quarter of the input's pixels at 0.5; a copy of at most :data:`MEASURE_PIXELS` when
    larger): (diameter px in the input, probs at the model's scale). For a first pass, which
    seldom is the final one; :func:`_measure_at` measures at the input's scale."""
    trained = float(card.get("cell_diameter") or 0)
    small = predict_scaled(module, card, image, factor, tile, overlap, prange)
    # A large output is measured on a copy of at most MEASURE_PIXELS (never under half size): an
    # estimate the later passes refine needs no more, and post-processing is most of its time.
    m = float(np.clip(np.sqrt(MEASURE_PIXELS / small[0].size), 0.5, 1.0))
    shape = (max(1, round(small.shape[1] * m)), max(1, round(small.shape[2] * m)))
    m = shape[0] / small.shape[1]
    _, instances = postprocess_classes(resize_argmax(small, shape)[0], trained * m, p)
    d = measure_diameter(instances, min_area=_min_area(trained * m, p))
    return (d / (factor * m) if d is not None else None), small


def _estimate_scale(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray,
                    tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, p: WbcParams = DEFAULTS
                    ) -> tuple[float | None, np.ndarray, float, tuple | None]:
    """Find the cell diameter by running the model until the cells it finds have the trained size.

    A first pass at half scale (then native, then double, until cells are found; on an image
    longer than :data:`FIRST_PASS_SIZE` px, its central square first) measures
    the nucleated cells, on the model's own output (:func:`_measure_small`: the first pass is seldom
    the last, and post-processing it at the input's size cost a 2048x2048 image 0.7-1.1 s); passes
    at the implied scale refine that at the input's scale, as Cellpose refines its size estimate
    from a segmentation. Returns (diameter px or None, probabilities of the last pass, its factor,
    its (classes, instances) or None): the last pass is the final one.
    """
    trained = float(card.get("cell_diameter") or 0)
    if trained <= 0:
        return None, predict_probs(module, card, image, 1.0, tile, overlap, prange, check_content=False), 1.0, None
    # Very large images: keep the first passes under ~2048 px on the long side.
    shrink = min(1.0, ESTIMATE_SIZE / max(image.shape[:2]))
    attempts = [(image, f * shrink) for f in p.first_pass_factors]
    # An image longer than FIRST_PASS_SIZE: the first pass sees its central square first (a
    # quarter of a 2048 x 2048 image), at the first factor; the whole image if it shows no cell.
    h, w = image.shape[:2]
    if shrink == 1.0 and max(h, w) > FIRST_PASS_SIZE:
        y0, x0 = max(0, (h - FIRST_PASS_SIZE) // 2), max(0, (w - FIRST_PASS_SIZE) // 2)
        centre = np.ascontiguousarray(image[y0:y0 + FIRST_PASS_SIZE, x0:x0 + FIRST_PASS_SIZE])
        if not featureless(centre):
            attempts.insert(0, (centre, p.first_pass_factors[0]))
    diameter, small, factor, view = None, None, 1.0, image
    for view, factor in attempts:
        diameter, small = _measure_small(module, card, view, prange, factor, tile, overlap, p)
        if diameter is not None:
            break
    if diameter is None:
        factor = 1.0
        return None, predict_probs(module, card, image, factor, tile, overlap, prange, check_content=False), factor, None
    new = scale_factor(card, diameter, p.scale_deadband)
    if view is image and abs(np.log(new / factor)) < np.log(p.scale_deadband):
        # The first pass is the final one: post-processed and measured at the input's scale.
        d, probs, post = _measure_at(module, card, image, prange, factor, tile, overlap, p, small=small)
        return (d if d is not None else diameter), probs, factor, post
    for _ in range(3):
        factor = new
        d, probs, post = _measure_at(module, card, image, prange, factor, tile, overlap, p)
        if d is None:
            break
        diameter = d
        new = scale_factor(card, diameter, p.scale_deadband)
        if abs(np.log(new / factor)) < np.log(p.scale_deadband):
            break
    return diameter, probs, factor, post


def found_cells(image: np.ndarray, model="cells", device: str = "cpu"
                ) -> tuple[float | None, np.ndarray | None, np.ndarray]:
    """:func:`found_wbcs`, and the (H, W) bool mask of the red cells the same run of the cells model
    finds (at its own red-cell scale search).

    >>> d, wbc, red = found_cells(np.full((96, 96, 3), 235, np.uint8))   # an empty field
    >>> d, wbc, bool(red.any())
    (None, None, False)
    """
    card = get_model(model, device)[1]
    # every WBC call, however unsure (the cells task's count drops those under wbc_min_score): a
    # WBC must not lose its size or be cut away because the cells model doubted it
    # rescale_passes 2: the cells task's 4 (stop 69) left the TXL-PBC `val` fields' WBC figures as they were but
    # moved wbc-seg's validation nucleus Dice 0.9599 -> 0.9596: not taken here, where those figures were chosen
    p = replace(params_from_card(CellsParams, card, "cells"), wbc_min_score=0.0, rescale_passes=2)
    seg = segment_cells(image, model, device=device, params=p)
    red = seg.classes == CATEGORIES.index("rbc") + 1
    wbc = np.where(seg.classes == CATEGORIES.index("wbc") + 1, seg.instances, 0)
    if not wbc.any():
        return None, None, red
    return measure_diameter(wbc, min_area=10), wbc > 0, red


def found_wbcs(image: np.ndarray, model="cells", device: str = "cpu") -> tuple[float | None, np.ndarray | None]:
    """(WBC diameter px, (H, W) bool mask of the WBCs) a cells model finds in ``image``: the
    area-weighted median equivalent diameter of its WBCs, those off the image's edge first
    (:func:`hemaseg.tasks.cells.infer.segment_cells`, its own red-cell scale search, every WBC call
    kept, those under the card's ``wbc_min_score`` too); (None, None) when it finds none.

    >>> found_wbcs(np.full((96, 96, 3), 235, np.uint8))   # an empty field
    (None, None)
    """
    return found_cells(image, model, device)[:2]


RED_CHROMA_MIN_PIXELS = 50  # fewest red-cell pixels outside the cells that reject_red_coloured measures by


def reject_red_coloured(image: np.ndarray, classes: np.ndarray, instances: np.ndarray, red: np.ndarray,
                        margin: float = DEFAULTS.red_chroma) -> tuple[np.ndarray, np.ndarray]:
    """Drop the cells whose nucleus has the colour of the red cells around: (classes, instances), relabelled.

    ``red`` is the (H, W) bool mask of the red cells a cells model found (:func:`found_cells`). Their
    pixels outside every cell give the red cells' median CIELAB a*b*; a cell whose nucleus pixels'
    median lies within ``margin`` of it is a red cell (or a clump of them) the network took for a
    nucleated cell: Romanowsky stains colour nuclei azure-purple and red cells eosin-pink. Nothing
    goes in a grey image (:func:`hemaseg.classical.no_colour`) or when fewer than
    :data:`RED_CHROMA_MIN_PIXELS` red-cell pixels lie outside the cells (a crop filled by its WBC).

    >>> yy, xx = np.mgrid[:80, :160]
    >>> img = np.full((80, 160, 3), 235, np.uint8); red = np.zeros((80, 160), bool)
    >>> for cx in (20, 60, 100): red |= (yy - 40) ** 2 + (xx - cx) ** 2 < 15 ** 2
    >>> img[red] = (205, 110, 120)   # three red cells; the network called the middle one a cell
    >>> nuc = (yy - 40) ** 2 + (xx - 140) ** 2 < 10 ** 2; img[nuc] = (90, 40, 130)   # a purple nucleus
    >>> inst = np.zeros((80, 160), np.int32); inst[(yy - 40) ** 2 + (xx - 60) ** 2 < 15 ** 2] = 1; inst[nuc] = 2
    >>> cls = (inst > 0).astype(np.uint8) * 2
    >>> c2, i2 = reject_red_coloured(img, cls, inst, red)
    >>> int(i2.max()), int(i2[40, 140]), int(c2[40, 60])
    (1, 1, 0)
    """
    n = int(instances.max())
    outside = red & (instances == 0)
    if n == 0 or margin <= 0 or outside.sum() < RED_CHROMA_MIN_PIXELS:
        return classes, instances
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB)
    if no_colour(lab.astype(np.float32)):
        return classes, instances
    ab = lab[..., 1:].astype(np.float32) - 128.0
    ref = np.median(ab[outside], 0)
    nucleus = np.where((classes == 2) & (instances > 0), instances, 0)
    has = np.bincount(nucleus.ravel(), minlength=n + 1)[1:] > 0
    med = label_medians(ab, nucleus, n)
    keep = np.ones(n + 1, bool)
    keep[1:] = ~has | (np.hypot(*(med - ref).T) >= margin)
    if keep.all():
        return classes, instances
    instances = relabel(instances, keep)
    return np.where(instances > 0, classes, 0).astype(np.uint8), instances


def keep_found_wbcs(classes: np.ndarray, instances: np.ndarray, found: np.ndarray,
                    share: float = DEFAULTS.found_share) -> tuple[np.ndarray, np.ndarray]:
    """Drop the cells less than ``share`` of whose nucleus lies in ``found`` (the WBCs another
    model found): dark red cells taken for nuclei, each a "WBC" of its own, where a pale WBC lies
    among them. (classes, instances), relabelled.

    >>> c = np.zeros((10, 20), np.uint8); c[2:8, 2:8] = 1; c[4:6, 4:6] = 2; c[2:8, 12:18] = 1; c[4:6, 14:16] = 2
    >>> inst = np.zeros((10, 20), np.int32); inst[2:8, 2:8] = 1; inst[2:8, 12:18] = 2
    >>> found = np.zeros((10, 20), bool); found[1:9, 1:9] = True
    >>> c2, i2 = keep_found_wbcs(c, inst, found)
    >>> int(i2.max()), int(c2[5, 15]), int(i2[5, 5])
    (1, 0, 1)
    """
    n = int(instances.max())
    nucleus = (classes == 2) & (instances > 0)
    if n == 0 or not nucleus.any():
        return classes, instances
    inside = np.bincount(instances[nucleus & found], minlength=n + 1)
    total = np.bincount(instances[nucleus], minlength=n + 1)
    keep = inside >= share * total
    keep[0] = True
    if keep.all():
        return classes, instances
    instances = relabel(instances, keep)
    return np.where(instances > 0, classes, 0).astype(np.uint8), instances


def convex_hulls(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the union of the convex hulls of ``mask``'s 8-connected pieces, each filled within
    its own box (scikit-image's ``convex_hull_object`` tests every pixel of the image against every
    hull: 42 s for the 216 WBCs of a 2048x2048 smear, against milliseconds here).

    >>> m = np.zeros((12, 30), bool); m[2:10, 2] = m[2, 2:10] = True; m[5, 20:28] = m[3:8, 24] = True
    >>> h = convex_hulls(m)
    >>> bool(h[4, 4]), bool(h[8, 8]), bool(h[6, 22]), bool(h[6, 14])   # in the first L's hull; the cross's
    (True, False, True, False)
    """
    out = np.zeros(mask.shape, np.uint8)
    n, comps, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    for k in range(1, n):
        x, y, w, h = stats[k, :4]
        points = cv2.findNonZero((comps[y:y + h, x:x + w] == k).view(np.uint8))
        cv2.fillConvexPoly(out[y:y + h, x:x + w], cv2.convexHull(points), 1)
    return out > 0


def clip_to_found(classes: np.ndarray, instances: np.ndarray, found: np.ndarray, reach: float,
                  agree: float = DEFAULTS.found_agree, solidity: float = DEFAULTS.found_solidity
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cut every pixel of a cell farther than ``reach`` px from the convex hull of a WBC in ``found``
    (the WBCs another model found), then the pieces cut off from a cell's nucleus (:func:`_drop_loose`):
    (classes, instances), relabelled.

    A cell is left whole when less than ``agree`` of its nucleus lies within reach (the other model
    found another cell), or when it is already round: its solidity (area over convex hull area) at
    least ``solidity``. Cytoplasm leaking between red cells makes arms and bays; where the other model
    found only a part of a round WBC (a cell magnified past what it knows, which it half takes for
    a red cell) the cell stays whole.

    >>> c = np.zeros((10, 30), np.uint8); c[1:9, 1:9] = 1; c[4:6, 9:25] = 1   # a body and an arm
    >>> c[3:7, 3:7] = 2; c[4:6, 20:24] = 2          # its nucleus, and a red cell's dark centre
    >>> inst = np.where(c > 0, 1, 0).astype(np.int32)
    >>> found = np.zeros((10, 30), bool); found[0:10, 0:10] = True
    >>> c2, i2 = clip_to_found(c, inst, found, reach=2, agree=0.5)
    >>> int(c2[4, 5]), int(c2[4, 10]), int(c2[4, 13]), int(c2[4, 21])   # nucleus, near: kept; far: cut
    (2, 1, 0, 0)
    >>> int(clip_to_found(c, inst, found, reach=2)[0][4, 21])   # 16 of its 24 nucleus px near: whole
    2
    >>> int(clip_to_found(c, inst, found, reach=2, agree=0.5, solidity=0.6)[0][4, 21])  # round enough
    2
    """
    from skimage.measure import regionprops

    n = int(instances.max())
    if n == 0 or reach < 0:
        return classes, instances
    hull = convex_hulls(found)
    far = cv2.distanceTransform((~hull).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) > reach
    nucleus = (classes == 2) & (instances > 0)
    near = np.bincount(instances[nucleus & ~far], minlength=n + 1)
    agrees = near >= agree * np.bincount(instances[nucleus], minlength=n + 1)
    agrees[0] = False
    for r in regionprops(instances):
        if agrees[r.label] and r.solidity >= solidity:
            agrees[r.label] = False
    cut = far & agrees[instances]
    if not cut.any():
        return classes, instances
    classes, instances = classes.copy(), instances.copy()
    classes[cut], instances[cut] = 0, 0
    _drop_loose(classes, instances)
    return classes, drop_small(instances, 1)


def estimate_diameter(image: np.ndarray, model="wbc", device: str = "cpu") -> float | None:
    """The WBC diameter (px) :func:`segment_wbc` would work at in an image when none is given.

    As :func:`segment_wbc` decides it, with the model card's post-processing parameters
    (:class:`WbcParams`): from the WBCs the ``size_model`` (default the bundled ``cells`` model)
    finds in an image of at most ``red_cells_max_pixels`` (default 2,000,000) px, else by the
    ``wbc`` model's own scale search; an image whose long side is over ``block_size`` (default
    2048 px) is measured on its central :data:`ESTIMATE_SIZE`-px square (on a copy of the whole
    image shrunk to that size when the square holds no cell). It is the estimate
    ``hemaseg.segment(image, model="wbc")`` makes when given no ``cell_diameter`` and no ``params``.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray, or str or Path
        The photo. Grey, RGBA (alpha dropped), 16-bit, float (0-1 taken as 0-255) and other
        numeric arrays are converted as :func:`hemaseg.io.images.as_photo` converts them; a str
        or Path is read with :func:`hemaseg.read_image`.
    model : str, Path or tuple, optional
        The WBC segmentation model (a model card whose ``"task"`` is ``"wbc"``), default the
        bundled ``"wbc"``; also a path to a ``.safetensors`` file, a model card ``.json``, an
        ``.onnx`` file or a training run folder, or a ``(model, card)`` tuple as
        :func:`hemaseg.load_model` returns it.
    device : str, optional
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (``cuda`` when torch sees a
        GPU) for the ``wbc`` model; the ``size_model`` runs on the CPU. There is no ``backend``
        argument: the networks run on torch when it is installed, else on ONNX Runtime.

    Returns
    -------
    float or None
        The area-weighted median equivalent diameter of the WBCs found, in px of the input
        image; None if no cell is found, and for an image with nothing in it (flat, or noise:
        :func:`hemaseg.core.content.featureless`), which no network is run on.

    Raises
    ------
    HemasegInputError
        ``image`` is not usable (see :func:`hemaseg.io.images.as_photo`), or ``model`` names no
        bundled model and no readable model file or run folder.
    hemaseg.errors.HemasegUsageError
        An unknown ``device`` or ``cuda`` without a GPU; a ``model`` that is not a ``wbc`` model
        (on an empty image too).

    Examples
    --------
    >>> estimate_diameter(np.full((64, 64, 3), 230, np.uint8)) is None  # nothing in it
    True
    """
    image = as_photo(image)
    device = resolve_device(device)  # 'auto', or 'cuda' without a GPU: one line, not torch's error
    module, card = model_of_task(model, "wbc", device)  # a wrong model is refused, even on an empty image
    if featureless(image):
        return None
    p = WBC.params(card)
    if max(image.shape[:2]) > p.block_size:  # as _segment_blocks measures it
        estimate = _estimate_large(module, card, image, card_range(card, image), DEFAULT_TILE, DEFAULT_OVERLAP, p)
        return None if estimate is None else float(estimate)
    if asks_red_cells(image.shape, p, p.size_model):
        found = found_wbcs(image, p.size_model)[0]
        if found is not None:
            return float(found)
    return _estimate_scale(module, card, image, card_range(card, image), p=p)[0]


def scale_factor(card: dict, cell_diameter: float | None, deadband: float = DEFAULTS.scale_deadband) -> float:
    """Resize factor that brings cells of ``cell_diameter`` px to the model's trained diameter
    (1 within ``deadband`` of it).

    >>> scale_factor({"cell_diameter": 40}, 80), scale_factor({"cell_diameter": 40}, 44), scale_factor({}, 80)
    (0.5, 1.0, 1.0)
    """
    trained = float(card.get("cell_diameter") or 0)
    if not cell_diameter or trained <= 0:
        return 1.0
    factor = trained / float(cell_diameter)
    if 1 / deadband <= factor <= deadband:
        return 1.0
    return clamp_factor(factor)


def segment_wbc(image: np.ndarray, model="wbc", cell_diameter: float | None = None, device: str = "cpu",
                tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, params: WbcParams | None = None
                ) -> Segmentation:
    """Segment WBCs (cytoplasm + nucleus) in an (H, W, 3) uint8 image and split them into instances.

    ``cell_diameter`` (px) rescales the image to the model's trained diameter; when None
    it is estimated from the image. ``model`` is a bundled name, a path, or (module, card).
    ``params`` overrides the post-processing (default: the card's, else :class:`WbcParams`).
    ``classes`` of the result: 0 background, 1 cytoplasm, 2 nucleus; ``instances`` 1..N.
    """
    module, card = get_model(model, device)
    if featureless(image):
        return WBC.empty(image, card, cell_diameter)
    return _segment_wbc(image, module, card, cell_diameter, tile, overlap, params)


CROP_SIDE = 128  # px: the long side single-cell crops are segmented at, many at once (segment_wbc_crops)
# Cells measured at this many times the trained diameter are taken at that scale: the network was trained
# over 0.5-2x on WBCs of 0.67-1.21x the median diameter (1st-99th percentile in wbc-seg), so 1/3 to 2 of it.
CROP_SCALES = (1 / 3, 2.0)
# Crops are post-processed at this share of the scale the network saw (its first level runs at half
# resolution, so its logits hold no finer detail): a quarter of the pixels to clean, split and colour-check.
CROP_POST_SCALE = 0.5
CROP_RANGE_PIXELS = 4096  # a crop's intensity range is taken from this many of its pixels (evenly spaced)


def segment_wbc_crops(images: list[np.ndarray], model="wbc", side: int = CROP_SIDE, device: str = "cpu",
                      params: WbcParams | None = None, batch_size: int = 32, workers: int = 1,
                      post_scale: float = CROP_POST_SCALE) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """WBC (classes, instances, scale) of many single-cell crops at once.

    A single-cell crop is cut around one WBC, so its scale is known well enough for one pass:
    each image is resized so its long side is ``side`` px (a multiple of the network's stride;
    padded to a square with its border colour, normalised on its own range), the crops go
    through the network in batches of ``batch_size``, and each map is post-processed at that
    scale (``post_scale`` of it) for cells of the trained diameter (:func:`postprocess_classes`,
    :func:`red_colour_rules`; ``workers`` threads). An image whose cells there measure outside
    :data:`CROP_SCALES` times the trained diameter, or with no cell though it is larger than
    ``side``, is no crop at that scale: it alone gets one more pass, at the scale its cells
    measured (or twice as large), through :func:`segment_wbc` at its own size. About 6 ms a
    crop on two CPU threads, against about 40 ms through :func:`segment_wbc` each.

    Parameters
    ----------
    images : (H, W, 3) uint8 crops of any sizes.
    model : bundled name, path, or (module, card).
    side : px, the long side each crop is segmented at.
    params : post-processing (default: the card's, else :class:`WbcParams`).
    batch_size : crops through the network at once.
    workers : threads post-processing one batch while the network runs the next.
    post_scale : share of that scale the maps are post-processed at (0.5: the bundled network's
        first level runs at half resolution, so its logits hold no finer detail; a quarter of the
        pixels to clean, split and colour-check).

    Returns
    -------
    list of ((h, w) uint8 classes 0 background, 1 cytoplasm, 2 nucleus; (h, w) int32 instances
    1..N; scale): the maps are the image resized by ``scale`` (h = round(H * scale)).

    Examples
    --------
    >>> classes, instances, scale = segment_wbc_crops([np.full((64, 256, 3), 200, np.uint8)])[0]
    >>> instances.shape, int(instances.max()), scale  # a crop with no cell, segmented at 128 px long
    ((32, 128), 0, 0.5)
    """
    module, card = get_model(model, device)
    p = params or WBC.params(card)
    stride = int(getattr(module, "stride", 32))
    if side % stride:
        raise ValueError(f"side must be a multiple of the network's stride ({stride}); got {side}")
    trained = float(card.get("cell_diameter") or p.fallback_diameter)
    run = as_runner(module)
    out: list[tuple[np.ndarray, np.ndarray, float] | None] = [None] * len(images)
    small_images = []
    for image in images:
        h, w = image.shape[:2]
        f = side / max(h, w)
        small_images.append(cv2.resize(np.ascontiguousarray(image[..., :3]),
                                       (min(side, max(1, round(w * f))), min(side, max(1, round(h * f)))),
                                       interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR))
    todo = []
    for i, small in enumerate(small_images):
        # checked about the scale the network sees (every other pixel is enough), and a crop smaller than that
        # as it is too (enlarged, 8 px of noise turn smooth and pass)
        if featureless(small[::2, ::2]) or (small.shape[0] > images[i].shape[0] and featureless(images[i])):
            out[i] = (np.zeros(small.shape[:2], np.uint8), np.zeros(small.shape[:2], np.int32),
                      small.shape[1] / images[i].shape[1])
        else:
            todo.append(i)

    def post(i: int, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | float | None:
        """(classes, instances, scale) of crop ``i``, or the diameter in its px (None: no cell) for one more pass."""
        small, image = small_images[i], images[i]
        if post_scale != 1:  # the network's logits are upsampled from half resolution: little is lost
            size = (max(1, round(small.shape[1] * post_scale)), max(1, round(small.shape[0] * post_scale)))
            logits = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in logits])
            small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
        scale = small.shape[1] / image.shape[1]
        d_cell = trained * post_scale  # the trained diameter at this scale
        classes, instances = postprocess_classes(logits.argmax(0).astype(np.uint8), d_cell, p)
        d = measure_diameter(instances, min_area=_min_area(d_cell, p))
        if (d is None and side < max(image.shape[:2])) or (
                d is not None and not CROP_SCALES[0] <= d / d_cell <= CROP_SCALES[1]):
            return None if d is None else d / scale
        return (*red_colour_rules(small, classes, instances, d_cell, p, found_red_cells=False), scale)

    again, pending = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            batch = np.empty((len(chunk), side, side, 3), np.float32)
            where = []
            for j, i in enumerate(chunk):
                small = small_images[i]
                (sh, sw), y0, x0 = small.shape[:2], (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
                x = normalize(small, prange=card_range(card, small, max_pixels=CROP_RANGE_PIXELS))
                batch[j] = np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]), 0)
                batch[j, y0:y0 + sh, x0:x0 + sw] = x
                where.append((slice(y0, y0 + sh), slice(x0, x0 + sw)))
            logits = run(batch)
            # This batch is post-processed while the network runs the next one.
            pending += [(i, pool.submit(post, i, logits[j][:, where[j][0], where[j][1]])) for j, i in enumerate(chunk)]
    for i, job in pending:
        res = job.result()
        if isinstance(res, tuple):
            out[i] = res
        else:
            again.append((i, res))
    for i, d in again:
        # One more pass, alone: at the scale its cells measured, or twice as large when none was seen.
        image = np.ascontiguousarray(images[i][..., :3])
        d = d if d is not None else trained / 2 * images[i].shape[1] / small_images[i].shape[1]
        seg = _segment_wbc(image, module, card, d, DEFAULT_TILE, DEFAULT_OVERLAP, p)
        out[i] = (seg.classes, seg.instances, 1.0)
    return out


def _segment_wbc(image: np.ndarray, module: torch.nn.Module, card: dict, cell_diameter: float | None, tile: int,
                 overlap: int, params: WbcParams | None) -> Segmentation:
    """:func:`segment_wbc` of an image known to hold something (:meth:`Task.predict` checked)."""
    p = params or WBC.params(card)
    prange = card_range(card, image)
    if max(image.shape[:2]) > p.block_size:
        return _segment_blocks(module, card, image, prange, cell_diameter, tile, overlap, p)
    post = None
    found = red_found = None
    if cell_diameter is None and asks_red_cells(image.shape, p, p.size_model):
        cell_diameter, found, red_found = found_cells(image, p.size_model)
    if cell_diameter is None:
        # The last measuring pass is the final one: its probabilities and post-processing are reused.
        cell_diameter, probs, factor, post = _estimate_scale(module, card, image, prange, tile, overlap, p)
    else:
        factor = scale_factor(card, cell_diameter, p.scale_deadband)
        probs = predict_probs(module, card, image, factor, tile, overlap, prange, check_content=False)
    measured = bool(cell_diameter)  # (given ones are said so by Task.predict)
    diameter = float(cell_diameter or (float(card.get("cell_diameter") or p.fallback_diameter) / factor))
    classes, instances = post if post is not None else wbc_instances(probs, diameter, p)
    classes, instances = red_colour_rules(image, classes, instances, diameter, p)
    if found is None and red_found is not None and p.red_chroma > 0:
        classes, instances = reject_red_coloured(image, classes, instances, red_found, p.red_chroma)
    if found is not None and p.found_share > 0:
        classes, instances = keep_found_wbcs(classes, instances, found, p.found_share)
    if found is not None and p.found_margin >= 0:
        classes, instances = clip_to_found(classes, instances, found, p.found_margin * diameter,
                                           p.found_agree, p.found_solidity)
    if p.nucleus_contact > 0:
        joined = join_cut_nuclei(classes, instances, p.nucleus_contact * diameter)
        if joined is not instances:
            instances = relabel(joined, np.bincount(joined.ravel()) > 0)
    classes, instances = open_each_cell(classes, instances, p.cell_open)
    objects = wbc_objects(classes, instances, probs)
    return Segmentation(classes, instances, probs, diameter, factor, objects, "measured" if measured else "model")


def _estimate_large(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray, tile: int,
                    overlap: int, p: WbcParams) -> float | None:
    """The WBC diameter of an image longer than ``p.block_size``: at full resolution on the central
    ESTIMATE_SIZE-px square (on a copy of the whole image shrunk to that size the first pass saw small
    WBCs at a quarter of the trained size and the estimate settled 4x off); on the shrunk copy only when
    that square holds no cell. None when neither finds one."""
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - ESTIMATE_SIZE) // 2), max(0, (w - ESTIMATE_SIZE) // 2)
    centre = np.ascontiguousarray(image[y0:y0 + ESTIMATE_SIZE, x0:x0 + ESTIMATE_SIZE])
    estimate = None if featureless(centre) else _estimate_scale(module, card, centre, prange, tile, overlap, p)[0]
    del centre
    if estimate is None:
        shrink = min(1.0, ESTIMATE_SIZE / max(h, w))
        small = downscale(image, shrink)  # a LazyImage (large TIFF) is never read whole
        estimate = _estimate_scale(module, card, small, prange, tile, overlap, p)[0]
        del small
        estimate = estimate / shrink if estimate else None
    return estimate


def _segment_blocks(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray,
                    cell_diameter: float | None, tile: int, overlap: int, p: WbcParams) -> Segmentation:
    """:func:`segment_wbc` of an image longer than ``p.block_size``, region by region.

    The diameter (when not given) is estimated at full resolution on the central square of
    :data:`ESTIMATE_SIZE` px (on a copy of the whole image shrunk to that size if the square is empty);
    then each block of :func:`~hemaseg.engine.blocks.image_blocks` is predicted at the model's
    scale, its argmax taken at the input's scale one class map at a time, post-processed, and
    the WBCs whose centroid lies in its core pasted into the full-size uint8 / int32 outputs
    (a cell already pasted by a neighbouring block is not pasted twice). Object scores (mean
    foreground probability) are taken per block; ``probs`` is a :data:`PROBS_SUMMARY_SIZE` summary.
    ``instances`` are uint16 while the WBCs number at most 65,535 (int32 beyond).
    """
    from scipy import ndimage as ndi

    h, w = image.shape[:2]
    trained = float(card.get("cell_diameter") or 0)
    if cell_diameter is None:
        cell_diameter = _estimate_large(module, card, image, prange, tile, overlap, p)
    factor = scale_factor(card, cell_diameter, p.scale_deadband)
    measured = bool(cell_diameter)
    diameter = float(cell_diameter or ((trained or p.fallback_diameter) / factor))
    margin = int(np.ceil(p.block_margin * diameter))
    core = max(p.block_size - 2 * margin, p.block_size // 4, 1)
    classes = np.zeros((h, w), np.uint8)  # zero pages cost no memory until written
    # uint16 labels while they fit (half the memory of int32 on a large image), int32 beyond.
    instances = np.zeros((h, w), np.uint16)
    s = min(1.0, PROBS_SUMMARY_SIZE / max(h, w))
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    summary: np.ndarray | None = None
    scores: dict[int, float] = {}
    nxt = 1
    blocks = list(image_blocks((h, w), core, margin))
    # a slide's blocks: the batch's bar stood at 0/1 for minutes (a 12000^2 slide took 85-135 s here)
    for block in track(blocks, "blocks", leave=False) if len(blocks) > 1 else blocks:
        release_free_memory()
        oy, ox = block.offset
        region = block.outer_slices
        crop = image[region]
        small_probs = predict_scaled(module, card, crop, factor, tile, overlap, prange)
        if summary is None:
            summary = np.zeros((small_probs.shape[0], sh, sw), np.float32)
        _paste_summary(summary, small_probs, block, s)
        cls_b, background = resize_argmax(small_probs, crop.shape[:2])
        del small_probs
        cls_b, inst_b = postprocess_classes(cls_b, diameter, p)
        # Which block keeps a cell is decided before the colour rule: each block fits its own
        # colour models, and a cell trimmed differently by two blocks could be kept by neither.
        keep = centred_in_core(inst_b, block)
        if len(keep) == 0:
            continue
        # The rules trim cytoplasm and drop whole cells; a kept cell keeps its label (not relabelled here).
        cls_b, inst_b = red_colour_rules(crop, cls_b, inst_b, diameter, p, relabel_cells=False,
                                         found_red_cells=asks_red_cells(image.shape, p))
        if p.nucleus_contact > 0:  # a joined cell keeps its smallest label (kept if that label is)
            inst_b = join_cut_nuclei(cls_b, inst_b, p.nucleus_contact * diameter)
        cls_b, inst_b = open_each_cell(cls_b, inst_b, p.cell_open)
        present = np.bincount(inst_b.ravel())
        keep = [label for label in keep if label < len(present) and present[label]]
        if len(keep) == 0:
            continue
        boxes = ndi.find_objects(inst_b)
        instances = _room_for(instances, nxt + len(keep))
        out_c, out_i = classes[region], instances[region]
        for label in keep:
            sl = boxes[label - 1]
            sel = inst_b[sl] == label
            free = sel & (out_i[sl] == 0)
            n_free = int(free.sum())
            # A cell whose centroid two blocks both place in their core (it straddles the
            # border of the cores) is pasted once, by the first.
            if n_free == 0 or n_free < 0.5 * int(sel.sum()):
                continue
            out_i[sl][free] = nxt
            out_c[sl][free] = cls_b[sl][free]
            scores[nxt] = float(1.0 - background[sl][free].mean())
            nxt += 1
    release_free_memory()
    objects = wbc_objects(classes, instances)
    for o in objects:
        o["score"] = round(scores[o["id"]], 4)
    assert summary is not None
    return Segmentation(classes, instances, summary, diameter, factor, objects, "measured" if measured else "model")


def _room_for(instances: np.ndarray, last: int) -> np.ndarray:
    """``instances``, widened to int32 if its dtype cannot hold label ``last``.

    >>> a = np.zeros((2, 2), np.uint16)
    >>> _room_for(a, 65535) is a, _room_for(a, 65536).dtype
    (True, dtype('int32'))
    """
    return instances if last <= np.iinfo(instances.dtype).max else instances.astype(np.int32)


def _paste_summary(summary: np.ndarray, small_probs: np.ndarray, block: Block, s: float) -> None:
    """Write the core of a block's model-scale probabilities into the downsampled ``summary``."""
    y0, y1, x0, x1 = block.core
    oy0, oy1, ox0, ox1 = block.outer
    sy0, sy1, sx0, sx1 = round(y0 * s), round(y1 * s), round(x0 * s), round(x1 * s)
    if sy1 <= sy0 or sx1 <= sx0:
        return
    fy, fx = small_probs.shape[1] / (oy1 - oy0), small_probs.shape[2] / (ox1 - ox0)
    my0, my1 = int(round((y0 - oy0) * fy)), max(int(round((y1 - oy0) * fy)), int(round((y0 - oy0) * fy)) + 1)
    mx0, mx1 = int(round((x0 - ox0) * fx)), max(int(round((x1 - ox0) * fx)), int(round((x0 - ox0) * fx)) + 1)
    for k, p in enumerate(small_probs):
        part = np.ascontiguousarray(p[my0:my1, mx0:mx1])
        summary[k, sy0:sy1, sx0:sx1] = cv2.resize(part, (sx1 - sx0, sy1 - sy0), interpolation=cv2.INTER_AREA)


# Weak supervision from fields whose every cell is boxed (TXL-PBC, YOLO): pixels in a red-cell box
# and outside every WBC box are background, never cytoplasm; inside a WBC box (plus a margin) the
# loss is told nothing. RED_CELL marks the red-cell background in the loaded mask (the network's
# target is 0 there) so validation can measure how much predicted cytoplasm leaks into red cells.
RED_CELL = 3
WBC_BOX_MARGIN = 0.15  # fraction of a WBC box's side ignored around it (boxes are drawn tight or loose)
# px a weakly labelled field is rescaled to for its median WBC box side: about the median WBC diameter
# of wbc-seg (the pixel-annotated data, 75 px), so both kinds of data show WBCs at one size.
WEAK_WBC_SIDE = 75.0
WBC_PER_RBC = 1.8  # a WBC's diameter in red-cell diameters, to rescale a field boxed without a WBC
WBC_CORE = 0.8  # the ellipse inscribed in a WBC box, shrunk to this share: surely the cell
PSEUDO_CONFIDENCE = 0.9  # a pseudo-label is kept where the labelling model is at least this sure
WEAK_VAL_ITEMS = 48  # weakly labelled fields scored per validation (evenly spaced), to keep epochs short
RED_CELLS_PER_FIELD = 8  # red cells cut from each boxed field for pasting (paste_red_cells)
NEGATIVE_SHARE = 0.15  # of the draws of pixel masks and negatives (masks with no cell) together, the negatives'


def is_weak(mask: np.ndarray) -> bool:
    """The loaded mask is a weakly labelled field's (:func:`weak_wbc_sample`), not a pixel annotation."""
    return bool(((mask == IGNORE) | (mask == RED_CELL)).any())


def box_sides(boxes: list[dict], category: str) -> list[float]:
    """The sides (mean of width and height, px) of the annotation records ``boxes`` of ``category``."""
    return [((b["bounding_box"]["x2"] - b["bounding_box"]["x1"]) + (b["bounding_box"]["y2"] - b["bounding_box"]["y1"]))
            / 2 for b in boxes if b.get("category") == category]


def field_wbc_side(boxes: list[dict]) -> float | None:
    """A boxed field's WBC side (px): its median WBC box side, else :data:`WBC_PER_RBC` red-cell sides;
    None with neither box."""
    wbc, rbc = box_sides(boxes, "wbc"), box_sides(boxes, "rbc")
    return float(np.median(wbc)) if wbc else (WBC_PER_RBC * float(np.median(rbc)) if rbc else None)


def weak_factor(boxes: list[dict]) -> float:
    """The factor :func:`weak_wbc_sample` rescales a boxed field by: its WBC side to :data:`WEAK_WBC_SIDE`
    px (0.25-4x; 1 without a WBC or red-cell box)."""
    return float(np.clip(WEAK_WBC_SIDE / max(field_wbc_side(boxes) or WEAK_WBC_SIDE, 1.0), 0.25, 4.0))


def weak_wbc_sample(image: np.ndarray, boxes: list[dict], labeller=None) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of a field with complete boxes, rescaled so its WBCs are ~:data:`WEAK_WBC_SIDE` px.

    ``boxes`` are annotation records (``category`` and ``bounding_box``). The (H, W) uint8 mask
    is 0 background, :data:`RED_CELL` inside red-cell boxes, and ``IGNORE`` (255) in and around
    WBC boxes and on unboxed pixels within half a WBC of the field's edge. With a ``labeller``
    (:func:`pseudo_labeller`), the pixels of a WBC box outside every red-cell box that it labels
    confidently take its classes, and the others of the box's core or that it calls cell at all
    ``ANY_FOREGROUND`` (cytoplasm or nucleus; the WBC itself is taught, not only what it is not).

    >>> img = np.zeros((200, 200, 3), np.uint8)
    >>> box = lambda c, x1, y1, x2, y2: {"category": c, "bounding_box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}
    >>> im, m = weak_wbc_sample(img, [box("wbc", 10, 10, 85, 85), box("rbc", 180, 0, 200, 20)])
    >>> im.shape, int(m[50, 50]), int(m[2, 198]), int(m[198, 2]), int(m[150, 150])
    ((200, 200, 3), 255, 3, 255, 0)
    """
    f = weak_factor(boxes)
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    mask = np.zeros((nh, nw), np.uint8)

    def rect(b: dict, margin: float = 0.0) -> tuple[slice, slice]:
        bb = b["bounding_box"]
        mx, my = margin * (bb["x2"] - bb["x1"]), margin * (bb["y2"] - bb["y1"])
        y1, y2 = max(0, int((bb["y1"] - my) * nh / h)), min(nh, int(np.ceil((bb["y2"] + my) * nh / h)))
        x1, x2 = max(0, int((bb["x1"] - mx) * nw / w)), min(nw, int(np.ceil((bb["x2"] + mx) * nw / w)))
        return slice(y1, y2), slice(x1, x2)

    for b in boxes:
        if b.get("category") == "rbc":
            mask[rect(b)] = RED_CELL
    # A WBC cut by the field's edge may have no box: plain background near the edge is not taught.
    band = int(WEAK_WBC_SIDE / 2)
    edge = np.ones((nh, nw), bool)
    edge[band:nh - band, band:nw - band] = False
    mask[edge & (mask == 0)] = IGNORE
    for b in boxes:
        if b.get("category") == "wbc":
            mask[rect(b, WBC_BOX_MARGIN)] = IGNORE
    if labeller is not None:
        # Inside a WBC box, off every red-cell box: the pixels a model labels confidently are taught;
        # the rest of the box's core (the cell itself: an ellipse of WBC_CORE of the box) and every
        # other pixel the model calls cell, however unsure, as "cytoplasm or nucleus" (ANY_FOREGROUND):
        # a granular pink or a pale, vacuolated cytoplasm is easily unsure, and with red cells taught
        # as background it would otherwise be learnt away (a red cell touching the WBC lies in its
        # own box, so it is never taught as cell).
        classes, sure = labeller(image)
        inside, core = np.zeros((nh, nw), bool), np.zeros((nh, nw), bool)
        yy, xx = np.mgrid[:nh, :nw]
        for b in boxes:
            if b.get("category") == "wbc":
                ys, xs = rect(b)
                inside[ys, xs] = True
                cy, cx = (ys.start + ys.stop - 1) / 2, (xs.start + xs.stop - 1) / 2
                ry, rx = max(1.0, WBC_CORE * (ys.stop - ys.start) / 2), max(1.0, WBC_CORE * (xs.stop - xs.start) / 2)
                core |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        for b in boxes:
            if b.get("category") == "rbc":
                inside[rect(b)] = False
        take = inside & sure
        mask[take] = classes[take]
        mask[inside & ~sure & (core | (classes > 0))] = ANY_FOREGROUND
    return image, mask


def red_cell_crops(image: np.ndarray, boxes: list[dict], factor: float, rng: np.random.Generator,
                   most: int = RED_CELLS_PER_FIELD) -> list[np.ndarray]:
    """RGBA crops of up to ``most`` clean, whole red cells (:func:`hemaseg.classical.box_cell`) of a
    boxed field, resized by ``factor`` (the field's rescaling in :func:`weak_wbc_sample`)."""
    rbc = [b["bounding_box"] for b in boxes if b.get("category") == "rbc"]
    out = []
    for k in rng.permutation(len(rbc)):
        if len(out) >= most:
            break
        b = rbc[k]
        crop = box_cell(image, (int(b["x1"]), int(b["y1"]), int(np.ceil(b["x2"])), int(np.ceil(b["y2"]))))
        if crop is not None:
            h, w = crop.shape[:2]
            size = (max(1, round(w * factor)), max(1, round(h * factor)))
            out.append(cv2.resize(crop, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR))
    return out


def paste_red_cells(image: np.ndarray, mask: np.ndarray, crops: list[np.ndarray], rng: np.random.Generator,
                    count: tuple[int, int] = (3, 8), size: tuple[float, float] = (0.4, 0.8),
                    max_overlap: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """Real red cells pressed against the WBCs of a pixel-annotated image, as background.

    Each of ``count`` cells (RGBA ``crops`` of other labs' fields) is resized to a ``size`` share of
    the WBC's diameter, turned, and slid towards the WBC's centre along a random direction until it
    covers up to ``max_overlap`` of its area of the WBC; it is drawn under the WBC (the annotation
    stays exact: a pasted pixel is a background pixel). Its colour is its own lab's (40 %), this
    image's own red cells' (35 %) or the WBC cytoplasm's (25 %: red cells are told apart by shape
    and texture, not by colour). ``mask`` holds class indices (0 background, 1 cytoplasm, 2 nucleus).

    >>> yy, xx = np.mgrid[:120, :120]
    >>> img = np.full((120, 120, 3), 230, np.uint8); m = np.zeros((120, 120), np.uint8)
    >>> m[(yy - 60) ** 2 + (xx - 60) ** 2 < 900] = 1; m[(yy - 60) ** 2 + (xx - 60) ** 2 < 200] = 2
    >>> cell = np.zeros((30, 30, 4), np.uint8); cell[..., :3] = (200, 80, 90)
    >>> cell[..., 3] = 255 * ((np.mgrid[:30, :30][0] - 15) ** 2 + (np.mgrid[:30, :30][1] - 15) ** 2 < 196)
    >>> out, m2 = paste_red_cells(img, m, [cell], np.random.default_rng(0))
    >>> bool((m2 == m).all()), int(((out != 230).any(-1) & (m == 0)).sum()) > 500, bool((out[m > 0] == 230).all())
    (True, True, True)
    """
    cell = mask > 0
    if not crops or cell.sum() < 50:
        return image, mask
    h, w = mask.shape
    ys, xs = np.nonzero(cell)
    cy, cx = ys.mean(), xs.mean()
    d_wbc = 2 * np.sqrt(cell.sum() / np.pi)
    out = image.astype(np.float32)
    mode = rng.choice(3, p=[0.4, 0.35, 0.25])
    target = None
    if mode > 0:
        lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB)
        bg = ~cell
        # this image's own red cells (the darker part of its background), or the WBC's cytoplasm
        where = bg & (lab[..., 0] < np.percentile(lab[..., 0][bg], 40)) if mode == 1 else mask == 1
        target = lab[where].mean(0) if where.sum() >= 20 else None
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        crop = crops[int(rng.integers(len(crops)))]
        crop = np.rot90(crop, int(rng.integers(4)))
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        s = float(rng.uniform(*size)) * d_wbc / max(crop.shape[:2])
        ch, cw = max(4, round(crop.shape[0] * s)), max(4, round(crop.shape[1] * s))
        crop = cv2.resize(np.ascontiguousarray(crop), (cw, ch), interpolation=cv2.INTER_LINEAR)
        rgb, alpha = crop[..., :3].astype(np.float32), crop[..., 3].astype(np.float32) / 255
        if target is not None:
            lab = cv2.cvtColor(crop[..., :3], cv2.COLOR_RGB2LAB).astype(np.float32)
            inside = alpha > 0.5
            if inside.sum() >= 10:
                lab[inside] += np.asarray(target, np.float32) - lab[inside].mean(0)
                rgb = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)  # a soft rim, not a cut-out's hard edge
        theta = rng.uniform(0, 2 * np.pi)
        dy, dx = np.sin(theta), np.cos(theta)
        allowed = float(rng.uniform(0, max_overlap)) * (alpha > 0.5).sum()
        placed = None
        for r in np.arange(d_wbc / 2 + max(ch, cw), 0, -2.0):
            y0, x0 = int(round(cy + r * dy - ch / 2)), int(round(cx + r * dx - cw / 2))
            ya, yb, xa, xb = max(0, y0), min(h, y0 + ch), max(0, x0), min(w, x0 + cw)
            if ya >= yb or xa >= xb:
                continue
            a = alpha[ya - y0:yb - y0, xa - x0:xb - x0]
            if ((a > 0.5) & cell[ya:yb, xa:xb]).sum() > allowed:
                break
            placed = (y0, x0, ya, yb, xa, xb)
        if placed is None:
            continue
        y0, x0, ya, yb, xa, xb = placed
        a = alpha[ya - y0:yb - y0, xa - x0:xb - x0] * ~cell[ya:yb, xa:xb]  # under the WBC
        out[ya:yb, xa:xb] = a[..., None] * rgb[ya - y0:yb - y0, xa - x0:xb - x0] + (1 - a[..., None]) * out[ya:yb, xa:xb]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def pseudo_labeller(model="wbc", confidence: float = PSEUDO_CONFIDENCE, device: str = "cpu"):
    """image -> ((H, W) uint8 classes, (H, W) bool sure) of a WBC ``model`` run at the field's scale
    (fields are rescaled to the trained WBC size), on the image and on a hue-shifted mirror of it:
    sure = both views agree and both give their class a probability of at least ``confidence``."""
    module, card = get_model(model, device)

    def label(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hsv = cv2.cvtColor(np.ascontiguousarray(image[:, ::-1]), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 12) % 180  # +24 degrees: another stain's hue
        other = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        p1 = predict_probs(module, card, image)
        p2 = predict_probs(module, card, other)[:, :, ::-1]
        c1, c2 = p1.argmax(0), p2.argmax(0)
        sure = (c1 == c2) & (p1.max(0) >= confidence) & (p2.max(0) >= confidence)
        return c1.astype(np.uint8), sure

    return label


class WbcTask(Task):
    """WBC boundary and nucleus (wbc-seg convention 0/128/255)."""

    name = "wbc"
    classes = ("background", "cytoplasm", "nucleus")
    label_values = (0, 128, 255)
    colors = {1: (0, 200, 255), 2: (255, 0, 200)}
    default_model = "wbc"
    description = "WBC boundary and nucleus (wbc-seg convention 0/128/255)"
    depends = DEPENDS
    classical_methods = tuple(WBC_METHODS)
    Params = WbcParams
    # TrainConfig's defaults are this task's: pixel masks 0.7, weakly labelled fields 0.3 (at 0.4 the
    # in-lab Dice fell 0.003 / 0.008), images with no cell (negatives: benchmarks/wbc_negatives.py) a
    # NEGATIVE_SHARE of what masks and negatives draw together; shares of the strata present, normalised
    # (masks and boxes alone: 70 / 30 %; with negatives too: 62 / 27 / 11 %).
    train_defaults: dict = {"stratum_weights": {"masks": 0.7, "boxes": 0.3,
                                                "empty": 0.7 * NEGATIVE_SHARE / (1 - NEGATIVE_SHARE)}}
    mean_keys = ("dice_cell", "iou_cell", "dice_nucleus", "iou_nucleus")
    train_options = ("arch", "init", "workers", "split", "paste_red_cells")
    _labeller = None  # pseudo-labels inside the WBC boxes of weakly labelled fields (made on first use)
    _red_cells: dict  # per boxed field (image path): red cells cut for pasting (load_sample)

    def __init__(self) -> None:
        self._red_cells = {}

    def segment(self, image, model, cell_diameter=None, device="cpu", tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP,
                tta=None, params=None) -> Segmentation:
        module, card = get_model(model, device)  # Task.predict has checked the image's content
        return _segment_wbc(image, module, card, cell_diameter, tile, overlap, params)

    def segment_classical(self, image: np.ndarray, method: str) -> Segmentation:
        """A classical method (:data:`hemaseg.classical.WBC_METHODS`), then the same red-cell colour
        rules as the model's output (:func:`red_colour_rules`, default parameters)."""
        seg = segment_classical(image, "wbc", method)
        if not seg.objects:
            return seg
        classes, instances = red_colour_rules(image, seg.classes, seg.instances, seg.cell_diameter,
                                              found_red_cells=False)
        if classes is seg.classes:
            return seg
        out = wbc_segmentation(classes, instances)
        out.cell_diameter = seg.cell_diameter  # the diameter the rules were applied at
        return out

    def find_samples(self, root: str | Path) -> list[Pair]:
        """Image/mask pairs (wbc-seg), else fields with complete YOLO boxes (TXL-PBC) as weak labels."""
        pairs = find_pairs(root)
        if pairs:
            return pairs
        try:
            return [Pair(image, label) for image, label in find_yolo(root) if label is not None]
        except HemasegInputError:
            if not Path(root).is_dir():
                raise
            raise HemasegInputError(root, "no image/mask pairs (x.bmp beside x.png, x.jpg beside x_mask.png, or "
                                          "images/ + masks/) nor fields with YOLO boxes (x.txt beside x.png)") from None

    def find_scored(self, root: str | Path, failed: list[dict]) -> list[Pair]:
        """Only pixel masks are scored: a YOLO field's boxes (weak labels, red cells and ignored pixels in
        them) would be taken as the WBC's outline by Dice; benchmarks/wbc_labs.py measures those fields."""
        pairs = super().find_scored(root, failed)
        weak = [p for p in pairs if p.mask.suffix.lower() == ".txt"]
        if weak and len(weak) == len(pairs):
            raise HemasegInputError(root, "YOLO boxes, no pixel masks: Dice needs masks (x.bmp beside x.png, "
                                          "images/ + masks/); python benchmarks/wbc_labs.py scores boxed fields")
        return [p for p in pairs if p.mask.suffix.lower() != ".txt"]

    def load_sample(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        if pair.mask.suffix.lower() != ".txt":
            return load_pair(pair)
        image = read_image(pair.image)
        names = yolo_names(pair.mask.parent)
        boxes = [{**m, "category": category_of(m["class_name"])}
                 for m in read_yolo_labels(pair.mask, names, *image.shape[:2])]
        if self._labeller is None:
            self._labeller = pseudo_labeller(self.default_model)
        field, mask = weak_wbc_sample(image, boxes, self._labeller)
        rng = np.random.default_rng(zlib.crc32(pair.image.name.encode()))
        self._red_cells[str(pair.image)] = red_cell_crops(image, boxes, field.shape[0] / image.shape[0], rng)
        return field, mask

    def train_data(self, cfg, run: Path, state: dict) -> tuple:
        """:func:`~hemaseg.engine.train.pair_data`; with ``cfg.paste_red_cells`` that share of the
        pixel-annotated draws gets real red cells of the training split's boxed fields pressed
        against its WBCs (:func:`paste_red_cells`)."""
        dataset, val_items, card = pair_data(self, cfg, run, state)
        # Boxed fields teach where a WBC is not; the WBC size and the Dice that chooses the checkpoint need pixel masks
        for part, has_masks in (("training", card["cell_diameter"] > 0),
                                ("validation", any(self.stratum(*item) == "masks" for item in val_items))):
            if not has_masks:
                raise HemasegInputError(", ".join(cfg.data), f"no pixel-annotated WBC in the {part} split (boxed "
                                                             "fields alone give no WBC size nor Dice to choose the "
                                                             "checkpoint on): add image/mask pairs such as wbc-seg's, "
                                                             "at least two (one is kept for validation), or name "
                                                             "the split with --split")
        chance = float(getattr(cfg, "paste_red_cells", 0.0))
        if chance > 0:
            train_pairs, _ = read_split(run / "split.json", cfg.data)
            crops = [c for p in train_pairs for c in self._red_cells.get(str(p.image), [])]
            if not crops:
                raise HemasegInputError(", ".join(cfg.data), "paste_red_cells needs boxed fields (YOLO, such as "
                                                             "TXL-PBC) among the training data to cut red cells from")

            def pre(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
                if rng.random() >= chance or is_weak(mask):
                    return image, mask
                return paste_red_cells(image, mask, crops, rng)

            dataset.pre = pre
            card["training"]["paste_red_cells"] = {"chance": chance, "red_cells": len(crops)}
        return dataset, val_items, card

    def target(self, mask: np.ndarray) -> np.ndarray:
        return np.where(mask == RED_CELL, 0, mask).astype(np.uint8) if (mask == RED_CELL).any() else mask

    def measure_mask(self, mask: np.ndarray) -> np.ndarray:
        # A weakly labelled field does not measure: its red-cell boxes and ignored pixels are not
        # cells, and its pseudo-labels are the sure parts of cells (fragments), not whole ones.
        return np.zeros_like(mask) if is_weak(mask) else mask

    def stratum(self, image: np.ndarray, mask: np.ndarray) -> str:
        """``boxes`` (a weakly labelled field), ``empty`` (a mask with no cell: a negative, red cells
        alone) or ``masks``."""
        return "boxes" if is_weak(mask) else ("masks" if mask.any() else "empty")

    def validate(self, probs_of, items: list, cfg, data_card: dict) -> dict[str, float]:
        """Dice / IoU on the pixel-annotated items with a cell; on those with none (negatives)
        ``false_cell``, the share of their pixels predicted cell; on weakly labelled ones ``leak``,
        the fraction of predicted cytoplasm lying in red-cell boxes outside every WBC box."""
        kinds = [self.stratum(image, target) for image, target in items]
        weak, full, empty = ([item for item, k in zip(items, kinds) if k == kind]
                             for kind in ("boxes", "masks", "empty"))
        scores = [wbc_scores(probs_of(image).argmax(0), target) for image, target in full]
        out = means(scores, list(scores[0])) if scores else {}  # (a binary mask's nucleus: NaN, not scored)
        if empty:
            out["false_cell"] = float(np.mean([(probs_of(image).argmax(0) > 0).mean() for image, _ in empty]))
        if weak:
            leaked = cyto = 0
            for i in np.linspace(0, len(weak) - 1, min(len(weak), WEAK_VAL_ITEMS)).round().astype(int):
                image, mask = weak[i]
                pred = probs_of(image).argmax(0) == 1
                leaked += int((pred & (mask == RED_CELL)).sum())
                cyto += int(pred.sum())
            out["leak"] = leaked / max(cyto, 1)
        return out

    def headline(self, val: dict[str, float]) -> float:
        """Mean of cell and nucleus Dice (the cell alone when no nucleus is annotated), times (1 - leak) when weakly labelled fields are validated."""
        if not val or "dice_cell" not in val:
            return float("nan")
        nucleus = val["dice_nucleus"]  # NaN when the validation masks are binary (no nucleus drawn): the cell alone
        both = val["dice_cell"] if np.isnan(nucleus) else (val["dice_cell"] + nucleus) / 2
        return both * (1.0 - val.get("leak", 0.0))

    def score(self, seg: Segmentation, target: np.ndarray, image: np.ndarray) -> dict:
        return {**wbc_scores(seg.classes, target), "count": seg.count}

    def row_title(self, row: dict) -> str:
        nuc = "-" if np.isnan(row["dice_nucleus"]) else f"{row['dice_nucleus']:.3f}"  # a binary mask: not scored
        return f"pred: cell {row['dice_cell']:.3f} nuc {nuc}"

    def panels(self, image: np.ndarray, target: np.ndarray, pred: tuple) -> list[np.ndarray]:
        # a binary mask's cells (ANY_FOREGROUND, parts unknown) drawn as cell: the panel was blank there
        return super().panels(image, np.where(target == ANY_FOREGROUND, 1, target), pred)

    def table(self, res: dict) -> list[str]:
        return plain_table(res, [("dice_cell", "dice_cell"), ("dice_nucleus", "dice_nuc"), ("iou_cell", "iou_cell"),
                                 ("iou_nucleus", "iou_nuc")])


WBC = register_task(WbcTask())
