"""The ``cells`` task (seed 003 chapter 5): every RBC, WBC and platelet of a smear photo as an
instance, for counting. Two backends: a U-Net predicting each category's cell interior plus a
shared cell edge and each cell's core (watershed from the cores), and a small Mask R-CNN.

- :mod:`.targets`: boxes -> pseudo-masks, encoded instance maps, network targets;
- :mod:`.infer`: whole photos (red-cell size check, instances, boxes drawn as the training
  annotations drew them), both backends;
- :mod:`.train`: training data and the box metric (VOC AP@0.5);
- :mod:`.maskrcnn`: the detector's own training loop.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from hemaseg.core.result import Segmentation
from hemaseg.engine.evaluate import (
    box_panels,
    find_each,
    nothing_scored,
    own_training_note,
    select_split,
    split_name,
    split_names,
    worst_grid,
)
from hemaseg.engine.predict import model_of_task
from hemaseg.engine.task import ARCH_ALIASES, Task
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.engine.train import TrainConfig, fit
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.annotations import find_yolo, outline_box
from hemaseg.io.images import read_image
from hemaseg.metrics import coco_box_map, detection_ap
from hemaseg.progress import track
from hemaseg.tasks.cells.infer import CATEGORIES, CellsParams, cell_instances, segment_cells
from hemaseg.tasks.cells.maskrcnn import fit_maskrcnn
from hemaseg.tasks.cells.targets import CLASSES, LABEL_VALUES
from hemaseg.tasks.cells.train import cells_data, find_annotated_photos, is_box_only, is_yolo_root, score_instances
from hemaseg.tasks.registry import register_task

DEPENDS: tuple[str, ...] = ()


def _box(record: dict, outline: bool) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of a record: its outline's extent (``outline``, where it has one), else its box."""
    b = outline_box(record["vertices"]) if outline and record.get("vertices") else record["bounding_box"]
    return b["x1"], b["y1"], b["x2"], b["y2"]


class CellsTask(Task):
    """RBC, WBC and platelet instances of whole smear photos (BCCD pseudo-masks)."""

    name = "cells"
    classes = CLASSES
    label_values = LABEL_VALUES
    colors = {1: (220, 40, 40), 2: (40, 90, 255), 3: (250, 200, 0)}
    default_model = "cells"
    label_suffixes = ("", "_classes")
    run_files = ("pseudo_masks.coco.json",)
    train_archs = ("unet-dropout", "smp-unet", "maskrcnn-light")  # maskrcnn-light trains in the detector's loop
    description = "RBC, WBC and platelet instances of whole smear photos (BCCD pseudo-masks)"
    depends = DEPENDS
    Params = CellsParams
    train_defaults = {
            # BCCD photos at train.cells.INPUT_SCALE (0.5x: red cells ~43 px); 0.6-1.6x scale augmentation.
            "arch_kwargs": {"widths": [16, 32, 64, 128, 256], "dropout": 0.1, "stem_stride": 2, "norm": "group"},
            "epochs": 60, "batch_size": 8, "lr": 2e-3, "crop": 224, "samples_per_epoch": 400, "patience": 100,
            "val_fraction": 0.2, "scale_min": 0.6, "scale_max": 1.6, "class_balance": True,
        }

    def segment(self, image, model, cell_diameter=None, device="cpu", tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP,
                tta=None, params=None) -> Segmentation:
        return segment_cells(image, model, cell_diameter, device, tile, overlap, params)

    def scored_files(self, root: str | Path) -> list[Path]:
        """The annotated photos of a VOC root, a YOLO dataset or a COCO folder (their label files are
        not images: the CLI refuses any such file under ``--data`` anyway)."""
        if is_yolo_root(Path(root)):  # every photo, those whose label cannot be read too
            return [img for img, _ in find_yolo(root)]
        return [Path(p) for p, _ in find_annotated_photos(root, [])]

    def evaluate(self, data: list, model=None, split=None, cell_diameter: float | None = None,
                 device: str = "cpu", grid: Path | None = None, method: str | None = None, params=None) -> dict:
        """Score a cells model on annotated photos (a VOC root, a YOLO dataset with data.yaml, a COCO JSON):
        VOC AP@0.5 per category, their mean, COCO mAP@[.5:.95] (pycocotools), each category's count exact
        per photo, the whole pipeline as ``hemaseg analyze`` runs it. ``split``: only the photos its
        ``val`` list names (paths or file names), or on a YOLO dataset a split's name (``val``, ``test``:
        the photos of ``images/<name>/``); without it a YOLO dataset's every split is scored, which
        ``notes`` says. A photo that cannot be read is listed in ``failed``. ``grid``: a PNG of the
        photos of lowest AP@0.5 (their own boxes), true and found boxes drawn."""
        if method:
            raise HemasegUsageError("--method", "cells has no classical method")
        model = model or self.default_model
        loaded = model_of_task(model, self.name, device)
        failed: list[dict] = []
        unread: list[dict] = []  # photos that could not be read: said unless the split leaves them out anyway
        def find(folder):
            before = len(unread)
            found = find_annotated_photos(folder, unread)
            if not found and len(unread) > before:  # each reason, not "no annotated images found" alone
                why = "; ".join(f"{Path(f['image']).name}: {f['reason']}" for f in unread[before:])
                del unread[before:]  # each said in this line, every one (each was said twice)
                raise HemasegInputError(folder, f"no usable annotated photo ({why})")
            return found

        photos = find_each(data, find, failed)
        splits = Counter(e["split"] for _, e in photos if e.get("split"))
        notes = []
        if split_name(split):  # a YOLO dataset's own split by name (images/<name>/): TXL-PBC's val or test
            if str(split) not in splits:
                held = ", ".join(f"{k} ({v})" for k, v in sorted(splits.items())) or "no named split"
                raise HemasegUsageError("--split", f"{split}: no photo of that split; the data holds {held}")
            unsplit = sum(1 for _, e in photos if not e.get("split"))
            if unsplit:
                notes.append(f"note: {unsplit} photos without a split (VOC or COCO data) are left out by "
                             f"--split {split}")
            photos = [(p, e) for p, e in photos if e.get("split") == str(split)]
            unread = [f for f in unread if _of_split(f["image"], str(split))]
        elif split:
            photos = select_split(photos, split, path=lambda photo: photo[0])
            stems = {Path(n).stem for n in split_names(split)}  # a bad label file x.txt is photo x.png's
            unread = [f for f in unread if Path(f["image"]).stem in stems]
        failed += unread
        splits = Counter(e["split"] for _, e in photos if e.get("split"))  # of the photos scored
        if not split and ("train" in splits or len(splits) > 1):  # a score of training photos flatters a model
            notes.append(f"note: no --split given, so all {len(photos)} photos of every split are scored "
                         f"({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}), training photos "
                         "included; --split val (a split's name) or --split FILE (a split.json's 'val' list) "
                         "scores only those")
        # a run scored on its own training photos (a COCO or VOC folder has no split to say so)
        notes += own_training_note(model, loaded[1], [p for p, _ in photos], "photos")
        grown = {c: k for c, k in (loaded[1].get("box_scale") or {}).items() if abs(float(k) - 1.0) > 0.05}
        boxed = any(e["masks"] and is_box_only(e) for _, e in photos)
        if grown and boxed and (params or self.params(loaded[1])).grow_boxes:
            notes.append("note: found cells' boxes are drawn as the model's training boxes were ("
                         + ", ".join(f"{c} x{float(k):.2f}" for c, k in sorted(grown.items()))
                         + " their extent); against boxes drawn tight, --post grow_boxes=false")
        cats = tuple(CATEGORIES)
        preds: dict = {c: [] for c in cats}
        truths: dict = {c: {} for c in cats}
        sizes, rows = {}, []
        for i, (path, entry) in enumerate(track(photos, "evaluate")):
            try:
                image = read_image(path)
            except HemasegInputError as exc:
                failed.append({"image": str(exc.path), "reason": exc.reason})
                continue
            t0 = time.perf_counter()
            seg = self.predict(image, loaded, cell_diameter=cell_diameter, device=device,  # as analyze runs it
                               params=params)
            seconds = time.perf_counter() - t0
            sizes[i] = image.shape[:2]
            row = {"image": str(path), "seconds": seconds, "_target": [], "_pred": []}
            # outlined truth (CVAT or COCO polygons) is matched outline to outline: a found cell's box is grown as
            # its training boxes were drawn (box_scale: platelets x1.57), which an outline's tight extent never
            # meets (platelet AP 0 on analyze's own pre-annotations read back from CVAT)
            outlines = not is_box_only(entry)
            for c in cats:
                truths[c][i] = [_box(m, outlines) for m in entry["masks"] if m.get("category") == c]
                mine = [(o["score"], _box(o, outlines)) for o in seg.objects if o["category"] == c]
                preds[c] += [(i, score, box) for score, box in mine]
                row[f"{c}_true"], row[f"{c}_found"] = len(truths[c][i]), len(mine)
                row["_target"] += [(c, box) for box in truths[c][i]]
                row["_pred"] += [(c, score, box) for score, box in mine]
            aps = [detection_ap([(0, score, box) for k, score, box in row["_pred"] if k == c], {0: truths[c][i]})
                   for c in cats if truths[c][i]]
            row["ap50"] = float(np.mean(aps)) if aps else None  # this photo's categories; None: it boxes none
            rows.append(row)
        if not rows:
            raise nothing_scored(data, failed, "no photo could be scored")
        ap = {c: detection_ap(preds[c], truths[c]) for c in cats}
        boxed = [c for c in cats if any(truths[c].values())]  # a category no photo boxes is left out
        mean = {f"ap50_{c}": ap[c] for c in boxed}
        mean["map50"] = float(np.mean([ap[c] for c in boxed])) if boxed else float("nan")
        mean["coco_map"] = coco_box_map(preds, truths, sizes, cats)
        for c in cats:
            mean[f"count_exact_{c}"] = float(np.mean([r[f"{c}_true"] == r[f"{c}_found"] for r in rows]))
        mean["seconds"] = float(np.mean([r["seconds"] for r in rows]))
        if grid is not None:
            worst_grid(self, rows, grid, key=_worst_first)
        per_image = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        return {"task": self.name, "model": str(model), "n_images": len(rows), "mean": mean, "per_image": per_image,
                "failed": failed, "splits": dict(splits), "notes": notes}

    def panels(self, image: np.ndarray, target: list, pred: list) -> list[np.ndarray]:
        return box_panels(image, target, pred, {c: self.colors[k + 1] for k, c in enumerate(CATEGORIES)})

    def row_title(self, row: dict) -> str:
        true = sum(row[f"{c}_true"] for c in CATEGORIES)
        found = sum(row[f"{c}_found"] for c in CATEGORIES)
        ap = "-" if row["ap50"] is None else f"{row['ap50']:.2f}"
        return f"found: AP50 {ap}, {found} boxes / {true} true"

    def table(self, res: dict) -> list[str]:
        m = res["mean"]
        lines = [f"{'category':<10} {'AP@0.5':>7} {'count exact':>12}"]
        for c in CATEGORIES:
            ap = f"{m[f'ap50_{c}']:.4f}" if f"ap50_{c}" in m else "-"
            lines.append(f"{c:<10} {ap:>7} {m[f'count_exact_{c}']:>12.3f}")
        lines.append(f"mAP@0.5 {m['map50']:.4f}, COCO mAP@[.5:.95] {m['coco_map']:.4f} ({res['n_images']} photos)")
        return lines

    def label_images(self, seg: Segmentation) -> dict[str, np.ndarray]:
        # Instances (0 background, 1..N, as nuclei) and the category of each pixel (1 rbc, 2 wbc, 3 platelet).
        return {"": seg.instances.astype(np.uint16), "_classes": seg.classes.astype(np.uint8)}

    def train_data(self, cfg, run: Path, state: dict) -> tuple:
        return cells_data(cfg, run, state)

    def validate(self, probs_of, items: list, cfg, data_card: dict) -> dict[str, float]:
        diameter = float(data_card.get("cell_diameter") or 0)
        return score_instances(items, lambda image: cell_instances(probs_of(image), diameter),
                               data_card.get("box_scale")) if items else {}

    def headline(self, val: dict[str, float]) -> float:
        return val["map50"] if val else float("nan")

    train_options = ("arch", "init", "workers", "unboxed", "leave_out")

    def train_config(self, unboxed: str | None = None, leave_out: list[str] | None = None, **options) -> TrainConfig:
        """As :meth:`Task.train_config`; ``unboxed``: stained pixels outside every box are
        ``"ignore"``d by the loss (default) or taught as ``"background"``; ``leave_out``: sources
        (a YOLO dataset's sources.csv) kept out of the run; ``arch="maskrcnn"`` trains the detector
        (batch 4 by default); ``init`` starts from a model's weights, whose architecture the run takes."""
        if unboxed not in (None, "ignore", "background"):
            raise HemasegUsageError("--unboxed", "ignore or background")
        if leave_out is not None and not all(isinstance(v, str) and v.strip() for v in leave_out):
            raise HemasegUsageError("--leave-out", "a source name, as sources.csv spells it (e.g. BCCD)")
        cfg = super().train_config(**options)
        arch = options.get("arch")
        if arch and options.get("init") and ARCH_ALIASES.get(arch, arch) != cfg.arch:
            raise HemasegUsageError("--init", f"a {cfg.arch} model; it cannot start a {arch} run (leave --arch out)")
        cfg = replace(cfg, ignore_unboxed=unboxed != "background", leave_out=list(leave_out or []))
        if cfg.arch.startswith("maskrcnn") and options.get("batch_size") is None:
            cfg = replace(cfg, batch_size=4)
        return cfg

    def fit(self, cfg, run: str | Path, resume: bool = False, progress: bool = True,
            max_epochs_this_call: int | None = None) -> dict:
        """U-Net runs train in the engine's loop; ``arch`` maskrcnn runs in the detector's own."""
        arch = cfg.arch if cfg is not None else _saved_arch(Path(run))
        if arch.startswith("maskrcnn"):
            return fit_maskrcnn(cfg, run, resume, progress, max_epochs_this_call)
        return fit(self, cfg, run, resume, progress, max_epochs_this_call)


def _of_split(path: str, name: str) -> bool:
    """Whether a YOLO photo or label file lies in split ``name`` (``images/<name>/`` or ``labels/<name>/``)."""
    parts = Path(path).parts
    return any(a in ("images", "labels") and b == name for a, b in zip(parts, parts[1:]))


def _worst_first(row: dict) -> tuple[float, int]:
    """Sort key of the worst-case grid: lowest AP@0.5 first (a photo with no true box last), then the
    largest count error."""
    error = sum(abs(row[f"{c}_true"] - row[f"{c}_found"]) for c in CATEGORIES)
    return (1.0 if row["ap50"] is None else row["ap50"], -error)


def _saved_arch(run: Path) -> str:
    state = run / "state.json"
    return json.loads(state.read_text()).get("config", {}).get("arch", "") if state.exists() else ""


CELLS = register_task(CellsTask())
