"""Dataset readers: wbc-seg (NNN.bmp + NNN.png), paired image/mask folders, the DSB layout."""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hemaseg.core.labels import ANY_FOREGROUND
from hemaseg.core.vocabulary import KNOWN_NAMES
from hemaseg.errors import HemasegInputError
from hemaseg.io.images import IMAGE_SUFFIXES, describe_values, read_image, read_mask
from hemaseg.io.writers import written_grid
from hemaseg.progress import warn_once

MASK_DIRS = ("masks", "mask", "labels", "label", "segments", "gt")
IMAGE_DIRS = ("images", "image", "imgs")
MASK_SUFFIXES = ("_mask", "-mask", "_label", "-label", "_gt")


@dataclass(frozen=True)
class Pair:
    """An image file and its mask file."""

    image: Path
    mask: Path


def _is_colour(path: Path) -> bool:
    """Whether an image file holds colour (RGB or RGBA), from its header; False when it cannot be told."""
    try:
        with Image.open(path) as im:
            return im.mode in ("RGB", "RGBA", "CMYK", "YCbCr")
    except (OSError, ValueError):
        return False


def _strip_mask_suffix(stem: str) -> str | None:
    for s in MASK_SUFFIXES:
        if stem.lower().endswith(s):
            return stem[: -len(s)]
    return None


def label_images_among(paths: list, given_folders: tuple = ()) -> list:
    """The paths that are a photo's label image by name: ``X_mask.png`` (any of :data:`MASK_SUFFIXES`) whose
    photo ``X`` (any image suffix) lies beside it among ``paths`` (a lab's own training folder given to
    ``segment``: its masks were segmented as photos), and a grey PNG or TIFF beside a colour image of its stem
    (wbc-seg's ``NNN.bmp`` and ``NNN.png``), and the images in a masks folder beside an images folder (a DSB
    folder's ``ID/masks/*.png`` beside ``ID/images/``: a quoted ``'stage1_train/**/*.png'`` segmented them),
    unless that masks folder is one of ``given_folders`` (named by the user: ``segment lab/masks``). A ``_mask``
    file without its photo is no one's label.

    >>> label_images_among([Path("d/a.jpg"), Path("d/a_mask.png"), Path("d/b_gt.png"), Path("e/a_label.png")])
    [PosixPath('d/a_mask.png')]
    """
    photos = {(Path(p).parent, Path(p).stem.lower()) for p in paths if _strip_mask_suffix(Path(p).stem) is None}
    labels = [p for p in paths if (stem := _strip_mask_suffix(Path(p).stem)) is not None
              and (Path(p).parent, stem.lower()) in photos]
    # wbc-seg's layout (a review): NNN.bmp and its grey label map NNN.png, one stem; the grey one beside a colour one
    by_stem: dict = {}
    for p in paths:
        by_stem.setdefault((Path(p).parent, Path(p).stem.lower()), []).append(p)
    for group in (g for g in by_stem.values() if len(g) > 1):
        grey = [Path(p).suffix.lower() in (".png", ".tif", ".tiff") and _is_grey(Path(p)) for p in group]
        if not all(grey):  # the grey one beside a photo (a colour palette PNG, an unreadable header: no label)
            labels += [p for p, g in zip(group, grey) if g]
    named = {Path(f).resolve() for f in given_folders}
    labels += [p for p in paths if Path(p).parent.name.lower() in MASK_DIRS
               and any((Path(p).parent.parent / d).is_dir() for d in IMAGE_DIRS)
               and Path(p).parent.resolve() not in named]
    out = set(labels)
    return [p for p in paths if p in out]


def _is_grey(path: Path) -> bool:
    """Whether an image file holds grey values by its header: a grey mode, or a palette of grey colours only
    (a colour palette PNG is a photo); False when it cannot be told."""
    try:
        with Image.open(path) as im:
            if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                return True
            if im.mode == "P":
                pal = np.asarray(im.getpalette() or [], np.int32).reshape(-1, 3)
                used = np.unique(np.asarray(im))
                pal = pal[used[used < len(pal)]]
                return bool(len(pal)) and bool((pal == pal[:, :1]).all())
    except (OSError, ValueError):
        pass
    return False


def find_pairs(root: str | Path, failed: list[dict] | None = None) -> list[Pair]:
    """Pair every image under ``root`` with its mask.

    Layouts understood, searched recursively:
    - wbc-seg: ``NNN.bmp`` (image) beside ``NNN.png`` (mask) in one folder;
    - ``X.jpg`` beside ``X_mask.png`` / ``X-mask.jpg`` (seed 000);
    - paired folders ``images/X.*`` and ``masks/X.*`` (also labels/, segments/, gt/).

    ``failed``: an image without its mask is listed there ({"image", "reason"}), for evaluation and
    training to say so: in paired folders, in a folder of ``X`` + ``X_mask`` pairs, and in a wbc-seg
    folder (one where some ``X.bmp`` has its ``X.png``) a non-PNG image alone by its name (a lone PNG
    may be a mask or an earlier run's picture: not listed).
    """
    root = Path(root)
    if not root.is_dir():
        raise HemasegInputError(root, "not a folder")
    pairs: list[Pair] = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.is_file()} | {root}):
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if folder.name.lower() in IMAGE_DIRS:
            for mdir in MASK_DIRS:
                mfolder = folder.parent / mdir
                if mfolder.is_dir():
                    masks = {p.stem: p for p in mfolder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
                    pairs += [Pair(f, masks[f.stem]) for f in sorted(files) if f.stem in masks]
                    if failed is not None:  # (a stem with another file there, e.g. a YOLO label, is no pair)
                        stems = {p.stem for p in mfolder.iterdir()}
                        failed += [{"image": str(f), "reason": f"no mask ({mdir}/{f.stem}.* missing)"}
                                   for f in sorted(files) if f.stem not in stems]
                    break
            continue
        if folder.name.lower() in MASK_DIRS:
            continue
        by_stem: dict[str, list[Path]] = {}
        for f in files:
            by_stem.setdefault(f.stem, []).append(f)
        suffixed = 0
        for f in sorted(files):
            base = _strip_mask_suffix(f.stem)
            if base is not None and base in by_stem:
                imgs = [p for p in by_stem[base] if p != f]
                if imgs:
                    pairs.append(Pair(imgs[0], f))
                    suffixed += 1
        paired = 0
        for stem, group in sorted(by_stem.items()):
            if len(group) == 2:
                pngs = [p for p in group if p.suffix.lower() == ".png"]
                others = [p for p in group if p.suffix.lower() != ".png"]
                if len(pngs) == 1 and len(others) == 1:
                    # wbc-seg's rule, the PNG is the mask; but a colour PNG beside a grey TIFF is the photo beside its
                    # label map (it was read as a mask: "a colour image" or "mask values 62...254")
                    swap = others[0].suffix.lower() in (".tif", ".tiff") and _is_colour(pngs[0]) \
                        and not _is_colour(others[0])
                    pairs.append(Pair(pngs[0], others[0]) if swap else Pair(others[0], pngs[0]))
                    paired += 1
        if failed is not None and (paired or suffixed):
            # a wbc-seg folder: an image there without its PNG mask is a sample; a folder of X + X_mask pairs: any
            # image without its mask (it went unsaid there)
            named = {p.image for p in pairs} | {p.mask for p in pairs}
            stems = Counter(p.stem for p in folder.iterdir())  # a stem with another file (a YOLO label) is no pair
            failed += [{"image": str(f), "reason": f"no mask ({f.stem}.png missing)" if paired else
                        f"no mask ({f.stem}_mask.* missing)"} for f in sorted(files)
                       if (f.suffix.lower() != ".png" or not paired) and f not in named and stems[f.stem] == 1
                       and _strip_mask_suffix(f.stem) is None and f.name != "worst_cases.png"]  # (evaluate's grid)
    return pairs


# a JPEG mask whose nucleus (0/1/2) or cytoplasm (0/128/255) has a plateau (what is left one pixel in from its edges)
# under this share of its cells is binary
BINARY_SHARE = 0.02


def _plateau(region: np.ndarray) -> int:
    """Pixels of ``region`` a pixel in from its edges (a 3 x 3 erosion): none for a band at most two pixels wide."""
    return int(cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8)).sum())
WBC_CONVENTION = "0/128/255 background/cytoplasm/nucleus, 0/1/2, or a binary 0/255 or 0/1 cell mask"


def wbc_classes(mask: np.ndarray, path: str | Path = "") -> np.ndarray:
    """Map a WBC mask to class indices 0 background, 1 cytoplasm, 2 nucleus: (H, W) uint8.

    Accepts the wbc-seg convention (0/128/255) and index masks (0/1/2). A binary 0/255 or 0/1 mask
    outlines whole cells without saying which part is nucleus: its cells are
    :data:`~hemaseg.engine.losses.ANY_FOREGROUND` (254; training teaches "cell" there, scoring takes
    the whole cell and leaves the nucleus unscored; they were cytoplasm, which taught the nucleus as
    cytoplasm). JPEG-saved masks are snapped to the nearest of 0/128/255 when nearly all their pixels
    lie close to one; a dark JPEG (no value above 12) is taken for a 0/1/2 index mask and rounded to
    it. Any other value set is refused
    (:class:`HemasegInputError` naming the values found): read as one of these, it would teach wrong
    classes.

    >>> wbc_classes(np.array([[0, 128], [255, 255]])).tolist()
    [[0, 1], [2, 2]]
    >>> wbc_classes(np.array([[0, 255], [255, 255]])).tolist()
    [[0, 254], [254, 254]]
    """
    values = np.unique(mask)
    vset = set(values.tolist())
    jpeg = str(path).lower().endswith((".jpg", ".jpeg"))
    if vset <= {0, 1, 2} and 2 in vset and not jpeg:
        return mask.astype(np.uint8)
    if vset <= {0, 1} or vset <= {0, 255}:
        return np.where(mask > 0, ANY_FOREGROUND, 0).astype(np.uint8)
    m = mask.astype(np.int32)
    if jpeg and m.max(initial=0) <= 12:  # a 0/1/2 index mask saved as JPEG (it was read as all background)
        out = np.clip(np.rint(m), 0, 2).astype(np.uint8)
        # a binary 0/1 one rings into a few 2s at its edges, never a nucleus' plateau
        return out if _plateau(out == 2) >= BINARY_SHARE * (out > 0).sum() else np.where(
            out > 0, ANY_FOREGROUND, 0).astype(np.uint8)
    if not vset <= {0, 128, 255}:
        # wbc-seg maps are clean 0/128/255, but JPEG-saved masks are not: snap those to the nearest
        # when 99 % of the pixels are within 40 of a label value (edges ring; wrong labels do not).
        near = np.min(np.abs(m[..., None] - np.array([0, 128, 255])), axis=-1) <= 40
        if not jpeg or near.mean() < 0.99:
            raise HemasegInputError(path, f"mask values {describe_values(values)} do not follow the labels of "
                                          f"this task ({WBC_CONVENTION})")
        # a binary 0/255 JPEG (its cells were read as nucleus): its edges ring, or are smoothed, through the middle
        # values in a band a pixel or two wide, never the plateau of a cytoplasm
        if _plateau(np.abs(m - 128) <= 40) < BINARY_SHARE * (m >= 128).sum():
            return np.where(m >= 128, ANY_FOREGROUND, 0).astype(np.uint8)
    out = np.zeros(mask.shape, np.uint8)
    out[m >= 64] = 1
    out[m >= 192] = 2
    return out


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its WBC class mask: ((H, W, 3) uint8, (H, W) uint8)."""
    image = read_image(pair.image)
    mask = read_mask(pair.mask, image.shape[:2])
    return image, wbc_classes(mask, pair.mask)


def find_dsb(root: str | Path, failed: list[dict] | None = None) -> list[Pair]:
    """Find Data Science Bowl samples under ``root``: ``<id>/images/<id>.png`` with a ``<id>/masks/`` folder.

    ``Pair.mask`` is the masks folder (one binary PNG per nucleus; an empty one: an image with no
    nucleus, a sample like any other). An image without a masks folder (a test image) is no sample:
    it is left out, and a DSB id's (``<id>/images/<id>.*``) is listed in ``failed`` ({"image",
    "reason"}) when given (evaluation says so). Use :func:`~hemaseg.io.images.list_images` for
    unlabelled images.
    """
    root = Path(root)
    if not root.is_dir():
        raise HemasegInputError(root, "not a folder")
    pairs = []
    for images in sorted(root.rglob("images")):
        if not images.is_dir():
            continue
        masks = images.parent / "masks"
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        named = [p for p in files if p.stem == images.parent.name]  # a DSB id, not another layout's images/
        if masks.is_dir() and files and not named:
            # images/X.* with masks/X.*: paired folders (find_pairs), one label image per image, not
            # one id whose masks/ holds its nuclei (the first image was given every label as a nucleus)
            stems = {p.stem for p in masks.iterdir()}
            if len(files) > 1 or files[0].stem in stems:
                continue
        if files and masks.is_dir():
            pairs.append(Pair((named or files)[0], masks))
            continue
        if named and failed is not None:
            failed.append({"image": str(named[0]), "reason": "no masks (no masks/ folder beside images/)",
                           "unlabelled": True})  # a DSB test image: published without labels, no failed sample
    return pairs


def read_dsb_masks(masks: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a DSB ``masks/`` folder (one binary PNG per nucleus) as (H, W) uint16 labels 1..N.

    Nuclei are numbered in file-name order (numbered names ``<id>_<k>.png``, as ``hemaseg convert --to dsb``
    writes them, in the order of ``k``: 2 before 10, so a label map comes back with its own numbers); a pixel
    claimed by two masks (never in the fixed DSB data) goes to the later one, said in a warning with the masks that
    lost every pixel so (a walkthrough's nucleus inside a later one, and a duplicated mask, went unsaid).
    """
    masks = Path(masks)
    files = sorted(p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if masks.is_dir() else []
    if files and all(re.fullmatch(r"[0-9]+", p.stem.rpartition("_")[2]) for p in files):
        files.sort(key=lambda p: (p.stem.rpartition("_")[0], int(p.stem.rpartition("_")[2])))
    if not files and not masks.is_dir():
        raise HemasegInputError(masks, "masks folder not found")
    labels = None if shape is None else np.zeros(shape, np.uint16)
    overlapping, drawn = 0, []
    for i, f in enumerate(files, 1):
        m = read_mask(f, shape) > 0
        if labels is None:
            labels = np.zeros(m.shape, np.uint16)
        overlapping += bool((labels[m] > 0).any())
        drawn += [i] if m.any() else []
        labels[m] = i
    if labels is None:
        raise HemasegInputError(masks, "no mask files and no image size to make an empty label image")
    if overlapping:
        lost = len(np.setdiff1d(drawn, labels))
        logging.getLogger(__name__).warning(
            "%s: %d mask(s) overlap an earlier one: the shared pixels go to the later mask%s", masks, overlapping,
            f", and {lost} mask(s) wholly covered by later ones are lost" if lost else "")
    return labels


def load_instances(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its instance labels: ((H, W, 3) uint8, (H, W) uint16).

    The mask is a DSB masks folder or a label image read by :func:`read_instances`.
    """
    image = read_image(pair.image)
    if Path(pair.mask).is_dir():
        return image, read_dsb_masks(pair.mask, image.shape[:2])
    return image, read_instances(pair.mask, image.shape[:2])


MAX_INSTANCES = 65535  # a uint16 label map's ids


def read_instances(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) uint16 instance labels (0 background, 1..N) of a label image (PNG, TIFF, ...; ``shape`` checked
    as :func:`~hemaseg.io.images.read_mask` does). A binary mask (one value besides 0: 0/1, 0/255, 0/65535) or
    a JPEG is read as its connected components; ids above 65535 (int32 label maps) are renumbered 1..N; a
    class map of 0/128/255 (wbc-seg's) and negative ids are refused (:class:`HemasegInputError`).

    >>> import tempfile, os
    >>> from PIL import Image
    >>> p = os.path.join(tempfile.mkdtemp(), "m.png")
    >>> m = np.zeros((8, 8), np.uint8); m[1:3, 1:3] = 1; m[5:7, 5:7] = 1  # two nuclei, both labelled 1
    >>> Image.fromarray(m).save(p)
    >>> np.unique(read_instances(p)).tolist()
    [0, 1, 2]
    """
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    labels = read_mask(path, shape)
    values = np.unique(labels)
    if labels.dtype == np.uint8 and {128, 255} <= set(values.tolist()) <= {0, 128, 255}:
        # a class map (wbc-seg's): read as instances it is two "nuclei", the cytoplasm and the nucleus
        raise HemasegInputError(path, "values 0/128/255 are a class mask (such as wbc-seg's background / "
                                      "cytoplasm / nucleus), not nucleus instance labels (0 background, 1..N "
                                      "one per nucleus)")
    if values.size and values[0] < 0:
        raise HemasegInputError(path, f"negative label values ({values[0]}): labels are 0 background, 1..N one per "
                                      "object")
    lossy = Path(path).suffix.lower() in (".jpg", ".jpeg")
    if lossy or np.count_nonzero(values) == 1:
        # a binary mask: instances are its connected components (a JPEG's compression noise would make each
        # grey level a nucleus, so a JPEG mask is read as binary, at half its brightest value)
        labels = label(labels > (labels.max() / 2 if lossy else 0))
    elif values.size and values[-1] > MAX_INSTANCES:  # an int32 map: ids renumbered, never wrapped
        labels = relabel_sequential(labels.astype(np.int64))[0]
    if labels.max() > MAX_INSTANCES:
        raise HemasegInputError(path, f"{int(labels.max())} objects: more than the {MAX_INSTANCES} a uint16 label "
                                      "map holds; cut the image into tiles")
    return labels.astype(np.uint16)


# wbc-seg's "Class Labels of Dataset 1.csv": image number -> type.
WBCSEG_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
TYPE_ALIASES = {"neutrophils": "neutrophil", "eosinophils": "eosinophil", "monocytes": "monocyte",
                "lymphocytes": "lymphocyte", "basophils": "basophil", "neutro": "neutrophil", "eosino": "eosinophil",
                "monoc": "monocyte", "lympho": "lymphocyte", "baso": "basophil"}


def canonical_type(name: str) -> str:
    """Folder/class name -> canonical lower-case cell type ('Neutrophils' -> 'neutrophil'; 'Platelets',
    'Erythroblasts': the plural of a name the project knows).

    >>> canonical_type("Lymphocytes"), canonical_type("Erythroblasts"), canonical_type("Smudge (lymphocyte)")
    ('lymphocyte', 'erythroblast', 'smudge (lymphocyte)')
    """
    n = name.strip().lower()
    if n in TYPE_ALIASES:
        return TYPE_ALIASES[n]
    # the plural of a name the project knows, and nothing more: "Smudge (lymphocyte)" stays unknown, refused or
    # said, never read as lymphocytes
    return n[:-1] if n.endswith("s") and n[:-1] in KNOWN_NAMES else n


def find_labelled_cells(root: str | Path) -> list[tuple[Path, str]]:
    """Single-cell images with their type: a wbc-seg folder with its class CSV, or an ImageFolder tree.

    - wbc-seg: ``Class Labels of Dataset 1.csv`` (``image ID,class label``, 1 neutrophil,
      2 lymphocyte, 3 monocyte, 4 eosinophil, 5 basophil) beside or above ``NNN.bmp`` files;
    - ImageFolder: ``ROOT/<Class>/*.jpg`` (class names such as Neutrophil or NEUTROPHIL).
    """
    import csv

    root = Path(root)
    if not root.is_dir():
        raise HemasegInputError(root, "not a folder")
    out: list[tuple[Path, str]] = []
    for table in sorted(root.rglob("*.csv")):
        with open(table, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image id", "class label"]:
            continue
        images: dict[str, list[Path]] = {}
        missing: list[str] = []
        unknown: list[str] = []
        for p in sorted(table.parent.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(MASK_SUFFIXES):
                images.setdefault(p.stem, []).append(p)
        for r in rows[1:]:
            try:
                num, lab = int(r[0]), int(r[1])
            except (ValueError, IndexError):
                raise HemasegInputError(table, f"bad row {r!r}: expected image number, class number") from None
            stem = f"{num:03d}"
            group = images.get(stem, [])
            # wbc-seg: NNN.bmp is the image, NNN.png its mask.
            cand = [p for p in group if p.suffix.lower() != ".png"] or group
            if cand and lab in WBCSEG_TYPES:
                out.append((cand[0], WBCSEG_TYPES[lab]))
            else:  # said, not scored or trained on unsaid
                (unknown if cand else missing).append(str(num))
        if missing or unknown:
            logging.getLogger(__name__).warning(
                "%s: rows left out: %s", table, "; ".join(
                    part for part in (f"{len(missing)} name no image here ({', '.join(missing[:5])}"
                                      f"{', ...' if len(missing) > 5 else ''})" if missing else "",
                                      f"{len(unknown)} a class number other than 1-5 ({', '.join(unknown[:5])})"
                                      if unknown else "") if part))
    if out:
        return out
    empty = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        out += [(p, canonical_type(folder.name)) for p in files]
        empty += [] if files else [folder.name]
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not written_grid(p)]  # evaluate's own confusion.png there is no crop
    if out and (loose or empty):  # dropped without a word before; a folder of crops alone is no labelled set
        warn_once(logging.getLogger(__name__), ("labelled cells", str(root.resolve())),
            "%s: %s", root, "; ".join(part for part in (
                f"{len(loose)} image(s) at the top, in no <type>/ folder, left out (first: {sorted(loose)[0]})"
                if loose else "", f"type folder(s) holding no image: {', '.join(empty)}" if empty else "") if part))
    return out


def parse_xml(path: str | Path, what: str = "XML"):
    """Root element of an XML file; HemasegInputError naming the file when it cannot be read."""
    import xml.etree.ElementTree as ET

    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise HemasegInputError(path, f"not a readable {what} ({exc})") from None


def read_voc(xml: str | Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Pascal VOC annotation -> [(name, (x1, y1, x2, y2)), ...] in pixels (BCCD: RBC, WBC, Platelets)."""
    root = parse_xml(xml, "VOC XML")
    out = []
    incomplete = 0
    for obj in root.iter("object"):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if name is None or box is None:  # no class or no box: nothing to read, but said (it was dropped silently)
            incomplete += 1
            continue
        try:
            coords = tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise HemasegInputError(xml, f"bad bndbox for {name!r}") from None
        out.append((name.strip(), coords))
    if incomplete:
        logging.getLogger(__name__).warning("%s: %d <object>(s) without a <name> or a <bndbox> left out", xml,
                                            incomplete)
    return out


def read_colour_map(path: str | Path, palette: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """Colour map PNG -> (H, W) uint8 class indices by the nearest palette colour (anti-aliased
    edges and near-colours such as (255, 225, 0) for (255, 255, 0) fall to the closest class)."""
    return _nearest_colour(read_image(path), palette)


def _nearest_colour(img: np.ndarray, palette: dict[int, tuple[int, int, int]]) -> np.ndarray:
    img = img.astype(np.int32)
    keys = sorted(palette)
    cols = np.array([palette[k] for k in keys], np.int32)
    flat = img.reshape(-1, 3)
    # Distances for the unique colours only: maps hold few distinct colours.
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    d = ((uniq[:, None, :] - cols[None]) ** 2).sum(-1)
    idx = np.array(keys, np.uint8)[d.argmin(1)]
    return idx[inverse.ravel()].reshape(img.shape[:2])


def find_smear_pairs(root: str | Path, failed: list[dict] | None = None) -> list[tuple[Path, Path]]:
    """(image, label) files of a seed-002 folder: ``images/<name>.*`` with ``segments/<name>.png``
    (colour maps) or ``classes/<name>.png`` (index maps). An image with neither is left out, and
    listed in ``failed`` ({"image", "reason"}) when given."""
    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise HemasegInputError(root, "no images/ folder (seed-002 layout: images/, segments/)")
    out = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        for sub in ("classes", "segments"):
            cands = [p for p in (root / sub).glob(f"{img.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if cands:
                out.append((img, cands[0]))
                break
        else:
            if failed is not None:
                failed.append({"image": str(img), "reason": f"no class map (classes/{img.stem}.png or "
                                                            f"segments/{img.stem}.png)"})
    return out


def read_smear_label(path: str | Path, palette: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """A seed-002 label file -> (H, W) uint8 class indices (``classes/`` index PNG, or a colour map
    read with ``palette``, class index -> RGB). A grey file of values 0..9 is an index map wherever it
    lies (``segment --task smear10`` writes them: in ``segments/`` each was read as black, background,
    and scored 0.33 without a word); a grey file of other values is neither, refused."""
    path = Path(path)
    if path.parent.name == "classes":
        return read_mask(path).astype(np.uint8)
    img = read_image(path)
    if not ((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()):
        return _nearest_colour(img, palette)
    grey = img[..., 0]
    if grey.max() <= max(palette):
        return grey
    raise HemasegInputError(path, f"a grey map with values up to {int(grey.max())}: neither class indices "
                                  f"(0-{max(palette)}) nor a colour map of the seed-002 palette")


def read_smear_pairs(root: str | Path, palette: dict[int, tuple[int, int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, class map) arrays of a seed-002 folder (colour maps read with ``palette``)."""
    return [(read_image(i), read_smear_label(m, palette)) for i, m in find_smear_pairs(root)]


def read_smear_labels(path: str | Path) -> list[dict]:
    """Objects of a seed-002 labels JSON (``{"0": {"className", "classIdx", "posX", "posY", "bboxW",
    "bboxH", "tlX", "tlY", ...}, ...}``), in key order."""
    import json

    try:
        d = json.loads(Path(path).read_text())
        objs = [d[k] for k in sorted(d, key=int)]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise HemasegInputError(path, f"not a seed-002 labels JSON ({exc.__class__.__name__}: {exc})") from None
    for i, o in enumerate(objs):
        missing = [k for k in ("className", "classIdx", "tlX", "tlY", "bboxW", "bboxH") if k not in o]
        if missing:
            raise HemasegInputError(path, f"object {i} lacks {', '.join(missing)}")
    return objs
