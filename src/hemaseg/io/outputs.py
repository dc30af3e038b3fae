"""Output files of ``hemaseg segment`` (DESIGN.md file contracts): the task's label images,
the JSON of objects, an optional overlay. Which label images a task writes is its own
``label_images`` hook; this module only writes them.

The one output-naming rule of every command that writes files named after its inputs
(:func:`output_stems`): an output never replaces an input (refused up front), and two inputs
never write the same file (their names are disambiguated, and the caller says so).
"""
from __future__ import annotations

import struct
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hemaseg.core.result import Segmentation
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io.images import LazyImage, real_path
from hemaseg.io.writers import atomic_path, overlay, write_json, write_png


def _candidate(path: Path, index: int, level: int) -> str:
    """Output stem tried for ``path`` at ``level``, from plain (0) to most specific: from level 3 on it
    holds the input's ``index`` (and the level), so that a clash with another input's own name (one
    called ``x~1.png``) is left behind by the next level."""
    ext = path.suffix.lstrip(".").lower()
    with_ext = f"{path.stem}_{ext}" if ext else path.stem
    parent = real_path(path).parent.name
    if level < 3:
        return [path.stem, with_ext, f"{parent}_{with_ext}" if parent else with_ext][level]
    return f"{path.stem}~{index + 1}" + (f"~{level - 2}" if level > 3 else "")


def output_stems(inputs: list[Path], out: Path, endings: Iterable[str], option: str = "--out",
                 fixed: Iterable[tuple[str, Path | None]] = (), reserved: Iterable[str] = ()
                 ) -> tuple[dict[Path, str], list[str]]:
    """The stem each input's outputs are named after: ``out/<stem><ending>`` for every ending
    (e.g. ``".png"``, ``".json"``, ``"_overlay.png"``).

    An input's stem is its file stem unless two inputs would then write the same file (``a/001.png``
    and ``b/001.jpg``; ``x.png`` and ``x_overlay.png`` with overlays): those get ``<stem>_<ext>``,
    then ``<folder>_<stem>_<ext>``, then ``<stem>~<k>``. Returns ({input: stem}, one note per
    renamed group for the user). An output that would replace one of the inputs is refused:
    :class:`HemasegUsageError` naming ``option``; so is one of the ``fixed`` files ((option, path) pairs,
    e.g. ``("--coco", Path("all.json"))``; a None path is not written), and so is a fixed file that is
    another fixed file or one of the inputs' outputs. ``reserved``: stems no input may take, whatever
    its endings (the run names files of its own after them, e.g. ``hemaseg analyze``'s
    ``parts/run.json`` beside its ``parts/<stem>.json``): such an input is renamed as a clash is.

    >>> s, notes = output_stems([Path("a/001.png"), Path("b/001.jpg"), Path("c/002.png")], Path("o"), [".png"])
    >>> [s[Path(p)] for p in ("a/001.png", "b/001.jpg", "c/002.png")], len(notes)
    (['001_png', '001_jpg', '002'], 1)
    """
    endings = list(endings)
    level = {p: 0 for p in inputs}
    index = {p: i for i, p in enumerate(inputs)}
    stem = {p: p.stem for p in inputs}
    renamed: list[list[Path]] = []
    kept = {r.lower() for r in reserved}
    for _ in range(len(inputs) + 8):  # each round moves every clashing input on; a few rounds settle it
        claims: dict[str, list[Path]] = defaultdict(list)
        for p in inputs:
            for e in endings:
                claims[(stem[p] + e).lower()].append(p)  # case-insensitive file systems exist
        clash = {q for owners in claims.values() if len(set(owners)) > 1 for q in owners}
        clash |= {p for p in inputs if stem[p].lower() in kept}
        if not clash:
            break
        renamed.append(sorted(clash, key=index.get))
        for p in clash:
            level[p] += 1
            stem[p] = _candidate(p, index[p], level[p])
    else:  # never reached: the loop's last names hold each input's index
        raise RuntimeError("output names could not be told apart")
    sources = {real_path(p): p for p in inputs}
    written = {real_path(out / (stem[p] + e)): p for p in inputs for e in endings}
    taken: dict[Path, str] = {}
    for opt, path in fixed:
        if path is None:
            continue
        where = real_path(path)
        if where in sources:
            raise HemasegUsageError(opt, f"{path} would replace the input {sources[where]}; give another file")
        if where in taken:
            raise HemasegUsageError(opt, f"{path} is written by {taken[where]} too; give another file")
        if where in written:
            raise HemasegUsageError(opt, f"{path} is the output of {written[where]}; give another file")
        if where == out.resolve() or any(where in w.parents for w in written):
            raise HemasegUsageError(opt, f"{path} is the folder the outputs go into; give a file")
        taken[where] = opt
    for p in inputs:
        for e in endings:
            target = real_path(out / (stem[p] + e))
            if target in sources:
                raise HemasegUsageError(option, f"{out / (stem[p] + e)} would replace the input "
                                                f"{sources[target]}; write to another folder")
    notes = []
    seen: set[Path] = set()
    for group in renamed:
        group = [p for p in group if p not in seen]
        seen.update(group)
        if group:
            why = ("a name kept for the run's own files" if all(p.stem.lower() in kept for p in group)
                   else "same output names")
            notes.append(f"{', '.join(str(p) for p in group)}: {why}; written as "
                         + ", ".join(f"{stem[p]}.*" for p in group))
    return stem, notes


# A label image larger than this (px) is written a band of rows at a time (write_png_bands).
BAND_WRITE_PIXELS = 4096 * 4096
BAND_ROWS = 1024


def write_png_bands(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray], level: int = 6) -> Path:
    """Write a PNG from its rows, a band at a time, atomically: ``bands`` yields (h, W) or (h, W, 3)
    uint8/uint16 arrays, top to bottom, ``height`` rows in all. Only one band and the compressor's
    window are in memory (PIL encodes a whole image at once). Standard PNG: grey or RGB, 8 or 16 bit,
    no filter, zlib ``level``."""
    crc = zlib.crc32
    out = Path(path)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        def chunk(kind: bytes, data: bytes) -> None:
            f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc(kind + data) & 0xFFFFFFFF))

        f.write(b"\x89PNG\r\n\x1a\n")
        z = zlib.compressobj(level)
        rows = 0
        for band in bands:
            band = np.asarray(band)
            if rows == 0:
                depth = 16 if band.dtype == np.uint16 else 8
                if band.dtype not in (np.uint8, np.uint16):
                    raise TypeError(f"PNG needs uint8 or uint16, got {band.dtype}")
                chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 2 if band.ndim == 3 else 0, 0, 0, 0))
            if band.shape[1] != width:
                raise ValueError(f"band of width {band.shape[1]}, not {width}")
            data = band.astype(">u2") if depth == 16 else band
            flat = np.ascontiguousarray(data).reshape(band.shape[0], -1).view(np.uint8)
            framed = np.zeros((band.shape[0], flat.shape[1] + 1), np.uint8)  # filter byte 0 (none) per row
            framed[:, 1:] = flat
            block = z.compress(framed.tobytes())
            if block:
                chunk(b"IDAT", block)
            rows += band.shape[0]
        if rows != height:
            raise ValueError(f"{rows} rows written, not {height}")
        chunk(b"IDAT", z.flush())
        chunk(b"IEND", b"")
    return out


def write_segmentation(out: Path, stem: str, source: Path, image: np.ndarray, seg: Segmentation,
                       labels: dict[str, np.ndarray] | Callable[[Segmentation], dict[str, np.ndarray]],
                       task_name: str, model_name: str,
                       colors: dict[int, tuple[int, int, int]] | None = None) -> list[Path]:
    """Write ``<stem><suffix>.png`` for each of ``labels`` ({suffix: array}), ``<stem>.json``, and
    ``<stem>_overlay.png`` when ``colors`` (class index -> RGB) are given, into ``out``.
    ``labels`` is emptied as its arrays are written, so a large image's label maps are freed early.
    ``labels`` may instead be the task's ``label_images`` hook (a pixel-wise map of a Segmentation):
    an image over :data:`BAND_WRITE_PIXELS` then has its label images made and written
    :data:`BAND_ROWS` rows at a time (:func:`write_png_bands`), never whole. No overlay is drawn of
    a :class:`~hemaseg.io.images.LazyImage` (a TIFF read region by region)."""
    h, w = seg.classes.shape
    if callable(labels) and h * w > BAND_WRITE_PIXELS:
        hook = labels

        def band(y: int) -> dict[str, np.ndarray]:
            rows = slice(y, min(h, y + BAND_ROWS))
            return hook(Segmentation(seg.classes[rows], seg.instances[rows], seg.probs, seg.cell_diameter,
                                     seg.scale, []))

        files = [write_png_bands(out / f"{stem}{suffix}.png", h, w, (band(y)[suffix] for y in range(0, h, BAND_ROWS)))
                 for suffix in band(0)]
    else:
        labels = labels(seg) if callable(labels) else labels
        files = [write_png(out / f"{stem}{suffix}.png", labels.pop(suffix)) for suffix in list(labels)]
    files.append(write_json(out / f"{stem}.json", {
        "filename": str(source),
        "height": h,
        "width": w,
        "task": task_name,
        "model": model_name,
        "cell_diameter": round(seg.cell_diameter, 2),
        **({"cell_diameter_from": seg.diameter_from} if seg.diameter_from else {}),  # given, measured, model
        "scale": round(seg.scale, 4),
        "count": seg.count,
        "masks": seg.objects,
    }))
    if colors is not None:
        colors = {k: v for k, v in colors.items() if k > 0}
        if isinstance(image, LazyImage):
            raise HemasegInputError(source, f"{w}x{h} px, read region by region: no overlay is drawn of an image "
                                            "this large (leave --overlay out)")
        files.append(write_png(out / f"{stem}_overlay.png", overlay(image, seg.classes, colors, instances=seg.instances)))
    return files
