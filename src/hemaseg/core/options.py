"""The one validator of numeric options: every command and library entry point checks its
numbers here, up front, so a bad value is one usage error naming the option and the allowed
range (the CLI exits 2), never a silent default, an empty result or a failure per image."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hemaseg.errors import HemasegUsageError

# A parameter naming a model (field metadata {"model": True}) given one of these asks no model.
NO_MODEL = ("", "none")


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric option: ``lo``..``hi`` (``None``: unbounded), integers only if ``integer``;
    ``lo_open``: ``lo`` itself is excluded (a strictly positive learning rate)."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.lo is not None and self.hi is not None and not self.lo_open:
            return f"{kind} from {self.lo:g} to {self.hi:g}"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"<= {self.hi:g}")
        return f"{kind} {' and '.join(parts)}" if parts else kind

    def admits(self, value) -> bool:
        if isinstance(value, (np.integer, np.floating)):  # np.float32(200) from an array is a number too
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi


# Every numeric option of the command line, by its Python name. Diameters are px in the input
# image: resizing is clamped to 0.1-4x (hemaseg.core.resize), so a model trained on ~50 px cells
# reaches cells of about 12-500 px; the range below is wider, the clamp does the rest.
OPTION_RANGES: dict[str, Range] = {
    "cell_diameter": Range(2, 5000),
    "tile": Range(128, 16384, integer=True),
    "overlap": Range(0, 512, integer=True),
    "epochs": Range(1, 100_000, integer=True),
    "batch_size": Range(1, 4096, integer=True),
    "lr": Range(0, 10, lo_open=True),
    "crop": Range(32, 4096, integer=True),
    "samples_per_epoch": Range(0, 10_000_000, integer=True),
    "patience": Range(1, 100_000, integer=True),
    "val_fraction": Range(0, 0.9, lo_open=True),  # a run chooses its checkpoint on validation: never none
    "seed": Range(0, 2**32 - 1, integer=True),
    "threads": Range(0, 1024, integer=True),
    "workers": Range(0, 256, integer=True),
    "reuse": Range(1, 1000, integer=True),
    "real_fields": Range(0, 1),  # smear10: share of the training draws that are real boxed fields
    "paste_red_cells": Range(0, 1),  # wbc: chance an annotated image gets real red cells pasted
    "modality_transfer": Range(0, 1),  # nuclei: chance a fluorescence image is redrawn as another modality
    "depth_weight": Range(0, 100),  # nuclei: loss weight of the depth output (0: none)
    "margin": Range(0, 5),
    "n": Range(1, 10_000_000, integer=True),
    "size": Range(32, 16384, integer=True),
    "first": Range(0, 10_000_000, integer=True),
    "min_confidence": Range(0, 1),
    "pixel_size": Range(0, 1000, lo_open=True),  # µm per px of the photo
    "port": Range(0, 65535, integer=True),  # hemaseg serve; 0: any free port
    "max_upload_mb": Range(0, 10_000, lo_open=True),  # hemaseg serve: largest upload
}


def option_flag(name: str) -> str:
    """The command-line spelling of an option's Python name: ``cell_diameter`` -> ``--cell-diameter``."""
    return "--" + name.replace("_", "-")


def check_numbers(**values) -> None:
    """:class:`HemasegUsageError` for the first of ``values`` (None: not given) outside its
    :data:`OPTION_RANGES` entry, naming the option, the value and the allowed range.

    >>> check_numbers(tile=512, cell_diameter=None)
    >>> check_numbers(tile=7)
    Traceback (most recent call last):
    ...
    hemaseg.errors.HemasegUsageError: tile: 7 is not allowed; use an integer from 128 to 16384
    """
    for name, value in values.items():
        if value is None:
            continue
        rng = OPTION_RANGES[name]
        if not rng.admits(value):
            raise HemasegUsageError(option_flag(name), f"{value!r} is not allowed; use {rng.describe()}")


def refuse_unused(reason: str, **given) -> None:
    """:class:`HemasegUsageError` for the first option of ``given`` that was set (not None/False):
    it does not apply, and ``reason`` says why (e.g. "not used by --method hsv, which has no model")."""
    for name, value in given.items():
        if value is not None and value is not False:
            raise HemasegUsageError(option_flag(name), reason)
