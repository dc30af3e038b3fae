"""One training loop with hooks: seeded split on disk, augmentation, Dice+CE, cosine LR, early
stop, best/last checkpoints with a JSON state, exact resume, curves PNG and a model card.

The loop knows no task: :func:`fit` takes a task object (:class:`hemaseg.engine.task.Task`)
and calls its hooks: ``train_data`` (dataset, validation items, card fields), ``validate``,
``headline`` (the figure that picks the best checkpoint), ``nested_loss``, ``classes``.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hemaseg.data.transforms import is_bright_background, normalize, percentile_range, seed_transform, train_transform
from hemaseg.data.weights import contact_weights
from hemaseg.engine.evaluate import select_split
from hemaseg.engine.losses import dice_ce_loss
from hemaseg.engine.plots import plot_curves
from hemaseg.engine.tiling import predict_tiled
from hemaseg.errors import HemasegError, HemasegInputError, HemasegUsageError
from hemaseg.io.datasets import Pair
from hemaseg.io.writers import atomic_path, remove_temps, write_json
from hemaseg.models.registry import create_model, load_card, load_model, load_weights, save_model
from hemaseg.progress import track
from hemaseg.version import __version__

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: importing hemaseg does not import it.

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run needs; stored in state.json so ``--resume`` rebuilds the same run."""

    task: str = "wbc"
    data: list[str] = field(default_factory=list)
    arch: str = "unet-dropout"
    arch_kwargs: dict = field(default_factory=lambda: {"widths": [16, 32, 64, 128, 256], "dropout": 0.1, "stem_stride": 2,
                                                       "norm": "group"})
    epochs: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crop: int = 160
    augment: bool = True
    scale_min: float = 0.5
    scale_max: float = 2.0
    samples_per_epoch: int = 480  # 0: one pass over the training images
    patience: int = 40
    val_fraction: float = 0.2
    seed: int = 0
    norm_low: float = 1.0
    norm_high: float = 99.0
    invert_bright: bool = False  # nuclei: invert brightfield/H&E so nuclei are bright as in fluorescence
    contact_weight: float = 0.0  # nuclei: extra cross-entropy weight where two nuclei touch (0: off)
    class_balance: bool = False  # per-pixel weights that balance the classes of each training image
    schedule: str = "cosine"  # or "step" (seed 002: lr, then lr / 10 after the first 1/7 of the epochs)
    workers: int = 0  # data-loader worker processes (smear10 composes its images in them)
    reuse: int = 1  # smear10: each composed smear serves this many consecutive epochs (re-augmented each time)
    # smear10: WBC pixels are learnt as one class (the five types share index 3) and the bundled
    # WBC-type classifier names each WBC at inference; held_out = a split JSON whose "val" crops
    # (the classifier's held-out cells) must stay out of the composites' training crops.
    merge_wbc: bool = False
    held_out: str = ""
    # smear10: share of the training draws that are real boxed fields (TXL-PBC among --data; healthy
    # red cells, WBCs and background where the boxes say so for sure, the rest unlabelled) (0: off)
    real_fields: float = 0.0
    # cells: stained pixels outside every box (BCCD leaves many red cells unboxed) are ignored by the
    # loss (True: the model learns every cell) or taught as background (False: it learns the boxes as
    # they are, what the VOC metric on BCCD rewards)
    ignore_unboxed: bool = True
    # cells: sources (a YOLO dataset's sources.csv, e.g. TXL-PBC's "BCCD") whose photos stay out of
    # training and validation: leave-one-source-out runs
    leave_out: list[str] = field(default_factory=list)
    # start from this model's weights (a bundled name, a .safetensors file or a run folder) instead of
    # random ones: fine-tuning on a lab's own images; arch/arch_kwargs must be the model's (init_arch)
    init: str = ""
    # sampling weight of each stratum (the task's ``stratum`` hook, e.g. the nuclei's imaging modality)
    # in a training epoch; empty: every training image equally often. Strata also stratify the split.
    stratum_weights: dict = field(default_factory=dict)
    # wbc: chance that a pixel-annotated training image gets real red cells (cut from the boxed fields
    # among the training data) pressed against its WBCs, as background (0: off)
    paste_red_cells: float = 0.0
    # nuclei: chance that a fluorescence training image is redrawn as brightfield or H&E (0: off)
    modality_transfer: float = 0.0
    # wbc, nuclei: a split JSON (a run's split.json or one of benchmarks/splits) whose "train" and "val"
    # lists decide the split by image file name; empty: a seeded split of the data
    split: str = ""
    # nuclei: weight of the loss of one more output, each object's depth (its distance to its own edge
    # over its deepest pixel's, 0 outside; a sigmoid channel beside the classes, binary cross-entropy;
    # the task's ``aux_outputs``/``aux_target`` hooks); 0: no such output
    depth_weight: float = 0.0


def init_arch(model: str, task: str) -> tuple[str, dict]:
    """(architecture name, kwargs without ``classes``) of the model to start from, which must be a
    ``task`` model (a usage error naming ``--init`` otherwise, as another task's ``--model`` is)."""
    _, card = load_card(model)
    if card.get("task") != task:
        raise HemasegUsageError("--init", f"{model} is a {card.get('task')} model; --init needs a {task} model")
    kwargs = {k: v for k, v in card["architecture"].get("kwargs", {}).items() if k != "classes"}
    return card["architecture"]["name"], kwargs


def task_config(task, **overrides) -> TrainConfig:
    """TrainConfig of ``task`` (a task object): its ``train_defaults``, then ``overrides`` (None values ignored)."""
    kw = {**task.train_defaults, **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(task=task.name, **kw)


def versions() -> dict[str, str]:
    """Versions of the software a checkpoint was made with."""
    import albumentations
    import torch

    return {"hemaseg": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "albumentations": albumentations.__version__, "python": platform.python_version()}


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int, strata: list[str] | None = None
                ) -> tuple[list[Pair], list[Pair]]:
    """Seeded random split into (train, val); with ``strata`` (one name per pair) each stratum is
    split on its own, and every stratum of four or more pairs gives validation at least two.

    >>> pairs = [Pair(Path(f"{i}.png"), Path(f"{i}.tif")) for i in range(40)]
    >>> train, val = split_pairs(pairs, 0.1, 0, ["rare" if i < 5 else "common" for i in range(40)])
    >>> len(val), sum(int(p.image.stem) < 5 for p in val)
    (6, 2)
    """
    strata = strata or [""] * len(pairs)
    train, val = [], []
    for name in sorted(set(strata)):
        members = [p for p, s in zip(pairs, strata) if s == name]
        # Each stratum draws from its own generator: adding other data leaves its split as it was.
        order = np.random.default_rng(seed).permutation(len(members))
        n_val = max(1, int(round(len(members) * val_fraction))) if len(members) > 1 else 0
        if len(set(strata)) > 1 and len(members) >= 4:
            n_val = max(n_val, 2)
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return sorted(train, key=lambda p: str(p.image)), sorted(val, key=lambda p: str(p.image))


def sampling_probs(strata: list[str], weights: dict[str, float]) -> np.ndarray | None:
    """Per-item sampling probabilities that give each stratum its share of ``weights`` (strata
    missing from ``weights`` get none; None without weights: every item equally).

    >>> sampling_probs(["a", "a", "a", "b"], {"a": 0.5, "b": 0.5}).round(3).tolist()
    [0.167, 0.167, 0.167, 0.5]
    """
    if not weights:
        return None
    counts = {s: strata.count(s) for s in set(strata)}
    p = np.array([weights.get(s, 0.0) / counts[s] for s in strata], float)
    if p.sum() <= 0:
        raise HemasegInputError("stratum_weights", f"gives no weight to the training data's strata {sorted(counts)}")
    return p / p.sum()


def read_split(path: Path, data: list[str] | None = None) -> tuple[list[Pair], list[Pair]]:
    """Read a split.json written by :func:`write_split`; with ``data`` (the run's data folders),
    :class:`HemasegInputError` if it lists an image outside them or one that is gone."""
    d = json.loads(path.read_text())
    train, val = ([Pair(Path(a), Path(b)) for a, b in d["train"]], [Pair(Path(a), Path(b)) for a, b in d["val"]])
    if data:
        roots = [Path(r).resolve() for r in data]
        for pair in train + val:
            image = pair.image.resolve()
            if not any(image == r or r in image.parents for r in roots):
                raise HemasegInputError(path, f"lists {pair.image}, which is not under the run's data "
                                              f"({', '.join(map(str, data))}): the split belongs to other data")
            if not pair.image.exists():
                raise HemasegInputError(path, f"lists {pair.image}, which no longer exists")
    return train, val


def write_split(path: Path, train: list[Pair], val: list[Pair], seed: int, left_out: list[dict] | None = None) -> None:
    """Write the split as lists of [image, mask] paths; ``left_out``: the inputs the run could not use
    ({"image", "reason"}), kept with it so that a run killed before its first checkpoint still says them."""
    write_json(path, {"seed": seed, "train": [[str(p.image), str(p.mask)] for p in train],
                      "val": [[str(p.image), str(p.mask)] for p in val], **({"left_out": left_out} if left_out else {})})


def object_diameters(masks: list[np.ndarray], min_area: int = 20) -> np.ndarray:
    """Equivalent diameters (px) of the objects in training masks: connected cells (class > 0) of
    uint8 class masks, instances of uint16 label images."""
    from skimage.measure import label, regionprops

    ds = []
    for m in masks:
        lab = m.astype(np.int32) if m.dtype == np.uint16 else label(m > 0)
        ds += [r.equivalent_diameter_area for r in regionprops(lab) if r.area >= min_area]
    return np.asarray(ds, float)


def cell_diameter(masks: list[np.ndarray]) -> float:
    """Median equivalent diameter (px) of the cells (class > 0) or instances in training masks."""
    ds = object_diameters(masks)
    return float(np.median(ds)) if len(ds) else 0.0


class SegDataset:
    """Images and class masks held in memory, augmented and normalised on access."""

    def __init__(self, items: list[tuple[np.ndarray, np.ndarray]], transform, low: float, high: float,
                 length: int = 0, target=None, invert_bright: bool = False, weights=None,
                 probs: np.ndarray | None = None, seed: int = 0, aux=None) -> None:
        self.items, self.transform, self.low, self.high = items, transform, low, high
        # aux(mask) -> (R, H, W) float32: targets of the task's extra outputs, from the augmented mask.
        self.aux = aux
        self.length = length or len(items)
        self.target, self.invert_bright, self.weights = target, invert_bright, weights
        # probs: each item's chance per draw (balanced strata); draw i of an epoch is seeded by
        # (seed, epoch, i), so a resumed run draws the same items.
        self.probs, self.seed, self.epoch = probs, seed, 0
        # pre(image, mask, rng) -> (image, mask): a task's change to a drawn item before the
        # augmentation (e.g. real red cells pasted against a WBC), its rng seeded by (seed, epoch, i).
        self.pre = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        import torch

        draw = i
        if self.probs is not None:
            i = int(np.random.default_rng((self.seed, self.epoch, i)).choice(len(self.items), p=self.probs))
        image, mask = self.items[i % len(self.items)]
        if self.pre is not None:
            image, mask = self.pre(image, mask, np.random.default_rng((self.seed, self.epoch, draw, 1)))
        out = self.transform(image=image, mask=mask)
        prange = percentile_range(out["image"], self.low, self.high)
        invert = self.invert_bright and is_bright_background(out["image"], prange)
        x = normalize(out["image"], prange=prange, invert=invert)
        y = self.target(out["mask"]) if self.target is not None else out["mask"]
        sample = (torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(y.astype(np.int64)))
        if self.weights is not None:
            # Weights come from the augmented mask itself (instance labels for nuclei).
            sample += (torch.from_numpy(self.weights(out["mask"])),)
        if self.aux is not None:
            sample += (torch.from_numpy(self.aux(out["mask"]).astype(np.float32, copy=False)),)
        return sample


def _unlabelled(task, roots: list[str]) -> list[dict]:
    """The images under ``roots`` found without their labels, as ``hemaseg evaluate`` names them
    (:meth:`Task.find_scored`); a folder evaluation cannot score (boxes only, for the wbc task's weak
    labels) names none."""
    out: list[dict] = []
    for root in roots:
        try:
            task.find_scored(root, out)
        except HemasegError:
            pass
    return out


def pair_data(task, cfg: TrainConfig, run: Path, state: dict) -> tuple:
    """Training dataset, validation items and model-card fields of an image/label-pair task: the
    task's ``find_samples`` / ``load_sample`` / ``target`` hooks, a seeded split kept in ``run/split.json``."""
    split_path = run / "split.json"
    if split_path.exists():
        train_pairs, val_pairs = read_split(split_path, cfg.data)
        pairs = train_pairs + val_pairs
        if "left_out" not in state:  # a run killed before its first checkpoint: what it left out, from its split
            left = json.loads(split_path.read_text()).get("left_out")
            if left:
                state["left_out"] = left
    else:
        pairs = [p for d in cfg.data for p in task.find_samples(d)]
        for f in _unlabelled(task, cfg.data):
            log.warning("%s: left out of training: %s", f["image"], f["reason"])
            if not f.get("unlabelled"):  # `hemaseg train` ends with exit 1, as a batch with a bad file (not for
                state.setdefault("left_out", []).append(f)  # a DSB test image: Kaggle's stage1_test/)
        if not pairs:
            raise HemasegInputError(", ".join(cfg.data), "no image/mask pairs found")
    loaded, unreadable = {}, []
    for pair in track(pairs, "read training data", leave=False):
        try:
            loaded[pair] = task.load_sample(pair)
        except HemasegInputError as exc:  # each named; the first one stopped the run, naming it alone
            log.warning("%s: left out of training: %s", exc.path, exc.reason)
            unreadable.append(pair)
            if not split_path.exists():
                state.setdefault("left_out", []).append({"image": str(exc.path), "reason": exc.reason})
    if unreadable and split_path.exists():  # a resumed run trains on the pairs it started with, or not at all
        raise HemasegInputError(run, f"{len(unreadable)} image/label pair(s) of its split cannot be read now (each "
                                     "named above): restore them to resume")
    pairs = [p for p in pairs if p in loaded]
    if not pairs:
        raise HemasegInputError(", ".join(cfg.data), "no image/label pair could be read (each named above)")
    stratum = {p: task.stratum(*loaded[p]) for p in pairs}
    if not split_path.exists():
        if cfg.split:
            train_pairs, val_pairs = select_split(pairs, cfg.split, "train"), select_split(pairs, cfg.split, "val")
            if set(train_pairs) & set(val_pairs):
                raise HemasegInputError(cfg.split, "lists an image in both 'train' and 'val'")
        else:
            train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed, [stratum[p] for p in pairs])
        write_split(split_path, train_pairs, val_pairs, cfg.seed, state.get("left_out"))
    train_items, val_items = [loaded[p] for p in train_pairs], [loaded[p] for p in val_pairs]
    train_strata = [stratum[p] for p in train_pairs]
    diams = object_diameters([task.measure_mask(m) for _, m in train_items])
    diameter = state.get("cell_diameter") or (float(np.median(diams)) if len(diams) else 0.0)
    state["cell_diameter"] = diameter
    diameter_range = [float(v) for v in np.percentile(diams, [5, 95])] if len(diams) else []

    transform = train_transform(cfg.crop, cfg.augment, (cfg.scale_min, cfg.scale_max))
    weights = partial(contact_weights, weight=cfg.contact_weight) if cfg.contact_weight > 0 else None
    dataset = SegDataset(train_items, transform, cfg.norm_low, cfg.norm_high, cfg.samples_per_epoch,
                         target=task.target, invert_bright=cfg.invert_bright,
                         weights=weights, probs=sampling_probs(train_strata, cfg.stratum_weights), seed=cfg.seed,
                         aux=task.aux_target if task.aux_outputs(cfg) else None)
    counts = {s: train_strata.count(s) for s in sorted(set(train_strata))}
    card = {
        "cell_diameter": diameter,
        "diameter_range": diameter_range,
        "training": {"data": cfg.data, "n_train": len(train_items), "n_val": len(val_items), "seed": cfg.seed,
                     "augment": cfg.augment, "scale_range": [cfg.scale_min, cfg.scale_max],
                     "split": cfg.split or str(split_path.resolve()),  # (evaluate finds it from anywhere)
                     **({"strata": counts, "stratum_weights": cfg.stratum_weights} if len(counts) > 1 else {})},
    }
    return dataset, val_items, card


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def recalibrate_batchnorm(model: torch.nn.Module, loader) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over ``loader`` (precise BN).

    The momentum average of the last few heavily augmented batches can sit far from
    any real image's statistics; averaging over a whole epoch of batches does not.
    """
    import torch

    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
        model.train()
        # Dropout off: the statistics must be those of the eval-mode network (dropout
        # before BatchNorm otherwise shifts the variance between training and inference).
        for m in model.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.eval()
        for x, *_ in loader:  # (image, target) or (image, target, weights)
            model(x)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()


def epochs_to_run(state: dict, total: int, max_this_call: int | None = None):
    """The epochs still to train: from the state's next one to ``total``, until early stopping is
    flagged or ``max_this_call`` epochs ran (tests use it to simulate a kill)."""
    done = 0
    for epoch in range(state["epoch"] + 1, total + 1):
        if state["stopped_early"] or (max_this_call is not None and done >= max_this_call):
            return
        yield epoch
        done += 1


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: python, numpy and the dataset's augmentation reseeded from
    the worker's own torch seed (the epoch's base seed + its id, so as reproducible as the main process);
    else every worker inherited the same augmentation stream and drew the same augmentations."""
    import torch

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None:
        seed_transform(transform, s)


def begin_epoch(seed: int, epoch: int, transform) -> int:
    """Reseed everything for ``epoch``, so a resumed run draws the same batches as an unbroken one;
    returns the epoch's seed."""
    epoch_seed = seed * 100_003 + epoch
    _seed_all(epoch_seed)
    seed_transform(transform, epoch_seed)  # shared streams: each transform's chance drawn apart
    return epoch_seed


# Files a training run writes (tasks add theirs in Task.run_files); --overwrite removes them.
RUN_FILES = ("state.json", "split.json", "curves.png", "confusion.png", "last.safetensors", "last.json",
             "last.optim.pt", "best.safetensors", "best.json", "model.safetensors", "model.json", "start.safetensors",
             "start.json")
PENDING = ".pending"  # a checkpoint being committed (see commit_checkpoint)


def holds_run(run: Path) -> bool:
    """``run`` is a folder with a training run in it (a state, a split or a checkpoint)."""
    return any((run / name).exists() for name in ("state.json", "split.json", "last.safetensors", PENDING))


def prepare_run(run: str | Path, resume: bool = False, overwrite: bool = False, extra_files=()) -> Path:
    """Check the run folder before training: a new run may not go into a folder holding one
    (:class:`HemasegUsageError` naming ``--out``) unless ``overwrite``, which deletes that run's files
    (:data:`RUN_FILES` and ``extra_files``), nor into one holding any of those files without a run (a
    model folder) unless ``overwrite``, which deletes them; resuming needs a run. Returns the folder."""
    run = Path(run)
    if resume:
        if overwrite:
            raise HemasegUsageError("--overwrite", "cannot be used with --resume")
        return run
    if run.exists() and not run.is_dir():
        raise HemasegUsageError("--out", f"{run} is a file, not a folder")
    if holds_run(run):
        if not overwrite:
            raise HemasegUsageError("--out", f"{run} already holds a training run; continue it with --resume {run} "
                                             "or start afresh with --overwrite")
        remove_run_files(run, RUN_FILES + tuple(extra_files))
        shutil.rmtree(run / PENDING, ignore_errors=True)
        remove_temps(run)
        return run
    # No run, but files a run writes (a model folder --model takes, a user's model.json or curves.png):
    # a new run would replace them without a word.
    present = [name for name in RUN_FILES + tuple(extra_files) if run.is_dir() and (run / name).exists()]
    if present:
        if not overwrite:
            raise HemasegUsageError("--out", f"{run} holds {', '.join(present)}, which a training run writes; give "
                                             "a new or empty folder, or --overwrite to replace them")
        remove_run_files(run, present)
    return run


def remove_run_files(run: Path, names) -> None:
    """Delete the files and folders ``names`` of a run folder that exist (``--overwrite``, a refused run)."""
    for name in names:
        target = run / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


RUN_CACHES = ("crops", "val")  # sub-folders a run writes itself (wbc-type's crop cache, smear10's validation set)


def recover(run: Path) -> None:
    """Bring a run folder to its last committed checkpoint after a kill: finish a commit whose
    state was written (roll forward), drop one whose state was not (roll back), delete the
    temporary files of killed writers."""
    pending = run / PENDING
    if pending.is_dir():
        if (pending / "state.json").exists():
            _roll_forward(run)
        else:
            shutil.rmtree(pending)
    if run.is_dir():  # the run's own caches too (wbc-type's crops/: a killed cache write left its temp there)
        for folder in (run, *(run / d for d in RUN_CACHES)):
            if folder == run or (folder.is_dir() and not folder.is_symlink()):
                remove_temps(folder)


def _roll_forward(run: Path) -> None:
    pending = run / PENDING
    for f in sorted(pending.iterdir()):
        if f.name != "state.json" and not f.name.startswith("."):
            os.replace(f, run / f.name)
    os.replace(pending / "state.json", run / "state.json")
    shutil.rmtree(pending)


def commit_checkpoint(run: Path, state: dict, models: dict[str, tuple], optim: dict | None = None) -> None:
    """Write checkpoints and the state as one unit: everything goes to ``run/.pending/``, the state
    last (its atomic write is the one commit point), then every file is moved into place.
    A kill before the state is written leaves the previous checkpoint; after, :func:`recover`
    finishes the move. ``models``: {file stem: (module, card)}; ``optim``: saved as ``last.optim.pt``."""
    import torch

    pending = run / PENDING
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir(parents=True)
    for stem, (model, card) in models.items():
        save_model(model, pending / stem, card)
    if optim is not None:
        with atomic_path(pending / "last.optim.pt") as tmp:
            torch.save(optim, tmp)
    write_json(pending / "state.json", state)
    _roll_forward(run)


def nothing_to_resume(run: Path) -> HemasegUsageError:
    """The usage error of ``--resume`` on a folder with no ``state.json``."""
    return HemasegUsageError("--resume", f"{run}: no training run there (no state.json): nothing to resume (a run "
                                         "killed in its first seconds, before it wrote one, is begun again by its "
                                         "own command)")


_LOCKS: dict[tuple[int, int], int] = {}  # run folder (device, inode) -> the descriptor its lock is held on


def _drop_locks_in_child() -> None:
    """A forked child (a data-loader worker) closes its copies of the lock descriptors: an flock lives while
    any copy is open, so an orphaned worker kept a killed trainer's run locked for seconds."""
    for fd in _LOCKS.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


def hold_run(run: Path, option: str) -> None:
    """Take the run folder's lock for this process: a second trainer (``--resume`` of a run still training,
    which the refusal of its ``--out`` invited) would clear the live run's pending checkpoint and commit through
    it (:class:`HemasegUsageError` naming ``option``). An flock on the folder itself (no file is left in it), held
    until the process ends; a killed process's lock goes with it. Where ``fcntl`` is missing (Windows) nothing is
    locked."""
    try:
        import fcntl
    except ImportError:
        return
    fd = os.open(Path(run), os.O_RDONLY)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)  # by identity: a folder deleted and made again is another folder, unlocked
    if key in _LOCKS:
        os.close(fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise HemasegUsageError(option, f"{run} is being trained by another process now; wait for it to end (or "
                                        "stop it), then --resume it; nothing was changed") from None
    _LOCKS[key] = fd


def start_or_resume(cfg, config_class, run: Path, resume: bool, task: str | None = None) -> tuple:
    """(config, state) of a run: read back from ``run/state.json`` when resuming (after
    :func:`recover`), else fresh: a folder already holding a run is refused (:func:`prepare_run`).
    ``task``: the task resuming it; a run of another task is a usage error on ``--resume``."""
    state_path = run / "state.json"
    if resume:
        if run.is_dir():
            hold_run(run, "--resume")  # before recover(), which clears what a live run is writing
        recover(run)
        if not state_path.exists():
            raise nothing_to_resume(run)
        state = json.loads(state_path.read_text())
        run_task = state["config"].get("task", "wbc-type")  # a classifier's config names no task
        if task is not None and run_task != task:
            raise HemasegUsageError("--resume", f"{run}: a {run_task} run, not a {task} run")
        return config_class(**state["config"]), state
    assert cfg is not None
    prepare_run(run)
    run.mkdir(parents=True, exist_ok=True)
    hold_run(run, "--out")
    import torch

    # the threads it runs on: a resume on others gives another model (sums in another order), so --resume
    # takes these unless told otherwise
    state = {"config": asdict(cfg), "epoch": 0, "history": [], "best_metric": -1.0, "best_epoch": 0,
             "stopped_early": False, "threads": torch.get_num_threads()}
    # Committed at once: a run killed before its first checkpoint resumes from epoch 0.
    write_json(state_path, state)
    return cfg, state


def has_checkpoint(run: Path) -> bool:
    """A run being resumed has a ``last`` checkpoint to restore; one killed before its first has none
    and starts again from its start weights (random, or ``--init``'s)."""
    return (run / "last.safetensors").exists()


def load_last(run: Path, model, optimizer, scheduler) -> None:
    """Restore the ``last`` checkpoint (weights, optimizer, LR schedule) of a run being resumed; every
    loop calls it only when :func:`has_checkpoint` (else the run starts from its start weights)."""
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run / "last.safetensors")))
    opt_state = torch.load(run / "last.optim.pt", weights_only=False)
    optimizer.load_state_dict(opt_state["optimizer"])
    scheduler.load_state_dict(opt_state["scheduler"])


def end_epoch(run: Path, state: dict, cfg, epoch: int, lr: float, losses: list[float], val: dict, metric: float,
              seconds: float, model, optimizer, scheduler, card: dict) -> dict:
    """Book an epoch: history entry, early-stop flag, then best/last checkpoints and state.json
    committed together (:func:`commit_checkpoint`), curves, log line."""
    entry = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), **val, "metric": metric,
             "seconds": round(seconds, 2)}
    state["history"].append(entry)
    state["epoch"] = epoch
    state["lr"] = optimizer.param_groups[0]["lr"]
    card_now = {**card, "metrics": {"val": val, "epoch": epoch}}
    models = {}
    if state["best_epoch"] == 0 or metric > state["best_metric"]:  # the first epoch is best whatever its score (a -loss)
        state["best_metric"], state["best_epoch"] = metric, epoch
        models["best"] = (model, card_now)
    if epoch - state["best_epoch"] >= cfg.patience:
        state["stopped_early"] = True
    models["last"] = (model, card_now)
    state["versions"] = versions()
    commit_checkpoint(run, state, models, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    plot_curves(state["history"], run / "curves.png")
    log.info(f"epoch {epoch}/{cfg.epochs} loss {entry['train_loss']:.4f} "
             + " ".join(f"{k} {v:.4f}" for k, v in val.items()) + f" lr {lr:.2e} {entry['seconds']:.0f}s")
    return entry


SCORE_PREFIXES = ("dice", "iou", "dsb", "ap", "pixel", "mean_iou", "map")  # validation keys kept in the model card


START_WEIGHTS = "start.safetensors"  # a fine-tune's start model, kept in the run: shipped if no epoch beats it
# fields of the start's card that a shipped start takes from the run instead (its weights are the start's either way)
START_CARD_NOT_KEPT = ("name", "task", "classes", "label_values", "architecture", "aux_outputs", "training",
                       "metrics", "versions", "onnx")


def start_record(task, cfg, run: Path, model, card: dict, probs_of, val_items: list, data_card: dict) -> dict:
    """What a fine-tune keeps of its start (``--init``), taken when it begins (``model`` holds the start's
    weights): its post-processing thresholds (not what was fitted to its outputs: a dict), the fields that set
    its working scale, and its validation figures on the run's own items with its weights (``run/start.*``),
    so that the end compares the best epoch with it, a resumed run as an unbroken one, whatever becomes of
    the ``--init`` file. The random state is left as it was."""
    import torch

    try:
        init_card = load_card(cfg.init)[1]
    except HemasegError:
        init_card = {}
    post = init_card.get("postprocess") or {}
    kept = {k: v for k, v in post.items() if not isinstance(v, dict)}
    if task.Params is not None:  # a name no parameter has among those kept: said now, naming the file (it failed
        try:                     # at validation)
            task.params({"postprocess": kept})
        except HemasegError as exc:
            raise HemasegUsageError("--init", f"{cfg.init}: {getattr(exc, 'reason', exc)}") from None
    record = {"postprocess": kept,
              "not_kept": sorted(k for k, v in post.items() if isinstance(v, dict)),
              # shipped as it is should no epoch beat it: its working scale (cells: input_scale, box_scale), its
              # thresholds and what was fitted to its outputs (the platelet re-scorer), not this data's
              "card": {k: v for k, v in init_card.items() if k not in START_CARD_NOT_KEPT},
              "metric": None, "val": {}}
    if val_items:
        states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        model.eval()
        val = task.validate(probs_of, val_items, cfg, {**data_card, "postprocess": record["postprocess"]})
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        record.update(metric=float(task.headline(val)), val=val)
        save_model(model, run / Path(START_WEIGHTS).stem, card)
    return record


def run_over(state: dict, cfg) -> bool:
    """All epochs run, or stopped early."""
    return state["epoch"] >= cfg.epochs or bool(state.get("stopped_early"))


def say_start_shipped(card: dict, state: dict, init: str, start_metric: float) -> None:
    """A fine-tune ships its start (no epoch beat its validation score ``start_metric``): said in the card
    (``training.shipped``), in ``state["shipped"]`` and as a warning naming ``--lr`` (the engine's loop and the
    typer's)."""
    card["training"]["shipped"] = (f"the start model ({init}): no epoch beat its validation score "
                                   f"{start_metric:.4f} (best epoch {state['best_epoch']}: {state['best_metric']:.4f})")
    log.warning("no epoch beat the start model's validation score (%.4f against the best epoch's %.4f): the run's "
                "model is its start, %s; try a lower --lr", start_metric, state["best_metric"], init)
    state["shipped"] = "start"


def finish_run(run: Path, state: dict, cfg, model, card: dict, start: tuple | None = None) -> None:
    """When the run is over (all epochs, or stopped early): the shipped model = best weights + card
    with that epoch's validation figures and the training time; ``state["finished"]``.

    ``start``: (state dict, validation figures, headline, card fields) of a fine-tune's start model
    (``--init``, :func:`start_record`) on the same validation items: when no epoch beat it, the start is
    shipped with its own working scale, and the card and ``state["shipped"]`` say so (a lab's small
    fine-tune at too high a rate could end worse than the model it began from)."""
    from safetensors.torch import load_file

    if not run_over(state, cfg) or state.get("finished"):  # (a finished run resumed: its model stays as shipped)
        return
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    metrics = {"val": {k: best[k] for k in best if k.startswith(SCORE_PREFIXES)}, "epoch": state["best_epoch"]}
    if start is not None:
        card["training"]["start_metric"] = round(float(start[2]), 4)  # the task's headline, as each epoch's
    if start is not None and start[2] >= state["best_metric"]:  # no epoch beat it (a tie too: the docs' word)
        model.load_state_dict(start[0])
        metrics = {"val": {k: v for k, v in start[1].items() if k.startswith(SCORE_PREFIXES)}, "epoch": 0}
        card = {**card, **start[3]}  # the start's card as it was, not this data's
        card["training"].pop("postprocess_not_kept", None)  # the start keeps what was fitted to its outputs
        say_start_shipped(card, state, cfg.init, start[2])
    else:
        model.load_state_dict(load_file(str(run / "best.safetensors")))
    # (a walkthrough could not reproduce a lab's card's figures with evaluate, and no doc said why)
    split = " --split RUN/split.json" if (run / "split.json").is_file() else ""  # (smear10 writes its val set)
    metrics["note"] = (f"val: the validation figures the checkpoint was chosen by, taken during training (the network "
                       f"at each validation image's training scale), not the whole pipeline: `hemaseg evaluate "
                       f"{card.get('task', 'TASK')} --data DATA --model RUN{split}` scores that")
    card["training"]["minutes"] = round(sum(h["seconds"] for h in state["history"]) / 60, 1)
    # what the bundled cards record (an export's README said "? epochs" for a run's model)
    card["training"]["epochs_run"] = len(state["history"])
    card["training"]["best_epoch"] = int(state["best_epoch"])
    state["finished"] = True
    commit_checkpoint(run, state, {"model": (model, {**card, "metrics": metrics})})


def predict_native(model: torch.nn.Module, image: np.ndarray, low: float, high: float, stride: int,
                   invert_bright: bool = False, softmax_channels: int | None = None) -> np.ndarray:
    """(K, H, W) probabilities of ``model`` on an image at its native scale, normalised as in training
    (tiled with the engine's one default tile size); channels past ``softmax_channels`` are sigmoids."""
    prange = percentile_range(image, low, high)
    invert = invert_bright and is_bright_background(image, prange)
    return predict_tiled(model, normalize(image, prange=prange, invert=invert), stride=stride,
                         softmax_channels=softmax_channels)


def grow_outputs(start: dict, own: dict, classes: int) -> dict:
    """``start`` (an init model's state dict) fitted to a model with extra outputs after its ``classes``
    output channels (``Task.aux_outputs``): each output tensor with ``classes`` rows where ``own`` has
    more gets the start's rows first and ``own``'s fresh ones after; everything else as it is.

    >>> import torch
    >>> grown = grow_outputs({"head.bias": torch.ones(3)}, {"head.bias": torch.zeros(4)}, 3)
    >>> grown["head.bias"].tolist()
    [1.0, 1.0, 1.0, 0.0]
    """
    out = dict(start)
    for k, v in start.items():
        mine = own.get(k)
        if (mine is not None and v.dim() > 0 and v.dim() == mine.dim() and v.shape[0] == classes < mine.shape[0]
                and v.shape[1:] == mine.shape[1:]):
            grown = mine.clone()
            grown[:classes] = v
            out[k] = grown
    return out


def training_loss(task, cfg, logits, target, weight=None, aux=None):
    """The task's loss on a batch: :func:`~hemaseg.engine.losses.dice_ce_loss` on the class channels,
    plus ``cfg.depth_weight`` x binary cross-entropy of the extra outputs (``task.aux_outputs``)
    against ``aux``, their (B, R, H, W) targets in [0, 1]."""
    import torch.nn.functional as F

    k = len(task.classes)
    loss = dice_ce_loss(logits[:, :k], target, nested=task.nested_loss, weight=weight)
    if aux is not None:
        loss = loss + cfg.depth_weight * F.binary_cross_entropy_with_logits(logits[:, k:], aux)
    return loss


def fit(task, cfg: TrainConfig | None, run: str | Path, resume: bool = False, progress: bool = True,
        max_epochs_this_call: int | None = None) -> dict:
    """Train (or resume) a run of ``task`` (a task object) in folder ``run``; returns the final state dict.

    ``max_epochs_this_call`` stops early after that many epochs (used by tests to
    simulate a killed run that is later resumed).
    """
    import torch

    run = Path(run)
    cfg, state = start_or_resume(cfg, TrainConfig, run, resume, task.name)
    if cfg.task != task.name:  # a fresh run's config names its task
        raise HemasegInputError(run, f"a {cfg.task} run, not a {task.name} run")
    dataset, val_items, data_card = task.train_data(cfg, run, state)
    _seed_all(cfg.seed)
    # channels-last: ~12 % faster convolutions on CPU (the weights are saved contiguous as always)
    aux_outputs = list(task.aux_outputs(cfg))
    n_out = len(task.classes) + len(aux_outputs)
    model = create_model(cfg.arch, classes=n_out, **cfg.arch_kwargs).to(memory_format=torch.channels_last)
    stride = int(getattr(model, "stride", 32))
    if cfg.crop % stride:  # the network halves the crop log2(stride) times: it was a traceback mid-epoch
        raise HemasegUsageError("--crop", f"{cfg.crop}: not a multiple of the network's stride ({stride}); "
                                          f"try {max(stride, cfg.crop // stride * stride)}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "step":  # seed 002: lr for the first 1/7 of the epochs (5 of 35), then lr / 10
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[max(1, round(cfg.epochs / 7))], gamma=0.1)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * 0.01)
    holds_init = False  # the model holds the --init weights (not a checkpoint's)
    if resume and has_checkpoint(run):
        load_last(run, model, optimizer, scheduler)
    elif cfg.init:  # a fresh run, or one killed before its first checkpoint: it starts from the init weights
        holds_init = True
        load_init(model, cfg, task)

    card = {
        "name": f"{task.name}-{cfg.arch}",
        "task": task.name,
        "classes": list(task.classes),
        "label_values": list(task.label_values),
        "architecture": {"name": cfg.arch, "kwargs": {"classes": n_out, **cfg.arch_kwargs}},
        **({"aux_outputs": aux_outputs} if aux_outputs else {}),
        "normalization": {"type": "percentile", "low": cfg.norm_low, "high": cfg.norm_high, "per_channel": True,
                          "invert_bright": cfg.invert_bright},
        **data_card,
        "versions": versions(),
    }
    def probs_of(image: np.ndarray) -> np.ndarray:
        return predict_native(model, image, cfg.norm_low, cfg.norm_high, stride, cfg.invert_bright, len(task.classes))

    if holds_init and "start" not in state:  # a fresh run (or one killed before its first checkpoint): the start's
        state["start"] = start_record(task, cfg, run, model, card, probs_of, val_items, data_card)
    if cfg.init:  # a fine-tune keeps its start's thresholds (the bundled nuclei card's seed 0.4 fell back to 0.5),
        # not what was fitted to the start's own outputs (the cells card's platelet re-scorer): refit that
        card["training"]["init"] = str(cfg.init)
        kept = (state.get("start") or {}).get("postprocess") or {}  # (none kept: a run begun before stop 67)
        if kept:
            card["postprocess"] = kept
            card["training"]["postprocess_from"] = str(cfg.init)
        if (state.get("start") or {}).get("not_kept"):  # said in the card, not dropped without a word
            card["training"]["postprocess_not_kept"] = {k: f"fitted to the outputs of {cfg.init}, not this model's"
                                                        for k in state["start"]["not_kept"]}
    # validation scores each epoch with the thresholds the run's card will carry, as its start was scored (a nuclei
    # fine-tune chose its epoch, and wrote its card's figures, with the defaults while it ships its start's)
    data_card = {**data_card, "postprocess": card.get("postprocess") or {}}

    for epoch in epochs_to_run(state, cfg.epochs, max_epochs_this_call):
        t0 = time.time()
        begin_epoch(cfg.seed, epoch, dataset.transform)
        dataset.epoch = epoch
        if hasattr(dataset, "prepare"):
            dataset.prepare(cfg.workers + 1 if cfg.workers else 0)  # smear10 with reuse: compose a block's smears once
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                             drop_last=len(dataset) > cfg.batch_size, num_workers=cfg.workers,
                                             persistent_workers=False, worker_init_fn=seed_worker)
        model.train()
        losses = []
        bar = track(loader, f"epoch {epoch}/{cfg.epochs}", leave=False) if progress else loader
        for x, y, *extra in bar:
            x = x.contiguous(memory_format=torch.channels_last)
            # extra: (per-pixel weights,) then (extra outputs' targets,), each when the dataset gives it
            w = extra[0] if len(extra) > bool(aux_outputs) else None
            loss = training_loss(task, cfg, model(x), y, w, extra[-1] if aux_outputs else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        recalibrate_batchnorm(model, loader)
        model.eval()
        val = task.validate(probs_of, val_items, cfg, data_card) if val_items else {}
        metric = task.headline(val) if val else -float(np.mean(losses))
        end_epoch(run, state, cfg, epoch, lr, losses, val, metric, time.time() - t0, model, optimizer, scheduler, card)

    start = None
    record = state.get("start") or {}
    if run_over(state, cfg) and not state.get("finished"):
        start = _start_at_the_end(task, cfg, run, model, record, probs_of, val_items, data_card)
    finish_run(run, state, cfg, model, card, start)
    return state


def load_init(model, cfg, task) -> None:
    """Put the ``--init`` model's weights into ``model`` (:func:`grow_outputs` for the task's extra outputs)."""
    first, _ = load_model(cfg.init)
    load_weights(model, grow_outputs(first.state_dict(), model.state_dict(), len(task.classes)), cfg.init,
                 f"{cfg.arch} {cfg.arch_kwargs}")


def _start_at_the_end(task, cfg, run: Path, model, record: dict, probs_of, val_items: list, data_card: dict):
    """(weights, validation figures, headline, card fields) of a fine-tune's start for :func:`finish_run`, from the
    run's own copy (:func:`start_record`); a run begun before it was kept (stop 67) scores its ``--init`` now, as it
    did then; None when there is no start to compare with (said when it cannot be read)."""
    from safetensors.torch import load_file

    if record.get("metric") is not None:
        try:
            return load_file(str(run / START_WEIGHTS)), record["val"], record["metric"], record.get("card") or {}
        except (OSError, RuntimeError) as exc:  # deleted from the run: the best epoch is shipped, said
            log.warning("%s: the start model kept in the run cannot be read (%s): the best epoch is shipped",
                        run / START_WEIGHTS, exc)
            return None
    if not cfg.init or not val_items or record:  # (a record without a metric: no validation items when it began)
        return None
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:  # a run begun before the start was kept in it
        load_init(model, cfg, task)
    except HemasegError as exc:
        model.load_state_dict(trained)
        log.warning("%s: the start model could not be scored against the run's best epoch (%s)", cfg.init,
                    getattr(exc, "reason", exc))
        return None
    model.eval()
    val = task.validate(probs_of, val_items, cfg, data_card)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(trained)
    return weights, val, float(task.headline(val)), {}
