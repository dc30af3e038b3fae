"""Training data for the 10-class smear map: synthetic smears composed on the fly (seed 002)."""
from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from hemaseg.core.vocabulary import category_of
from hemaseg.data.transforms import colour_augs, normalize, optics_augs, percentile_range, seed_transform
from hemaseg.data.weights import class_balance_weights
from hemaseg.engine.losses import IGNORE
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.annotations import find_yolo, read_yolo_labels, yolo_names
from hemaseg.io.datasets import read_smear_pairs
from hemaseg.io.images import read_image
from hemaseg.models.registry import load_card
from hemaseg.tasks.smear10.classes import CLASSES, PALETTE
from hemaseg.tasks.smear10.synth import CellBank, SynthConfig, compose, crop_key, image_seed, write_smear

# torch is imported inside the functions that need it: importing hemaseg does not import it.

log = logging.getLogger(__name__)

N_VAL = 100  # synthetic validation images, made once from the validation crops and kept on disk
HEALTHY = CLASSES.index("healthy rbc")
REAL_CORE = 0.8  # a real field's box: the ellipse inscribed in it, shrunk to this share, is surely that cell
REAL_MARGIN = 0.15  # ... grown by this share of its size on each side, it holds all of the cell
THROMBOCYTE = CLASSES.index("thrombocyte")
PLATELET_MAX = 0.6  # a platelet box under this share of a red cell's box side is one platelet (2-3 µm of 7.5)


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
                 high: float, balance: bool = True, merge_wbc: bool = False, stream: int = 0, reuse: int = 1,
                 real: RealFields | None = None, real_share: float = 0.0) -> None:
        self.bank, self.synth, self.length, self.seed, self.stream = bank, synth, length, seed, stream
        self.real, self.real_share = real, real_share if real is not None and len(real) else 0.0
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
        # its own generator: an iterator draws its workers' base seed from it, and from the global torch stream
        # that would shift the epoch's shuffle and dropout in a run resumed mid-block (which composes again)
        loader = torch.utils.data.DataLoader(_Composer(self), batch_size=None, num_workers=workers, collate_fn=_keep,
                                             generator=torch.Generator().manual_seed(block))
        self.pool, self.pool_block = list(loader), block

    def __getitem__(self, i: int):
        import torch

        if self.real_share and self._rng(i, self.epoch, "real").random() < self.real_share:
            rng = self._rng(i, self.epoch, "real field")
            image, classes = self.real.sample(rng)
        elif self.reuse > 1:
            image, classes = self.pool[i] if self.pool_block == self.block else self.compose(i)
            rng = self._rng(i, self.epoch, "augment")
        else:  # as before reuse existed: one stream draws both the smear and its augmentation
            rng = self._rng(i, self.epoch)
            smear = compose(self.bank, self.synth, rng)
            image, classes = smear.image, smear.classes
        seed_transform(self.transform, int(rng.integers(2**31)))
        classes = merge_wbc_types(classes) if self.merge_wbc else classes  # real fields' are merged already
        out = self.transform(image=image, mask=classes)
        x = normalize(out["image"], prange=percentile_range(out["image"], self.low, self.high))
        sample = (torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(out["mask"].astype(np.int64)))
        if self.balance:
            sample += (torch.from_numpy(class_balance_weights(out["mask"], len(CLASSES))),)
        return sample


def real_field_target(shape: tuple[int, int], boxes: list[dict], merge_wbc: bool = True) -> np.ndarray:
    """(H, W) uint8 partial smear10 target of a real field whose every cell is boxed (TXL-PBC).

    The field comes from a slide without malaria: every red cell is healthy. The core of each
    red-cell box (:data:`REAL_CORE`) is ``healthy rbc``, the core of each WBC box the merged WBC
    class with ``merge_wbc`` (the type is not known per pixel), of each platelet box smaller than
    :data:`PLATELET_MAX` red cells ``thrombocyte`` (a larger one may be a clump), pixels beyond
    every box grown by :data:`REAL_MARGIN` are background, and the rest ``IGNORE`` (255): the
    loss learns from a real photo only what its boxes say for sure. Boxes are ``bounding_box``
    records with a ``category`` (rbc, wbc, platelet).

    >>> box = lambda c, x1, y1, x2, y2: {"category": c, "bounding_box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}
    >>> t = real_field_target((60, 60), [box("rbc", 0, 0, 20, 20), box("wbc", 30, 30, 60, 60),
    ...                                  box("platelet", 2, 40, 8, 46)])
    >>> int(t[10, 10]), int(t[45, 45]), int(t[0, 59]), int(t[1, 1]), int(t[10, 21]), int(t[43, 5])
    (9, 3, 0, 255, 255, 6)
    """
    h, w = shape
    grown = np.zeros(shape, bool)
    target = np.zeros(shape, np.uint8)
    yy, xx = np.ogrid[:h, :w]
    cores = []
    for b in boxes:
        bb = b["bounding_box"]
        bw, bh = bb["x2"] - bb["x1"], bb["y2"] - bb["y1"]
        y1, y2 = max(0, int(bb["y1"] - REAL_MARGIN * bh)), min(h, int(np.ceil(bb["y2"] + REAL_MARGIN * bh)))
        x1, x2 = max(0, int(bb["x1"] - REAL_MARGIN * bw)), min(w, int(np.ceil(bb["x2"] + REAL_MARGIN * bw)))
        grown[y1:y2, x1:x2] = True
        cy, cx = (bb["y1"] + bb["y2"] - 1) / 2, (bb["x1"] + bb["x2"] - 1) / 2
        ry, rx = max(REAL_CORE * bh / 2, 0.5), max(REAL_CORE * bw / 2, 0.5)
        cores.append((b.get("category"), ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0))
    target[grown] = IGNORE
    rbc = [min(b["bounding_box"]["x2"] - b["bounding_box"]["x1"], b["bounding_box"]["y2"] - b["bounding_box"]["y1"])
           for b in boxes if b.get("category") == "rbc"]
    label = {"rbc": HEALTHY, "wbc": WBC_AS_ONE if merge_wbc else IGNORE}
    for cat, core in cores:  # red cells first: a platelet or WBC lying on one takes its pixels back
        if cat == "rbc":
            target[core] = HEALTHY
    for (cat, core), b in zip(cores, boxes):
        if cat == "platelet":  # a single platelet, smaller than a red cell; a larger box may be a clump
            bb = b["bounding_box"]
            small = rbc and max(bb["x2"] - bb["x1"], bb["y2"] - bb["y1"]) < PLATELET_MAX * float(np.median(rbc))
            target[core] = THROMBOCYTE if small else IGNORE
        elif cat != "rbc":
            target[core] = label.get(cat, IGNORE)
    return target


def real_field_sample(image: np.ndarray, boxes: list[dict], rng: np.random.Generator,
                      diameters: tuple[float, float], size: int, merge_wbc: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(image, target) of a ``size`` x ``size`` piece of a boxed real field, rescaled so its red
    cells (their median box side) measure a diameter drawn from ``diameters``, at least the one that
    keeps the field as large as the piece (:func:`real_field_target`; a field still smaller is
    padded, the padding ``IGNORE``).

    >>> box = {"category": "rbc", "bounding_box": {"x1": 0, "y1": 0, "x2": 60, "y2": 60}}
    >>> img, t = real_field_sample(np.zeros((256, 256, 3), np.uint8), [box], np.random.default_rng(0), (20, 44), 224)
    >>> img.shape, t.shape, int(t.max())
    ((224, 224, 3), (224, 224), 255)
    """
    sides = [((b["bounding_box"]["x2"] - b["bounding_box"]["x1"]) + (b["bounding_box"]["y2"] - b["bounding_box"]["y1"]))
             / 2 for b in boxes if b.get("category") == "rbc"]
    h, w = image.shape[:2]
    side = float(np.median(sides)) if sides else float(np.mean(diameters))
    # Diameters that would shrink the field below the piece are not drawn (less padding), if any is left.
    lo = min(max(diameters[0], side * size / min(h, w)), diameters[1])
    f = float(rng.uniform(lo, diameters[1])) / side
    target = real_field_target(image.shape[:2], boxes, merge_wbc)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    target = cv2.resize(target, (nw, nh), interpolation=cv2.INTER_NEAREST)
    ph, pw = max(0, size - nh), max(0, size - nw)
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
        target = cv2.copyMakeBorder(target, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE)
    y = int(rng.integers(0, image.shape[0] - size + 1))
    x = int(rng.integers(0, image.shape[1] - size + 1))
    return np.ascontiguousarray(image[y:y + size, x:x + size]), np.ascontiguousarray(target[y:y + size, x:x + size])


def held_out_photos(data: list[str]) -> set[str]:
    """Stems of the photos a VOC data set among ``data`` holds out (``ImageSets/Main/val.txt`` and
    ``test.txt``): another data set's copies of them stay out of training too."""
    out: set[str] = set()
    for root in data:
        for f in Path(root).rglob("ImageSets/Main/*.txt"):
            if f.stem in ("val", "test"):
                out |= set(f.read_text().split())
    return out


def boxed_fields(data: list[str]) -> list[tuple[Path, list[str], Path]]:
    """(image, class names, label file) of the training fields of every YOLO data set with complete
    boxes among ``data`` (a folder holding ``images/train``, ``labels/train`` and a ``sources.csv``,
    as TXL-PBC; or such a folder directly under a data folder). Fields whose original photo another
    data set holds out (:func:`held_out_photos`) are left out."""
    held = held_out_photos(data)
    out = []
    for root in map(Path, data):
        for d in (root, *sorted(p for p in root.iterdir() if p.is_dir())) if root.is_dir() else ():
            if not ((d / "images" / "train").is_dir() and (d / "sources.csv").is_file()):
                continue
            with open(d / "sources.csv", newline="") as fh:
                original = {r["image"]: Path(r.get("original_name") or "").stem for r in csv.DictReader(fh)}
            names = yolo_names(d)
            out += [(img, names, lab) for img, lab in find_yolo(d / "images" / "train")
                    if lab is not None and original.get(img.name) not in held]
    return out


class RealFields:
    """Boxed real fields drawn by :class:`SynthDataset` beside its composites (:func:`real_field_sample`)."""

    def __init__(self, fields: list[tuple[Path, list[str], Path]], diameters: tuple[float, float], size: int,
                 merge_wbc: bool = True) -> None:
        self.fields, self.diameters, self.size, self.merge_wbc = fields, diameters, size, merge_wbc

    def __len__(self) -> int:
        return len(self.fields)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        path, names, label = self.fields[int(rng.integers(len(self.fields)))]
        image = read_image(path)
        boxes = [{**m, "category": category_of(m["class_name"])}
                 for m in read_yolo_labels(label, names, *image.shape[:2])]
        return real_field_sample(image, boxes, rng, self.diameters, self.size, self.merge_wbc)


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

    try:
        d = json.loads(Path(split_file).read_text())
        return {crop_key(e[0] if isinstance(e, list) else e) for e in d["val"]}
    except FileNotFoundError:
        raise HemasegUsageError("--held-out", f"{split_file}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise HemasegUsageError("--held-out", f"{split_file}: not a split JSON with a 'val' list") from None


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
        bank.left_out += more.left_out
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
    for d in cfg.data or []:  # a missing folder or a file gave an empty bank and trained on procedural cells unsaid
        if not Path(d).is_dir():
            raise HemasegInputError(d, "not a folder")
    fields = boxed_fields(cfg.data or []) if cfg.real_fields > 0 else []
    if cfg.real_fields > 0 and not fields:  # before the banks and the validation set are built (minutes of work)
        raise HemasegInputError(", ".join(cfg.data or []) or "--data", "real_fields needs boxed fields with a "
                                "sources.csv (TXL-PBC) among the data folders")
    train_bank = load_bank(cfg.data, "train", cfg.seed, run / "bank_train.npz", held_out)
    for f in train_bank.left_out:  # (a cached bank on --resume: named when the run began, kept in state)
        log.warning("%s: %s", f["image"], f["reason"])
        if f not in state.setdefault("left_out", []):
            state["left_out"].append(f)
    if cfg.data and not train_bank.count():
        raise HemasegInputError(", ".join(map(str, cfg.data)), "no cells found to compose smears from (read: wbc-seg, "
                                "bccd-wbc, pbc, malaria-crops, txl-pbc and BCCD's Annotations/ folders; a lab's own "
                                "folder of typed crops in <type>/ sub-folders, or of YOLO boxed fields)")
    val_dir = run / "val"
    if val_dir.is_dir() and len(list((val_dir / "segments").glob("*.png"))) < N_VAL:  # an older run's half-set
        shutil.rmtree(val_dir)
    if not val_dir.is_dir():  # written whole, then moved into place: a kill half-way leaves no partial set
        val_bank = load_bank(cfg.data, "val", cfg.seed, held_out=held_out)
        partial = run / "val.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for i in range(N_VAL):
            write_smear(partial, f"val_{i:04d}", compose(val_bank, synth, image_seed(cfg.seed, "val", i)))
        os.replace(partial, val_dir)
    val_items = read_smear_pairs(val_dir, PALETTE)
    if cfg.merge_wbc:
        val_items = [(img, merge_wbc_types(c)) for img, c in val_items]
    transform = smear_transform(cfg.augment)
    if "stream" not in state:  # decided once: a resumed run draws the same smears even if its start model changed
        state["stream"] = training_stream(cfg.init)
    real = None
    if cfg.real_fields > 0:
        real = RealFields(fields, synth.rbc_diameter, synth.size, cfg.merge_wbc)
    dataset = SynthDataset(train_bank, synth, cfg.samples_per_epoch or 512, cfg.seed, transform, cfg.norm_low,
                           cfg.norm_high, balance=cfg.class_balance, merge_wbc=cfg.merge_wbc, stream=state["stream"],
                           reuse=cfg.reuse, real=real, real_share=cfg.real_fields)
    card = {
        "cell_diameter": float(np.mean(synth.rbc_diameter)),  # red-cell diameter the model was trained around
        "diameter_range": [float(v) for v in synth.rbc_diameter],
        "palette": {str(k): list(v) for k, v in PALETTE.items()},
        "tta": True,  # segment averages the final pass over flips (on the validation smears: +0.013 mean IoU)
        "training": {"data": cfg.data, "synthetic": True, "crops": train_bank.count(), "n_val": len(val_items),
                     "seed": cfg.seed, "augment": cfg.augment, "scale_range": [1.0, 1.0], "synth": asdict(synth),
                     "class_balance": cfg.class_balance, "schedule": cfg.schedule, "split": str(val_dir),
                     "held_out_crops": cfg.held_out, "merge_wbc": cfg.merge_wbc, "stream": dataset.stream,
                     "reuse": dataset.reuse,
                     **({"real_fields": {"share": cfg.real_fields, "fields": len(real)}} if real else {})},
    }
    if cfg.merge_wbc:
        card["wbc_typing"] = "smear10-type"  # names each WBC object at inference (trained on real + composited crops)
    return dataset, val_items, card
