"""Per-image object annotations and their file formats: seed-003 results JSON, CVAT for images 1.1
XML, COCO JSON (polygons or RLE), Pascal VOC boxes, YOLO text boxes, and label PNGs.

Every format converts to and from one in-memory form, a list of *entries* (the seed-003
results record of one image)::

    {"filename": "a.jpg", "height": 480, "width": 640,
     "masks": [{"class_name": "neutrophil", "category": "wbc", "score": 0.97,
                "bounding_box": {"x1": 10, "x2": 60, "y1": 20, "y2": 70},
                "vertices": [[x, y], ...]}, ...]}

Vertices are pixel-corner coordinates of the outline (as cv2.findContours gives them),
so rasterising them with :func:`rasterise` gives back the mask.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from hemaseg.core.vocabulary import KNOWN_NAMES, canonical_name, category_of
from hemaseg.errors import HemasegInputError
from hemaseg.io.datasets import parse_xml, read_voc
from hemaseg.io.images import IMAGE_SUFFIXES, MAX_PIXELS, image_size, real_path
from hemaseg.io.writers import write_json, write_text
from hemaseg.progress import warn_once

log = logging.getLogger(__name__)


def mask_record(mask: np.ndarray, class_name: str, score: float = 1.0, offset: tuple[int, int] = (0, 0)) -> dict | None:
    """One seed-003 mask record from a boolean mask (largest outline; the box bounds the whole mask, every piece
    of the object); None for an empty mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)[:, 0, :]
    ox, oy = offset
    ys, xs = np.nonzero(mask)
    return {"class_name": class_name, "category": category_of(class_name), "score": round(float(score), 4),
            "bounding_box": {"x1": int(xs.min() + ox), "x2": int(xs.max() + 1 + ox),
                             "y1": int(ys.min() + oy), "y2": int(ys.max() + 1 + oy)},
            "vertices": [[int(x + ox), int(y + oy)] for x, y in c]}


def box_vertices(x1: int, y1: int, x2: int, y2: int) -> list[list[int]]:
    """The 4-corner polygon of a box (``x2``, ``y2`` exclusive) on its outermost pixels, :func:`mask_record`'s
    convention: a reader that takes the box from the polygon (max + 1) gets the same box back.

    >>> box_vertices(3, 4, 15, 9)
    [[3, 4], [14, 4], [14, 8], [3, 8]]
    """
    xr, yb = max(x1, x2 - 1), max(y1, y2 - 1)
    return [[x1, y1], [xr, y1], [xr, yb], [x1, yb]]


def outline_box(vertices: list) -> dict:
    """A record's ``bounding_box`` (x2, y2 exclusive) of an outline on its outermost pixels.

    >>> outline_box([[3, 4], [14, 4], [14, 8]])
    {'x1': 3, 'x2': 15, 'y1': 4, 'y2': 9}
    """
    xs, ys = [int(v[0]) for v in vertices], [int(v[1]) for v in vertices]
    return {"x1": min(xs), "x2": max(xs) + 1, "y1": min(ys), "y2": max(ys) + 1}


def clipped_box(bb: dict, height: int, width: int) -> tuple:
    """(x1, y1, x2, y2) of a record's box clipped to an image of ``height`` x ``width``: empty (x2 <= x1 or
    y2 <= y1) when the box lies outside it, as the writers that keep boxes (COCO, VOC, YOLO) take them."""
    return (min(max(bb["x1"], 0), width), min(max(bb["y1"], 0), height),
            min(max(bb["x2"], 0), width), min(max(bb["y2"], 0), height))


def rasterise(vertices: list, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of a polygon given as [[x, y], ...] (the inverse of :func:`mask_record`).

    >>> m = np.zeros((20, 20), bool); m[4:9, 3:15] = True
    >>> bool((rasterise(mask_record(m, "rbc")["vertices"], m.shape) == m).all())
    True
    """
    out = np.zeros(shape, np.uint8)
    if len(vertices) >= 1:
        cv2.fillPoly(out, [_clamped(np.asarray(vertices, np.float64).reshape(-1, 2), *shape).astype(np.int32)
                           .reshape(-1, 1, 2)], 1)
    return out.astype(bool)


def _clamped(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 2) x, y points, those more than two image sizes (+ 64 px) beyond an edge moved to that distance: a
    file's point at 1e308 (or 1e9) made the rasterisers allocate gigabytes, or overflow int32. A polygon within
    that reach is drawn exactly; one beyond it is broken (its edges inside the image may change)."""
    mx, my = 2 * width + 64, 2 * height + 64
    return np.stack([np.clip(xy[:, 0], -mx, width + mx), np.clip(xy[:, 1], -my, height + my)], 1)


def edge_polygon(mask: np.ndarray) -> list[float]:
    """A mask's outline as a COCO polygon ``[x1, y1, x2, y2, ...]`` on pixel edges (COCO's convention: the
    pixel (0, 0) is the square from (0, 0) to (1, 1)), so that pycocotools' rasteriser gives the mask back.
    Only the largest outline is kept, as in :func:`mask_record`.

    The outline is the marching-squares contour at 0.5 (:func:`skimage.measure.find_contours`, pixels
    that touch at a corner joined, as :func:`mask_record` joins them) with its collinear points dropped.

    >>> m = np.zeros((10, 10), bool); m[2:5, 3:9] = True
    >>> bool((polygon_mask(edge_polygon(m), 10, 10) == m).all())
    True
    >>> bool((polygon_mask(edge_polygon(np.eye(6, dtype=bool)), 6, 6) == np.eye(6)).all())  # a diagonal line
    True
    """
    from skimage.measure import approximate_polygon, find_contours

    contours = find_contours(np.pad(mask.astype(np.float32), 1), 0.5, fully_connected="high")
    if not contours:
        return []
    outline = approximate_polygon(max(contours, key=len), tolerance=0.01)
    # padded pixel-centre (row, col) -> unpadded pixel-edge (x, y): minus 1 for the pad, plus 0.5 for the edge
    return [round(float(v) - 0.5, 3) for y, x in outline for v in (x, y)]


def polygon_mask(polygon: list, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO polygon ``[x1, y1, x2, y2, ...]`` on pixel edges, by pycocotools' own
    rasteriser (so a COCO square from (0, 0) to (7, 7) covers 7 x 7 = 49 pixels, as COCO's tools count it).
    A list of such polygons (an object's parts) gives their union. A polygon of fewer than three points
    covers the pixels it names.

    >>> int(polygon_mask([0, 0, 7, 0, 7, 7, 0, 7], 10, 10).sum())
    49
    >>> int(polygon_mask([[0, 0, 2, 0, 2, 2, 0, 2], [5, 5, 7, 5, 7, 7, 5, 7]], 10, 10).sum())
    8
    """
    from pycocotools import mask as mask_utils

    parts = polygon if polygon and isinstance(polygon[0], (list, tuple)) else [polygon]
    out = np.zeros((height, width), bool)
    full = [_clamped(np.asarray(p, np.float64).reshape(-1, 2), height, width).ravel().tolist()
            for p in parts if len(p) >= 6]
    if full and height > 0 and width > 0:
        out |= mask_utils.decode(mask_utils.frPyObjects(full, height, width)).any(-1).astype(bool)
    for p in parts:
        if len(p) < 6:  # pycocotools cannot read it
            for j in range(0, len(p) - 1, 2):
                x, y = int(np.floor(p[j])), int(np.floor(p[j + 1]))
                if 0 <= y < height and 0 <= x < width:
                    out[y, x] = True
    return out


def polygon_values(values) -> list[float]:
    """The numbers of one polygon read from a file, ``[x1, y1, x2, y2, ...]``; :class:`ValueError` saying why
    when one is no finite number, they are no x, y pairs, or they make fewer than three points (a file's
    polygon of two points became a one-pixel object with its old box).

    >>> polygon_values(["0", 0, 7, 0, 7.5, 7])
    [0.0, 0.0, 7.0, 0.0, 7.5, 7.0]
    >>> polygon_values([10, 10, 20, 20])
    Traceback (most recent call last):
    ValueError: 2 points: a polygon needs three
    """
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"a coordinate is not a number ({', '.join(map(repr, values))[:60]})") from None
    if not all(np.isfinite(out)):
        raise ValueError("a coordinate is not finite")
    if len(out) % 2:
        raise ValueError(f"{len(out)} numbers: not x, y pairs")
    if len(out) < 6:
        raise ValueError(f"{len(out) // 2} points: a polygon needs three")
    return out


def label_order(entries: list[dict], declared=()) -> list[str]:
    """Class names of ``entries`` for a file's label list and category ids: ``declared`` in its order (a CVAT
    file's labels, a COCO file's categories, :data:`~hemaseg.core.vocabulary.EXPORT_LABELS`), then any other
    name present, sorted.

    >>> label_order([{"masks": [{"class_name": "wbc"}, {"class_name": "rbc"}]}], ["rbc", "platelet"])
    ['rbc', 'platelet', 'wbc']
    """
    declared = list(dict.fromkeys(declared))
    return [*declared, *sorted({m["class_name"] for e in entries for m in e["masks"]} - set(declared))]


def _left_out(failed: list[dict] | None, path, where: str, exc: Exception) -> None:
    """One object of an annotation file that cannot be read: listed in ``failed`` ({"image", "reason"}) and
    left out, the rest of the file read; without ``failed``, :class:`HemasegInputError` naming it."""
    if failed is None:
        raise HemasegInputError(path, f"{where}: {exc}")
    failed.append({"image": str(path), "reason": f"{where}: {exc}; left out"})


def polygon_extent(polygons: list) -> tuple[int, int]:
    """(height, width) of the smallest image that holds every point of ``polygons`` (flat COCO lists): the
    size a polygon is drawn at when its image's is not given."""
    xs = [float(v) for p in polygons for v in p[0::2]] or [0.0]
    ys = [float(v) for p in polygons for v in p[1::2]] or [0.0]
    if (max(ys) + 1) * (max(xs) + 1) > MAX_PIXELS:  # ValueError: a malformed annotation, left out by the readers
        raise ValueError(f"a point at ({max(xs):g}, {max(ys):g}) with no image size given: far outside any image")
    return int(np.ceil(max(ys))) + 1, int(np.ceil(max(xs))) + 1


def entry_labels(entry: dict, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(instances (H, W) uint16 1..N in record order, class indices (H, W) uint8, class names)."""
    h, w = int(entry["height"]), int(entry["width"])
    names = list(classes) if classes else sorted({m["class_name"] for m in entry["masks"]})
    inst = np.zeros((h, w), np.uint16)
    cls = np.zeros((h, w), np.uint8)
    for k, m in enumerate(entry["masks"], 1):
        sel = rasterise(m["vertices"], (h, w))
        inst[sel] = k
        if m["class_name"] in names:
            cls[sel] = names.index(m["class_name"]) + 1
    return inst, cls, names


# ---------------------------------------------------------------- seed-003 results JSON
def write_results(path: str | Path, entries: list[dict]) -> Path:
    """``{"data": {"0": entry, "1": entry, ...}}`` (seed 003's schema)."""
    return write_json(path, {"data": {str(i): e for i, e in enumerate(entries)}})


def read_results(path: str | Path) -> list[dict]:
    """Entries of a seed-003 results JSON."""
    try:
        d = json.loads(Path(path).read_text())
        if not isinstance(d["data"], dict):  # {"data": []} was read as no image
            raise TypeError(f"'data' is a {type(d['data']).__name__}")
        return [d["data"][k] for k in sorted(d["data"], key=int)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HemasegInputError(path, f"not a results JSON with a 'data' object ({exc})") from None


def image_names(entries: list[dict], keep: bool = False) -> list[str]:
    """The name each entry's image goes by in a CVAT or COCO file: its file name, or, where two entries'
    file names are the same (``a/x.jpg``, ``b/x.jpg``), every entry's path from the folder all of them lie in,
    so that every annotation can be matched back to its photo, and one folder (where the file is put to train on
    it) holds every name (the shortest telling suffixes left ``x.jpg`` in ``in/`` beside ``b/x.jpg`` in ``in/b``:
    no root held both; a walkthrough). ``keep``: each entry's ``filename`` as it is (``convert``: a dataset's own
    names, such as a YOLO folder's ``images/train/x.png``, which a COCO loader finds from the dataset's root).

    >>> image_names([{"filename": "in/a/x.jpg"}, {"filename": "in/b/x.jpg"}, {"filename": "in/a/y.jpg"}])
    ['a/x.jpg', 'b/x.jpg', 'a/y.jpg']
    >>> image_names([{"filename": "in/x.jpg"}, {"filename": "in/b/x.jpg"}, {"filename": "in/y.jpg"}])
    ['x.jpg', 'b/x.jpg', 'y.jpg']
    >>> image_names([{"filename": "images/train/x.png"}, {"filename": "images/val/y.png"}], keep=True)
    ['images/train/x.png', 'images/val/y.png']
    """
    if keep:
        return [str(e["filename"]).replace("\\", "/") for e in entries]
    names = [Path(str(e["filename"])).name for e in entries]
    if len(set(names)) == len(names):
        return names
    paths = [os.path.abspath(str(e["filename"])) for e in entries]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # no folder holds them all (two Windows drives): each named whole
        return [p.replace(os.sep, "/") for p in paths]
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


def entries_on_photos(entries: list[dict], photos: list) -> tuple[dict, list[dict], list[tuple[dict, list]]]:
    """Each annotation entry matched to the photo it describes among ``photos`` (paths): the photo at the
    entry's ``filename`` itself, else the one photo whose path (as given, or with its links followed) ends with
    the longest end of that name any photo has (``x.jpg``, ``a/x.jpg``: names as ``hemaseg serve`` or a CVAT/COCO
    file keep them, :func:`image_names`; ``../old/a/x.jpg`` or ``C:\\lab\\a\\x.jpg`` after the folder moved).
    Photos that are one file (a link beside its target) are one photo, the first spelling given.

    Returns ``(matched, unmatched, ambiguous)``: ``matched`` maps a photo to its entries in file order (two
    entries of one photo, as two VOC files of it, both kept); ``unmatched`` the entries no photo matches;
    ``ambiguous`` ``(entry, photos)`` for an entry several photos match equally well.

    >>> m, u, a = entries_on_photos([{"filename": "x.jpg"}, {"filename": "y.jpg"}, {"filename": "z.jpg"},
    ...                              {"filename": "../old/a/x.jpg"}],
    ...                             [Path("/d/a/x.jpg"), Path("/d/b/y.jpg"), Path("/d/c/y.jpg")])
    >>> [(str(p), len(es)) for p, es in m.items()], u[0]["filename"], a[0][0]["filename"], len(a[0][1])
    ([('/d/a/x.jpg', 2)], 'z.jpg', 'y.jpg', 2)
    """
    by_real: dict = {}
    for p in photos:  # one file given twice (a link and its target): its first spelling
        by_real.setdefault(real_path(p), p)
    spellings: dict = {}  # lower-cased file name -> [(parts of a spelling, photo)]
    for real, p in by_real.items():
        for parts in {tuple(x.lower() for x in Path(os.path.abspath(p)).parts), tuple(x.lower() for x in real.parts)}:
            spellings.setdefault(parts[-1] if parts else "", []).append((parts, p))  # case aside: IMG_1.JPG is img_1.jpg
    matched: dict = {}
    unmatched: list[dict] = []
    ambiguous: list[tuple[dict, list]] = []
    for e in entries:
        name = str(e.get("filename") or "")
        want = tuple(x.lower() for x in name.replace("\\", "/").split("/") if x not in ("", "."))
        same = by_real.get(real_path(name)) if name else None
        hits: list = [same] if same is not None else []
        candidates = spellings.get(want[-1], []) if want else []
        for k in range(len(want), 0, -1) if not hits else ():
            hits = list(dict.fromkeys(p for parts, p in candidates if parts[-k:] == want[-k:]))
            if hits:  # the longest end any photo has: one photo, or a tie that a shorter end cannot break
                break
        if len(hits) == 1:
            matched.setdefault(hits[0], []).append(e)
        elif hits:
            ambiguous.append((e, hits))
        else:
            unmatched.append(e)
    return matched, unmatched, ambiguous


# ---------------------------------------------------------------- CVAT for images 1.1
def xml_name(name: str) -> str:
    """``name`` as an XML file can hold it: a file name that is no UTF-8 (its bytes kept as surrogates) cannot be,
    and is refused (:class:`HemasegInputError`: rename the file) rather than written as an XML no reader takes.

    >>> xml_name("a.jpg")
    'a.jpg'
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise HemasegInputError(os.fsencode(name).decode("utf-8", "backslashreplace"),
                                "a file name that is no UTF-8, which an XML file cannot hold: rename the file") from None
    return name


def to_cvat(entries: list[dict], labels: list[str] | None = None, keep_names: bool = False) -> str:
    """CVAT for images 1.1 XML text: one <image> per entry, one <polygon> per mask; its label list is ``labels``
    (in that order), then any other class name present (:func:`label_order`); image names by
    :func:`image_names` (``keep_names``: the entries' own)."""
    names = label_order(entries, labels or ())
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(meta, "size").text = str(len(entries))
    lab_el = ET.SubElement(meta, "labels")
    for n in names:
        ET.SubElement(ET.SubElement(lab_el, "label"), "name").text = n
    for i, (e, name) in enumerate(zip(entries, image_names(entries, keep_names))):
        img = ET.SubElement(root, "image", id=str(i), name=xml_name(name),
                            width=str(e["width"]), height=str(e["height"]))
        h, w = int(e["height"]), int(e["width"])
        for m in e["masks"]:
            # pixel edges, as CVAT's boxes and its COCO export take them (a mask's outline, not its pixel centres)
            mask = rasterise(m["vertices"], (h, w)) if h > 0 and w > 0 else np.zeros((0, 0), bool)
            if mask.any():
                poly = edge_polygon(mask)
                pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(poly[0::2], poly[1::2]))
            else:  # no image size (or outside it): the vertices as they are
                pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in m["vertices"])
            poly = ET.SubElement(img, "polygon", label=m["class_name"], source="auto", occluded="0",
                                 points=pts, z_order="0")
            ET.SubElement(poly, "attribute", name="score").text = f"{m.get('score', 1.0):.4f}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_cvat(path: str | Path, entries: list[dict], labels: list[str] | None = None,
               keep_names: bool = False) -> Path:
    return write_text(path, to_cvat(entries, labels, keep_names))


def cvat_labels(path: str | Path) -> list[str]:
    """The label names a CVAT for images XML declares (its task's or project's ``<labels>``), in order: a WBC type
    no object has yet stays choosable in CVAT after a conversion."""
    root = parse_xml(path, "CVAT XML")
    return [el.findtext("name") for meta in root.iter("meta") for el in meta.iter("label") if el.findtext("name")]


def read_cvat(path: str | Path, failed: list[dict] | None = None) -> list[dict]:
    """Entries of a CVAT for images 1.1 XML (polygons; boxes become 4-corner polygons). Points are on pixel
    edges, as CVAT's boxes are: a polygon covers the pixels pycocotools' rasteriser gives it (:func:`polygon_mask`).
    A polygon or box that cannot be read (a coordinate that is no number, fewer than three points) raises
    :class:`HemasegInputError` naming its image and place; with ``failed`` given, it is listed there and left
    out, and the rest of the file is read."""
    root = parse_xml(path, "CVAT XML")
    if root.tag != "annotations":
        raise HemasegInputError(path, f"not a CVAT for images XML (its root is <{root.tag}>, not <annotations>)")
    entries = []
    skipped: dict[str, int] = {}
    no_pixel = 0
    for img in root.iter("image"):
        masks = []
        for k, el in enumerate(img):
            if el.tag == "tag":  # an image-level tag is no object
                continue
            try:
                if el.tag == "polygon":
                    pts = polygon_values([v for p in el.get("points", "").split(";") if p for v in p.split(",")])
                    h, w = int(img.get("height", 0)), int(img.get("width", 0))
                    h, w = (h, w) if h > 0 and w > 0 else polygon_extent([pts])
                elif el.tag == "box":
                    corners = [float(el.get(c)) for c in ("xtl", "ytl", "xbr", "ybr")]
                    if not all(np.isfinite(corners)):
                        raise ValueError("a corner is not finite")
                score = next((float(a.text) for a in el.iter("attribute") if a.get("name") == "score" and a.text), 1.0)
            except (TypeError, ValueError) as exc:
                what = "no coordinates" if isinstance(exc, TypeError) else exc
                _left_out(failed, path, f"image {img.get('name', '')}, <{el.tag}> {k + 1} ({el.get('label', '')})", what)
                continue
            if el.tag == "polygon":
                rec = mask_record(polygon_mask(pts, h, w), el.get("label", ""))
                if rec is None:
                    no_pixel += 1
                    continue
                verts = rec["vertices"]
            elif el.tag == "box":  # corners in pixel edges: xbr is the right edge, one past the last pixel
                x1, y1, x2, y2 = (int(round(v)) for v in corners)
                verts = box_vertices(x1, y1, x2, y2)
            else:  # ellipse, mask, polyline, points, cuboid: not read, and said so below
                skipped[el.tag] = skipped.get(el.tag, 0) + 1
                continue
            if not verts:
                continue
            verts = [[int(round(x)), int(round(y))] for x, y in verts]
            label = el.get("label", "")
            masks.append({"class_name": label, "category": category_of(label), "score": score,
                          "bounding_box": outline_box(verts), "vertices": verts})
        entries.append({"filename": img.get("name", ""), "height": int(img.get("height", 0)),
                        "width": int(img.get("width", 0)), "masks": masks})
    if skipped:  # a brush <mask> or an <ellipse> is a cell someone drew: listed as left out (exit 1), not only logged
        what = ", ".join(f"{n} <{tag}>" for tag, n in sorted(skipped.items()))
        if failed is None:
            log.warning("%s: %s left out (only polygons and boxes are read)", path, what)
        else:
            failed.append({"image": str(path), "reason": f"{what} left out: only polygons and boxes are read "
                                                         "(in CVAT, a mask or an ellipse can be redrawn as a polygon)"})
    if no_pixel:
        log.warning("%s: %d polygons that cover no pixel left out", path, no_pixel)
    return entries


# ---------------------------------------------------------------- COCO
def to_coco(entries: list[dict], rle: bool = False, labels: list[str] | None = None, keep_names: bool = False) -> dict:
    """COCO instance-segmentation dict: polygons, or compressed RLE (``rle=True``, via pycocotools); category
    ids 1, 2, ... in the order of ``labels``, then of any other class name present (:func:`label_order`);
    ``file_name`` by :func:`image_names` (``keep_names``: the entries' own)."""
    names = label_order(entries, labels or ())
    cats = [{"id": i + 1, "name": n, "supercategory": category_of(n)} for i, n in enumerate(names)]
    images, anns = [], []
    outside: Counter = Counter()  # (image, class) of each object left out
    for i, (e, name) in enumerate(zip(entries, image_names(entries, keep_names)), 1):
        h, w = int(e["height"]), int(e["width"])
        images.append({"id": i, "file_name": name, "height": h, "width": w,
                       # the photo whatever its name (analyze, serve): `crop --types` checks it (an extra key COCO
                       # readers ignore; a walkthrough, stop 71: another batch's photos of its names were cut unsaid)
                       **({"pixels_sha256": e["pixels_sha256"]} if e.get("pixels_sha256") else {})})
        for m in e["masks"]:
            mask = rasterise(m["vertices"], (h, w))
            if not mask.any():  # outside the image: no pixel to write (pycocotools cannot read an empty polygon)
                outside[(name, m["class_name"])] += 1
                continue
            x1, y1, x2, y2 = clipped_box(m["bounding_box"], h, w)  # as the mask and its area are
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": names.index(m["class_name"]) + 1,
                   "bbox": [x1, y1, x2 - x1, y2 - y1],
                   "area": int(mask.sum()), "iscrowd": 0, "score": m.get("score", 1.0)}
            if rle:
                from pycocotools import mask as mask_utils

                enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                ann["segmentation"] = {"size": [h, w], "counts": enc["counts"].decode("ascii")}
            else:
                ann["segmentation"] = [edge_polygon(mask)]
            anns.append(ann)
    if outside:  # which image and class (the count alone named neither)
        said = ", ".join(f"{n} {c!r} x{k}" for (n, c), k in list(outside.items())[:5])
        log.warning("%d objects cover no pixel of their image: left out of the COCO file (%s%s)", sum(outside.values()),
                    said, ", ..." if len(outside) > 5 else "")
    return {"info": {"description": "hemaseg", "polygons": "pixel edges"}, "images": images, "annotations": anns,
            "categories": cats}


def write_coco(path: str | Path, entries: list[dict], rle: bool = False, labels: list[str] | None = None,
               keep_names: bool = False) -> Path:
    return write_json(path, to_coco(entries, rle, labels, keep_names))


def _id_text(v) -> bool:
    """A COCO id that is not a number (sorted after the numbers, as text)."""
    return isinstance(v, bool) or not isinstance(v, (int, float))


def coco_labels(path: str | Path) -> list[str]:
    """The category names of a COCO JSON, by id (what :func:`to_coco` keeps as the categories when converting)."""
    try:
        cats = json.loads(Path(path).read_text())["categories"]
        return [c["name"] for c in sorted(cats, key=lambda c: (1, str(c["id"])) if _id_text(c["id"]) else (0, c["id"]))]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HemasegInputError(path, f"not a COCO JSON with images and categories ({exc})") from None


def read_coco(path: str | Path, failed: list[dict] | None = None) -> list[dict]:
    """Entries of a COCO JSON (polygon or RLE segmentations; box-only annotations become rectangles). An
    annotation that cannot be read (a polygon coordinate that is no number, fewer than three points, a
    box that is no four numbers, an unknown image or category id) raises :class:`HemasegInputError` naming its image
    and id; with ``failed`` given, it is listed there and left out, and the rest of the file is read."""
    try:
        d = json.loads(Path(path).read_text())
        cats = {c["id"]: c["name"] for c in d["categories"]}
        images = {im["id"]: im for im in d["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HemasegInputError(path, f"not a COCO JSON with images and categories ({exc})") from None
    per: dict[int, list[dict]] = {i: [] for i in images}
    parts_dropped = empty = degenerate = rle_pieces = 0
    # hemaseg's COCO files before 4 December 2026 put polygons on pixel centres (no "polygons" note in info)
    centres = (d.get("info") or {}).get("description") == "hemaseg" and "polygons" not in (d.get("info") or {})
    for a in d.get("annotations", []):
        im = images.get(a.get("image_id"))
        if im is None:  # one annotation's slip: it alone is left out (every photo of the file was lost)
            _left_out(failed, path, f"annotation {a.get('id')}", ValueError(f"names unknown image {a.get('image_id')}"))
            continue
        h, w = int(im["height"]), int(im["width"])
        seg = a.get("segmentation")
        if a.get("category_id") not in cats:
            _left_out(failed, path, f"image {im.get('file_name', '')}, annotation {a.get('id')}",
                      ValueError(f"names unknown category {a.get('category_id')}"))
            continue
        name = cats[a["category_id"]]
        try:
            box_ok = _usable_box(a.get("bbox"))
            if isinstance(seg, dict):
                if not isinstance(seg.get("size"), (list, tuple)) or "counts" not in seg:
                    raise ValueError("an RLE segmentation needs 'size' and 'counts'")
            elif isinstance(seg, list) and seg and not centres:
                parts = seg if isinstance(seg[0], (list, tuple)) else [seg]
                parts = [p for p in parts if len(p)]  # [[]]: no outline, the box is the object (as before)
                seg = parts or None
            if isinstance(seg, list) and seg and not centres:
                good, why = [], None
                for part in seg:  # a stray part of one or two points beside the outline is dropped, said below
                    try:
                        good.append(polygon_values(part))
                    except ValueError as exc:
                        why = exc
                if not good:
                    raise why
                degenerate += len(seg) - len(good)
                seg = good
            elif not seg and not box_ok:  # the box is the object's only geometry
                raise ValueError("no segmentation and no bbox" if a.get("bbox") is None
                                 else f"bbox {a['bbox']!r} is not four numbers")
            if isinstance(seg, list) and seg and not (h > 0 and w > 0):  # drawn where it lies: not too far out
                polygon_extent(seg if isinstance(seg[0], (list, tuple)) else [seg])
        except (TypeError, ValueError) as exc:
            _left_out(failed, path, f"image {im.get('file_name', '')}, annotation {a.get('id')} ({name})", exc)
            continue
        if isinstance(seg, dict):
            from pycocotools import mask as mask_utils

            rle = seg if isinstance(seg["counts"], (str, bytes)) else mask_utils.frPyObjects(seg, h, w)
            if isinstance(rle.get("counts"), str):
                rle = {**rle, "counts": rle["counts"].encode("ascii")}
            full = mask_utils.decode(rle).astype(np.uint8)
            rec = mask_record(full.astype(bool), name, a.get("score", 1.0))
            rle_pieces += cv2.connectedComponents(full, connectivity=8)[0] > 2  # background + one piece
        elif seg and centres:
            parts_dropped += len(seg) > 1
            verts = [[int(round(v)) for v in xy] for xy in zip(max(seg, key=len)[0::2], max(seg, key=len)[1::2])]
            ph, pw = (h, w) if h > 0 and w > 0 else polygon_extent([[c for v in verts for c in v]])
            rec = mask_record(rasterise(verts, (ph, pw)), name, a.get("score", 1.0))
        elif seg:
            parts_dropped += len(seg) > 1
            ph, pw = (h, w) if h > 0 and w > 0 else polygon_extent(seg)  # no image size: drawn where it lies
            rec = mask_record(polygon_mask(seg, ph, pw), name, a.get("score", 1.0))
        else:
            if float(a["bbox"][2]) <= 0 or float(a["bbox"][3]) <= 0:  # an empty box is no object: left out, said
                empty += 1
                continue
            x1, y1, x2, y2 = _coco_box(a["bbox"])
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)  # a sub-pixel box keeps its pixel
            rec = {"class_name": name, "category": category_of(name), "score": a.get("score", 1.0),
                   "bounding_box": {"x1": x1, "x2": x2, "y1": y1, "y2": y2}, "vertices": box_vertices(x1, y1, x2, y2)}
        # the annotation's own box (the whole object, every part: a box output and cells' scoring keep it), not the
        # outline's extent, unless it is no box ([0, 0, 0, 0])
        if rec is not None and seg and box_ok:
            x1, y1, x2, y2 = _coco_box(a["bbox"])
            if x2 > x1 and y2 > y1:
                rec["bounding_box"] = {"x1": x1, "x2": x2, "y1": y1, "y2": y2}
        if rec is not None:
            per[im["id"]].append(rec)
        else:
            empty += 1
    if degenerate:
        log.warning("%s: %d polygon parts of fewer than three points (beside a whole outline) dropped", path, degenerate)
    if parts_dropped:
        log.warning("%s: %d annotations have several polygon parts; only the largest part of each is kept",
                    path, parts_dropped)
    if rle_pieces:  # an iscrowd RLE of several cells became its largest piece without a word
        log.warning("%s: %d RLE annotations have several separate pieces; only the largest piece of each is kept",
                    path, rle_pieces)
    if empty:
        log.warning("%s: %d annotations that cover no pixel left out", path, empty)
    return [{"filename": images[i]["file_name"], "height": int(images[i]["height"]),
             "width": int(images[i]["width"]),
             **({"pixels_sha256": str(images[i]["pixels_sha256"])} if images[i].get("pixels_sha256") else {}),
             "masks": per[i]} for i in images]


def _usable_box(bbox) -> bool:
    """Whether a COCO ``bbox`` is four finite numbers (an exporter's ``[]`` or a word is no box)."""
    try:
        return bbox is not None and len(bbox) == 4 and all(np.isfinite([float(v) for v in bbox]))
    except (TypeError, ValueError):
        return False


def _coco_box(bbox) -> tuple[int, int, int, int]:
    """A COCO ``[x, y, w, h]`` (pixel edges, floats allowed) as whole-pixel (x1, y1, x2, y2), x2/y2 exclusive."""
    x, y, bw, bh = (float(v) for v in bbox)
    return int(round(x)), int(round(y)), int(round(x + bw)), int(round(y + bh))


# ---------------------------------------------------------------- Pascal VOC
def read_voc_entry(path: str | Path) -> dict:
    """A Pascal VOC XML as an entry (boxes as 4-corner polygons on their outermost pixels; class names lower
    case, BCCD's ``Platelets`` as ``platelet``). An empty or inverted box is left out, with a warning."""
    root = parse_xml(path, "VOC XML")
    size = root.find("size")
    h = int(size.findtext("height", "0")) if size is not None else 0
    w = int(size.findtext("width", "0")) if size is not None else 0
    if h <= 0 or w <= 0:  # no <size> (some exporters): the image's own, beside the XML or in a VOC root's JPEGImages/
        path = Path(path)
        named = Path(root.findtext("filename") or path.stem).name
        folders = [f for f in (path.parent, path.parent.parent / "JPEGImages") if f.is_dir()]
        # the file it names, else an image of its stem or of the XML's own (a VOC root pairs them by stem: a stale
        # <filename> is common); never a.b.png for a.png
        image = next((f / named for f in folders if (f / named).is_file()), None) or next(
            (p for stem in dict.fromkeys((Path(named).stem, path.stem)) for f in folders
             for p in sorted(f.glob(f"{glob.escape(stem)}.*")) if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES),
            None)
        if image is None:
            raise HemasegInputError(path, f"no <size> and no image {named} (or {path.stem}.*) beside it or in "
                                          "../JPEGImages to take the size from")
        h, w = image_size(image)
    masks = []
    for name, (x1, y1, x2, y2) in read_voc(path):
        if x2 <= x1 or y2 <= y1:  # BCCD holds two (a point each): no object, and no box a writer could write
            log.warning("%s: %r box (xmin %d, ymin %d, xmax %d, ymax %d) is empty or inverted: left out",
                        path, name, x1, y1, x2, y2)
            continue
        n = {"platelets": "platelet"}.get(name.lower(), name.lower())
        masks.append({"class_name": n, "category": category_of(n), "score": 1.0,
                      "bounding_box": {"x1": x1, "x2": x2, "y1": y1, "y2": y2},
                      "vertices": box_vertices(x1, y1, x2, y2)})
    return {"filename": root.findtext("filename", Path(path).stem), "height": h, "width": w, "masks": masks}


def to_voc(entry: dict) -> str:
    """Pascal VOC XML text of one entry: its file name, size and one ``<object>`` per mask (class name,
    bounding box clipped to the image, ``xmax``/``ymax`` exclusive as :func:`read_voc_entry` reads them, so a
    round trip keeps every box; a score under 1 is kept as ``<score>``, which VOC readers ignore).

    >>> e = {"filename": "a.jpg", "height": 40, "width": 60, "masks": [{"class_name": "rbc", "score": 1.0,
    ...      "bounding_box": {"x1": 3, "x2": 15, "y1": 4, "y2": 9}}]}
    >>> "<xmin>3</xmin>" in to_voc(e) and "<height>40</height>" in to_voc(e)
    True
    """
    h, w = int(entry.get("height") or 0), int(entry.get("width") or 0)
    if h <= 0 or w <= 0:
        raise HemasegInputError(entry.get("filename", ""), "no image size; a VOC file records it")
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = xml_name(Path(entry["filename"]).name)
    size = ET.SubElement(root, "size")
    for k, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for m in entry["masks"]:
        x1, y1, x2, y2 = (int(v) for v in clipped_box(m["bounding_box"], h, w))
        if x2 <= x1 or y2 <= y1:  # outside the image: no box a reader could take back
            log.warning("%s: %r box outside the %d x %d image: left out", entry["filename"], m["class_name"], w, h)
            continue
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = m["class_name"]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(x1 == 0 or y1 == 0 or x2 == w or y2 == h))
        ET.SubElement(obj, "difficult").text = "0"
        if float(m.get("score", 1.0)) < 1.0:
            ET.SubElement(obj, "score").text = f"{float(m['score']):.4f}"
        box = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, k).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(out: str | Path, entries: list[dict]) -> Path:
    """``OUT/<stem>.xml`` per entry (:func:`to_voc`), as labelImg and BCCD keep them; images are not copied."""
    out = Path(out)
    _write_per_image(out, entries, ".xml", to_voc, "VOC", "XML file")
    return out


# ---------------------------------------------------------------- YOLO
# Written class ids start with TXL-PBC's (0 WBC, 1 RBC, 2 platelet), so boxes converted from BCCD
# (or any other source) train together with TXL-PBC's; further names follow, sorted.
YOLO_ORDER = ("wbc", "rbc", "platelet")
# Where YOLO datasets name their classes: Ultralytics/Roboflow YAML, labelImg classes.txt, darknet obj.names.
YOLO_NAME_FILES = ("data.yaml", "data.yml", "dataset.yaml", "classes.txt", "obj.names")
_YOLO_LINE = re.compile(r"^\s*\d+(\s+[-+0-9.eE]+){4,}\s*$")


def _names_file(path: Path) -> list[str]:
    """Class names (index = class id) of a data.yaml / classes.txt / obj.names file."""
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise HemasegInputError(path, f"not a readable YAML file ({exc.__class__.__name__})") from None
        names = d.get("names") if isinstance(d, dict) else None
        if isinstance(names, dict):  # Ultralytics also writes {0: name, 1: name, ...}
            try:
                names = [names[k] for k in sorted(names, key=int)] if sorted(map(int, names)) == list(
                    range(len(names))) else None
            except (TypeError, ValueError):
                names = None
        if not isinstance(names, list) or not names:
            raise HemasegInputError(path, "no 'names' list (class 0 first) in the YAML")
        return [str(n) for n in names]
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise HemasegInputError(path, f"not a readable class list ({exc.__class__.__name__})") from None
    # TXL-PBC's classes.txt numbers its lines ("0 White Blood Cell (WBC)"); labelImg's does not.
    if lines and all(re.match(rf"{i}\s+\S", ln) for i, ln in enumerate(lines)):
        lines = [ln.split(None, 1)[1] for ln in lines]
    if not lines:
        raise HemasegInputError(path, "empty class list")
    return lines


def yolo_names(root: str | Path) -> list[str]:
    """The project's names of a YOLO dataset's classes (index = class id), from the first
    data.yaml, classes.txt or obj.names in ``root`` or up to two folders above it."""
    root = Path(root)
    for folder in (root, *list(root.resolve().parents)[:2]):
        for fname in YOLO_NAME_FILES:
            if (folder / fname).is_file():
                return [canonical_name(n) for n in _names_file(folder / fname)]
    raise HemasegInputError(root, f"no file naming the YOLO classes ({', '.join(YOLO_NAME_FILES)}; "
                                  "class 0 first) in the folder or the two above it")


def _label_candidates(image: Path) -> list[Path]:
    """Where an image's YOLO label file may be: beside it, or in the ``labels`` folder that mirrors
    its ``images`` folder (the Ultralytics layout: images/train/x.png -> labels/train/x.txt)."""
    out = [image.with_suffix(".txt"), image.with_suffix(".TXT")]  # x.TXT (a Windows tool's) was read as no label
    parts = image.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower() == "images":
            mirror = Path(*parts[:i], "labels", *parts[i + 1:])
            out += [mirror.with_suffix(".txt"), mirror.with_suffix(".TXT")]
            break
    return out


def find_yolo(root: str | Path) -> list[tuple[Path, Path | None]]:
    """(image, label file or None) for every image under ``root``, sorted. An image without a label
    file has no object (YOLO's convention for background images). Layouts: ``images/<split>/x.png``
    with ``labels/<split>/x.txt`` (Ultralytics, TXL-PBC), or label files beside the images."""
    root = Path(root)
    if not root.is_dir():
        raise HemasegInputError(root, "not a folder (a YOLO dataset is a folder of images and .txt labels)")
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(img, next((c for c in _label_candidates(img) if c.is_file()), None)) for img in images]
    # claimed files by identity: on a case-insensitive disk x.txt names the file x.TXT (and resolve() keeps the case asked)
    used = {(st.st_dev, st.st_ino) for st in (lab.stat() for _, lab in pairs if lab is not None)}
    if not used:
        raise HemasegInputError(root, "no image with a YOLO label file (x.txt beside x.png, or labels/ "
                                      "mirroring images/)")
    # A label file no image claims would be dropped without a word; refuse it (text files that hold
    # no YOLO line, such as a README, are not label files).
    for txt in sorted(p for p in root.rglob("*") if p.suffix.lower() == ".txt" and p.is_file()):
        st = txt.stat()
        if txt.name in YOLO_NAME_FILES or (st.st_dev, st.st_ino) in used:
            continue
        first = next((ln for ln in txt.read_text(errors="replace").splitlines() if ln.strip()), "")
        if _YOLO_LINE.match(first):
            raise HemasegInputError(txt, "YOLO label file without an image of the same name (needed for its size)")
    return pairs


def _px(v: float, size: int) -> int:
    """A normalised coordinate in whole pixels, halves rounded up (Python's round() goes to even)."""
    return min(size, max(0, math.floor(v * size + 0.5)))


def read_yolo_labels(path: str | Path, names: list[str], height: int, width: int) -> list[dict]:
    """Mask records of one YOLO label file of an image of ``height`` x ``width`` px. Lines are boxes
    ``class cx cy w h`` (a sixth number is a detector's score) or polygons ``class x1 y1 x2 y2 ...``
    (Ultralytics segmentation), all as fractions of the image size. A box's ``bounding_box`` has the
    pixel edges (x2, y2 exclusive) and its polygon the corners of the pixels it covers."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HemasegInputError(path, f"not a readable YOLO label file ({exc.__class__.__name__})") from None
    masks = []
    for i, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = float(fields[0])
            vals = [float(v) for v in fields[1:]]
        except ValueError:
            raise HemasegInputError(path, f"line {i}: expected numbers 'class cx cy w h', "
                                          f"got {line.strip()!r:.60}") from None
        if not cls.is_integer() or not 0 <= cls < len(names):
            raise HemasegInputError(path, f"line {i}: class {fields[0]}, but the class list names {len(names)} "
                                          f"(0..{len(names) - 1})")
        if not all(math.isfinite(v) for v in vals):
            raise HemasegInputError(path, f"line {i}: a coordinate is not a finite number")
        score = 1.0
        if len(vals) in (4, 5):
            cx, cy, bw, bh = vals[:4]
            if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < bw <= 1 and 0 < bh <= 1):
                raise HemasegInputError(path, f"line {i}: box {cx:g} {cy:g} {bw:g} {bh:g}: centre and size are "
                                              "fractions of the image (0-1, the size above 0)")
            score = vals[4] if len(vals) == 5 else 1.0
            x1, x2 = _px(cx - bw / 2, width), _px(cx + bw / 2, width)
            y1, y2 = _px(cy - bh / 2, height), _px(cy + bh / 2, height)
            # Vertices on the outermost pixels (mask_record's convention), so the polygon and the
            # box agree when another reader (COCO, CVAT) takes the box from the polygon.
            xr, yb = max(x1, x2 - 1), max(y1, y2 - 1)
            verts = [[x1, y1], [xr, y1], [xr, yb], [x1, yb]]
            box = {"x1": x1, "x2": x2, "y1": y1, "y2": y2}
        elif len(vals) >= 6 and len(vals) % 2 == 0:
            verts = [[_px(vals[j], width), _px(vals[j + 1], height)] for j in range(0, len(vals), 2)]
            box = outline_box(verts)
        else:
            raise HemasegInputError(path, f"line {i}: {len(vals)} numbers after the class; a box has 4 "
                                          "(cx cy w h), a polygon an even number from 6")
        name = names[int(cls)]
        masks.append({"class_name": name, "category": category_of(name), "score": score,
                      "bounding_box": box, "vertices": verts})
    return masks


def read_yolo(root: str | Path, failed: list[dict] | None = None) -> list[dict]:
    """Entries of a YOLO dataset folder (see :func:`find_yolo`); class names from :func:`yolo_names`,
    in the project's spelling. ``filename`` is the image's path relative to ``root``. An image (or its
    label file) that cannot be read raises :class:`HemasegInputError`; with ``failed`` given, it is
    listed there ({"image", "reason"}) and left out, and the others are read."""
    root = Path(root)
    pairs = find_yolo(root)
    names = yolo_names(root)
    bare = [image for image, label in pairs if label is None]
    if bare:  # (a root is read more than once a run: said once)
        warn_once(log, (str(root), "unlabelled", len(bare)), "%s: %d image(s) without a YOLO label file (%s%s) read "
                  "as fields with no cell (YOLO's background images)", root, len(bare),
                  bare[0].relative_to(root).as_posix(), ", ..." if len(bare) > 1 else "")
    entries = []
    for image, label in pairs:
        try:
            h, w = image_size(image)
            masks = read_yolo_labels(label, names, h, w) if label is not None else []
        except HemasegInputError as exc:
            if failed is None:
                raise
            failed.append({"image": str(exc.path), "reason": exc.reason})
            continue
        entries.append({"filename": image.relative_to(root).as_posix(), "height": int(h), "width": int(w),
                        "masks": masks})
    return entries


def yolo_name(name: str) -> str:
    """The name a class is written under in YOLO: the project's spelling of a name it knows (``WBC``,
    ``Platelets`` -> ``wbc``, ``platelet``: TXL-PBC's ids whatever a CVAT or COCO file called them), else
    the name as given.

    >>> yolo_name("Platelets"), yolo_name("Ghost")
    ('platelet', 'Ghost')
    """
    c = canonical_name(name)
    return c if c in KNOWN_NAMES else name


def yolo_class_order(entries: list[dict]) -> list[str]:
    """Class names by YOLO class id for ``entries``: wbc, rbc, platelet (TXL-PBC's ids), then the
    others present (:func:`yolo_name`), sorted."""
    present = {yolo_name(m["class_name"]) for e in entries for m in e["masks"]}
    return [*YOLO_ORDER, *sorted(present - set(YOLO_ORDER))]


def to_yolo(entry: dict, names: list[str]) -> str:
    """YOLO label text of one entry: one ``class cx cy w h`` line per object (its bounding box, as
    fractions of the image size, 6 decimals: well under a pixel for images up to 10^5 px)."""
    h, w = int(entry.get("height") or 0), int(entry.get("width") or 0)
    if h <= 0 or w <= 0:
        raise HemasegInputError(entry.get("filename", ""), "no image size; YOLO coordinates are fractions of it")
    lines = []
    for m in entry["masks"]:
        x1, y1, x2, y2 = clipped_box(m["bounding_box"], h, w)
        if x2 <= x1 or y2 <= y1:  # outside the image: a box of no size, which no YOLO reader takes back
            log.warning("%s: %r box outside the %d x %d image: left out", entry.get("filename", ""),
                        m["class_name"], w, h)
            continue
        k = names.index(m["class_name"] if m["class_name"] in names else yolo_name(m["class_name"]))
        lines.append(f"{k} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "".join(f"{ln}\n" for ln in lines)


def write_yolo(out: str | Path, entries: list[dict], names: list[str] | None = None) -> Path:
    """``OUT/<stem>.txt`` per entry (boxes, see :func:`to_yolo`) and ``OUT/classes.txt`` (one name
    per line, class 0 first). Images are not copied: put them beside the .txt files to read it back."""
    out = Path(out)
    names = list(names) if names else yolo_class_order(entries)
    bad = next((n for n in names if not n.strip() or "\n" in n or "\r" in n), None)
    if bad is not None:  # classes.txt holds one name a line: an empty one is dropped when read back
        raise HemasegInputError(out, f"a class named {bad!r}: YOLO's class list holds one name a line; name it")
    for e in entries:
        if Path(e["filename"]).stem.lower() == "classes":
            raise HemasegInputError(out, f"image {e['filename']}: its label file would be classes.txt, the class list")
    _write_per_image(out, entries, ".txt", lambda e: to_yolo(e, names), "YOLO", "label file")
    write_text(out / "classes.txt", "".join(f"{n}\n" for n in names))
    return out


def _write_per_image(out: Path, entries: list[dict], suffix: str, text_of, fmt: str, kind: str) -> None:
    """``OUT/<stem><suffix>`` per entry, the text ``text_of(entry)``: every name and every text made (each image
    size checked) before anything is written; two images of one stem (in any case) or none refused."""
    stems: dict[str, str] = {}
    for e in entries:
        stem = Path(e["filename"]).stem
        if not stem:
            raise HemasegInputError(out, f"an image without a file name; {fmt} names each {kind} after its image")
        if stem.lower() in stems:
            raise HemasegInputError(out, f"two images named {stem} ({stems[stem.lower()]}, {e['filename']}): "
                                         f"their {kind}s would collide")
        stems[stem.lower()] = e["filename"]
    texts = [(Path(e["filename"]).stem, text_of(e)) for e in entries]
    for stem, text in texts:
        write_text(out / f"{stem}{suffix}", text)
