"""The ``wbc-type`` task (seeds 003, 004): the type of a white cell from a single-cell crop.

- :mod:`.crops`: the cell normaliser (each crop centred on its WBC, found by the ``wbc`` task,
  and rescaled to one cell size), the classifier's prediction, seed 004's groupings, and the
  crops of WBCs found in a whole image (what ``analyze`` and ``smear10`` type);
- :mod:`.train`: its training loop (a classifier, not a segmentation: its own config);
- :mod:`.explain`: Grad-CAM and t-SNE.
"""
from __future__ import annotations

from pathlib import Path

from hemaseg.engine.task import COMMON_TRAIN_OPTIONS, Task, check_options
from hemaseg.errors import HemasegUsageError
from hemaseg.io.images import list_images
from hemaseg.tasks.registry import register_task
from hemaseg.tasks.wbc_type.crops import CLASSES
from hemaseg.tasks.wbc_type.train import ClassifyConfig, check_colour, check_crop_padding, fit_classifier, given_split

DEPENDS = ("wbc",)


class WbcTypeTask(Task):
    """WBC type of a single-cell crop; trained by its own loop (:func:`.train.fit_classifier`)."""

    name = "wbc-type"
    classes = CLASSES
    label_values = tuple(range(len(CLASSES)))
    default_model = "wbc-type"
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


WBC_TYPE = register_task(WbcTypeTask())
