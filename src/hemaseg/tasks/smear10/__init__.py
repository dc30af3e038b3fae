"""The ``smear10`` task (seed 002): a 10-class map of a blood smear (5 WBC types, thrombocyte,
platelet clump, infected and healthy RBC, background) with the seed's palette.

- :mod:`.classes`: the classes, palette and groups;
- :mod:`.synth`: the synthetic smear composer (real crops and procedural cells);
- :mod:`.train`: training data (composed smears streamed per epoch, held-out validation smears);
- :mod:`.infer`: the map of a whole image (red-cell size check, one type per object, WBCs
  named by the ``wbc-type`` classifier).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hemaseg.core.result import Segmentation
from hemaseg.engine.evaluate import find_each, nothing_scored, runner, select_split
from hemaseg.engine.plots import plot_confusion
from hemaseg.engine.task import Task
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.engine.train import TrainConfig
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.datasets import find_smear_pairs, read_smear_label
from hemaseg.io.images import read_image
from hemaseg.metrics import confusion_matrix, semantic_scores
from hemaseg.progress import track
from hemaseg.tasks.registry import register_task
from hemaseg.tasks.smear10.classes import CLASSES, GROUP_OF, GROUPS, PALETTE
from hemaseg.tasks.smear10.infer import SmearParams, segment_smear
from hemaseg.tasks.smear10.synth import SynthConfig, colour_map
from hemaseg.tasks.smear10.train import smear10_data

DEPENDS = ("wbc_type", "cells")

# Kept for code written against the old ``hemaseg.tasks`` constants.
SMEAR10_GROUPS = GROUP_OF


class Smear10Task(Task):
    """10-class smear map (seed 002): 5 WBC types, thrombocyte, platelet clump, infected/healthy RBC."""

    name = "smear10"
    classes = CLASSES
    label_values = tuple(range(len(CLASSES)))
    colors = PALETTE
    default_model = "smear10"
    grid_title = "confusion matrix"  # evaluate --grid
    description = "10-class smear map (seed 002): 5 WBC types, thrombocyte, platelet clump, infected/healthy RBC"
    depends = DEPENDS
    Params = SmearParams
    nested_loss = False  # ten disjoint classes, no nesting
    supports_tta = True
    label_suffixes = ("", "_color")
    run_files = ("bank_train.npz", "val", "val.partial")
    needs_data = False  # smears are composed; --data only adds real cells to cut
    train_options = ("arch", "init", "workers", "reuse", "held_out", "recipe", "real_fields")
    groups = GROUPS
    train_defaults = {
        # Synthetic 224x224 smears composed on the fly in one worker process (scale and stain variety
        # come from the composer; the smears are the same with 0 workers); class-balancing weights as
        # seed 002. A full-resolution first level (stem_stride 1) costs ~2x per epoch here: trained
        # 75 min (60 epochs) it reached val mean IoU 0.703, below 0.741 of this network in 41 min
        # (70 x 640 smears). Each smear serves 4 epochs (re-augmented), 37 s an epoch against 46 s
        # with new smears every epoch: 100 epochs without reuse took 77 min for 0.791; the bundled
        # model is this recipe, 130 x 960 smears with reuse 4, 77.5 min, 0.814.
        "arch_kwargs": {"widths": [16, 32, 64, 128, 256], "dropout": 0.1, "stem_stride": 2, "norm": "group"},
        "epochs": 130, "batch_size": 16, "lr": 2e-3, "crop": 224, "samples_per_epoch": 960, "patience": 100,
        "class_balance": True, "merge_wbc": True, "workers": 1, "reuse": 4,
    }

    def segment(self, image, model, cell_diameter=None, device="cpu", tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP,
                tta=None, params=None) -> Segmentation:
        return segment_smear(image, model, cell_diameter, device, tile, overlap, tta, params)

    def label_images(self, seg: Segmentation) -> dict[str, np.ndarray]:
        return {"": seg.classes.astype(np.uint8), "_color": colour_map(seg.classes)}

    def train_data(self, cfg, run: Path, state: dict) -> tuple:
        return smear10_data(cfg, run, state)

    def train_config(self, recipe: str | None = None, **options) -> TrainConfig:
        """As :meth:`Task.train_config`; ``recipe="seed002"`` is the seed's recipe (lr 1e-3, then 1e-4
        after 5 of 35 epochs). ``crop`` is refused: the smears are composed at seed 002's size
        (:class:`~hemaseg.tasks.smear10.synth.SynthConfig`'s ``size``, 224 px) whatever it says."""
        if options.get("crop") is not None:
            raise HemasegUsageError("--crop", f"smear10 composes its training smears at {SynthConfig().size} px "
                                              "(seed 002's size); --crop is not used")
        if recipe == "seed002":
            options = {**options, "lr": options.get("lr") or 1e-3, "epochs": options.get("epochs") or 35}
            return replace(super().train_config(**options), schedule="step")
        if recipe is not None:
            raise HemasegUsageError("--recipe", "known recipes: seed002")
        return super().train_config(**options)

    def scored_files(self, root: str | Path) -> list[Path]:
        """The images of a seed-002 folder and every map of theirs (``segments/`` and ``classes/``)."""
        images = [img for img, _ in find_smear_pairs(root)]
        return images + [m for img in images for sub in ("classes", "segments")
                         for m in (Path(root) / sub).glob(f"{img.stem}.*")]

    def evaluate(self, data: list, model=None, split=None, cell_diameter: float | None = None,
                 device: str = "cpu", grid: Path | None = None, method: str | None = None, params=None) -> dict:
        """Pixel accuracy, per-class IoU and mean IoU (summed over all images) on seed-002 folders
        (``images/`` + ``segments/`` colour maps or ``classes/`` index maps); ``grid``: the
        confusion matrix PNG."""
        if method:
            raise HemasegInputError(method, "smear10 has no classical methods")
        model = model or self.default_model
        k = len(CLASSES)
        failed: list[dict] = []
        unscorable: list[dict] = []  # images without their map: said unless the split leaves them out anyway
        pairs = find_each(data, lambda d: find_smear_pairs(d, unscorable), failed)
        if split:  # only the images of the split.json's 'val' list (it was ignored)
            pairs = select_split(pairs, split, path=lambda pair: pair[0], failed=unscorable)
        failed += unscorable
        run = runner(self, model, cell_diameter, device, params=params)
        cm = np.zeros((k, k), np.int64)
        rows = []
        for image_path, label_path in track(pairs, "evaluate"):
            try:  # a bad pair is listed and skipped: the others are still scored
                image, target = read_image(image_path), read_smear_label(label_path, PALETTE)
                if target.shape != image.shape[:2]:
                    raise HemasegInputError(label_path, f"map size {target.shape[1]}x{target.shape[0]} does not "
                                                        f"match image size {image.shape[1]}x{image.shape[0]}")
                if target.size and int(target.max()) >= k:
                    raise HemasegInputError(label_path, f"holds class {int(target.max())}; the map has classes "
                                                        f"0-{k - 1}")
            except HemasegInputError as exc:
                failed.append({"image": str(exc.path), "reason": exc.reason})
                continue
            t0 = time.perf_counter()
            seg = run(image)
            one = confusion_matrix(target.ravel(), seg.classes.ravel(), k)
            cm += one
            rows.append({"image": str(image_path), "seconds": time.perf_counter() - t0,
                         "pixel_accuracy": float(np.trace(one) / max(one.sum(), 1)),
                         "cell_diameter": seg.cell_diameter, "scale": seg.scale})
        if not rows:
            raise nothing_scored(data, failed)
        scores = semantic_scores(cm, list(CLASSES))
        if grid is not None:
            plot_confusion(cm, list(CLASSES), grid, f"smear10 pixels, row %: {len(rows)} images, pixel accuracy "
                           f"{scores['pixel_accuracy']:.3f}, mean IoU {scores['mean_iou']:.3f}", percent=True)
        return {"task": "smear10", "model": str(model), "n_images": len(rows), "mean": scores,
                "confusion": cm.tolist(), "per_image": rows, "failed": failed}

    def table(self, res: dict) -> list[str]:
        m = res["mean"]
        lines = [f"{'class':<16} {'IoU':>7}"]
        for name, v in m["iou"].items():
            lines.append(f"{name:<16} {'-' if v is None else f'{v:.4f}':>7}")
        lines.append(f"pixel accuracy {m['pixel_accuracy']:.4f}, mean IoU {m['mean_iou']:.4f} ({res['n_images']} images)")
        return lines


SMEAR10 = register_task(Smear10Task())
