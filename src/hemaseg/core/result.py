"""The result type every segmentation returns (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Segmentation:
    """Result of :func:`hemaseg.segment` for one image (any task).

    Every map is at the input image's size (H, W), whatever scale the network ran at (a
    region-by-region ``probs`` excepted, see below). An image with nothing in it gives every
    pixel background (probability 1), no instance and no object, and ``scale`` 1.

    Attributes
    ----------
    classes : (H, W) uint8 ndarray
        The class index of each pixel, 0 background: ``wbc`` 1 cytoplasm, 2 nucleus; ``nuclei``
        1 nucleus; ``smear10`` 1-9 in the order of ``hemaseg.get_task("smear10").classes``
        (eosinophil ... healthy rbc); ``cells`` 1 rbc, 2 wbc, 3 platelet.
    instances : (H, W) int32 ndarray
        Instance labels 1..N, 0 background; label k is the object whose ``"id"`` is k. uint16
        instead for an image a task processes region by region (``wbc``: long side over
        ``WbcParams.block_size``, 2048 px by default) while N <= 65,535: half the memory.
    probs : (K, H, W) float32 ndarray
        The network's per-pixel probability of each of the model card's K ``classes`` (then one
        channel per extra output the card lists in ``"aux_outputs"``). For an image a task
        processes region by region a summary downsampled to (K, h, w), h, w <= 1024; (0, H, W)
        for the Mask R-CNN ``cells-maskrcnn`` model, which gives none.
    cell_diameter : float
        The diameter, px in the input image, of the cells the task sized the image by (whole WBC,
        nucleus, or red cell: :func:`hemaseg.segment`'s ``cell_diameter``), given or estimated;
        when it cannot be measured, one derived from the model card's trained diameter.
    diameter_from : str
        Where ``cell_diameter`` came from: ``"given"``, ``"measured"`` or ``"model"`` (nothing in the image to
        measure it by); ``""`` for a task that does not say (the classical methods).
    scale : float
        The factor the image was resized by before the network (network px per input px);
        1.0 when it was not resized.
    objects : list of dict
        One record per instance, in label order (seed-003 style): ``"id"`` (its label in
        ``instances``), ``"class_name"`` (``"wbc"``, ``"nucleus"``, a ``smear10`` class or a
        ``cells`` category), ``"score"`` (confidence in 0-1), ``"bounding_box"`` (``x1``, ``x2``,
        ``y1``, ``y2``, px; ``x2`` and ``y2`` exclusive, a ``cells`` box grown by the card's
        ``box_scale``), ``"area"`` (px), ``"diameter"`` (equivalent diameter, px),
        ``"touches_border"`` and ``"vertices"`` (the outline, [[x, y], ...] px). ``wbc``,
        ``smear10`` and ``cells`` add ``"category"`` (``rbc``, ``wbc`` or ``platelet``); ``wbc``
        also ``"nucleus_area"`` (px) and ``"nucleus_vertices"`` (the nucleus outlines).
    count : int
        The number of objects (read-only property).

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> seg = hemaseg.segment(np.full((48, 64, 3), 230, np.uint8), model="wbc", cell_diameter=40)
    >>> type(seg).__name__, seg.instances.shape, seg.probs.shape, seg.count, seg.objects
    ('Segmentation', (48, 64), (3, 48, 64), 0, [])
    """

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
    # where cell_diameter came from: "given" (by the caller), "measured" (on the image), "model" (nothing to measure
    # it by: the model's trained size); "" when a task does not say
    diameter_from: str = ""

    @property
    def count(self) -> int:
        """Number of instances found."""
        return len(self.objects)
