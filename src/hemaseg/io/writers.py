"""Writers: label PNGs, overlays, JSON; every file is written atomically (temp, then rename)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from hemaseg.errors import HemasegUsageError
from hemaseg.io.images import IMAGE_SUFFIXES


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

# Temporary files of atomic_path: ".<name>.<random>.tmp<suffix>"; a process killed while writing
# leaves one behind, which remove_temps clears (in folders only one process writes to).
_TEMP_TAG = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(_TEMP_TAG) + r"(\.[^.]*)?$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_TAG + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when a writer was killed;
    returns them. Only for folders a single process writes to (a training run)."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if p.is_file() and _TEMP_RE.match(p.name)] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


GRID_MARK = "hemaseg evaluate"  # the PNG "Software" text of the pictures evaluate writes (worst_grid)


def written_grid(path: str | Path) -> bool:
    """``path`` is a PNG whose "Software" text is :data:`GRID_MARK` (a picture hemaseg wrote, which a
    new one may replace), or Matplotlib's (the grids of versions before the mark)."""
    try:
        with Image.open(path) as im:
            software = str(im.info.get("Software", ""))
            return im.format == "PNG" and (software == GRID_MARK or software.startswith("Matplotlib"))
    except (OSError, ValueError):
        return False


def check_output(path: str | Path, option: str, folder: bool, image: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written: a folder (``folder``) that exists or can
    be created, or a file whose folder can; :class:`HemasegUsageError` naming ``option`` otherwise.
    An existing image file is refused as a file output; an image output (``image``: a PNG grid) must end
    in ``.png`` and may replace only a picture hemaseg wrote (:func:`written_grid`). Creates nothing that stays (a probe file is written and removed in the
    nearest existing folder)."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise HemasegUsageError(option, f"{path} is a file, not a folder")
        if not folder and path.is_dir():
            raise HemasegUsageError(option, f"{path} is a folder; give a file name")
        if not folder and not image and path.suffix.lower() in IMAGE_SUFFIXES:  # classify -o smear.jpg replaced it
            raise HemasegUsageError(option, f"{path} is an image: it would be replaced; give another file name")
        if image and path.is_file() and not written_grid(path):  # evaluate --grid photo.png replaced the photo
            raise HemasegUsageError(option, f"{path} exists and is no picture hemaseg wrote: it would be replaced; "
                                            "give another file name")
    if image and path.suffix.lower() != ".png":
        raise HemasegUsageError(option, f"{path}: the picture is a PNG; give a name ending in .png")
    target = path if folder else path.parent
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise HemasegUsageError(option, f"cannot create {target}: {probe} is a file")
    try:  # permission bits do not tell (root, read-only mounts, /proc): try it
        with tempfile.TemporaryFile(dir=probe, prefix=".hemaseg-probe."):
            pass
    except OSError as exc:
        raise HemasegUsageError(option, f"cannot write to {probe} ({exc.strerror or exc})") from None
    return path


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8/uint16 (H, W) or (H, W, 3) array as PNG, atomically."""
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, UTF-8), atomically; streamed, so a large result is never one string in memory."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
        f.write("\n")
    return Path(path)


def nan_as_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so that its JSON is standard (``null``,
    not ``NaN``: what other tools' JSON parsers read).

    >>> nan_as_null({"map50": float("nan"), "n": [1.0, float("inf")]})
    {'map50': None, 'n': [1.0, None]}
    """
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nan_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_as_null(v) for v in obj]
    return obj


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically, UTF-8. A file name that is no UTF-8 (bytes a camera or another system wrote,
    which Python holds as surrogates) is written back as its own bytes: a CSV row names the file as it is on disk
    (it failed the whole batch, no CSV written)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    return Path(path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def overlay(image: np.ndarray, classes: np.ndarray, colors: dict[int, tuple[int, int, int]],
            alpha: float = 0.4, instances: np.ndarray | None = None) -> np.ndarray:
    """Blend class colours onto an RGB image and draw class (and instance) outlines: (H, W, 3) uint8."""
    from skimage.segmentation import find_boundaries

    # Blended on the coloured pixels only (no float copy of the whole image).
    out = image.copy()
    for cls, color in colors.items():
        sel = classes == cls
        if sel.any():
            out[sel] = ((1 - alpha) * image[sel].astype(np.float32) + alpha * np.asarray(color, np.float32)
                        ).astype(np.uint8)
    for cls, color in colors.items():
        edge = find_boundaries(classes == cls, mode="inner")
        out[edge] = color
    if instances is not None:
        out[find_boundaries(instances, mode="inner")] = (255, 255, 255)
    return out
