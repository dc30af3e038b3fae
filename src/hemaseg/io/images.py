"""Read any microscope image (PNG/JPEG/BMP/TIFF, 8/16-bit, grey/RGB/RGBA) as RGB uint8."""
from __future__ import annotations

import errno
import logging
import os
import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hemaseg.errors import HemasegInputError
from hemaseg.progress import warn_once

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# The one size guard of every reader (PNG, JPEG, BMP, TIFF; images and masks): an image is decoded
# whole, so one past this many pixels is refused from its header, before any decoding. (PIL's own
# decompression-bomb check is off: it would meet the same images first, with a misleading error.)
MAX_PIXELS = 20_000 * 20_000
Image.MAX_IMAGE_PIXELS = None


def check_size(path: Path, height: int, width: int) -> None:
    """:class:`HemasegInputError` if an image of ``height`` x ``width`` px is over :data:`MAX_PIXELS`."""
    if height * width > MAX_PIXELS:
        raise HemasegInputError(path, f"{width}x{height} px ({height * width / 1e6:.0f} MP) is over the "
                                      f"{MAX_PIXELS / 1e6:.0f} MP limit of whole-image reading; cut it into tiles")


def _read_tiff(path: Path) -> np.ndarray:
    """The first page of a TIFF, samples (RGB, RGBA) last whether stored interleaved or planar."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            check_size(path, int(page.imagelength), int(page.imagewidth))
            arr, axes = page.asarray(), page.axes
            alpha = any(int(e) in (1, 2) for e in (getattr(page, "extrasamples", ()) or ()))  # ASSOC/UNASSALPHA
            # other pages of the first page's shape are more planes (a z-stack, a time series, more fields),
            # not a pyramid's smaller levels: only the first is read, which is said
            more = sum(1 for p in tif.pages[1:64] if getattr(p, "shape", None) == page.shape)
            planes, capped = more, more == 63  # (pages past the 64th not looked at)
            series = tif.series[0] if tif.series else None
            if series is not None and series.axes == "CYX" and series.shape[0] == 3 and arr.ndim == 2:
                # three channel pages (an OME-TIFF's C axis): one colour image, as LazyImage reads it (a large one
                # was colour, a small one its first channel); four stay planes, said (a fourth is no alpha there)
                arr, axes, planes = np.moveaxis(series.asarray(), 0, -1), "YXS", more - (series.shape[0] - 1)
    except HemasegInputError:
        raise
    except Exception as exc:  # tifffile raises many kinds on corrupt files
        raise HemasegInputError(path, f"not a readable TIFF ({exc.__class__.__name__}: {exc})") from None
    if arr.size == 0:
        raise HemasegInputError(path, "not a readable TIFF (no image data, zero size)")
    if len(axes) == arr.ndim and "S" in axes and arr.ndim >= 3:
        arr = np.moveaxis(arr, axes.index("S"), -1)  # planar RGB: (3, H, W) -> (H, W, 3)
    # Volumes or other leading axes in one page: take the first plane, keep channels last (1-4: grey, grey +
    # alpha, RGB, RGBA).
    while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
        planes += arr.shape[0] - 1
        arr = arr[0]
    if planes:
        said = (f"{planes + 1}{'+' if capped else ''} planes (a stack or series); only the first is read: save each "
                "plane as its own image to have them all")
        warn_once(log, (str(path), said), "%s: %s", path, said)
    if arr.ndim == 3 and arr.shape[-1] == 2 and not alpha:
        # two channels (two stains of a fluorescence image), not grey + alpha: the second was dropped as alpha
        # without a word, and an image whose first channel is empty gave nothing
        said = ("2 channels (its second sample is no alpha); only the first is read: save the channel to analyse "
                "as its own image")
        warn_once(log, (str(path), said), "%s: %s", path, said)
        arr = arr[..., :1]
    if arr.ndim == 3 and arr.shape[-1] == 4 and not alpha:  # a fourth sample not marked as alpha: no opacity
        arr = arr[..., :3]
    return arr


def _pil_array(im: Image.Image, band_pixels: int = 1 << 22) -> np.ndarray:
    """A loaded L/RGB/RGBA image as a uint8 array. Large images are copied a band of rows at a
    time: ``np.array(im)`` would hold PIL's own copy (4 bytes a pixel for RGB), a bytes copy and
    the array at once, three times the image; this holds PIL's and the array's."""
    w, h = im.size
    if h * w <= band_pixels:
        return np.array(im)
    channels = len(im.getbands())
    out = np.empty((h, w, channels) if channels > 1 else (h, w), np.uint8)
    step = max(1, band_pixels // w)
    for y in range(0, h, step):
        out[y:y + step] = np.asarray(im.crop((0, y, w, min(h, y + step))))
    return out


def _read_raw(path: Path) -> np.ndarray:
    if not path.exists():
        raise HemasegInputError(path, _missing_link(path) if path.is_symlink() else
                                "no image matches it" if any(ch in str(path) for ch in "*?[") else "no such file")
    if path.is_dir():
        raise HemasegInputError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise HemasegInputError(path, "empty file (0 bytes)")
    if path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff(path)
    if _png_16bit_colour(path):  # PIL keeps only the high byte of a 16-bit colour PNG: read all of it, as a TIFF's
        import cv2

        with open(path, "rb") as f:
            head = f.read(24)
        check_size(path, int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"))  # before decoding
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is not None and arr.ndim == 3 and arr.shape[2] in (3, 4):
            return np.ascontiguousarray(arr[..., [2, 1, 0, 3][:arr.shape[2]]])
    try:
        with Image.open(path) as im:
            check_size(path, im.size[1], im.size[0])
            im.load()
            if _orientation(im) != 1:  # a camera's EXIF rotation: the image as every viewer shows it
                im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.array(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int32)
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            return _pil_array(im)
    except UnidentifiedImageError:
        raise HemasegInputError(path, "not an image (unknown format)") from None
    except MemoryError:
        raise HemasegInputError(path, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise HemasegInputError(path, f"corrupt or truncated image ({exc})") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image (1: as stored; 2-8: mirrored and/or rotated)."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block: the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _png_16bit_colour(path: Path) -> bool:
    """A PNG of 16-bit RGB or RGBA samples (its IHDR's bit depth and colour type)."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _outlier_free_range(arr: np.ndarray, block: int = 4) -> tuple[float, float] | None:
    """(low, high) of ``arr``'s values without specks smaller than ``block`` px a side: the smallest of
    the ``block`` x ``block`` tiles' largest values and the largest of their smallest (a speck of up
    to ``block`` - 1 px a side never fills a tile; anything of 2 x ``block`` - 1 px or more fills one).
    A camera's hot pixel or a saturated speck of a few px is no image content; scaled by min..max, one
    65535 px among nuclei of 0-4000 left them 3-5 grey levels and 0 nuclei found. None when the image
    is smaller than a tile."""
    h, w = arr.shape[:2]
    h, w = h - h % block, w - w % block
    if h == 0 or w == 0:
        return None
    a = arr[:h, :w]
    if a.ndim == 3:  # one tile value for every channel together: colours keep their balance
        tiles = a.reshape(h // block, block, w // block, block, a.shape[2])
        lo, hi = tiles.max(axis=(1, 3)).min(), tiles.min(axis=(1, 3)).max()
    else:
        tiles = a.reshape(h // block, block, w // block, block)
        lo, hi = tiles.max(axis=(1, 3)).min(), tiles.min(axis=(1, 3)).max()
    return float(lo), float(hi)


def value_range(arr: np.ndarray, specks: bool = True) -> tuple[float, float] | None:
    """(low, high) that :func:`to_uint8` scales ``arr`` over (None: no finite value): min..max of the
    finite values; a float image within 0..1, 0..1; with ``specks``, an end reached only by specks of up
    to 3 x 3 px lying further out than the rest of the image spans, the rest's
    (:func:`_outlier_free_range`). A whole-slide image takes it from a small level (:class:`LazyImage`),
    where cells are specks: the speck rule only where that level is the image itself."""
    found = _range_and_finite(arr, specks)
    return None if found is None else found[:2]


def _range_and_finite(arr: np.ndarray, specks: bool = True) -> tuple[float, float, bool] | None:
    """:func:`value_range` and whether every value is finite (one pass over the image for both)."""
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        all_finite = bool(finite.all())
        vals = arr if all_finite else arr[finite]
        del finite
    else:
        all_finite, vals = True, arr
    if vals.size == 0:
        return None
    lo, hi = float(np.float32(vals.min())), float(np.float32(vals.max()))
    del vals
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0, all_finite
    if all_finite and specks:
        inner = _outlier_free_range(arr)
        if inner is not None and inner[1] > inner[0]:  # (a flat image with specks keeps its whole range)
            i_lo, i_hi = float(np.float32(inner[0])), float(np.float32(inner[1]))
            # an end moves only where its specks reach further than the whole content spans (they would
            # take over half the grey levels): an ordinary image keeps its min..max
            lo = i_lo if i_lo - lo > i_hi - i_lo else lo
            hi = i_hi if hi - i_hi > i_hi - i_lo else hi
    return lo, hi, all_finite


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit/int/float intensities to uint8, leave uint8 alone: over the min..max of the image's
    finite values, but an end reached only by specks of up to 3 x 3 px (hot or dead camera pixels,
    saturated dust: :func:`_outlier_free_range`) lying further out than the rest of the image spans
    is clipped to the rest; a float image within 0..1 over 0..1. NaN and -inf become 0, +inf 255.

    >>> to_uint8(np.array([[0.0, np.nan], [2.0, np.inf]])).tolist()
    [[0, 0], [255, 255]]
    >>> img = np.zeros((30, 30), np.uint16); img[10:20, 10:20] = 4000; img[2, 2] = 65535  # a hot pixel
    >>> int(to_uint8(img)[15, 15]), int(to_uint8(img)[2, 2])
    (255, 255)
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        arr = arr.astype(np.float32)  # values past float32's range become inf, as they always have
    found = _range_and_finite(arr)
    if found is None:
        return np.where(arr == np.inf, 255, 0).astype(np.uint8)
    lo, hi, all_finite = found
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    # A band of rows at a time: the float copy is of one band, not of the whole image.
    out = np.empty(arr.shape, np.uint8)
    band = max(1, (1 << 22) // max(1, arr[:1].size))
    for y in range(0, arr.shape[0], band):
        a = arr[y:y + band].astype(np.float32)
        if not all_finite:
            finite = np.isfinite(a)
            a = np.where(finite, a, np.where(a == np.inf, hi, lo))
        out[y:y + band] = np.clip((a - lo) * scale + 0.5, 0, 255).astype(np.uint8)
    return out


def as_photo(image, name: str = "image") -> np.ndarray:
    """What the public functions (``segment``, ``classify``, ``analyze``, ``estimate_diameter``) take, as the
    (H, W, 3) uint8 RGB photo they work on: a uint8 RGB array passes as it is; a file path is read
    (:func:`read_image`); a fully transparent pixel is white (:func:`over_white`); grey ((H, W) or
    (H, W, 1)) becomes three equal channels;
    16-bit, float (0-1 taken as 0-255) and other numbers are rescaled as :func:`read_image` rescales
    them (:func:`to_uint8`); a :class:`LazyImage` passes as it is. Anything else, an empty image, or one
    that looks channels-first (3, H, W), is a :class:`HemasegInputError` naming ``name``.

    >>> as_photo(np.zeros((4, 5), np.float32)).shape
    (4, 5, 3)
    >>> as_photo(np.zeros((3, 40, 50)))
    Traceback (most recent call last):
    ...
    hemaseg.errors.HemasegInputError: image: shape (3, 40, 50) looks channels-first; give (H, W, 3) (e.g. np.moveaxis(image, 0, -1))
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, LazyImage):  # a large TIFF read region by region: never read whole here
        return image
    if isinstance(image, (list, tuple)) and image and all(isinstance(x, (str, Path, np.ndarray)) for x in image):
        raise HemasegInputError(name, f"a {type(image).__name__} of {len(image)} images or paths; give one image "
                                      "(call once per image, or use the command line for many)")
    if not isinstance(image, np.ndarray):
        try:
            image = np.asarray(image)
        except Exception:  # noqa: BLE001 - anything numpy cannot take is the caller's mistake, said in one line
            raise HemasegInputError(name, f"a {type(image).__name__}, not an image array or a file path") from None
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size:
        return image
    if image.dtype.kind not in "biuf":
        raise HemasegInputError(name, f"{image.dtype} values; give an (H, W, 3) uint8 RGB array")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
        raise HemasegInputError(name, f"shape {image.shape} looks channels-first; give (H, W, 3) "
                                      "(e.g. np.moveaxis(image, 0, -1))")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise HemasegInputError(name, f"shape {image.shape}; give (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey")
    if image.size == 0:
        raise HemasegInputError(name, f"empty (shape {image.shape})")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 4:  # RGBA: a pixel of no opacity is white, as read_image reads it
        return np.ascontiguousarray(over_white(to_uint8(image[..., :3]), image[..., 3], name))
    image = to_uint8(image if image.ndim == 2 else image[..., :3])
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


def pixels_sha256(image: np.ndarray) -> str:
    """SHA-256 of a photo's shape and pixels (what ``analyze`` records as an entry's ``pixels_sha256``): the same
    photo read from a PNG or a TIFF has one digest; another photo of the same name and size has another.

    >>> pixels_sha256(np.zeros((2, 3, 3), np.uint8))[:12]
    '912c1186b206'
    """
    import hashlib

    return hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


def over_white(rgb: np.ndarray, alpha: np.ndarray, name="image") -> np.ndarray:
    """An (H, W, 3) uint8 image whose fully transparent pixels (``alpha`` 0) are white: such a pixel has no colour
    to read (a viewer shows what lies behind it), and a transparent border or cut-out stored black read as a
    stained cell (a review, stop 69: a black border became a WBC); the slide's light background is what belongs
    there. Pixels of any opacity keep their colour (a photo saved at 80 % opacity is still the photo). When any
    pixel is see-through, their share is said once for ``name``.

    >>> over_white(np.zeros((1, 3, 3), np.uint8), np.array([[255, 0, 9]], np.uint8))[0, :, 0].tolist()
    [0, 255, 0]
    """
    clear = np.nan_to_num(alpha, nan=1.0) <= 0
    if not clear.any() or clear.all():  # all of it see-through: a fourth channel of zeros, no opacity (nothing to show)
        return rgb
    said = f"{100 * float(clear.mean()):.1f} % of its pixels are transparent: read as white"
    warn_once(log, (str(name), said), "%s: %s", name, said)
    out = rgb.copy()
    out[clear] = 255
    return out


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    PNG, JPEG, BMP and the other formats Pillow opens; a ``.tif`` / ``.tiff`` file through
    tifffile (its first page: planar RGB made channels-last, the first plane of a stack). Grey becomes three
    equal channels and a fully transparent pixel is white (:func:`over_white`; palette and other modes are
    converted to RGB first);
    16-bit (a 16-bit colour PNG with all 16 bits), 32-bit and float data are rescaled to uint8
    over the image's own range of finite values (:func:`to_uint8`: one range for all channels;
    float data within 0-1 taken as 0-1); 8-bit data is kept as it is. An EXIF orientation (a camera's
    portrait shot) is applied, so the array is the image as viewers show it (not for TIFF files
    read through tifffile, nor 16-bit colour PNGs). An image is decoded whole:
    one over :data:`MAX_PIXELS` (400 MP) is refused from its header, before decoding.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.

    Returns
    -------
    (H, W, 3) uint8 ndarray
        The RGB image, C-contiguous.

    Raises
    ------
    HemasegInputError
        ``path`` is not a str or path (an array is already an image: pass it to
        :func:`hemaseg.segment` and the others as it is), names no file, a folder or an empty
        file; the file is not an image, is corrupt or truncated, has zero size or an unsupported
        shape, is over :data:`MAX_PIXELS`, or cannot be decoded in the memory there is. The error
        carries the path and the reason.

    Examples
    --------
    >>> import tempfile, os
    >>> from PIL import Image
    >>> p = os.path.join(tempfile.mkdtemp(), "g.png")
    >>> Image.fromarray(np.zeros((4, 5), np.uint8)).save(p)
    >>> read_image(p).shape
    (4, 5, 3)

    A 16-bit grey image is rescaled over its own range:

    >>> Image.fromarray(np.array([[0, 500, 1000]], np.uint16)).save(p)
    >>> img = read_image(p)
    >>> img.dtype.name, img[0, :, 0].tolist()
    ('uint8', [0, 128, 255])

    >>> read_image("no/such/image.png")
    Traceback (most recent call last):
    ...
    hemaseg.errors.HemasegInputError: no/such/image.png: no such file
    """
    if not isinstance(path, (str, os.PathLike)):
        raise HemasegInputError("path", f"a {type(path).__name__}, not a file path (an array is already an image: "
                                        "hemaseg.segment and the others take it as it is)")
    path = Path(path)
    arr = _read_raw(path)
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise HemasegInputError(path, "image has zero size")
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey or RGB + alpha: a pixel of no opacity is white
        colour = to_uint8(arr[..., :-1])
        arr = over_white(colour if colour.shape[-1] == 3 else np.repeat(colour, 3, axis=2), arr[..., -1], path)
    elif arr.ndim == 3 and arr.shape[-1] == 1:  # grey
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(to_uint8(arr)[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[-1] == 3:
        arr = to_uint8(arr)
    else:
        raise HemasegInputError(path, f"unsupported array shape {arr.shape}")
    return np.ascontiguousarray(arr)


# A TIFF larger than this (px) is opened lazily by open_image (when the caller can take a region at a
# time): its tiles or strips are read as each region is asked for, never the whole image at once.
LAZY_PIXELS = 8192 * 8192
# The largest image opened lazily: its label maps are still whole arrays (mostly untouched zero pages).
MAX_LAZY_PIXELS = 100_000 * 100_000


class LazyImage:
    """An (H, W, 3) uint8 RGB image read region by region from a TIFF (tiled, striped, pyramidal,
    OME), through tifffile's zarr store of the first series' full-resolution level.

    ``image[y0:y1, x0:x1]`` (any basic slices, steps too) reads only the tiles or strips under the
    region and returns a numpy array, converted as :func:`read_image` converts a whole image (grey
    to three channels, alpha dropped; 16-bit and float data scaled by one range for the whole
    image, taken from its smallest pyramid level). :meth:`downscaled` reads a pyramid level when
    the file has one. ``np.asarray(image)`` reads it whole (refused over :data:`MAX_PIXELS`).
    Needs zarr (``pip install 'hemaseg[slides]'``).
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path) -> None:
        import tifffile

        try:
            import zarr
        except ImportError:
            raise HemasegInputError(path, "a TIFF this large is read region by region, which needs zarr: "
                                          "pip install 'hemaseg[slides]'") from None
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self._levels = [zarr.open(self._tif.aszarr(series=0, level=k), mode="r") for k in range(len(series.levels))]
        except Exception as exc:  # tifffile and zarr raise many kinds on corrupt files
            raise HemasegInputError(self.path, f"not a readable TIFF ({exc.__class__.__name__}: {exc})") from None
        self.axes = series.axes.upper()
        if "Y" not in self.axes or "X" not in self.axes:
            raise HemasegInputError(self.path, f"no image plane in this TIFF (axes {series.axes})")
        shape = dict(zip(self.axes, self._levels[0].shape))
        self.shape = (int(shape["Y"]), int(shape["X"]), 3)
        # the first plane of any other axis is read (:meth:`_raw`), as read_image reads a stack's first: said
        planes = int(np.prod([n for ax, n in shape.items() if ax not in "YX" and not (ax in "SC" and n in (2, 3, 4))]))
        planes += sum(1 for s in self._tif.series[1:] if tuple(s.shape) == tuple(series.shape))
        if planes > 1:
            said = f"{planes} planes (a stack or series); only the first is read: save each plane as its own image to " \
                   "have them all"
            warn_once(log, (str(self.path), said), "%s: %s", self.path, said)
        if self.shape[0] * self.shape[1] > MAX_LAZY_PIXELS:
            raise HemasegInputError(self.path, f"{self.shape[1]}x{self.shape[0]} px is over the "
                                               f"{MAX_LAZY_PIXELS / 1e6:.0f} MP limit")
        self._range: tuple[float, float] | None = None
        if self._levels[0].dtype != np.uint8:
            sy, sx = (max(1, self._levels[-1].shape[self.axes.index(a)] // 2048) for a in "YX")
            small = self._raw(self._levels[-1], slice(None, None, sy), slice(None, None, sx))
            # on a reduced level (or a strided sample) cells are a few px: taken for specks, the range would be the
            # background's; the speck rule only where the level read is the image itself, as read_image reads it
            # (so not for an image read this way by the CLI, over 8192^2 px: its min..max, as before stop 67)
            whole = len(self._levels) == 1 and sy == sx == 1
            self._range = value_range(small, specks=whole) or (0.0, 1.0)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _raw(self, level, rows: slice, cols: slice) -> np.ndarray:
        """Samples of ``level`` under (rows, cols), as (h, w) or (h, w, C): the first plane of any other axis."""
        key, keep = [], []
        for ax, n in zip(self.axes, level.shape):
            if ax == "Y":
                key.append(rows)
                keep.append(ax)
            elif ax == "X":
                key.append(cols)
                keep.append(ax)
            elif ax in "SC" and n in (3, 4) and "S" not in keep and "C" not in keep:
                key.append(slice(None))
                keep.append(ax)
            else:
                key.append(0)
        arr = np.asarray(level[tuple(key)])
        if len(keep) == 3:
            arr = np.moveaxis(arr, [keep.index("Y"), keep.index("X")], [0, 1])
        elif keep.index("Y") > keep.index("X"):
            arr = arr.T
        return arr

    def _rgb(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3:
            arr = arr[..., :3]
        if self._range is not None:
            lo, hi = self._range
            a = arr.astype(np.float32)
            if a.dtype.kind == "f":
                a = np.where(np.isfinite(a), a, np.where(a == np.inf, hi, lo))
            arr = np.clip((a - lo) * (255.0 / (hi - lo) if hi > lo else 0.0) + 0.5, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return np.ascontiguousarray(arr)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if key and key[0] is Ellipsis:
            key = (slice(None), slice(None), *key[1:])
        rows = key[0] if len(key) > 0 else slice(None)
        cols = key[1] if len(key) > 1 and key[1] is not Ellipsis else slice(None)
        if not isinstance(rows, slice) or not isinstance(cols, slice):
            raise TypeError("a LazyImage is indexed by slices of rows and columns")
        out = self._rgb(self._raw(self._levels[0], rows, cols))
        return out[(slice(None), slice(None), *key[2:])] if len(key) > 2 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        check_size(self.path, self.shape[0], self.shape[1])
        out = self[:, :]
        return out.astype(dtype) if dtype is not None else out

    def reshape(self, *shape) -> np.ndarray:
        """The whole image read (:meth:`__array__`), reshaped: for code that samples small images whole."""
        return np.asarray(self).reshape(*shape)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def downscaled(self, factor: float, band_rows: int = 2048) -> np.ndarray:
        """The image resized by ``factor`` (< 1; area interpolation): from the smallest pyramid level
        at least that large when the file has one, else read from full resolution a band of rows at
        a time. (H', W', 3) uint8 of round(H x factor) x round(W x factor)."""
        h, w = self.shape[:2]
        th, tw = max(1, round(h * factor)), max(1, round(w * factor))
        yi, xi = self.axes.index("Y"), self.axes.index("X")
        level = next(lv for lv in reversed(self._levels) if lv.shape[yi] >= th and lv.shape[xi] >= tw)
        lh, lw = level.shape[yi], level.shape[xi]
        if lh * lw <= 4 * th * tw or lh <= band_rows:
            arr = self._rgb(self._raw(level, slice(None), slice(None)))
            return arr if (lh, lw) == (th, tw) else cv2.resize(arr, (tw, th), interpolation=cv2.INTER_AREA)
        out = np.empty((th, tw, 3), np.uint8)
        for y0 in range(0, lh, band_rows):
            y1 = min(lh, y0 + band_rows)
            t0, t1 = round(y0 * th / lh), round(y1 * th / lh)
            if t1 > t0:
                band = self._rgb(self._raw(level, slice(y0, y1), slice(None)))
                out[t0:t1] = cv2.resize(band, (tw, t1 - t0), interpolation=cv2.INTER_AREA)
        return out


def open_image(path: str | Path, lazy: bool = True) -> np.ndarray | LazyImage:
    """:func:`read_image`, except that a TIFF over :data:`LAZY_PIXELS` is opened as a
    :class:`LazyImage` when ``lazy`` (for callers that read it a region at a time)."""
    path = Path(path)
    if lazy and path.suffix.lower() in (".tif", ".tiff") and path.is_file() and path.stat().st_size:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = dict(zip(series.axes.upper(), series.shape))
                pixels = int(shape.get("Y", 0)) * int(shape.get("X", 0))
        except Exception:
            pixels = 0  # read_image says what is wrong with it
        if pixels > LAZY_PIXELS:
            return LazyImage(path)
    return read_image(path)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label/mask image as an (H, W) integer array; check it matches ``shape`` if given."""
    path = Path(path)
    arr = _palette_indices(path)
    arr = _read_raw(path) if arr is None else arr
    if arr.size == 0 or min(arr.shape[:2]) == 0:
        raise HemasegInputError(path, "mask has zero size")
    if arr.ndim == 3:
        # A grey mask saved as RGB(A): all colour channels equal; take the first. A photo or a
        # colour-coded mask read by its first channel would give labels that mean nothing.
        if arr.shape[2] > 1 and not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(3, arr.shape[2]))):
            raise HemasegInputError(path, "a colour image, not a label or mask image (its colour channels differ; "
                                          "labels are one grey value per class or instance)")
        arr = arr[..., 0]
    if shape is not None and tuple(arr.shape[:2]) != tuple(shape[:2]):
        raise HemasegInputError(path, f"mask size {arr.shape[1]}x{arr.shape[0]} does not match image size {shape[1]}x{shape[0]}")
    return arr


def _voc_colour(i: int) -> tuple[int, int, int]:
    """Index ``i``'s colour in the standard Pascal VOC colour map (what VOC-style index masks are drawn with).

    >>> _voc_colour(1), _voc_colour(2), _voc_colour(15)
    ((128, 0, 0), (0, 128, 0), (192, 128, 128))
    """
    r = g = b = 0
    for j in range(8):
        r |= ((i >> (3 * j)) & 1) << (7 - j)
        g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
        b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
    return r, g, b


def _palette_indices(path: Path) -> np.ndarray | None:
    """A Pascal VOC-style index mask (a palette PNG in the standard VOC colour map: class 1 drawn dark red, 2 dark
    green) as its indices, which are the labels (it was refused as "a colour image"); None for any other file,
    which is read as before (a palette of grey levels by its grey values; one of other colours refused as a colour
    image: its indices need not mean classes). VOC's "void" border (index 255) is refused: neither class nor
    object, it was read as one."""
    if path.suffix.lower() != ".png" or not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            check_size(path, im.size[1], im.size[0])
            idx = np.asarray(ImageOps.exif_transpose(im))
            pal = np.asarray(im.getpalette() or [], np.int32).reshape(-1, 3)
    except (OSError, UnidentifiedImageError, ValueError):
        return None  # said by the reader
    used = [int(i) for i in np.unique(idx) if i < len(pal)]
    if all(pal[i][0] == pal[i][1] == pal[i][2] for i in used):
        return None  # grey levels (a binary 0/255 mask saved as a palette PNG too): read by its grey values
    if all(tuple(pal[i]) == _voc_colour(i) for i in used if i != 255):
        if 255 in used:
            raise HemasegInputError(path, "a VOC index mask with 'void' (index 255) pixels: neither class nor object "
                                          "here; export it without the void border")
        return idx.copy()
    return None


def check_mask_values(path: str | Path, mask: np.ndarray, allowed, convention: str) -> None:
    """:class:`HemasegInputError` naming the values found if ``mask`` holds any value not in ``allowed``
    (``convention`` says what they mean, e.g. "0/128/255 background/cytoplasm/nucleus").

    >>> check_mask_values("m.png", np.array([0, 50, 100]), (0, 128, 255), "0/128/255")
    Traceback (most recent call last):
    ...
    hemaseg.errors.HemasegInputError: m.png: mask values 0, 50, 100 do not follow the labels of this task (0/128/255)
    """
    found = np.unique(mask)
    if not np.isin(found, np.asarray(list(allowed))).all():
        raise HemasegInputError(path, f"mask values {describe_values(found)} do not follow the labels of this task "
                                      f"({convention})")


def describe_values(values: np.ndarray, limit: int = 8) -> str:
    """A short list of distinct values: ``0, 50, 100`` or ``0, 1, 2, ... (37 values)``."""
    values = [int(v) if float(v).is_integer() else float(v) for v in np.asarray(values).ravel()]
    if len(values) <= limit:
        return ", ".join(map(str, values))
    return ", ".join(map(str, values[:limit - 1])) + f", ..., {values[-1]} ({len(values)} values)"


def real_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute with its links followed, as ``Path.resolve()`` makes it, but a loop of links
    (``a.jpg -> a.jpg``) is returned as far as it resolves instead of raising: an input that is a loop fails
    as one line when it is read, and costs no other input (``Path.resolve`` raised and ended the command).

    >>> real_path("x/../y.png") == Path("y.png").absolute()
    True
    """
    return Path(os.path.realpath(path))


def _missing_link(path: Path) -> str:
    """Why a link ``path`` that ``exists()`` denies cannot be read (``stat`` says ELOOP for a loop on every Python;
    ``Path.resolve`` raises for one only up to 3.12)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of links, no file"
    return "a link to a file that is not there"


def _listed_image(q: Path) -> bool:
    """A folder's or a glob's entry listed as an image: a file of an image suffix, or a link to one that is not
    there or a loop of links, listed to fail as one line (it was skipped without a word)."""
    if q.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    return q.is_file() or (q.is_symlink() and not q.exists())


def expand_inputs(inputs: list[str | Path] | str | Path, recursive: bool = False) -> list[str]:
    """Files, folders and glob patterns as the image paths they name, each spelt as the user spelt it:
    a file as typed, whatever its suffix (so that a bad one is reported, not skipped); a folder's
    images (:data:`IMAGE_SUFFIXES`; sub-folders too when ``recursive``) as the folder as typed joined
    with their path inside it (``./crops/a.jpg`` stays so); a glob's image matches as the glob spells
    them, sorted, or the pattern itself when it matches none (so that it is reported). One entry per
    file however it was spelt (``a/../a/x.jpg``, ``./a/x.jpg``); links are kept apart.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> for n in ("b.jpg", "a.png", "notes.txt"):
    ...     _ = open(os.path.join(d, n), "w").write("x")
    >>> [os.path.basename(p) for p in expand_inputs([d, os.path.join(d, "*"), os.path.join(d, "notes.txt")])]
    ['a.png', 'b.jpg', 'notes.txt']
    >>> expand_inputs(os.path.join(d, "*.bmp")) == [os.path.join(d, "*.bmp")]
    True
    """
    import glob

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[str] = []
    for item in map(os.fspath, inputs):
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out += [os.path.join(item, str(q.relative_to(p))) for q in sorted(it) if _listed_image(q)]
        elif any(ch in item for ch in "*?[") and not p.is_file():  # a real file named img[1].jpg is a file
            out += sorted(q for q in glob.glob(item, recursive=True) if _listed_image(Path(q))) or [item]
        else:
            out.append(item)
    seen: set[str] = set()
    return [p for p in out if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]


def list_images(inputs: list[str | Path] | str | Path, recursive: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into image paths (:func:`expand_inputs`, as Paths).

    Files given explicitly are kept whatever their suffix so that a bad one is reported,
    not silently skipped; a glob that matches no image is kept as given, for the same reason.
    """
    return [Path(p) for p in expand_inputs(inputs, recursive)]


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header when possible."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            h, w = im.size[1], im.size[0]
            turned = _orientation(im) >= 5 and not _png_16bit_colour(path)  # 5-8 turn it a quarter (read_image)
            return (w, h) if turned else (h, w)
    except (OSError, UnidentifiedImageError):
        return read_image(path).shape[:2]


# µm per px: a microscope photo's pixel is well under this; a coarser "resolution" in a file is a
# camera's or an editor's default (72 or 96 dpi, about 350 and 260 µm/px), not a scale of the sample.
MAX_PIXEL_SIZE_UM = 10.0


# OME's UnitsLength (the metric and imperial ones a microscope's pixel could be given in)
_UNIT_UM = {"pm": 1e-6, "Å": 1e-4, "\u212b": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3,
            "cm": 1e4, "dm": 1e5, "m": 1e6, "thou": 25.4, "mil": 25.4, "in": 25400.0, "ft": 304800.0}


def _ome_pixel_size(path: str | Path) -> float | None:
    """PhysicalSizeX of an OME-TIFF's first image, in µm (its PhysicalSizeXUnit, µm by default)."""
    import xml.etree.ElementTree as ET

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
        if not xml:
            return None
        for el in ET.fromstring(xml).iter():
            if el.tag.rsplit("}", 1)[-1] == "Pixels" and el.get("PhysicalSizeX"):
                unit = el.get("PhysicalSizeXUnit", "µm")
                if unit not in _UNIT_UM:  # (it was taken as no pixel size without a word)
                    warn_once(log, (str(path), "unit", unit), "%s: OME PhysicalSizeXUnit %r is no unit of length "
                              "hemaseg knows: the pixel size is not read from it (give --pixel-size)", path, unit)
                    return None
                return float(el.get("PhysicalSizeX")) * _UNIT_UM[unit]
    except Exception:  # no OME, or OME that cannot be read: the resolution tags may still tell
        return None
    return None


def pixel_size_um(path: str | Path) -> float | None:
    """Size of a pixel in µm from the file's metadata: an OME-TIFF's ``PhysicalSizeX``, else the
    resolution tags (TIFF XResolution with an inch or cm unit, PNG pHYs, JPEG JFIF density), when
    they give a microscope's scale (at most :data:`MAX_PIXEL_SIZE_UM`); None otherwise."""
    if Path(path).suffix.lower() in (".tif", ".tiff"):
        um = _ome_pixel_size(path)
        if um is not None and 0.0 < um <= MAX_PIXEL_SIZE_UM:
            return round(um, 6)
    try:
        with Image.open(path) as im:
            if im.format == "TIFF":
                unit = im.tag_v2.get(296, 2)  # ResolutionUnit: 1 none, 2 inch, 3 cm
                res = im.tag_v2.get(282)  # XResolution, pixels per unit
                um = {2: 25400.0, 3: 10000.0}.get(int(unit), 0.0) / float(res) if res else 0.0
            else:
                dpi = im.info.get("dpi")
                um = 25400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else 0.0
    except (OSError, UnidentifiedImageError, TypeError, ValueError, ZeroDivisionError):
        return None
    return round(um, 6) if 0.0 < um <= MAX_PIXEL_SIZE_UM else None
