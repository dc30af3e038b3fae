"""``hemaseg.segment``: one entry point for every task's model; the task is the model card's."""
from __future__ import annotations

import logging

import numpy as np

from hemaseg.core.options import OPTION_RANGES, check_numbers
from hemaseg.core.result import Segmentation
from hemaseg.engine.predict import get_model, resolve_device, uses_backend
from hemaseg.engine.task import given_params
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.images import as_photo, pixel_size_um
from hemaseg.tasks import get_task

log = logging.getLogger(__name__)

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


def file_pixel_size(path, task: str = "cells") -> float | None:
    """The µm per px the resolution tags of the file at ``path`` give (:func:`hemaseg.io.images.pixel_size_um`),
    None when it has none, or when ``task`` has a typical size (:data:`CELL_DIAMETER_UM`) and that scale would
    make it a size ``--cell-diameter`` does not take (a tag no microscope wrote, e.g. 4800 dpi: 5.3 µm/px, a
    red cell of 1.4 px): said as a warning, and the size is estimated as for an untagged file."""
    um = pixel_size_um(path)
    if um is not None and task in CELL_DIAMETER_UM and diameter_from_pixel_size(task, um) is None:
        log.warning("%s: its resolution tags say %g µm per px, a %g µm cell of %.3g px: not a microscope's scale; "
                    "ignored, not recorded (--pixel-size or --cell-diameter give the size)", path, um,
                    CELL_DIAMETER_UM[task], CELL_DIAMETER_UM[task] / um)
        return None
    return um


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
    """Segment a blood-smear image with a model; the model card's task decides what is found.

    One entry point for every segmentation task: the task named in the model card's ``"task"``
    (``"wbc"`` when the card names none) decides what comes back. ``wbc`` (the default):
    WBCs with cytoplasm and nucleus (:func:`hemaseg.tasks.wbc.segment_wbc`); ``nuclei``: nuclei
    instances; ``smear10``: the 10-class smear map; ``cells``: every RBC, WBC and platelet.
    An image with nothing in it (flat, or noise: :func:`hemaseg.core.content.featureless`) gives
    no object.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray, or str or Path
        The RGB photo. Grey ((H, W) or (H, W, 1)), RGBA (alpha dropped), 16-bit, float (0-1 taken
        as 0-255) and other numeric arrays are converted as :func:`hemaseg.io.images.as_photo`
        converts them; a str or Path is read with :func:`hemaseg.read_image`.
    model : str, Path or tuple, optional
        The segmentation model, default ``"wbc"``. A bundled name: ``"wbc"``, ``"nuclei"``,
        ``"smear10"``, ``"cells"`` or ``"cells-maskrcnn"`` (:func:`hemaseg.list_models` with
        ``bundled=True`` lists them with the classifiers, which do not segment); a path to a
        ``.safetensors`` file (its card JSON beside it), to a model card ``.json`` (its
        ``.safetensors`` beside it), to an ``.onnx`` file (not on ``backend="torch"``), or to a
        training run folder (``model.safetensors``, else ``best.safetensors``, else
        ``last.safetensors``); or a ``(model, card)`` tuple as :func:`hemaseg.load_model`
        returns it, used as it is.
        Loaded models are cached.
    cell_diameter : float, optional
        The diameter, in px of the input image, of the cells the task sizes itself by: the whole
        WBC (``wbc``), the nucleus (``nuclei``), the red cell (``smear10`` and ``cells``). The image
        is rescaled so these cells reach the size the model was trained on. Allowed: 2 to 5000.
        Default None: estimated from the image (for ``wbc`` with the card's ``params``, as
        :func:`hemaseg.estimate_diameter` estimates it).
    device : str, optional
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (``cuda`` when torch sees a
        GPU, else ``cpu``); a ``torch.device`` is taken too.
    tile : int, optional
        The largest tile side, px at the model's scale, the image is cut into for the network:
        an integer from 128 to 16384, default 1024. The Mask R-CNN model (``cells-maskrcnn``)
        reads the whole image at once and uses neither ``tile`` nor ``overlap``.
    overlap : int, optional
        Px (at the model's scale) blended between neighbouring tiles: an integer from 0 to 512,
        default 64.
    tta : bool, optional
        ``smear10`` and ``nuclei`` only (the other tasks ignore it): True averages the final pass
        over the image and its three flips (4x that pass's time), False does not. Default None:
        the model card's ``"tta"`` (on for the bundled ``smear10``, off for ``nuclei``).
    params : dict or the task's Params object, optional
        Overrides of the task's post-processing parameters (e.g. :class:`hemaseg.tasks.wbc.WbcParams`
        for ``wbc``): a dict of names and values, applied over the model card's ``"postprocess"``
        entry and the defaults (a None is a value for a knob that takes one, ``platelet_rescore`` or
        ``clump_ratio``: off, as ``--post NAME=null``; for the others it means "not given"; an unknown name is
        refused; text is read as the CLI's ``--post NAME=VALUE`` reads it), or a complete Params object, each
        field checked as a ``--post`` value is.
        Default None: the card's, else the defaults.
    backend : {"auto", "torch", "onnx"}, optional
        Where the networks run: ``"torch"``, ``"onnx"`` (ONNX Runtime, CPU only) or ``"auto"``
        (default: ONNX Runtime on the CPU where the model has an ONNX file, onnxruntime is
        installed and the card allows it, torch otherwise). Without torch, ``cells-maskrcnn``
        gives way to the ``cells`` U-Net (:mod:`hemaseg.engine.runtime`).

    Returns
    -------
    Segmentation
        At the input's size: ``classes`` (H, W) uint8 class indices (``wbc``: 0 background,
        1 cytoplasm, 2 nucleus), ``instances`` (H, W) int32 labels 1..N (0 background; uint16
        for a large ``wbc`` image), ``probs`` (K, H, W) float32, ``cell_diameter`` (px, given or
        estimated), ``scale`` and ``objects``, one record per instance (see
        :class:`hemaseg.Segmentation`).

    Raises
    ------
    HemasegInputError
        ``image`` is not usable (a list of images, channels-first (3, H, W), no numbers, empty,
        or a file :func:`hemaseg.read_image` cannot read), or ``model`` names no bundled model
        and no readable model file or run folder.
    hemaseg.errors.HemasegUsageError
        (a :class:`HemasegError`) ``cell_diameter``, ``tile`` or ``overlap`` outside its range; an
        unknown ``device`` or ``backend``, ``cuda`` without a GPU, or a ``device`` and ``backend``
        that cannot run together (``onnx`` on ``cuda``, ``torch`` without torch installed); a
        ``model`` whose task does not segment (``wbc-type``, ``smear10-type``); an unknown name
        in ``params`` or a value it does not take (of another type, out of its range), ``params`` neither
        a dict nor the task's Params, ``tta`` not a bool, ``overlap`` not under ``tile``, an ``.onnx``
        ``model`` with ``backend="torch"``. The message names
        the argument (``tile: 7 is not allowed; ...``); ``exc.option`` holds the command line's flag.

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> seg = hemaseg.segment(np.full((64, 64, 3), 230, np.uint8), model="wbc", cell_diameter=40)
    >>> seg.classes.shape, seg.classes.dtype.name
    ((64, 64), 'uint8')
    >>> seg.count, int(seg.instances.max()), seg.cell_diameter  # a flat image: no object
    (0, 0, 40.0)

    An array given channels-first is refused before any model is loaded:

    >>> hemaseg.segment(np.zeros((3, 40, 50)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hemaseg.errors.HemasegInputError: image: shape (3, 40, 50) looks channels-first; give (H, W, 3) ...
    """
    image = as_photo(image)
    device = resolve_device(device)  # 'auto', or 'cuda' without a GPU: one line, not torch's error
    loaded = get_model(model, device)
    try:
        task = get_task(loaded[1].get("task", "wbc"))
    except KeyError as exc:  # a card written by another tool or a newer hemaseg
        raise HemasegInputError(loaded[1].get("name", model) if isinstance(model, tuple) else model,
                                f"its model card names {exc.args[0].removeprefix('unknown ')}") from None
    if not task.can_segment:
        raise HemasegUsageError("model", f"{loaded[1].get('name', model)} is a {task.name} model, which does not "
                                         "segment (hemaseg.classify types single-cell crops)")
    # What the tasks would fail on deep inside (a segment audit: overlap = tile divided by zero in the
    # tiling, params="red_ring=0.2" an AttributeError, tta="yes" taken as True).
    if tta is not None and not isinstance(tta, (bool, np.bool_)):
        raise HemasegUsageError("tta", f"{tta!r}: give True, False or None (the model card's)")
    check_numbers(tile=tile, overlap=overlap)  # each in its range first, then the two together
    if tile is not None and overlap is not None and int(overlap) >= int(tile):
        raise HemasegUsageError("overlap", f"{overlap} px is not under the tile ({tile} px); give a smaller "
                                           "overlap or a larger tile")
    params = given_params(task, loaded[1], params)
    return task.predict(image, loaded, cell_diameter, device, tile, overlap, tta, params)
