"""Kaggle run-length encoding (Data Science Bowl 2018 submission format).

Pixels are numbered from 1, top to bottom then left to right (column-major); a mask
is written as ``"start length start length ..."``.
"""
from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Run-length encode an (H, W) boolean mask in the Kaggle format.

    >>> m = np.zeros((3, 3), bool); m[1:, 0] = True; m[0, 2] = True
    >>> rle_encode(m)
    '2 2 7 1'
    """
    flat = np.asarray(mask, bool).T.ravel()
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into an (H, W) boolean mask of ``shape``.

    >>> rle_decode('2 2 7 1', (3, 3)).astype(int).tolist()
    [[0, 0, 1], [1, 0, 0], [1, 0, 0]]
    """
    h, w = shape
    flat = np.zeros(h * w, bool)
    nums = np.array(rle.split(), dtype=np.int64)
    if len(nums) % 2:
        raise ValueError("RLE has an odd number of values")
    for start, length in zip(nums[0::2], nums[1::2]):
        if start < 1 or length < 0 or start - 1 + length > h * w:
            raise ValueError(f"run {start} {length} lies outside a {h}x{w} image")
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(w, h).T


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One RLE string per instance of an (H, W) label image (0 background), in label order."""
    ids = np.unique(labels)
    return [rle_encode(labels == i) for i in ids[ids > 0]]


def rles_to_labels(rles: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Paint RLE masks as instances 1..N: (H, W) uint16 label image (later masks win overlaps)."""
    out = np.zeros(shape, np.uint16 if len(rles) < 65535 else np.int32)
    for i, r in enumerate(rles, 1):
        out[rle_decode(r, shape)] = i
    return out
