"""Read any microscope image (PNG/JPEG/BMP/TIFF, 8/16-bit, grey/RGB/RGBA) as RGB uint8."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hemaseg.errors import HemasegInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Decompression-bomb guard: whole slide scans beyond this need a tiled reader.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


def _read_raw(path: Path) -> np.ndarray:
    if not path.exists():
        raise HemasegInputError(path, "no such file")
    if path.is_dir():
        raise HemasegInputError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise HemasegInputError(path, "empty file (0 bytes)")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many kinds on corrupt files
            raise HemasegInputError(path, f"not a readable TIFF ({exc.__class__.__name__}: {exc})") from None
        if arr.size == 0:
            raise HemasegInputError(path, "not a readable TIFF (no image data, zero size)")
        # Multi-page or z-stacks: take the first plane, keep channels last.
        while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
            arr = arr[0]
        return arr
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    return np.array(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int32)
                if im.mode not in ("L", "RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                return np.array(im)
    except UnidentifiedImageError:
        raise HemasegInputError(path, "not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HemasegInputError(path, f"corrupt or truncated image ({exc})") from None


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit/int/float intensities to uint8 (min..max of the image), leave uint8 alone."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((a - lo) * scale + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    Grey becomes three equal channels, alpha is dropped, 16-bit and float data are
    rescaled to the image's own range. Anything unusable raises HemasegInputError.

    >>> import tempfile, os
    >>> from PIL import Image
    >>> p = os.path.join(tempfile.mkdtemp(), "g.png")
    >>> Image.fromarray(np.zeros((4, 5), np.uint8)).save(p)
    >>> read_image(p).shape
    (4, 5, 3)
    """
    path = Path(path)
    arr = _read_raw(path)
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise HemasegInputError(path, "image has zero size")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(to_uint8(arr)[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = to_uint8(arr[..., :3])
    elif arr.ndim == 3 and arr.shape[-1] == 3:
        arr = to_uint8(arr)
    else:
        raise HemasegInputError(path, f"unsupported array shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label/mask image as an (H, W) integer array; check it matches ``shape`` if given."""
    path = Path(path)
    arr = _read_raw(path)
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise HemasegInputError(path, "mask has zero size")
    if arr.ndim == 3:
        # A grey mask saved as RGB: all channels equal; take the first.
        arr = arr[..., 0]
    if shape is not None and tuple(arr.shape[:2]) != tuple(shape[:2]):
        raise HemasegInputError(path, f"mask size {arr.shape[1]}x{arr.shape[0]} does not match image size {shape[1]}x{shape[0]}")
    return arr


def list_images(inputs: list[str | Path] | str | Path, recursive: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted list of image paths.

    Files given explicitly are kept whatever their suffix so that a bad one is reported,
    not silently skipped.
    """
    import glob

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out += sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in str(item) for ch in "*?["):
            out += sorted(Path(q) for q in glob.glob(str(item), recursive=True) if Path(q).is_file())
        else:
            out.append(p)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header when possible."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, UnidentifiedImageError):
        return read_image(path).shape[:2]
