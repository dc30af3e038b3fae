"""Synthetic blood smears for the 10-class map (seed 002): real single-cell crops and procedural
cells composited on plain backgrounds, with the class map, instance map and JSON labels.

A :class:`CellBank` holds RGBA cell crops per smear10 class (real crops from
``../shared/data`` when given, split by source photo into train/val/test; procedural cells
always). :func:`compose` draws one image from a bank with :class:`SynthConfig`'s ranges.

>>> bank = CellBank.procedural()
>>> s = compose(bank, SynthConfig(size=96), np.random.default_rng(0))
>>> s.image.shape, s.classes.shape, s.instances.dtype.name
((96, 96, 3), (96, 96), 'uint16')
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hemaseg.classical import box_cell, central_instance, cut_rgba, hsv_wbc_mask, solidity
from hemaseg.core.vocabulary import UNTYPED
from hemaseg.io.annotations import YOLO_NAME_FILES, read_yolo
from hemaseg.io.datasets import canonical_type, find_labelled_cells, read_voc
from hemaseg.io.images import read_image, read_mask
from hemaseg.io.writers import write_json, write_png
from hemaseg.progress import track
from hemaseg.tasks.smear10.classes import CLASSES, PALETTE
from hemaseg.tasks.wbc_type.crops import CROP_MARGIN, square_crop

log = logging.getLogger(__name__)

BACKGROUND, EOSINOPHIL, BASOPHIL, NEUTROPHIL, LYMPHOCYTE, MONOCYTE, THROMBOCYTE, CLUMP, INFECTED, HEALTHY = range(10)
WBC_CLASSES = {"eosinophil": EOSINOPHIL, "basophil": BASOPHIL, "neutrophil": NEUTROPHIL,
               "lymphocyte": LYMPHOCYTE, "monocyte": MONOCYTE}
PARTS = ("train", "val", "test")
HEALTHY_TWIN = 10  # bank key (not a map class): healthy red cells painted from infected crops, drawn as HEALTHY


@dataclass
class SynthConfig:
    """Every synthesis parameter, with defaults chosen for variety (stains, scales, densities)."""

    size: int = 224
    rbc_diameter: tuple[float, float] = (20.0, 44.0)  # px; sets the magnification of the whole image
    # share of the canvas covered by red cells; up to a whole field (seed 002 composes whole fields: the
    # bundled map was fine-tuned on 0.1-1.0 at stop 49, +0.013 mean IoU on such validation composites)
    rbc_coverage: tuple[float, float] = (0.1, 1.0)
    rbc_modes: tuple[float, float, float] = (0.4, 0.3, 0.3)  # healthy only / infected only / mixed
    infected_share: tuple[float, float] = (0.1, 0.6)  # in mixed images
    wbc_counts: tuple[float, ...] = (0.15, 0.5, 0.25, 0.1)  # P(0, 1, 2, 3 WBCs)
    wbc_ratio: dict = field(default_factory=lambda: {  # WBC diameter / RBC diameter per type
        "lymphocyte": (1.0, 1.5), "neutrophil": (1.4, 1.9), "eosinophil": (1.5, 2.0),
        "basophil": (1.3, 1.8), "monocyte": (1.7, 2.4)})
    thrombocytes: tuple[int, int] = (0, 5)
    clump_probability: float = 0.4  # chance of 1-2 platelet clumps in an image
    platelet_ratio: tuple[float, float] = (0.2, 0.4)  # platelet diameter / RBC diameter
    real_share: float = 0.8  # chance a cell is a real crop when the bank has one of its class
    overlap: float = 0.55  # red cell centres at least this many diameters apart (denser: lower)
    feather: float = 0.8  # px; Gaussian softening of every pasted cell's edge
    dark_background: float = 0.08  # chance of a dark (grey to black) background as some composites use
    stain_jitter: float = 1.0  # strength of the per-image colour change (0: none)
    blur: tuple[float, float] = (0.0, 1.0)  # px, per image
    real_infected: float = 0.7  # chance an infected red cell is a real MP-IDB crop (else parasites drawn)
    overlap_darken: float = 0.5  # chance that red cells lying on one another darken where they overlap, as light does
    refractile: float = 0.15  # chance a healthy red cell carries bright refractile dots (no parasite)
    twin_share: float = 0.25  # chance a healthy red cell is an MP-IDB cell with its parasite painted out
    seed_style: float = 0.3  # chance of a composite made the way seed 002 made its own (:func:`compose`)


def synth_config(params: list[str] | tuple[str, ...] = (), **fixed) -> SynthConfig:
    """:class:`SynthConfig` with ``key=value`` overrides (values in JSON: ``dark_background=0.3``,
    ``rbc_diameter=[30,60]``), then ``fixed`` keyword values.

    >>> synth_config(["dark_background=0.3", "rbc_diameter=[30, 60]"], size=96).rbc_diameter
    (30.0, 60.0)
    """
    import json
    from dataclasses import fields, replace

    known = {f.name: f for f in fields(SynthConfig)}
    base = SynthConfig()
    kw = {}
    for item in params:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"synthesis parameter {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"synthesis parameter {key}: {text!r} is not a JSON value") from None
        default = getattr(base, key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or len(value) != len(default) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"synthesis parameter {key}: expected a list of {len(default)} numbers, got {text}")
            value = tuple(float(v) if isinstance(d, float) else v for v, d in zip(value, default))
        elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"synthesis parameter {key}: expected a number, got {text}")
        _check_param(key, value, text)
        if key == "wbc_ratio":  # the types not given keep their defaults (a type missing failed when drawn)
            value = {**base.wbc_ratio, **{k: tuple(float(x) for x in v) for k, v in value.items()}}
        kw[key] = value
    return replace(base, **{**kw, **fixed})


# What each parameter may hold (:func:`synth_config` checks a value given as KEY=VALUE against it).
_CHANCES = {"clump_probability", "real_share", "dark_background", "real_infected", "overlap_darken", "refractile",
            "twin_share", "seed_style"}  # one probability
_SHARE_RANGES = {"rbc_coverage", "infected_share"}  # (low, high) within 0-1
_RANGES = {"rbc_diameter": 2.0, "platelet_ratio": 1e-3, "thrombocytes": 0.0, "blur": 0.0}  # (low, high), low >= this
_WEIGHTS = {"rbc_modes", "wbc_counts"}  # chances, none negative, not all 0
_NON_NEGATIVE = {"overlap", "feather", "stain_jitter"}


def _check_param(key: str, value, text: str) -> None:
    """ValueError naming ``key`` when ``value`` is not a value that parameter can take.

    >>> _check_param("rbc_diameter", (60.0, 40.0), "[60,40]")
    Traceback (most recent call last):
    ...
    ValueError: synthesis parameter rbc_diameter: [60,40] is no range (low <= high, low >= 2.0)
    """
    def numbers(v) -> bool:
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)

    if key == "size":
        raise ValueError("synthesis parameter size: give --size instead")
    if isinstance(value, tuple) and not numbers(value):
        raise ValueError(f"synthesis parameter {key}: {text} holds something that is not a number")
    if key in _CHANCES and not 0 <= value <= 1:
        raise ValueError(f"synthesis parameter {key}: {text} is a chance; give a number from 0 to 1")
    if key in _SHARE_RANGES and not 0 <= value[0] <= value[1] <= 1:
        raise ValueError(f"synthesis parameter {key}: {text} is no range of shares (0 <= low <= high <= 1)")
    if key in _RANGES and not _RANGES[key] <= value[0] <= value[1]:
        raise ValueError(f"synthesis parameter {key}: {text} is no range (low <= high, low >= {_RANGES[key]})")
    if key in _WEIGHTS and (min(value) < 0 or sum(value) <= 0):
        raise ValueError(f"synthesis parameter {key}: {text}: chances must be >= 0, not all 0")
    if key in _NON_NEGATIVE and value < 0:
        raise ValueError(f"synthesis parameter {key}: {text} must be >= 0")
    if key == "wbc_ratio":
        types = set(SynthConfig().wbc_ratio)
        if not isinstance(value, dict) or not value or not set(value) <= types or not all(
                isinstance(r, list) and len(r) == 2 and numbers(r) and 0 < r[0] <= r[1] for r in value.values()):
            raise ValueError(f"synthesis parameter wbc_ratio: {text}: expected {{TYPE: [low, high], ...}} with TYPE "
                             f"among {', '.join(sorted(types))} and 0 < low <= high")


@dataclass
class Smear:
    """One synthetic smear: ``image`` (H, W, 3) uint8, ``classes`` (H, W) uint8 smear10 indices,
    ``instances`` (H, W) uint16 (0 background), ``labels`` seed-002 JSON dict keyed by instance id."""

    image: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    labels: dict


# ---------------------------------------------------------------- procedural cells
def _noise(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``scale`` px across."""
    h, w = shape
    gh, gw = max(2, int(h / max(scale, 1)) + 2), max(2, int(w / max(scale, 1)) + 2)
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _blob(size: int | tuple[int, int], radius: float, rng: np.random.Generator, wobble: float = 0.08,
          aspect: float = 1.0, centre: tuple[float, float] | None = None) -> np.ndarray:
    """(size, size) (or (h, w)) float32 mask of an irregular disc."""
    h, w = (size, size) if np.isscalar(size) else size
    c = (h / 2, w / 2) if centre is None else centre
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ang = np.arctan2(yy - c[0], xx - c[1])
    k = rng.uniform(0, 2 * np.pi, 3)
    r = radius * (1 + wobble * (np.sin(2 * ang + k[0]) * rng.uniform(0.3, 1) + np.sin(3 * ang + k[1]) * 0.5
                                + np.sin(5 * ang + k[2]) * 0.3))
    d = np.hypot((yy - c[0]) * aspect, xx - c[1])
    return np.clip(r - d + 0.5, 0, 1)


def _rgba(colour_map: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.dstack([np.clip(colour_map, 0, 255), np.clip(alpha, 0, 1) * 255]).astype(np.uint8)


RBC_TONES = ([195, 95, 105], [240, 165, 180])  # RGB range of procedural red cells


def procedural_rbc(d: float, rng: np.random.Generator, tone: np.ndarray | None = None) -> np.ndarray:
    """(S, S, 4) uint8 RGBA red cell of diameter ``d``: pink disc, pale centre, darker rim.

    ``tone`` is the image's red-cell colour (cells of one smear share a stain); each cell varies a little.
    """
    s = int(d * 1.2) + 2
    alpha = _blob(s, d / 2, rng, wobble=0.04, aspect=rng.uniform(0.85, 1.0))
    yy, xx = np.mgrid[:s, :s]
    rr = np.hypot(yy - s / 2, xx - s / 2) / (d / 2)
    tone = rng.uniform(*RBC_TONES) if tone is None else tone
    base = np.asarray(tone, np.float32) * rng.uniform(0.95, 1.05, 3)
    pallor = rng.uniform(0.0, 0.25) * np.exp(-(rr / rng.uniform(0.35, 0.55)) ** 2)
    rim = rng.uniform(0.0, 0.12) * np.exp(-((rr - 0.9) / 0.12) ** 2)
    shade = 1 + pallor - rim + 0.03 * _noise((s, s), rng, d / 4)
    col = base[None, None] * shade[..., None]
    col = col + (255 - col) * pallor[..., None] * 0.6
    return _rgba(col, alpha)


def add_parasites(cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Malaria stages drawn into an RBC crop (RGBA): ring forms with chromatin dots, dots, or a
    trophozoite blob with pigment. Returns a new crop."""
    out = cell.astype(np.float32).copy()
    a = out[..., 3] / 255
    ys, xs = np.nonzero(a > 0.5)
    if len(ys) < 10:
        return cell
    d = 2 * np.sqrt(len(ys) / np.pi)
    purple = rng.uniform([60, 20, 100], [130, 70, 170])
    ink = np.zeros(a.shape, np.float32)
    kind = rng.choice(["ring", "ring", "dots", "troph"])
    n = 1 if kind != "dots" else int(rng.integers(3, 9))
    if kind == "ring":
        n = int(rng.choice([1, 1, 1, 2, 3]))
    for _ in range(n):
        i = rng.integers(len(ys))
        cy, cx = float(ys[i]), float(xs[i])
        if kind == "ring":
            r = d * rng.uniform(0.1, 0.2)
            th = max(1, int(round(d * rng.uniform(0.03, 0.06))))
            cv2.circle(ink, (int(cx), int(cy)), max(1, int(r)), 1.0, th, lineType=cv2.LINE_AA)
            ang = rng.uniform(0, 2 * np.pi)
            cv2.circle(ink, (int(cx + r * np.cos(ang)), int(cy + r * np.sin(ang))), max(1, int(d * 0.06)), 1.0, -1,
                       lineType=cv2.LINE_AA)
        elif kind == "dots":
            cv2.circle(ink, (int(cx), int(cy)), max(1, int(d * rng.uniform(0.03, 0.07))), 1.0, -1, lineType=cv2.LINE_AA)
        else:
            blob = _blob(a.shape, d * rng.uniform(0.15, 0.3), rng, wobble=0.25, centre=(cy, cx))
            ink = np.maximum(ink, blob * 0.85)
            for _ in range(int(rng.integers(2, 6))):
                j = rng.integers(len(ys))
                if blob[ys[j], xs[j]] > 0.5:
                    cv2.circle(ink, (int(xs[j]), int(ys[j])), 1, 1.0, -1)
    ink = np.minimum(ink, 1) * (a > 0.3)
    out[..., :3] = out[..., :3] * (1 - ink[..., None]) + purple * ink[..., None]
    return out.clip(0, 255).astype(np.uint8)


def add_refractile_dots(cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-3 bright refractile dots (glare of a drying artefact, with a thin dark halo) on an RGBA red
    cell: what a healthy cell often shows on a real slide and a parasite never looks like.

    >>> yy, xx = np.mgrid[:30, :30]
    >>> cell = np.zeros((30, 30, 4), np.uint8); cell[(yy - 15) ** 2 + (xx - 15) ** 2 < 144] = (200, 120, 130, 255)
    >>> int(add_refractile_dots(cell, np.random.default_rng(0))[..., :3].max()) > 230
    True
    """
    out = cell.astype(np.float32)
    h, w = cell.shape[:2]
    inside = np.argwhere(cell[..., 3] > 200)
    if len(inside) == 0:
        return cell
    d = 2 * np.sqrt(len(inside) / np.pi)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = inside[int(rng.integers(len(inside)))]
        r = max(0.8, d * rng.uniform(0.03, 0.07))
        dist = np.hypot(yy - cy, xx - cx)
        halo = np.clip(1 - np.abs(dist - 1.6 * r) / r, 0, 1)[..., None] * 0.25
        core = np.clip(1.5 - dist / r, 0, 1)[..., None]
        out[..., :3] = out[..., :3] * (1 - halo) * (1 - core) + 250 * core
    return out.clip(0, 255).astype(np.uint8)


def procedural_platelet(d: float, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 4) RGBA platelet of diameter ``d``: small irregular purple body with granules."""
    s = int(d * 1.6) + 3
    alpha = _blob(s, d / 2, rng, wobble=0.2, aspect=rng.uniform(0.7, 1.0))
    base = rng.uniform([110, 60, 140], [190, 130, 210])
    gran = np.clip(_noise((s, s), rng, max(d / 5, 1.5)), 0, 1)
    col = base[None, None] * (1 - 0.35 * gran[..., None])
    return _rgba(col, alpha)


def _lobes(size: int, centre: tuple[float, float], radius: float, n: int, rng: np.random.Generator,
           spread: float) -> np.ndarray:
    """Mask of ``n`` nucleus lobes strung along an arc (segmented nuclei)."""
    mask = np.zeros((size, size), np.float32)
    start = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(0.8, 1.3) * (1.6 * np.pi / max(n, 2))
    pts = []
    for k in range(n):
        ang = start + k * step
        pts.append((centre[0] + spread * np.sin(ang), centre[1] + spread * np.cos(ang)))
        mask = np.maximum(mask, _blob(size, radius * rng.uniform(0.85, 1.1), rng, 0.12, centre=pts[-1]))
    for (y0, x0), (y1, x1) in zip(pts, pts[1:]):  # thin chromatin bridges between lobes
        cv2.line(mask, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, max(1, int(radius * 0.25)), cv2.LINE_AA)
    return mask


def procedural_wbc(kind: str, d: float, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 4) RGBA white cell of type ``kind`` and diameter ``d`` (Wright/Giemsa look)."""
    s = int(d * 1.15) + 4
    c = (s / 2, s / 2)
    cell = _blob(s, d / 2, rng, wobble=0.05, aspect=rng.uniform(0.85, 1.0))
    nucleus_rgb = rng.uniform([70, 30, 110], [140, 90, 190])
    if kind == "lymphocyte":
        cyto_rgb = rng.uniform([150, 170, 210], [210, 215, 245])
        nuc = _blob(s, d / 2 * rng.uniform(0.72, 0.88), rng, 0.06,
                    centre=(c[0] + rng.uniform(-1, 1) * d * 0.06, c[1] + rng.uniform(-1, 1) * d * 0.06))
        granules = None
    elif kind == "monocyte":
        cyto_rgb = rng.uniform([170, 165, 195], [215, 205, 235])
        nuc = _blob(s, d / 2 * rng.uniform(0.45, 0.6), rng, 0.1, aspect=rng.uniform(0.6, 0.85))
        bite = _blob(s, d * 0.2, rng, 0.1, centre=(c[0] + d * 0.28, c[1] + rng.uniform(-1, 1) * d * 0.1))
        nuc = np.clip(nuc - bite, 0, 1)  # kidney shape
        granules = None
    elif kind == "neutrophil":
        cyto_rgb = rng.uniform([205, 180, 195], [240, 215, 230])
        nuc = _lobes(s, c, d * rng.uniform(0.12, 0.16), int(rng.integers(2, 6)), rng, d * 0.2)
        granules = (rng.uniform([180, 140, 170], [215, 175, 205]), 0.3, d / 30)
    elif kind == "eosinophil":
        cyto_rgb = rng.uniform([215, 150, 120], [245, 190, 160])
        nuc = _lobes(s, c, d * rng.uniform(0.15, 0.19), 2, rng, d * 0.2)
        granules = (rng.uniform([200, 80, 50], [240, 130, 100]), 0.75, d / 22)
    else:  # basophil: dark granules over the whole cell hide the nucleus
        cyto_rgb = rng.uniform([160, 130, 190], [210, 180, 225])
        nuc = _lobes(s, c, d * rng.uniform(0.14, 0.18), 2, rng, d * 0.15)
        granules = (rng.uniform([50, 20, 80], [100, 60, 140]), 0.7, d / 20)
    nuc = np.minimum(nuc, cell)
    col = np.broadcast_to(cyto_rgb, (s, s, 3)).astype(np.float32) * (1 + 0.04 * _noise((s, s), rng, d / 6))[..., None]

    def sprinkle(col: np.ndarray) -> np.ndarray:
        g_rgb, density, g_size = granules
        g = (_noise((s, s), rng, max(g_size, 1.0)) > 1 - density).astype(np.float32)
        g = cv2.GaussianBlur(g, (0, 0), 0.5) * cell
        return col * (1 - g[..., None]) + g_rgb * g[..., None]

    if granules is not None and kind != "basophil":
        col = sprinkle(col)
    tex = 1 + 0.12 * _noise((s, s), rng, d / 10)
    col = col * (1 - nuc[..., None]) + (nucleus_rgb * tex[..., None]) * nuc[..., None]
    if kind == "basophil":  # its granules lie over the nucleus and hide it
        col = sprinkle(col)
    return _rgba(col, cell)


# ---------------------------------------------------------------- the bank of cells
def _part_of(source: str, seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """Stable train/val/test assignment of a source photo (hash of its name and the seed)."""
    h = int(hashlib.sha1(f"{seed}:{source}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if h < fractions[0] else "val" if h < fractions[0] + fractions[1] else "test"


def crop_key(path: str | Path) -> str:
    """``<folder>/<file name>`` of a crop: how split files name single-cell crops."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def _wbc_part(path: Path, source: str, seed: int, held_out: set[str] | None) -> str:
    if held_out is None:
        return _part_of(source, seed)
    if crop_key(path) not in held_out:
        return "train"
    return "val" if _part_of(source, seed, (0.0, 0.5)) == "val" else "test"


def malaria_cell_mask(image: np.ndarray, black: int = 14) -> np.ndarray | None:
    """The cell of a crop whose background is masked black: the largest non-black region, holes
    filled, its rim (blended with the black) eroded away; None when the crop is all black."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(image[..., :3].max(-1) > black)
    if n == 0:
        return None
    k = 1 + int(np.argmax(ndi.sum(np.ones_like(lab), lab, range(1, n + 1))))
    m = ndi.binary_fill_holes(lab == k)
    return cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def parasite_mask(image: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Stained spots inside a red cell: darker than the cell's median lightness (CIELAB L) by
    more than its spread, or bluer (b) by more than 10, grown by 2 px and kept inside the cell."""
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.float32)
    light, blue = lab[..., 0], lab[..., 2]
    lm, bm, spread = np.median(light[cell]), np.median(blue[cell]), float(np.std(light[cell]))
    spots = cell & ((light < lm - max(12.0, 1.2 * spread)) | (blue < bm - 10))
    return cv2.dilate(spots.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2).astype(bool) & cell


def healthy_twin(image: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The infected red cell with its parasite painted out (OpenCV's Telea inpainting): a healthy
    cell of the same lab, stain and blur, so the map must look for the parasite, not the look.

    >>> yy, xx = np.mgrid[:40, :40]
    >>> cell = (yy - 20) ** 2 + (xx - 20) ** 2 < 300
    >>> img = np.zeros((40, 40, 3), np.uint8); img[cell] = (215, 160, 170); img[18:23, 18:23] = (90, 40, 140)
    >>> int(healthy_twin(img, cell)[20, 20, 0]) > 180
    True
    """
    spots = parasite_mask(image, cell)
    return cv2.inpaint(np.ascontiguousarray(image[..., :3]), spots.astype(np.uint8), 5, cv2.INPAINT_TELEA)


# the folders the public sets' rules read by name; any other --data folder may be a lab's own (CellBank._add_own)
PUBLIC_FOLDERS = ("Dataset 1", "bccd-wbc", "pbc", "malaria-crops", "txl-pbc")


def central_cell(img: np.ndarray, target: int) -> np.ndarray | None:
    """The RGBA cut of the stained object at the centre of a single-cell crop (:func:`hemaseg.classical.hsv_wbc_mask`),
    when it is solid and of a WBC's (or, for ``THROMBOCYTE``, a platelet's) share of the crop; else None."""
    _, inst = hsv_wbc_mask(img)
    k = central_instance(inst)
    if not k:
        return None
    m = inst == k
    share = m.mean()
    ok = 0.005 < share < 0.05 if target == THROMBOCYTE else 0.04 < share < 0.6
    return cut_rgba(img, m) if ok and solidity(m) >= (0.8 if target == THROMBOCYTE else 0.85) else None


def _named(root: Path, name: str) -> list[Path]:
    """``root`` itself when it is the folder called ``name`` (``--data ../shared/data/pbc``), and every folder of
    that name under it (``--data ../shared/data``): a data set's own folder given directly was searched below
    only, and gave no cell without a word."""
    return ([root] if root.name == name else []) + sorted(root.rglob(name))


@dataclass
class CellBank:
    """RGBA crops per smear10 class index (real cells), plus procedural cells on demand."""

    crops: dict[int, list[np.ndarray]] = field(default_factory=dict)
    backgrounds: list[tuple[float, float, float]] = field(default_factory=list)  # source slides' plasma colours
    # a lab's own crops of a type no smear10 class is drawn from ({"image": folder, "reason": ...}): named, not used
    left_out: list[dict] = field(default_factory=list)

    @classmethod
    def procedural(cls) -> "CellBank":
        """A bank with no real crops: every cell is drawn procedurally."""
        return cls()

    def count(self) -> dict[str, int]:
        """Real crops per class name."""
        return {CLASSES[k] if k < len(CLASSES) else "healthy rbc (twin)": len(v) for k, v in sorted(self.crops.items())}

    def add(self, cls_index: int, crop: np.ndarray | None) -> None:
        if crop is not None and crop.shape[0] >= 4 and crop.shape[1] >= 4:
            self.crops.setdefault(cls_index, []).append(crop)

    @classmethod
    def from_data(cls, root: str | Path, part: str = "train", seed: int = 0, max_per_class: int = 1500,
                  progress: bool = False, held_out: set[str] | None = None) -> "CellBank":
        """Real crops of one ``part`` (train/val/test, split by source photo) from the data sets
        under ``root``: wbc-seg WBCs (mask + type CSV), BCCD WBC crops (typed folders; the cell cut
        by :func:`hemaseg.classical.hsv_wbc_mask`), BCCD photos' RBC and platelet boxes (cut by
        :func:`hemaseg.classical.mask_in_box`).

        ``held_out``: WBC crops (``<folder>/<file name>``) another model (the WBC-type classifier)
        never trained on. When given, exactly these WBC crops make the val and test parts (half
        each, by hash) and all other WBC crops the train part, so a pipeline using both models
        is tested on WBCs neither has seen."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}")
        root = Path(root)
        bank = cls()
        rng = np.random.default_rng(seed)
        for folder in sorted(p for p in _named(root, "Dataset 1") if p.is_dir()):  # wbc-seg
            for path, kind in find_labelled_cells(folder.parent):
                mpath = path.with_suffix(".png")
                if kind not in WBC_CLASSES or not mpath.exists() or _wbc_part(path, f"wbcseg/{path.stem}", seed,
                                                                                held_out) != part:
                    continue
                img, m = read_image(path), read_mask(mpath)
                bank.add(WBC_CLASSES[kind], cut_rgba(img, m > 0))
                bank.backgrounds.append(tuple(np.median(img[m == 0].reshape(-1, 3), 0)))
        for folder in sorted(p for p in _named(root, "bccd-wbc") if p.is_dir()):
            for path, kind in find_labelled_cells(folder):
                source = path.stem.rsplit("_", 1)[0]
                if kind not in WBC_CLASSES or _wbc_part(path, f"bccd/{source}", seed, held_out) != part:
                    continue
                img = read_image(path)
                _, inst = hsv_wbc_mask(img)
                k = central_instance(inst)
                if k and 0.08 < (inst == k).mean() < 0.85 and solidity(inst == k) >= 0.85:
                    bank.add(WBC_CLASSES[kind], cut_rgba(img, inst == k))
        bank._add_pbc(root, part, seed, held_out, max_per_class)
        bank._add_malaria(root, part, seed, max_per_class)
        bank._add_txl(root, part, seed, max_per_class, progress)
        xmls = sorted(p for p in root.rglob("Annotations/*.xml"))
        if not xmls and not bank.crops and not bank.backgrounds and root.name not in PUBLIC_FOLDERS:
            bank._add_own(root, part, seed, held_out, max_per_class, progress)
        rng.shuffle(xmls)
        for xml in track(xmls, "cut BCCD cells", leave=False) if progress else xmls:
            if _part_of(f"bccd/{xml.stem}", seed) != part:
                continue
            jpg = xml.parent.parent / "JPEGImages" / f"{xml.stem}.jpg"
            if not jpg.exists():
                continue
            img = read_image(jpg)
            for name, box in read_voc(xml):
                target = {"rbc": HEALTHY, "platelets": THROMBOCYTE, "platelet": THROMBOCYTE}.get(name.lower())
                if target is None or len(bank.crops.get(target, [])) >= max_per_class:
                    continue
                bank.add(target, box_cell(img, box, platelet=target == THROMBOCYTE))
            bank.backgrounds.append(tuple(np.percentile(img.reshape(-1, 3), 90, axis=0)))
        log.info("cell bank %s: %s", part, bank.count())
        return bank

    def _add_pbc(self, root: Path, part: str, seed: int, held_out: set[str] | None, max_per_class: int) -> None:
        """PBC (CellaVision) crops: the five WBC types and single platelets, each the central
        stained object of its crop (:func:`hemaseg.classical.hsv_wbc_mask`), kept when solid."""
        for folder in sorted(p for p in _named(root, "pbc") if p.is_dir() and (p / "basophil").is_dir()):
            for kind in (*WBC_CLASSES, "platelet"):
                target = WBC_CLASSES.get(kind, THROMBOCYTE)
                paths = sorted((folder / kind).glob("*.jpg"))
                taken = 0
                for path in paths:
                    if taken >= max_per_class // 3:  # PBC must not crowd out the other labs' cells
                        break
                    key = f"pbc/{path.stem}"
                    if (_wbc_part(path, key, seed, held_out) if target != THROMBOCYTE else _part_of(key, seed)) != part:
                        continue
                    crop = central_cell(read_image(path), target)
                    if crop is not None:
                        self.add(target, crop)
                        taken += 1

    def _add_malaria(self, root: Path, part: str, seed: int, max_per_class: int) -> None:
        """MP-IDB infected red cells (background masked black): the cell is the non-black region.
        Each also gives a healthy twin, its parasite painted out (:func:`healthy_twin`), so that
        infected and healthy cells of this lab differ only by the parasite."""
        for folder in sorted(p for p in _named(root, "malaria-crops") if p.is_dir()):
            for path in sorted(folder.glob("*/*.png"))[: 3 * max_per_class]:
                photo = path.stem.rsplit("-", 1)[0]  # <photo>-<stage><k>
                if _part_of(f"mpidb/{photo}", seed) != part:
                    continue
                img = read_image(path)
                m = malaria_cell_mask(img)
                if m is None or m.sum() < 150 or solidity(m) < 0.85:
                    continue
                self.add(INFECTED, cut_rgba(img, m))
                self.add(HEALTHY_TWIN, cut_rgba(healthy_twin(img, m), m))

    def _add_txl(self, root: Path, part: str, seed: int, max_per_class: int, progress: bool) -> None:
        """TXL-PBC fields of four labs (PBC, Raabin, BCCD, BCDD): red cells and platelets cut from
        their boxes (:func:`hemaseg.classical.mask_in_box`). TXL's own split decides the part."""
        for folder in sorted(p for p in _named(root, "txl-pbc") if p.is_dir() and (p / "images").is_dir()):
            entries = [e for e in read_yolo(folder) if Path(e["filename"]).parts[1:2] == (part,)]
            self._add_fields(folder, entries, seed, max_per_class, progress, "cut TXL-PBC cells")

    def _add_fields(self, folder: Path, entries: list[dict], seed: int, max_per_class: int, progress: bool,
                    what: str, own: bool = False) -> None:
        """Red cells and platelets cut from boxed fields (:func:`hemaseg.classical.box_cell`), and WBCs whose box
        names their type (a lab's own fields: the stained cell at the box's centre, :func:`central_cell`); a box
        named an infected red cell is one. ``own``: a lab's fields, whose boxes of a type no class is drawn from
        (ig, erythroblast; not an untyped "wbc") are named in :attr:`left_out`."""
        entries = list(entries)
        np.random.default_rng(seed).shuffle(entries)
        taken: dict[int, int] = {}
        unusable: dict[str, int] = {}
        for e in track(entries, what, leave=False) if progress else entries:
            if taken.get(HEALTHY, 0) >= max_per_class and taken.get(THROMBOCYTE, 0) >= max_per_class // 3:
                break
            img = read_image(folder / e["filename"])
            for rec in e["masks"]:
                kind = canonical_type(rec["class_name"])
                # an infected red cell's box was cut as a healthy one (a review, stop 69): the map learnt it healthy
                target = INFECTED if kind == "infected rbc" else WBC_CLASSES.get(
                    kind, {"rbc": HEALTHY, "platelet": THROMBOCYTE}.get(rec["category"]))
                if target is None and own and kind != "wbc":
                    unusable[kind] = unusable.get(kind, 0) + 1
                if target is None or taken.get(target, 0) >= (max_per_class if target != THROMBOCYTE
                                                               else max_per_class // 3):
                    continue
                b = rec["bounding_box"]
                if target in WBC_CLASSES.values():  # the box and a margin: the cell is found in it, as in a crop
                    crop = central_cell(square_crop(img, b, CROP_MARGIN), target)
                else:
                    crop = box_cell(img, (b["x1"], b["y1"], b["x2"], b["y2"]), platelet=target == THROMBOCYTE)
                if crop is not None:
                    self.add(target, crop)
                    taken[target] = taken.get(target, 0) + 1
            self.backgrounds.append(tuple(np.percentile(img.reshape(-1, 3), 90, axis=0)))
        for kind, n in sorted(unusable.items()):
            self.left_out.append({"image": str(folder), "reason": (
                f"{n} box(es) of type {kind!r}, from which no smear10 class is drawn: left out (boxes of red cells, "
                f"infected red cells, platelets and WBCs of the types {', '.join(WBC_CLASSES)} are drawn)")})

    def _add_own(self, root: Path, part: str, seed: int, held_out: set[str] | None, max_per_class: int,
                 progress: bool) -> None:
        """A lab's own folder under any name (the public sets are known by theirs): typed single-cell crops
        (``<type>/`` sub-folders, as ``train wbc-type`` reads them; each cut as PBC's are, :func:`central_cell`)
        or a YOLO folder of boxed fields (red cells, platelets, WBCs whose box names their type). Crops are
        split into parts by file, fields by their ``images/<split>/`` folder, else by file."""
        if any((root / f).is_file() for f in YOLO_NAME_FILES):
            entries = read_yolo(root)

            def split_of(e: dict) -> str | None:  # images/<split>/x.png; Roboflow calls val "valid"
                parts = Path(e["filename"]).parts
                name = parts[1] if len(parts) > 2 and parts[0] == "images" else None
                return {"valid": "val", "validation": "val"}.get(name, name)

            # its own split where it has all three parts; else (train/ alone, train/ + valid/) by file
            by_folder = set(PARTS) <= {split_of(e) for e in entries}
            mine = [e for e in entries if (split_of(e) == part if by_folder
                                           else _part_of(f"own/{e['filename']}", seed) == part)]
            self._add_fields(root, mine, seed, max_per_class, progress, f"cut cells of {root.name}", own=True)
            return
        unusable: dict[str, list[Path]] = {}
        for path, kind in find_labelled_cells(root):
            target = WBC_CLASSES.get(kind, THROMBOCYTE if kind == "platelet" else None)
            if target is None and kind != UNTYPED:  # dropped unsaid (a walkthrough, stop 69: infected rbc/, smudge/)
                unusable.setdefault(kind, []).append(path)
            key = f"own/{path.parent.name}/{path.stem}"
            if target is None or len(self.crops.get(target, [])) >= max_per_class or (
                    _wbc_part(path, key, seed, held_out) if target != THROMBOCYTE else _part_of(key, seed)) != part:
                continue
            crop = central_cell(read_image(path), target)
            if crop is not None:
                self.add(target, crop)
        for kind, paths in sorted(unusable.items()):
            self.left_out.append({"image": str(paths[0].parent), "reason": (
                f"{len(paths)} crop(s) of type {kind!r}, from which no smear10 class is drawn: left out (own crops: "
                f"{', '.join(WBC_CLASSES)} and platelet; infected red cells: a malaria-crops/ folder, cells on black)")})

    def save(self, path: str | Path) -> Path:
        """Cache as one .npz (crops are ragged: stored as flat arrays + shapes)."""
        arrays = {}
        for k, crops in self.crops.items():
            arrays[f"c{k}_shapes"] = np.array([c.shape for c in crops], np.int32)
            arrays[f"c{k}_data"] = np.concatenate([c.ravel() for c in crops])
        arrays["backgrounds"] = np.array(self.backgrounds, np.float32).reshape(-1, 3)
        arrays["left_out"] = np.array(json.dumps(self.left_out))  # (a resume from the cache names them again)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CellBank":
        data = np.load(path)
        bank = cls(backgrounds=[tuple(b) for b in data["backgrounds"]],
                   left_out=json.loads(str(data["left_out"])) if "left_out" in data.files else [])
        for key in data.files:
            if key.endswith("_shapes"):
                k = int(key[1:-7])
                flat, start = data[f"c{k}_data"], 0
                for shape in data[key]:
                    n = int(np.prod(shape))
                    bank.add(k, flat[start:start + n].reshape(shape))
                    start += n
        return bank

    def cell(self, cls_index: int, diameter: float, rng: np.random.Generator, cfg: SynthConfig,
             wbc_kind: str = "", tone: np.ndarray | None = None) -> np.ndarray:
        """An RGBA cell of ``cls_index`` scaled so its equivalent diameter is ``diameter``."""
        parasites = cls_index == INFECTED
        real = self.crops.get(cls_index, [])
        if cls_index == INFECTED and not (real and rng.random() < cfg.real_infected):
            cls_index, real = HEALTHY, self.crops.get(HEALTHY, [])  # a healthy cell, parasites drawn on it
        elif cls_index == INFECTED:
            parasites = False  # a real infected cell (MP-IDB) has its own parasite
        if cls_index == HEALTHY and self.crops.get(HEALTHY_TWIN) and (not real or rng.random() < cfg.twin_share):
            real = self.crops[HEALTHY_TWIN]
        if real and rng.random() < cfg.real_share:
            crop = real[int(rng.integers(len(real)))]
            own = 2 * np.sqrt(max((crop[..., 3] > 127).sum(), 1) / np.pi)
            crop = _resize(crop, diameter / own)
            crop = _jitter_crop(crop, rng)
        elif cls_index in (HEALTHY, INFECTED):
            crop = procedural_rbc(diameter, rng, tone)
        elif cls_index == THROMBOCYTE:
            crop = procedural_platelet(diameter, rng)
        else:
            crop = procedural_wbc(wbc_kind or CLASSES[cls_index], diameter, rng)
        if parasites:
            crop = add_parasites(crop, rng)
        return crop


def _resize(crop: np.ndarray, factor: float) -> np.ndarray:
    h, w = crop.shape[:2]
    size = (max(3, int(round(w * factor))), max(3, int(round(h * factor))))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def _jitter_crop(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small per-cell brightness/colour change, so cells of one source do not all look alike."""
    out = crop.astype(np.float32)
    out[..., :3] = out[..., :3] * rng.uniform(0.92, 1.08, 3) + rng.uniform(-8, 8, 3)
    return out.clip(0, 255).astype(np.uint8)


def _rotate(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation (canvas grown to fit) and flip of an RGBA crop."""
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    h, w = crop.shape[:2]
    ang = rng.uniform(0, 360)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos) + 1, int(h * cos + w * sin) + 1
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(np.ascontiguousarray(crop), m, (nw, nh), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))


# ---------------------------------------------------------------- composition
def _background(size: int, rng: np.random.Generator, cfg: SynthConfig, bank: CellBank,
                plain: bool = False) -> np.ndarray:
    """Plasma/glass: white, pink, yellowish (or a source slide's own colour, or dark), shaded and grainy.
    ``plain``: a flat white-to-pink background, as seed 002's composites have."""
    if plain:
        white, pink = np.array([250, 250, 250], np.float32), np.array([245, 215, 225], np.float32)
        t = rng.uniform(0, 1)
        return np.broadcast_to((1 - t) * white + t * pink, (size, size, 3)).astype(np.float32).copy()
    u = rng.random()
    if u < cfg.dark_background:
        tint = np.full(3, rng.uniform(0, 90)) + rng.uniform(-8, 8, 3)
    elif bank.backgrounds and u < 0.35:
        tint = np.array(bank.backgrounds[int(rng.integers(len(bank.backgrounds)))], np.float32)
    else:
        white, pink, yellow = np.array([245, 245, 245]), np.array([240, 205, 215]), np.array([238, 228, 190])
        w = rng.dirichlet([1.0, 1.0, 0.7])
        tint = w[0] * white + w[1] * pink + w[2] * yellow - rng.uniform(0, 40)
    shade = 1 + 0.06 * _noise((size, size), rng, size / 2)
    bg = tint[None, None] * shade[..., None] + rng.normal(0, rng.uniform(1, 4), (size, size, 1))
    return bg.astype(np.float32)


def _paste(canvas: np.ndarray, classes: np.ndarray, instances: np.ndarray, crop: np.ndarray, cx: float, cy: float,
           cls_index: int, inst_id: int, feather: float, transmit: np.ndarray | None = None) -> bool:
    """Alpha-blend an RGBA crop centred at (cx, cy); write its class/instance where alpha > 0.5.
    ``transmit`` (the plasma's RGB): where the crop lies on a red cell already pasted, both absorb
    light, as overlapping cells on a slide do (the cell's transmission, crop / plasma, multiplies
    what is under it) instead of the crop covering it."""
    h, w = crop.shape[:2]
    H, W = classes.shape
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    X1, Y1, X2, Y2 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if X2 <= X1 or Y2 <= Y1:
        return False
    part = crop[Y1 - y0:Y2 - y0, X1 - x0:X2 - x0].astype(np.float32)
    a = part[..., 3] / 255.0
    hard = a > 0.5
    if feather > 0:
        a = cv2.GaussianBlur(a, (0, 0), feather)
    colour = part[..., :3]
    if transmit is not None:
        under = np.isin(classes[Y1:Y2, X1:X2], (HEALTHY, INFECTED))[..., None]
        stacked = canvas[Y1:Y2, X1:X2] * np.clip(colour / np.maximum(transmit, 1.0), 0.0, 1.0)
        colour = np.where(under, stacked, colour)
    canvas[Y1:Y2, X1:X2] = canvas[Y1:Y2, X1:X2] * (1 - a[..., None]) + colour * a[..., None]
    classes[Y1:Y2, X1:X2][hard] = cls_index
    instances[Y1:Y2, X1:X2][hard] = inst_id
    return bool(hard.any())


def _stain(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-image colour change: a random colour matrix near identity, gamma and contrast."""
    if strength <= 0:
        return image
    m = np.eye(3) + rng.normal(0, 0.08 * strength, (3, 3))
    out = image @ m.T.astype(np.float32) + rng.normal(0, 8 * strength, 3)
    out = np.clip(out, 0, 255) / 255.0
    out = out ** rng.uniform(1 - 0.25 * strength, 1 + 0.25 * strength)
    return out * 255.0


def _free_spot(rng: np.random.Generator, size: int, placed: list[tuple[float, float, float]], radius: float,
               min_gap: float, tries: int = 20) -> tuple[float, float]:
    """A centre at least ``min_gap`` x (r1 + r2) from every placed circle, when one is found."""
    best, best_d = None, -1.0
    for _ in range(tries):
        x, y = rng.uniform(-radius * 0.3, size + radius * 0.3, 2)
        d = min((np.hypot(x - px, y - py) / (pr + radius) for px, py, pr in placed), default=9.0)
        if d >= min_gap:
            return float(x), float(y)
        if d > best_d:
            best, best_d = (float(x), float(y)), d
    return best


def seed_style(cfg: SynthConfig) -> SynthConfig:
    """The look of seed 002's own composites: a field of whole real cells (infected only, healthy
    only or mixed, one third each) pasted with hard edges on a plain white-to-pink background,
    each cell keeping its own lab's colour (no stain change over the image, no blur), then one or
    two WBCs, thrombocytes or clumps."""
    from dataclasses import replace

    return replace(cfg, rbc_modes=(1.0, 1.0, 1.0), rbc_coverage=(0.35, 0.85), overlap=0.45,
                   wbc_counts=(0.1, 0.6, 0.3), thrombocytes=(0, 2), clump_probability=0.35, real_share=1.0,
                   real_infected=1.0, feather=0.0, dark_background=0.0, stain_jitter=0.0, blur=(0.0, 0.0),
                   seed_style=0.0, overlap_darken=0.0, refractile=0.0)


def compose(bank: CellBank, cfg: SynthConfig, rng: np.random.Generator) -> Smear:
    """One synthetic smear: red cells (healthy/infected/mixed), then WBCs, thrombocytes, clumps.
    With chance ``cfg.seed_style`` the smear is made as seed 002 made its own (:func:`seed_style`)."""
    plain = False
    if cfg.seed_style > 0 and rng.random() < cfg.seed_style:
        cfg, plain = seed_style(cfg), True
    size = cfg.size
    canvas = _background(size, rng, cfg, bank, plain)
    classes = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint16)
    names: dict[int, int] = {}
    d_rbc = rng.uniform(*cfg.rbc_diameter)
    tone = rng.uniform(*RBC_TONES)
    next_id = 1

    plasma = canvas.reshape(-1, 3).mean(0)
    darken = rng.random() < cfg.overlap_darken

    def put(cls_index: int, d: float, x: float, y: float, kind: str = "") -> None:
        nonlocal next_id
        crop = bank.cell(cls_index, d, rng, cfg, kind, tone)
        if cls_index == HEALTHY and cfg.refractile > 0 and rng.random() < cfg.refractile:
            crop = add_refractile_dots(crop, rng)
        crop = _rotate(crop, rng)
        transmit = plasma if darken and cls_index in (HEALTHY, INFECTED) else None
        if _paste(canvas, classes, instances, crop, x, y, cls_index, next_id, cfg.feather, transmit):
            names[next_id] = cls_index
            next_id += 1

    mode = rng.choice(3, p=np.array(cfg.rbc_modes) / sum(cfg.rbc_modes))
    infected_p = [0.0, 1.0, rng.uniform(*cfg.infected_share)][mode]
    n_rbc = int(rng.uniform(*cfg.rbc_coverage) * size * size / (np.pi * d_rbc ** 2 / 4))
    placed: list[tuple[float, float, float]] = []
    for _ in range(n_rbc):
        d = d_rbc * rng.uniform(0.85, 1.15)
        spot = _free_spot(rng, size, placed, d / 2, cfg.overlap)
        placed.append((*spot, d / 2))
        put(INFECTED if rng.random() < infected_p else HEALTHY, d, *spot)

    n_wbc = int(rng.choice(len(cfg.wbc_counts), p=np.array(cfg.wbc_counts) / sum(cfg.wbc_counts)))
    big: list[tuple[float, float, float]] = []
    for _ in range(n_wbc):
        kind = str(rng.choice(list(WBC_CLASSES)))
        d = d_rbc * rng.uniform(*cfg.wbc_ratio[kind])
        spot = _free_spot(rng, size, big, d / 2, 0.9)
        spot = (float(np.clip(spot[0], d * 0.2, size - d * 0.2)), float(np.clip(spot[1], d * 0.2, size - d * 0.2)))
        big.append((*spot, d / 2))
        put(WBC_CLASSES[kind], d, *spot, kind=kind)

    for _ in range(int(rng.integers(cfg.thrombocytes[0], cfg.thrombocytes[1] + 1))):
        d = d_rbc * rng.uniform(*cfg.platelet_ratio)
        spot = _free_spot(rng, size, big, d / 2, 0.8)
        put(THROMBOCYTE, d, *spot)

    if rng.random() < cfg.clump_probability:
        for _ in range(int(rng.integers(1, 3))):
            _put_clump(bank, cfg, rng, canvas, classes, instances, names, d_rbc, big, next_id)
            next_id = max(names, default=0) + 1

    image = _stain(canvas, rng, cfg.stain_jitter)
    sigma = rng.uniform(*cfg.blur)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = np.clip(image, 0, 255).astype(np.uint8)
    instances, labels = _labels(classes, instances, names)
    return Smear(image, classes, instances, labels)


def _put_clump(bank, cfg, rng, canvas, classes, instances, names, d_rbc, big, inst_id) -> None:
    """A platelet clump: 4-12 platelets packed into one object (one instance, class 7)."""
    d_plt = d_rbc * rng.uniform(*cfg.platelet_ratio)
    n = int(rng.integers(4, 13))
    r = d_plt * (0.45 * np.sqrt(n) + 0.3)
    s = int(2 * r + 2 * d_plt) + 4
    clump = np.zeros((s, s, 4), np.float32)
    for _ in range(n):
        p = bank.cell(THROMBOCYTE, d_plt * rng.uniform(0.8, 1.2), rng, cfg).astype(np.float32)
        ang, rad = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.random())
        cy, cx = s / 2 + rad * np.sin(ang), s / 2 + rad * np.cos(ang)
        h, w = p.shape[:2]
        y0, x0 = int(cy - h / 2), int(cx - w / 2)
        y0, x0 = min(max(0, y0), s - h), min(max(0, x0), s - w)
        a = p[..., 3:] / 255
        region = clump[y0:y0 + h, x0:x0 + w]
        region[..., :3] = region[..., :3] * (1 - a) + p[..., :3] * a
        region[..., 3:] = np.maximum(region[..., 3:], p[..., 3:])
    # Platelets of a clump sit in a faint shared matrix, so the clump is one connected object.
    matrix = cv2.GaussianBlur((clump[..., 3] > 127).astype(np.float32), (0, 0), d_plt * 0.35)
    matrix = (matrix > 0.2).astype(np.float32) * 255
    fill = clump[..., 3] < 1
    clump[..., :3][fill] = np.median(clump[..., :3][~fill], 0) * 1.15
    clump[..., 3] = np.maximum(clump[..., 3], matrix * 0.9)
    spot = _free_spot(rng, classes.shape[0], big, r + d_plt / 2, 0.8)
    big.append((*spot, r + d_plt / 2))
    crop = _rotate(clump.clip(0, 255).astype(np.uint8), rng)
    if _paste(canvas, classes, instances, crop, *spot, CLUMP, inst_id, cfg.feather):
        names[inst_id] = CLUMP


def _labels(classes: np.ndarray, instances: np.ndarray, names: dict[int, int]) -> tuple[np.ndarray, dict]:
    """Renumber visible instances 1..N and describe each one (seed-002 JSON: bbox of visible pixels)."""
    from scipy import ndimage as ndi

    ids = [i for i in sorted(names) if i > 0]
    out = np.zeros_like(instances)
    labels: dict[str, dict] = {}
    slices = ndi.find_objects(instances.astype(np.int32), max_label=max(ids, default=0))
    k = 0
    for i in ids:
        sl = slices[i - 1]
        if sl is None:
            continue
        k += 1
        mask = instances[sl] == i
        out[sl][mask] = k
        y, x = sl
        cls_index = names[i]
        labels[str(k - 1)] = {
            "className": CLASSES[cls_index], "classIdx": cls_index, "instance": k,
            "posX": int((x.start + x.stop) // 2), "posY": int((y.start + y.stop) // 2),
            "bboxW": int(x.stop - x.start), "bboxH": int(y.stop - y.start), "tlX": int(x.start), "tlY": int(y.start),
            "area": int(mask.sum()),
        }
    return out, labels


def colour_map(classes: np.ndarray) -> np.ndarray:
    """(H, W) smear10 class indices -> (H, W, 3) uint8 seed-002 palette image."""
    lut = np.array([PALETTE[k] for k in range(len(CLASSES))], np.uint8)
    return lut[classes]


def write_smear(out: str | Path, name: str, smear: Smear) -> None:
    """Seed-002 folder layout: images/, segments/ (palette), classes/ (indices), instances/ (uint16), labels/ (JSON)."""
    out = Path(out)
    write_png(out / "images" / f"{name}.png", smear.image)
    write_png(out / "segments" / f"{name}.png", colour_map(smear.classes))
    write_png(out / "classes" / f"{name}.png", smear.classes)
    write_png(out / "instances" / f"{name}.png", smear.instances)
    write_json(out / "labels" / f"{name}.json", smear.labels)


def wbc_crops(smear: Smear) -> list[tuple[str, np.ndarray]]:
    """(type, crop) of every WBC of a composite, cut as ``hemaseg analyze`` cuts a found WBC
    (:func:`hemaseg.tasks.wbc_type.crops.square_crop`): training crops for a classifier that must
    name composited cells.

    >>> bank = CellBank.procedural()
    >>> smear = compose(bank, SynthConfig(size=128), np.random.default_rng(3))
    >>> all(name in WBC_CLASSES and crop.ndim == 3 for name, crop in wbc_crops(smear))
    True
    """
    out = []
    for rec in smear.labels.values():
        if rec["className"] in WBC_CLASSES:
            box = {"x1": rec["tlX"], "y1": rec["tlY"], "x2": rec["tlX"] + rec["bboxW"], "y2": rec["tlY"] + rec["bboxH"]}
            out.append((rec["className"], square_crop(smear.image, box, CROP_MARGIN)))
    return out


def image_seed(seed: int, part: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``part``: the same image every time (resume, workers)."""
    return np.random.default_rng([seed, PARTS.index(part) if part in PARTS else 9, index])
