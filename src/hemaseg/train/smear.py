"""Training data for the 10-class smear map: synthetic smears composed on the fly (seed 002)."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from hemaseg.data.synth import CellBank, SynthConfig, compose, image_seed, write_smear
from hemaseg.data.transforms import colour_augs, normalize, optics_augs, percentile_range
from hemaseg.data.weights import class_balance_weights
from hemaseg.io.datasets import read_smear_pairs
from hemaseg.tasks import SMEAR10

log = logging.getLogger(__name__)

N_VAL = 100  # synthetic validation images, made once from the validation crops and kept on disk


def smear_transform(augment: bool = True):
    """Augmentation on top of the composer's own variety: flips, 90° turns, stain/colour, optics."""
    import albumentations as A

    geo = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    return A.Compose(geo + (colour_augs() + optics_augs() if augment else []))


class SynthDataset(torch.utils.data.Dataset):
    """Synthetic smears drawn from a cell bank; image ``i`` of epoch ``e`` is the same on every run."""

    def __init__(self, bank: CellBank, synth: SynthConfig, length: int, seed: int, transform, low: float,
                 high: float, balance: bool = True) -> None:
        self.bank, self.synth, self.length, self.seed = bank, synth, length, seed
        self.transform, self.low, self.high, self.balance = transform, low, high, balance
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = image_seed(self.seed * 100_003 + self.epoch, "train", i)
        smear = compose(self.bank, self.synth, rng)
        self.transform.set_random_seed(int(rng.integers(2**31)))
        out = self.transform(image=smear.image, mask=smear.classes)
        x = normalize(out["image"], prange=percentile_range(out["image"], self.low, self.high))
        sample = (torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(out["mask"].astype(np.int64)))
        if self.balance:
            sample += (torch.from_numpy(class_balance_weights(out["mask"], len(SMEAR10.classes))),)
        return sample


def load_bank(data: list[str], part: str, seed: int, cache: Path | None = None) -> CellBank:
    """The cell bank of ``part`` from the data folders (none: procedural only), cached as .npz."""
    if cache is not None and cache.exists():
        return CellBank.load(cache)
    bank = CellBank.procedural()
    for root in data:
        more = CellBank.from_data(root, part, seed, progress=True)
        for k, crops in more.crops.items():
            for c in crops:
                bank.add(k, c)
        bank.backgrounds += more.backgrounds
    if cache is not None:
        bank.save(cache)
    return bank


def smear10_data(cfg, run: Path, state: dict) -> tuple:
    """Training dataset (on the fly), validation items (made once, on disk) and model-card fields."""
    synth = SynthConfig(**{**asdict(SynthConfig()), **state.get("synth", {})})
    state["synth"] = asdict(synth)
    train_bank = load_bank(cfg.data, "train", cfg.seed, run / "bank_train.npz")
    val_dir = run / "val"
    if not (val_dir / "segments").exists():
        val_bank = load_bank(cfg.data, "val", cfg.seed)
        for i in range(N_VAL):
            write_smear(val_dir, f"val_{i:04d}", compose(val_bank, synth, image_seed(cfg.seed, "val", i)))
    val_items = read_smear_pairs(val_dir)
    transform = smear_transform(cfg.augment)
    dataset = SynthDataset(train_bank, synth, cfg.samples_per_epoch or 512, cfg.seed, transform, cfg.norm_low,
                           cfg.norm_high, balance=cfg.class_balance)
    card = {
        "cell_diameter": float(np.mean(synth.rbc_diameter)),  # red-cell diameter the model was trained around
        "diameter_range": [float(v) for v in synth.rbc_diameter],
        "palette": {str(k): list(v) for k, v in SMEAR10.colors.items()},
        "training": {"data": cfg.data, "synthetic": True, "crops": train_bank.count(), "n_val": len(val_items),
                     "seed": cfg.seed, "augment": cfg.augment, "scale_range": [1.0, 1.0], "synth": asdict(synth),
                     "class_balance": cfg.class_balance, "schedule": cfg.schedule, "split": str(val_dir)},
    }
    return dataset, val_items, card
