"""Training of the Mask R-CNN cells backend (``hemaseg train cells --arch maskrcnn``): the same
pseudo-masks, split, scale and validation metric as the U-Net cells model, its own step."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.data.transforms import colour_augs, optics_augs
from hemaseg.engine.train import (
    SegDataset,
    TrainConfig,
    _seed_all,
    begin_epoch,
    end_epoch,
    epochs_to_run,
    finish_run,
    has_checkpoint,
    load_last,
    object_diameters,
    seed_worker,
    start_or_resume,
    versions,
)
from hemaseg.models.registry import create_model, load_model, load_weights
from hemaseg.progress import track
from hemaseg.tasks.cells.infer import detect, to_input
from hemaseg.tasks.cells.targets import CLASSES, LABEL_VALUES, UNKNOWN
from hemaseg.tasks.cells.train import box_annotations, box_scales, prepare, score_instances, training_photos, val_items

# torch is imported inside the functions that need it: importing hemaseg does not import it.

log = logging.getLogger(__name__)


def to_target(encoded: np.ndarray, min_area: int = 6) -> dict:
    """Encoded instance map -> torchvision target (boxes x1y1x2y2, labels 1-3, masks (N, H, W) uint8)."""
    import torch

    enc = np.where(encoded == UNKNOWN, 0, encoded)
    ids = np.unique(enc[enc > 0])
    boxes, labels, masks = [], [], []
    for v in ids:
        m = enc == v
        if m.sum() < min_area:
            continue
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(int(v & 3))
        masks.append(m)
    h, w = encoded.shape
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, h, w), torch.uint8)}


def evaluate_detector(model, items: list, box_scale: dict | None = None) -> dict[str, float]:
    """VOC AP@0.5 per category and their mean of the detector's cells as the pipeline makes them
    (:func:`detect`: masks, WBC de-duplication; boxes from the masks grown by ``box_scale``)."""
    return score_instances(items, lambda img: detect(model, img), box_scale)


class DetectionDataset(SegDataset):
    """Augmented photos (flips, 90° turns, scale, stain/colour) with their instance targets
    (the detector normalises its input itself)."""

    def __getitem__(self, i: int):
        image, enc = self.items[i % len(self.items)]
        out = self.transform(image=image, mask=enc)
        return to_input(out["image"]), to_target(out["mask"])


def _as_lists(batch: list) -> tuple:
    """A batch of (image, target) pairs as (images, targets): torchvision's detection models take lists."""
    return tuple(zip(*batch))


def fit_maskrcnn(cfg, run: str | Path, resume: bool = False, progress: bool = True,
                 max_epochs_this_call: int | None = None) -> dict:
    """Train (or resume) the Mask R-CNN backend in ``run``; the same files as :func:`hemaseg.engine.train.fit`."""
    import albumentations as A
    import cv2
    import torch

    run = Path(run)
    cfg, state = start_or_resume(cfg, TrainConfig, run, resume, "cells")
    unusable: list[dict] = []
    train, val = prepare(cfg.data, run, cfg.seed, cfg.val_fraction, tuple(cfg.leave_out), unusable)
    if unusable:  # `hemaseg train` ends with exit 1, as the U-Net's run does
        state["left_out"] = unusable
    boxes = box_annotations(cfg.data)
    train_items, input_scale = training_photos(train, boxes, mark_unknown=False)
    val_set = val_items(boxes, val)
    diams = object_diameters([np.where((enc & 3) == 1, enc >> 2, 0) for _, enc in train_items])

    _seed_all(cfg.seed)
    model = create_model(cfg.arch, classes=len(CATEGORIES) + 1, **cfg.arch_kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * 0.01)
    if resume and has_checkpoint(run):
        load_last(run, model, optimizer, scheduler)
    elif cfg.init:  # fine-tuning a detector (e.g. the bundled one) on a lab's photos (also a run killed before
        # its first checkpoint)
        start, _ = load_model(cfg.init)
        load_weights(model, start.state_dict(), cfg.init, f"{cfg.arch} {cfg.arch_kwargs}")
    geo = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    if cfg.augment:
        geo.append(A.Affine(scale=(cfg.scale_min, cfg.scale_max), rotate=(-180, 180), border_mode=cv2.BORDER_CONSTANT,
                            fill=0, fill_mask=0, p=0.7))
    transform = A.Compose(geo + (colour_augs() + optics_augs() if cfg.augment else []))
    dataset = DetectionDataset(train_items, transform, cfg.norm_low, cfg.norm_high, cfg.samples_per_epoch)
    card = {
        "name": "cells-maskrcnn", "task": "cells", "classes": list(CLASSES), "label_values": list(LABEL_VALUES),
        "architecture": {"name": cfg.arch, "kwargs": {"classes": len(CATEGORIES) + 1, **cfg.arch_kwargs}},
        "normalization": {"type": "unit", "low": cfg.norm_low, "high": cfg.norm_high},
        "cell_diameter": float(np.median(diams)) if len(diams) else 34.0,
        "diameter_range": [float(v) for v in np.percentile(diams, [5, 95])] if len(diams) else [],
        "input_scale": input_scale,
        "box_scale": box_scales(boxes, train),
        "training": {"data": cfg.data, "n_train": len(train_items), "n_val": len(val_set), "seed": cfg.seed,
                     "augment": cfg.augment, "scale_range": [cfg.scale_min, cfg.scale_max],
                     "pseudo_masks": str(run / "pseudo_masks.coco.json"), "split": str((run / "split.json").resolve())},
        "versions": versions(),
    }
    for epoch in epochs_to_run(state, cfg.epochs, max_epochs_this_call):
        t0 = time.time()
        begin_epoch(cfg.seed, epoch, transform)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                             collate_fn=_as_lists, num_workers=cfg.workers, worker_init_fn=seed_worker)
        model.train()
        losses = []
        bar = track(loader, f"epoch {epoch}/{cfg.epochs}", leave=False) if progress else loader
        for xs, ys in bar:
            loss = sum(model(list(xs), list(ys)).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            losses.append(loss.item())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val_scores = evaluate_detector(model, val_set, card["box_scale"]) if val_set else {}
        metric = val_scores.get("map50", -float(np.mean(losses)))
        end_epoch(run, state, cfg, epoch, lr, losses, val_scores, metric, time.time() - t0, model, optimizer, scheduler,
                  card)
    finish_run(run, state, cfg, model, card)
    return state
