"""Training of WBC type classifiers on cell-normalised crops: stratified seeded splits per data
set, class-balanced sampling, heavy stain/background augmentation, optional DANN (gradient
reversal towards unlabelled target images), checkpoints with a JSON state, exact resume,
curves and confusion-matrix PNGs, a model card."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from hemaseg.core.vocabulary import UNTYPED
from hemaseg.data.transforms import (
    CROP_COLOURS,
    NEEDS_PARTS,
    classify_transform,
    crop_input,
    cut_tight,
    input_channels,
    look_stats,
    replace_background,
    transfer_look,
)
from hemaseg.engine.plots import plot_confusion, plot_curves
from hemaseg.engine.runtime import softmax
from hemaseg.engine.train import (
    _seed_all,
    begin_epoch,
    commit_checkpoint,
    epochs_to_run,
    has_checkpoint,
    load_last,
    say_start_shipped,
    start_or_resume,
    versions,
)
from hemaseg.errors import HemasegError, HemasegInputError, HemasegUsageError
from hemaseg.io.datasets import find_labelled_cells
from hemaseg.io.images import list_images, read_image, real_path
from hemaseg.io.writers import atomic_path, write_json
from hemaseg.metrics import classification_report
from hemaseg.models.registry import create_model, load_model, save_model
from hemaseg.progress import track
from hemaseg.tasks.wbc_type.crops import (
    ALL_CLASSES,
    CLASSES,
    CROP_PADDINGS,
    N_EXTRAS,
    cell_crops,
    crop_padding,
    group_probs,
    predict_logits,
    probs_from_logits,
    to_tensor,
)

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: importing hemaseg does not import it.

log = logging.getLogger(__name__)
TYPES = list(CLASSES)  # the five WBC types (a 5-class model's classes)


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
    # give the classifier the crop's ruler (size relative to red cells, nucleus share): off by default, as
    # it cost 0.19 on a lab never seen (BCCD left out: 0.463 with it, 0.654 without; docs/results.md)
    extras: bool = False
    classes: list[str] | None = None  # None: the known classes present in the data (ALL_CLASSES order)
    # start from this classifier's weights (bundled name, .safetensors or run folder): a lab adapts the
    # bundled typer with a few labelled crops of its own; its classes, backbone and ruler are kept
    init: str = ""
    # labelled sets of the labs a fine-tune must not forget: trained on beside ``data`` (their own
    # seeded split), drawn ``replay_share`` of the time; their held-out crops join validation
    replay: list[str] = field(default_factory=list)
    replay_share: float = 0.5
    # unlabelled single-WBC crops of other labs (folders or files): ``looks_share`` of the training
    # draws are redrawn in the look (colours around the cell) of one of them (:func:`transfer_look`)
    looks: list[str] = field(default_factory=list)
    looks_share: float = 0.5
    # a split JSON (a run's split.json or one of benchmarks/splits: "train" and "val" lists of
    # [crop path, class]) used as it is; empty: each labelled set split on its own, seeded by ``seed``.
    # Another seed with the same split changes only the initialisation and the draws.
    split: str = ""
    # the crops' colours as the network sees them (:func:`~hemaseg.data.transforms.crop_input`): "rgb", "grey"
    # (luminance only), "stain" (each crop redrawn with reference dyes and light) or "shape" (luminance beside
    # the WBC segmentation's nucleus and cell masks) or "shape-hue" (luminance, the dyes' red-blue balance, the
    # cell's parts in one channel): a lab's stain and lamp colours cannot decide a type;
    # docs/results.md, leave-one-lab-out
    colour: str = "rgb"
    # where a crop's square around its WBC leaves the image (crops cut tight on a WBC's box, as BCCD's):
    # "reflect" mirrors the image, "background" fills it with the slide's colour and, in training, cuts
    # ``tight_p`` of the draws tight around their cell (:func:`~hemaseg.data.transforms.cut_tight`)
    crop_padding: str = "reflect"
    tight_p: float = 0.3
    # MixStyle's probability (:func:`hemaseg.models.classifier.mix_style`): crops' feature styles mixed in
    # training after the backbone's first two stages; 0: none
    mixstyle: float = 0.0
    # 0: the draws are class-balanced over the pooled crops, so a lab holding most crops of a type (PBC)
    # gives most of that type's draws. N > 0: within each type the labs (the ``data`` folders) share its
    # draws in proportion to min(their crops of it, N) (:func:`draw_weights`): a small lab is not drowned
    # by a large one, and a lab's handful of crops of a type is not drawn as often as another's hundreds
    lab_balance: int = 0


def check_colour(colour: str) -> None:
    """:class:`HemasegUsageError` naming ``--colour`` unless ``colour`` is one of :data:`CROP_COLOURS`."""
    if colour not in CROP_COLOURS:
        raise HemasegUsageError("--colour", f"{colour}: one of {', '.join(CROP_COLOURS)}")


def check_crop_padding(padding: str) -> None:
    """:class:`HemasegUsageError` naming ``--crop-padding`` unless ``padding`` is one of :data:`CROP_PADDINGS`."""
    if padding not in CROP_PADDINGS:
        raise HemasegUsageError("--crop-padding", f"{padding}: one of {', '.join(CROP_PADDINGS)}")


def split_labelled(items: list[tuple[Path, str]], val_fraction: float, seed: int):
    """Seeded split stratified by class: (train, val) lists of (path, class)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    none = []
    for c in sorted({c for _, c in items}):
        group = sorted((p for p, k in items if k == c), key=str)
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * val_fraction)) if len(group) > 2 else 0
        none += [f"{c} ({len(group)})"] if n_val == 0 and val_fraction > 0 else []
        val += [(group[i], c) for i in order[:n_val]]
        train += [(group[i], c) for i in order[n_val:]]
    if none:  # their calls are never checked, and weigh in no checkpoint's choice nor the calibration
        log.warning(f"type(s) too small for a validation crop at --val-fraction {val_fraction:g}: {', '.join(none)}")
    return sorted(train, key=lambda t: str(t[0])), sorted(val, key=lambda t: str(t[0]))


def _files_only(paths: list[Path], state: dict | None = None) -> list[Path]:
    """The unlabelled images of --target-images / --looks that are files: a link to nothing, a loop of links or a
    name that is no file is said and left out (its ``stat`` ended the run with a traceback), and kept in ``state``'s
    ``left_out`` (`hemaseg train` ends with exit 1, as for any input left out)."""
    kept = []
    for p in paths:
        if Path(p).is_file():
            kept.append(p)
            continue
        reason = "a link to no file" if Path(p).is_symlink() else "no such file"
        log.warning("%s: %s; left out", p, reason)
        if state is not None and not any(f["image"] == str(p) for f in state.get("left_out", [])):
            state.setdefault("left_out", []).append({"image": str(p), "reason": reason})
    return kept


def _cache_key(path: Path, size: int, normalise: bool, padding: str) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|{normalise}|{padding}|v4".encode()
                        ).hexdigest()[:20]


PREPARE_CHUNK = 64  # crops normalised together (one batch through the WBC network)
WHITE_CELLS = (*TYPES, "ig")  # types whose crops hold a WBC the segmentation should find (not platelets)
MIN_CALIBRATION_CROPS = 30  # fewer validation crops fit no temperature (it is kept: the start model's, or 1)


def prepare_crops(paths: list[Path], size: int, normalise: bool, cache: Path, progress: bool = True,
                  padding: str = "reflect") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell-normalised crops (N, S, S, 3) uint8, their cell parts (N, S, S) uint8 (0 outside the cell,
    1 cytoplasm, 2 nucleus: :attr:`CellCrop.parts`) and rulers (N, 3) float32 (:attr:`CellCrop.extras`;
    zeros without normalisation), cached on disk. ``padding``: :func:`cell_crops`'."""
    cache.mkdir(parents=True, exist_ok=True)
    files = [cache / f"{_cache_key(Path(p), size, normalise, padding)}.npz" for p in paths]
    missing = [i for i, f in enumerate(files) if not f.exists()]
    chunks = [missing[i:i + PREPARE_CHUNK] for i in range(0, len(missing), PREPARE_CHUNK)]
    bad: list[HemasegInputError] = []
    for chunk in (track(chunks, "normalise crops", leave=False) if progress and chunks else chunks):
        images = []
        for i in list(chunk):  # every unreadable crop is named, not the first alone (each run showed one more)
            try:
                images.append(read_image(paths[i]))
            except HemasegInputError as exc:
                bad.append(exc)
                log.warning(f"{exc.path}: {exc.reason}")
                chunk.remove(i)
        if not chunk:
            continue
        if normalise:
            made = [(c.image, c.parts, c.extras) for c in cell_crops(images, size, padding=padding)]
        else:
            made = [(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA), np.zeros((size, size), np.uint8),
                     np.zeros(N_EXTRAS, np.float32)) for im in images]
        for i, (im, m, e) in zip(chunk, made):
            with atomic_path(files[i]) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, image=im, mask=m, extras=e)
    if bad:  # every bad crop named at once (the cache goes with a run folder this refused command created)
        where = os.path.commonpath([os.path.abspath(e.path) for e in bad])  # (the first crop was named twice)
        raise HemasegInputError(where if len(bad) > 1 else Path(where).parent, f"{len(bad)} crop(s) unreadable, each "
                                "named above: mend or remove them")
    if not files:
        return (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8),
                np.zeros((0, N_EXTRAS), np.float32))
    images, masks, extras = [], [], []
    for f in files:
        with np.load(f) as d:
            images.append(d["image"])
            masks.append(d["mask"])
            extras.append(d["extras"])
    return np.stack(images), np.stack(masks), np.stack(extras)


class CropDataset:
    """Cell crops + labels (-1 for unlabelled), augmented and normalised on access; ``masks`` are the
    crops' cell parts (:func:`prepare_crops`), moved with the crop by the augmentation's geometry."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, transform, background_p: float,
                 extras: np.ndarray | None = None, looks: np.ndarray | None = None, looks_share: float = 0.0,
                 colour: str = "rgb", tight_p: float = 0.0):
        self.images, self.masks, self.labels, self.colour, self.tight_p = images, masks, labels, colour, tight_p
        self.transform, self.background_p = transform, background_p
        self.extras = extras if extras is not None else np.zeros((len(images), N_EXTRAS), np.float32)
        # other labs' looks (M, 2, 3) and each crop's own, measured the same way (around its cell)
        self.looks, self.looks_share = looks, looks_share if looks is not None and len(looks) else 0.0
        self.own_looks = crop_looks(images, masks) if self.looks_share > 0 else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch

        image, parts = self.images[i], self.masks[i]
        new_background = self.background_p > 0 and parts.any()
        if self.looks_share > 0 or new_background or self.tight_p > 0:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
            if self.looks_share > 0 and rng.random() < self.looks_share:
                image = transfer_look(image, self.own_looks[i], self.looks[int(rng.integers(len(self.looks)))])
            if new_background and rng.random() < self.background_p:
                image = replace_background(image, parts > 0, rng)
            if self.tight_p > 0 and rng.random() < self.tight_p:
                image, parts = cut_tight(image, parts, rng)
        if self.transform is not None:
            out = self.transform(image=image, mask=parts)
            image, parts = out["image"], out["mask"]
        x = crop_input(image, self.colour, parts=parts)
        return torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(self.extras[i]), int(self.labels[i])


def crop_looks(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The look of each cell-normalised crop (N, 2, 3): :func:`look_stats` of the pixels around its
    cell (beyond the cell mask grown by a few pixels: the red cells and background), or of the whole
    crop when its cell was not found."""
    kernel = np.ones((7, 7), np.uint8)
    return np.stack([look_stats(im, ~cv2.dilate(m.astype(np.uint8), kernel).astype(bool)) if m.any()
                     else look_stats(im) for im, m in zip(images, masks)]) if len(images) else np.zeros((0, 2, 3), np.float32)


def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 128, tta: bool = True,
            extras: np.ndarray | None = None, temperature: float = 1.0, logits: bool = False,
            colour: str = "rgb", parts: np.ndarray | None = None) -> np.ndarray:
    """Softmax probabilities (N, K) of uint8 crops (N, S, S, 3) with their rulers ``extras`` (N, 3), seen
    as the model was trained (``colour``: its card's ``normalization.colour``; ``parts`` (N, S, S): the crops'
    cell parts, for a colour that needs them);
    ``tta`` averages the four 90° rotations (a cell has no orientation, so this is free accuracy).
    ``logits=True`` returns the (V, N, K) logits of every view instead (for calibration)."""
    import torch

    seen_as = {"normalization": {"colour": colour}}  # how the network saw its crops (:func:`to_tensor`)
    with torch.inference_mode():
        model.eval()
        out = []
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i:i + batch_size], seen_as, parts[i:i + batch_size] if parts is not None else None)
            e = torch.from_numpy(extras[i:i + batch_size]) if extras is not None else None
            lg = predict_logits(model, x, e, tta)
            out.append(lg.numpy() if logits else probs_from_logits(lg, temperature))
        if logits:
            return np.concatenate(out, 1) if out else np.zeros((4 if tta else 1, 0, model.n_classes), np.float32)
        return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)


def predict_as_trained(model: torch.nn.Module, card: dict, images: np.ndarray, parts: np.ndarray | None = None,
                       extras: np.ndarray | None = None, tta: bool = True) -> np.ndarray:
    """:func:`predict` with what the model's ``card`` says: its colours, its temperature, as many of the
    rulers ``extras`` as it takes. ``images``, ``parts``, ``extras``: as :func:`prepare_crops` returns them."""
    n = int(getattr(model, "extras", 0))
    return predict(model, images, tta=tta, extras=extras[:, :n] if n and extras is not None else None,
                   temperature=float(card.get("temperature", 1.0)),
                   colour=card.get("normalization", {}).get("colour", "rgb"), parts=parts)


def fit_temperature(view_logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the view-averaged probabilities
    of ``view_logits`` (V, N, K) for ``labels`` (temperature scaling, Guo et al. 2017), searched on a
    log grid from 0.25 to 8.

    >>> lg = np.array([[[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]])  # confident, one of four wrong
    >>> fit_temperature(lg, np.array([0, 0, 1, 1])) > 1.5
    True
    """
    import torch

    if len(labels) == 0:
        return 1.0
    lg = torch.from_numpy(np.asarray(view_logits, np.float32))
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 61))
    nll = [-np.log(np.maximum(probs_from_logits(lg, float(T))[np.arange(len(labels)), labels], 1e-12)).mean()
           for T in grid]
    return float(grid[int(np.argmin(nll))])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over ``bins``
    equal-width confidence bins weighted by their share of the crops.

    >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
    0.4
    """
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(conf[sel].mean() - (pred[sel] == labels[sel]).mean())
    return round(float(ece), 6)


def scores(probs: np.ndarray, labels: np.ndarray, classes: list[str] | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 over the model's classes; ``accuracy_5`` over the crops of the five WBC
    types with the prediction among those five (what every lab can be scored on); 4-class accuracy
    (seed 004's types) and 2-class (mono/poly) accuracy likewise; ECE."""
    classes = list(classes or TYPES)
    if len(labels) == 0:
        return {}
    rep = classification_report(labels, probs.argmax(1), classes)
    out = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}
    wbc = np.isin(np.array(classes)[labels], TYPES)
    if wbc.any():
        for mode, key in ((3, "accuracy_5"), (2, "accuracy_4"), (1, "accuracy_2")):
            names, q = group_probs(probs[wbc], classes, mode)
            truth = [classes[t] for t in labels[wbc]]
            if mode == 1:
                truth = ["MONONUCLEAR" if c in ("monocyte", "lymphocyte") else "POLYNUCLEAR" for c in truth]
            else:
                truth = [c.upper() for c in truth]
            keep = np.array([c in names for c in truth])
            if keep.any():
                t_idx = np.array([names.index(c) for c, k in zip(truth, keep) if k])
                out[key] = float((q[keep].argmax(1) == t_idx).mean())
    out["ece"] = expected_calibration_error(probs, labels)
    return out


def draw_weights(labels: np.ndarray, labs: np.ndarray, n_classes: int, lab_balance: int = 0) -> np.ndarray:
    """Each training crop's weight in the draws (they sum to 1).

    Class-balanced: every type gets the same share of the draws, but a type of a handful of crops (one
    basophil) is not drawn as often as the others (it would be memorised, not learned): its share is
    scaled down to its crops over a tenth of the largest type's. With ``lab_balance`` N > 0, within a
    type the labs (``labs``: each crop's lab index) share its draws in proportion to min(their crops of
    it, N), so a lab of a few dozen crops is not drowned by a lab of hundreds.

    Examples
    --------
    >>> labels, labs = np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 1, 0, 1])
    >>> [round(float(w), 3) for w in draw_weights(labels, labs, 2)]
    [0.125, 0.125, 0.125, 0.125, 0.25, 0.25]
    >>> [round(float(w), 3) for w in draw_weights(labels, labs, 2, lab_balance=1)]  # each lab half of a type
    [0.083, 0.083, 0.083, 0.25, 0.25, 0.25]
    """
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    floor = 0.1 * counts.max()
    w = 1.0 / np.maximum(counts[labels], floor)  # a type's draws: its crops over max(its crops, the floor)
    if lab_balance > 0:
        for c in np.unique(labels):
            in_c = labels == c
            type_share = counts[c] / max(counts[c], floor)
            lab_n = {k: int((labs[in_c] == k).sum()) for k in np.unique(labs[in_c])}
            total = sum(min(n, lab_balance) for n in lab_n.values())
            for k, n in lab_n.items():  # the type's draws split over its labs by min(crops, N), evenly within each
                w[in_c & (labs == k)] = type_share * min(n, lab_balance) / total / n
    return w / w.sum()


def _under(path: Path, root: str) -> bool:
    """``path`` lies in the folder ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def given_split(cfg: ClassifyConfig) -> tuple[list, list]:
    """``cfg.split``'s (train, val) lists of (crop path, type): paths relative to the working folder, as in
    benchmarks/splits. :class:`HemasegInputError` naming the file unless it lists existing crops of known
    types under ``cfg.data`` / ``cfg.replay``."""
    try:
        d = json.loads(Path(cfg.split).read_text())
        train, val = ([(Path(p).resolve(), str(c)) for p, c in d[part]] for part in ("train", "val"))
    except (OSError, KeyError, TypeError, ValueError):
        raise HemasegInputError(cfg.split, "not a wbc-type split: a JSON file with 'train' and 'val' lists of "
                                           "[crop, type]") from None
    outside = [p for p, _ in train + val if not any(_under(p, r) for r in [*cfg.data, *cfg.replay])]
    if outside:
        raise HemasegInputError(cfg.split, f"lists {len(outside)} crops outside --data (first: {outside[0]}): "
                                           "the split belongs to other data")
    missing = [p for p, _ in train + val if not p.exists()]
    if missing:
        raise HemasegInputError(cfg.split, f"lists {len(missing)} crops that do not exist (first: {missing[0]})")
    # the checkpoint is chosen on the validation crops: one it trains on too would choose it on what it learnt
    both = sorted({p for p, _ in train} & {p for p, _ in val})
    if both:
        raise HemasegInputError(cfg.split, f"lists {len(both)} crop(s) in both 'train' and 'val' (first: {both[0]}): "
                                           "the checkpoint would be chosen on crops it trained on")
    # --replay's crops are drawn from the split's train list: one listing none of them would train on the lab's own
    # crops alone while the card said replay (a walkthrough, stop 71)
    unlisted = [r for r in cfg.replay if not any(_under(p, r) for p, _ in train)]
    if unlisted:
        raise HemasegInputError(cfg.split, f"lists no training crop under --replay {unlisted[0]}: nothing of it would "
                                           "be replayed; list its crops in 'train', or leave --split out (the run then "
                                           "splits --data and --replay itself)")
    check_types(cfg.split, train + val)
    return train, val




def check_types(where: str, items: list[tuple[Path, str]]) -> None:
    """:class:`HemasegInputError` naming ``where`` when a (path, type) item's type is not a known cell type."""
    unknown = sorted({c for _, c in items} - set(ALL_CLASSES))
    if unknown:
        raise HemasegInputError(where, f"unknown cell types {unknown}; known: {list(ALL_CLASSES)}")


def load_split(cfg: ClassifyConfig, run: Path) -> tuple[list, list]:
    """The run's split (written on first use): ``cfg.split``'s lists, else every labelled set split on its
    own, seeded and stratified. A given split must name existing crops of known types
    (:class:`HemasegInputError` naming the file)."""
    path = run / "split.json"
    if path.exists():
        d = json.loads(path.read_text())
        train, val = [(Path(p), c) for p, c in d["train"]], [(Path(p), c) for p, c in d["val"]]
        if not cfg.split:  # crops added under --data since the run began: not used by a resumed run, and said
            listed = {real_path(p) for p, _ in train + val}  # (a loop of links among them: no RuntimeError)
            try:
                added = [p for root in [*cfg.data, *cfg.replay] if Path(root).is_dir()
                         for p, c in find_labelled_cells(root) if c != UNTYPED and real_path(p) not in listed]
            except (HemasegError, OSError, ValueError):
                added = []  # (a note only: a CSV or folder added since that cannot be read does not stop the resume)
            if added:
                log.warning("%d crop(s) under --data were added since the run began (e.g. %s): a resumed run trains "
                            "on the crops it began with; start a new run to use them", len(added), added[0])
        gone = [p for p, _ in train + val if not p.exists()]
        if gone:  # a resume after a crop was moved or deleted: a traceback before
            raise HemasegInputError(gone[0], f"listed in {path} but gone ({len(gone)} crop(s) of the run's split "
                                             "missing): put them back to resume, or start a new run")
        return train, val
    if cfg.split:
        (train, val), origin = given_split(cfg), {"from": str(cfg.split)}
    else:
        train, val, origin = [], [], {"seed": cfg.seed}
        for root in [*cfg.data, *cfg.replay]:
            items = find_labelled_cells(root)
            untyped = [p for p, c in items if c == UNTYPED]
            if untyped:  # `hemaseg crop`'s folder of crops not yet sorted: no type to learn (it refused the run)
                log.warning("%s: %d crop(s) in %s/ have no type yet (hemaseg crop's folder): left out of training",
                            root, len(untyped), UNTYPED)
                items = [(p, c) for p, c in items if c != UNTYPED]
            if not items:
                raise HemasegInputError(root, "no labelled cell images (ImageFolder tree or wbc-seg class CSV)"
                                        + (f"; only {UNTYPED}/ crops, which have no type yet" if untyped else ""))
            check_types(root, items)
            tr, va = split_labelled(items, cfg.val_fraction, cfg.seed)
            train += tr
            val += va
    write_json(path, {**origin, "train": [[str(p), c] for p, c in train], "val": [[str(p), c] for p, c in val]})
    return train, val


def one_cycle(optimizer, lr: float, epochs: int):
    """The classifier's learning-rate schedule, stepped once an epoch: one cycle (a tenth warming up, then
    cosine annealing) over ``epochs`` + 1 steps, so the last epoch still learns (over ``epochs`` steps it ran at
    lr / 1e5 and a 1-epoch fine-tune changed nothing); the warm-up share nudged where torch's phase boundary
    would fall on step 0 (``--epochs 10`` over 10 steps divided by zero).

    >>> import torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> _ = one_cycle(opt, 1.0, 1)
    >>> opt.param_groups[0]["lr"] > 0.01
    True
    """
    import torch

    steps = int(epochs) + 1
    pct = 0.1
    if abs(pct * steps - 1.0) < 1e-6:
        pct = 0.11
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=pct)


def headline(val_scores: dict) -> float:
    """The typer's validation headline, which chooses the checkpoint (and weighs a fine-tune's start against it):
    (accuracy + macro-F1) / 2."""
    return (val_scores["accuracy"] + val_scores["macro_f1"]) / 2


def fit_classifier(cfg: ClassifyConfig | None, run: str | Path, resume: bool = False, progress: bool = True,
                   max_epochs_this_call: int | None = None) -> dict:
    """Train (or resume) a WBC type classifier in folder ``run``; returns the final state."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    run = Path(run)
    cfg, state = start_or_resume(cfg, ClassifyConfig, run, resume, "wbc-type")
    check_colour(cfg.colour)
    check_crop_padding(cfg.crop_padding)
    if cfg.colour in NEEDS_PARTS and not cfg.normalise_cells:
        raise HemasegUsageError("--colour", f"{cfg.colour} needs the cells normalised (its masks come from that)")
    train, val = load_split(cfg, run)
    restore = resume and has_checkpoint(run)
    start = None
    if cfg.init and restore and "init_card" in state:
        # resumed after its first checkpoint: the weights are the checkpoint's and the start model's card is the
        # one it had when the run began (the --init file may since have changed or gone)
        start = (None, state["init_card"])
    elif cfg.init:
        start = load_model(cfg.init)
        state["init_card"] = start[1]
    if start is not None:
        if start[1].get("task") != "wbc-type":
            raise HemasegUsageError("--init", f"{cfg.init} is a {start[1].get('task')} model; --init needs a "
                                              "wbc-type model")
        if start[1]["architecture"]["name"] == "wbc-ensemble" and (cfg.mixstyle or cfg.target_images):
            raise HemasegUsageError("--init", f"{cfg.init} is an ensemble: it is fine-tuned as a whole, without "
                                              "MixStyle or DANN (--target-images); train a member for those")
        classes = list(start[1]["classes"])
        # the start model's input: the same crop size and normalisation
        cfg.size, cfg.normalise_cells = int(start[1].get("input_size", cfg.size)), bool(start[1].get("cell_normalised", True))
        cfg.colour = start[1].get("normalization", {}).get("colour", "rgb")
        cfg.crop_padding = crop_padding(start[1])
        unknown = sorted({k for _, k in train + val} - set(classes))
        if unknown:
            raise HemasegInputError(cfg.init, f"knows no {', '.join(unknown)}: its classes are {', '.join(classes)}")
    else:
        classes = list(cfg.classes or [c for c in ALL_CLASSES if c in {k for _, k in train + val}])
    cache = Path(cfg.cache) if cfg.cache else run / "crops"

    def crops_of(paths):  # this run's crops: its size, normalisation and padding
        return prepare_crops(paths, cfg.size, cfg.normalise_cells, cache, progress, cfg.crop_padding)

    # one pass over both parts, so that every unreadable crop is named in one run (prepare_crops)
    all_img, all_mask, all_ext = crops_of([p for p, _ in train + val])
    n_tr = len(train)
    tr_img, tr_mask, tr_ext = all_img[:n_tr], all_mask[:n_tr], all_ext[:n_tr]
    tr_lab = np.array([classes.index(c) for _, c in train])
    va_img, va_parts, va_ext = all_img[n_tr:], all_mask[n_tr:], all_ext[n_tr:]
    if cfg.normalise_cells:  # classify calls such a crop NO_WBC; here it would be learnt as its folder's white cell
        blank = [p for (p, c), m in zip(train + val, all_mask) if c in WHITE_CELLS and not m.any()]
        if blank:
            log.warning(f"{len(blank)} crop(s) of a white-cell type where no WBC is found, used as labelled (first: "
                        f"{blank[0]}); remove those that hold none")
    del all_img, all_mask, all_ext
    va_lab = np.array([classes.index(c) for _, c in val], int)
    if cfg.init and not cfg.replay and len(va_lab) < MIN_CALIBRATION_CROPS and not restore:
        # a lab's few corrections: the start was kept or replaced on one validation crop, and a model that forgot
        # three types shipped unsaid (a walkthrough, stop 69: PBC accuracy 0.960 -> 0.745, monocytes 1.00 -> 0.12)
        log.warning(f"the run keeps its start or an epoch, and picks the epoch, by {len(va_lab)} validation crop(s) of "
                    f"{len(set(va_lab.tolist()))} type(s): so few decide little, and the types they do not hold are "
                    "not checked, which a fine-tune on few crops forgets; give --replay (labelled crops of the labs "
                    "the start model knew, e.g. PBC's) or more crops")
    n_extras = (int(start[1]["architecture"]["kwargs"].get("extras", 0)) if start is not None
                else N_EXTRAS if cfg.extras else 0)
    if not n_extras:
        tr_ext, va_ext = tr_ext[:, :0], va_ext[:, :0]
    target = None
    if cfg.target_images:
        tpaths = _files_only(list_images(cfg.target_images, recursive=True), state)
        if not tpaths:
            raise HemasegInputError(cfg.target_images, "no target images")
        t_img, t_mask, t_ext = crops_of(tpaths)
        target = CropDataset(t_img, t_mask, -np.ones(len(t_img), int), None, cfg.background_p,
                             t_ext if n_extras else t_ext[:, :0], colour=cfg.colour)

    looks = None
    if cfg.looks:
        lpaths = _files_only([p for root in cfg.looks for p in list_images(root, recursive=True)], state)
        if not lpaths:
            raise HemasegInputError(", ".join(cfg.looks), "no images to take looks from")
        l_img, l_mask, _ = crops_of(lpaths)
        looks = crop_looks(l_img, l_mask)

    _seed_all(cfg.seed)
    arch_name = start[1]["architecture"]["name"] if start is not None else "wbc-classifier"
    arch_kwargs = ({**start[1]["architecture"]["kwargs"]} if start is not None else
                   {"backbone": cfg.backbone, "classes": len(classes), "dropout": 0.2, "domain_head": True,
                    "norm": cfg.norm, "extras": n_extras})
    if start is None and input_channels(cfg.colour) != 3:
        arch_kwargs["in_chans"] = input_channels(cfg.colour)
    # MixStyle is this run's training choice, not the start model's (a fine-tune decides for itself).
    arch_kwargs.pop("mixstyle", None)
    if cfg.mixstyle:
        arch_kwargs["mixstyle"] = cfg.mixstyle
    def keep_start(first) -> dict:
        """The start's validation figures, as each epoch's; its weights kept in the run (``run/start.*``)."""
        first_scores = scores(predict(first, va_img, extras=va_ext, colour=cfg.colour, parts=va_parts), va_lab, classes)
        save_model(first, run / "start", start[1])
        return {"metric": headline(first_scores), "scores": first_scores}

    model = create_model(arch_name, **arch_kwargs)
    if start is not None and not restore:  # fresh, or killed before its first checkpoint
        model.load_state_dict(start[0].state_dict())
        if cfg.init and len(va_lab) and "start" not in state:
            # the start scored on the run's validation crops and kept in the run when it begins: the end compares the
            # best epoch with it, a resumed run as an unbroken one, whatever becomes of the --init file
            state["start"] = keep_start(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = one_cycle(optimizer, cfg.lr, cfg.epochs)
    if restore:
        load_last(run, model, optimizer, scheduler)
    transform = classify_transform(cfg.augment)
    if target is not None:
        target.transform = transform
    dataset = CropDataset(tr_img, tr_mask, tr_lab, transform, cfg.background_p if cfg.augment else 0.0, tr_ext,
                          looks if cfg.augment else None, cfg.looks_share, cfg.colour,
                          cfg.tight_p if cfg.augment and cfg.crop_padding == "background" else 0.0)
    counts = np.bincount(tr_lab, minlength=len(classes)).astype(float)
    roots = [*cfg.data, *cfg.replay]
    labs = np.array([next((k for k, r in enumerate(roots) if _under(p, r)), len(roots)) for p, _ in train])
    sample_w = draw_weights(tr_lab, labs, len(classes), cfg.lab_balance)
    replayed = np.array([any(_under(p, r) for r in cfg.replay) for p, _ in train], bool)
    val_own = np.array([not any(_under(p, r) for r in cfg.replay) for p, _ in val], bool)  # the lab's own crops
    if replayed.any() and (~replayed).any():
        # The lab's own crops and the replayed labs' share the draws as asked, class-balanced within each.
        for part, share in ((replayed, cfg.replay_share), (~replayed, 1.0 - cfg.replay_share)):
            sample_w[part] = share * draw_weights(tr_lab[part], labs[part], len(classes), cfg.lab_balance)
    card = {
        # a fine-tune is named after its run, so a report or a card tells it from its start model
        "name": (f"{start[1].get('name', 'wbc-type').split(' fine-tuned (')[0]} fine-tuned ({run.resolve().name})"
                 if start is not None else
                 f"wbc-type-{arch_kwargs['backbone']}" if "backbone" in arch_kwargs else "wbc-type"),
        "task": "wbc-type",
        "classes": classes,
        "architecture": {"name": arch_name, "kwargs": arch_kwargs},
        "normalization": {"type": "percentile", "low": 1.0, "high": 99.0, "per_channel": True, "colour": cfg.colour},
        "input_size": cfg.size,
        "cell_normalised": cfg.normalise_cells,
        "crop_padding": cfg.crop_padding,
        "extras": ["log(WBC / red-cell diameter)", "red cells measured", "nucleus share of the cell"][:n_extras],
        "training": {"data": cfg.data, "target_images": cfg.target_images if not isinstance(cfg.target_images, list)
                     else f"{len(cfg.target_images)} images", "n_train": len(train), "n_val": len(val),
                     "class_counts": dict(zip(classes, counts.astype(int).tolist())), "seed": cfg.seed,
                     "augment": cfg.augment, "split": str((run / "split.json").resolve()), "init": cfg.init,
                     "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                     "samples_per_epoch": cfg.samples_per_epoch, "replay": cfg.replay or None,
                     "replay_share": cfg.replay_share if cfg.replay else None,
                     "n_train_data": int((~replayed).sum()), "n_val_data": int(val_own.sum()),
                     "lab_balance": cfg.lab_balance,
                     "looks": {"from": cfg.looks, "crops": 0 if looks is None else len(looks), "share": cfg.looks_share}
                     if cfg.looks else None},
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
        for x, e, y in (track(loader, f"epoch {epoch}/{cfg.epochs}", leave=False) if progress else loader):
            if t_iter is not None:
                try:
                    xt, et, _ = next(t_iter)
                except StopIteration:
                    t_iter = iter(torch.utils.data.DataLoader(target, batch_size=cfg.batch_size, shuffle=True,
                                                              generator=gen, drop_last=len(target) > cfg.batch_size))
                    xt, et, _ = next(t_iter)
                logits, dom = model.forward_dann(torch.cat([x, xt]), float(lambd), torch.cat([e, et]))
                dom_y = torch.cat([torch.zeros(len(x)), torch.ones(len(xt))])
                dloss = F.binary_cross_entropy_with_logits(dom, dom_y)
                loss = F.cross_entropy(logits[:len(x)], y, label_smoothing=cfg.label_smoothing) + cfg.dann_weight * dloss
                dlosses.append(dloss.item())
            else:
                loss = F.cross_entropy(model(x, e), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        val_scores = scores(predict(model, va_img, extras=va_ext, colour=cfg.colour, parts=va_parts), va_lab, classes) if len(va_lab) else {}
        metric = headline(val_scores) if val_scores else -float(np.mean(losses))
        entry = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), **val_scores, "metric": metric,
                 "seconds": round(time.time() - t0, 2)}
        if dlosses:
            entry["domain_loss"] = float(np.mean(dlosses))
        state["history"].append(entry)
        state["epoch"] = epoch
        card_now = {**card, "metrics": {"val": val_scores, "epoch": epoch}}
        models = {"last": (model, card_now)}
        if state["best_epoch"] == 0 or metric > state["best_metric"]:  # the first epoch is best whatever its score
            state["best_metric"], state["best_epoch"] = metric, epoch
            models["best"] = (model, card_now)
        if epoch - state["best_epoch"] >= cfg.patience:
            state["stopped_early"] = True
        state["versions"] = versions()
        # One unit: the weights, the optimizer and the state of this epoch, or (killed) the last epoch's.
        commit_checkpoint(run, state, models, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
        plot_curves(state["history"], run / "curves.png")
        log.info(f"epoch {epoch}/{cfg.epochs} loss {entry['train_loss']:.4f} "
                 + " ".join(f"{k} {v:.3f}" for k, v in val_scores.items()) + f" lr {lr:.2e} {entry['seconds']:.0f}s")

    # (a finished run resumed: its model stays as shipped)
    if (state["epoch"] >= cfg.epochs or state["stopped_early"]) and not state.get("finished"):
        model.load_state_dict(load_file(str(run / "best.safetensors")))
        best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
        shipped_epoch = state["best_epoch"]
        record = state.get("start")
        if not record and cfg.init and len(va_lab):  # a run begun before the start was kept in it: --init scored now
            try:
                first = create_model(arch_name, **arch_kwargs)
                first.load_state_dict(load_model(cfg.init)[0].state_dict())
                record = keep_start(first)
            except HemasegError as exc:
                log.warning("%s: the start model could not be scored against the run's best epoch (%s)", cfg.init,
                            getattr(exc, "reason", exc))
        if record:  # the start, scored when the run began on the same validation crops as each epoch
            card["training"]["start_metric"] = round(record["metric"], 4)  # (accuracy + macro-F1) / 2, as each epoch's
            # no epoch beat it: a tie ships the start too (as the docs say; the fine-tuned epoch was shipped)
            if record["metric"] >= state["best_metric"] and (run / "start.safetensors").is_file():
                model.load_state_dict(load_file(str(run / "start.safetensors")))
                best, shipped_epoch = record["scores"], 0
                say_start_shipped(card, state, cfg.init, record["metric"])
        val_scores = {k: best[k] for k in ("accuracy", "macro_f1", "accuracy_5", "accuracy_4", "accuracy_2", "ece")
                      if k in best}
        # too few validation crops cannot calibrate: 3-5 crops all right took the temperature to its 0.25 floor, a
        # 16-px crop then "LYMPHOCYTE 1.000"; the start model's temperature (or none) is kept, and said
        temperature = float(start[1].get("temperature", 1.0)) if start is not None else 1.0
        if len(va_lab) >= MIN_CALIBRATION_CROPS:
            # Calibration on the validation crops (the checkpoint was chosen on them too): one
            # temperature for all classes, so the ranking, hence the accuracy, is unchanged.
            temperature = fit_temperature(predict(model, va_img, extras=va_ext, logits=True, colour=cfg.colour, parts=va_parts), va_lab)
        elif len(va_lab):
            log.warning(f"{len(va_lab)} validation crops, fewer than {MIN_CALIBRATION_CROPS}: not calibrated on "
                        f"them; temperature {temperature:g} kept" + (" from the start model" if start is not None
                                                                    else ""))
        if len(va_lab) < MIN_CALIBRATION_CROPS and state.get("shipped") != "start":  # said in the card too (a report
            # called it "calibrated"; a start shipped keeps the temperature fitted to its own weights)
            card["training"]["temperature_not_fitted"] = (
                f"{len(va_lab)} validation crops, fewer than {MIN_CALIBRATION_CROPS}: "
                + ("the start model's temperature, kept" if start is not None else "none fitted"))
        if len(va_lab):
            probs = predict(model, va_img, extras=va_ext, temperature=temperature, colour=cfg.colour, parts=va_parts)
            val_scores["ece_uncalibrated"] = val_scores.get("ece", 0.0)
            val_scores["ece"] = expected_calibration_error(probs, va_lab)
            if cfg.replay and val_own.any():  # the pooled figures are mostly the replayed labs': the lab's own apart
                val_scores["data_only"] = {**scores(probs[val_own], va_lab[val_own], classes), "n": int(val_own.sum())}
            rep = classification_report(va_lab, probs.argmax(1), classes)
            plot_confusion(np.array(rep["confusion"]), classes, run / "confusion.png",
                           f"validation, epoch {shipped_epoch}: acc {rep['accuracy']:.3f}, "
                           f"macro-F1 {rep['macro_f1']:.3f}")
            state["val_report"] = rep
        state["finished"] = True
        commit_checkpoint(run, state, {"model": (model, {**card, "temperature": temperature,
                                                          "metrics": {"val": val_scores, "epoch": shipped_epoch}})})
    return state


def make_ensemble(models: list, out: str | Path, split: str | Path | None = None, cache: str | Path | None = None,
                  shared: list[str] | None = None, decides: int = 0, weights: list[float] | None = None,
                  progress: bool = True) -> dict:
    """One typer from trained ones that answer together (``wbc-ensemble``:
    :func:`hemaseg.models.classifier.wbc_ensemble`): their probabilities, each calibrated by its own
    temperature, averaged. Written as ``out``.safetensors and ``out``.json (the card names each member's
    training); the ensemble then runs, is exported and fine-tuned (``--init``) as one model.

    Parameters
    ----------
    models : the members (bundled names, weights files or run folders): ``wbc-classifier`` models of the
        same classes, crop size, cell normalisation, padding and percentiles; each keeps its own input
        (``normalization.colour``), the ensemble's being theirs joined by "+" ("rgb+shape").
    out : where to write it (a path without suffix).
    split : a split JSON (``{"val": [[crop, type], ...]}``, e.g. the members' own run's ``split.json``): its
        ``val`` crops calibrate the ensemble (one temperature) and give the card's validation figures.
        In-lab crops only: no member may have trained on them.
    cache : where the normalised crops are cached (default ``out``'s folder / ``crops``).
    shared, decides : the classes (names) within which the members' mean decides, member ``decides``
        alone deciding the others and the group's total (None: the mean decides every class).
    weights : each member's share of the mean (default equal).

    Returns
    -------
    The card written.
    """
    out = Path(out)
    loaded = [load_model(m) for m in models]
    if len(loaded) < 2:
        raise HemasegUsageError("models", "an ensemble needs at least two members")
    cards = [c for _, c in loaded]
    for m, c in zip(models, cards):
        if c.get("task") != "wbc-type" or c.get("architecture", {}).get("name") != "wbc-classifier":
            raise HemasegInputError(m, "not a wbc-classifier typer (an ensemble's members are single classifiers)")
        if c["architecture"].get("kwargs", {}).get("extras", 0):
            raise HemasegInputError(m, "takes the ruler (extras); an ensemble's members take none")

    def same(what: str, value) -> None:
        want = value(cards[0])
        for m, c in zip(models[1:], cards[1:]):
            if value(c) != want:
                raise HemasegInputError(m, f"its {what} ({value(c)!r}) differs from the first member's ({want!r})")

    same("classes", lambda c: list(c["classes"]))
    same("input size", lambda c: int(c.get("input_size", 96)))
    same("cell normalisation", lambda c: bool(c.get("cell_normalised", True)))
    same("crop padding", crop_padding)
    same("percentiles", lambda c: (c.get("normalization", {}).get("low", 1.0), c.get("normalization", {}).get("high", 99.0)))
    colours = [c.get("normalization", {}).get("colour", "rgb") for c in cards]
    if "+".join(colours) not in CROP_COLOURS:
        raise HemasegInputError(models[-1], f"the members' inputs joined, {'+'.join(colours)!r}, are not one of "
                                            f"{', '.join(CROP_COLOURS)}")
    members = []
    for c in cards:
        kw = {k: v for k, v in c["architecture"]["kwargs"].items() if k != "mixstyle"}
        members.append({**kw, "domain_head": False})
    kwargs = {"members": members, "temperatures": [float(c.get("temperature", 1.0)) for c in cards],
              "channels": [input_channels(col) for col in colours]}
    if weights is not None:
        if len(weights) != len(models) or min(weights) <= 0:
            raise HemasegUsageError("weights", f"{weights}: one positive weight per member")
        kwargs["weights"] = [float(w) for w in weights]
    if shared is not None:
        unknown = [c for c in shared if c not in cards[0]["classes"]]
        if unknown:
            raise HemasegUsageError("shared", f"{', '.join(unknown)}: not among the members' classes")
        kwargs.update(shared=[cards[0]["classes"].index(c) for c in shared], decides=int(decides))
    model = create_model("wbc-ensemble", **kwargs)
    for member, (module, _) in zip(model.members, loaded):
        member.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("domain.")})
    first = cards[0]
    norm = first.get("normalization", {})
    card = {
        "name": "wbc-type-ensemble",
        "task": "wbc-type",
        "classes": list(first["classes"]),
        "architecture": {"name": "wbc-ensemble", "kwargs": kwargs},
        "normalization": {"type": "percentile", "low": norm.get("low", 1.0), "high": norm.get("high", 99.0),
                          "per_channel": True, "colour": "+".join(colours)},
        "input_size": int(first.get("input_size", 96)),
        "cell_normalised": bool(first.get("cell_normalised", True)),
        "crop_padding": crop_padding(first),
        "extras": [],
        "training": {"data": sorted({d for c in cards for d in (c.get("training") or {}).get("data", [])}),
                     "members": [{"model": str(m), "name": c.get("name"), "colour": col, "training": c.get("training"),
                                  "temperature": c.get("temperature", 1.0), "metrics": c.get("metrics")}
                                 for m, c, col in zip(models, cards, colours)],
                     "split": str(split) if split else None},
        "versions": versions(),
    }
    temperature, val_scores = 1.0, {}
    if split:
        val = [(Path(p), c) for p, c in json.loads(Path(split).read_text())["val"]]
        classes = card["classes"]
        unknown = sorted({c for _, c in val} - set(classes))
        if unknown:
            raise HemasegInputError(split, f"holds {', '.join(unknown)}, which the members do not know")
        img, parts, ext = prepare_crops([p for p, _ in val], card["input_size"], card["cell_normalised"],
                                        Path(cache) if cache else out.parent / "crops", progress, card["crop_padding"])
        ext = ext[:, :model.extras]
        labels = np.array([classes.index(c) for _, c in val], int)
        # One pass (the four views' logits); the probabilities at any temperature follow from it (as predict's).
        logits = predict(model, img, extras=ext, logits=True, colour=card["normalization"]["colour"], parts=parts)
        temperature = fit_temperature(logits, labels)
        raw, probs = (softmax(logits / t, axis=-1).mean(0) for t in (1.0, temperature))
        val_scores = {**scores(probs, labels, classes), "ece_uncalibrated": expected_calibration_error(raw, labels)}
    card = {**card, "temperature": temperature, "metrics": {"val": val_scores}}
    save_model(model, out, card)
    return card
