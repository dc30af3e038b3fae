"""Normalisation and albumentations pipelines (geometry, scale, stain/colour, optics)."""
from __future__ import annotations

import cv2
import numpy as np

from hemaseg.core.content import channel_percentiles


def percentile_range(image: np.ndarray, low: float = 1.0, high: float = 99.0, max_pixels: int = 1_000_000) -> np.ndarray:
    """Per-channel (low, high) percentiles of an (H, W, C) image as a (2, C) float32 array.

    Large images are subsampled on a regular grid so the cost stays flat.
    """
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    return channel_percentiles(image[::step, ::step].reshape(-1, image.shape[-1]), (low, high))


def is_bright_background(image: np.ndarray, prange: np.ndarray | None = None) -> bool:
    """True when most of an (H, W, C) image is brighter than the middle of its range (brightfield, H&E).

    Such images are inverted for the nuclei model, so that nuclei are bright on dark as
    in fluorescence and one network serves every modality.

    >>> dark = np.zeros((20, 20, 3), np.uint8); dark[5:9, 5:9] = 200
    >>> is_bright_background(dark), is_bright_background(255 - dark)
    (False, True)
    """
    if prange is None:
        prange = percentile_range(image)
    lo, hi = prange[0].mean(), prange[1].mean()
    step = max(1, int(np.ceil(np.sqrt(image.shape[0] * image.shape[1] / 250_000))))
    grey = image[::step, ::step].astype(np.float32).mean(-1)
    return bool(np.median(grey) > (lo + hi) / 2)


def normalize(image: np.ndarray, low: float = 1.0, high: float = 99.0, prange: np.ndarray | None = None,
              invert: bool = False) -> np.ndarray:
    """Map each channel's (low, high) percentiles to (0, 1): (H, W, C) float32.

    Per-channel stretching removes most of a lab's colour cast (yellowish, pink,
    bluish backgrounds) before the network sees the image.

    >>> img = np.stack([np.linspace(10, 200, 100).reshape(10, 10)] * 3, -1).astype(np.uint8)
    >>> x = normalize(img)
    >>> bool(abs(float(np.median(x)) - 0.5) < 0.05)
    True
    """
    if prange is None:
        prange = percentile_range(image, low, high)
    lo, hi = prange[0], prange[1]
    scale = 1.0 / np.maximum(hi - lo, 1e-3)
    x = ((image.astype(np.float32) - lo) * scale).astype(np.float32)
    return 1.0 - x if invert else x


def seed_transform(transform, seed: int) -> None:
    """Seed an albumentations pipeline with ONE numpy and one Python stream that its transforms share.

    ``Compose.set_random_seed(s)`` gives every child transform its own generator seeded ``s``, so the
    children draw the same numbers: a horizontal and a vertical flip of equal ``p`` fire together (a
    180 degree turn, never a mirror) and every other pair of equal ``p`` moves in step. Shared streams
    draw each transform's chance apart, and are as reproducible.

    >>> import albumentations as A
    >>> t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    >>> seed_transform(t, 123)
    >>> img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    >>> flips = {(bool(o[0, 0] in (3, 15)), bool(o[0, 0] in (12, 15))) for o in (t(image=img)["image"] for _ in range(40))}
    >>> len(flips)  # all four combinations of the two flips, not only both or neither
    4
    """
    import random

    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def train_transform(crop: int, augment: bool = True, scale: tuple[float, float] = (0.5, 2.0)):
    """Training pipeline on uint8 RGB + label mask: geometry, scale, stain/colour, optics.

    ``augment=False`` keeps only flips/90° rotations and the crop (the ablation baseline).
    """
    import albumentations as A

    geo = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    if not augment:
        return A.Compose(geo + [A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(crop, crop)])
    geo += [
        A.Affine(scale=scale, rotate=(-180, 180), balanced_scale=True, border_mode=cv2.BORDER_REFLECT_101, p=0.9),
        A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(crop, crop),
    ]
    return A.Compose(geo + colour_augs() + optics_augs())


def colour_augs() -> list:
    """Stain and colour changes of other labs: re-staining, lamp colour, hue, contrast, grey."""
    import albumentations as A

    return [
        # Stain: H&E-like re-staining, Planck (warm/cool light), hue rotations and
        # saturation changes cover yellowish, pink-purple and bluish smears.
        A.OneOf([
            A.HEStain(method="random_preset", p=1.0),
            A.PlanckianJitter(mode="blackbody", p=1.0),
            A.HueSaturationValue(hue_shift_limit=40, sat_shift_limit=50, val_shift_limit=25, p=1.0),
        ], p=0.8),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4, hue=0.1, p=0.7),
        A.RGBShift(r_shift_limit=25, g_shift_limit=25, b_shift_limit=25, p=0.3),
        A.RandomGamma(gamma_limit=(70, 150), p=0.3),
        A.ToGray(p=0.05),
        A.ChannelShuffle(p=0.05),
    ]


def optics_augs() -> list:
    """Focus, resolution, sensor noise and compression of other microscopes and cameras."""
    import albumentations as A

    return [
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0), A.Downscale(scale_range=(0.4, 0.8), p=1.0),
                 A.MotionBlur(blur_limit=5, p=1.0)], p=0.3),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.2),
    ]


CROP_COLOURS = ("rgb", "grey", "stain", "shape", "shape-hue", "rgb+shape")
NEEDS_PARTS = ("shape", "shape-hue", "rgb+shape")  # inputs drawn from the crop's cell parts as well as its pixels


def input_channels(colour: str) -> int:
    """Channels of the :func:`crop_input` ``colour``: 3 for each input it joins ("rgb+shape": 6).

    >>> input_channels("rgb"), input_channels("rgb+shape")
    (3, 6)
    """
    return 3 * len(colour.split("+"))
# Reference optical densities of the two dyes (columns: the blue-purple one that stains nuclei and
# granules, the pink one that stains red cells and cytoplasm) that :func:`stain_normalise` maps every
# crop's own two dyes onto: Macenko et al.'s reference matrix (ISBI 2009).
STAIN_REFERENCE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
STAIN_WHITE = 240.0  # the light through an empty part of the slide, after white balance
STAIN_MIN_OD = 0.15  # pixels whose optical density is under this in a channel are too clear to measure the dyes on
STAIN_ANGLE_PERCENTILE = 1.0  # the dyes' directions: the 1st and 99th percentile angles of the stained pixels


def stain_normalise(image: np.ndarray) -> np.ndarray:
    """A crop redrawn as if stained and lit like every other one (Macenko et al. 2009): (H, W, 3) uint8.

    The crop is white-balanced on its brightest pixels (each channel's 99th percentile becomes
    :data:`STAIN_WHITE`: a yellowish lamp or slide turns neutral), turned into optical density, and its
    two dyes' directions are estimated from the stained pixels (the extreme angles in the plane of their
    two main axes). Each pixel's amount of each dye is then redrawn with the reference dyes
    (:data:`STAIN_REFERENCE`). The amounts are kept as measured, so a dark basophil stays darker than a
    pale lymphocyte; only the dyes' hues and the light change. A crop with too few stained pixels, or
    one dye only (a grey image), is returned unchanged.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> amounts = rng.uniform(0, 1.5, (2, 32 * 32))
    >>> def stained(dyes, light):  # two dyes of other hues under a yellowish lamp
    ...     od = np.asarray(dyes) @ amounts
    ...     return np.clip(np.asarray(light)[:, None] * np.exp(-od), 0, 255).T.reshape(32, 32, 3).astype(np.uint8)
    >>> a = stained([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]], [250, 240, 190])
    >>> b = stained([[0.49, 0.27], [0.77, 0.72], [0.41, 0.63]], [245, 245, 245])
    >>> before = np.abs(a.astype(int) - b).mean()
    >>> after = np.abs(stain_normalise(a).astype(int) - stain_normalise(b)).mean()
    >>> bool(after < before / 3)
    True
    """
    rgb = np.ascontiguousarray(image[..., :3]).reshape(-1, 3)
    # white balance + optical density through one 256-entry table per channel
    hist = np.stack([np.bincount(rgb[:, c], minlength=256) for c in range(3)])
    white = np.maximum(np.argmax(np.cumsum(hist, 1) >= 0.99 * len(rgb), axis=1), 1).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    table = np.maximum(-np.log((values[None] * (STAIN_WHITE / white[:, None]) + 1.0) / STAIN_WHITE), 0.0)
    od = np.stack([table[c][rgb[:, c]] for c in range(3)], 1)
    stained = od[(od >= STAIN_MIN_OD).all(1)]
    if len(stained) < 50:
        return image
    _, axes = np.linalg.eigh(np.cov(stained.T))
    plane = axes[:, 1:3]
    t = stained @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [STAIN_ANGLE_PERCENTILE, 100 - STAIN_ANGLE_PERCENTILE])
    if hi - lo < 0.05:
        return image  # one dye: nothing to separate
    dyes = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi)]
    dyes = [d * np.sign(d.sum()) for d in dyes]
    # the dye that absorbs more red light (blue-purple: nuclei, granules) first
    matrix = np.stack(dyes if dyes[0][0] > dyes[1][0] else dyes[::-1], 1)
    amounts = np.linalg.pinv(matrix) @ od.T
    out = STAIN_WHITE * np.exp(-(STAIN_REFERENCE @ amounts))
    return np.clip(out.T + 0.5, 0, 255).astype(np.uint8).reshape(image.shape[:2] + (3,))


def crop_input(image: np.ndarray, colour: str = "rgb", low: float = 1.0, high: float = 99.0,
               parts: np.ndarray | None = None) -> np.ndarray:
    """A cell crop as a WBC-type classifier sees it: (H, W, 3) float32. ``colour`` "rgb" stretches
    each channel's (``low``, ``high``) percentiles to (0, 1) (:func:`normalize`); "grey" first takes the
    luminance into all three channels, so that a lab's stain and lamp colours cannot decide a type
    (what is left: the nucleus' shape, the granules' texture, the cell's lightness); "stain" first
    redraws the crop with reference dyes and light (:func:`stain_normalise`); "shape" is the stretched
    luminance beside the WBC segmentation's nucleus and whole-cell masks, taken from ``parts``
    ((H, W) uint8: 0 outside the cell, 1 cytoplasm, 2 nucleus), so the nucleus' shape and share of
    the cell are given, not read from a lab's colours; "shape-hue" keeps one colour cue beside them:
    the stretched luminance, the balance of the two dyes (red minus blue, stretched on the crop's own
    range: eosin-orange granules against azure-purple ones, whatever the lab's overall tint) and the
    parts in one channel (0 outside, 0.5 cytoplasm, 1 nucleus). "rgb+shape" is the "rgb" input beside
    the "shape" input, (H, W, 6): what the two-member typer (:func:`hemaseg.models.classifier.wbc_ensemble`)
    splits between its members.

    >>> crop = np.zeros((4, 4, 3), np.uint8); crop[..., 0] = np.arange(16).reshape(4, 4) * 10
    >>> x = crop_input(crop, "grey")
    >>> x.shape, bool(np.allclose(x[..., 0], x[..., 2]))
    ((4, 4, 3), True)
    >>> parts = np.zeros((4, 4), np.uint8); parts[1:3, 1:3] = 1; parts[1, 1] = 2
    >>> x = crop_input(crop, "shape", parts=parts)
    >>> int(x[..., 1].sum()), int(x[..., 2].sum())  # nucleus, cell
    (1, 4)
    >>> x = crop_input(crop, "shape-hue", parts=parts)
    >>> float(x[1, 1, 2]), float(x[1, 2, 2]), float(x[0, 0, 2])  # nucleus, cytoplasm, outside
    (1.0, 0.5, 0.0)
    >>> crop_input(crop, "rgb+shape", parts=parts).shape
    (4, 4, 6)
    """
    if colour not in CROP_COLOURS:
        raise ValueError(f"colour {colour!r}: one of {', '.join(CROP_COLOURS)}")
    if "+" in colour:
        return np.concatenate([crop_input(image, c, low, high, parts) for c in colour.split("+")], -1)
    if colour in NEEDS_PARTS:
        if parts is None or parts.shape != image.shape[:2] or parts.dtype == bool:
            raise ValueError(f"the {colour!r} input needs the crop's cell parts, an (H, W) 0/1/2 map of its size")
        rgb = np.ascontiguousarray(image[..., :3])
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
        if colour == "shape-hue":
            # red minus blue, halved into uint8 (the stretch that follows is the same; uint8 takes the fast percentiles)
            balance = ((rgb[..., :1].astype(np.int16) - rgb[..., 2:3]) // 2 + 128).astype(np.uint8)
            return np.concatenate([normalize(grey, low, high), normalize(balance, low, high),
                                   parts[..., None].astype(np.float32) / 2], -1)
        return np.concatenate([normalize(grey, low, high), (parts == 2)[..., None].astype(np.float32),
                               (parts > 0)[..., None].astype(np.float32)], -1)
    if colour == "grey":
        grey = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
        image = np.repeat(grey[..., None], 3, -1)
    elif colour == "stain":
        image = stain_normalise(image)
    return normalize(image, low, high)


def replace_background(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put the cell (``mask``, dilated a little) on a new background: a random tint (white, pink,
    yellowish, bluish) with low-frequency texture and grain, as other labs' slides look (seed 003's
    background augmentation). (H, W, 3) uint8."""
    h, w = mask.shape
    tint = rng.uniform([200, 170, 170], [255, 245, 245]).astype(np.float32)
    low = cv2.resize(rng.normal(0, 1, (4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    bg = tint[None, None] * (1 + 0.06 * low[..., None]) + rng.normal(0, 3, (h, w, 1))
    keep = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
    alpha = cv2.GaussianBlur(keep.astype(np.float32), (0, 0), 2.0)[..., None]
    return np.clip(alpha * image + (1 - alpha) * bg, 0, 255).astype(np.uint8)


def slide_background(image: np.ndarray, cells: np.ndarray) -> tuple[int, int, int]:
    """The slide's background colour in an (H, W, 3) image: the per-channel median of the lighter
    half of the pixels outside ``cells`` (an (H, W) bool map of the cells to leave out), so red cells
    count as little as the WBC. The whole image's lighter half when nothing is left.

    >>> im = np.full((10, 10, 3), (240, 230, 235), np.uint8); im[2:8, 2:8] = (120, 60, 160)
    >>> cells = np.zeros((10, 10), bool); cells[2:8, 2:8] = True
    >>> slide_background(im, cells)
    (240, 230, 235)
    """
    grey = image[..., :3].astype(np.float32).mean(-1)
    out = ~cells if (~cells).sum() >= 16 else np.ones(cells.shape, bool)
    light = out & (grey >= np.median(grey[out]))
    return tuple(int(v) for v in np.median(image[..., :3][light], 0))


def cut_tight(image: np.ndarray, parts: np.ndarray, rng: np.random.Generator,
              depth: tuple[float, float] = (-0.05, 0.12)) -> tuple[np.ndarray, np.ndarray]:
    """A cell-normalised crop as if it had been cut tight around its WBC's box (BCCD's crops are):
    on each side with probability one half (at least one side), everything beyond a line at the
    cell's edge moved inwards by ``depth`` (a share of the cell's extent; negative: outside it) is
    replaced by the slide's background colour (:func:`slide_background`) and taken out of the cell's
    ``parts`` ((H, W) uint8, 0 outside the cell). Returns (image, parts), new arrays. An approximation:
    a crop really cut tight is re-centred and rescaled on the cell's visible part when normalised;
    here the cut cell keeps its place and scale (and its ruler, measured on the whole cell).

    >>> im = np.full((40, 40, 3), 230, np.uint8); parts = np.zeros((40, 40), np.uint8); parts[10:30, 10:30] = 1
    >>> im[parts > 0] = 90
    >>> cut, p = cut_tight(im, parts, np.random.default_rng(0), depth=(0.1, 0.1))
    >>> bool(p.sum() < parts.sum()), bool((cut[p == 0] == 230).all())
    (True, True)
    """
    cell = parts > 0
    image, parts = image.copy(), parts.copy()
    if not cell.any():
        return image, parts
    colour = np.array(slide_background(image, cell), image.dtype)
    ys, xs = np.nonzero(cell)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sides = rng.random(4) < 0.5
    if not sides.any():
        sides[rng.integers(4)] = True
    k = rng.uniform(*depth, 4)
    h, w = parts.shape
    # the cut lines: top, bottom, left, right, each moved into the cell by its share of the extent
    at = np.round([y0 + k[0] * (y1 - y0), y1 - k[1] * (y1 - y0), x0 + k[2] * (x1 - x0), x1 - k[3] * (x1 - x0)])
    at = np.clip(at, 0, [h, h, w, w]).astype(int)
    cuts = (np.s_[:at[0], :], np.s_[at[1]:, :], np.s_[:, :at[2]], np.s_[:, at[3]:])
    for on, sl in zip(sides, cuts):
        if not on:
            continue
        image[sl] = colour
        parts[sl] = 0
    return image, parts


def classify_transform(augment: bool = True):
    """Training pipeline for cell crops: flips, rotations, zoom-out, stain/colour, optics (seed 003's
    recipe: stain shifts, cooling/heating, zoom-out, blur, rotations, flips, noise)."""
    import albumentations as A

    geo = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    if not augment:
        return A.Compose(geo)
    geo.append(A.Affine(scale=(0.7, 1.15), rotate=(-180, 180), translate_percent=(-0.06, 0.06),
                        border_mode=cv2.BORDER_REFLECT_101, p=0.9))
    return A.Compose(geo + colour_augs() + optics_augs())


def look_stats(image: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """A slide's look: the CIELAB mean and standard deviation, (2, 3) float32, of an (H, W, 3) uint8
    RGB image's pixels (``where``: a bool mask of the pixels to use; all when None or too few).

    >>> pink = np.full((8, 8, 3), (230, 180, 190), np.uint8)
    >>> s = look_stats(pink)
    >>> s.shape, bool(s[0, 1] > 0), bool(s[1].max() < 1e-3)
    ((2, 3), True, True)
    """
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    if where is not None and int(where.sum()) >= 16:
        lab = lab[where.reshape(-1)]
    return np.stack([lab.mean(0), lab.std(0)]).astype(np.float32)


def transfer_look(image: np.ndarray, source: np.ndarray, target: np.ndarray, max_gain: float = 2.0) -> np.ndarray:
    """Redraw an (H, W, 3) uint8 RGB image in another slide's look (Reinhard et al. 2001 colour
    transfer): each CIELAB channel is shifted and scaled so that the statistics ``source`` (of this
    image, :func:`look_stats`) become ``target`` (of another lab's image). The gain is kept within
    ``1 / max_gain``-``max_gain``. Measured on the pixels around a cell (its red cells and background),
    the cell keeps its colour relative to them: a lab's stain and lamp change, the cell's type does not.

    >>> img = np.full((4, 4, 3), (200, 150, 160), np.uint8)
    >>> out = transfer_look(img, look_stats(img), look_stats(np.full((4, 4, 3), (170, 170, 230), np.uint8)))
    >>> [int(v) for v in out[0, 0]]
    [170, 170, 230]
    """
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    gain = np.clip(target[1] / np.maximum(source[1], 1e-3), 1.0 / max_gain, max_gain)
    lab = (lab - source[0]) * gain + target[0]
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
