"""Model inference on whole images: scale to the model's cell diameter, tile, stitch,
post-process. Arrays in, arrays out."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import torch

from hemaseg.data.transforms import normalize, percentile_range, rescale
from hemaseg.infer.postprocess import (clean_wbc_classes, keep_nucleated, limit_cytoplasm, open_cells, split_instances,
                                      wbc_objects)
from hemaseg.infer.tiling import predict_tiled

log = logging.getLogger(__name__)

# Rescaling is skipped when the estimated scale is within this factor of 1: the model
# was trained over 0.5-2x, and resampling costs time and sharpness.
SCALE_DEADBAND = 1.25
MIN_FACTOR, MAX_FACTOR = 0.1, 4.0
# Smallest WBC kept, as a fraction of the area of a cell of the estimated diameter: small
# lymphocytes (~0.5x the diameter of a monocyte) stay, platelets (<0.25x) go.
MIN_CELL_FRACTION = 0.15
# Farthest cytoplasm from the nucleus, in nucleus diameters (wbc-seg annotations: max 1.03).
MAX_REACH = 1.0
# Opening radius as a fraction of the cell diameter: removes arms thinner than ~1/8 of a cell.
OPEN_RADIUS = 0.06


@dataclass
class Segmentation:
    """Result of :func:`segment` for one image."""

    classes: np.ndarray  # (H, W) uint8 class indices of the task
    instances: np.ndarray  # (H, W) int32 instance labels 1..N (0 background)
    probs: np.ndarray  # (K, H, W) float32 class probabilities
    cell_diameter: float  # px in the input image (given or estimated)
    scale: float  # factor the image was resized by before the network
    objects: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of instances found."""
        return len(self.objects)


@lru_cache(maxsize=8)
def _cached_model(name: str, device: str):
    from hemaseg.models.registry import load_model

    return load_model(name, device)


def get_model(model, device: str = "cpu"):
    """Return (module, card) for a model name/path, or pass a (module, card) tuple through."""
    if isinstance(model, tuple):
        return model
    return _cached_model(str(model), device)


def predict_probs(module: torch.nn.Module, card: dict, image: np.ndarray, factor: float = 1.0,
                  tile: int = 1024, overlap: int = 64, prange: np.ndarray | None = None,
                  invert: bool = False, tta: bool = False) -> np.ndarray:
    """Class probabilities of ``image`` (H, W, 3) uint8 resized by ``factor``, back at (K, H, W) float32.

    ``invert`` flips the normalised intensities (bright-background images for the nuclei model);
    ``tta`` averages the predictions of the image and its three flips (4x the time)."""
    if tta:
        views = [(slice(None), slice(None)), (slice(None, None, -1), slice(None)),
                 (slice(None), slice(None, None, -1)), (slice(None, None, -1), slice(None, None, -1))]
        acc = None
        for vy, vx in views:
            p = predict_probs(module, card, np.ascontiguousarray(image[vy, vx]), factor, tile, overlap, prange, invert)
            p = p[:, vy, vx]
            acc = p if acc is None else acc + p
        return acc / len(views)
    norm = card.get("normalization", {})
    low, high = norm.get("low", 1.0), norm.get("high", 99.0)
    if prange is None:
        prange = percentile_range(image, low, high)
    small = rescale(image, factor)
    stride = int(getattr(module, "stride", 32))
    probs = predict_tiled(module, small, tile=tile, overlap=overlap, stride=stride,
                          preprocess=lambda t: normalize(t, prange=prange, invert=invert))
    if small.shape[:2] != image.shape[:2]:
        h, w = image.shape[:2]
        probs = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])
    return probs


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


def _min_area(diameter: float) -> int:
    return max(int(MIN_CELL_FRACTION * np.pi * (diameter / 2) ** 2), 10)


def _wbc_instances(probs: np.ndarray, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """Post-process probabilities into (classes, instances) of nucleated cells of about ``diameter`` px."""
    classes = probs.argmax(0).astype(np.uint8)
    min_area = _min_area(diameter)
    classes = clean_wbc_classes(open_cells(classes, OPEN_RADIUS * diameter), min_area)
    instances = split_instances(classes > 0, diameter, min_area)
    # Every WBC has a nucleus, red cells have none: a "cell" without one is dropped, and
    # no cell reaches farther from its nucleus than annotated WBCs do.
    classes, instances = keep_nucleated(classes, instances, min_area=min_area // 4)
    return limit_cytoplasm(classes, instances, MAX_REACH)


# First-pass scales, tried in order until nucleated cells are found. At 0.5 the model
# (trained over 0.5-2x) sees cells of 1-4x its trained diameter, the usual case for
# images of other labs (higher magnification); 1.0 and 2.0 catch smaller cells.
FIRST_PASS_FACTORS = (0.5, 1.0, 2.0)


def _measure_at(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray,
                factor: float, tile: int, overlap: int) -> tuple[float | None, np.ndarray]:
    """Run the model at ``factor``; return (diameter px in the input of the nucleated cells, probs)."""
    trained = float(card.get("cell_diameter") or 0)
    probs = predict_probs(module, card, image, factor, tile, overlap, prange)
    _, instances = _wbc_instances(probs, trained / factor)
    d = measure_diameter(instances, min_area=_min_area(trained / factor))
    return d, probs


def _estimate_scale(module: torch.nn.Module, card: dict, image: np.ndarray, prange: np.ndarray,
                    tile: int = 1024, overlap: int = 64) -> tuple[float | None, np.ndarray, float]:
    """Find the cell diameter by running the model until the cells it finds have the trained size.

    A first pass at half scale (then native, then double, until cells are found) measures
    the nucleated cells; passes at the implied scale refine that, as Cellpose refines its
    size estimate from a segmentation. Returns (diameter px or None, probabilities of the
    last pass, its factor).
    """
    trained = float(card.get("cell_diameter") or 0)
    if trained <= 0:
        return None, predict_probs(module, card, image, 1.0, tile, overlap, prange), 1.0
    # Very large images: keep the first passes under ~2048 px on the long side.
    shrink = min(1.0, 2048 / max(image.shape[:2]))
    diameter, probs, factor = None, None, 1.0
    for f in FIRST_PASS_FACTORS:
        factor = f * shrink
        diameter, probs = _measure_at(module, card, image, prange, factor, tile, overlap)
        if diameter is not None:
            break
    if diameter is None:
        factor = 1.0
        return None, predict_probs(module, card, image, factor, tile, overlap, prange), factor
    for _ in range(3):
        new = scale_factor(card, diameter)
        if abs(np.log(new / factor)) < np.log(SCALE_DEADBAND):
            break
        factor = new
        d, probs = _measure_at(module, card, image, prange, factor, tile, overlap)
        if d is None:
            break
        diameter = d
    return diameter, probs, factor


def estimate_diameter(image: np.ndarray, model="wbc", device: str = "cpu") -> float | None:
    """Estimate the WBC diameter (px) in an (H, W, 3) image with the model itself, None if no cell."""
    module, card = get_model(model, device)
    norm = card.get("normalization", {})
    return _estimate_scale(module, card, image, percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0)))[0]


def scale_factor(card: dict, cell_diameter: float | None) -> float:
    """Resize factor that brings cells of ``cell_diameter`` px to the model's trained diameter."""
    trained = float(card.get("cell_diameter") or 0)
    if not cell_diameter or trained <= 0:
        return 1.0
    factor = trained / float(cell_diameter)
    if 1 / SCALE_DEADBAND <= factor <= SCALE_DEADBAND:
        return 1.0
    return float(np.clip(factor, MIN_FACTOR, MAX_FACTOR))


def segment(image: np.ndarray, model="wbc", cell_diameter: float | None = None, device: str = "cpu",
            tile: int = 1024, overlap: int = 64, tta: bool | None = None) -> Segmentation:
    """Segment WBCs (cytoplasm + nucleus) in an (H, W, 3) uint8 image and split them into instances.

    With a nuclei model (``model="nuclei"``) it finds nuclei instances instead (see
    :func:`hemaseg.infer.nuclei.segment_nuclei`); with a smear10 model the 10-class map
    (:func:`hemaseg.infer.smear.segment_smear`, ``cell_diameter`` = red-cell diameter).

    ``cell_diameter`` (px) rescales the image to the model's trained diameter; when None
    it is estimated from the image. ``model`` is a bundled name, a path, or (module, card).
    ``tta`` (smear10 only) averages the final pass over the image's flips; None: the model card's choice.
    """
    module, card = get_model(model, device)
    if card.get("task") == "nuclei":
        from hemaseg.infer.nuclei import segment_nuclei

        return segment_nuclei(image, (module, card), cell_diameter, tile=tile, overlap=overlap)
    if card.get("task") == "smear10":
        from hemaseg.infer.smear import segment_smear

        return segment_smear(image, (module, card), cell_diameter, device, tile=tile, overlap=overlap, tta=tta)
    norm = card.get("normalization", {})
    prange = percentile_range(image, norm.get("low", 1.0), norm.get("high", 99.0))
    if cell_diameter is None:
        cell_diameter, probs, factor = _estimate_scale(module, card, image, prange, tile, overlap)
    else:
        factor = scale_factor(card, cell_diameter)
        probs = predict_probs(module, card, image, factor, tile, overlap, prange)
    diameter = float(cell_diameter or (float(card.get("cell_diameter") or 50.0) / factor))
    classes, instances = _wbc_instances(probs, diameter)
    objects = wbc_objects(classes, instances, probs)
    return Segmentation(classes, instances, probs, diameter, factor, objects)
