"""The result type every segmentation returns (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Segmentation:
    """Result of :func:`hemaseg.segment` for one image (any task)."""

    classes: np.ndarray  # (H, W) uint8 class indices of the task
    # (H, W) int32 instance labels 1..N (0 background); uint16 for an image a task processes region
    # by region (wbc: long side over WbcParams.block_size) while N <= 65,535: half the memory.
    instances: np.ndarray
    # (K, H, W) float32 class probabilities; for an image a task processes region by region (wbc:
    # long side over WbcParams.block_size) a summary downsampled to (K, h, w), h, w <= 1024.
    probs: np.ndarray
    cell_diameter: float  # px in the input image (given or estimated)
    scale: float  # factor the image was resized by before the network
    objects: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of instances found."""
        return len(self.objects)
