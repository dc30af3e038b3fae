"""The ``wbc-type`` task (seeds 003, 004): the type of a white cell from a single-cell crop.

- :mod:`.crops`: the cell normaliser (each crop centred on its WBC, found by the ``wbc`` task,
  and rescaled to one cell size), the classifier's prediction, seed 004's groupings, and the
  crops of WBCs found in a whole image (what ``analyze`` and ``smear10`` type);
- :mod:`.train`: its training loop (a classifier, not a segmentation: its own config);
- :mod:`.explain`: Grad-CAM and t-SNE.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hemaseg.core.vocabulary import UNTYPED
from hemaseg.engine.evaluate import find_each, nothing_scored, own_training_note
from hemaseg.engine.plots import plot_confusion
from hemaseg.engine.predict import model_of_task
from hemaseg.engine.task import COMMON_TRAIN_OPTIONS, Task, check_options
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.datasets import find_labelled_cells
from hemaseg.io.images import list_images, read_image
from hemaseg.metrics import classification_report
from hemaseg.tasks.registry import register_task
from hemaseg.tasks.wbc_type.crops import CLASSES, NO_WBC, crops_each, predict_crops
from hemaseg.tasks.wbc_type.train import (
    ClassifyConfig,
    check_colour,
    check_crop_padding,
    expected_calibration_error,
    fit_classifier,
    given_split,
)

DEPENDS = ("wbc",)
EVALUATE_CHUNK = 256  # crops read and normalised together by ``hemaseg evaluate wbc-type``


class WbcTypeTask(Task):
    """WBC type of a single-cell crop; trained by its own loop (:func:`.train.fit_classifier`)."""

    name = "wbc-type"
    classes = CLASSES
    label_values = tuple(range(len(CLASSES)))
    default_model = "wbc-type"
    grid_title = "confusion matrix"  # evaluate --grid
    description = "WBC type of a single-cell crop"
    depends = DEPENDS

    train_options = ("target_images", "backbone", "normalise_cells", "init", "replay", "ruler", "looks", "split", "colour",
                     "crop_padding", "lab_balance")

    def train_config(self, **options) -> ClassifyConfig:
        """A :class:`ClassifyConfig` from ``hemaseg train``'s options (None: the default; ``crop`` is
        the input size); :class:`HemasegUsageError` for an option a classifier does not take."""
        given = {k: v for k, v in options.items() if v is not None}
        check_options(self.name, given, COMMON_TRAIN_OPTIONS + self.train_options)
        if not given.get("data"):
            raise HemasegUsageError("--data", "give --data DIR (ImageFolder trees or wbc-seg + class CSV)")
        if given.get("init"):  # taken from the start model: a value here was recorded in state.json and not used
            for option in ("crop", "backbone", "ruler", "normalise_cells"):
                if option in given:
                    raise HemasegUsageError("--" + option.replace("_", "-"), "a fine-tune (--init) keeps its start "
                                                                             "model's network and input; leave this "
                                                                             "option out")
        elif given.get("replay"):  # trained from scratch beside the replayed labs: what --data does already
            raise HemasegUsageError("--replay", "replays the labs a fine-tune must not forget: give it with --init, "
                                                "or give those labs as --data")
        for r in given.get("replay") or ():
            same = [d for d in given["data"] if Path(d).resolve() == Path(r).resolve()
                    or Path(r).resolve() in Path(d).resolve().parents or Path(d).resolve() in Path(r).resolve().parents]
            if same:  # every crop drawn twice, its validation crops doubled
                raise HemasegUsageError("--replay", f"{r} is (or holds, or lies in) --data {same[0]}: give each lab once")
        if "crop" in given:
            given["size"] = given.pop("crop")
        for d in given.get("looks") or ():  # checked before the run folder is made
            if not Path(d).exists():
                raise HemasegUsageError("--looks", f"{d}: no such folder or file")
            if not list_images(d, recursive=True):
                raise HemasegUsageError("--looks", f"{d}: no images to take looks from")
        if "ruler" in given:
            given["extras"] = given.pop("ruler")
        check_colour(given.get("colour", "rgb"))
        check_crop_padding(given.get("crop_padding", "reflect"))
        if given.get("lab_balance", 0) < 0:
            raise HemasegUsageError("--lab-balance", f"{given['lab_balance']}: 0 (off) or a number of crops")
        for option in ("colour", "crop_padding"):
            if given.get("init") and option in given:
                raise HemasegUsageError("--" + option.replace("_", "-"), "a fine-tune (--init) sees crops as its start "
                                                                         "model did; leave this option out")
        cfg = ClassifyConfig(**given)
        if cfg.split:  # checked before the run folder is made
            given_split(cfg)
        return cfg

    def fit(self, cfg, run: str | Path, resume: bool = False, progress: bool = True,
            max_epochs_this_call: int | None = None) -> dict:
        return fit_classifier(cfg, run, resume, progress, max_epochs_this_call)

    def scored_files(self, root: str | Path) -> list[Path]:
        """The labelled crops under ``root`` (``<type>/`` folders, or wbc-seg with its class CSV)."""
        return [Path(p) for p, _ in find_labelled_cells(root)]

    def evaluate(self, data: list, model=None, split=None, cell_diameter: float | None = None,
                 device: str = "cpu", grid: Path | None = None, method: str | None = None, params=None) -> dict:
        """Score a typer on labelled single-cell crops (ImageFolder trees, or wbc-seg with its class CSV):
        accuracy, macro-F1, per-type recall, the expected calibration error and the confusion matrix
        (``grid``: its PNG), crops normalised and predicted as ``hemaseg classify`` does them. ``split``:
        only the crops of its ``val`` list. A crop that cannot be read, or of a type the model does not
        know, is listed in ``failed``; one in which no WBC is found counts as wrong (``NO_WBC``)."""
        if method:
            raise HemasegUsageError("--method", "wbc-type has no classical method")
        if cell_diameter is not None:
            raise HemasegUsageError("--cell-diameter", "not used by wbc-type: each crop is scaled to its own WBC")
        model = model or self.default_model
        _, card = model_of_task(model, self.name, device)
        classes = [str(c) for c in card["classes"]]
        failed: list[dict] = []
        items = [(Path(p), t) for p, t in find_each(data, find_labelled_cells, failed)]
        if split:
            try:
                listed = {Path(p).resolve() for p, _ in json.loads(Path(split).read_text())["val"]}
            except (OSError, KeyError, TypeError, ValueError):
                raise HemasegInputError(split, "not a split: a JSON file with a 'val' list of [crop, type]") from None
            items = [(p, t) for p, t in items if p.resolve() in listed]
        known = []
        untyped = [p for p, t in items if t == UNTYPED]  # `crop`'s folder of crops not yet typed: no label to score
        items = [(p, t) for p, t in items if t != UNTYPED]
        for p, t in items:
            if t in classes:
                known.append((p, t))
            else:
                failed.append({"image": str(p), "reason": f"type {t}: not one of the model's ({', '.join(classes)})"})
        # Read, normalised and predicted EVALUATE_CHUNK crops at a time (memory stays that of one chunk).
        kept, probs_parts, found_parts, seconds = [], [], [], 0.0
        for i in range(0, len(known), EVALUATE_CHUNK):
            images, chunk = [], []
            for p, t in known[i:i + EVALUATE_CHUNK]:
                try:
                    images.append(read_image(p))
                    chunk.append((p, t))
                except HemasegInputError as exc:
                    failed.append({"image": str(exc.path), "reason": exc.reason})
            if not chunk:
                continue
            t0 = time.perf_counter()
            made = crops_each(images, card)  # a crop that cannot be normalised is lost alone, not its chunk
            failed += [{"image": str(p), "reason": f"{c.__class__.__name__}: {c}"}
                       for (p, _), c in zip(chunk, made) if isinstance(c, Exception)]
            chunk = [item for item, c in zip(chunk, made) if not isinstance(c, Exception)]
            cells = [c for c in made if not isinstance(c, Exception)]
            if not cells:
                continue
            probs_parts.append(predict_crops([c.image for c in cells], model, device,
                                             extras=np.stack([c.extras for c in cells]), parts=[c.parts for c in cells]))
            seconds += time.perf_counter() - t0
            found_parts.append(np.array([c.found for c in cells]))
            kept += chunk
        if not kept:
            raise nothing_scored(data, failed, "no labelled crop of the model's types could be read")
        probs, found = np.concatenate(probs_parts), np.concatenate(found_parts)
        truth = np.array([classes.index(t) for _, t in kept])
        pred = probs.argmax(1)
        present = sorted(set(truth.tolist()))
        names = classes + [NO_WBC]  # a crop in which no WBC is found is its own (wrong) answer
        rep = classification_report(truth, np.where(found, pred, len(classes)), names)
        rep_present = {c: v for c, v in rep["per_class"].items() if names.index(c) in present}
        rows = [{"image": str(p), "truth": t, "prediction": classes[k] if f else NO_WBC, "confidence": float(q.max())}
                for (p, t), k, f, q in zip(kept, pred, found, probs)]
        if grid is not None:
            plot_confusion(np.asarray(rep["confusion"]), names, grid, f"wbc-type: {len(kept)} crops, accuracy "
                           f"{rep['accuracy']:.3f}, rows = true type (%)", percent=True)
        # a fine-tuned run scored on its own training crops: said (0.82 where its validation crops give 0.50)
        notes = [] if split else own_training_note(model, card, [p for p, _ in kept], "crops")
        if untyped:  # said, no failure (as train says it): they hold no label by design
            notes.append(f"note: {len(untyped)} crop(s) in {UNTYPED}/ have no type yet (hemaseg crop's folder): "
                         "not scored")
        return {"task": self.name, "model": str(model), "n_images": len(kept),
                "mean": {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
                         "ece": expected_calibration_error(probs, truth), "no_wbc": float(1 - found.mean()),
                         "crops_per_s": len(kept) / max(seconds, 1e-9)},
                "per_class": rep_present, "confusion": rep["confusion"], "classes": names,
                "per_image": rows, "failed": failed, **({"notes": notes} if notes else {})}

    def table(self, res: dict) -> list[str]:
        m = res["mean"]
        lines = [f"{'type':<14} {'crops':>6} {'recall':>7} {'precision':>9}"]
        for name, v in res["per_class"].items():
            lines.append(f"{name:<14} {v['support']:>6} {v['recall']:>7.3f} {v['precision']:>9.3f}")
        lines.append(f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, ECE {m['ece']:.4f}, no WBC found in "
                     f"{m['no_wbc'] * 100:.1f} % ({res['n_images']} crops)")
        return lines


WBC_TYPE = register_task(WbcTypeTask())
