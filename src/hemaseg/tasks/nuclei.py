"""The ``nuclei`` task (seed 001): nuclei instances of the Data Science Bowl images
(fluorescence, brightfield, histology). Labels on disk are uint16 instances (0 background,
1..N); the network predicts background / nucleus interior / nucleus boundary, and a
watershed from the interiors splits touching nuclei. Bright-background images are inverted
when the model was trained so. Knobs: :class:`NucleiParams`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from hemaseg.classical import NUCLEI_METHODS, segment_classical
from hemaseg.core.labels import drop_small, instance_objects, measure_diameter, nearest_label
from hemaseg.core.resize import clamp_factor
from hemaseg.core.result import Segmentation
from hemaseg.data.transforms import is_bright_background
from hemaseg.engine.evaluate import instance_panels, means
from hemaseg.engine.predict import card_range, get_model, predict_probs
from hemaseg.engine.task import Task
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.engine.train import TrainConfig, pair_data
from hemaseg.errors import HemasegUsageError
from hemaseg.io.datasets import Pair, find_dsb, find_pairs, load_instances
from hemaseg.metrics import dsb_scores
from hemaseg.progress import warn_once
from hemaseg.tasks.registry import register_task

log = logging.getLogger(__name__)

DEPENDS: tuple[str, ...] = ()


@dataclass
class NucleiParams:
    """Post-processing of the ``nuclei`` task (a model card's ``"postprocess"`` overrides the defaults).

    Parameters
    ----------
    min_nucleus_fraction : smallest nucleus kept, as a fraction of the area of a nucleus of the
        image's diameter.
    seed_threshold : interior probability above which a pixel seeds a nucleus.
    fg_threshold : interior + boundary probability above which a pixel is nucleus.
    depth_threshold : a model with a ``depth`` output (``hemaseg train nuclei --depth-weight``): depth
        (distance to the nucleus' edge over its deepest pixel's, 0-1) above which a pixel may seed a
        nucleus; the watershed then floods the foreground down the depth.
    depth_h : such a model: seeds are the depth's maxima standing at least this high above the
        saddle to a deeper one (h-maxima), so touching nuclei separated by a shallow dip are split
        whatever height the predicted depth reaches; 0: seeds are the regions above ``depth_threshold``.
    fallback_diameter : px, the trained nucleus diameter assumed when a card gives none.
    specialists : an image whose modality (:func:`modality`) the model card's ``"specialists"``
        names a model for (e.g. ``{"histology": "nuclei-tissue"}``) is segmented by that model,
        with its own post-processing; False: always by the model given.

    Examples
    --------
    >>> NucleiParams().min_nucleus_fraction
    0.04
    """

    min_nucleus_fraction: float = 0.04
    seed_threshold: float = 0.5
    fg_threshold: float = 0.5
    depth_threshold: float = 0.5
    depth_h: float = 0.1
    fallback_diameter: float = 20.0
    specialists: bool = True

    # Each number's allowed range (inclusive; None: open), checked by ``--post`` and ``params=``.
    RANGES: ClassVar[dict] = {
        "min_nucleus_fraction": (0.0, 4.0), "seed_threshold": (0.0, 1.0), "fg_threshold": (0.0, 1.0),
        "depth_threshold": (0.0, 1.0), "depth_h": (0.0, 10.0), "fallback_diameter": (2.0, 5000.0)}


DEFAULTS = NucleiParams()


def _min_area(diameter: float, p: NucleiParams = DEFAULTS) -> int:
    return max(int(p.min_nucleus_fraction * np.pi * (diameter / 2) ** 2), 4)


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


def nuclei_depth(labels: np.ndarray) -> np.ndarray:
    """Each nucleus' depth: a pixel's distance to its nucleus' edge (background or another nucleus)
    over the deepest pixel's of that nucleus, 0 outside: (H, W) float32 in [0, 1], 1 at every centre.

    >>> lab = np.zeros((5, 12), np.uint16); lab[:, :5] = 1; lab[:, 5:] = 2
    >>> (3 * nuclei_depth(np.pad(lab, 1))[3]).round().astype(int).tolist()  # two touching nuclei, in thirds
    [0, 1, 2, 3, 2, 1, 1, 2, 3, 3, 3, 2, 1, 0]
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = labels.astype(np.int32)
    if not labels.any():
        return np.zeros(labels.shape, np.float32)
    inside = (labels > 0) & ~find_boundaries(labels, mode="inner")
    depth = np.where(labels > 0, ndi.distance_transform_edt(inside) + 1, 0).astype(np.float32)
    deepest = np.zeros(int(labels.max()) + 1, np.float32)
    deepest[1:] = ndi.maximum(depth, labels, np.arange(1, len(deepest)))
    return depth / np.maximum(deepest[labels], 1)


def nuclei_instances(probs: np.ndarray, min_area: int = 8, diameter: float | None = None,
                     seed_threshold: float = 0.5, fg_threshold: float = 0.5,
                     depth_threshold: float = 0.5, depth_h: float = 0.1) -> np.ndarray:
    """Nuclei instances from (3, H, W) background/interior/boundary probabilities: (H, W) int32 labels 1..N.

    Seeds are the connected interiors (the boundary class keeps touching nuclei apart).
    With ``diameter`` (px, the nuclei's typical size) seeds are instead the maxima of the
    interiors' smoothed distance transform at least a third of a diameter apart, so two
    nuclei whose interiors still touch are split too (interiors without such a maximum
    keep a seed of their own). Each foreground component is flooded from its seeds by a
    watershed; foreground without a seed (a nucleus too small for an interior) is an
    instance of its own. Watershed runs only on components holding two or more seeds,
    so the cost follows the touching nuclei, not the image size.

    A fourth channel is a model's predicted depth (:func:`nuclei_depth`): seeds are then the
    connected regions deeper than ``depth_threshold`` (with ``depth_h`` > 0, the depth's h-maxima
    among them) and the foreground is flooded down the depth (``diameter`` and ``seed_threshold`` unused).

    >>> p = np.zeros((3, 9, 16), np.float32); p[0] = 1
    >>> for x0 in (1, 8):
    ...     p[:, 1:8, x0:x0 + 7] = [[[0]], [[0.1]], [[0.9]]]; p[:, 3:6, x0 + 2:x0 + 5] = [[[0]], [[0.9]], [[0.1]]]
    >>> int(nuclei_instances(p, min_area=4).max())
    2
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = (probs[1] + probs[2]) > fg_threshold
    has_depth = probs.shape[0] > 3
    interior = ((probs[3] > depth_threshold) if has_depth else (probs[1] > seed_threshold)) & fg
    n_fg, comps = cv2.connectedComponents(fg.astype(np.uint8), connectivity=4)
    if n_fg <= 1:
        return np.zeros(fg.shape, np.int32)
    if has_depth and depth_h > 0:
        from skimage.morphology import h_maxima

        interior &= h_maxima(probs[3].astype(np.float32), depth_h).astype(bool)
    n_int, markers = cv2.connectedComponents(interior.astype(np.uint8), connectivity=4)
    relief = -probs[3] if has_depth else -probs[1]
    if diameter is not None and n_int > 1 and not has_depth:
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


MODALITIES = ("fluorescence", "brightfield", "histology")


def trained_modalities(cfg) -> list[str]:
    """The modalities a training run draws (those ``cfg.stratum_weights`` gives a weight; every
    one when it gives none), in :data:`MODALITIES` order.

    >>> from types import SimpleNamespace
    >>> trained_modalities(SimpleNamespace(stratum_weights={"fluorescence": 0.0, "histology": 1.0}))
    ['brightfield', 'histology']
    """
    weights = getattr(cfg, "stratum_weights", None) or {}
    return [m for m in MODALITIES if weights.get(m, 1.0) > 0]


def modality(image: np.ndarray) -> str:
    """Imaging modality of a DSB-style image: fluorescence (grey, dark background),
    brightfield (grey, light background) or histology (coloured stain).

    >>> fl = np.zeros((8, 8, 3), np.uint8); fl[2:4, 2:4] = 200
    >>> he = 255 - fl; he[..., 1] //= 2
    >>> modality(fl), modality(255 - fl), modality(he)
    ('fluorescence', 'brightfield', 'histology')
    """
    rgb = image.astype(np.int16)
    grey = int(np.abs(rgb[..., 0] - rgb[..., 1]).max()) <= 2 and int(np.abs(rgb[..., 1] - rgb[..., 2]).max()) <= 2
    if not grey:
        return "histology"
    return "brightfield" if is_bright_background(image) else "fluorescence"


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: float = 8.0) -> np.ndarray:
    """Smooth random field in [0, 1] of ``shape`` varying over about ``cells`` blobs across (drawn small, resized)."""
    h, w = shape
    f = cells / max(h, w)
    small = rng.random((max(2, round(h * f) + 2), max(2, round(w * f) + 2))).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _signal(image: np.ndarray) -> np.ndarray:
    """A fluorescence image's brightness in [0, 1] (1st-99.5th percentile stretched), (H, W) float32."""
    g = image[..., :3].astype(np.float32).mean(-1)
    lo, hi = np.percentile(g, (1, 99.5))
    return np.clip((g - lo) / max(float(hi - lo), 1.0), 0, 1)


def _nucleus_radius(labels: np.ndarray) -> float:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.sqrt(np.median(areas) / np.pi)) if len(areas) else 8.0


def as_brightfield(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fluorescence image (bright nuclei on black) redrawn as DSB's brightfield images look:
    dark nuclei inside large grey cells with darker rims on a light background; (H, W, 3) uint8 grey.
    The nuclei keep their place and texture, so ``labels`` (instances) still hold.

    Examples
    --------
    >>> img = np.zeros((64, 64, 3), np.uint8); lab = np.zeros((64, 64), np.uint16)
    >>> img[28:36, 28:36] = 220; lab[28:36, 28:36] = 1
    >>> bf = as_brightfield(img, lab, np.random.default_rng(0))
    >>> bool(bf[32, 32, 0] < bf[20, 32, 0] < bf[2, 2, 0]), modality(bf)  # nucleus < cell < background
    (True, 'brightfield')
    """
    h, w = labels.shape
    sig = _signal(image)
    r = _nucleus_radius(labels)
    background = rng.uniform(0.82, 0.97)
    out = np.full((h, w), background, np.float32)
    if labels.any():
        # Cells: every pixel within a few nucleus radii of a nucleus (ragged outline), split between nuclei.
        dist = cv2.distanceTransform((labels == 0).view(np.uint8), cv2.DIST_L2, 5)
        reach = rng.uniform(2.0, 5.0) * r * (0.7 + 0.6 * _smooth_noise((h, w), rng, 12))
        owner = np.where(dist < reach, nearest_label(labels), 0)
        level = rng.uniform(0.55, 0.88, int(labels.max()) + 1).astype(np.float32)
        body = owner > 0
        out[body] = background * level[owner[body]]
        # A darker rim where a cell meets the background or another cell.
        rim = cv2.morphologyEx(owner.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[rim & body] *= rng.uniform(0.75, 0.95)
    out *= 1 - rng.uniform(0.45, 0.85) * sig  # nuclei (and any unlabelled bright thing) dark
    out *= 1 + 0.08 * (_smooth_noise((h, w), rng, 24) - 0.5)  # uneven lamp and cytoplasm
    out += rng.normal(0, rng.uniform(0.005, 0.02), (h, w)).astype(np.float32)
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    grey = np.clip(out * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, -1)


# Ruifrok & Johnston's optical densities of haematoxylin and eosin (RGB), the H&E look's stain vectors.
HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
EOSIN = np.array([0.07, 0.99, 0.11], np.float32)


def as_histology(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fluorescence image redrawn as an H&E stain (Beer-Lambert with jittered stain vectors):
    haematoxylin where the nuclei shine, eosin textured over the tissue; (H, W, 3) uint8. The
    nuclei keep their place, so ``labels`` still hold.

    Examples
    --------
    >>> img = np.zeros((64, 64, 3), np.uint8); lab = np.zeros((64, 64), np.uint16)
    >>> img[28:36, 28:36] = 220; lab[28:36, 28:36] = 1
    >>> he = as_histology(img, lab, np.random.default_rng(0))
    >>> bool(he[32, 32].sum() < he[4, 4].sum()), modality(he)  # dark purple nucleus, lighter tissue
    (True, 'histology')
    """
    h, w = labels.shape
    sig = _signal(image)
    hx = np.clip(HAEMATOXYLIN + rng.normal(0, 0.06, 3), 0.05, None)
    eo = np.clip(EOSIN + rng.normal(0, 0.06, 3), 0.02, None)
    hx, eo = hx / np.linalg.norm(hx), eo / np.linalg.norm(eo)
    h_conc = sig * rng.uniform(0.8, 1.8) + rng.uniform(0.0, 0.2) * _smooth_noise((h, w), rng, 16)
    e_conc = rng.uniform(0.05, 0.5) * (0.3 + 0.7 * _smooth_noise((h, w), rng, rng.uniform(6, 30)))
    od = h_conc[..., None] * hx + e_conc[..., None] * eo
    od += rng.normal(0, 0.02, od.shape).astype(np.float32)
    rgb = 255 * np.exp(-od)
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), rng.uniform(0.4, 1.0))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def modality_transfer(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, chance: float,
                      window: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """With probability ``chance`` a fluorescence training image becomes brightfield-like or H&E-like
    (:func:`as_brightfield`, :func:`as_histology`, even odds), first cut to a random ``window`` px
    square when larger (the augmentation crops far smaller); other images pass unchanged."""
    if rng.random() >= chance or modality(image) != "fluorescence":
        return image, labels
    h, w = labels.shape
    y = int(rng.integers(0, h - window + 1)) if h > window else 0
    x = int(rng.integers(0, w - window + 1)) if w > window else 0
    image, labels = image[y:y + window, x:x + window], labels[y:y + window, x:x + window]
    redraw = as_brightfield if rng.random() < 0.5 else as_histology
    return redraw(image, labels, rng), labels


def _dsb_or_pairs(root: str | Path, failed: list[dict] | None = None) -> list[Pair]:
    """A folder's DSB samples, else its image/label pairs (:func:`~hemaseg.io.datasets.find_pairs`); pairs
    beside DSB samples are said to be left out (they were scored and trained on never, without a word)."""
    dsb = find_dsb(root, failed)
    if not dsb:
        return find_pairs(root, failed)
    beside = find_pairs(root)
    if beside:
        warn_once(log, (str(root), "pairs beside DSB"), "%s: %d image/label pair(s) beside its DSB samples are not "
                  "read (%s, ...): give them in a folder of their own, a second --data", root, len(beside),
                  beside[0].image)
    return dsb


def measure_nuclei(instances: np.ndarray, min_area: int = 30, merged: float = 3.0) -> float | None:
    """:func:`~hemaseg.core.labels.measure_diameter` of nuclei instances without the blobs over
    ``merged`` x the median nucleus diameter: clumps a first pass could not split (tissue) would
    otherwise outweigh every real nucleus in the area-weighted median and shrink the image for nothing.

    >>> lab = np.zeros((200, 200), np.int32)
    >>> for k, (y, x) in enumerate([(10, 10), (10, 40), (40, 10), (40, 40)], 1):
    ...     lab[y:y + 12, x:x + 12] = k
    >>> lab[80:200, 80:200] = 5  # one merged clump, larger than the four nuclei together
    >>> 12 < measure_nuclei(lab, min_area=4) < 15
    True
    """
    from skimage.measure import regionprops

    regions = [r for r in regionprops(instances) if r.area >= min_area]
    if not regions:
        return None
    median = float(np.median([r.equivalent_diameter_area for r in regions]))
    keep = np.zeros(int(instances.max()) + 1, bool)
    for r in regions:
        keep[r.label] = r.equivalent_diameter_area <= merged * median
    return measure_diameter(np.where(keep[instances], instances, 0), min_area=min_area)


def _finder(p: NucleiParams):
    """:func:`nuclei_instances` with ``p``'s thresholds (``segment_nuclei`` and training's validation alike)."""
    return partial(nuclei_instances, seed_threshold=p.seed_threshold, fg_threshold=p.fg_threshold,
                   depth_threshold=p.depth_threshold, depth_h=p.depth_h)


def nuclei_factor(card: dict, diameter: float | None, given: bool = False) -> float:
    """Resize factor for nuclei of ``diameter`` px: 1 inside the sizes the model was trained on
    (5th-95th percentile of training nuclei times the scale augmentation's range), else what
    brings them to the trained median. A diameter the user ``given`` is trusted above the sizes: 1 only
    up to the 95th percentile itself (a measured one above it may be the pieces of larger nuclei, which
    :func:`fragments_check_needed` checks; a given 78 px kept an enlarged image at its scale: DSB 0.01);
    below them as a measured one (an image enlarged 2-3x more would cost 4-9x the time).

    >>> card = {"cell_diameter": 18.0, "diameter_range": [10.0, 49.0], "training": {"scale_range": [0.5, 2.0]}}
    >>> nuclei_factor(card, 60.0), nuclei_factor(card, 360.0), nuclei_factor(card, None)
    (1.0, 0.1, 1.0)
    >>> nuclei_factor(card, 60.0, given=True), nuclei_factor(card, 30.0, given=True), nuclei_factor(card, 6.0, True)
    (0.3, 1.0, 1.0)
    """
    trained = float(card.get("cell_diameter") or 0)
    if not diameter or trained <= 0:
        return 1.0
    lo, hi = card.get("diameter_range") or [trained / 1.25, trained * 1.25]
    smin, smax = card.get("training", {}).get("scale_range", [1.0, 1.0])
    lo, hi = lo * smin, hi * (1.0 if given else smax)
    if lo <= diameter <= hi:
        return 1.0
    return clamp_factor(trained / diameter)


# A first pass that measures nuclei above the trained sizes (inside what the scale augmentation covered,
# so it is taken at native scale) may have measured the pieces of larger nuclei: an image enlarged
# beyond the trained range splits each nucleus into lobes of about the largest trained size. A check
# pass at the scale that brings the measured size to the trained median decides: when it measures the
# nuclei more than this many times larger (in the image's px), they were pieces, and the image is taken
# at the size it measured.
FRAGMENT_RATIO = 1.25


def fragments_check_needed(card: dict, diameter: float | None) -> bool:
    """The nuclei measured at native scale lie above the trained sizes (the card's ``diameter_range``,
    the 5th-95th percentile of training nuclei) but inside what the scale augmentation covered, so
    :func:`nuclei_factor` keeps the native scale: they may be the pieces of larger nuclei.

    >>> card = {"cell_diameter": 18.0, "diameter_range": [10.0, 49.0], "training": {"scale_range": [0.5, 2.0]}}
    >>> [fragments_check_needed(card, d) for d in (30.0, 60.0, 120.0, None)]
    [False, True, False, False]
    """
    trained = float(card.get("cell_diameter") or 0)
    if not diameter or trained <= 0 or not card.get("diameter_range"):
        return False
    return card["diameter_range"][1] < diameter and nuclei_factor(card, diameter) == 1.0


def segment_nuclei(image: np.ndarray, model="nuclei", cell_diameter: float | None = None, device: str = "cpu",
                   tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, params: NucleiParams | None = None,
                   tta: bool | None = None) -> Segmentation:
    """Find every nucleus in an (H, W, 3) uint8 image (fluorescence, brightfield or H&E).

    Bright-background images are inverted (if the model was trained so). With no
    ``cell_diameter`` (nucleus diameter, px) one pass at native scale measures the
    nuclei; if they lie outside the trained size range, a second pass runs at the scale
    that brings them to the trained median. Nuclei measured above the trained sizes but
    within the scale augmentation's reach are checked by a pass at that scale: when it
    measures them over :data:`FRAGMENT_RATIO` times larger, the first pass saw pieces of an
    enlarged image's nuclei, and the image is brought from the size the check measured to the
    trained median. Returns a :class:`Segmentation` whose
    ``instances`` are (H, W) int32 labels 1..N and ``classes`` the (H, W) uint8 nucleus mask.
    ``tta`` averages the final pass over the image and its three flips (4x its time); None: as the
    model card's ``tta`` says. A card may name a specialist model per modality
    (``NucleiParams.specialists``).
    """
    module, card = get_model(model, device)
    general = NUCLEI.params(card)
    p = params or general
    specialists = card.get("specialists") if p.specialists else None
    special = specialists.get(modality(image)) if specialists else None
    if special:  # its own card's post-processing, with what the caller changed from the general card's on top
        changed = {} if params is None else {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
                                             if f.init and getattr(params, f.name) != getattr(general, f.name)}
        module, card = get_model(special, device)
        p = dataclasses.replace(NUCLEI.params(card), **changed)
    if tta is None:
        tta = bool(card.get("tta", False))
    prange = card_range(card, image)
    invert = bool(card.get("normalization", {}).get("invert_bright")) and is_bright_background(image, prange)
    trained = float(card.get("cell_diameter") or p.fallback_diameter)
    find = _finder(p)
    factor = 1.0 if cell_diameter is None else nuclei_factor(card, cell_diameter, given=True)
    probs = None
    if cell_diameter is None:
        first = predict_probs(module, card, image, factor, tile, overlap, prange, invert)
        instances = find(first, _min_area(trained, p))
        cell_diameter = measure_nuclei(instances, min_area=_min_area(trained, p))
        new = nuclei_factor(card, cell_diameter)
        if fragments_check_needed(card, cell_diameter):
            check = clamp_factor(trained / cell_diameter)
            pieces = find(predict_probs(module, card, image, check, tile, overlap, prange, invert), _min_area(trained, p))
            whole = measure_nuclei(pieces, min_area=_min_area(trained, p))  # the image's px, as the first pass's
            if whole and whole > FRAGMENT_RATIO * cell_diameter:
                cell_diameter = whole
                new = clamp_factor(trained / cell_diameter)  # to the trained median, as the check saw them whole
        if new == factor and not tta:
            probs = first
        factor = new
    if probs is None:
        probs = predict_probs(module, card, image, factor, tile, overlap, prange, invert, tta=tta)
    measured = bool(cell_diameter)  # (given ones are said so by Task.predict)
    diameter = float(cell_diameter or trained / factor)
    instances = find(probs, _min_area(diameter, p), diameter=diameter)
    classes = (instances > 0).astype(np.uint8)
    return Segmentation(classes, instances, probs, diameter, factor, instance_objects(instances, probs),
                        "measured" if measured else "model")


class NucleiTask(Task):
    """Nuclei instances (DSB 2018): uint16 labels 0 background, 1..N."""

    name = "nuclei"
    classes = ("background", "nucleus", "boundary")
    label_values = (0, 1, 1)  # written as instance labels 1..N; the classes are the network's view
    colors = {1: (255, 220, 0)}
    default_model = "nuclei"
    supports_tta = True
    description = "nuclei instances (DSB 2018): uint16 labels 0 background, 1..N"
    depends = DEPENDS
    classical_methods = NUCLEI_METHODS
    Params = NucleiParams
    train_defaults = {
        # Full-resolution first level: DSB nuclei are 7-90 px across (median 18), too small
        # for a stride-2 stem; narrower widths keep a 2048x2048 image under ~3 s.
        "arch_kwargs": {"widths": [12, 24, 48, 96, 192], "dropout": 0.1, "stem_stride": 1, "norm": "group"},
        "epochs": 100, "batch_size": 8, "lr": 2e-3, "crop": 224, "samples_per_epoch": 400, "patience": 30,
        "val_fraction": 0.1, "scale_min": 0.5, "scale_max": 2.0, "contact_weight": 5.0,
        # Brightfield nuclei are dark dots inside grey cells: inverted, the cells look like
        # fluorescent nuclei, so images keep their polarity and the rare modalities (11 brightfield,
        # 95 histology of 600 DSB images) are drawn far more often than their share.
        "invert_bright": False,
        "stratum_weights": {"fluorescence": 0.5, "histology": 0.25, "brightfield": 0.25},
    }
    mean_keys = ("dsb", "ap50", "ap75")
    train_options = ("arch", "init", "workers", "split", "modality_transfer", "modalities", "depth_weight")

    def segment(self, image, model, cell_diameter=None, device="cpu", tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP,
                tta=None, params=None) -> Segmentation:
        return segment_nuclei(image, model, cell_diameter, device, tile, overlap, params, tta)

    def segment_classical(self, image: np.ndarray, method: str) -> Segmentation:
        return segment_classical(image, "nuclei", method)

    def label_images(self, seg: Segmentation) -> dict[str, np.ndarray]:
        # Instance labels 0 background, 1..N: uint16 (DESIGN.md).
        if seg.instances.max() > 65535:
            raise ValueError(f"{seg.instances.max()} nuclei do not fit a uint16 label PNG")
        return {"": seg.instances.astype(np.uint16)}

    def find_samples(self, root: str | Path) -> list[Pair]:
        return _dsb_or_pairs(root)

    def find_scored(self, root: str | Path, failed: list[dict]) -> list[Pair]:
        # A DSB id without a masks/ folder (a test image), or an image of images/ + masks/ without its mask, is
        # named, not skipped unsaid.
        return _dsb_or_pairs(root, failed)

    def train_config(self, **options) -> TrainConfig:
        """``modalities`` (a list of :data:`MODALITIES`): train on those only, the others drawn
        never (their weights 0), and choose the checkpoint on them (:meth:`validate`)."""
        wanted = options.pop("modalities", None)
        cfg = super().train_config(**options)
        if wanted:
            unknown = sorted(set(wanted) - set(MODALITIES))
            if unknown:
                raise HemasegUsageError("--modalities", f"unknown modality {', '.join(unknown)}; known: "
                                                        f"{', '.join(MODALITIES)}")
            base = cfg.stratum_weights or {m: 1.0 for m in MODALITIES}
            cfg.stratum_weights = {m: (float(base.get(m, 1.0)) if m in wanted else 0.0) for m in MODALITIES}
        return cfg

    def train_data(self, cfg, run: Path, state: dict) -> tuple:
        """:func:`~hemaseg.engine.train.pair_data`; with ``cfg.modality_transfer`` that share of the
        fluorescence draws is redrawn as brightfield or H&E (:func:`modality_transfer`)."""
        dataset, val_items, card = pair_data(self, cfg, run, state)
        card["modalities"] = trained_modalities(cfg)  # what the model is for
        chance = float(getattr(cfg, "modality_transfer", 0.0))
        if chance > 0:
            dataset.pre = partial(modality_transfer, chance=chance, window=max(2 * cfg.crop, 256))
            card["training"]["modality_transfer"] = chance
        return dataset, val_items, card

    def load_sample(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        return load_instances(pair)

    def target(self, mask: np.ndarray) -> np.ndarray:
        return nuclei_targets(mask)

    def aux_outputs(self, cfg) -> tuple[str, ...]:
        """``depth`` (:func:`nuclei_depth`) when the run gives it a loss weight (``--depth-weight``)."""
        return ("depth",) if getattr(cfg, "depth_weight", 0.0) > 0 else ()

    def aux_target(self, mask: np.ndarray) -> np.ndarray:
        return nuclei_depth(mask)[None]

    def stratum(self, image: np.ndarray, mask: np.ndarray) -> str:
        return modality(image)

    def validate(self, probs_of, items: list, cfg, data_card: dict) -> dict[str, float]:
        """Pooled DSB score / AP@0.5 / AP@0.75, the same per modality (``dsb_brightfield`` ...), and
        ``dsb_modalities``, the mean of the per-modality DSB scores of the modalities it trains on
        (every one unless ``cfg.stratum_weights`` gives some none). Nuclei are found with the thresholds the
        run's card carries (``data_card["postprocess"]``: a fine-tune's start's) and the smallest kept as
        :func:`segment_nuclei` keeps it at the trained size; not the pipeline's size estimate nor its split of
        touching nuclei at distance peaks (``evaluate`` runs those)."""
        p = self.params({"postprocess": data_card.get("postprocess") or {}})
        find = partial(_finder(p), min_area=_min_area(float(data_card.get("cell_diameter") or p.fallback_diameter), p))
        scores, kinds = [], []
        for image, target in items:
            s = dsb_scores(find(probs_of(image)), target)
            scores.append({k: s[k] for k in ("dsb", "ap50", "ap75")})
            kinds.append(modality(image))
        if not scores:
            return {}
        out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        for kind in sorted(set(kinds)):
            for k in ("dsb", "ap50"):
                out[f"{k}_{kind}"] = float(np.mean([s[k] for s, m in zip(scores, kinds) if m == kind]))
        chosen = [m for m in trained_modalities(cfg) if m in kinds] or sorted(set(kinds))
        out["dsb_modalities"] = float(np.mean([out[f"dsb_{m}"] for m in chosen]))
        return out

    def headline(self, val: dict[str, float]) -> float:
        """The checkpoint is chosen on the mean of the per-modality DSB scores, so the rare
        modalities weigh as much as fluorescence (older runs without it: the pooled score)."""
        return val.get("dsb_modalities", val["dsb"]) if val else float("nan")

    def score(self, seg: Segmentation, target: np.ndarray, image: np.ndarray) -> dict:
        return {"modality": modality(image), **dsb_scores(seg.instances, target)}

    def summarise(self, rows: list[dict], keys: list[str]) -> dict:
        by_mod = {m: {**means([r for r in rows if r["modality"] == m], keys),
                      "n_images": sum(r["modality"] == m for r in rows)}
                  for m in sorted({r["modality"] for r in rows})}
        return {"per_modality": by_mod}

    def panels(self, image: np.ndarray, target: np.ndarray, pred: tuple) -> list[np.ndarray]:
        return instance_panels(image, target, pred, self.colors)

    def row_title(self, row: dict) -> str:
        return f"pred: DSB {row['dsb']:.3f} AP50 {row['ap50']:.2f} ({row['n_pred']}/{row['n_true']})"

    def table(self, res: dict) -> list[str]:
        lines = [f"{'image':<24} {'modality':<13} {'DSB':>6} {'AP50':>6} {'AP75':>6} {'pred':>5} {'true':>5}"]
        for r in res["per_image"]:
            lines.append(f"{Path(r['image']).stem[:24]:<24} {r['modality']:<13} {r['dsb']:6.3f} {r['ap50']:6.3f} "
                         f"{r['ap75']:6.3f} {r['n_pred']:5d} {r['n_true']:5d}")
        lines += ["", f"{'subset':<24} {'images':>6} {'DSB':>6} {'AP50':>6} {'AP75':>6} {'s/img':>6}"]
        worst_first = sorted(res["per_modality"].items(), key=lambda kv: kv[1]["dsb"])
        for name, m in [*worst_first, ("ALL", {**res["mean"], "n_images": res["n_images"]})]:
            lines.append(f"{name:<24} {m['n_images']:6d} {m['dsb']:6.3f} {m['ap50']:6.3f} {m['ap75']:6.3f} "
                         f"{m['seconds']:6.2f}")
        return lines


NUCLEI = register_task(NucleiTask())
