"""One resize policy: how images go to and from a model's scale."""
from __future__ import annotations

import cv2
import numpy as np

# Limits of the factor any task may resize an image by before its network.
MIN_FACTOR, MAX_FACTOR = 0.1, 4.0


def clamp_factor(factor: float) -> float:
    """``factor`` clipped to [:data:`MIN_FACTOR`, :data:`MAX_FACTOR`].

    >>> clamp_factor(10.0), clamp_factor(0.5)
    (4.0, 0.5)
    """
    return float(np.clip(factor, MIN_FACTOR, MAX_FACTOR))


def rescale(image: np.ndarray, factor: float, interpolation: int | None = None) -> np.ndarray:
    """Resize an image by ``factor`` (area when shrinking, linear when enlarging)."""
    if abs(factor - 1.0) < 1e-3:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if interpolation is None:
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, h, w) float maps resized (linear) to ``shape`` (H, W): back to the input's size."""
    if probs.shape[1:] == tuple(shape):
        return probs
    h, w = shape
    return np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])
