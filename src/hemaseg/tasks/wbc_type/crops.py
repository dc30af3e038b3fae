"""WBC type of single-cell crops: normalise each crop to the WBC it contains (found by the
``wbc`` task's segmentation), then classify; and the crops of WBCs found in a whole image.
Arrays in, probabilities out."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from hemaseg.classical import central_instance, grey_photo, red_cell_diameter
from hemaseg.core.vocabulary import EXTRA_TYPES, MONONUCLEAR, NOT_IN_DIFFERENTIAL, POLYNUCLEAR
from hemaseg.data.transforms import NEEDS_PARTS, crop_input, slide_background
from hemaseg.engine.predict import get_model, model_of_task, resolve_device, uses_backend
from hemaseg.engine.runtime import as_runner, softmax
from hemaseg.errors import HemasegUsageError
from hemaseg.io.images import as_photo
from hemaseg.tasks.wbc import segment_wbc_crops

if TYPE_CHECKING:
    import torch

# The classifier's classes: seed 004's CSV column order (NEUTRO, EOSINO, MONOC, LYMPHO), then basophil;
# a model trained on PBC adds its three other classes after them (the first five keep their index).
CLASSES = ("neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil")
ALL_CLASSES = CLASSES + EXTRA_TYPES
# ``classify -m 4``: PBC's eight classes in DESIGN.md's order.
PBC_CLASSES = ("neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte", "ig", "erythroblast", "platelet")
# The ruler: measurements of the cell that do not depend on magnification, given to the classifier
# beside the image (a model card's "extras" says how many it takes).
N_EXTRAS = 3
SIZE_RATIO_RANGE = (1.0, 4.0)  # WBC / red-cell diameter believed; outside it the red cells were mis-measured

# The cell's equivalent diameter fills this fraction of the normalised crop's side.
CELL_FILL = 0.7


@dataclass
class CellCrop:
    """A crop centred on one WBC and scaled to a fixed cell size."""

    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool: the cell (all False when none was found)
    found: bool  # a WBC was found (else the crop is the centre of the input)
    diameter: float  # the cell's diameter in the input (px)
    rbc_diameter: float | None = None  # the red cells' diameter around it (px; None: not measurable)
    nucleus_fraction: float = 0.0  # share of the cell's area that is nucleus
    nucleus: np.ndarray | None = None  # (S, S) bool: the cell's nucleus (None: not segmented)

    @property
    def parts(self) -> np.ndarray:
        """(S, S) uint8: 0 outside the cell, 1 cytoplasm, 2 nucleus (the ``shape`` input's masks)."""
        p = self.mask.astype(np.uint8)
        if self.nucleus is not None:
            p[self.nucleus & self.mask] = 2
        return p

    @property
    def extras(self) -> np.ndarray:
        """(3,) float32 ruler for the classifier: log(WBC / red-cell diameter) and 1 when the red
        cells were measured in a believable ratio (else 0, 0), and the nucleus' share of the cell.
        All three are free of magnification."""
        ratio = self.diameter / self.rbc_diameter if self.rbc_diameter else 0.0
        known = SIZE_RATIO_RANGE[0] <= ratio <= SIZE_RATIO_RANGE[1]
        return np.array([np.log(ratio) if known else 0.0, float(known), self.nucleus_fraction], np.float32)


CROP_PADDINGS = ("reflect", "background")


def square_at(image: np.ndarray, cy: float, cx: float, side: float, fill=None
              ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(square, its (x1, y1, x2, y2) in the image): the square of ``side`` px centred at (cy, cx); where
    it leaves the image, the image is reflected (``fill`` None) or the square filled with the constant
    ``fill`` (then only the square's own part of the image is copied)."""
    h, w = image.shape[:2]
    half = side / 2
    y0, x0 = int(round(cy - half)), int(round(cx - half))
    s = max(1, int(round(side)))
    pad = max(0, -y0, -x0, y0 + s - h, x0 + s - w)
    box = (x0, y0, x0 + s, y0 + s)
    if pad and fill is not None:
        ys, xs = slice(min(max(0, y0), h), max(min(h, y0 + s), 0)), slice(min(max(0, x0), w), max(min(w, x0 + s), 0))
        out = np.empty((s, s) + image.shape[2:], image.dtype)
        out[...] = fill
        if ys.start < ys.stop and xs.start < xs.stop:
            out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = image[ys, xs]
        return out, box
    if pad:
        mode = cv2.BORDER_REFLECT_101 if pad < min(h, w) else cv2.BORDER_REPLICATE
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, mode)
    return image[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s], box


def cell_crops(images: list[np.ndarray], size: int = 96, seg_model="wbc", fill: float = CELL_FILL,
               ruler: bool = True, padding: str = "reflect") -> list[CellCrop]:
    """Centre each (H, W, 3) crop on its WBC and rescale so the cell spans ``fill`` of a ``size`` px square.

    The WBC is the segmented cell nearest the centre (largest first) from the bundled WBC
    model, all crops segmented together in one pass at a known scale
    (:func:`~hemaseg.tasks.wbc.segment_wbc_crops`), so crops cut at other sizes and
    magnifications look alike to the classifier. With no cell found, the central square of
    the input is used. ``ruler=False`` skips measuring the red cells (``rbc_diameter`` stays
    None): for a classifier that takes no ruler (:func:`takes_ruler`) the measurement would be
    thrown away. Where the square around the cell leaves the input (a crop cut tight around its
    WBC), ``padding`` "reflect" mirrors the input, "background" fills the square with the slide's
    own background colour (the light pixels around the cells), so no mirrored half-cell is added.

    Examples
    --------
    >>> c = cell_crops([np.full((50, 70, 3), 220, np.uint8)], size=32)[0]  # nothing in it
    >>> c.found, c.image.shape
    (False, (32, 32, 3))
    """
    images = [np.ascontiguousarray(im[..., :3]) for im in images]
    segs = segment_wbc_crops(images, seg_model)
    if padding not in CROP_PADDINGS:
        raise ValueError(f"padding {padding!r}: one of {', '.join(CROP_PADDINGS)}")
    return [_centred(image, *seg, size, fill, ruler, padding) for image, seg in zip(images, segs)]


def cell_crop(image: np.ndarray, size: int = 96, seg_model="wbc", fill: float = CELL_FILL,
              ruler: bool = True, padding: str = "reflect") -> CellCrop:
    """:func:`cell_crops` of one image."""
    return cell_crops([image], size, seg_model, fill, ruler, padding)[0]


def _centred(image: np.ndarray, classes: np.ndarray, instances: np.ndarray, scale: float, size: int, fill: float,
             ruler: bool, padding: str = "reflect") -> CellCrop:
    """The :class:`CellCrop` of ``image`` given its WBC segmentation at ``scale`` (map px per image px)."""
    h, w = image.shape[:2]
    k = central_instance(instances)
    rbc_d, nucleus = None, 0.0
    small = None  # the image at the map's scale, when something is measured on it
    if ruler or padding == "background":
        small = image if scale == 1 else cv2.resize(image, instances.shape[::-1], interpolation=cv2.INTER_AREA)
    if k:
        sel = instances == k
        ys, xs = np.nonzero(sel)
        cy, cx = (ys.min() + ys.max() + 1) / 2 / scale, (xs.min() + xs.max() + 1) / 2 / scale
        diameter = float(max(2 * np.sqrt(sel.sum() / np.pi) / scale, 8.0))
        side = diameter / fill
        nucleus = float((classes[sel] == 2).mean())
        if ruler:
            # Red cells are measured outside every WBC grown by a tenth of this one's diameter.
            r = max(1, int(0.1 * diameter * scale))
            grown = cv2.dilate((instances > 0).astype(np.uint8),
                               cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
            d = red_cell_diameter(small, grown > 0)
            rbc_d = d / scale if d else None
    else:
        cy, cx, side, diameter = h / 2, w / 2, float(min(h, w)), 0.0
    colour = slide_background(small, instances > 0) if padding == "background" else None
    crop, _ = square_at(image, cy, cx, side, colour)
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR)
    m, n = np.zeros((size, size), bool), np.zeros((size, size), bool)
    if k:  # the cell's mask and nucleus, cut from the map the same way (smoothly upsampled: the map is
        # coarser); never mirrored: a reflected half-cell is not the cell
        mcrop, _ = square_at(sel.astype(np.uint8) + (sel & (classes == 2)), cy * scale, cx * scale, side * scale, 0)
        for level, dest in ((1, m), (2, n)):
            up = cv2.resize((mcrop >= level).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            dest[:] = up >= 0.5
    return CellCrop(out, m, bool(k), diameter, rbc_d, nucleus, n)


def takes_ruler(card: dict) -> bool:
    """The classifier of ``card`` takes the crops' rulers (:attr:`CellCrop.extras`) as input."""
    return bool(card.get("architecture", {}).get("kwargs", {}).get("extras", 0))


def crop_padding(card: dict) -> str:
    """How the classifier of ``card`` saw crops whose square leaves the input (:func:`cell_crops`' ``padding``)."""
    return card.get("crop_padding", "reflect")


def takes_parts(card: dict) -> bool:
    """The classifier of ``card`` sees its crops' cell parts (:attr:`CellCrop.parts`) as well as their pixels."""
    return card.get("normalization", {}).get("colour", "rgb") in NEEDS_PARTS


def to_tensor(images: list[np.ndarray], card: dict, parts: list[np.ndarray] | None = None) -> torch.Tensor:
    """(S, S, 3) uint8 crops -> (N, 3, S, S) float tensor, normalised as the model was trained
    (``parts``: as :func:`crop_batch`)."""
    import torch

    return torch.from_numpy(crop_batch(images, card, parts)).permute(0, 3, 1, 2).contiguous()


def crop_batch(images: list[np.ndarray], card: dict, parts: list[np.ndarray] | None = None) -> np.ndarray:
    """(S, S, 3) uint8 crops -> (N, S, S, 3) float32, normalised as the model was trained; ``parts``
    are the crops' :attr:`CellCrop.parts`, needed by a model that sees them (:func:`takes_parts`)."""
    norm = card.get("normalization", {})
    if parts is None:
        parts = [None] * len(images)
    return np.stack([crop_input(im, norm.get("colour", "rgb"), norm.get("low", 1.0), norm.get("high", 99.0), p)
                     for im, p in zip(images, parts)]).astype(np.float32, copy=False)


def group_probs(probs: np.ndarray, classes: list[str], mode: int) -> tuple[list[str], np.ndarray]:
    """Regroup per-type probabilities (N, K) for seed 004's outputs.

    ``mode`` 1: MONONUCLEAR/POLYNUCLEAR (sums over the five WBC types, renormalised); 2: the four
    types of seed 004 (basophil left out, renormalised); 3: the five WBC types (renormalised); 4:
    PBC's eight classes (:data:`PBC_CLASSES`; the model must know all eight, :class:`ValueError`
    otherwise; in modes 2 and 3 the types the model knows: :func:`prediction_rows` says which are left out).
    Returns (upper-case names, (N, M) probabilities).

    >>> p = np.array([[0.5, 0.1, 0.2, 0.1, 0.1]])
    >>> names, q = group_probs(p, ["neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil"], 1)
    >>> names, q.round(2).tolist()
    (['MONONUCLEAR', 'POLYNUCLEAR'], [[0.3, 0.7]])
    >>> group_probs(np.array([[0.8, 0.2]]), ["neutrophil", "eosinophil"], 1)[1].tolist()  # no mononuclear type
    [[0.0, 1.0]]
    """
    idx = {c: i for i, c in enumerate(classes)}
    if mode == 4:
        missing = [c for c in PBC_CLASSES if c not in idx]
        if missing:
            raise ValueError(f"-m 4 needs a model with PBC's eight classes; this one lacks {', '.join(missing)}")
        return [c.upper() for c in PBC_CLASSES], probs[:, [idx[c] for c in PBC_CLASSES]]
    if mode == 1:
        # (a model of polynuclear types alone has no mononuclear column: a zero one, not the number 0)
        mono = sum((probs[:, idx[c]] for c in MONONUCLEAR if c in idx), np.zeros(len(probs)))
        poly = sum((probs[:, idx[c]] for c in POLYNUCLEAR if c in idx), np.zeros(len(probs)))
        q = np.stack([mono, poly], 1)
        return ["MONONUCLEAR", "POLYNUCLEAR"], q / np.maximum(q.sum(1, keepdims=True), 1e-12)
    if mode not in (2, 3):
        raise ValueError("mode must be 1, 2, 3 or 4")
    names = [c for c in classes if c in CLASSES and (mode == 3 or c != "basophil")]
    q = probs[:, [idx[c] for c in names]]
    return [c.upper() for c in names], q / np.maximum(q.sum(1, keepdims=True), 1e-12)


def predict_logits(module: torch.nn.Module, x: torch.Tensor, extras: torch.Tensor | None = None,
                   tta: bool = True) -> torch.Tensor:
    """(V, N, K) logits of a batch (N, 3, S, S) and its four 90° rotations (V = 4; 1 without ``tta``)."""
    import torch

    with torch.inference_mode():
        views = [torch.rot90(x, k, (2, 3)) for k in range(4)] if tta else [x]
        if getattr(module, "extras", 0):
            return torch.stack([module(v, extras).float() for v in views])
        return torch.stack([module(v).float() for v in views])


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """(N, K) probabilities: the softmax of each view's logits over ``temperature``, averaged."""
    return (logits / temperature).softmax(-1).mean(0).cpu().numpy()


def predict_crops(crops: list[np.ndarray], model="wbc-type", device: str = "cpu", batch_size: int = 64,
                  tta: bool = True, extras: np.ndarray | None = None,
                  parts: list[np.ndarray] | None = None) -> np.ndarray:
    """Class probabilities (N, K) for cell-normalised (S, S, 3) crops; ``tta`` averages the four
    90° rotations, as validation did; ``extras`` (N, 3) are the crops' rulers (:attr:`CellCrop.extras`)
    and ``parts`` their cell parts (:attr:`CellCrop.parts`) for models that take them;
    probabilities are calibrated by the card's ``temperature``. The
    network runs on torch or ONNX Runtime (the model's runner, :mod:`hemaseg.engine.runtime`)."""
    module, card = get_model(model, device)
    run = as_runner(module)
    temperature = float(card.get("temperature", 1.0))
    out = []
    for i in range(0, len(crops), batch_size):
        x = crop_batch(crops[i:i + batch_size], card, parts[i:i + batch_size] if parts is not None else None)
        e = np.asarray(extras[i:i + batch_size], np.float32) if extras is not None else None
        views = [np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))) for k in range(4)] if tta else [x]
        logits = np.stack([run(v, e) for v in views])  # (V, N, K)
        out.append(softmax(logits / temperature, axis=-1).mean(0))
    return np.concatenate(out) if out else np.zeros((0, len(card["classes"])), np.float32)


@uses_backend
def classify(image: np.ndarray, model="wbc-type", device: str = "cpu", normalise: bool = True,
             backend: str = "auto") -> dict[str, float]:
    """WBC type probabilities of a single-cell crop: ``{type: probability}``, or ``{}`` if no WBC is in it.

    The crop is first centred on its WBC and rescaled (:func:`cell_crop`: the WBC nearest the
    centre, found by the bundled ``wbc`` segmentation model, spans :data:`CELL_FILL` of the
    classifier's input square) unless ``normalise`` is False. The classifier then sees the crop
    and its three 90° rotations; their probabilities, calibrated by the card's ``temperature``,
    are averaged (:func:`predict_crops`).

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray, or str or Path
        A crop holding one WBC. Grey, RGBA (alpha dropped), 16-bit, float (0-1 taken as 0-255) and
        other numeric arrays are converted as :func:`hemaseg.io.images.as_photo` converts them; a
        str or Path is read with :func:`hemaseg.read_image`.
    model : str, Path or tuple, optional
        The WBC-type classifier (a model card whose ``"task"`` is ``"wbc-type"``), default
        ``"wbc-type"``. Bundled: ``"wbc-type"`` (eight classes: neutrophil, eosinophil, monocyte,
        lymphocyte, basophil, ig, erythroblast, platelet) and ``"smear10-type"`` (the first five).
        Also a path to a ``.safetensors`` file, a model card ``.json``, an ``.onnx`` file or a
        training run folder, or a ``(model, card)`` tuple as :func:`hemaseg.load_model` returns it.
    device : str, optional
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (``cuda`` when torch sees a
        GPU). The classifier runs there; the ``wbc`` model that finds the cell runs on the CPU.
    normalise : bool, optional
        True (default): centre and rescale the crop on its WBC as above; a crop in which no WBC is
        found gives ``{}``. False: the whole input is resized to the classifier's input size
        (the card's ``input_size``; 80 px for the bundled models) and taken to hold a WBC, so the
        result is never ``{}``; refused (:class:`ValueError`) for a model that sees the cell's
        parts (nucleus and cytoplasm masks), which only normalising finds.
    backend : {"auto", "torch", "onnx"}, optional
        Where the networks run: ``"torch"``, ``"onnx"`` (ONNX Runtime, CPU only) or ``"auto"``
        (default: ONNX Runtime where the model has an ONNX file, torch otherwise;
        :mod:`hemaseg.engine.runtime`).

    Returns
    -------
    dict of str to float
        Each class of the model card (in the card's order) and its calibrated probability; the
        probabilities sum to 1. ``{}`` when normalising found no WBC in the crop (the CLI's
        ``NO_WBC``).

    Raises
    ------
    HemasegInputError
        ``image`` is not usable (see :func:`hemaseg.io.images.as_photo`), or ``model`` names no
        bundled model and no readable model file or run folder.
    hemaseg.errors.HemasegUsageError
        (a :class:`hemaseg.HemasegError`) ``model`` is not a ``wbc-type`` model (e.g. ``"wbc"``);
        an unknown ``device`` or ``backend``, or ``cuda`` without a GPU; ``normalise`` not a bool.
    ValueError
        ``normalise=False`` with a model that sees the cell's parts.

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> photo = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    >>> p = hemaseg.classify(photo)  # the sample holds one WBC: the crop is centred on it
    >>> list(p)[:4], round(sum(p.values()), 6)
    (['neutrophil', 'eosinophil', 'monocyte', 'lymphocyte'], 1.0)
    >>> hemaseg.classify(np.full((64, 64, 3), 230, np.uint8))  # no WBC in it
    {}
    """
    if not isinstance(normalise, (bool, np.bool_)):  # "no" was taken as True
        raise HemasegUsageError("normalise", f"{normalise!r}: give True or False")
    image = as_photo(image)
    device = resolve_device(device)  # 'auto', or 'cuda' without a GPU: one line, not torch's error
    _, card = model_of_task(model, "wbc-type", device)
    size = int(card.get("input_size", 96))
    if not normalise and takes_parts(card):
        raise ValueError("normalise=False: this model sees the cell's parts, found by normalising the crop")
    if normalise:
        c = cell_crop(image, size, ruler=takes_ruler(card), padding=crop_padding(card))
        if not c.found:
            return {}
    else:
        c = CellCrop(cv2.resize(np.ascontiguousarray(image[..., :3]), (size, size)), np.zeros((size, size), bool),
                     True, 0.0)
    probs = predict_crops([c.image], model, device, extras=c.extras[None] if normalise else None,
                          parts=[c.parts])[0]
    return {c: float(p) for c, p in zip(card.get("classes", CLASSES), probs)}


NO_WBC = "NO_WBC"  # classify's prediction for a crop in which no WBC was found
# Modes 1-3 name white cells only: a crop is called NO_WBC there when the model puts at least this
# share on platelet + erythroblast. PBC's platelet and erythroblast crops get >= 0.99 (24 of 24 among
# 300 benchmark crops); a doubt between a lymphocyte and an erythroblast (one wbc-seg lymphocyte: 0.52)
# keeps the white cell, as these modes take every crop for a WBC.
NOT_A_WBC_SHARE = 0.9
# A WBC enlarged more than this many times to the classifier's input (its diameter under CELL_FILL * input size / this)
# has too few pixels to show its type: PBC crops shrunk to 10-20 px were typed platelet at 0.52-0.99 (a walkthrough,
# stop 71); at 48 px and more each was typed right.
MAX_ENLARGEMENT = 2.0
UNSURE = "UNSURE"  # ... and for one whose top probability is under --min-confidence: for a human to review


def prediction_rows(cells: list[CellCrop], model="wbc-type", device: str = "cpu", mode: int = 2,
                    min_confidence: float = 0.0) -> tuple[list[str], list[tuple[str, np.ndarray]]]:
    """Seed 004's CSV for single-cell crops: (column names of ``mode``, one (prediction, probabilities)
    per crop). The prediction is the most probable name, :data:`NO_WBC` when the crop holds no
    WBC, :data:`UNSURE` when the top probability is below ``min_confidence`` (the probabilities
    are written either way). In modes 1-3, whose names are white cells only, a crop on which a
    PBC-trained model puts at least :data:`NOT_A_WBC_SHARE` of its probability on platelet and
    erythroblast (no leukocyte) is :data:`NO_WBC` too, not the likeliest white cell (mode 4 names
    it). The columns of modes 1-3 are rescaled to sum to 1 over the types they name, so a crop the
    model takes for a white cell they do not name (an immature granulocyte; in mode 2 a basophil) would
    read as a confident call of another type: its confidence is the model's own probability of the type
    called (before rescaling), and with a ``min_confidence`` above 0 the crop is :data:`UNSURE` when that is
    under ``min_confidence`` or under the probability of the white cells the mode does not name. With the
    default 0 every crop holding a WBC takes one of the mode's types, as seed 004's modes do (its held-out PBC
    crops, 5 types through ``-m 3``: 0.980 so, 0.972 when 6 of 600 were UNSURE by the unnamed-cell rule).
    A crop whose WBC is too small to show its type (enlarged over :data:`MAX_ENLARGEMENT` times to the input)
    or grey (no stain colours) is warned of, and :data:`UNSURE` with a ``min_confidence`` above 0, as is one whose
    likeliest class the mode names not. :class:`ValueError` for mode 4 with a model lacking one of PBC's eight
    classes; in modes 2 and 3 a type the model lacks is said and left out of the columns."""
    _, card = get_model(model, device)
    extras = np.stack([c.extras for c in cells]) if cells else None
    probs = predict_crops([c.image for c in cells], model, device, extras=extras, parts=[c.parts for c in cells])
    names, grouped = group_probs(probs, list(card["classes"]), mode)
    classes = list(card["classes"])
    not_leukocyte = [i for i, c in enumerate(classes) if c in NOT_IN_DIFFERENTIAL] if mode != 4 else []
    named = {1: MONONUCLEAR + POLYNUCLEAR, 2: tuple(c for c in CLASSES if c != "basophil"), 3: CLASSES}.get(mode)
    # white cells the mode has no column for (mode 4 names every class)
    unnamed = [i for i, c in enumerate(classes) if c not in NOT_IN_DIFFERENTIAL and c not in named] if named else []
    kept = [i for i, c in enumerate(classes) if c in named] if named else list(range(len(classes)))
    rows = []
    hidden: dict[str, int] = {}  # the model's likeliest class, one the mode has no column for: crops of it
    smallest = CELL_FILL * int(card.get("input_size", 96)) / MAX_ENLARGEMENT if card.get("cell_normalised", True) else 0
    small = grey = 0  # crops typed from too few pixels, or without the stain's colours the typer tells types by
    for c, p, q in zip(cells, probs, grouped):
        top = int(np.argmax(p))
        label = names[int(np.argmax(q))] if len(q) else NO_WBC
        own = q.max(initial=0.0) * float(p[kept].sum())  # the model's own probability of the type called
        doubtful = False
        if not c.found or (not_leukocyte and float(p[not_leukocyte].sum()) >= NOT_A_WBC_SHARE):
            label = NO_WBC
        else:
            if (unnamed and top in unnamed) or top in not_leukocyte:  # (an erythroblast at 0.55 printed monocyte)
                hidden[classes[top]] = hidden.get(classes[top], 0) + 1
                doubtful = True  # its likeliest class is none the mode names: for review when one is asked
            if c.diameter < smallest:
                small, doubtful = small + 1, True
            if grey_photo(c.image):
                grey, doubtful = grey + 1, True
            if min_confidence > 0 and (doubtful or own < min_confidence or (unnamed and own < float(p[unnamed].sum()))):
                label = UNSURE  # asked for review only: by default every WBC crop takes one of the mode's types
        rows.append((label, q))
    log = logging.getLogger(__name__)
    then = " (with --min-confidence above 0, UNSURE)"
    left_out = [c for c in CLASSES if mode in (2, 3) and (mode == 3 or c != "basophil") and c not in classes]
    if left_out:  # a column DESIGN.md fixes for the mode, left out unsaid (a walkthrough, stop 71: a lab's typer, -m 3)
        log.warning("-m %d: the model knows no %s: left out of the columns (a model of its own lab's types)", mode,
                    ", ".join(left_out))
    if small:
        log.warning("%d crop(s) whose WBC spans under %.0f px: too few pixels to show its type (the classifier enlarges "
                    "it more than %gx); their types are unreliable%s", small, smallest, MAX_ENLARGEMENT, then)
    if grey:
        log.warning("%d grey crop(s): WBC types rest on the stain's colours, which they lack; their types are "
                    "unreliable%s", grey, then)
    if hidden:  # a lab's basophils printed as lymphocytes at 0.30, unsaid (a walkthrough, stop 69)
        log.warning(
            "%d crop(s) the model finds most likely %s, which -m %d has no column for: their rows give the likeliest "
            "type it names%s; -m 4 names every class", sum(hidden.values()),
            ", ".join(f"{k} ({n})" for k, n in sorted(hidden.items())), mode, then)
    return names, rows


def crops_for(images: list[np.ndarray], card: dict) -> list[CellCrop]:
    """How a model of ``card`` sees single-cell images: cell-normalised (the default, :func:`cell_crops`),
    or just resized for models trained without normalisation (then taken to hold a WBC)."""
    size = int(card.get("input_size", 96))
    if card.get("cell_normalised", True):
        return cell_crops(images, size, ruler=takes_ruler(card), padding=crop_padding(card))
    return [CellCrop(cv2.resize(np.ascontiguousarray(im[..., :3]), (size, size), interpolation=cv2.INTER_AREA),
                     np.zeros((size, size), bool), True, 0.0) for im in images]


def crops_each(images: list[np.ndarray], card: dict) -> list[CellCrop | Exception]:
    """:func:`crops_for` of a batch; should the batch fail, each image alone, so that only a bad one is
    lost (``hemaseg classify`` and ``hemaseg evaluate wbc-type``): per image its crop, or the exception its
    normalisation raised."""
    try:
        return list(crops_for(images, card))
    except Exception:
        out: list[CellCrop | Exception] = []
        for image in images:
            try:
                out.append(crop_for(image, card))
            except Exception as exc:  # this image only
                out.append(exc)
        return out


def crop_for(image: np.ndarray, card: dict) -> CellCrop:
    """:func:`crops_for` of one image."""
    return crops_for([image], card)[0]


CROP_MARGIN = 0.3  # WBC crops for typing: the cell's box grown by this share on each side


MIN_CROP = 24  # px: even a speck taken for a WBC gets a crop the cell normaliser can work on


def square_crop(image: np.ndarray, box: dict, margin: float) -> np.ndarray:
    """The square around ``box`` grown by ``margin`` of its longer side on each side (at least
    MIN_CROP px), clipped to the image: how a found WBC is cut for typing."""
    x1, x2, y1, y2 = box["x1"], box["x2"], box["y1"], box["y2"]
    side = max(MIN_CROP, max(x2 - x1, y2 - y1) * (1 + 2 * margin))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = image.shape[:2]
    X1, Y1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    X2, Y2 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    return image[Y1:Y2, X1:X2]


def type_wbcs(image: np.ndarray, records: list[dict], model="wbc-type", device: str = "cpu"
              ) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """(probabilities (N, K), normalised crops, class names) for the WBC records of an image."""
    _, card = get_model(model, device)
    size = int(card.get("input_size", 96))
    cells = cell_crops([square_crop(image, r["bounding_box"], CROP_MARGIN) for r in records], size,
                       ruler=takes_ruler(card), padding=crop_padding(card))
    crops = [c.image for c in cells]
    extras = np.stack([c.extras for c in cells]) if cells else None
    return (predict_crops(crops, model, device, extras=extras, parts=[c.parts for c in cells]), crops,
            list(card["classes"]))
