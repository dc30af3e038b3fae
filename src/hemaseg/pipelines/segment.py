"""``hemaseg.segment``: one entry point for every task's model; the task is the model card's."""
from __future__ import annotations

import numpy as np

from hemaseg.core.result import Segmentation
from hemaseg.engine.predict import get_model
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.tasks import get_task


def segment(image: np.ndarray, model="wbc", cell_diameter: float | None = None, device: str = "cpu",
            tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, tta: bool | None = None,
            params=None) -> Segmentation:
    """Segment an (H, W, 3) uint8 image with ``model`` (a bundled name, a path, or (module, card)).

    The model card's task decides what comes back: ``wbc`` (the default) WBCs with cytoplasm and
    nucleus (:func:`hemaseg.tasks.wbc.segment_wbc`), ``nuclei`` nuclei instances, ``smear10`` the
    10-class map (``cell_diameter`` = red-cell diameter), ``cells`` every RBC, WBC and platelet.
    ``cell_diameter`` (px) rescales the image to the model's trained size; when None it is
    estimated from the image. ``tta`` (smear10) averages the final pass over the image's flips;
    None: the model card's choice. ``params`` overrides the task's post-processing parameters.
    An image with nothing in it (flat, or noise) gives no object; a bad ``cell_diameter`` or
    ``tile`` raises :class:`hemaseg.errors.HemasegUsageError`.

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> seg = hemaseg.segment(np.full((64, 64, 3), 230, np.uint8), model="wbc", cell_diameter=40)
    >>> seg.classes.shape, seg.classes.dtype.name
    ((64, 64), 'uint8')
    """
    loaded = get_model(model, device)
    task = get_task(loaded[1].get("task", "wbc"))
    return task.predict(image, loaded, cell_diameter, device, tile, overlap, tta, params)
