"""Writers: label PNGs, overlays, JSON; every file is written atomically (temp, then rename)."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8/uint16 (H, W) or (H, W, 3) array as PNG, atomically."""
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
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

    out = image.astype(np.float32).copy()
    for cls, color in colors.items():
        sel = classes == cls
        if sel.any():
            out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(color, np.float32)
    out = out.astype(np.uint8)
    for cls, color in colors.items():
        edge = find_boundaries(classes == cls, mode="inner")
        out[edge] = color
    if instances is not None:
        out[find_boundaries(instances, mode="inner")] = (255, 255, 255)
    return out
