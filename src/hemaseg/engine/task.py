"""What a task is to the engine: a class whose attributes say what it predicts and how its labels
look on disk, and whose methods are the hooks the engine, the evaluation and the command line
call. A task module subclasses :class:`Task`, overrides the hooks it needs and registers one
instance (:func:`hemaseg.tasks.register_task`); nothing outside its module compares its name.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np

from hemaseg.core.content import featureless
from hemaseg.core.options import OPTION_RANGES, check_numbers
from hemaseg.core.resize import MAX_FACTOR, MIN_FACTOR
from hemaseg.core.result import Segmentation
from hemaseg.engine.evaluate import class_panels, evaluate_pairs, plain_table
from hemaseg.engine.predict import get_model
from hemaseg.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hemaseg.engine.train import TrainConfig, fit, init_arch, pair_data, task_config
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.datasets import Pair, find_pairs
from hemaseg.io.images import check_mask_values, read_image, read_mask
from hemaseg.metrics import confusion_matrix, semantic_scores
from hemaseg.models.registry import list_models

log = logging.getLogger(__name__)


def params_from_card(params_class: type, card: dict | None = None, task_name: str = "", **overrides):
    """A post-processing parameters dataclass: its defaults, then the model card's ``"postprocess"``
    entry (as StarDist keeps thresholds beside the weights), then ``overrides`` (None values
    ignored). Unknown names raise :class:`ValueError` naming them and the known ones."""
    own = (card or {}).get("postprocess") or {}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in dataclasses.fields(params_class) if f.init}
    if not isinstance(own, dict) or set(own) - known:  # a card that would fail on every image, or late
        raise HemasegInputError((card or {}).get("name") or "model card",
                                f"its card's 'postprocess' names no post-processing parameter "
                                f"{', '.join(sorted(set(own) - known)) if isinstance(own, dict) else own!r} of "
                                f"{task_name or params_class.__name__}; known: {', '.join(sorted(known))}")
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{task_name or params_class.__name__} has no post-processing parameter "
                         f"{', '.join(unknown)}; known: {', '.join(sorted(known))}")
    pristine = params_class()
    try:  # the card's values checked and converted as --post's are (an int for a float, a list for a tuple)
        own = {k: param_value(pristine, k, v) for k, v in own.items()}
    except ValueError as exc:
        raise HemasegInputError((card or {}).get("name") or "model card", f"its card's 'postprocess': {exc}") from None
    defaults = params_class(**own)
    return dataclasses.replace(defaults, **{k: param_value(pristine, k, v) for k, v in overrides.items()})


def param_docs(params_class: type) -> dict[str, str]:
    """Each field's description from a parameters dataclass's numpydoc ``Parameters`` section (``name : text``,
    continued on deeper-indented lines), as one line of text.

    >>> from hemaseg.tasks.nuclei import NucleiParams
    >>> param_docs(NucleiParams)["seed_threshold"]
    'interior probability above which a pixel seeds a nucleus.'
    """
    docs: dict[str, list[str]] = {}
    current = None
    for line in (params_class.__doc__ or "").splitlines():
        m = re.match(r"^    (\w+) : (.*)$", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(params_class)}:
            current = m.group(1)
            docs[current] = [m.group(2).strip()]
        elif current and line.startswith("        ") and line.strip():
            docs[current].append(line.strip())
        else:
            current = None
    return {k: " ".join(v) for k, v in docs.items()}


def params_help(params, task_name: str = "") -> list[str]:
    """Lines listing each post-processing parameter of ``params`` (a parameters object, the model card's
    values applied): its name, its value, the class default when the card changed it, what it does (the
    first sentence of its description)."""
    docs, pristine = param_docs(type(params)), type(params)()
    lines = [f"post-processing parameters{f' of {task_name}' if task_name else ''} (--post NAME=VALUE; value "
             "for this model, [the default where its card sets another]):"]
    for f in dataclasses.fields(params):
        if not f.init:
            continue
        value, default = getattr(params, f.name), getattr(pristine, f.name)
        shown = json.dumps(value) if isinstance(value, (dict, list, tuple, bool)) or value is None else str(value)
        if isinstance(value, dict) and len(shown) > 60:
            shown = "{...}"
        if value != default:
            plain = not (isinstance(default, (dict, tuple, bool)) or default is None)
            shown += f" [{default if plain else json.dumps(default)}]"
        text = docs.get(f.name, "")
        first = re.split(r"\.\s+(?=[A-Z])", text)[0].rstrip(".")  # (not at "e.g. " or "i.e. ")
        lines.append(f"  {f.name} = {shown}: {first[:110]}{'...' if len(first) > 110 else ''}")
    return lines


def checked_params(params):
    """A complete post-processing parameters object with each field checked as :func:`param_value` checks
    a ``--post`` value (against the class's defaults), or :class:`ValueError` naming the first bad one.

    >>> from hemaseg.tasks.wbc import WbcParams
    >>> checked_params(WbcParams(red_ring=0.2)).red_ring
    0.2
    >>> checked_params(WbcParams(block_size=0))
    Traceback (most recent call last):
    ...
    ValueError: block_size takes a number at least 64
    """
    defaults = type(params)()
    return dataclasses.replace(params, **{f.name: param_value(defaults, f.name, getattr(params, f.name))
                                          for f in dataclasses.fields(params) if f.init})


def given_params(task, card: dict | None, params):
    """The post-processing parameters a caller gave ``task`` (``params=`` of :func:`hemaseg.segment` and
    :func:`hemaseg.analyze`): None stays None (the card's and the defaults); a dict of names and values
    goes over the model ``card``'s own (``"postprocess"``) and the defaults; a complete ``task.Params``
    object has each field checked as a ``--post`` value is. :class:`HemasegUsageError` (``params``)
    for anything else, an unknown name or a value the field does not take.

    >>> from hemaseg.tasks import get_task
    >>> given_params(get_task("wbc"), {}, {"red_ring": 0.2}).red_ring
    0.2
    >>> given_params(get_task("wbc"), {}, "red_ring=0.2")
    Traceback (most recent call last):
    ...
    hemaseg.errors.HemasegUsageError: params: a str; give a dict of names and values or a WbcParams
    """
    if params is None:
        return None
    if not isinstance(params, dict) and not (task.Params and isinstance(params, task.Params)):
        raise HemasegUsageError("params", f"a {type(params).__name__}; give a dict of names and values"
                                          + (f" or a {task.Params.__name__}" if task.Params else ""))
    try:
        if isinstance(params, dict):  # names -> values over the card's own ("postprocess") and the defaults
            known = {f.name for f in dataclasses.fields(task.Params) if f.init} if task.Params else set()
            unknown = sorted(set(params) - known)  # (whatever its value: a None given for one was ignored unsaid)
            if unknown:
                raise ValueError(f"{task.name} has no post-processing parameter {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(known))}")
            chosen = task.params(card, **params)  # (which reads a None as "not given")
            # a None given is a value, as --post NAME=null is (a review, stop 71: analyze --post platelet_rescore=null
            # kept the card's re-scorer, where segment's --post turned it off)
            nones = [k for k, v in params.items() if v is None and _takes_none(type(chosen)(), k)]
            return dataclasses.replace(chosen, **dict.fromkeys(nones)) if nones else chosen
        return checked_params(params)  # a complete object: each field as a --post value is checked
    except ValueError as exc:
        raise HemasegUsageError("params", str(exc)) from None


def _takes_none(defaults, name: str) -> bool:
    """Whether parameter ``name`` takes None as a value (``platelet_rescore``: none), as ``--post NAME=null`` sets it;
    for the others a None given means "not given"."""
    try:
        return param_value(defaults, name, None) is None
    except (ValueError, AttributeError):  # (an unknown name: refused by params_from_card's own check, or not asked)
        return False


def param_value(defaults, name: str, value):
    """``value`` as the post-processing parameter ``name`` of ``defaults`` (a parameters dataclass) takes
    it, or :class:`ValueError` saying what it takes: text is read as ``--post NAME=VALUE`` reads it (JSON,
    ``true`` / ``false``; a tuple's numbers also as ``0.5,1,2`` or ``(0.5, 1)``), numpy numbers as Python's,
    a list as a tuple; numbers must be finite and within
    the range the parameters class gives the name (its ``RANGES``), else not negative.

    >>> from hemaseg.tasks.wbc import WbcParams
    >>> param_value(WbcParams(), "red_ring", "0.2"), param_value(WbcParams(), "red_cytoplasm", "false")
    (0.2, False)
    >>> [param_value(WbcParams(), "first_pass_factors", t) for t in ("0.5,1", "(0.5, 1.0)", "[0.5, 1]", "2")]
    [(0.5, 1.0), (0.5, 1.0), (0.5, 1), (2.0,)]
    >>> param_value(WbcParams(), "red_ring", -1)
    Traceback (most recent call last):
    ...
    ValueError: red_ring takes a number from 0.0 to 10.0
    >>> param_value(WbcParams(), "block_size", 0)
    Traceback (most recent call last):
    ...
    ValueError: block_size takes a number at least 64
    """
    default = getattr(type(defaults)(), name)  # the class's own: a card's value does not change what it takes
    field = next(f for f in dataclasses.fields(defaults) if f.name == name)
    if isinstance(default, str) and isinstance(value, os.PathLike):  # a model given as a path
        value = os.fspath(value)
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            value = json.loads(text.lower() if text.lower() in ("true", "false") else text)
        except json.JSONDecodeError:
            pass
        if isinstance(default, tuple) and not isinstance(value, list):  # 0.5,1,2 or (0.5, 1) or one number
            try:
                value = [float(v) for v in text.strip("()[] ").split(",") if v.strip()]
            except ValueError:
                pass
    if isinstance(value, np.generic):
        value = value.item()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = number and float(value).is_integer()
        value = int(value) if ok else value
    elif isinstance(default, float):
        ok = number
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value)
        value = tuple(value) if ok else value
    elif isinstance(default, dict) and default and all(isinstance(v, (int, float)) for v in default.values()):
        # a number per key (cells' relative_size): the same keys, each a number
        if isinstance(value, dict):
            value = {k: v.item() if isinstance(v, np.generic) else v for k, v in value.items()}
        ok = isinstance(value, dict) and set(value) == set(default) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())
        if not ok:
            raise ValueError(f"{name} takes a number for each of {', '.join(default)} (default "
                             f"{json.dumps(default)})")
    elif default is None and value is not None and {"float", "int"} & set(str(field.type).replace("|", " ").split()):
        ok = number  # a number or None (off): smear10's clump_ratio
        if not ok:
            raise ValueError(f"{name} takes a number, or null for none (default null)")
    elif default is None and value is not None and "dict" in str(field.type):
        ok = isinstance(value, dict)  # a dict or None (cells' platelet_rescore; its contents: CHECKS below)
        if not ok:
            raise ValueError(f"{name} takes a JSON object, or null for none (default null)")
    else:
        ok = default is None or isinstance(value, type(default))
    if not ok:
        if isinstance(default, tuple):
            raise ValueError(f"{name} takes numbers separated by commas (default {','.join(map(str, default))})")
        own = getattr(defaults, name, default)  # the model's value, where its card sets one (nuclei: seed 0.4, not 0.5)
        shown = repr(own) if len(repr(own)) <= 60 else "the model card's"
        kind = type(default).__name__
        whose = "this model's:" if own != default else "default"  # (the Python API checks against the class's)
        raise ValueError(f"{name} takes {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({whose} {shown})")
    check = getattr(type(defaults), "CHECKS", {}).get(name)  # what a type cannot say (a re-scorer's fields)
    if check is not None:
        check(value)
    numbers = [v for v in (value.values() if isinstance(value, dict) and isinstance(default, dict) and default
                           else value if isinstance(value, tuple) else (value,))
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(not math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} must be a finite number")
    bounds = getattr(type(defaults), "RANGES", {}).get(name)
    if bounds is None:
        if any(v < 0 for v in numbers):
            raise ValueError(f"{name} must not be negative")
        return value
    lo, hi = bounds[:2]
    if isinstance(value, tuple) and len(value) < (bounds[2] if len(bounds) > 2 else 0):
        raise ValueError(f"{name} takes at least {bounds[2]} number{'s' if bounds[2] > 1 else ''}")
    if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in numbers):
        span = f"from {lo} to {hi}" if lo is not None and hi is not None else f"at least {lo}" if lo is not None \
            else f"at most {hi}"
        raise ValueError(f"{name} takes {'numbers' if isinstance(value, tuple) else 'a number'} {span}")
    return value


# Training options every trainable task takes (``hemaseg train``); tasks add theirs in ``train_options``.
COMMON_TRAIN_OPTIONS = ("data", "epochs", "batch_size", "lr", "crop", "samples_per_epoch", "patience", "augment",
                        "val_fraction", "seed")
ARCH_ALIASES = {"maskrcnn": "maskrcnn-light"}


def check_options(task_name: str, given: dict, accepted) -> None:
    """:class:`HemasegUsageError` for the first of ``given`` (non-None options) not in ``accepted``,
    or a numeric one outside its range (:func:`hemaseg.core.options.check_numbers`)."""
    for k in given:
        if k not in accepted:
            raise HemasegUsageError("--" + k.replace("_", "-"), f"not an option of task {task_name}")
    check_numbers(**{k: v for k, v in given.items() if k in OPTION_RANGES and v is not None})


class Task:
    """Base class of every task. Attributes describe the task; methods are its hooks.

    Attributes
    ----------
    name : the name users type (``segment --task NAME``, ``train NAME``, ``evaluate NAME``).
    classes : the network's classes, index = class index.
    label_values : value written to the label PNG for each class index.
    colors : overlay colour (RGB) per class index.
    default_model : bundled model used when none is given.
    description : one line for help texts.
    depends : names of the tasks this one uses (the layer test checks its imports against it).
    classical_methods : names of the classical methods :meth:`segment_classical` accepts.
    Params : dataclass of the post-processing parameters (None: the task has none); defaults
        are overridden by the model card's ``"postprocess"`` entry, then by the caller.
    train_defaults : :class:`hemaseg.engine.train.TrainConfig` fields that differ for this task.
    train_options : ``hemaseg train`` options this task takes besides :data:`COMMON_TRAIN_OPTIONS`.
    train_archs : the registry architectures ``hemaseg train --arch`` may name for this task.
    needs_data : training needs ``--data`` (a task that composes its own images does not).
    supports_tta : ``segment --tta`` (test-time flips) means something for this task's models.
    label_suffixes : file-name endings of :meth:`label_images` ("" is ``<stem>.png``), known before any
        image is segmented so output names are checked up front.
    run_files : files and folders of a training run besides the engine's (removed by ``train --overwrite``).
    nested_loss : the Dice term treats classes as nested regions (cell contains nucleus).
    grid_title : what ``evaluate --grid`` draws for this task (said with the file's name).
    """

    name: str = ""
    classes: tuple[str, ...] = ()
    label_values: tuple[int, ...] = ()
    colors: dict[int, tuple[int, int, int]] = {}
    default_model: str = ""
    description: str = ""
    depends: tuple[str, ...] = ()
    classical_methods: tuple[str, ...] = ()
    Params: type | None = None
    train_defaults: dict = {}
    train_options: tuple[str, ...] = ("arch", "init", "workers")
    train_archs: tuple[str, ...] = ("unet-dropout", "smp-unet")  # what --arch may name (the U-Net loop's networks)
    needs_data: bool = True
    supports_tta: bool = False
    label_suffixes: tuple[str, ...] = ("",)
    run_files: tuple[str, ...] = ()
    nested_loss: bool = True
    mean_keys: tuple[str, ...] = ()  # evaluation scores averaged over images (default: every float score)
    grid_title: str = "worst cases"

    # ---- post-processing parameters -------------------------------------------------------

    def params(self, card: dict | None = None, **overrides):
        """The task's :attr:`Params`: defaults, then the card's ``"postprocess"``, then ``overrides``
        (None values ignored). Unknown names raise :class:`ValueError` naming them."""
        if self.Params is None:
            return None
        return params_from_card(self.Params, card, self.name, **overrides)

    # ---- inference ------------------------------------------------------------------------

    @property
    def can_segment(self) -> bool:
        """The task has a segmentation model (``hemaseg segment --task NAME``)."""
        return type(self).segment is not Task.segment

    def predict(self, image: np.ndarray, model=None, cell_diameter: float | None = None, device: str = "cpu",
                tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, tta: bool | None = None,
                params=None, method: str | None = None) -> Segmentation:
        """What every caller runs: the options checked (:func:`hemaseg.core.options.check_numbers`),
        an image with nothing in it (:func:`hemaseg.core.content.featureless`) answered with no
        object without asking the model, else :meth:`segment` (or :meth:`segment_classical` for
        a classical ``method``)."""
        check_numbers(cell_diameter=cell_diameter, tile=tile, overlap=overlap)
        if featureless(image):
            card = get_model(model, device)[1] if method is None else {}
            seg = self.empty(image, card, cell_diameter)
            if method is not None:  # a classical method says no source (it sizes by what it finds)
                seg.diameter_from = ""
            return seg
        if method is not None:
            return self.segment_classical(image, method)
        seg = self.segment(image, model, cell_diameter, device, tile, overlap, tta, params)
        if cell_diameter:
            seg.diameter_from = "given"
        at_bound = [b for b in (MIN_FACTOR, MAX_FACTOR) if abs(seg.scale - b) < 1e-6]
        if at_bound:  # the size its cells need may lie beyond (a walkthrough, stop 71: an 8000x6000 photo's red cells
            # of ~1,450 px, run at 0.1x, read 645 px and cut in pieces; said nowhere)
            small = at_bound[0] == MIN_FACTOR
            trained = float(get_model(model, device)[1].get("cell_diameter") or 0)
            reach = f"cells of {trained / seg.scale:.0f} px reach its trained {trained:.0f} px there; " if trained else ""
            log.warning("%s: run at %gx, the %s scale the model is run at: %sthese are %.0f px (%s); results may be "
                        "wrong (%s the image first, or give --cell-diameter)", self.name, seg.scale,
                        "smallest" if small else "largest", reach, seg.cell_diameter,
                        "given" if cell_diameter else "as measured at that scale", "shrink" if small else "enlarge")
        return seg

    def empty(self, image: np.ndarray, card: dict | None = None, cell_diameter: float | None = None) -> Segmentation:
        """The result of an image with no cell: every pixel background (probability 1), no object."""
        h, w = image.shape[:2]
        probs = np.zeros((len(self.classes), h, w), np.float32)
        probs[0] = 1.0
        diameter = float(cell_diameter or (card or {}).get("cell_diameter") or 0.0)
        return Segmentation(np.zeros((h, w), np.uint8), np.zeros((h, w), np.int32), probs, diameter, 1.0, [],
                            "given" if cell_diameter else "model")

    def segment(self, image: np.ndarray, model, cell_diameter: float | None = None, device: str = "cpu",
                tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, tta: bool | None = None,
                params=None) -> Segmentation:
        """Segment an (H, W, 3) uint8 image with ``model`` ((module, card) or a name/path)."""
        raise HemasegInputError(self.name, "this task has no segmentation model")

    def segment_classical(self, image: np.ndarray, method: str) -> Segmentation:
        """Segment with a classical method of :attr:`classical_methods` (no model)."""
        raise HemasegInputError(method, f"task {self.name} has no classical methods")

    def label_images(self, seg: Segmentation) -> dict[str, np.ndarray]:
        """The label files of ``hemaseg segment``: {file-name suffix: array}; "" is ``<stem>.png``."""
        return {"": np.asarray(self.label_values, np.uint8)[seg.classes]}

    # ---- data -----------------------------------------------------------------------------

    def find_samples(self, root: str | Path) -> list[Pair]:
        """Annotated (image, label) file pairs under ``root``."""
        return find_pairs(root)

    def find_scored(self, root: str | Path, failed: list[dict]) -> list[Pair]:
        """The pairs evaluation scores under ``root``: :meth:`find_samples`'s. Images found without labels
        are listed in ``failed`` ({"image", "reason"}) here, so that ``hemaseg evaluate`` says so (one line
        each, exit 1) instead of scoring fewer images unsaid: by default those of paired ``images/`` +
        ``masks/`` folders (:func:`~hemaseg.io.datasets.find_pairs`) when the task reads that layout."""
        pairs = self.find_samples(root)
        listed: list[dict] = []
        paired = find_pairs(root, listed) if Path(root).is_dir() else []
        if paired and {p.image for p in paired} <= {p.image for p in pairs}:  # the task read those layouts
            failed += listed
        return pairs

    def scored_files(self, root: str | Path) -> list[Path]:
        """Every file (or a DSB id's ``masks/`` folder) ``hemaseg evaluate`` reads under ``root``: the images
        and masks of :meth:`find_scored`'s pairs. Tasks with readers of their own name their images (and
        maps) here; the CLI refuses to write an output over any of them."""
        failed: list[dict] = []  # images found without their mask are the user's data too
        pairs = self.find_scored(root, failed)
        return [f for x in pairs for f in (Path(x.image), Path(x.mask))] + [Path(f["image"]) for f in failed]

    def load_sample(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) uint8 image, (H, W) target): label values mapped to class indices."""
        image = read_image(pair.image)
        mask = read_mask(pair.mask, image.shape[:2])
        check_mask_values(pair.mask, mask, self.label_values, "/".join(
            f"{v} {c}" for v, c in zip(self.label_values, self.classes)))
        lut = np.zeros(max(max(self.label_values), int(mask.max())) + 1, np.uint8)
        for k, v in enumerate(self.label_values):
            lut[v] = k
        return image, lut[mask]

    def target(self, mask: np.ndarray) -> np.ndarray:
        """Network target of an (augmented) loaded mask: the mask itself by default."""
        return mask

    def measure_mask(self, mask: np.ndarray) -> np.ndarray:
        """The part of a loaded mask whose objects give the model card's cell diameter (the whole
        mask by default; a task with weak labels keeps only its real cells)."""
        return mask

    def aux_outputs(self, cfg) -> tuple[str, ...]:
        """Names of the outputs a run of ``cfg`` learns beside the classes (sigmoid channels after
        them, each taught by :meth:`aux_target`; listed as ``"aux_outputs"`` in the model card). None by default."""
        return ()

    def aux_target(self, mask: np.ndarray) -> np.ndarray:
        """(R, H, W) float targets in [0, 1] of :meth:`aux_outputs` for an (augmented) loaded mask."""
        raise NotImplementedError(f"task {self.name} has no extra outputs")

    def stratum(self, image: np.ndarray, mask: np.ndarray) -> str:
        """Name of the group a loaded sample belongs to (e.g. its imaging modality): the split keeps
        every group in validation and ``stratum_weights`` balances them in training. One group by default."""
        return ""

    # ---- training -------------------------------------------------------------------------

    def train_data(self, cfg, run: Path, state: dict) -> tuple:
        """(training dataset, validation items, model-card fields) for :func:`hemaseg.engine.train.fit`:
        by default image/label pairs split once and written to ``run/split.json``."""
        return pair_data(self, cfg, run, state)

    def fit(self, cfg, run: str | Path, resume: bool = False, progress: bool = True,
            max_epochs_this_call: int | None = None) -> dict:
        """Train (``cfg``) or resume (``resume=True``, ``cfg`` None) a run in folder ``run``."""
        return fit(self, cfg, run, resume, progress, max_epochs_this_call)

    def train_config(self, **options) -> TrainConfig:
        """The :class:`TrainConfig` of ``hemaseg train``'s options (None: the task's default);
        :class:`HemasegUsageError` for an option this task does not take or a bad value."""
        given = {k: v for k, v in options.items() if v is not None}
        check_options(self.name, given, COMMON_TRAIN_OPTIONS + self.train_options)
        if self.needs_data and not given.get("data"):
            raise HemasegUsageError("--data", f"task {self.name} trains on annotated images: give --data DIR")
        asked = given.pop("arch", None)
        arch = ARCH_ALIASES.get(asked or "unet-dropout", asked or "unet-dropout")
        trainable = [a for a in self.train_archs if a in list_models()]
        if arch not in trainable:
            known = f"an architecture task {self.name} does not train" if arch in list_models() else "unknown architecture"
            raise HemasegUsageError("--arch", f"{arch}: {known}; give one of {', '.join(trainable)}")
        arch_kwargs = None if arch == "unet-dropout" else {}
        if given.get("init"):
            start = init_arch(given["init"], self.name)
            if asked is not None and start[0] != arch:  # the run takes its start's architecture: it was dropped unsaid
                raise HemasegUsageError("--arch", f"{asked}: --init {given['init']} is a {start[0]}, whose "
                                                  "architecture the run takes; leave --arch out")
            arch, arch_kwargs = start
        fields = set(TrainConfig.__dataclass_fields__)
        return task_config(self, arch=arch, arch_kwargs=arch_kwargs, **{k: v for k, v in given.items() if k in fields})

    def validate(self, probs_of, items: list, cfg, data_card: dict) -> dict[str, float]:
        """Validation scores during training; ``probs_of(image)`` is the network's (K, H, W)
        probabilities at native scale. Default: pixel accuracy and mean IoU over all items."""
        k = len(self.classes)
        cm = np.zeros((k, k), np.int64)
        for image, target in items:
            cm += confusion_matrix(target.ravel(), probs_of(image).argmax(0).ravel(), k)
        s = semantic_scores(cm)
        return {"pixel_accuracy": s["pixel_accuracy"], "mean_iou": s["mean_iou"]} if items else {}

    def headline(self, val: dict[str, float]) -> float:
        """The single validation figure that picks the best checkpoint."""
        return val["mean_iou"] if val else float("nan")

    # ---- evaluation -----------------------------------------------------------------------

    def score(self, seg: Segmentation, target: np.ndarray, image: np.ndarray) -> dict:
        """Scores of one prediction against its target (keys ending up in the evaluation table)."""
        k = len(self.classes)
        s = semantic_scores(confusion_matrix(target.ravel(), seg.classes.ravel(), k))
        return {"pixel_accuracy": s["pixel_accuracy"], "mean_iou": s["mean_iou"]}

    def evaluate(self, data: list, model=None, split=None, cell_diameter: float | None = None,
                 device: str = "cpu", grid: Path | None = None, method: str | None = None, params=None) -> dict:
        """Score ``model`` (or a classical ``method``) on the annotated images under ``data``."""
        return evaluate_pairs(self, data, model, split, cell_diameter, device, grid, method, params)

    def summarise(self, rows: list[dict], keys: list[str]) -> dict:
        """Extra entries of the evaluation result computed from the per-image rows (e.g. per modality)."""
        return {}

    def panels(self, image: np.ndarray, target: np.ndarray, pred: tuple) -> list[np.ndarray]:
        """Ground-truth and prediction panels of the worst-case grid; ``pred`` is (classes, instances)."""
        return class_panels(image, target, pred, self.colors)

    def row_title(self, row: dict) -> str:
        """Title of a prediction panel in the worst-case grid."""
        keys = [k for k in (self.mean_keys or row) if isinstance(row.get(k), float) and k != "seconds"][:2]
        return "pred: " + " ".join(f"{k} {row[k]:.3f}" for k in keys)

    def table(self, res: dict) -> list[str]:
        """Lines of the evaluation table printed by ``hemaseg evaluate``."""
        return plain_table(res)
