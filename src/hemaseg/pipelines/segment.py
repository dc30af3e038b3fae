"""``hemaseg.segment``: one entry point for every task's model; the task is the model card's."""
from __future__ import annotations

import numpy as np

from hemaseg.core.options import OPTION_RANGES
from hemaseg.core.result import Segmentation
from hemaseg.engine.predict import get_model, resolve_device, uses_backend
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.errors import HemasegUsageError
from hemaseg.io.images import as_photo
from hemaseg.tasks import get_task

# The diameter each task's ``cell_diameter`` is of, in µm on a blood smear, to turn a known pixel size
# into it. A red cell is about 7.5 µm across (smear10's and the cells task's ruler). The wbc task's
# diameter is of the whole white cell, measured as the area-weighted median equivalent diameter of
# the WBCs it finds: neutrophils, the commonest, are 12-15 µm across on a smear, lymphocytes 7-10,
# monocytes 15-20; 12 µm is where that median lies for a usual differential (the wbc model is
# trained over 0.5-2x its size, so a smear whose mix is off still segments). The nuclei task has no
# entry: its model serves tissue and culture nuclei (5-15 µm and more), so no one size follows
# from the pixel size, and its diameter stays estimated from the image.
RED_CELL_UM = 7.5
# Tasks that process a large image region by region (engine/blocks.py), so `hemaseg segment` opens a
# large TIFF for them lazily (io/images.LazyImage): only each block is read from the file.
REGION_TASKS = ("wbc",)
CELL_DIAMETER_UM = {"wbc": 12.0, "smear10": RED_CELL_UM, "cells": RED_CELL_UM}


def diameter_from_pixel_size(task: str, pixel_size: float | None) -> float | None:
    """The expected ``cell_diameter`` (px) of ``task`` on an image of ``pixel_size`` µm per px:
    :data:`CELL_DIAMETER_UM` over the pixel size; None when the pixel size is not known, the task
    has no typical size, or the result lies outside ``--cell-diameter``'s allowed range.

    >>> diameter_from_pixel_size("cells", 0.1), diameter_from_pixel_size("wbc", 0.25)
    (75.0, 48.0)
    >>> diameter_from_pixel_size("nuclei", 0.25) is None, diameter_from_pixel_size("wbc", None) is None
    (True, True)
    """
    if not pixel_size or task not in CELL_DIAMETER_UM:
        return None
    d = round(CELL_DIAMETER_UM[task] / float(pixel_size), 2)
    r = OPTION_RANGES["cell_diameter"]
    return d if r.lo <= d <= r.hi else None


@uses_backend
def segment(image: np.ndarray, model="wbc", cell_diameter: float | None = None, device: str = "cpu",
            tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, tta: bool | None = None,
            params=None, backend: str = "auto") -> Segmentation:
    """Segment an (H, W, 3) uint8 image with ``model`` (a bundled name, a path, or (module, card)).

    The model card's task decides what comes back: ``wbc`` (the default) WBCs with cytoplasm and
    nucleus (:func:`hemaseg.tasks.wbc.segment_wbc`), ``nuclei`` nuclei instances, ``smear10`` the
    10-class map (``cell_diameter`` = red-cell diameter), ``cells`` every RBC, WBC and platelet.
    ``cell_diameter`` (px) rescales the image to the model's trained size; when None it is
    estimated from the image. ``tta`` (smear10) averages the final pass over the image's flips;
    None: the model card's choice. ``params`` overrides the task's post-processing parameters: a dict
    of their names and values (as the CLI's ``--post NAME=VALUE``), or the task's ``Params`` object.
    An image with nothing in it (flat, or noise) gives no object; a bad ``cell_diameter`` or
    ``tile`` raises :class:`hemaseg.errors.HemasegUsageError`. ``backend`` runs the network on
    ``torch``, ``onnx`` (ONNX Runtime) or ``auto`` (ONNX Runtime where the model has an ONNX file,
    torch otherwise; :mod:`hemaseg.engine.runtime`). ``image`` may also be grey, RGBA, 16-bit, float or
    a file path (:func:`hemaseg.io.images.as_photo`; anything else raises :class:`HemasegInputError`).

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> seg = hemaseg.segment(np.full((64, 64, 3), 230, np.uint8), model="wbc", cell_diameter=40)
    >>> seg.classes.shape, seg.classes.dtype.name
    ((64, 64), 'uint8')
    """
    image = as_photo(image)
    device = resolve_device(device)  # 'auto', or 'cuda' without a GPU: one line, not torch's error
    loaded = get_model(model, device)
    task = get_task(loaded[1].get("task", "wbc"))
    if not task.can_segment:
        raise HemasegUsageError("model", f"{loaded[1].get('name', model)} is a {task.name} model, which does not "
                                         "segment (hemaseg.classify types single-cell crops)")
    if isinstance(params, dict):  # names -> values over the card's own ("postprocess") and the defaults
        try:
            params = task.params(loaded[1], **params)
        except ValueError as exc:
            raise HemasegUsageError("params", str(exc)) from None
    return task.predict(image, loaded, cell_diameter, device, tile, overlap, tta, params)
