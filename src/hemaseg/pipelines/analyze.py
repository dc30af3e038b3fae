"""Whole-smear analysis: every cell found and outlined (cells model), each WBC cropped and typed
(WBC-type classifier), counts and the differential. Arrays in, records out."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from hemaseg.core.vocabulary import CATEGORIES, EXTRA_TYPES, NOT_IN_DIFFERENTIAL, WBC_TYPES
from hemaseg.engine.predict import get_model
from hemaseg.engine.tiling import DEFAULT_TILE
from hemaseg.tasks import get_task
from hemaseg.tasks.wbc_type.crops import type_wbcs

CATEGORY_COLOURS = {"rbc": (230, 60, 60), "wbc": (40, 110, 255), "platelet": (250, 190, 0)}


@dataclass
class Analysis:
    """Result of :func:`analyze` for one image."""

    entry: dict  # seed-003 results record: filename, height, width, masks (class_name, category, ...)
    counts: dict[str, int]  # rbc, wbc, platelet and one count per WBC type
    instances: np.ndarray  # (H, W) int32 labels; mask k of entry["masks"] is instances == k + 1
    cell_diameter: float  # red-cell diameter, px (given or measured)
    wbc_crops: list[np.ndarray] = field(default_factory=list)  # one (S, S, 3) typed crop per WBC, in mask order
    types: tuple[str, ...] = WBC_TYPES  # the types counted: the five, then any further the typer names

    @property
    def differential(self) -> dict[str, float]:
        """Share of each leukocyte type among typed WBCs, in percent (0 when there are none);
        erythroblasts and platelets a PBC-trained typer may name are not leukocytes."""
        kinds = [t for t in self.types if t not in NOT_IN_DIFFERENTIAL]
        n = sum(self.counts[t] for t in kinds)
        return {t: (100.0 * self.counts[t] / n if n else 0.0) for t in kinds}


def analyze(image: np.ndarray, filename: str = "", cells_model="cells", type_model="wbc-type",
            cell_diameter: float | None = None, device: str = "cpu", tile: int = DEFAULT_TILE) -> Analysis:
    """Find, outline, type and count every RBC, WBC and platelet of an (H, W, 3) uint8 smear photo.

    ``cell_diameter`` is the red-cell diameter in px (estimated when None). Each WBC's
    ``class_name`` is its type, with the type probabilities under ``type_probs``. ``tile`` is the
    U-Net cells backend's largest tile; the Mask R-CNN backend reads the whole image at once.
    An image with nothing in it (flat, or noise) gives no cell.
    """
    seg = get_task("cells").predict(image, cells_model, cell_diameter, device, tile=tile)
    records = [dict(r) for r in seg.objects]
    wbcs = [r for r in records if r["category"] == "wbc"]
    crops: list[np.ndarray] = []
    # The five types, then the further ones a PBC-trained typer names; a "WBC" it calls a platelet
    # is a platelet (counted as one), not a white cell.
    types = WBC_TYPES + tuple(c for c in get_model(type_model, device)[1]["classes"]
                              if c in EXTRA_TYPES and c not in CATEGORIES)
    if wbcs:
        probs, crops, classes = type_wbcs(image, wbcs, type_model, device)
        for r, p in zip(wbcs, probs):
            r["class_name"] = classes[int(p.argmax())]
            r["type_probs"] = {c: round(float(v), 4) for c, v in zip(classes, p)}
            if r["class_name"] in CATEGORIES:
                r["category"] = r["class_name"]
        kept = [k for k, r in enumerate(wbcs) if r["category"] == "wbc"]
        wbcs, crops = [wbcs[k] for k in kept], [crops[k] for k in kept]
    # Instance ids in mask order, so entry["masks"][k] is instances == k + 1.
    lut = np.zeros(int(seg.instances.max()) + 1, np.int32)
    for k, r in enumerate(records, 1):
        lut[r.pop("id")] = k
    instances = lut[seg.instances]
    counts = {c: sum(r["category"] == c for r in records) for c in CATEGORIES}
    counts.update({t: sum(r["class_name"] == t for r in wbcs) for t in types})
    entry = {"filename": filename, "height": int(image.shape[0]), "width": int(image.shape[1]),
             "cell_diameter": round(seg.cell_diameter, 2), "scale": round(seg.scale, 4), "masks": records}
    return Analysis(entry, counts, instances, seg.cell_diameter, crops, types)


def draw_overlay(image: np.ndarray, analysis: Analysis, thickness: int | None = None) -> np.ndarray:
    """Outline every cell in its category's colour and label each WBC with its type: (H, W, 3) uint8."""
    out = np.ascontiguousarray(image[..., :3]).copy()
    t = thickness or max(1, round(max(image.shape[:2]) / 500))
    for r in analysis.entry["masks"]:
        pts = np.asarray(r["vertices"], np.int32).reshape(-1, 1, 2)
        if len(pts) >= 2:
            cv2.polylines(out, [pts], True, CATEGORY_COLOURS.get(r["category"], (255, 255, 255)), t, cv2.LINE_AA)
        if r["category"] == "wbc":
            b = r["bounding_box"]
            scale = max(0.4, max(image.shape[:2]) / 1200)
            cv2.putText(out, r["class_name"][:4].upper(), (b["x1"], max(12, b["y1"] - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, (20, 20, 20), t + 1, cv2.LINE_AA)
            cv2.putText(out, r["class_name"][:4].upper(), (b["x1"], max(12, b["y1"] - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, (255, 255, 255), t, cv2.LINE_AA)
    return out
