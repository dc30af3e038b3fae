"""Classical masking methods (seed 003, chapters 2-3): no training, plain functions on arrays.

- :func:`watershed_cells`: Otsu + opening + distance transform + watershed (seed 003 Fig. 3.1);
- :func:`hsv_wbc_mask`: the WBC (nucleus + cytoplasm) by colour thresholds (seed 003 Algorithm 1),
  with thresholds found per image (Otsu) instead of fixed HSV bounds, and :func:`wbc_crops`,
  the centred crop of Algorithm 1;
- :func:`blob_confidence_mask`: LoG/DoG/DoH blobs stacked into a confidence map (Algorithm 2);
- :func:`mask_in_box`: the best classical mask of the cell inside a given box (pseudo-masks from
  detection boxes); :func:`box_cell` cuts a clean, whole red cell or platelet out of its box.

Thresholds are computed per image on stain-robust channels (darkness, and the amount of
the image's own nuclear-stain colour, :func:`nucleus_stain`), so the defaults work across
stains and labs rather than on one data set.
"""
from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from hemaseg.core.content import featureless
from hemaseg.core.labels import drop_small, instance_objects, relabel, wbc_objects
from hemaseg.core.result import Segmentation
from hemaseg.io.images import as_photo

log = logging.getLogger(__name__)

# A WBC's nucleus is at least this share of the image's biggest: smaller ones are platelets or debris.
SPECK_SHARE = 0.15
# ... and at least this share of a red cell's area (a red cell 7.5 um across; the smallest WBC nucleus, a
# small lymphocyte's, about 5.5 um: 0.54; a platelet 2-3 um: 0.07-0.16). Not tuned on any data set.
NUCLEUS_MIN_RBC = 0.25

# Seed 003 Algorithm 1: OpenCV HSV bounds of "blue" (hue is 0-180 in OpenCV, so 300 saturates).
SEED_HSV_LOWER = (100, 20, 20)
SEED_HSV_UPPER = (180, 245, 245)
# CIELAB chroma units (OpenCV's 8-bit a*, b*) a nucleus lies at least this far from the red cells' colour:
# Romanowsky stains colour nuclei azure-purple and red cells eosin-pink; on TXL-PBC's fields of four labs
# nuclei lie 36-64 units from the red cells, the red cells' own dark rims and centres about 10
# (red_cell_pieces; the wbc task's WbcParams.red_chroma takes the same number).
RED_MARGIN = 12.0


def _takes_photo(empty=None):
    """Decorator of the public functions: their first argument, ``image``, is taken as the model
    functions take it (:func:`hemaseg.io.images.as_photo`: a path, grey, RGBA, 16-bit or float array,
    or a one-line error naming it); with ``empty`` (the result of no cell, from the image's (H, W)),
    an image with nothing in it (:func:`~hemaseg.core.content.featureless`) gives that result."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(image, *args, **kwargs):
            image = as_photo(image)
            if empty is not None and featureless(image):
                return empty(image.shape[:2])
            return fn(image, *args, **kwargs)
        return inner
    return wrap


def _no_wbc(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(shape, np.uint8), np.zeros(shape, np.int32)


def darkness(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Darkness of each pixel, ``1 - mean(channels) / 255``, lightly smoothed: high on stained cells.

    Parameters
    ----------
    image : (H, W, C) or (H, W) ndarray
        Image on a 0-255 scale, normally uint8 RGB; the mean is taken over all C channels (an alpha
        channel would count too). A 2-D (H, W) array is a grey image, taken as it is.
    sigma : float, optional
        Standard deviation, px, of the Gaussian blur applied to the result; 0 or less: no blur.
        Default 1.0.

    Returns
    -------
    darkness : (H, W) ndarray of float32
        0 on white, 1 on black pixels.

    Examples
    --------
    >>> img = np.array([[[0, 0, 0], [255, 255, 255], [51, 102, 153]]], np.uint8)
    >>> [round(float(v), 2) for v in darkness(img, sigma=0)[0]]
    [1.0, 0.0, 0.6]
    >>> darkness(np.full((4, 5), 51, np.uint8)).shape   # grey
    (4, 5)
    """
    d = 1.0 - (image.astype(np.float32).mean(-1) if image.ndim == 3 else image.astype(np.float32)) / 255.0
    return cv2.GaussianBlur(d, (0, 0), sigma) if sigma > 0 else d


def nucleus_stain(image: np.ndarray, lab: np.ndarray | None = None, sigma: float = 1.0) -> np.ndarray:
    """How much each pixel has of the nuclear stain's colour: (H, W) float32.

    The stain's hue is found per image: the median chroma (a*, b*) of the darkest 3 % of pixels
    (nuclei) minus that of the brightest 40 % (background), measured on a regular subsample of at
    most about 250,000 pixels; each pixel's chroma, minus the background's, is projected on that
    direction. Any stain colour works (purple, blue, magenta); on a grey image (the two chromas less
    than 4 units apart) there is no chroma to follow and a darkness, ``(255 - L) / 255``, is returned
    instead.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB image (only the first three channels are used). Not used when ``lab`` is given.
    lab : (H, W, 3) ndarray of float32, optional
        The image in CIELAB on OpenCV's 8-bit scale (``cv2.cvtColor`` of the uint8 RGB image with
        ``cv2.COLOR_RGB2LAB``, as float32: L 0-255, a* and b* offset by 128), when the caller has it;
        used as given. Default None: computed from ``image`` and blurred by ``sigma``.
    sigma : float, optional
        Standard deviation, px, of the Gaussian blur of the CIELAB image computed here; 0 or less: no
        blur. Ignored when ``lab`` is given. Default 1.0.

    Returns
    -------
    stain : (H, W) ndarray of float32
        The projection, in CIELAB chroma units: about 0 on the background, high on nuclei, negative
        for colours opposite the stain's. On a grey image, the darkness in [0, 1].

    Examples
    --------
    >>> img = np.full((20, 20, 3), (240, 230, 200), np.uint8); img[5:9, 5:9] = (60, 40, 140)
    >>> s = nucleus_stain(img, sigma=0); bool(s[6, 6] > s[15, 15])
    True
    >>> bool(abs(s[15, 15]) < 1), s.shape, s.dtype.name   # the background projects to about 0
    (True, (20, 20), 'float32')
    >>> grey = np.full((20, 20, 3), 220, np.uint8); grey[5:9, 5:9] = 60
    >>> g = nucleus_stain(grey, sigma=0); bool(0 < g[15, 15] < g[6, 6] < 1)
    True
    """
    if lab is None:
        lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.float32)
        if sigma > 0:
            lab = cv2.GaussianBlur(lab, (0, 0), sigma)
    light = lab[..., 0]
    step = max(1, int(np.ceil(np.sqrt(light.size / 250_000))))
    sample_l, sample_ab = light[::step, ::step].ravel(), lab[::step, ::step, 1:].reshape(-1, 2)
    dark_t, bright_t = np.percentile(sample_l, [3, 60])
    direction = np.median(sample_ab[sample_l <= dark_t], 0) - np.median(sample_ab[sample_l >= bright_t], 0)
    norm = float(np.hypot(*direction))
    if norm < 4.0:  # no stain colour to follow: a grey image
        return (255.0 - light) / 255.0
    bg = np.median(sample_ab[sample_l >= bright_t], 0)
    return (((lab[..., 1] - bg[0]) * direction[0] + (lab[..., 2] - bg[1]) * direction[1]) / norm).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of any float values (OpenCV's on a 256-level quantisation); inf when flat."""
    values = values.ravel()
    lo, hi = float(values.min(initial=np.inf)), float(values.max(initial=-np.inf))
    if not np.isfinite(lo) or hi - lo < 1e-4 * max(1.0, abs(lo), abs(hi)):
        return float("inf")  # flat: nothing stands out
    q = ((values - lo) * (255.0 / (hi - lo))).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + (t + 0.5) * (hi - lo) / 255.0


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    """Dilation by a disk of radius ``r`` via a distance transform: cost independent of ``r``."""
    if r <= 0:
        return mask.astype(bool)
    return cv2.distanceTransform((~mask.astype(bool)).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5) <= r


def _erode(mask: np.ndarray, r: float) -> np.ndarray:
    if r <= 0:
        return mask.astype(bool)
    padded = np.pad(mask.astype(np.uint8), 1, constant_values=1)  # the image edge does not erode
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1] > r


def _open(mask: np.ndarray, r: float) -> np.ndarray:
    """Opening by a disk of radius ``r`` (distance-transform erosion then dilation)."""
    if r < 1:
        return mask.astype(bool)
    return _dilate(_erode(mask, r), r) & mask.astype(bool)


def _fill(mask: np.ndarray) -> np.ndarray:
    """Fill holes: background pixels not connected to the image border become foreground."""
    mask = mask.astype(bool)
    n, lab = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    if n <= 1:
        return mask
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    hole = np.ones(n, bool)
    hole[border] = False
    hole[0] = False
    return mask | hole[lab]


def object_polarity(grey: np.ndarray) -> bool:
    """Whether objects are darker than the background (brightfield) rather than brighter (fluorescence).

    The background is the majority side of the image's Otsu threshold (computed on 256 levels between
    the image's minimum and maximum).

    Parameters
    ----------
    grey : ndarray
        Grey-level image, any shape and numeric dtype (typically (H, W) float32).

    Returns
    -------
    dark_objects : bool
        True when more than half of the pixels lie above the threshold (dark objects on a bright
        background), False otherwise, and for a flat image (no threshold).

    Examples
    --------
    >>> grey = np.full((20, 20), 220.0); grey[5:10, 5:10] = 40
    >>> object_polarity(grey), object_polarity(255 - grey), object_polarity(np.zeros((5, 5)))
    (True, False, False)
    """
    t = _otsu(grey)
    return bool((grey > t).mean() > 0.5)


@_takes_photo(empty=lambda shape: np.zeros(shape, np.int32))
def watershed_cells(image: np.ndarray, min_distance: int | None = None, open_iterations: int = 2,
                    min_area: int | None = None, dark_objects: bool | None = None) -> np.ndarray:
    """Cells or nuclei as instances by Otsu + opening + distance transform + watershed.

    Seed 003 Fig. 3.1: grey image (the channels' mean, blurred by a Gaussian of 1 px), Otsu threshold,
    binary opening, holes filled, distance transform (smoothed), one marker per distance peak,
    watershed within the foreground. A foreground component that gets no marker (tiny, flat) keeps a
    label of its own. The polarity (dark cells on light, or bright nuclei on dark) is detected unless
    given. The typical object area is the median area of the foreground's components of at least
    max(4, their 25th-percentile area) px; its equivalent diameter sets the defaults below and the
    smoothing of the distance transform (sigma max(0.5, diameter / 20) px).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
        An image with nothing in it (:func:`~hemaseg.core.content.featureless`) gives all zeros.
    min_distance : int, optional
        Smallest distance, px, between two markers (``skimage.feature.peak_local_max``). Default None:
        a third of the typical diameter, at least 2 px.
    open_iterations : int, optional
        Iterations of the binary opening with a 3x3 cross, which removes specks and thin bridges;
        0 (or less): no opening. Default 2.
    min_area : int, optional
        Instances smaller than this many px are dropped. Default None: a tenth of the typical area, at
        least 4 px.
    dark_objects : bool, optional
        True: objects darker than the background (below the threshold); False: brighter. Default
        None: detected by :func:`object_polarity`.

    Returns
    -------
    labels : (H, W) ndarray of int32
        Instance labels 1..N, 0 background; all zero when no object is found.

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :100]
    >>> two = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 66) ** 2 < 400)
    >>> img = np.where(two, 60, 220).astype(np.uint8)[..., None].repeat(3, -1)
    >>> labels = watershed_cells(img)   # two touching dark discs
    >>> int(labels.max()), labels.shape, labels.dtype.name
    (2, (60, 100), 'int32')
    >>> int(watershed_cells(255 - img).max())   # bright on dark: the polarity is detected
    2
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    grey = image.astype(np.float32).mean(-1) if image.ndim == 3 else image.astype(np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), 1.0)
    if dark_objects is None:
        dark_objects = object_polarity(grey)
    t = _otsu(grey)
    fg = grey < t if dark_objects else grey > t
    if open_iterations > 0:  # SciPy repeats an opening of < 1 iterations until nothing is left
        fg = ndi.binary_opening(fg, iterations=open_iterations)
    fg = _fill(fg)
    comps, n = ndi.label(fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    areas = np.bincount(comps.ravel())[1:]
    typical = float(np.median(areas[areas >= max(4, np.percentile(areas, 25))]))
    diameter = 2 * np.sqrt(typical / np.pi)
    if min_area is None:
        min_area = max(4, int(0.1 * typical))
    if min_distance is None:
        min_distance = max(2, int(diameter / 3))
    dist = ndi.distance_transform_edt(fg)
    dist = ndi.gaussian_filter(dist, max(0.5, diameter / 20))
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    # Components without a peak (tiny, flat) keep their own label.
    missing = fg & (labels == 0)
    if missing.any():
        extra, _ = ndi.label(missing)
        labels = np.where(missing, extra + labels.max(), labels)
    return drop_small(labels, min_area)


@_takes_photo()
def nucleus_mask(image: np.ndarray, thresholds: str = "otsu", min_area: int = 20, split: bool = True,
                 channels: tuple[np.ndarray, np.ndarray] | None = None, colour: np.ndarray | None = None,
                 red_margin: float = RED_MARGIN) -> np.ndarray:
    """WBC nuclei (purple/blue, darker than anything else) as a mask.

    With ``thresholds="otsu"``, pixels above the Otsu levels of both the nuclear stain
    (:func:`nucleus_stain`) and the darkness (:func:`darkness`) are the candidates; a second Otsu
    on the candidates' darkness keeps the darker class, which separates the nucleus from granular or
    basophilic cytoplasm (a plain nucleus loses only its faint rim). With ``"seed"``, the candidates
    are the pixels in Algorithm 1's fixed OpenCV HSV range (:data:`SEED_HSV_LOWER` to
    :data:`SEED_HSV_UPPER`). The candidates are then opened by a disk of radius 1 px and their
    4-connected pieces smaller than ``min_area`` dropped; with ``"otsu"``, so are the pieces with the
    red cells' colour (:func:`red_cell_pieces`).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
    thresholds : {"otsu", "seed"}, optional
        How candidates are found (above). Default "otsu".
    min_area : int, optional
        Smallest piece kept, px. Default 20.
    split : bool, optional
        ``"otsu"`` only: apply the second Otsu (done only when there are more than 50 candidate
        pixels). False skips it and keeps the broad candidates. Default True.
    channels : tuple of two (H, W) ndarray of float, optional
        ``"otsu"`` only: the precomputed (nuclear stain, darkness) of the image. Default None:
        computed here (``nucleus_stain(image)``, ``darkness(image)``).
    colour : (H, W, 3) ndarray of float32, optional
        ``"otsu"`` only: the image in CIELAB (OpenCV's 8-bit scale), passed to :func:`red_cell_pieces` as its ``lab``.
        Default None: computed there.
    red_margin : float, optional
        ``"otsu"`` only: the ``margin`` (CIELAB chroma units) of :func:`red_cell_pieces`; 0 or less
        keeps the red-coloured pieces. Default 12.0.

    Returns
    -------
    mask : (H, W) ndarray of bool
        True on nucleus pixels.

    Raises
    ------
    ValueError
        When ``thresholds`` is neither "otsu" nor "seed".

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = np.full((64, 64, 3), (235, 215, 215), np.uint8)          # a pink background
    >>> img[(yy - 32) ** 2 + (xx - 32) ** 2 < 16 ** 2] = (180, 150, 215)  # a WBC's cytoplasm
    >>> img[(yy - 35) ** 2 + (xx - 32) ** 2 < 9 ** 2] = (90, 40, 130)     # its nucleus
    >>> m = nucleus_mask(img)
    >>> bool(m[35, 32]), bool(m[19, 32]), bool(m[2, 2])
    (True, False, False)
    >>> bool(nucleus_mask(img, "seed")[19, 32])   # the fixed HSV range takes this lilac cytoplasm too
    True
    """
    from scipy import ndimage as ndi

    if thresholds == "seed":
        hsv = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2HSV)
        m = cv2.inRange(hsv, SEED_HSV_LOWER, SEED_HSV_UPPER) > 0
    elif thresholds == "otsu":
        b, d = channels if channels is not None else (nucleus_stain(image), darkness(image))
        m = (b > _otsu(b)) & (d > _otsu(d))
        if split and m.sum() > 50:
            m &= d > _otsu(d[m])
    else:
        raise ValueError(f"thresholds must be 'otsu' or 'seed', not {thresholds!r}")
    m = _open(m, 1)
    lab, n = ndi.label(m)
    if n == 0:
        return m
    areas = np.bincount(lab.ravel())
    keep = areas >= min_area
    keep[0] = False
    if thresholds == "otsu" and red_margin > 0:
        keep &= ~red_cell_pieces(image, lab, n, colour, red_margin, dark=d)
    return keep[lab]


def label_medians(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n, C) float64: the median of each channel of (H, W, C) ``values`` over each label 1..n of
    ``labels`` (a label with no pixel gets no meaningful value: callers skip it).

    >>> v = np.dstack([np.arange(16.0).reshape(4, 4)] * 2); lab = np.zeros((4, 4), int); lab[:, 2:] = 1
    >>> label_medians(v, lab, 1).tolist()
    [[8.5, 8.5]]
    """
    from scipy import ndimage as ndi

    ids = np.arange(1, n + 1)
    return np.stack([np.asarray(ndi.median(values[..., c], labels, ids), np.float64).reshape(-1)
                     for c in range(values.shape[-1])], 1)


def red_cell_pieces(image: np.ndarray, pieces: np.ndarray, n: int, lab: np.ndarray | None = None,
                    margin: float = RED_MARGIN, dark: np.ndarray | None = None) -> np.ndarray:
    """Which nucleus candidates have the red cells' colour, so are dark parts of red cells and no nucleus.

    Each piece's median CIELAB chroma (a*, b*) is measured against the median chroma of the other
    stained pixels (the red cells, most of a smear's stained area): the pixels outside the pieces,
    more than 2 px from any piece, whose darkness is above the Otsu level of the non-piece pixels. A
    piece closer to it than :data:`RED_SHARE` of the farthest piece's distance is a red cell's, and
    when no piece lies ``margin`` away, every piece is. Red cells are eosin-red and nuclei
    azure-purple in Romanowsky stains: on TXL-PBC's fields of four labs the nuclei lie 36-64 chroma
    units from the red cells, the red cells' own dark rims and centres about 10. Nothing is rejected
    in a grey image (the other stained pixels' median chroma under 5 units) or when fewer than 50
    other stained pixels are left to measure the red cells by.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB image (an array; it is not converted).
    pieces : (H, W) ndarray of int
        Labels of the nucleus candidates: 1..n, 0 elsewhere.
    n : int
        Number of pieces (labels 1..n). With 0 there is nothing to judge: ``[False]``.
    lab : (H, W, 3) ndarray of float32, optional
        The image in CIELAB on OpenCV's 8-bit scale (a* and b* offset by 128), when the caller has
        it. Default None: computed from ``image``.
    margin : float, optional
        CIELAB chroma units: when no piece lies at least this far from the red cells' chroma, all are
        red cells'. Default 12.0.
    dark : (H, W) ndarray of float, optional
        :func:`darkness` of the image, when the caller has it. Default None: computed here.

    Returns
    -------
    red : (n + 1,) ndarray of bool
        ``red[i]`` is True when piece i has the red cells' colour; ``red[0]`` (background) is False.

    Examples
    --------
    >>> img = np.full((40, 80, 3), 235, np.uint8)
    >>> img[5:35, 5:35] = (210, 120, 130); img[15:25, 15:25] = (150, 60, 80)  # a red cell, darker centre
    >>> img[5:35, 45:75] = (210, 120, 130); img[12:28, 52:68] = (80, 40, 150)  # a purple nucleus
    >>> pieces = np.zeros((40, 80), np.int32); pieces[15:25, 15:25] = 1; pieces[12:28, 52:68] = 2
    >>> red_cell_pieces(img, pieces, 2).tolist()
    [False, True, False]
    """
    out = np.zeros(n + 1, bool)
    if n < 1:
        return out  # no piece: nothing to judge
    if lab is None:
        lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.float32)
    ab = lab[..., 1:3] - 128.0
    d = darkness(image) if dark is None else dark
    others = pieces == 0
    stained_others = others & (d > _otsu(d[others])) & ~_dilate(pieces > 0, 2)
    if stained_others.sum() < 50 or np.median(np.hypot(*ab[stained_others].T)) < 5.0:
        return out  # grey, or no red cells to compare with
    ref = np.median(ab[stained_others], 0)
    med = label_medians(ab, pieces, n)
    dist = np.hypot(*(med - ref).T)
    out[1:] = (dist < RED_SHARE * dist.max()) | (dist.max() < margin)
    return out


# A nucleus candidate whose chroma lies closer to the red cells' than this share of the most distant
# candidate's is a red cell's dark part (red_cell_pieces).
RED_SHARE = 0.5


def group_lobes(nucleus: np.ndarray, gap: float = 0.5) -> np.ndarray:
    """Group nucleus pieces into cells: a neutrophil's 3-5 lobes are one WBC.

    Each 4-connected piece is dilated by a disk of radius max(1, ``gap`` x D / 2) px, D being the
    equivalent diameter of the largest piece; pieces whose dilations touch are one group, so lobes
    closer than about ``gap`` x D belong to one cell.

    Parameters
    ----------
    nucleus : (H, W) ndarray of bool
        Nucleus mask (nonzero pixels are nucleus).
    gap : float, optional
        Largest gap between lobes of one cell, in diameters of the largest piece. Default 0.5.

    Returns
    -------
    groups : (H, W) ndarray of int32
        Group labels 1..G on the nucleus pixels, 0 elsewhere.

    Examples
    --------
    >>> nuc = np.zeros((20, 40), bool)
    >>> nuc[5:10, 5:10] = True; nuc[5:10, 12:17] = True; nuc[5:10, 32:37] = True   # 2 px apart, then 15
    >>> g = group_lobes(nuc)
    >>> int(g[7, 7]), int(g[7, 14]), int(g[7, 34]), g.dtype.name
    (1, 1, 2, 'int32')
    """
    from scipy import ndimage as ndi

    lab, n = ndi.label(nucleus)
    if n <= 1:
        return lab.astype(np.int32)
    big = 2 * np.sqrt(np.bincount(lab.ravel())[1:].max() / np.pi)
    grouped, _ = ndi.label(_dilate(nucleus, max(1.0, gap * big / 2)))
    return np.where(nucleus, grouped, 0).astype(np.int32)


# hsv_wbc_mask opens each cell by a disk of this fraction of its nucleus diameter: arms and bumps
# (a red cell or platelet hung on a narrow neck) go, the nucleus never does.
HSV_CELL_OPEN = 0.1


GREY_CHROMA = 4.0  # CIELAB chroma (OpenCV's 8-bit a*, b* units) under which nearly every pixel of a photo is grey


def no_colour(lab: np.ndarray) -> bool:
    """Whether an image, given as OpenCV's 8-bit-scaled CIELAB (float), holds no colour: 99 % of its pixels
    within :data:`GREY_CHROMA` of grey (a grey photo saved as RGB, a brightfield picture).

    >>> rgb = np.zeros((8, 8, 3), np.uint8); rgb[:] = 120
    >>> no_colour(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32))
    True
    >>> rgb[:] = (200, 120, 180)
    >>> no_colour(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32))
    False
    """
    chroma = np.hypot(lab[..., 1] - 128, lab[..., 2] - 128)
    return bool(np.percentile(chroma[::4, ::4], 99) < GREY_CHROMA)


def grey_photo(image: np.ndarray) -> bool:
    """:func:`no_colour` of an (H, W, 3) uint8 RGB photo, read on every fourth pixel (what ``analyze`` and the smear
    map ask before trusting colours they type by).

    >>> grey_photo(np.full((8, 8, 3), 120, np.uint8)), grey_photo(np.tile(np.uint8([200, 120, 180]), (8, 8, 1)))
    (True, False)
    """
    small = np.ascontiguousarray(image[::4, ::4, :3])
    return no_colour(cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32))


@_takes_photo(empty=_no_wbc)
def hsv_wbc_mask(image: np.ndarray, thresholds: str = "otsu", reach: float = 0.6,
                 min_nucleus_area: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """WBCs by colour: a class map (0 background, 1 cytoplasm, 2 nucleus) and the WBC instances.

    Seed 003 Algorithm 1 with per-image thresholds and marker-controlled watershed: nuclei
    are the pixels of the nuclear stain's colour that are also dark (:func:`nucleus_mask`), lobes are
    grouped into cells (:func:`group_lobes`; a group under :data:`SPECK_SHARE` of the biggest one's
    area is a platelet or debris and dropped), and each cell grows from its nucleus over stained pixels
    (Otsu on the darkness of the rest) on the colour gradient, competing with markers on the background
    and on stained objects farther than ``reach`` x its nucleus diameter (red cells), so a touching red
    cell stops at its edge. Each cell is then opened by a disk of :data:`HSV_CELL_OPEN` of its nucleus
    diameter (radius at least 1 px) and hole-filled.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
        An image with nothing in it (:func:`~hemaseg.core.content.featureless`) gives all zeros.
    thresholds : {"otsu", "seed"}, optional
        How nuclei are found, passed to :func:`nucleus_mask`. Default "otsu".
    reach : float, optional
        Farthest a cell reaches from its nucleus group, in that group's equivalent diameters.
        Default 0.6.
    min_nucleus_area : int, optional
        Smallest nucleus piece kept, px (:func:`nucleus_mask`'s ``min_area``). Default None:
        max(10, int(H * W * 2e-4)).

    Returns
    -------
    classes : (H, W) ndarray of uint8
        0 background, 1 cytoplasm, 2 nucleus.
    instances : (H, W) ndarray of int32
        WBC labels 1..N, 0 background.

    Raises
    ------
    ValueError
        When ``thresholds`` is neither "otsu" nor "seed".

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = np.full((64, 64, 3), (235, 215, 215), np.uint8)          # a pink background
    >>> img[(yy - 32) ** 2 + (xx - 32) ** 2 < 16 ** 2] = (180, 150, 215)  # a WBC's cytoplasm
    >>> img[(yy - 35) ** 2 + (xx - 32) ** 2 < 9 ** 2] = (90, 40, 130)     # its nucleus
    >>> classes, inst = hsv_wbc_mask(img)
    >>> int(inst.max()), int(classes[35, 32]), int(classes[19, 32]), int(classes[2, 2])
    (1, 2, 1, 0)
    """
    from scipy import ndimage as ndi

    h, w = image.shape[:2]
    if min_nucleus_area is None:
        min_nucleus_area = max(10, int(h * w * 2e-4))
    # Cells are built around the broad nucleus candidates (dark granular cytoplasm
    # included); the nucleus class is the split, darker part.
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.float32)
    if no_colour(lab):  # the method finds nuclei by their stain's colour: on a grey photo the whole frame was one WBC
        log.warning("the hsv method needs a colour photo (this one is grey): no WBC found; use the model "
                    "(crop --method model; segment's default) or segment --method watershed")
        return np.zeros((h, w), np.uint8), np.zeros((h, w), np.int32)
    lab = cv2.GaussianBlur(lab, (0, 0), 1.0)
    d = darkness(image)
    channels = (nucleus_stain(image, lab), d)
    broad = nucleus_mask(image, thresholds, min_nucleus_area, split=False, channels=channels, colour=lab)
    strict = nucleus_mask(image, thresholds, min_nucleus_area, channels=channels, colour=lab)
    if strict.any():
        # Where red cells are as dark as the stain (bluish smears), the broad candidates hold them
        # too: keep only what lies close to a strict (darker) nucleus.
        areas = np.bincount(ndi.label(strict)[0].ravel())[1:]
        broad &= _dilate(strict, max(2.0, 0.25 * 2 * np.sqrt(areas.max() / np.pi)))
    groups = group_lobes(broad)
    classes = np.zeros((h, w), np.uint8)
    if groups.max() == 0:
        return classes, np.zeros((h, w), np.int32)
    # Specks far smaller than the biggest nucleus (platelets, debris) are not WBCs.
    sizes = np.bincount(groups.ravel())
    sizes[0] = 0
    groups = relabel(groups, sizes >= SPECK_SHARE * sizes.max())
    # ... nor is one under NUCLEUS_MIN_RBC of a red cell's area, however small the others: the share above
    # judges against the biggest only, so in a field with no WBC its largest speck stayed one.
    rbc_d = red_cell_diameter(image, _dilate(broad, 3.0))
    if rbc_d:
        sizes = np.bincount(groups.ravel())
        sizes[0] = 0
        groups = relabel(groups, sizes >= NUCLEUS_MIN_RBC * np.pi * (rbc_d / 2) ** 2)
        if groups.max() == 0:
            return classes, np.zeros((h, w), np.int32)
    broad &= groups > 0
    nucleus = _fill(strict & broad)
    stained = _fill(d > _otsu(d[~broad])) | broad
    # Distance reach of each pixel to its nearest nucleus group, in that group's diameters.
    dist, (iy, ix) = ndi.distance_transform_edt(groups == 0, return_indices=True)
    owner = groups[iy, ix]
    diam = 2 * np.sqrt(np.bincount(groups.ravel())[owner] / np.pi)
    near = dist < reach * diam
    n = int(groups.max())
    # Each WBC's marker is its nucleus grown a little into the cytoplasm, so the flood
    # starts past the strong nucleus edge and only the cell's outer edge stops it.
    grown = np.where(dist <= max(1.0, 0.15 * float(np.median(diam[groups > 0]))), owner, 0)
    markers = np.where(stained & near & (grown > 0), grown, 0).astype(np.int32)
    far = stained & ~near & ~broad
    markers[far] = n + 2  # other stained objects: red cells, far away
    # Red cells pressed against a WBC are near it too: a near pixel whose colour is likelier the
    # far objects' (red cells) than the colour just around the nuclei (cytoplasm) is a red cell.
    ring = stained & near & ~broad & (dist <= 0.35 * diam)
    markers[red_like(lab, far, ring, stained & near & ~broad & (grown == 0))] = n + 2
    markers[~stained] = n + 1  # background: outside the stained mask nothing else may flood
    # OpenCV's watershed floods on colour differences of the (smoothed) image itself.
    smooth = cv2.GaussianBlur(np.ascontiguousarray(image[..., :3]), (0, 0), 1.0)
    flooded = cv2.watershed(smooth, markers.copy())
    flooded[(flooded < 0) | ~stained] = 0
    cells = np.where(((flooded <= n) & near) | (groups > 0), np.where(groups > 0, groups, flooded), 0)
    instances = np.zeros((h, w), np.int32)
    for k, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None or k > n:
            continue
        own = groups[sl] == k
        cell = cells[sl] == k
        dn = 2 * np.sqrt(own.sum() / np.pi)
        cell = _fill(_open(cell, max(1, int(HSV_CELL_OPEN * dn))) | own)
        lab_k, _ = ndi.label(cell)
        ids = np.unique(lab_k[own])
        cell = np.isin(lab_k, ids[ids > 0]) & (instances[sl] == 0)
        instances[sl][cell] = k
    instances = relabel(instances, np.bincount(instances.ravel(), minlength=n + 1) > 0)
    classes[instances > 0] = 1
    classes[(instances > 0) & nucleus] = 2
    return classes, instances


def likelier_first(first: np.ndarray, second: np.ndarray, values: np.ndarray, min_pixels: int = 50) -> np.ndarray:
    """Which values are likelier under a Gaussian fitted to ``first`` than under one fitted to ``second``.

    Each sample gets a Gaussian of its mean and covariance plus the identity (so a flat colour does
    not collapse it); a value is compared by its two log-likelihoods, with no fixed threshold. Many
    uint8 pairs (more than :data:`LUT_MIN_VALUES` values of dtype uint8 and D = 2, e.g. CIELAB a*b* of a
    large image) are decided through a 256 x 256 table of all pairs, with the same result.

    Parameters
    ----------
    first : (M, D) ndarray
        The first sample (e.g. colours of the red cells).
    second : (K, D) ndarray
        The second sample, same D.
    values : (N, D) ndarray
        The values to decide.
    min_pixels : int, optional
        Fewest rows each sample needs; with fewer, every value gets False. Default 50.

    Returns
    -------
    likelier : (N,) ndarray of bool
        True where a value is strictly likelier under ``first``'s Gaussian.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> likelier_first(rng.normal(10, 1, (60, 2)), rng.normal(0, 1, (60, 2)), np.array([[9.0, 9], [1, 1]])).tolist()
    [True, False]
    >>> likelier_first(np.zeros((10, 2)), np.ones((10, 2)), np.zeros((3, 2))).tolist()   # under 50 rows
    [False, False, False]
    """
    if len(first) < min_pixels or len(second) < min_pixels or not len(values):
        return np.zeros(len(values), bool)
    if values.dtype == np.uint8 and values.shape[1] == 2 and len(values) > LUT_MIN_VALUES:
        # Many uint8 pairs (CIELAB a*b* of a large image): decide each of the 65,536 pairs once.
        grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 2)
        lut = likelier_first(first, second, grid, min_pixels)
        return lut[values[:, 0].astype(np.intp) * 256 + values[:, 1]]
    values = values.astype(np.float64)

    def loglik(sample: np.ndarray) -> np.ndarray:
        x = sample.astype(np.float64)
        mean, cov = x.mean(0), np.cov(x.T) + np.eye(x.shape[1])  # + 1: no collapse on a flat colour
        d = values - mean
        return -0.5 * (((d @ np.linalg.inv(cov)) * d).sum(1) + np.log(np.linalg.det(cov)))

    return loglik(first) > loglik(second)


# likelier_first decides uint8 pairs through a 256 x 256 table beyond this many values.
LUT_MIN_VALUES = 65_536


def red_like(lab: np.ndarray, red: np.ndarray, cytoplasm: np.ndarray, candidates: np.ndarray,
             min_pixels: int = 50) -> np.ndarray:
    """Which candidate pixels have a colour likelier that of the red pixels than that of the cytoplasm.

    The ``red`` and ``cytoplasm`` pixels' colours (CIELAB a*, b*) are each fitted by a Gaussian on this
    image, and each candidate is decided by :func:`likelier_first`.

    Parameters
    ----------
    lab : (H, W, 3) ndarray
        The image in CIELAB (channels 1 and 2, a* and b*, are used), e.g. float32 on OpenCV's scale.
    red : (H, W) ndarray of bool
        Pixels of the red cells.
    cytoplasm : (H, W) ndarray of bool
        Pixels of the cytoplasm.
    candidates : (H, W) ndarray of bool
        Pixels to decide.
    min_pixels : int, optional
        Fewest pixels ``red`` and ``cytoplasm`` each need; with fewer, nothing is red-like. Default 50.

    Returns
    -------
    red_like : (H, W) ndarray of bool
        True on the candidates likelier red; False elsewhere.

    Examples
    --------
    >>> lab = np.zeros((4, 4, 3), np.float32); lab[:2, ..., 1] = 170; lab[2:, ..., 1] = 135
    >>> lab += np.random.default_rng(0).normal(0, 2, lab.shape).astype(np.float32)
    >>> red = np.zeros((4, 4), bool); red[0] = True; cyto = np.zeros((4, 4), bool); cyto[3] = True
    >>> red_like(lab, red, cyto, np.ones((4, 4), bool), min_pixels=4)[:, 0].tolist()
    [True, True, False, False]
    """
    out = np.zeros(candidates.shape, bool)
    if candidates.any():
        out[candidates] = likelier_first(lab[red][:, 1:3], lab[cytoplasm][:, 1:3], lab[candidates][:, 1:3], min_pixels)
    return out


def central_instance(instances: np.ndarray) -> int:
    """Label of the largest instance nearest the image centre (Algorithm 1 keeps the central cell).

    Each instance scores its area x (1 - d), where d is the distance from its centroid to the image
    centre (H / 2, W / 2) over half the image diagonal; the best score wins.

    Parameters
    ----------
    instances : (H, W) ndarray of int
        Instance labels, 0 background (non-negative; ids need not be consecutive).

    Returns
    -------
    label : int
        The winning label; 0 when there is no instance.

    Examples
    --------
    >>> lab = np.zeros((20, 40), np.int32); lab[2:18, 2:10] = 1; lab[6:14, 16:24] = 2
    >>> central_instance(lab)   # 2 is half the size of 1 but central
    2
    >>> central_instance(np.zeros((5, 5), np.int32))
    0
    """
    n = int(instances.max())
    if n == 0:
        return 0
    h, w = instances.shape
    flat = instances.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    yy, xx = np.divmod(np.arange(flat.size), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, yy, minlength=n + 1)[1:] / areas
        cx = np.bincount(flat, xx, minlength=n + 1)[1:] / areas
    off = np.hypot(cy - h / 2, cx - w / 2) / np.hypot(h / 2, w / 2)
    return int(np.nanargmax(areas * (1 - off))) + 1


def wbc_crops(image: np.ndarray, instances: np.ndarray, margin: float = 0.15, square: bool = True) -> list[dict]:
    """Square crops centred on each WBC instance (Algorithm 1's crop), as boxes.

    Each box is the instance's bounding box grown by ``margin`` of its size on every side (with
    ``square``, both sides take the larger size), rounded to whole px and clipped to the image, so a
    crop at the border is neither square nor centred.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        The photo the crops are for (an array, or a file path). It is not read: the boxes come from
        ``instances`` alone; an array's (H, W) is only checked against that of ``instances``.
    instances : (H, W) ndarray of int
        WBC labels, 0 background.
    margin : float, optional
        Share of the bounding box's height (and width) added on each side. Default 0.15.
    square : bool, optional
        Give both sides the larger of the two. Default True.

    Returns
    -------
    crops : list of dict
        One ``{"label": int, "box": (x1, y1, x2, y2)}`` per label present, in label order; the box
        in px, ints, x2 and y2 exclusive (slice ends).

    Raises
    ------
    ValueError
        When ``image`` is an array whose (H, W) differs from that of ``instances``.

    Examples
    --------
    >>> inst = np.zeros((50, 60), np.int32); inst[10:30, 20:30] = 3    # 20 px high, 10 px wide
    >>> wbc_crops(np.zeros((50, 60, 3), np.uint8), inst)
    [{'label': 3, 'box': (12, 7, 38, 33)}]
    >>> wbc_crops(np.zeros((50, 60, 3), np.uint8), inst, margin=0.1, square=False)[0]["box"]
    (19, 8, 31, 32)
    """
    from scipy import ndimage as ndi

    h, w = instances.shape
    shape = getattr(image, "shape", None)  # an array: cheap to check; a path is not read for nothing
    if shape is not None and tuple(shape[:2]) != (h, w):
        raise ValueError(f"wbc_crops: image {tuple(shape[:2])} and instances {(h, w)} differ in size")
    out = []
    for k, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        out.append({"label": k, "box": grown_box(box, (h, w), margin, square)})
    return out


def grown_box(box: tuple, shape: tuple, margin: float = 0.15, square: bool = True) -> tuple[int, int, int, int]:
    """A cell's box grown into its crop, as :func:`wbc_crops` cuts it: ``margin`` of the box's size added on
    each side (with ``square``, both sides take the larger size), rounded to whole px and clipped to an
    image of ``shape`` (H, W).

    Parameters
    ----------
    box : tuple of int
        (x1, y1, x2, y2) in px, x2 and y2 exclusive.
    shape : tuple of int
        (H, W) of the image, or any shape starting with them.
    margin, square
        As in :func:`wbc_crops`.

    Returns
    -------
    box : tuple of int
        (x1, y1, x2, y2) of the crop, x2 and y2 exclusive; empty (x2 <= x1) when ``box`` lies outside.

    Examples
    --------
    >>> grown_box((20, 10, 30, 30), (50, 60))
    (12, 7, 38, 33)
    >>> grown_box((0, 0, 10, 10), (50, 60), margin=0.5)    # clipped at the image's corner
    (0, 0, 15, 15)
    """
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    hh, ww = (y1 - y0) * (1 + 2 * margin), (x1 - x0) * (1 + 2 * margin)
    if square:
        hh = ww = max(hh, ww)
    return (max(0, int(round(cx - ww / 2))), max(0, int(round(cy - hh / 2))),
            min(w, int(round(cx + ww / 2))), min(h, int(round(cy + hh / 2))))


@_takes_photo(empty=lambda shape: np.zeros(shape, bool))
def blob_confidence_mask(image: np.ndarray, max_sigma: float | None = None, threshold: float = 0.5,
                         erosion: int = 1, power: float = 1.5) -> np.ndarray:
    """Seed 003 Algorithm 2: LoG, DoG and DoH blobs stacked into a thresholded confidence mask.

    Work runs on a copy at most 256 px across, so the cost is flat. The copy's darkness
    (:func:`darkness`, lightly blurred and scaled to [0, 1]) makes stained cells bright; LoG, DoG and
    DoH blobs (``skimage.feature``, smallest sigma 2 px of the copy) each paint a filled disc of their
    radius (sigma x sqrt(2)) weighted by (radius / largest radius of that detector) ** ``power``, so
    bigger cells gain more confidence as in the seed (within one detector, overlapping discs are
    painted over, not added). The three detectors' maps are each divided by their maximum and summed;
    pixels above ``threshold`` of the maximum stay, the mask is eroded and resized back.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
        An image with nothing in it (:func:`~hemaseg.core.content.featureless`), or a flat one, gives
        an all-False mask.
    max_sigma : float, optional
        Largest blob sigma, px of the input image. Default None: max(H, W) / 6.
    threshold : float, optional
        Share of the confidence map's maximum a pixel must exceed. Default 0.5.
    erosion : int, optional
        Iterations of binary erosion (3x3 cross) of the mask, px of the working copy; 0 skips it.
        Default 1.
    power : float, optional
        Exponent of the disc weights. Default 1.5.

    Returns
    -------
    mask : (H, W) ndarray of bool
        True on blob-like cells.

    Examples
    --------
    >>> yy, xx = np.mgrid[:80, :80]
    >>> img = np.where((yy - 40) ** 2 + (xx - 40) ** 2 < 225, 60, 230).astype(np.uint8)[..., None].repeat(3, -1)
    >>> m = blob_confidence_mask(img)
    >>> bool(m[40, 40]), bool(m[5, 5]), m.shape
    (True, False, (80, 80))
    """
    from scipy import ndimage as ndi
    from skimage.feature import blob_dog, blob_doh, blob_log

    h, w = image.shape[:2]
    f = min(1.0, 256 / max(h, w))
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else image
    grey = darkness(small, sigma=0)  # bright cells on dark (Algorithm 2 lines 3-4: blur, grey)
    grey = cv2.GaussianBlur(grey, (3, 3), 0)
    rng = float(grey.max() - grey.min())
    if rng <= 0:
        return np.zeros((h, w), bool)
    grey = (grey - grey.min()) / rng
    sh, sw = grey.shape
    max_sigma = (max(h, w) / 6 if max_sigma is None else max_sigma) * f
    detections = [
        blob_log(grey, min_sigma=2, max_sigma=max_sigma, num_sigma=10, threshold=0.1),
        blob_dog(grey, min_sigma=2, max_sigma=max_sigma, threshold=0.1),
        blob_doh(grey, min_sigma=2, max_sigma=max_sigma, threshold=0.001),
    ]
    conf = np.zeros((sh, sw), np.float32)
    for blobs in detections:
        layer = np.zeros((sh, sw), np.float32)
        if len(blobs):
            radii = blobs[:, 2] * np.sqrt(2)
            for (y, x, _), r in zip(blobs, radii):
                cv2.circle(layer, (int(round(x)), int(round(y))), max(1, int(round(r))),
                           float((r / radii.max()) ** power), -1, lineType=cv2.LINE_8)
            conf += layer / max(layer.max(), 1e-6)
    mask = conf > threshold * conf.max() if conf.max() > 0 else np.zeros((sh, sw), bool)
    if erosion > 0:
        mask = ndi.binary_erosion(mask, iterations=erosion)
    if f < 1:
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return mask


@_takes_photo(empty=_no_wbc)
def blob_wbc_mask(image: np.ndarray, thresholds: str = "otsu") -> tuple[np.ndarray, np.ndarray]:
    """WBCs from the blob confidence mask: the blob regions holding a nucleus, hole-filled.

    Nuclei come from :func:`nucleus_mask` (smallest piece max(10, int(H * W * 2e-4)) px); the union of
    :func:`blob_confidence_mask` and the nuclei is hole-filled, and each of its 4-connected components
    holding a nucleus pixel is a WBC.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
        An image with nothing in it (:func:`~hemaseg.core.content.featureless`) gives all zeros.
    thresholds : {"otsu", "seed"}, optional
        How nuclei are found, passed to :func:`nucleus_mask`. Default "otsu".

    Returns
    -------
    classes : (H, W) ndarray of uint8
        0 background, 1 cytoplasm (the rest of a WBC), 2 nucleus.
    instances : (H, W) ndarray of int32
        WBC labels 1..N, 0 background.

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = np.full((64, 64, 3), (235, 215, 215), np.uint8)
    >>> img[(yy - 32) ** 2 + (xx - 32) ** 2 < 16 ** 2] = (180, 150, 215)  # a WBC's cytoplasm
    >>> img[(yy - 35) ** 2 + (xx - 32) ** 2 < 9 ** 2] = (90, 40, 130)     # its nucleus
    >>> classes, inst = blob_wbc_mask(img)
    >>> int(inst.max()), int(classes[35, 32]), int(classes[2, 2]), classes.dtype.name, inst.dtype.name
    (1, 2, 0, 'uint8', 'int32')
    """
    from scipy import ndimage as ndi

    h, w = image.shape[:2]
    nucleus = nucleus_mask(image, thresholds, max(10, int(h * w * 2e-4)))
    blobs = _fill(blob_confidence_mask(image) | nucleus)
    lab, _ = ndi.label(blobs)
    instances = relabel(lab, np.bincount(lab[nucleus], minlength=int(lab.max()) + 1) > 0)
    classes = np.where(instances > 0, np.where(nucleus, 2, 1), 0).astype(np.uint8)
    return classes, instances


@_takes_photo(empty=_no_wbc)
def watershed_wbc_mask(image: np.ndarray, thresholds: str = "otsu") -> tuple[np.ndarray, np.ndarray]:
    """WBCs from :func:`watershed_cells`: the cells holding a nucleus.

    Nuclei come from :func:`nucleus_mask` (smallest piece max(10, int(H * W * 2e-4)) px), cells from
    ``watershed_cells(image, dark_objects=True)``. A cell is a WBC when its nucleus pixels are at least
    10 % of its area and at least :data:`SPECK_SHARE` of the largest nucleus any cell holds (a far
    smaller one is a platelet or debris).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
        An image with nothing in it (:func:`~hemaseg.core.content.featureless`) gives all zeros.
    thresholds : {"otsu", "seed"}, optional
        How nuclei are found, passed to :func:`nucleus_mask`. Default "otsu".

    Returns
    -------
    classes : (H, W) ndarray of uint8
        0 background, 1 cytoplasm (the rest of a WBC), 2 nucleus.
    instances : (H, W) ndarray of int32
        WBC labels 1..N, 0 background.

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = np.full((64, 64, 3), (235, 215, 215), np.uint8)
    >>> img[(yy - 32) ** 2 + (xx - 32) ** 2 < 16 ** 2] = (180, 150, 215)  # a WBC's cytoplasm
    >>> img[(yy - 35) ** 2 + (xx - 32) ** 2 < 9 ** 2] = (90, 40, 130)     # its nucleus
    >>> classes, inst = watershed_wbc_mask(img)
    >>> int(inst.max()), int(classes[35, 32]), int(classes[2, 2])
    (1, 2, 0)
    """
    h, w = image.shape[:2]
    nucleus = nucleus_mask(image, thresholds, max(10, int(h * w * 2e-4)))
    cells = watershed_cells(image, dark_objects=True)
    n = int(cells.max())
    area = np.bincount(cells.ravel(), minlength=n + 1)
    nuc = np.bincount(cells.ravel(), weights=nucleus.ravel(), minlength=n + 1)
    # As hsv_wbc_mask: a cell whose nucleus is far smaller than the biggest (a platelet, debris) is no WBC.
    instances = relabel(cells, (nuc >= 0.1 * np.maximum(area, 1)) & (nuc >= SPECK_SHARE * nuc[1:].max(initial=0)))
    classes = np.where(instances > 0, np.where(nucleus, 2, 1), 0).astype(np.uint8)
    return classes, instances


@_takes_photo()
def mask_in_box(image: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.1,
                kind: str | None = None) -> np.ndarray:
    """The cell inside a detection box as a mask (pseudo-masks from boxes).

    With ``kind="wbc"`` the WBC is taken from :func:`hsv_wbc_mask` run on the box and its margin
    (smallest nucleus max(10, int(0.02 x box area)) px): the instance with the most pixels in the box
    centre (the ellipse of half the box's width and height), hole-filled, so the pale cytoplasm is
    included; when there is none, or it covers under 15 % of the box, the generic way below is used.
    Otherwise, inside the box grown by ``margin``, stained pixels (Otsu on darkness + saturation, which
    separates red cells, WBCs and platelets from the background) are filled and opened (disk of
    max(1, int(0.05 x the box's shorter side)) px); the component covering most of the box centre
    wins. When nothing plausible is found (no component there, or one under 15 % of the box, e.g. a
    faint cell), the ellipse inscribed in the box is returned.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
    box : tuple of 4 float
        (x1, y1, x2, y2), px; rounded to whole px and clipped to the image.
    margin : float, optional
        Share of the box's width (height) added on the left and right (top and bottom) as context for
        the thresholds, clipped to the image. Default 0.1.
    kind : {None, "wbc"}, optional
        "wbc" for a WBC, None for another cell (red cell, platelet). Default None.

    Returns
    -------
    mask : (y2 - y1, x2 - x1) ndarray of bool
        The cell in the rounded, clipped box; an empty (0-size) array when the box lies outside the
        image.

    Raises
    ------
    ValueError
        When ``kind`` is neither None nor "wbc".

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :60]
    >>> img = np.full((60, 60, 3), 235, np.uint8); img[(yy - 30) ** 2 + (xx - 30) ** 2 < 100] = (200, 90, 110)
    >>> m = mask_in_box(img, (15, 15, 45, 45))
    >>> m.shape, int(m.sum()) in range(250, 380)
    ((30, 30), True)
    >>> mask_in_box(img, (50, 50, 80, 80)).shape, mask_in_box(img, (70, 70, 80, 80)).shape   # clipped, outside
    ((10, 10), (0, 0))
    """
    from scipy import ndimage as ndi

    if kind not in (None, "wbc"):
        raise ValueError(f"kind must be None or 'wbc', not {kind!r}")
    h, w = image.shape[:2]
    x1, y1, x2, y2 = [int(round(v)) for v in box]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0:
        return np.zeros((max(bh, 0), max(bw, 0)), bool)
    mx, my = int(round(margin * bw)), int(round(margin * bh))
    X1, Y1, X2, Y2 = max(0, x1 - mx), max(0, y1 - my), min(w, x2 + mx), min(h, y2 + my)
    crop = image[Y1:Y2, X1:X2]
    yy, xx = np.mgrid[Y1:Y2, X1:X2]
    core = ((yy - (y1 + y2) / 2) / (bh / 4)) ** 2 + ((xx - (x1 + x2) / 2) / (bw / 4)) ** 2 <= 1
    if kind == "wbc":
        _, inst = hsv_wbc_mask(crop, min_nucleus_area=max(10, int(0.02 * bw * bh)))
        votes = np.bincount(inst[core].ravel(), minlength=int(inst.max()) + 1)
        votes[0] = 0
        if votes.max() > 0:
            m = (inst == int(votes.argmax()))[y1 - Y1:y2 - Y1, x1 - X1:x2 - X1]
            if m.sum() >= 0.15 * bw * bh:
                return _fill(m)
    hsv = cv2.cvtColor(np.ascontiguousarray(crop[..., :3]), cv2.COLOR_RGB2HSV).astype(np.float32)
    feat = darkness(crop) + cv2.GaussianBlur(hsv[..., 1] / 255.0, (0, 0), 1.0)
    fg = _fill(feat > _otsu(feat))
    fg = _open(fg, max(1, int(0.05 * min(bw, bh))))
    inside = ((yy - (y1 + y2) / 2) / (bh / 2)) ** 2 + ((xx - (x1 + x2) / 2) / (bw / 2)) ** 2 <= 1
    lab, n = ndi.label(fg)
    best = None
    if n:
        votes = np.bincount(lab[core].ravel(), minlength=n + 1)
        votes[0] = 0
        if votes.max() > 0:
            best = lab == int(votes.argmax())
    ellipse = inside[y1 - Y1:y2 - Y1, x1 - X1:x2 - X1]
    if best is None:
        return ellipse
    mask = best[y1 - Y1:y2 - Y1, x1 - X1:x2 - X1]
    if mask.sum() < 0.15 * bw * bh:
        return ellipse
    return _fill(mask)


def cut_rgba(image: np.ndarray, mask: np.ndarray, pad: int = 2) -> np.ndarray | None:
    """RGBA crop of ``image`` around ``mask``, the mask as alpha; None under 12 px.

    Parameters
    ----------
    image : (H, W, C) ndarray
        Image with C >= 3 (the first three channels are used), normally uint8 RGB.
    mask : (H, W) ndarray
        The object: nonzero pixels.
    pad : int, optional
        Margin, px, around the mask's bounding box (clipped to the image). Default 2.

    Returns
    -------
    rgba : (h, w, 4) ndarray or None
        The crop of the padded bounding box: the RGB channels, then alpha 255 on the mask and 0
        elsewhere (in ``image``'s dtype, uint8 for a uint8 image). None when the mask has fewer than 12
        pixels.

    Examples
    --------
    >>> m = np.zeros((20, 20), bool); m[5:10, 6:12] = True
    >>> rgba = cut_rgba(np.zeros((20, 20, 3), np.uint8), m)
    >>> rgba.shape, int(rgba[0, 0, 3]), int(rgba[2, 2, 3])
    ((9, 10, 4), 0, 255)
    >>> few = np.zeros((20, 20), bool); few[5:8, 5:8] = True   # 9 px
    >>> cut_rgba(np.zeros((20, 20, 3), np.uint8), few) is None
    True
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 12:
        return None
    y1, y2 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x1, x2 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    return np.dstack([image[y1:y2, x1:x2, :3], mask[y1:y2, x1:x2].astype(np.uint8) * 255])


def solidity(mask: np.ndarray) -> float:
    """Solidity of a mask: area over convex-hull area of its largest outline.

    The outline is the largest external contour found by OpenCV (holes are not subtracted); both
    areas are polygon areas through the boundary pixels' centres. 1 for a filled rectangle, close to 1
    for a disc (0.95 at a radius of 10 px), low for crescents and fragments.

    Parameters
    ----------
    mask : (H, W) ndarray
        Mask, nonzero pixels are foreground.

    Returns
    -------
    solidity : float
        In [0, 1]; 0.0 for an empty mask or an outline with no area (a line, a single pixel).

    Examples
    --------
    >>> solidity(np.ones((5, 5), bool)), solidity(np.zeros((5, 5), bool))
    (1.0, 0.0)
    >>> ell = np.zeros((10, 10), bool); ell[:, :3] = True; ell[-3:] = True
    >>> round(solidity(ell), 3)
    0.575
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    c = max(contours, key=cv2.contourArea)
    hull = cv2.contourArea(cv2.convexHull(c))
    return float(cv2.contourArea(c) / hull) if hull > 0 else 0.0


def round_cell(mask: np.ndarray, min_solidity: float = 0.9, fill: tuple[float, float] = (0.55, 0.84),
               max_edge: float = 0.3) -> bool:
    """Whether a mask in its box is a clean, whole single cell.

    It must have at least 12 px and sides of at least 4 px, be convex enough (:func:`solidity`), fill
    its box like an ellipse does (an inscribed ellipse fills pi/4 = 0.785 of it), and not be cut off by
    the box (a pseudo-mask clipped by its box runs along the box's sides).

    Parameters
    ----------
    mask : (h, w) ndarray of bool
        The mask, cropped to its box (the array's border is the box's).
    min_solidity : float, optional
        Smallest :func:`solidity`. Default 0.9.
    fill : tuple of 2 float, optional
        (low, high): allowed range, inclusive, of mask area / box area. Default (0.55, 0.84).
    max_edge : float, optional
        Largest share of the box's border pixels (its four sides; corners counted twice) in the mask.
        Default 0.3.

    Returns
    -------
    ok : bool
        True when every test passes (a Python bool).

    Examples
    --------
    >>> yy, xx = np.mgrid[:21, :21]
    >>> disc = (yy - 10) ** 2 + (xx - 10) ** 2 <= 100
    >>> round_cell(disc), round_cell(np.ones((21, 21), bool))   # a square fills its box
    (True, False)
    """
    if mask.size == 0 or mask.sum() < 12 or min(mask.shape) < 4:
        return False
    ratio = mask.sum() / mask.size
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).mean()
    return bool(fill[0] <= ratio <= fill[1] and edge <= max_edge and solidity(mask) >= min_solidity)


@_takes_photo()
def box_cell(image: np.ndarray, box: tuple[float, float, float, float], platelet: bool = False) -> np.ndarray | None:
    """The RGBA crop of the clean, whole red cell (or platelet) in a detection box, or None.

    The cell's mask is :func:`mask_in_box`'s (default margin, no ``kind``); the crop is
    :func:`cut_rgba`'s (the mask as alpha, 2 px padding).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
    box : tuple of 4 float
        (x1, y1, x2, y2), px; rounded to whole px (as :func:`mask_in_box` rounds them).
    platelet : bool, optional
        Judge as a platelet, which may be less round: :func:`round_cell` with solidity >= 0.8, fill
        0.2-0.84 and edge share <= 0.4 (instead of 0.9, 0.55-0.84 and 0.3). Default False.

    Returns
    -------
    rgba : (h, w, 4) ndarray of uint8 or None
        The crop around the cell; None when the rounded box comes within 2 px of the image's border
        (x1 <= 2, y1 <= 2, x2 >= W - 2 or y2 >= H - 2) or the mask is no clean, whole cell
        (:func:`round_cell`).

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :60]
    >>> img = np.full((60, 60, 3), 235, np.uint8); img[(yy - 30) ** 2 + (xx - 30) ** 2 < 100] = (200, 90, 110)
    >>> box_cell(img, (19, 19, 41, 41)).shape[2], box_cell(img, (0, 19, 41, 41))
    (4, None)
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = [int(round(v)) for v in box]
    if x1 <= 2 or y1 <= 2 or x2 >= w - 2 or y2 >= h - 2:
        return None
    m = mask_in_box(image, (x1, y1, x2, y2))
    if not (round_cell(m, 0.8, (0.2, 0.84), 0.4) if platelet else round_cell(m)):
        return None
    full = np.zeros((h, w), bool)
    full[y1:y1 + m.shape[0], x1:x1 + m.shape[1]] = m
    return cut_rgba(image, full)


WBC_METHODS = {"hsv": hsv_wbc_mask, "watershed": watershed_wbc_mask, "blobs": blob_wbc_mask}
NUCLEI_METHODS = ("watershed", "blobs")


@_takes_photo()
def segment_classical(image: np.ndarray, task: str = "wbc", method: str = "hsv"):
    """Run a classical method as a drop-in for the model: a :class:`~hemaseg.core.result.Segmentation`.

    The probabilities are the one-hot class maps. ``task="wbc"``: ``method`` "hsv"
    (:func:`hsv_wbc_mask`), "watershed" (:func:`watershed_wbc_mask`) or "blobs" (:func:`blob_wbc_mask`),
    giving classes 0/1/2 and instances. ``task="nuclei"``: "watershed" (:func:`watershed_cells`, the
    polarity detected) or "blobs" (the connected components of :func:`blob_confidence_mask`, the image
    inverted first when objects are bright), giving classes 0/1 and instances.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
        An image with nothing in it (:func:`~hemaseg.core.content.featureless`) gives a result with
        no object.
    task : {"wbc", "nuclei"}, optional
        What to segment. Default "wbc".
    method : str, optional
        The method of the task (above). Default "hsv" (a WBC method: give one for "nuclei").

    Returns
    -------
    segmentation : Segmentation
        ``classes`` (H, W) uint8; ``instances`` (H, W) int32, 1..N; ``probs`` (3, H, W) float32, the
        class maps 0, 1, 2 as 0/1 (for nuclei the third is all zero); ``cell_diameter`` the median
        equivalent diameter, px, of the objects (0.0 when none); ``scale`` 1.0; ``objects`` one record
        per instance (:func:`~hemaseg.core.labels.wbc_objects` or
        :func:`~hemaseg.core.labels.instance_objects`).

    Raises
    ------
    ValueError
        For an unknown task, or a method the task does not have.

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :100]
    >>> two = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 66) ** 2 < 400)
    >>> img = np.where(two, 60, 220).astype(np.uint8)[..., None].repeat(3, -1)
    >>> seg = segment_classical(img, "nuclei", "watershed")
    >>> seg.count, seg.classes.shape, seg.probs.shape, seg.scale
    (2, (60, 100), (3, 60, 100), 1.0)
    >>> segment_classical(img, "nuclei", "hsv")
    Traceback (most recent call last):
    ...
    ValueError: nuclei methods: watershed, blobs
    """
    from scipy import ndimage as ndi

    image = image[..., :3]
    if task not in ("wbc", "nuclei"):
        raise ValueError(f"no classical method for task {task!r}")
    if method not in (WBC_METHODS if task == "wbc" else NUCLEI_METHODS):
        raise ValueError(f"{task} methods: {', '.join(WBC_METHODS if task == 'wbc' else NUCLEI_METHODS)}")
    if featureless(image):  # nothing to find: no cell (the thresholds would split noise into cells)
        return wbc_segmentation(*_no_wbc(image.shape[:2]))
    if task == "wbc":
        if method not in WBC_METHODS:
            raise ValueError(f"wbc methods: {', '.join(WBC_METHODS)}")
        return wbc_segmentation(*WBC_METHODS[method](image))
    elif task == "nuclei":
        if method == "watershed":
            instances = watershed_cells(image)
        elif method == "blobs":
            # The blob detector wants dark cells on light: invert fluorescence.
            dark_objects = object_polarity(image.astype(np.float32).mean(-1))
            instances, _ = ndi.label(blob_confidence_mask(image if dark_objects else 255 - image))
            instances = instances.astype(np.int32)
        else:
            raise ValueError(f"nuclei methods: {', '.join(NUCLEI_METHODS)}")
        classes = (instances > 0).astype(np.uint8)
        probs = np.stack([classes == 0, classes == 1, np.zeros_like(classes, bool)]).astype(np.float32)
        objects = instance_objects(instances, probs)
    else:
        raise ValueError(f"no classical method for task {task!r}")
    diameters = [o["diameter"] for o in objects]
    return Segmentation(classes, instances, probs, float(np.median(diameters)) if diameters else 0.0, 1.0, objects)


def wbc_segmentation(classes: np.ndarray, instances: np.ndarray) -> Segmentation:
    """The :class:`~hemaseg.core.result.Segmentation` of a classical WBC mask.

    Parameters
    ----------
    classes : (H, W) ndarray of uint8
        0 background, 1 cytoplasm, 2 nucleus.
    instances : (H, W) ndarray of int32
        WBC labels 1..N, 0 background.

    Returns
    -------
    segmentation : Segmentation
        ``classes`` and ``instances`` as given; ``probs`` (3, H, W) float32, the class maps 0, 1, 2 as
        0/1; ``cell_diameter`` the median equivalent diameter, px, of the WBCs (0.0 when none);
        ``scale`` 1.0; ``objects`` one record per WBC (:func:`~hemaseg.core.labels.wbc_objects`).

    Examples
    --------
    >>> classes = np.zeros((30, 30), np.uint8); classes[5:25, 5:25] = 1; classes[10:20, 10:20] = 2
    >>> seg = wbc_segmentation(classes, (classes > 0).astype(np.int32))
    >>> seg.count, seg.probs.shape, round(seg.cell_diameter, 2), seg.objects[0]["nucleus_area"]
    (1, (3, 30, 30), 22.57, 100)
    """
    probs = np.stack([classes == k for k in range(3)]).astype(np.float32)
    objects = wbc_objects(classes, instances, probs)
    diameters = [o["diameter"] for o in objects]
    return Segmentation(classes, instances, probs, float(np.median(diameters)) if diameters else 0.0, 1.0, objects)


def stained(image: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Pixels darker or more saturated than the background: cells of any kind.

    The feature is :func:`darkness` plus the HSV saturation / 255 (blurred by a Gaussian of 1 px); the
    threshold is its Otsu level over the pixels ``where`` is True.

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8
        RGB image (an array; it is not converted).
    where : (H, W) ndarray of bool, optional
        Pixels to find the threshold on, e.g. all but a dark WBC so that pale red cells stand out.
        Default None; None or an all-False mask: all pixels.

    Returns
    -------
    mask : (H, W) ndarray of bool
        True on stained pixels; all False on a flat image.

    Examples
    --------
    >>> img = np.full((20, 20, 3), 235, np.uint8); img[5:15, 5:15] = (200, 120, 130)
    >>> m = stained(img)
    >>> bool(m[10, 10]), bool(m[0, 0]), bool(stained(np.zeros((8, 8, 3), np.uint8)).any())
    (True, False, False)
    """
    hsv = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2HSV).astype(np.float32)
    feat = darkness(image) + cv2.GaussianBlur(hsv[..., 1] / 255.0, (0, 0), 1.0)
    return feat > _otsu(feat if where is None or not where.any() else feat[where])


@_takes_photo()
def red_cell_diameter(image: np.ndarray, exclude: np.ndarray | None = None, min_diameter: float = 6.0
                      ) -> float | None:
    """Typical red-cell diameter, px, or None when there is no ruler.

    From the :func:`stained` pixels outside ``exclude`` (the threshold is found on those pixels, so a
    dark WBC does not set it): opened (disk of 1 px), holes (pale centres) filled, then twice the upper
    quartile of the distance transform's local maxima, plus 1 px (cells cut by the image border or
    touching one another give smaller maxima, never larger ones).

    Parameters
    ----------
    image : (H, W, 3) ndarray of uint8 or str or Path
        RGB photo. Anything :func:`hemaseg.io.images.as_photo` takes is converted to that first (a file
        path, (H, W) grey, RGBA, 16-bit or float array); anything else raises HemasegInputError.
    exclude : (H, W) ndarray, optional
        Pixels to leave out, e.g. the WBC, dilated: its nonzero pixels (bool, or 0/1 of any dtype).
        Default None: none.
    min_diameter : float, optional
        Smallest red-cell diameter, px: maxima under ``min_diameter / 2`` are ignored and maxima are at
        least max(2, int(min_diameter / 2)) px apart. Default 6.0.

    Returns
    -------
    diameter : float or None
        The diameter, px. None when fewer than 4 x ``min_diameter`` ** 2 pixels are left outside
        ``exclude`` or fewer than two maxima are found (about: fewer than two cells seen; a crop filled
        by its WBC has no ruler).

    Examples
    --------
    >>> yy, xx = np.mgrid[:120, :120]
    >>> img = np.full((120, 120, 3), 235, np.uint8)
    >>> for cy, cx in ((30, 30), (30, 80), (85, 40), (90, 95)):
    ...     img[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = (200, 120, 130)
    >>> 27 <= red_cell_diameter(img) <= 33
    True
    >>> red_cell_diameter(img, exclude=np.ones((120, 120), bool)) is None
    True
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    keep = np.ones(image.shape[:2], bool) if exclude is None else np.asarray(exclude) == 0
    if keep.sum() < 4 * min_diameter ** 2:
        return None
    # The threshold is found on what is left once the WBC is out: a dark WBC would otherwise
    # set it, and pale red cells would fall below it.
    cells = stained(image, keep) & keep
    cells = _fill(_open(cells, 1.0))
    dist = ndi.distance_transform_edt(cells)
    peaks = peak_local_max(dist, min_distance=max(2, int(min_diameter / 2)), threshold_abs=min_diameter / 2,
                           exclude_border=False)
    if len(peaks) < 2:
        return None
    return float(2 * np.percentile(dist[tuple(peaks.T)], 75) + 1)
