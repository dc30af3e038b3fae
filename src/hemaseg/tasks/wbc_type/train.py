"""Training of WBC type classifiers on cell-normalised crops: stratified seeded splits per data
set, class-balanced sampling, heavy stain/background augmentation, optional DANN (gradient
reversal towards unlabelled target images), checkpoints with a JSON state, exact resume,
curves and confusion-matrix PNGs, a model card."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hemaseg.data.transforms import classify_transform, normalize, replace_background
from hemaseg.engine.plots import plot_confusion, plot_curves
from hemaseg.engine.train import _seed_all, begin_epoch, epochs_to_run, start_or_resume, versions
from hemaseg.errors import HemasegInputError
from hemaseg.io.datasets import find_labelled_cells
from hemaseg.io.images import list_images, read_image
from hemaseg.io.writers import atomic_path, write_json
from hemaseg.metrics import classification_report
from hemaseg.models.registry import create_model, save_model
from hemaseg.progress import track
from hemaseg.tasks.wbc_type.crops import CLASSES, cell_crop, group_probs

log = logging.getLogger(__name__)
TYPES = list(CLASSES)


@dataclass
class ClassifyConfig:
    """Everything a classification run needs; stored in state.json for ``--resume``."""

    data: list[str] = field(default_factory=list)  # labelled sets (ImageFolder trees or wbc-seg + class CSV)
    target_images: str | list[str] | None = None  # unlabelled images (folder or files) of the lab to adapt to (DANN)
    backbone: str = "resnet10-half"
    norm: str = "group"
    size: int = 80
    epochs: int = 50
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    augment: bool = True
    background_p: float = 0.3  # probability of a new background behind the cell
    normalise_cells: bool = True  # centre and rescale each crop to its WBC
    dann_weight: float = 0.5
    patience: int = 30
    samples_per_epoch: int = 1536  # class-balanced draws per epoch (small sets need many steps)
    cache: str | None = None  # folder for normalised crops (default RUN/crops)


def split_labelled(items: list[tuple[Path, str]], val_fraction: float, seed: int):
    """Seeded split stratified by class: (train, val) lists of (path, class)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in sorted({c for _, c in items}):
        group = sorted((p for p, k in items if k == c), key=str)
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * val_fraction)) if len(group) > 2 else 0
        val += [(group[i], c) for i in order[:n_val]]
        train += [(group[i], c) for i in order[n_val:]]
    return sorted(train, key=lambda t: str(t[0])), sorted(val, key=lambda t: str(t[0]))


def _cache_key(path: Path, size: int, normalise: bool) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|{normalise}|v1".encode()).hexdigest()[:20]


def prepare_crops(paths: list[Path], size: int, normalise: bool, cache: Path,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cell-normalised crops (N, S, S, 3) uint8 and their cell masks (N, S, S) bool, cached on disk."""
    import cv2


    cache.mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for p in (track(paths, "normalise crops", leave=False) if progress else paths):
        f = cache / f"{_cache_key(Path(p), size, normalise)}.npz"
        if f.exists():
            d = np.load(f)
            images.append(d["image"])
            masks.append(d["mask"])
            continue
        image = read_image(p)
        if normalise:
            c = cell_crop(image, size)
            im, m = c.image, c.mask
        else:
            im, m = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), np.zeros((size, size), bool)
        with atomic_path(f) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, image=im, mask=m)
        images.append(im)
        masks.append(m)
    return np.stack(images), np.stack(masks)


class CropDataset(torch.utils.data.Dataset):
    """Cell crops + labels (-1 for unlabelled), augmented and normalised on access."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, transform, background_p: float):
        self.images, self.masks, self.labels = images, masks, labels
        self.transform, self.background_p = transform, background_p

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):

        image = self.images[i]
        if self.background_p > 0 and self.masks[i].any():
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
            if rng.random() < self.background_p:
                image = replace_background(image, self.masks[i], rng)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        x = normalize(image)
        return torch.from_numpy(x).permute(2, 0, 1).contiguous(), int(self.labels[i])


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 128, tta: bool = True) -> np.ndarray:
    """Softmax probabilities (N, K) of uint8 crops (N, S, S, 3); ``tta`` averages the four 90° rotations
    (a cell has no orientation, so this is free accuracy)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([normalize(im) for im in images[i:i + batch_size]])).permute(0, 3, 1, 2).contiguous()
        views = [torch.rot90(x, k, (2, 3)) for k in range(4)] if tta else [x]
        out.append(torch.stack([model(v).softmax(1) for v in views]).mean(0).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(TYPES)), np.float32)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """5-class accuracy and macro-F1, 4-class accuracy (seed 004's types), 2-class (mono/poly) accuracy."""
    if len(labels) == 0:
        return {}
    r5 = classification_report(labels, probs.argmax(1), TYPES)
    four = labels != TYPES.index("basophil")
    names4, p4 = group_probs(probs[four], TYPES, 2)
    t4 = np.array([names4.index(TYPES[t].upper()) for t in labels[four]])
    names2, p2 = group_probs(probs, TYPES, 1)
    mono = {"monocyte", "lymphocyte"}
    t2 = np.array([0 if TYPES[t] in mono else 1 for t in labels])
    return {"accuracy": r5["accuracy"], "macro_f1": r5["macro_f1"],
            "accuracy_4": float((p4.argmax(1) == t4).mean()) if four.any() else 0.0,
            "accuracy_2": float((p2.argmax(1) == t2).mean())}


def load_split(cfg: ClassifyConfig, run: Path) -> tuple[list, list]:
    """The run's split (written on first use): every labelled set split on its own, seeded and stratified."""
    path = run / "split.json"
    if path.exists():
        d = json.loads(path.read_text())
        return [(Path(p), c) for p, c in d["train"]], [(Path(p), c) for p, c in d["val"]]
    train, val = [], []
    for root in cfg.data:
        items = find_labelled_cells(root)
        if not items:
            raise HemasegInputError(root, "no labelled cell images (ImageFolder tree or wbc-seg class CSV)")
        unknown = sorted({c for _, c in items} - set(TYPES))
        if unknown:
            raise HemasegInputError(root, f"unknown WBC types {unknown}; known: {TYPES}")
        tr, va = split_labelled(items, cfg.val_fraction, cfg.seed)
        train += tr
        val += va
    write_json(path, {"seed": cfg.seed, "train": [[str(p), c] for p, c in train], "val": [[str(p), c] for p, c in val]})
    return train, val


def fit_classifier(cfg: ClassifyConfig | None, run: str | Path, resume: bool = False, progress: bool = True,
                   max_epochs_this_call: int | None = None) -> dict:
    """Train (or resume) a WBC type classifier in folder ``run``; returns the final state."""
    run = Path(run)
    state_path = run / "state.json"
    cfg, state = start_or_resume(cfg, ClassifyConfig, run, resume)
    train, val = load_split(cfg, run)
    cache = Path(cfg.cache) if cfg.cache else run / "crops"
    tr_img, tr_mask = prepare_crops([p for p, _ in train], cfg.size, cfg.normalise_cells, cache, progress)
    tr_lab = np.array([TYPES.index(c) for _, c in train])
    if val:
        va_img, _ = prepare_crops([p for p, _ in val], cfg.size, cfg.normalise_cells, cache, progress)
    else:
        va_img = np.zeros((0, cfg.size, cfg.size, 3), np.uint8)
    va_lab = np.array([TYPES.index(c) for _, c in val], int)
    target = None
    if cfg.target_images:
        tpaths = list_images(cfg.target_images, recursive=True)
        if not tpaths:
            raise HemasegInputError(cfg.target_images, "no target images")
        t_img, t_mask = prepare_crops(tpaths, cfg.size, cfg.normalise_cells, cache, progress)
        target = CropDataset(t_img, t_mask, -np.ones(len(t_img), int), None, cfg.background_p)

    _seed_all(cfg.seed)
    arch_kwargs = {"backbone": cfg.backbone, "classes": len(TYPES), "dropout": 0.2, "domain_head": True,
                   "norm": cfg.norm}
    model = create_model("wbc-classifier", **arch_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs, pct_start=0.1)
    if resume and (run / "last.safetensors").exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(run / "last.safetensors")))
        opt_state = torch.load(run / "last.optim.pt", weights_only=False)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
    transform = classify_transform(cfg.augment)
    if target is not None:
        target.transform = transform
    dataset = CropDataset(tr_img, tr_mask, tr_lab, transform, cfg.background_p if cfg.augment else 0.0)
    counts = np.bincount(tr_lab, minlength=len(TYPES)).astype(float)
    # Class-balanced draws, but a class of a handful of crops (one basophil) is not drawn as
    # often as the others: it would be memorised, not learned.
    sample_w = 1.0 / np.maximum(counts[tr_lab], 0.1 * counts.max())
    card = {
        "name": f"wbc-type-{cfg.backbone}",
        "task": "wbc-type",
        "classes": TYPES,
        "architecture": {"name": "wbc-classifier", "kwargs": arch_kwargs},
        "normalization": {"type": "percentile", "low": 1.0, "high": 99.0, "per_channel": True},
        "input_size": cfg.size,
        "cell_normalised": cfg.normalise_cells,
        "training": {"data": cfg.data, "target_images": cfg.target_images if not isinstance(cfg.target_images, list)
                     else f"{len(cfg.target_images)} images", "n_train": len(train), "n_val": len(val),
                     "class_counts": dict(zip(TYPES, counts.astype(int).tolist())), "seed": cfg.seed,
                     "augment": cfg.augment, "split": str(run / "split.json")},
        "versions": versions(),
    }
    for epoch in epochs_to_run(state, cfg.epochs, max_epochs_this_call):
        t0 = time.time()
        gen = torch.Generator().manual_seed(begin_epoch(cfg.seed, epoch, transform))
        n_draws = cfg.samples_per_epoch or len(dataset)
        sampler = torch.utils.data.WeightedRandomSampler(sample_w, n_draws, replacement=True, generator=gen)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                             drop_last=n_draws > cfg.batch_size)
        t_iter = iter(torch.utils.data.DataLoader(target, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                                  drop_last=len(target) > cfg.batch_size)) if target is not None else None
        p = (epoch - 1) / max(cfg.epochs - 1, 1)
        lambd = 2.0 / (1.0 + np.exp(-10 * p)) - 1.0  # DANN schedule: 0 -> 1 over training
        model.train()
        losses, dlosses = [], []
        for x, y in (track(loader, f"epoch {epoch}/{cfg.epochs}", leave=False) if progress else loader):
            if t_iter is not None:
                try:
                    xt, _ = next(t_iter)
                except StopIteration:
                    t_iter = iter(torch.utils.data.DataLoader(target, batch_size=cfg.batch_size, shuffle=True,
                                                              generator=gen, drop_last=len(target) > cfg.batch_size))
                    xt, _ = next(t_iter)
                logits, dom = model.forward_dann(torch.cat([x, xt]), float(lambd))
                dom_y = torch.cat([torch.zeros(len(x)), torch.ones(len(xt))])
                dloss = F.binary_cross_entropy_with_logits(dom, dom_y)
                loss = F.cross_entropy(logits[:len(x)], y, label_smoothing=cfg.label_smoothing) + cfg.dann_weight * dloss
                dlosses.append(dloss.item())
            else:
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val_scores = scores(predict(model, va_img), va_lab) if len(va_lab) else {}
        metric = (val_scores["accuracy"] + val_scores["macro_f1"]) / 2 if val_scores else -float(np.mean(losses))
        entry = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), **val_scores, "metric": metric,
                 "seconds": round(time.time() - t0, 2)}
        if dlosses:
            entry["domain_loss"] = float(np.mean(dlosses))
        state["history"].append(entry)
        state["epoch"] = epoch
        card_now = {**card, "metrics": {"val": val_scores, "epoch": epoch}}
        if metric > state["best_metric"]:
            state["best_metric"], state["best_epoch"] = metric, epoch
            save_model(model, run / "best", card_now)
        if epoch - state["best_epoch"] >= cfg.patience:
            state["stopped_early"] = True
        save_model(model, run / "last", card_now)
        with atomic_path(run / "last.optim.pt") as tmp:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp)
        state["versions"] = versions()
        write_json(state_path, state)
        plot_curves(state["history"], run / "curves.png")
        log.info(f"epoch {epoch}/{cfg.epochs} loss {entry['train_loss']:.4f} "
                 + " ".join(f"{k} {v:.3f}" for k, v in val_scores.items()) + f" lr {lr:.2e} {entry['seconds']:.0f}s")

    if state["epoch"] >= cfg.epochs or state["stopped_early"]:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(run / "best.safetensors")))
        best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
        val_scores = {k: best[k] for k in ("accuracy", "macro_f1", "accuracy_4", "accuracy_2") if k in best}
        save_model(model, run / "model", {**card, "metrics": {"val": val_scores, "epoch": state["best_epoch"]}})
        if len(va_lab):
            rep = classification_report(va_lab, predict(model, va_img).argmax(1), TYPES)
            plot_confusion(np.array(rep["confusion"]), TYPES, run / "confusion.png",
                           f"validation, epoch {state['best_epoch']}: acc {rep['accuracy']:.3f}, macro-F1 {rep['macro_f1']:.3f}")
            state["val_report"] = rep
        state["finished"] = True
        write_json(state_path, state)
    return state
