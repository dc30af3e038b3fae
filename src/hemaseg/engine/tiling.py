"""Overlapping tiles with blended stitching: any image size, flat network memory."""
from __future__ import annotations

from typing import Callable

import numpy as np

from hemaseg.engine.runtime import as_runner, softmax

# The one tiling default, from the command line down to training-time validation: the largest
# tile (px at the model's scale) and the overlap blended between neighbouring tiles.
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_size(length: int, max_tile: int, overlap: int, stride: int) -> int:
    """Smallest tile (a multiple of ``stride``, at most ``max_tile``) covering ``length`` with as
    few overlapping tiles as ``max_tile`` allows, so little work is spent on overlaps.

    >>> tile_size(100, 1024, 64, 32), tile_size(2048, 1024, 64, 32)
    (128, 736)
    """
    round_up = lambda v: -(-v // stride) * stride  # noqa: E731
    if length <= max_tile:
        return round_up(length)
    n = -(-(length - overlap) // (max_tile - overlap))
    return min(max_tile, round_up(-(-(length + (n - 1) * overlap) // n)))


def _window(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    """Blend weights: 1 in the middle, a linear ramp to a small floor over ``overlap`` px at edges."""
    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            ramp_ = np.linspace(0.02, 1.0, k, dtype=np.float32)
            r[:k] = ramp_
            r[n - k:] = ramp_[::-1]
        return r

    return np.outer(ramp(tile_h), ramp(tile_w))


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[0], w - x.shape[1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[0] and pw < x.shape[1] else "edge"
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)


def predict_tiled(model, image: np.ndarray, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                  stride: int = 32, batch_size: int = 1, preprocess: Callable | None = None,
                  progress: Callable[[int], None] | None = None, softmax_channels: int | None = None) -> np.ndarray:
    """Softmax probabilities of ``model`` on an (H, W, C) image: (K, H, W) float32.

    ``softmax_channels``: the softmax runs over the first that many channels (the classes) and each
    later channel (a model's extra output, e.g. the nuclei's depth) is a sigmoid; None: every channel
    is a class.

    ``model`` is a torch module or a runner (:mod:`hemaseg.engine.runtime`: torch or ONNX
    Runtime); each batch of tiles goes through the same call either way. ``preprocess`` (e.g.
    normalisation) is applied to each tile, so no float copy of the whole image is made. Images no
    larger than ``tile`` run in one pass, padded to a multiple of ``stride`` and cropped back.
    Larger images run in overlapping tiles whose outputs are blended with edge-tapered weights, so
    memory for the network does not grow with image size.
    """
    run = as_runner(model)
    h, w = image.shape[:2]
    tile = max(stride, (tile // stride) * stride)
    th, tw = tile_size(h, tile, overlap, stride), tile_size(w, tile, overlap, stride)
    padded = _pad_to(image, max(h, th), max(w, tw))
    ph, pw = padded.shape[:2]
    ys, xs = _starts(ph, th, th - overlap), _starts(pw, tw, tw - overlap)
    coords = [(y, x) for y in ys for x in xs]
    weight = np.ones((th, tw), np.float32) if len(coords) == 1 else _window(th, tw, overlap)
    acc: np.ndarray | None = None
    norm = np.zeros((ph, pw), np.float32)
    for i in range(0, len(coords), batch_size):
        chunk = coords[i:i + batch_size]
        tiles = [padded[y:y + th, x:x + tw] for y, x in chunk]
        batch = np.stack([preprocess(t) if preprocess else t for t in tiles]).astype(np.float32, copy=False)
        logits = run(batch)
        k = logits.shape[1] if softmax_channels is None else softmax_channels
        probs = softmax(logits[:, :k], axis=1)
        if k < logits.shape[1]:
            sigmoid = 0.5 * (1 + np.tanh(0.5 * logits[:, k:]))  # no overflow for large logits
            probs = np.concatenate([probs, sigmoid], axis=1).astype(np.float32)
        if acc is None:
            acc = np.zeros((probs.shape[1], ph, pw), np.float32)
        for (y, x), p in zip(chunk, probs):
            acc[:, y:y + th, x:x + tw] += p * weight
            norm[y:y + th, x:x + tw] += weight
        if progress is not None:
            progress(len(chunk))
    assert acc is not None
    acc /= norm[None]
    return acc[:, :h, :w]
