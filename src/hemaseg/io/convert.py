"""Dataset format conversions behind ``hemaseg convert``: one function per (from, to) pair.

Formats: ``dsb`` (the Data Science Bowl folder layout), ``labels`` (a folder of uint16
instance label PNGs, one per image) and ``rle`` (a Kaggle CSV ``ImageId,EncodedPixels,Height,Width``,
one row per nucleus; Height/Width let it be decoded without the images); for objects with
classes: ``cvat`` (CVAT for images 1.1 XML), ``coco`` / ``coco-rle`` (COCO JSON with polygons or
RLE), ``voc`` (a Pascal VOC XML or a folder of them; boxes), ``yolo`` (a folder of images with a
``class cx cy w h`` text file each and a class list; boxes), ``results`` (seed-003 results JSON);
each of ``cvat``, ``coco``, ``voc``, ``yolo`` and ``results`` is read and written as ``cvat``, ``coco``,
``coco-rle``, ``yolo``, ``voc`` (a folder of ``<stem>.xml``; boxes) or ``labels`` (instance PNG + ``_classes.png`` +
classes.json); seed-003 results are not written (``hemaseg analyze`` writes them), and an object keeps one outline
(COCO's extra polygon parts and an RLE's holes and second pieces are dropped, with a warning for the parts and pieces)
and its COCO box (the whole object). A folder output never replaces a file already there (:func:`refuse_existing`).
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hemaseg.core.vocabulary import EXPORT_LABELS
from hemaseg.errors import HemasegInputError, HemasegUsageError
from hemaseg.io import annotations as A
from hemaseg.io.datasets import find_dsb, read_dsb_masks, read_instances
from hemaseg.io.images import image_size
from hemaseg.io.rle import labels_to_rles, rles_to_labels
from hemaseg.io.writers import check_output, write_json, write_png, write_text

log = logging.getLogger(__name__)
CONVERTERS: dict[tuple[str, str], Callable[[Path, Path, list | None], int]] = {}
RLE_HEADER = ["ImageId", "EncodedPixels", "Height", "Width"]


def converter(src: str, dst: str) -> Callable:
    """Register a conversion ``src`` -> ``dst``."""
    def deco(fn: Callable[[Path, Path, list | None], int]) -> Callable[[Path, Path, list | None], int]:
        CONVERTERS[(src, dst)] = fn
        return fn
    return deco


FOLDER_OUTPUTS = ("labels", "dsb", "yolo", "voc")  # formats written as a folder; the others as one file
FILE_SUFFIX = {"cvat": ".xml", "coco": ".json", "coco-rle": ".json", "rle": ".csv"}  # what a one-file output is


def check_convert_paths(dst: str, inp: Path, out: Path) -> None:
    """Before any work: ``out`` can be written as ``dst`` is (a folder or a file:
    :func:`~hemaseg.io.writers.check_output`; a one-file format's name ends in its suffix, ``FILE_SUFFIX``)
    and touches no input: it is not ``inp`` itself, it does not lie
    inside an input folder, and a folder format is not written into the input file's own folder
    (:class:`HemasegUsageError` naming ``OUT``)."""
    inp, out = Path(inp), Path(out)
    check_output(out, "OUT", folder=dst in FOLDER_OUTPUTS)
    if out.resolve() == inp.resolve():
        raise HemasegUsageError("OUT", f"{out} is the input; write to another {'folder' if dst in FOLDER_OUTPUTS else 'file'}")
    if inp.is_dir() and inp.resolve() in out.resolve().parents:
        # a folder format there can replace the input's photos (YOLO's images/), and a new file is read back as
        # input by the next conversion of that folder (an XML among the VOC files)
        raise HemasegUsageError("OUT", f"{out} lies inside the input folder {inp}; write outside it")
    if dst in FOLDER_OUTPUTS and inp.is_file() and inp.resolve().parent == out.resolve():
        # files named after the images, beside the input: they could replace the photos kept there
        raise HemasegUsageError("OUT", f"{out} is the input's folder; write to another folder")
    want = FILE_SUFFIX.get(dst)
    if want and out.suffix.lower() != want:  # `--to coco out/x` wrote JSON named x; `--to cvat out/` a file `out`
        raise HemasegUsageError("OUT", f"{out}: {dst} is one {want[1:].upper()} file; give a name ending in {want}")


def refuse_existing(out: Path, names: Iterable[str]) -> None:
    """:class:`HemasegUsageError` naming ``OUT`` when a file (or folder) ``out / name`` this conversion would
    write exists already, in any case (``a.XML`` for ``a.xml``: the readers take both): a photo of the same stem
    (``--to labels`` into a YOLO images folder), an earlier conversion's masks (DSB's ``<id>/masks/`` would mix
    two runs) or an XML of the same image is never replaced or doubled. Files of other names may stay beside
    the new ones. Checked before anything is written."""
    if not out.is_dir():
        return
    present = {p.name.lower(): p.name for p in out.iterdir()}
    there = [present[n.lower()] for n in dict.fromkeys(names) if n.lower() in present]
    if there:
        more = f" and {len(there) - 1} more this conversion would write" if len(there) > 1 else ""
        raise HemasegUsageError("OUT", f"{out} already holds {there[0]}{more}; write to a new or empty folder "
                                       "(nothing written)")


def convert(src: str, dst: str, inp: str | Path, out: str | Path, failed: list[dict] | None = None) -> int:
    """Convert ``inp`` in format ``src`` to ``out`` in format ``dst``; returns the number of images written.
    ``out`` is checked first (:func:`check_convert_paths`); a malformed input (a value that is no
    number, a missing attribute) is a :class:`HemasegInputError` naming ``inp``.

    With ``failed`` given, an input made of many files (a DSB, label, VOC or YOLO folder) loses only the
    files that cannot be read: each is listed there ({"image", "reason"}) and the others are converted;
    when none can be read, nothing is written. Without it the first bad file raises."""
    if (src, dst) not in CONVERTERS:
        known = ", ".join(f"{a}->{b}" for a, b in sorted(CONVERTERS))
        raise HemasegInputError(f"{src}->{dst}", f"no such conversion; known: {known}")
    check_convert_paths(dst, Path(inp), Path(out))
    try:
        return CONVERTERS[(src, dst)](Path(inp), Path(out), failed)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise HemasegInputError(inp, f"malformed {src} ({type(exc).__name__}: {str(exc).strip()[:120]})") from None


def _read_each(paths: list, read: Callable, failed: list[dict] | None) -> list:
    """``read(p)`` for each path; one that raises an input error (or a malformed value) is listed in ``failed``
    and left out, or, with ``failed`` None, the error is raised."""
    out = []
    for p in paths:
        try:
            out.append(read(p))
        except HemasegInputError as exc:
            if failed is None:
                raise
            failed.append({"image": str(exc.path), "reason": exc.reason})
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            if failed is None:
                raise
            failed.append({"image": str(getattr(p, "image", p)),
                           "reason": f"malformed ({type(exc).__name__}: {str(exc).strip()[:120]})"})
    return out


def _written_dsb(masks: Path) -> bool:
    """A ``<id>/masks/`` folder as :func:`labels_to_dsb` writes it: alone in ``<id>/``, its files ``<id>_<k>.png``
    (a paired layout's ``train/masks/`` is not one image's nuclei)."""
    if not masks.is_dir() or any(p.name != "masks" for p in masks.parent.iterdir()):
        return False
    files = list(masks.iterdir())
    return bool(files) and all(p.stem.startswith(masks.parent.name + "_") and p.stem.rsplit("_", 1)[1].isdigit()
                               and p.suffix.lower() == ".png" for p in files)


def _dsb_labels(root: Path, failed: list[dict] | None = None) -> list[tuple[str, np.ndarray]]:
    samples = find_dsb(root)
    if not samples and root.is_dir():
        # what `convert --to dsb` writes: <id>/masks/ without the image (label PNGs carry none), the size from a mask;
        # it could not be read back
        bare = sorted(m for m in root.glob("*/masks") if _written_dsb(m))
        if bare:
            return _read_each(bare, lambda m: (m.parent.name, read_dsb_masks(m)), failed)
    if not samples:
        raise HemasegInputError(root, "no DSB samples (<id>/images/<id>.png with <id>/masks/)")

    names: dict[str, Path] = {}
    for p in samples:  # one output per image id: two ids of one image name would be merged into one
        if p.image.stem in names:
            raise HemasegInputError(p.image, f"has the same image name as {names[p.image.stem]}: rename one")
        names[p.image.stem] = p.image
    return _read_each(samples, lambda p: (p.image.stem, read_dsb_masks(p.mask, image_size(p.image))), failed)


def _label_files(inp: Path) -> list[Path]:
    # hemaseg's own <stem>_classes.png (class indices beside <stem>.png) is no instance map; TIFF label maps are
    # read as evaluate and train read them (a folder of them was skipped without a word)
    files = sorted(f for f in inp.iterdir() if f.suffix.lower() in (".png", ".tif", ".tiff") and f.is_file()
                   and not (f.stem.endswith("_classes") and any((f.parent / (f.stem[:-len("_classes")] + x)).exists()
                                                                for x in (".png", ".PNG")))) \
        if inp.is_dir() else [inp]
    if not files or not files[0].exists():
        raise HemasegInputError(inp, "no label PNGs or TIFFs found")
    stems: dict[str, Path] = {}
    for f in files:  # a.png and a.tif: one ImageId, one <id>/ folder
        if f.stem in stems:
            raise HemasegInputError(f, f"has the same name as {stems[f.stem].name} but its suffix: rename one")
        stems[f.stem] = f
    return files


def write_rle_csv(path: Path, items: list[tuple[str, np.ndarray]]) -> None:
    """Write label images as a Kaggle RLE CSV (one row per instance; an image without any: one empty row)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RLE_HEADER)
    for image_id, labels in items:
        rles = labels_to_rles(labels) or [""]
        for r in rles:
            w.writerow([image_id, r, labels.shape[0], labels.shape[1]])
    write_text(path, buf.getvalue())


def image_beside(csv_path: Path, image_id: str) -> Path | None:
    """The image ``image_id`` where a DSB download keeps it beside its RLE CSV (``stage1_train/<id>/images/<id>.png``,
    ``<id>/images/<id>.png``, ``images/<id>.png`` or ``<id>.png`` in the CSV's folder), or None: a Kaggle CSV
    (ImageId,EncodedPixels) says no image's size, which decoding its run lengths needs."""
    if not image_id or Path(image_id).name != image_id or image_id in (".", ".."):
        return None
    root = csv_path.parent
    for cand in (root / "stage1_train" / image_id / "images", root / image_id / "images", root / "images", root):
        for suffix in (".png", ".tif", ".tiff", ".jpg"):
            if (cand / f"{image_id}{suffix}").is_file():
                return cand / f"{image_id}{suffix}"
    return None


def read_rle_csv(path: Path, failed: list[dict] | None = None) -> dict[str, np.ndarray]:
    """Read a Kaggle RLE CSV into {ImageId: (H, W) uint16 labels}. Each image's size comes from its
    Height/Width columns (as hemaseg writes them), else from the image file beside the CSV
    (:func:`image_beside`: the Kaggle submission format and DSB's ``stage1_train_labels.csv`` carry none).
    An image whose rows cannot be decoded raises :class:`HemasegInputError`; with ``failed`` given, it is listed
    there and left out, and the others are read (one bad row lost the whole file's conversion)."""
    if not path.is_file():
        raise HemasegInputError(path, "RLE CSV not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = set(reader.fieldnames or ())
    if not {"ImageId", "EncodedPixels"} <= columns:  # an empty file too: "0 images converted" said nothing
        raise HemasegInputError(path, "needs columns ImageId,EncodedPixels (and Height,Width)")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["ImageId"], []).append(r)
    out = {}
    for image_id, rs in groups.items():
        try:
            out[image_id] = _rle_image(path, image_id, rs, columns)
        except HemasegInputError as exc:
            if failed is None:
                raise
            failed.append({"image": str(exc.path), "reason": exc.reason})
    return out


def _rle_image(path: Path, image_id: str, rs: list[dict], columns: set) -> np.ndarray:
    """The (H, W) labels of one image's rows of a Kaggle RLE CSV (:func:`read_rle_csv`)."""
    if {"Height", "Width"} <= columns:
        sizes = {(r["Height"], r["Width"]) for r in rs}
        if len(sizes) > 1:  # the first row's was taken without a word
            raise HemasegInputError(path, f"image {image_id}: rows of different sizes {sorted(sizes)}")
        try:
            shape = (int(rs[0]["Height"]), int(rs[0]["Width"]))
        except (TypeError, ValueError):
            raise HemasegInputError(path, f"image {image_id}: Height/Width {rs[0]['Height']!r}, "
                                          f"{rs[0]['Width']!r} are no whole numbers") from None
    else:
        beside = image_beside(path, image_id)
        if beside is None:
            raise HemasegInputError(path, f"image {image_id}: no Height/Width columns to decode its masks, and no "
                                          f"image {image_id}.png beside the CSV (DSB layout) to take its size from")
        shape = image_size(beside)
    try:
        return rles_to_labels([r["EncodedPixels"] for r in rs if r["EncodedPixels"].strip()], shape)
    except ValueError as exc:
        raise HemasegInputError(path, f"image {image_id}: {exc}") from None


@converter("dsb", "labels")
def dsb_to_labels(inp: Path, out: Path, failed: list[dict] | None = None) -> int:
    """DSB folders -> OUT/<id>.png uint16 instance labels."""
    items = _dsb_labels(inp, failed)
    refuse_existing(out, (f"{image_id}.png" for image_id, _ in items))
    for image_id, labels in items:
        write_png(out / f"{image_id}.png", labels)
    return len(items)


@converter("dsb", "rle")
def dsb_to_rle(inp: Path, out: Path, failed: list[dict] | None = None) -> int:
    """DSB folders -> one Kaggle RLE CSV."""
    items = _dsb_labels(inp, failed)
    if items or not failed:
        write_rle_csv(out, items)
    return len(items)


@converter("labels", "rle")
def labels_to_rle(inp: Path, out: Path, failed: list[dict] | None = None) -> int:
    """Label PNGs (a folder or one file) -> one Kaggle RLE CSV, ImageId = file stem."""
    items = _read_each(_label_files(inp), lambda f: (f.stem, read_instances(f)), failed)
    if items or not failed:
        write_rle_csv(out, items)
    return len(items)


@converter("rle", "labels")
def rle_to_labels(inp: Path, out: Path, failed: list[dict] | None = None) -> int:
    """Kaggle RLE CSV -> OUT/<ImageId>.png uint16 instance labels (an image whose rows cannot be decoded is listed
    in ``failed``, the others written)."""
    items = read_rle_csv(inp, failed)
    for image_id in items:  # each a plain file name in OUT: '../x' or 'a/b' would write outside it
        if not image_id or Path(image_id).name != image_id or image_id in (".", ".."):
            raise HemasegInputError(inp, f"ImageId {image_id!r} is no plain file name; nothing written")
    refuse_existing(out, (f"{image_id}.png" for image_id in items))
    for image_id, labels in items.items():
        write_png(out / f"{image_id}.png", labels.astype(np.uint16))
    return len(items)


@converter("labels", "dsb")
def labels_to_dsb(inp: Path, out: Path, failed: list[dict] | None = None) -> int:
    """Label PNGs -> DSB masks folders OUT/<stem>/masks/<stem>_<k>.png (images are not copied; an image with no
    object gets one empty mask, <stem>_0.png, which keeps its size: ``--from dsb`` reads it back as no nucleus)."""
    items = _read_each(_label_files(inp), lambda f: (f, read_instances(f)), failed)
    refuse_existing(out, (f.stem for f, _ in items))  # an <id>/ there: its masks would mix with these
    for f, labels in items:
        (out / f.stem / "masks").mkdir(parents=True, exist_ok=True)
        if not labels.any():
            write_png(out / f.stem / "masks" / f"{f.stem}_0.png", np.zeros(labels.shape, np.uint8))
        for k in np.unique(labels[labels > 0]):
            write_png(out / f.stem / "masks" / f"{f.stem}_{int(k)}.png", ((labels == k) * 255).astype(np.uint8))
    return len(items)


# ---------------------------------------------------------------- object annotations (CVAT, COCO, VOC, results)
def _entries(fmt: str, inp: Path, failed: list[dict] | None = None) -> list[dict]:

    if fmt == "cvat":
        return A.read_cvat(inp, failed)
    if fmt == "coco":
        return A.read_coco(inp, failed)
    if fmt == "results":
        return A.read_results(inp)
    if fmt == "yolo":
        return A.read_yolo(inp, failed)
    if fmt == "voc":
        def xmls(folder: Path) -> list[Path]:  # x.XML too
            return sorted(f for f in folder.iterdir() if f.suffix.lower() == ".xml" and f.is_file())

        if inp.is_dir() and not xmls(inp) and (inp / "Annotations").is_dir():
            inp = inp / "Annotations"  # a VOC root (Annotations/, JPEGImages/, ImageSets/), as BCCD's
        files = xmls(inp) if inp.is_dir() else [inp]
        if not files or not files[0].exists():
            raise HemasegInputError(inp, "no VOC XML files found")
        return _read_each(files, A.read_voc_entry, failed)
    raise HemasegInputError(fmt, "unknown annotation format")


def annotation_format(path: str | Path) -> str:
    """The annotation format of a file or folder, told by its content: ``results`` (a JSON with a ``data``
    object: ``hemaseg analyze`` or ``serve``), ``coco`` (a JSON with ``images`` and ``annotations``), ``cvat``
    (an XML whose root is ``annotations``), ``voc`` (an XML whose root is ``annotation``, or a folder of them,
    or a VOC root) or ``yolo`` (any other folder). :class:`HemasegInputError` naming ``path`` otherwise.

    >>> import json, tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "r.json").write_text(json.dumps({"data": {}})); annotation_format(d / "r.json")
    'results'
    >>> _ = (d / "c.xml").write_text("<annotations><version>1.1</version></annotations>"); annotation_format(d / "c.xml")
    'cvat'
    """
    import json
    import xml.etree.ElementTree as ET

    path = Path(path)
    if not path.exists():  # (a mistyped folder read as "not a YOLO folder")
        raise HemasegInputError(path, "no such file or folder")
    if path.is_dir():
        has_xml = any(f.suffix.lower() == ".xml" for f in path.iterdir()) or (path / "Annotations").is_dir()
        return "voc" if has_xml else "yolo"
    what = "not a results JSON, COCO JSON, CVAT or VOC XML, nor a YOLO folder"
    try:
        if path.suffix.lower() == ".json":
            d = json.loads(path.read_text())
            if isinstance(d, dict) and isinstance(d.get("data"), dict):
                return "results"
            if isinstance(d, dict) and "images" in d and "annotations" in d:
                return "coco"
        elif path.suffix.lower() == ".xml":
            root = next(ET.iterparse(path, events=("start",)))[1].tag
            if root in ("annotations", "annotation"):
                return "cvat" if root == "annotations" else "voc"
            what = f"an XML whose root is <{root}>, neither CVAT's <annotations> nor VOC's <annotation>"
    except (OSError, UnicodeDecodeError, ValueError, ET.ParseError, StopIteration) as exc:
        raise HemasegInputError(path, f"{what} ({exc.__class__.__name__}: {exc})") from None
    raise HemasegInputError(path, what)


def read_annotations(path: str | Path, failed: list[dict] | None = None) -> tuple[str, list[dict]]:
    """(format, seed-003 entries) of an annotation file or folder in any format ``convert`` reads, the format
    told by :func:`annotation_format`; what cannot be read is listed in ``failed`` as the readers do."""
    fmt = annotation_format(path)
    return fmt, _entries(fmt, Path(path), failed)


def _check_entries(fmt: str, entries: list[dict], keep_names: bool = False) -> None:
    """Refuse, before anything is written, what the writers would get wrong: an image without a size, and two
    images of one name (YOLO and label maps keep file names only, so ``train/x.png`` and ``val/x.png`` would
    collide; CVAT and COCO keep the input's names (``keep_names``) or, where file names repeat, the paths from the
    folder every image lies in (:func:`image_names`), so only two entries of one whole name collide there)."""
    seen: dict[str, str] = {}  # output name -> the image it is written for
    classes_of: dict[str, str] = {}  # labels: <stem>_classes -> the image whose class map it is
    keeps_folders = fmt in ("cvat", "coco", "coco-rle")
    written = A.image_names(entries, keep_names) if keeps_folders else [Path(e["filename"]).name if fmt != "labels"
                                                            else Path(e["filename"]).stem for e in entries]
    for e, name in zip(entries, written):
        if int(e.get("height") or 0) < 1 or int(e.get("width") or 0) < 1:
            raise HemasegInputError(e.get("filename") or "an image", f"no image size ({e.get('width')} x "
                                                                      f"{e.get('height')}): cannot write {fmt}")
        if name in seen and seen[name] == e["filename"]:  # two annotation files (VOC XMLs) of one image
            raise HemasegInputError(e["filename"], f"is named by two entries of the input (two annotation files of "
                                                   f"one image, or two images that cannot be told apart there); "
                                                   f"{fmt} would keep one: remove or rename the other")
        if name in seen:  # two images of one name
            raise HemasegInputError(e["filename"], f"has the same file name as {seen[name]}; "
                                    + ("two images of one name cannot be told apart there: rename one" if keeps_folders
                                       else f"{fmt} keeps names only: rename one"))
        clash = classes_of.get(name) or (seen.get(name + "_classes") if fmt == "labels" else None)
        if fmt == "labels" and clash:  # x_classes.jpg beside x.jpg: x's class map is x_classes.png
            raise HemasegInputError(e["filename"], f"{name}.png and {clash}'s class map (<stem>_classes.png) would "
                                                   f"be one file: rename one")
        seen[name] = e["filename"]
        if fmt == "labels":  # <stem>_classes.png too: an image named a_classes would replace a's class map
            classes_of[name + "_classes"] = e["filename"]


def _declared_labels(fmt: str, inp: Path) -> list[str]:
    """The class names the input declares, in its order (a CVAT file's labels, a COCO file's categories by id, a
    YOLO folder's class ids; hemaseg's results: the labels ``analyze`` exports): a CVAT or COCO output keeps
    them, so a round trip keeps every label (a WBC type no object had was dropped) and analyze's category ids."""
    if fmt == "cvat":
        return A.cvat_labels(inp)
    if fmt == "coco":
        return A.coco_labels(inp)
    if fmt == "yolo":
        return A.yolo_names(inp)
    if fmt == "results":
        return list(EXPORT_LABELS)
    return []


def _write_entries(fmt: str, entries: list[dict], out: Path, failed: list[dict] | None = None,
                   labels=(), keep_names: bool = False) -> int:
    """Write ``entries`` as ``fmt`` to ``out``. ``keep_names``: CVAT and COCO name each image by its entry's
    ``filename`` as it is (a dataset's own names: a YOLO folder's ``images/train/x.png``, found from its root),
    not by :func:`~hemaseg.io.annotations.image_names` (hemaseg's results, whose names are the paths the photos
    were given by)."""
    if not entries and failed:  # every file of the input failed (listed): nothing to write
        return 0
    _check_entries(fmt, entries, keep_names)
    stems = [Path(e["filename"]).stem for e in entries]
    if fmt in FOLDER_OUTPUTS:
        refuse_existing(out, {"yolo": [*(f"{t}.txt" for t in stems), "classes.txt"],
                              "voc": [f"{t}.xml" for t in stems],
                              "labels": [*(f"{t}{x}.png" for t in stems for x in ("", "_classes")), "classes.json"]}[fmt])
    if fmt == "cvat":
        A.write_cvat(out, entries, list(labels), keep_names)
    elif fmt == "coco":
        A.write_coco(out, entries, rle=False, labels=list(labels), keep_names=keep_names)
    elif fmt == "coco-rle":
        A.write_coco(out, entries, rle=True, labels=list(labels), keep_names=keep_names)
    elif fmt == "yolo":
        A.write_yolo(out, entries)
    elif fmt == "voc":
        A.write_voc(out, entries)
    elif fmt == "labels":
        # OUT/<stem>.png uint16 instances, OUT/<stem>_classes.png uint8 class indices, OUT/classes.json names.
        names = sorted({m["class_name"] for e in entries for m in e["masks"]})
        hidden: list[tuple[str, int]] = []
        off = 0
        for e in entries:
            inst, cls, _ = A.entry_labels(e, names)
            stem = Path(e["filename"]).stem
            write_png(out / f"{stem}.png", inst)
            write_png(out / f"{stem}_classes.png", cls)
            # one label a pixel: an object drawn over whole by a later one (a platelet inside a WBC's box) is lost;
            # of the labels missing from the map, those drawing no pixel at all lie outside the image
            missing = np.setdiff1d(np.arange(1, len(e["masks"]) + 1), np.unique(inst))
            outside = sum(not A.rasterise(e["masks"][k - 1]["vertices"], inst.shape).any() for k in missing)
            gone = len(missing) - outside
            hidden += [(e["filename"], gone)] if gone else []
            off += outside
        if hidden:
            log.warning("--to labels: %d object(s) wholly covered by later ones are not in the label maps (one label "
                        "a pixel; COCO, CVAT, YOLO and VOC keep them): %s", sum(n for _, n in hidden),
                        ", ".join(f"{f} ({n})" for f, n in hidden[:5]) + (" ..." if len(hidden) > 5 else ""))
        if off:
            log.warning("--to labels: %d object(s) outside their image: not in the label maps", off)

        write_json(out / "classes.json", {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}})
    else:
        raise HemasegInputError(fmt, "unknown annotation format")
    return len(entries)


def _register_annotation_converters() -> None:
    for src in ("cvat", "coco", "voc", "yolo", "results"):
        for dst in ("cvat", "coco", "coco-rle", "yolo", "voc", "labels"):
            if src != dst:
                def fn(inp: Path, out: Path, failed: list[dict] | None = None, _s=src, _d=dst) -> int:
                    entries = _entries(_s, inp, failed)
                    return _write_entries(_d, entries, out, failed, _declared_labels(_s, inp) if entries else (),
                                          keep_names=_s != "results")
                fn.__doc__ = f"{src} -> {dst} (polygons and labels kept)"
                CONVERTERS[(src, dst)] = fn


_register_annotation_converters()
