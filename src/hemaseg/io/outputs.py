"""Output files of ``hemaseg segment`` (DESIGN.md file contracts): the task's label images,
the JSON of objects, an optional overlay. Which label images a task writes is its own
``label_images`` hook; this module only writes them.

The one output-naming rule of every command that writes files named after its inputs
(:func:`output_stems`): an output never replaces an input (refused up front), and two inputs
never write the same file (their names are disambiguated, and the caller says so).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from hemaseg.core.result import Segmentation
from hemaseg.errors import HemasegUsageError
from hemaseg.io.writers import overlay, write_json, write_png


def _candidates(path: Path, index: int) -> list[str]:
    """Output stems tried for ``path``, from plain to most specific; the last is unique by ``index``."""
    ext = path.suffix.lstrip(".").lower()
    with_ext = f"{path.stem}_{ext}" if ext else path.stem
    parent = path.resolve().parent.name
    return [path.stem, with_ext, f"{parent}_{with_ext}" if parent else with_ext, f"{path.stem}~{index + 1}"]


def output_stems(inputs: list[Path], out: Path, endings: Iterable[str], option: str = "--out",
                 fixed: Iterable[tuple[str, Path | None]] = ()) -> tuple[dict[Path, str], list[str]]:
    """The stem each input's outputs are named after: ``out/<stem><ending>`` for every ending
    (e.g. ``".png"``, ``".json"``, ``"_overlay.png"``).

    An input's stem is its file stem unless two inputs would then write the same file (``a/001.png``
    and ``b/001.jpg``; ``x.png`` and ``x_overlay.png`` with overlays): those get ``<stem>_<ext>``,
    then ``<folder>_<stem>_<ext>``, then ``<stem>~<k>``. Returns ({input: stem}, one note per
    renamed group for the user). An output that would replace one of the inputs is refused:
    :class:`HemasegUsageError` naming ``option``; so is one of the ``fixed`` files ((option, path) pairs,
    e.g. ``("--coco", Path("all.json"))``; a None path is not written).

    >>> s, notes = output_stems([Path("a/001.png"), Path("b/001.jpg"), Path("c/002.png")], Path("o"), [".png"])
    >>> [s[Path(p)] for p in ("a/001.png", "b/001.jpg", "c/002.png")], len(notes)
    (['001_png', '001_jpg', '002'], 1)
    """
    endings = list(endings)
    level = {p: 0 for p in inputs}
    index = {p: i for i, p in enumerate(inputs)}
    stem = {p: p.stem for p in inputs}
    renamed: list[list[Path]] = []
    for _ in range(4):
        claims: dict[str, list[Path]] = defaultdict(list)
        for p in inputs:
            for e in endings:
                claims[(stem[p] + e).lower()].append(p)  # case-insensitive file systems exist
        clash = {q for owners in claims.values() if len(set(owners)) > 1 for q in owners}
        if not clash:
            break
        renamed.append(sorted(clash, key=index.get))
        for p in clash:
            level[p] = min(level[p] + 1, 3)
            stem[p] = _candidates(p, index[p])[level[p]]
    sources = {p.resolve(): p for p in inputs}
    for opt, path in fixed:
        if path is not None and Path(path).resolve() in sources:
            raise HemasegUsageError(opt, f"{path} would replace the input {sources[Path(path).resolve()]}; "
                                         "give another file")
    for p in inputs:
        for e in endings:
            target = (out / (stem[p] + e)).resolve()
            if target in sources:
                raise HemasegUsageError(option, f"{out / (stem[p] + e)} would replace the input "
                                                f"{sources[target]}; write to another folder")
    notes = []
    seen: set[Path] = set()
    for group in renamed:
        group = [p for p in group if p not in seen]
        seen.update(group)
        if group:
            notes.append(f"{', '.join(str(p) for p in group)}: same output names; written as "
                         + ", ".join(f"{stem[p]}.*" for p in group))
    return stem, notes


def write_segmentation(out: Path, stem: str, source: Path, image: np.ndarray, seg: Segmentation,
                       labels: dict[str, np.ndarray], task_name: str, model_name: str,
                       colors: dict[int, tuple[int, int, int]] | None = None) -> list[Path]:
    """Write ``<stem><suffix>.png`` for each of ``labels`` ({suffix: array}), ``<stem>.json``, and
    ``<stem>_overlay.png`` when ``colors`` (class index -> RGB) are given, into ``out``.
    ``labels`` is emptied as its arrays are written, so a large image's label maps are freed early."""
    h, w = seg.classes.shape
    files = [write_png(out / f"{stem}{suffix}.png", labels.pop(suffix)) for suffix in list(labels)]
    files.append(write_json(out / f"{stem}.json", {
        "filename": str(source),
        "height": h,
        "width": w,
        "task": task_name,
        "model": model_name,
        "cell_diameter": round(seg.cell_diameter, 2),
        "scale": round(seg.scale, 4),
        "count": seg.count,
        "masks": seg.objects,
    }))
    if colors is not None:
        colors = {k: v for k, v in colors.items() if k > 0}
        files.append(write_png(out / f"{stem}_overlay.png", overlay(image, seg.classes, colors, instances=seg.instances)))
    return files
