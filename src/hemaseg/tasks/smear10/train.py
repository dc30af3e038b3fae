"""Training data for the 10-class smear map: synthetic smears composed on the fly (seed 002)."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hemaseg.data.transforms import colour_augs, normalize, optics_augs, percentile_range
from hemaseg.data.weights import class_balance_weights
from hemaseg.io.datasets import read_smear_pairs
from hemaseg.models.registry import load_card
from hemaseg.tasks.smear10.classes import CLASSES, PALETTE
from hemaseg.tasks.smear10.synth import CellBank, SynthConfig, compose, crop_key, image_seed, write_smear

# torch is imported inside the functions that need it: importing hemaseg does not import it.

log = logging.getLogger(__name__)

N_VAL = 100  # synthetic validation images, made once from the validation crops and kept on disk


def smear_transform(augment: bool = True):
    """Augmentation on top of the composer's own variety: flips, 90° turns, stain/colour, optics."""
    import albumentations as A

    geo = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
    return A.Compose(geo + (colour_augs() + optics_augs() if augment else []))


class SynthDataset:
    """Synthetic smears drawn from a cell bank; image ``i`` of epoch ``e`` of stream ``s`` is the
    same on every run (a fine-tune draws from another stream than its start model: new smears).

    With ``reuse`` > 1 each composed smear serves that many consecutive epochs, re-augmented each
    time: :meth:`prepare` composes a block's smears once (composing is ~70 % of a sample's cost,
    so the network gets more steps in the same time).
    """

    def __init__(self, bank: CellBank, synth: SynthConfig, length: int, seed: int, transform, low: float,
                 high: float, balance: bool = True, merge_wbc: bool = False, stream: int = 0, reuse: int = 1) -> None:
        self.bank, self.synth, self.length, self.seed, self.stream = bank, synth, length, seed, stream
        self.transform, self.low, self.high, self.balance = transform, low, high, balance
        self.merge_wbc, self.reuse = merge_wbc, max(1, int(reuse))
        self.epoch = 0
        self.pool: list[tuple[np.ndarray, np.ndarray]] = []
        self.pool_block = -1

    def __len__(self) -> int:
        return self.length

    def _rng(self, i: int, epoch: int, part: str = "train") -> np.random.Generator:
        return image_seed(self.seed * 100_003 + epoch + STREAM_STEP * self.stream, part, i)

    @property
    def block(self) -> int:
        """Index of the current epoch's block of ``reuse`` epochs."""
        return self.epoch // self.reuse

    def compose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, classes) of smear ``i`` of the current epoch's block."""
        smear = compose(self.bank, self.synth, self._rng(i, self.block * self.reuse))
        return smear.image, smear.classes

    def prepare(self, workers: int = 0) -> None:
        """Compose the smears of the current epoch's block once (no-op without reuse or when done)."""
        import torch

        block = self.block
        if self.reuse == 1 or block == self.pool_block:
            return
        self.pool = []  # the old block's smears are not copied into the composing workers
        loader = torch.utils.data.DataLoader(_Composer(self), batch_size=None, num_workers=workers, collate_fn=_keep)
        self.pool, self.pool_block = list(loader), block

    def __getitem__(self, i: int):
        import torch

        if self.reuse > 1:
            image, classes = self.pool[i] if self.pool_block == self.block else self.compose(i)
            rng = self._rng(i, self.epoch, "augment")
        else:  # as before reuse existed: one stream draws both the smear and its augmentation
            rng = self._rng(i, self.epoch)
            smear = compose(self.bank, self.synth, rng)
            image, classes = smear.image, smear.classes
        self.transform.set_random_seed(int(rng.integers(2**31)))
        classes = merge_wbc_types(classes) if self.merge_wbc else classes
        out = self.transform(image=image, mask=classes)
        x = normalize(out["image"], prange=percentile_range(out["image"], self.low, self.high))
        sample = (torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(out["mask"].astype(np.int64)))
        if self.balance:
            sample += (torch.from_numpy(class_balance_weights(out["mask"], len(CLASSES))),)
        return sample


class _Composer:
    """The bare composed smears of a :class:`SynthDataset` block (what :meth:`SynthDataset.prepare` keeps)."""

    def __init__(self, parent: SynthDataset) -> None:
        self.parent = parent

    def __len__(self) -> int:
        return len(self.parent)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.parent.compose(i)


def _keep(sample):
    return sample


WBC_AS_ONE = 3  # with merge_wbc, every WBC pixel is learnt as this index (the classifier names the type)


def merge_wbc_types(classes: np.ndarray) -> np.ndarray:
    """smear10 class map with the five WBC types (1-5) folded into :data:`WBC_AS_ONE`."""
    out = classes.copy()
    out[(classes >= 1) & (classes <= 5)] = WBC_AS_ONE
    return out


def held_out_crops(split_file: str | Path | None) -> set[str] | None:
    """``<folder>/<file>`` names of the crops in a split JSON's "val" list (e.g. benchmarks/splits/wbc-type.json)."""
    if not split_file:
        return None
    import json

    d = json.loads(Path(split_file).read_text())
    return {crop_key(e[0] if isinstance(e, list) else e) for e in d["val"]}


def load_bank(data: list[str], part: str, seed: int, cache: Path | None = None,
              held_out: set[str] | None = None) -> CellBank:
    """The cell bank of ``part`` from the data folders (none: procedural only), cached as .npz."""
    if cache is not None and cache.exists():
        return CellBank.load(cache)
    bank = CellBank.procedural()
    for root in data:
        more = CellBank.from_data(root, part, seed, progress=True, held_out=held_out)
        for k, crops in more.crops.items():
            for c in crops:
                bank.add(k, c)
        bank.backgrounds += more.backgrounds
    if cache is not None:
        bank.save(cache)
    return bank


STREAM_STEP = 10_007  # epochs between two streams of training smears


def training_stream(init: str) -> int:
    """Stream of training smears for a run started from model ``init`` (none: 0): one after the
    start model's, so a fine-tune sees smears its start model never did."""
    if not init:
        return 0

    return int(load_card(init)[1].get("training", {}).get("stream", 0)) + 1


def smear10_data(cfg, run: Path, state: dict) -> tuple:
    """Training dataset (on the fly), validation items (made once, on disk) and model-card fields."""
    synth = SynthConfig(**{**asdict(SynthConfig()), **state.get("synth", {})})
    state["synth"] = asdict(synth)
    held_out = held_out_crops(cfg.held_out)
    train_bank = load_bank(cfg.data, "train", cfg.seed, run / "bank_train.npz", held_out)
    val_dir = run / "val"
    if not (val_dir / "segments").exists():
        val_bank = load_bank(cfg.data, "val", cfg.seed, held_out=held_out)
        for i in range(N_VAL):
            write_smear(val_dir, f"val_{i:04d}", compose(val_bank, synth, image_seed(cfg.seed, "val", i)))
    val_items = read_smear_pairs(val_dir, PALETTE)
    if cfg.merge_wbc:
        val_items = [(img, merge_wbc_types(c)) for img, c in val_items]
    transform = smear_transform(cfg.augment)
    if "stream" not in state:  # decided once: a resumed run draws the same smears even if its start model changed
        state["stream"] = training_stream(cfg.init)
    dataset = SynthDataset(train_bank, synth, cfg.samples_per_epoch or 512, cfg.seed, transform, cfg.norm_low,
                           cfg.norm_high, balance=cfg.class_balance, merge_wbc=cfg.merge_wbc, stream=state["stream"],
                           reuse=cfg.reuse)
    card = {
        "cell_diameter": float(np.mean(synth.rbc_diameter)),  # red-cell diameter the model was trained around
        "diameter_range": [float(v) for v in synth.rbc_diameter],
        "palette": {str(k): list(v) for k, v in PALETTE.items()},
        "tta": True,  # segment averages the final pass over flips (on the validation smears: +0.013 mean IoU)
        "training": {"data": cfg.data, "synthetic": True, "crops": train_bank.count(), "n_val": len(val_items),
                     "seed": cfg.seed, "augment": cfg.augment, "scale_range": [1.0, 1.0], "synth": asdict(synth),
                     "class_balance": cfg.class_balance, "schedule": cfg.schedule, "split": str(val_dir),
                     "held_out_crops": cfg.held_out, "merge_wbc": cfg.merge_wbc, "stream": dataset.stream,
                     "reuse": dataset.reuse},
    }
    if cfg.merge_wbc:
        card["wbc_typing"] = "smear10-type"  # names each WBC object at inference (trained on real + composited crops)
    return dataset, val_items, card
