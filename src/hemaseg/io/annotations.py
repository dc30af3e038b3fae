"""Per-image object annotations and their file formats: seed-003 results JSON, CVAT for images 1.1
XML, COCO JSON (polygons or RLE), Pascal VOC boxes, and label PNGs.

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

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from hemaseg.core.vocabulary import category_of
from hemaseg.errors import HemasegInputError
from hemaseg.io.datasets import parse_xml, read_voc
from hemaseg.io.writers import write_json, write_text


def mask_record(mask: np.ndarray, class_name: str, score: float = 1.0, offset: tuple[int, int] = (0, 0)) -> dict | None:
    """One seed-003 mask record from a boolean mask (largest outline); None for an empty mask."""
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


def rasterise(vertices: list, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of a polygon given as [[x, y], ...] (the inverse of :func:`mask_record`).

    >>> m = np.zeros((20, 20), bool); m[4:9, 3:15] = True
    >>> bool((rasterise(mask_record(m, "rbc")["vertices"], m.shape) == m).all())
    True
    """
    out = np.zeros(shape, np.uint8)
    if len(vertices) >= 1:
        cv2.fillPoly(out, [np.asarray(vertices, np.int32).reshape(-1, 1, 2)], 1)
    return out.astype(bool)


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
        return [d["data"][k] for k in sorted(d["data"], key=int)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HemasegInputError(path, f"not a results JSON with a 'data' object ({exc})") from None


# ---------------------------------------------------------------- CVAT for images 1.1
def to_cvat(entries: list[dict], labels: list[str] | None = None) -> str:
    """CVAT for images 1.1 XML text: one <image> per entry, one <polygon> per mask."""
    names = list(labels) if labels else sorted({m["class_name"] for e in entries for m in e["masks"]})
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(meta, "size").text = str(len(entries))
    lab_el = ET.SubElement(meta, "labels")
    for n in names:
        ET.SubElement(ET.SubElement(lab_el, "label"), "name").text = n
    for i, e in enumerate(entries):
        img = ET.SubElement(root, "image", id=str(i), name=Path(e["filename"]).name,
                            width=str(e["width"]), height=str(e["height"]))
        for m in e["masks"]:
            pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in m["vertices"])
            poly = ET.SubElement(img, "polygon", label=m["class_name"], source="auto", occluded="0",
                                 points=pts, z_order="0")
            ET.SubElement(poly, "attribute", name="score").text = f"{m.get('score', 1.0):.4f}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_cvat(path: str | Path, entries: list[dict], labels: list[str] | None = None) -> Path:
    return write_text(path, to_cvat(entries, labels))


def read_cvat(path: str | Path) -> list[dict]:
    """Entries of a CVAT for images 1.1 XML (polygons; boxes become 4-corner polygons)."""
    root = parse_xml(path, "CVAT XML")
    entries = []
    for img in root.iter("image"):
        masks = []
        for el in img:
            if el.tag == "polygon":
                verts = [[float(v) for v in p.split(",")] for p in el.get("points", "").split(";") if p]
            elif el.tag == "box":
                x1, y1, x2, y2 = (float(el.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                verts = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
            else:
                continue
            if not verts:
                continue
            verts = [[int(round(x)), int(round(y))] for x, y in verts]
            xs, ys = [v[0] for v in verts], [v[1] for v in verts]
            score = next((float(a.text) for a in el.iter("attribute") if a.get("name") == "score" and a.text), 1.0)
            label = el.get("label", "")
            masks.append({"class_name": label, "category": category_of(label), "score": score,
                          "bounding_box": {"x1": min(xs), "x2": max(xs) + 1, "y1": min(ys), "y2": max(ys) + 1},
                          "vertices": verts})
        entries.append({"filename": img.get("name", ""), "height": int(img.get("height", 0)),
                        "width": int(img.get("width", 0)), "masks": masks})
    return entries


# ---------------------------------------------------------------- COCO
def to_coco(entries: list[dict], rle: bool = False, labels: list[str] | None = None) -> dict:
    """COCO instance-segmentation dict: polygons, or compressed RLE (``rle=True``, via pycocotools)."""
    names = list(labels) if labels else sorted({m["class_name"] for e in entries for m in e["masks"]})
    cats = [{"id": i + 1, "name": n, "supercategory": category_of(n)} for i, n in enumerate(names)]
    images, anns = [], []
    for i, e in enumerate(entries, 1):
        h, w = int(e["height"]), int(e["width"])
        images.append({"id": i, "file_name": Path(e["filename"]).name, "height": h, "width": w})
        for m in e["masks"]:
            mask = rasterise(m["vertices"], (h, w))
            bb = m["bounding_box"]
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": names.index(m["class_name"]) + 1,
                   "bbox": [bb["x1"], bb["y1"], bb["x2"] - bb["x1"], bb["y2"] - bb["y1"]],
                   "area": int(mask.sum()), "iscrowd": 0, "score": m.get("score", 1.0)}
            if rle:
                from pycocotools import mask as mask_utils

                enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                ann["segmentation"] = {"size": [h, w], "counts": enc["counts"].decode("ascii")}
            else:
                ann["segmentation"] = [[float(c) for v in m["vertices"] for c in v]]
            anns.append(ann)
    return {"info": {"description": "hemaseg"}, "images": images, "annotations": anns, "categories": cats}


def write_coco(path: str | Path, entries: list[dict], rle: bool = False, labels: list[str] | None = None) -> Path:
    return write_json(path, to_coco(entries, rle, labels))


def read_coco(path: str | Path) -> list[dict]:
    """Entries of a COCO JSON (polygon or RLE segmentations; box-only annotations become rectangles)."""
    try:
        d = json.loads(Path(path).read_text())
        cats = {c["id"]: c["name"] for c in d["categories"]}
        images = {im["id"]: im for im in d["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HemasegInputError(path, f"not a COCO JSON with images and categories ({exc})") from None
    per: dict[int, list[dict]] = {i: [] for i in images}
    for a in d.get("annotations", []):
        im = images.get(a.get("image_id"))
        if im is None:
            raise HemasegInputError(path, f"annotation {a.get('id')} names unknown image {a.get('image_id')}")
        h, w = int(im["height"]), int(im["width"])
        seg = a.get("segmentation")
        name = cats.get(a.get("category_id"), str(a.get("category_id")))
        if isinstance(seg, dict):
            from pycocotools import mask as mask_utils

            rle = seg if isinstance(seg["counts"], (str, bytes)) else mask_utils.frPyObjects(seg, h, w)
            if isinstance(rle.get("counts"), str):
                rle = {**rle, "counts": rle["counts"].encode("ascii")}
            rec = mask_record(mask_utils.decode(rle).astype(bool), name, a.get("score", 1.0))
        elif seg:
            poly = max(seg, key=len)
            verts = [[int(round(poly[j])), int(round(poly[j + 1]))] for j in range(0, len(poly) - 1, 2)]
            xs, ys = [v[0] for v in verts], [v[1] for v in verts]
            rec = {"class_name": name, "category": category_of(name), "score": a.get("score", 1.0),
                   "bounding_box": {"x1": min(xs), "x2": max(xs) + 1, "y1": min(ys), "y2": max(ys) + 1},
                   "vertices": verts}
        else:
            x, y, bw, bh = a["bbox"]
            verts = [[int(x), int(y)], [int(x + bw), int(y)], [int(x + bw), int(y + bh)], [int(x), int(y + bh)]]
            rec = {"class_name": name, "category": category_of(name), "score": a.get("score", 1.0),
                   "bounding_box": {"x1": int(x), "x2": int(x + bw), "y1": int(y), "y2": int(y + bh)},
                   "vertices": verts}
        if rec is not None:
            per[im["id"]].append(rec)
    return [{"filename": images[i]["file_name"], "height": int(images[i]["height"]),
             "width": int(images[i]["width"]), "masks": per[i]} for i in images]


# ---------------------------------------------------------------- Pascal VOC
def read_voc_entry(path: str | Path) -> dict:
    """A Pascal VOC XML as an entry (boxes as 4-corner polygons; class names lower case, BCCD's
    ``Platelets`` as ``platelet``)."""
    root = parse_xml(path, "VOC XML")
    size = root.find("size")
    h = int(size.findtext("height", "0")) if size is not None else 0
    w = int(size.findtext("width", "0")) if size is not None else 0
    masks = []
    for name, (x1, y1, x2, y2) in read_voc(path):
        n = {"platelets": "platelet"}.get(name.lower(), name.lower())
        masks.append({"class_name": n, "category": category_of(n), "score": 1.0,
                      "bounding_box": {"x1": x1, "x2": x2, "y1": y1, "y2": y2},
                      "vertices": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]})
    return {"filename": root.findtext("filename", Path(path).stem), "height": h, "width": w, "masks": masks}
