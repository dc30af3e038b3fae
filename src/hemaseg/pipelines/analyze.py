"""Whole-smear analysis: every cell found and outlined (cells model), each WBC cropped and typed
(WBC-type classifier), counts and the differential. Arrays in, records out."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from hemaseg.classical import grey_photo
from hemaseg.core.options import check_numbers
from hemaseg.core.vocabulary import CATEGORIES, EXTRA_TYPES, NOT_IN_DIFFERENTIAL, WBC_TYPES
from hemaseg.engine.predict import get_model, model_of_task, resolve_device, uses_backend
from hemaseg.engine.runtime import file_sha256
from hemaseg.engine.task import given_params
from hemaseg.engine.tiling import DEFAULT_TILE
from hemaseg.errors import HemasegError, HemasegUsageError
from hemaseg.io.images import as_photo, pixels_sha256
from hemaseg.metrics import binomial_ci
from hemaseg.models.registry import resolve_model_path
from hemaseg.pipelines.segment import RED_CELL_UM, diameter_from_pixel_size, file_pixel_size
from hemaseg.progress import warn_once
from hemaseg.tasks import get_task
from hemaseg.tasks.cells.infer import UNET_ONLY, is_detector
from hemaseg.tasks.wbc_type.crops import square_at, type_wbcs

log = logging.getLogger(__name__)

CATEGORY_COLOURS = {"rbc": (230, 60, 60), "wbc": (40, 110, 255), "platelet": (250, 190, 0)}
# A WBC whose most probable type has a calibrated probability under this is left untyped and listed
# for review: the typer then thinks its own call more likely wrong than right. Such a cell counts
# as a WBC but in no type, so the differential never rests on a guess (as CellaVision's
# "unidentified" cells stay out of the differential until someone classifies them).
MIN_CONFIDENCE = 0.5

# A found WBC the typer calls a platelet is one only when it is smaller than this many red-cell
# diameters: a platelet is 2-3 um across, a red cell 7.5 um (stop 48: the typer called 16 % of BCDD's
# neutrophils platelets, every one about a red cell across or larger; stop 64: with the typer of stop 62 a
# BCDD neutrophil 0.94 red cells across was one). No platelet box of TXL-PBC's train and val fields
# (465) is as wide as 0.9 of its field's red-cell diameter (the largest 0.87), and a box is wider than
# its cell's equivalent diameter.
PLATELET_MAX_RBC = 0.9
# A platelet call at this probability or more, ruled out for the cell's size, is a disagreement between the typer
# and the size, not a platelet to renormalise away: the other types keep their own (low) probabilities and the cell
# is listed unsure (a walkthrough, stop 71: PBC's platelet photos, platelet 0.95, were counted as neutrophils at 0.81).
PLATELET_DISAGREE = 0.5


def differential(counts: dict[str, int], types: tuple[str, ...], confidence: float = 0.95
                 ) -> dict[str, tuple[float, float, float]]:
    """Each leukocyte type's share of the typed leukocytes in ``counts``, in percent, with its exact
    binomial (Clopper-Pearson) interval: {type: (percent, low, high)}. Erythroblasts and platelets
    are not leukocytes; with no typed leukocyte every share is 0 and every interval 0-100 (callers
    show no share then: :func:`differential_size` is 0).

    >>> d = differential({"neutrophil": 50, "lymphocyte": 50}, ("neutrophil", "lymphocyte"))
    >>> [round(v, 1) for v in d["neutrophil"]]
    [50.0, 39.8, 60.2]
    """
    kinds = [t for t in types if t not in NOT_IN_DIFFERENTIAL]
    n = sum(counts.get(t, 0) for t in kinds)
    out = {}
    for t in kinds:
        lo, hi = binomial_ci(int(counts.get(t, 0)), int(n), confidence)
        out[t] = (100.0 * counts.get(t, 0) / n if n else 0.0, 100.0 * lo, 100.0 * hi)
    return out


def differential_size(counts: dict[str, int], types: tuple[str, ...]) -> int:
    """The number of typed leukocytes a differential of ``counts`` rests on."""
    return sum(counts.get(t, 0) for t in types if t not in NOT_IN_DIFFERENTIAL)


@lru_cache(maxsize=16)
def _file_digest(path: str, mtime: float) -> str:
    return file_sha256(path)[:12]


def model_label(model, device: str = "cpu") -> str:
    """Which model this is, for a report: its card's name, the hemaseg version that trained it and
    the first 12 hex digits of the weights file's SHA-256 (the exact weights)."""
    card = get_model(model, device)[1]
    parts = [str(card.get("name") or (model if isinstance(model, (str, Path)) else "model in memory"))]
    trained = card.get("versions", {}).get("hemaseg")
    if trained:
        parts.append(f"trained with hemaseg {trained}")
    if "temperature" in card:  # (a fine-tune on too few crops keeps its start's: not calibrated on its lab's crops)
        kept = (card.get("training") or {}).get("temperature_not_fitted")
        parts.append(f"temperature {float(card['temperature']):.3g} not fitted to it" if kept else
                     f"calibrated (temperature {float(card['temperature']):.3g})")
    if isinstance(model, (str, Path)):
        try:
            path = resolve_model_path(model)
            parts.append(f"sha256 {_file_digest(str(path), path.stat().st_mtime)}")
        except (HemasegError, OSError):
            pass
    return ", ".join(parts)


def model_fingerprint(model, device: str = "cpu") -> str:
    """:func:`model_label` and the first 12 hex digits of the SHA-256 of its card file (post-processing
    thresholds included): what a batch must find unchanged to be continued (a model retrained, or its card's
    thresholds edited, under the same name mixed two models' results in one batch)."""
    label = model_label(model, device)
    if not isinstance(model, (str, Path)):
        return label
    try:  # the card file as written (the same whichever backend loads the weights)
        card = resolve_model_path(model).with_suffix(".json").read_bytes()
    except (HemasegError, OSError):
        return label
    return f"{label}, card {hashlib.sha256(card).hexdigest()[:12]}"


@dataclass
class Analysis:
    """Result of :func:`analyze` for one image."""

    entry: dict  # seed-003 results record: filename, height, width, masks (class_name, category, ...)
    counts: dict[str, int]  # rbc, wbc, platelet and one count per WBC type
    instances: np.ndarray  # (H, W) int32 labels; mask k of entry["masks"] is instances == k + 1
    cell_diameter: float  # red-cell diameter, px (given or measured)
    wbc_crops: list[np.ndarray] = field(default_factory=list)  # one (S, S, 3) gallery_crop per WBC, in mask order
    types: tuple[str, ...] = WBC_TYPES  # the types counted: the five, then any further the typer names
    models: dict[str, str] = field(default_factory=dict)  # {"cells": ..., "wbc-type": ...}: model_label of each

    @property
    def differential(self) -> dict[str, float]:
        """Share of each leukocyte type among typed WBCs, in percent (0 when there are none);
        erythroblasts and platelets a PBC-trained typer may name are not leukocytes."""
        return {t: v[0] for t, v in differential(self.counts, self.types).items()}

    @property
    def differential_ci(self) -> dict[str, tuple[float, float]]:
        """The exact binomial 95 % interval of each share of :attr:`differential`, in percent."""
        return {t: v[1:] for t, v in differential(self.counts, self.types).items()}

    @property
    def n_differential(self) -> int:
        """The number of typed leukocytes the differential rests on."""
        return differential_size(self.counts, self.types)

    @property
    def unsure(self) -> list[dict]:
        """The WBC records whose type the typer is unsure of (left untyped, in no type's count)."""
        return [r for r in self.entry["masks"] if r.get("unsure")]


def typed_as(record: dict, probs: np.ndarray, classes: list[str], rbc_diameter: float | None) -> tuple[str, float]:
    """(class, its probability) a found WBC takes from its type probabilities: the most probable,
    except that a cell at least :data:`PLATELET_MAX_RBC` red-cell diameters across is no platelet:
    then the most probable of the other classes, its probability renormalised over them when the
    platelet's was under :data:`PLATELET_DISAGREE` (the typer unsure of it), its own otherwise (the typer
    sure of a platelet the size rules out: no type is sure; :func:`unsure_reason`).

    >>> p = np.array([0.1, 0.05, 0.85]); names = ["neutrophil", "lymphocyte", "platelet"]
    >>> [(c, round(v, 2)) for c, v in (typed_as({"diameter": 30.0}, p, names, 80.0),
    ...                                typed_as({"diameter": 120.0}, p, names, 80.0),
    ...                                typed_as({"diameter": 120.0}, np.array([0.3, 0.25, 0.45]), names, 80.0))]
    [('platelet', 0.85), ('neutrophil', 0.1), ('neutrophil', 0.55)]
    """
    probs = np.asarray(probs, np.float64)
    best = int(probs.argmax())
    if classes[best] == "platelet" and rbc_diameter and \
            float(record.get("diameter", 0.0)) >= PLATELET_MAX_RBC * rbc_diameter:
        rest = probs.copy()
        rest[best] = 0.0
        other = int(rest.argmax())
        if probs[best] >= PLATELET_DISAGREE:
            return classes[other], float(rest[other])
        return classes[other], float(rest[other] / max(rest.sum(), 1e-12))
    return classes[best], float(probs[best])


def counted_types(type_card: dict) -> tuple[str, ...]:
    """The types a typer's counts and ``counts.csv`` hold: the five, then the further ones a PBC-trained typer names
    (a "WBC" it calls a platelet is counted as a platelet, not a type).

    >>> counted_types({"classes": ["neutrophil", "lymphocyte", "ig", "platelet"]})[-1]
    'ig'
    """
    return WBC_TYPES + tuple(c for c in type_card["classes"] if c in EXTRA_TYPES and c not in CATEGORIES)


def floor2(p: float) -> str:
    """A probability shown with two decimals, rounded down: one under a threshold never reads as it.

    >>> floor2(0.4957), floor2(0.5), floor2(0.999)
    ('0.49', '0.50', '0.99')
    """
    return f"{np.floor(round(float(p), 4) * 100 + 1e-6) / 100:.2f}"  # (to the 4 decimals type_probs keep)


def unsure_reason(record: dict, name: str, confidence: float, min_confidence: float, grey: bool) -> str | None:
    """Why a WBC's type is left to a person (None: typed as ``name``): a grey photo (its stain's colours,
    which the typer tells types by, are missing); a cell the typer holds more likely a platelet than not,
    which its size rules out (:func:`typed_as`: the typer and the size disagree, so the renormalised
    probability of the other types is no confidence); the type's calibrated probability under
    ``min_confidence``. ``min_confidence`` 0 types every WBC, as asked.

    >>> r = {"type_probs": {"neutrophil": 0.04, "lymphocyte": 0.01, "platelet": 0.95}}
    >>> unsure_reason(r, "neutrophil", 0.8, 0.5, False)
    'typed platelet (0.95), too big for one'
    >>> unsure_reason(r, "neutrophil", 0.8, 0.0, False) is None, unsure_reason({}, "neutrophil", 0.45, 0.5, False)
    (True, 'neutrophil 0.45, under 0.5')
    """
    if not min_confidence:
        return None
    if grey:
        return "a grey photo: no stain colours to type by"
    probs = record.get("type_probs") or {}
    top = max(probs, key=probs.get) if probs else None
    if top is not None and top != name and probs[top] >= PLATELET_DISAGREE:
        return f"typed {top} ({floor2(probs[top])}), too big for one"
    if confidence < min_confidence:
        return f"{name} {floor2(confidence)}, under {min_confidence:g}"
    return None


def call_of(record: dict, rbc_diameter: float | None) -> tuple[str, float]:
    """(type, calibrated probability) of a found WBC record as :func:`analyze` called it from its ``type_probs``
    (:func:`typed_as`: a platelet ruled out for a cell too big to be one, the others' probabilities renormalised
    unless the typer held it a platelet at :data:`PLATELET_DISAGREE` or more); ("wbc", 1.0) for a record the typer
    did not see. What a gallery labels and sorts by, and what the ``min_confidence`` of an unsure record was
    compared with.

    >>> r = {"diameter": 120.0, "type_probs": {"neutrophil": 0.3, "lymphocyte": 0.25, "platelet": 0.45}}
    >>> [(c, round(v, 2)) for c, v in (call_of(r, 80.0), call_of(r, 200.0))]
    [('neutrophil', 0.55), ('platelet', 0.45)]
    """
    probs = record.get("type_probs")
    if not probs:
        return record.get("class_name", "wbc"), 1.0
    names = list(probs)
    return typed_as(record, np.array([probs[n] for n in names], np.float64), names, rbc_diameter)


def call_probs(record: dict, rbc_diameter: float | None) -> list[tuple[str, float]]:
    """A WBC record's types by probability, most probable first, without a platelet call :func:`call_of` rules
    out for the cell's size (the others renormalised, as there; kept as they are when the typer and the size
    disagree, :data:`PLATELET_DISAGREE`): what a gallery lists beside the call.

    >>> r = {"diameter": 120.0, "type_probs": {"neutrophil": 0.35, "lymphocyte": 0.2, "platelet": 0.45}}
    >>> [(t, round(p, 2)) for t, p in call_probs(r, 80.0)]
    [('neutrophil', 0.64), ('lymphocyte', 0.36)]
    >>> r["type_probs"] = {"neutrophil": 0.2, "lymphocyte": 0.1, "platelet": 0.7}
    >>> [(t, round(p, 2)) for t, p in call_probs(r, 80.0)]
    [('neutrophil', 0.2), ('lymphocyte', 0.1)]
    """
    probs = dict(record.get("type_probs") or {})
    top = max(probs, key=probs.get) if probs else None
    if top is not None and call_of(record, rbc_diameter)[0] != top:  # the call ruled the top one out
        ruled_out = probs.pop(top)
        if ruled_out < PLATELET_DISAGREE:
            probs = {t: p / max(1.0 - ruled_out, 1e-12) for t, p in probs.items()}
    return sorted(probs.items(), key=lambda kv: -kv[1])


@uses_backend
def analyze(image: np.ndarray, filename: str = "", cells_model="cells", type_model="wbc-type",
            cell_diameter: float | None = None, device: str = "cpu", tile: int = DEFAULT_TILE,
            min_confidence: float = MIN_CONFIDENCE, sample_id: str | None = None,
            pixel_size: float | None = None, backend: str = "auto", params=None) -> Analysis:
    """Find, outline, type and count every RBC, WBC and platelet of an (H, W, 3) uint8 smear photo.

    ``cell_diameter`` is the red-cell diameter in px (estimated when None). Each WBC's
    ``class_name`` is its type, with the type probabilities (calibrated) under ``type_probs``; a
    WBC whose top probability is under ``min_confidence`` keeps ``class_name`` ``"wbc"``, gets
    ``"unsure": True`` (and why, ``"unsure_reason"``) and counts in no type, as does every WBC of a grey
    photo (the typer tells types by the stain's colours; said as a warning) and one the typer holds more
    likely a platelet than not but too big for one (:func:`unsure_reason`); ``min_confidence`` 0 types
    every WBC. ``tile`` is the U-Net cells backend's largest tile;
    the Mask R-CNN backend reads the whole image at once. ``sample_id`` (the sample the photo is
    of) and ``pixel_size`` (µm per px, when known; for an ``image`` given as a path, its file's resolution tags
    when neither it nor ``cell_diameter`` is given) are recorded in the entry; without ``cell_diameter`` the red
    cells are taken as 7.5 µm at that scale, as ``hemaseg analyze`` takes them. An image
    with nothing in it (flat, or noise) gives no cell. ``backend`` runs both networks on ``torch``,
    ``onnx`` (ONNX Runtime) or ``auto`` (ONNX Runtime where a model has an ONNX file, torch otherwise;
    without torch the Mask R-CNN cells model gives way to the cells U-Net: :mod:`hemaseg.engine.runtime`).
    ``params`` (a dict of names and values, or a :class:`hemaseg.tasks.cells.CellsParams`) replaces the cells
    model card's post-processing parameters (``hemaseg analyze --post NAME=VALUE``, the names of ``hemaseg
    segment --task cells``), each checked as ``hemaseg.segment`` checks its ``params``.

    Parameters
    ----------
    image : (H, W, 3) uint8 photo, or grey / RGBA / 16-bit / float array or a file path.
    filename : the photo's name in the entry (seed 003's results JSON).
    cells_model, type_model : the cells model and the WBC typer (bundled names or paths).
    cell_diameter, device, tile, min_confidence, sample_id, pixel_size, backend, params : as above.

    Returns
    -------
    Analysis : ``counts`` (rbc, wbc, platelet and each type), ``differential`` (% of typed WBCs),
        ``entry`` (seed 003's record: ``masks`` with category, class_name, score, box, outline).

    Raises
    ------
    HemasegInputError : ``image`` not usable, or a model that names no bundled model and no readable file.
    hemaseg.errors.HemasegUsageError : ``min_confidence`` or ``pixel_size`` out of range, a model of
        another task, ``params`` neither a dict nor a ``CellsParams``, or a name or value it does not take.

    Examples
    --------
    >>> import hemaseg
    >>> res = hemaseg.analyze(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    >>> res.counts["wbc"], res.counts["neutrophil"]
    (1, 1)
    """
    check_numbers(min_confidence=min_confidence, pixel_size=pixel_size)
    if isinstance(image, (str, os.PathLike)):  # a path given: the entry names it, its own scale sizes the cells
        filename = filename or os.fspath(image)
        if pixel_size is None and cell_diameter is None:
            pixel_size = file_pixel_size(image)
    if cell_diameter is None and pixel_size is not None:  # as `hemaseg analyze` sizes it (the web page too)
        cell_diameter = diameter_from_pixel_size("cells", pixel_size)
        if cell_diameter is None:
            raise HemasegUsageError("pixel_size", f"{pixel_size:g} µm per px gives a red cell of "
                                                  f"{RED_CELL_UM / pixel_size:.4g} px, outside the sizes cell_diameter "
                                                  "takes: not a microscope's scale")
    image = as_photo(image)
    device = resolve_device(device)  # 'auto', or 'cuda' without a GPU: one line, not torch's error
    cells_card = model_of_task(cells_model, "cells", device, "cells_model")[1]
    type_card = model_of_task(type_model, "wbc-type", device, "type_model")[1]
    params = given_params(get_task("cells"), cells_card, params)  # a dict too, as hemaseg.segment takes
    seg = get_task("cells").predict(image, cells_model, cell_diameter, device, tile=tile, params=params)
    records = [dict(r) for r in seg.objects]
    wbcs = [r for r in records if r["category"] == "wbc"]
    crops: list[np.ndarray] = []
    # The five types, then the further ones a PBC-trained typer names; a "WBC" it calls a platelet
    # is a platelet (counted as one), not a white cell.
    types = counted_types(type_card)
    if wbcs:
        probs, _, classes = type_wbcs(image, wbcs, type_model, device)  # the gallery cuts its own crops
        # A grey photo lacks the stain's colours the typer tells types by: it typed them at 0.64-0.97 there, a
        # monocyte as ig (a walkthrough, stop 69). Each WBC is counted, its type left for a person.
        grey = grey_photo(image)
        if grey:
            log.warning("%sa grey photo: WBC types rest on the stain's colours, which it lacks; its %d WBC(s) are "
                        "counted and %s", f"{filename}: " if filename else "", len(wbcs),
                        "listed unsure, typed by none" if min_confidence else "typed as asked (min_confidence 0)")
        for r, p in zip(wbcs, probs):
            r["type_probs"] = {c: round(float(v), 4) for c, v in zip(classes, p)}
            # decided on the probabilities kept (4 decimals), as the report and the web page read them back
            name, confidence = call_of(r, seg.cell_diameter)
            reason = unsure_reason(r, name, confidence, min_confidence, grey)
            if reason:
                r["unsure"] = True  # stays class_name "wbc": a WBC, type for a person to decide
                r["unsure_reason"] = reason  # what the report's review list says of it
                continue
            r["class_name"] = name
            if r["class_name"] in CATEGORIES:
                r["category"] = r["class_name"]
        kept = [k for k, r in enumerate(wbcs) if r["category"] == "wbc"]
        wbcs = [wbcs[k] for k in kept]
        crops = [gallery_crop(image, r["bounding_box"], seg.cell_diameter) for r in wbcs]
    # Instance ids in mask order, so entry["masks"][k] is instances == k + 1.
    lut = np.zeros(int(seg.instances.max()) + 1, np.int32)
    for k, r in enumerate(records, 1):
        lut[r.pop("id")] = k
    instances = lut[seg.instances]
    counts = count_records(records, types)
    entry = {"filename": filename, "height": int(image.shape[0]), "width": int(image.shape[1]),
             "cell_diameter": round(seg.cell_diameter, 2), "scale": round(seg.scale, 4),
             # which photo it is, whatever its name: `crop --types` cuts a corrected file's WBCs from that photo only
             # (another batch's photo of one name and size took a lab's corrections: a walkthrough, stop 69)
             "pixels_sha256": pixels_sha256(image)}
    # Only when given: the seed-003 record stays as it was for callers that give neither.
    if sample_id is not None:
        entry["sample_id"] = str(sample_id)
    if pixel_size is not None:
        entry["pixel_size_um"] = float(pixel_size)
    if cell_diameter is not None:  # not measured: the report says so, and what it came from
        derived = pixel_size and cell_diameter == diameter_from_pixel_size("cells", pixel_size)
        entry["cell_diameter_from"] = "pixel size" if derived else "given"
    elif seg.diameter_from == "model":  # no red cell to measure it by: the model's trained size
        entry["cell_diameter_from"] = "model"
    if params is not None:  # the knobs given that differ from the model card's: the counts rest on them
        own = get_task("cells").params(cells_card)
        changed = {k: v for k, v in asdict(params).items() if k != "platelet_rescore" and v != getattr(own, k)}
        if params.platelet_rescore != own.platelet_rescore:  # (the fitted re-scorer itself is long: said, not copied)
            changed["platelet_rescore"] = "none" if params.platelet_rescore is None else "given"
        if is_detector(cells_card):  # a Mask R-CNN reads none of the U-Net's knobs: not applied, not recorded
            unused = sorted(k for k in changed if k in UNET_ONLY)
            if unused:
                warn_once(log, ("unet-only", tuple(unused)), "%s: not used by the Mask R-CNN cells model (the U-Net "
                          "backend's only): %s", ", ".join(f"--post {k}" for k in unused), "ignored")
            changed = {k: v for k, v in changed.items() if k not in UNET_ONLY}
        if changed:
            entry["postprocess"] = changed
    entry["masks"] = records
    models = {"cells": model_label(cells_model, device), "wbc-type": model_label(type_model, device)}
    return Analysis(entry, counts, instances, seg.cell_diameter, crops, types, models)


# A gallery crop spans this many red-cell diameters (more when its WBC is larger), so every cell of
# a photo is shown at one magnification and a lymphocyte looks smaller than a monocyte beside it.
GALLERY_RBC_SPAN = 3.0
GALLERY_FILL = (128, 128, 128)  # beyond the photo's edge: grey, never a mirror image of the cell


def gallery_crop(image: np.ndarray, box: dict, rbc_diameter: float, size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8: the photo around a WBC's ``box`` for a person to review, a square of
    :data:`GALLERY_RBC_SPAN` red-cell diameters (or 1.3x the box's longer side when larger) centred
    on the box, grey (:data:`GALLERY_FILL`) where it leaves the photo. Unlike the typer's own crop
    (rescaled to its WBC, padded by reflection), sizes can be compared and nothing is mirrored.

    >>> img = np.full((100, 100, 3), 200, np.uint8)
    >>> c = gallery_crop(img, {"x1": 0, "x2": 20, "y1": 0, "y2": 20}, rbc_diameter=20, size=60)
    >>> c.shape, c[0, 0].tolist(), c[-1, -1].tolist()
    ((60, 60, 3), [128, 128, 128], [200, 200, 200])
    """
    x1, x2, y1, y2 = box["x1"], box["x2"], box["y1"], box["y2"]
    side = max(GALLERY_RBC_SPAN * float(rbc_diameter), 1.3 * max(x2 - x1, y2 - y1), 8.0)
    out, _ = square_at(image[..., :3], (y1 + y2) / 2, (x1 + x2) / 2, side, GALLERY_FILL)
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA if out.shape[0] > size else cv2.INTER_LINEAR)


def count_records(records: list[dict], types: tuple[str, ...]) -> dict[str, int]:
    """Counts of an analysis from its records (:func:`analyze`'s, and the web page's after a correction):
    rbc, wbc, platelet by category, then each of ``types`` among the WBC records' class names
    (an untyped, unsure WBC counts as a WBC and in no type).

    >>> recs = [{"category": "rbc", "class_name": "rbc"}, {"category": "wbc", "class_name": "monocyte"},
    ...         {"category": "wbc", "class_name": "wbc", "unsure": True}]
    >>> count_records(recs, ("neutrophil", "monocyte"))
    {'rbc': 1, 'wbc': 2, 'platelet': 0, 'neutrophil': 0, 'monocyte': 1}
    """
    counts = {c: sum(r["category"] == c for r in records) for c in CATEGORIES}
    wbcs = [r for r in records if r["category"] == "wbc"]
    counts.update({t: sum(r["class_name"] == t for r in wbcs) for t in types})
    return counts


def draw_overlay(image: np.ndarray, analysis: Analysis, thickness: int | None = None) -> np.ndarray:
    """Outline every cell in its category's colour and label each WBC with its type: (H, W, 3) uint8."""
    out = np.ascontiguousarray(image[..., :3]).copy()
    t = thickness or max(1, round(max(image.shape[:2]) / 500))
    for r in analysis.entry["masks"]:
        pts = np.asarray(r["vertices"], np.int32).reshape(-1, 1, 2)
        if len(pts) >= 2:
            cv2.polylines(out, [pts], True, CATEGORY_COLOURS.get(r["category"], (255, 255, 255)), t, cv2.LINE_AA)
        if r["category"] == "wbc":
            # On its own cell: centred on the box (above the box, the label lay on whichever red cell
            # touched the WBC there).
            b = r["bounding_box"]
            scale = max(0.4, max(image.shape[:2]) / 1200)
            label = r["class_name"][:4].upper() + ("?" if r.get("unsure") else "")
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, t + 1)
            x = int(np.clip((b["x1"] + b["x2"] - tw) // 2, 0, max(0, out.shape[1] - tw)))
            y = int(np.clip((b["y1"] + b["y2"] + th) // 2, th, out.shape[0] - 1))
            cv2.putText(out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), t + 1, cv2.LINE_AA)
            cv2.putText(out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), t, cv2.LINE_AA)
    return out
