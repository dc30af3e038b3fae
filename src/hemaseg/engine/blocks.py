"""Region-by-region processing of images too large to post-process whole: the image is cut into
overlapping blocks (a core plus a margin on every side), each block is predicted and
post-processed on its own, and each object is kept by the one block whose core holds its
centroid. Full-size outputs are written block by block, so the float memory follows the block,
not the image; the image itself may be a :class:`~hemaseg.io.images.LazyImage`, whose blocks are
read from the file one at a time (:func:`downscale` gives the coarse copy). Task-free: a task supplies the per-block work (see ``tasks/wbc.py``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

from hemaseg.core.resize import rescale
from hemaseg.io.images import LazyImage

_LIBC = ctypes.util.find_library("c")


def release_free_memory() -> bool:
    """Give the memory freed by the last block back to the operating system (glibc's
    ``malloc_trim``), so the next block's arrays do not stack on top of it: without it the
    heap a large image leaves behind between blocks raises the peak by ~100 MB. Returns
    whether it could (False where the C library has no ``malloc_trim``, e.g. macOS).

    >>> isinstance(release_free_memory(), bool)
    True
    """
    try:
        ctypes.CDLL(_LIBC).malloc_trim(0)
        return True
    except (OSError, AttributeError, TypeError):
        return False


def downscale(image, factor: float) -> np.ndarray:
    """An (H, W, 3) image shrunk by ``factor`` (area interpolation), for work on the whole image at a
    coarse scale (e.g. estimating the cell size): a :class:`~hemaseg.io.images.LazyImage` (a large
    TIFF read region by region) is read from a pyramid level, or a band of rows at a time, never
    whole; an array is resized by :func:`~hemaseg.core.resize.rescale`.

    >>> downscale(np.zeros((40, 60, 3), np.uint8), 0.5).shape
    (20, 30, 3)
    """
    if isinstance(image, LazyImage):
        return image.downscaled(factor) if factor < 1 else image[:, :]
    return rescale(image, factor)


@dataclass(frozen=True)
class Block:
    """One region: ``outer`` (core plus margin, clipped to the image) is processed; objects whose
    centroid lies in ``core`` belong to this block. Both are (y0, y1, x0, x1) in image px."""

    core: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def outer_slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.outer
        return slice(y0, y1), slice(x0, x1)

    @property
    def offset(self) -> tuple[int, int]:
        """(y, x) of the block's outer corner in the image."""
        return self.outer[0], self.outer[2]


def _cuts(length: int, core: int) -> list[tuple[int, int]]:
    n = max(1, -(-length // max(core, 1)))
    edges = [round(i * length / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def image_blocks(shape: tuple[int, int], core: int, margin: int) -> list[Block]:
    """Blocks covering an image of ``shape`` (H, W): cores of at most ``core`` px (equal sizes,
    partitioning the image), each grown by ``margin`` px on every side within the image.

    >>> [b.core for b in image_blocks((10, 25), 12, 3)]
    [(0, 10, 0, 8), (0, 10, 8, 17), (0, 10, 17, 25)]
    >>> image_blocks((10, 25), 12, 3)[1].outer
    (0, 10, 5, 20)
    """
    h, w = shape
    out = []
    for y0, y1 in _cuts(h, core):
        for x0, x1 in _cuts(w, core):
            out.append(Block((y0, y1, x0, x1),
                             (max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin))))
    return out


def centred_in_core(instances: np.ndarray, block: Block) -> np.ndarray:
    """Labels (ascending) of ``instances`` (the block's outer region, labels 1..N) whose centroid
    lies in the block's core: each object of the image is kept by exactly one block.

    >>> inst = np.zeros((10, 20), np.int32); inst[2:5, 1:4] = 1; inst[2:5, 12:16] = 2
    >>> centred_in_core(inst, Block((0, 10, 0, 10), (0, 10, 0, 20))).tolist()
    [1]
    """
    from scipy import ndimage as ndi

    n = int(instances.max())
    if n == 0:
        return np.zeros(0, np.int64)
    labels = np.arange(1, n + 1)
    centres = np.asarray(ndi.center_of_mass(np.ones(instances.shape, np.uint8), instances, labels), float)
    oy, ox = block.offset
    y0, y1, x0, x1 = block.core
    cy, cx = centres[:, 0] + oy, centres[:, 1] + ox
    inside = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    return labels[inside]
