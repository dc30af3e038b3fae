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


def resize_argmax(probs: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``resize_probs(probs, shape).argmax(0)`` as uint8, and the resized first map (background),
    without the (K, H, W) float stack: one channel is resized at a time (ties go to the lower
    class, as with ``argmax``), so the float memory is three maps whatever K.

    >>> p = np.stack([np.full((2, 2), 0.5, np.float32), np.eye(2, dtype=np.float32)])
    >>> cls, bg = resize_argmax(p, (2, 2))
    >>> cls.tolist(), bg.tolist()
    ([[1, 0], [0, 1]], [[0.5, 0.5], [0.5, 0.5]])
    """
    h, w = shape
    same = probs.shape[1:] == tuple(shape)

    def channel(k: int) -> np.ndarray:
        return probs[k] if same else cv2.resize(probs[k], (w, h), interpolation=cv2.INTER_LINEAR)

    first = channel(0)
    best = first.copy()
    classes = np.zeros((h, w), np.uint8)
    for k in range(1, probs.shape[0]):
        p = channel(k)
        better = p > best
        classes[better] = k
        np.maximum(best, p, out=best)
    return classes, first
