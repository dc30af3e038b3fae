"""Training data for the whole-smear cells model: VOC boxes (BCCD), YOLO boxes (TXL-PBC, four
sources) or COCO masks (a lab's CVAT export) -> pseudo-masks kept as COCO -> photos at the training
scale (each photo rescaled so its red cells have one size) with encoded instance maps."""
from __future__ import annotations

import csv
import glob
import json
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.data.transforms import normalize, percentile_range, train_transform
from hemaseg.data.weights import class_balance_weights
from hemaseg.engine.losses import IGNORE
from hemaseg.engine.tiling import predict_tiled
from hemaseg.engine.train import SegDataset, object_diameters, sampling_probs
from hemaseg.errors import HemasegInputError
from hemaseg.io.annotations import (
    YOLO_NAME_FILES,
    box_vertices,
    category_of,
    clipped_box,
    read_coco,
    read_voc_entry,
    read_yolo,
    write_coco,
)
from hemaseg.io.images import IMAGE_SUFFIXES, image_size, read_image
from hemaseg.io.writers import write_json
from hemaseg.metrics import box_iou, detection_ap
from hemaseg.progress import track, warn_once
from hemaseg.tasks.cells.infer import cell_instances, grow_box
from hemaseg.tasks.cells.targets import CENTRE, cell_targets, encode_instances, pseudo_masks

log = logging.getLogger(__name__)

INPUT_SCALE = 0.5  # BCCD photos (red cells ~85 px) are trained at 0.5x: red cells ~43 px, platelets ~17 px
# Every photo is trained at the scale that makes its red cells' median box side this many px (BCCD's
# ~99 px boxes at INPUT_SCALE): fields from 256 to 640 px across instruments (TXL-PBC: red-cell boxes
# 59 px in BCDD, 75 in PBC, 99 in BCCD, 130 in Raabin) meet the network at one magnification.
TARGET_RBC_BOX = 50.0
# Share of the training draws given to photos holding a platelet: TXL-PBC boxes one in about three
# of its fields (BCCD nearly all), and drawn as they come the network never learnt them (AP 0.0).
PLATELET_SHARE = {"platelets": 0.5, "no platelet": 0.5}
SOURCES_FILE = "sources.csv"  # image, source_dataset[, ...]: which lab/instrument each photo comes from


def photo_scale(entry: dict, target: float = TARGET_RBC_BOX, default: float = INPUT_SCALE) -> float:
    """Training scale of a photo: ``target`` over the median side (sqrt of the area) of its red-cell
    boxes, within [0.1, 4]; ``default`` when it has no red-cell box.

    >>> box = {"x1": 0, "y1": 0, "x2": 100, "y2": 100}
    >>> photo_scale({"masks": [{"class_name": "rbc", "bounding_box": box}]})
    0.5
    >>> photo_scale({"masks": []})
    0.5
    """
    sides = [np.sqrt(max(0, b["x2"] - b["x1"]) * max(0, b["y2"] - b["y1"]))
             for m in entry["masks"] if category_of(m["class_name"]) == "rbc" for b in [m["bounding_box"]]]
    sides = [v for v in sides if v > 0]
    return float(np.clip(target / np.median(sides), 0.1, 4.0)) if sides else default


def is_yolo_root(root: Path) -> bool:
    """A YOLO dataset folder: a file naming the classes (data.yaml, classes.txt, obj.names) and an ``images/``
    folder, or photos with their ``.txt`` label files beside them (what ``convert --to yolo`` writes once the
    photos are put beside its files; such a folder was refused as neither VOC nor COCO)."""
    root = Path(root)
    if not root.is_dir() or not any((root / f).is_file() for f in YOLO_NAME_FILES):
        return False
    return (root / "images").is_dir() or any(p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".txt").is_file()
                                             for p in root.iterdir())


def read_sources(root: Path) -> dict[str, dict]:
    """Image file name -> its row of ``root/sources.csv`` (``source_dataset``, ``original_name``), or {}."""
    f = root / SOURCES_FILE
    if not f.is_file():
        return {}
    with open(f, newline="") as fh:
        return {row["image"]: row for row in csv.DictReader(fh) if row.get("image")}


def coco_photo_folders(coco: Path) -> tuple[Path, Path]:
    """Where the photos a COCO JSON names are looked for, in order: beside it, then in ``images/``."""
    return coco.parent, coco.parent / "images"


def find_annotated_photos(root: str | Path, failed: list[dict] | None = None) -> list[tuple[Path, dict]]:
    """(image path, entry) of a VOC root (``Annotations/*.xml`` + ``JPEGImages/``, or each ``x.xml`` beside
    its photo; boxes), of a YOLO dataset (``images/<split>/`` + ``labels/<split>/`` + data.yaml; each entry
    carries its ``split`` and, from ``sources.csv``, its ``source`` and ``original_name``) or of a COCO JSON
    (file, or a folder holding ``annotations.json``; images beside it or in ``images/``). ``failed``: a
    photo or annotation file that cannot be read, a VOC photo without its XML, a VOC or COCO photo whose size
    is not its annotations' is listed there and left out (else it raises); VOC and COCO boxes partly outside
    their photo are clipped, those wholly outside left out (said).

    Objects of a class that is no red cell, WBC (or WBC type) nor platelet are neither trained on nor
    scored: a warning names those classes and their counts (once per root)."""
    photos = _annotated_photos(Path(root), failed)
    other = Counter(m["class_name"] for _, e in photos for m in e["masks"] if category_of(m["class_name"])
                    not in CATEGORIES)
    if other:
        said = ', '.join(f'{n!r} {k}' for n, k in sorted(other.items()))
        warn_once(log, (str(root), "unknown classes", said), "%s: %d object(s) of classes the cells task does not "
                  "know are left out (%s); it knows %s, the WBC types and their usual spellings", root,
                  sum(other.values()), said, ", ".join(CATEGORIES))
    return photos


def _annotated_photos(root: Path, failed: list[dict] | None) -> list[tuple[Path, dict]]:
    if is_yolo_root(root):
        sources = read_sources(root)
        out = []
        for e in read_yolo(root, failed):
            rel = Path(e["filename"])
            row = sources.get(rel.name, {})
            split = rel.parts[1] if len(rel.parts) > 2 and rel.parts[0] == "images" else ""
            out.append((root / rel, {**e, "filename": rel.name, "split": split,
                                     "source": row.get("source_dataset", ""),
                                     "original_name": row.get("original_name", "")}))
        return out
    coco = root if root.suffix == ".json" else root / "annotations.json"
    if coco.is_file():
        out = []
        for e in read_coco(coco, failed):  # an object it cannot read is listed and left out, the rest scored
            for base in coco_photo_folders(coco):
                if (base / e["filename"]).exists():
                    out.append((base / e["filename"], e))
                    break
            else:  # an annotated photo that is not there: said where scoring lists what it left out
                if failed is not None:
                    failed.append({"image": str(coco.parent / e["filename"]), "reason": "annotated in "
                                   f"{coco.name}, but no such photo beside it or in images/"})
        bare = [e["filename"] for _, e in out if not e["masks"]]
        if bare:  # every cell in them is a false positive when scored, background when trained (said, as YOLO's)
            warn_once(log, (str(coco), "unannotated", len(bare)), "%s: %d image(s) with no annotation (%s%s) read as "
                      "fields with no cell", coco, len(bare), bare[0], ", ..." if len(bare) > 1 else "")
        return _on_their_photos(out, failed, root)
    # a VOC root (Annotations/ + JPEGImages/), or the XMLs beside their photos (labelImg; `convert --to voc` + photos)
    ann, photos = (root / "Annotations", root / "JPEGImages") if (root / "Annotations").is_dir() else (root, root)
    xmls = sorted(ann.glob("*.xml")) if ann.is_dir() else []
    if ann == root and not xmls:
        raise HemasegInputError(root, "not a folder" if not root.is_dir() else
                                "no box annotations found: a VOC root (Annotations/, JPEGImages/), Pascal VOC XMLs "
                                "beside their photos, a COCO annotations.json, or a YOLO folder (photos and .txt "
                                "label files, with classes.txt or data.yaml naming the classes)")
    out, paired = [], set()
    for xml in xmls:
        jpg = next((p for p in sorted(photos.glob(f"{glob.escape(xml.stem)}.*"))
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.stem == xml.stem), None)
        if jpg is not None:
            paired.add(jpg.name)
            try:
                out.append((jpg, read_voc_entry(xml)))
            except (HemasegInputError, ValueError) as exc:  # one unreadable XML: that photo only (it stopped
                if failed is None:                             # the whole run)
                    raise
                failed.append({"image": str(xml), "reason": getattr(exc, "reason", f"malformed ({exc})")})
        elif failed is not None:
            failed.append({"image": str(xml), "reason": f"no photo {xml.stem}.* "
                           + ("in JPEGImages/" if photos != root else "beside it")})
    if failed is not None and photos.is_dir():  # a photo with no XML was neither scored nor trained on without a word
        failed += [{"image": str(p), "reason": f"no {p.stem}.xml " + ("in Annotations/" if photos != root else
                                                                      "beside it") + ": no boxes to score or train on"}
                   for p in sorted(photos.iterdir())
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in paired and p.is_file()]
    return _on_their_photos(out, failed, root)


def _on_their_photos(pairs: list[tuple[Path, dict]], failed: list[dict] | None, root: Path
                     ) -> list[tuple[Path, dict]]:
    """VOC/COCO boxes laid on the photos they annotate: a photo whose size is not the one its annotations give
    (resized after annotating: every box would lie elsewhere; it scored AP 0 without a word), and one that cannot be
    read, is listed in ``failed`` and left out (without ``failed``: raised); a box partly outside the photo is
    clipped to it, one wholly outside left out (both counted as cells, and said, before)."""
    kept, clipped, outside = [], 0, 0
    for path, e in pairs:
        try:
            h, w = image_size(path)
        except (HemasegInputError, OSError) as exc:  # one unreadable photo stopped a whole training run (a walkthrough)
            if failed is None:
                raise
            failed.append({"image": str(path), "reason": getattr(exc, "reason", None) or str(exc)})
            continue
        eh, ew = int(e.get("height") or 0), int(e.get("width") or 0)
        if eh > 0 and ew > 0 and (eh, ew) != (h, w):
            reason = (f"annotated as {ew} x {eh} px, but the photo is {w} x {h} px: its boxes would lie in the wrong "
                      "places (was it resized after annotating?)")
            if failed is None:
                raise HemasegInputError(path, reason)
            failed.append({"image": str(path), "reason": reason + "; left out"})
            continue
        masks = []
        for m in e["masks"]:
            bb = m["bounding_box"]
            x1, y1, x2, y2 = clipped_box(bb, h, w)
            if x2 <= x1 or y2 <= y1:
                outside += 1
                continue
            if (x1, y1, x2, y2) != (bb["x1"], bb["y1"], bb["x2"], bb["y2"]):
                clipped += 1
                m = {**m, "bounding_box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                     **({"vertices": box_vertices(x1, y1, x2, y2)} if is_box(m) else {})}
            masks.append(m)
        kept.append((path, {**e, "height": h, "width": w, "masks": masks}))
    if clipped or outside:
        warn_once(log, (str(root), "boxes outside"), "%s: %d box(es) wholly outside their photo left out, %d partly "
                  "outside clipped to it", root, outside, clipped)
    return kept


def is_box(record: dict) -> bool:
    """The object is a 4-corner axis-aligned rectangle (a VOC box, a CVAT <box>), not an outline."""
    v = record["vertices"]
    return len(v) == 4 and len({x for x, _ in v}) <= 2 and len({y for _, y in v}) <= 2


def is_box_only(entry: dict) -> bool:
    """True when every object is a 4-corner axis-aligned rectangle (VOC boxes, CVAT <box>)."""
    return all(is_box(m) for m in entry["masks"])


def val_names(root: str | Path) -> set[str] | None:
    """Image stems of a VOC root's ``ImageSets/Main/val.txt`` (BCCD's own split), if present."""
    f = Path(root) / "ImageSets" / "Main" / "val.txt"
    return {line.strip() for line in f.read_text().split() if line.strip()} if f.is_file() else None


def prepare(data: list[str], run: Path, seed: int, val_fraction: float, leave_out: tuple[str, ...] = (),
            unusable: list[dict] | None = None) -> tuple[list, list]:
    """Train/val lists of (image path, entry with masks), pseudo-masking box-only entries once
    (cached as COCO in ``run/pseudo_masks.coco.json``) and writing ``run/split.json``.

    Validation: a VOC root's ``ImageSets/Main/val.txt``, a YOLO dataset's ``val`` split (its
    ``test`` split is never used: it stays for the benchmarks), else a seeded ``val_fraction``.
    Photos whose ``source`` (a YOLO dataset's sources.csv) is in ``leave_out`` are left out
    (leave-one-source-out runs); a VOC photo that a YOLO dataset also holds (``original_name``,
    e.g. TXL-PBC's BCCD fields, with every red cell boxed) is taken once, from the YOLO dataset."""
    cache, split_path = run / "pseudo_masks.coco.json", run / "split.json"
    if cache.exists() and split_path.exists():
        split = json.loads(split_path.read_text())
        if unusable is not None:  # a run killed before its first checkpoint still says what it left out
            unusable += split.get("left_out", [])
        entries = read_coco(cache)
        paths = {Path(p).name: Path(p) for p in split["train"] + split["val"]}
        items = [(paths[e["filename"]], e) for e in entries]
        val = set(split["val"])
        return [i for i in items if str(i[0]) not in val], [i for i in items if str(i[0]) in val]
    found_by_root = []
    for root in data:
        failed: list[dict] = []
        found = find_annotated_photos(root, failed)
        for f in failed:  # a photo the annotations name but that is not there was left out without a word
            log.warning("%s: %s; left out of training", f["image"], f["reason"])
        if unusable is not None:
            unusable += failed
        if not found:
            raise HemasegInputError(root, "no annotated photos found" + (f" ({len(failed)} annotated, none usable: "
                                                                         "each named above)" if failed else ""))
        found_by_root.append((root, found))
    sources_seen = {e.get("source") for _, found in found_by_root for _, e in found if e.get("source")}
    unknown = sorted(set(leave_out) - sources_seen)
    if unknown:
        raise HemasegInputError(", ".join(map(str, data)), f"no photo of source {unknown[0]!r} to leave out "
                                                           f"(sources: {', '.join(sorted(sources_seen)) or 'none'})")
    for root, found in found_by_root:  # its photos are trained on whatever lab they come from: said, not assumed
        if leave_out and not any(e.get("source") for _, e in found):
            log.warning("%s names no source per photo (a YOLO dataset's sources.csv): --leave-out %s leaves none of "
                        "its photos out; leave the folder out if they are of that source", root, " ".join(leave_out))
    also_in_yolo = {Path(e["original_name"]).stem for _, found in found_by_root for _, e in found
                    if e.get("original_name")}
    items, val_set, test, left_out, duplicates, val_sources = [], set(), [], [], [], set()
    for root, found in found_by_root:
        names = val_names(root)
        if names is not None:
            val_sources.add("ImageSets/Main/val.txt")
        for path, entry in track(found, "pseudo-masks", leave=False):
            if entry.get("source") in leave_out:
                left_out.append(str(path))
                continue
            if entry.get("split") == "test":
                test.append(str(path))
                continue
            if not entry.get("split") and path.stem in also_in_yolo:
                duplicates.append(str(path))
                continue
            try:  # each photo read whole once: one truncated past its header stopped the run later (a review)
                image = read_image(path)
            except HemasegInputError as exc:
                log.warning("%s: %s; left out of training", path, exc.reason)
                if unusable is not None:
                    unusable.append({"image": str(path), "reason": exc.reason})
                continue
            boxes = [m for m in entry["masks"] if is_box(m)]
            if boxes:  # each box is cut to the cell inside it (BCCD's photos, or a CVAT <box> beside polygons: it
                # was trained as a filled rectangle with its background corners); outlines are kept as drawn
                cut = pseudo_masks(image, {**entry, "masks": boxes})
                entry = {**cut, "masks": [m for m in entry["masks"] if not is_box(m)] + cut["masks"]}
            items.append((path, {**entry, "filename": path.name}))
            if (names is not None and path.stem in names) or entry.get("split") == "val":
                val_set.add(str(path))
                val_sources.add("a YOLO dataset's val split" if entry.get("split") else "ImageSets/Main/val.txt")
    if not val_set:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(items))
        val_set = {str(items[i][0]) for i in order[:max(1, int(round(val_fraction * len(items))))]}
    by_name: dict[str, Path] = {}
    for path, _ in items:  # the run keeps its photos by file name (the cache, a resume): two of one name would swap
        if path.name in by_name:
            raise HemasegInputError(path, f"has the same file name as {by_name[path.name]}; a training run keeps its "
                                          "photos by file name: rename one")
        by_name[path.name] = path
    # one photo went to validation and left none to train on: the sampler said "no weight to the strata []"
    if not val_set or all(str(p) in val_set for p, _ in items):
        raise HemasegInputError(", ".join(data), f"{len(items)} annotated photo(s) usable here: at least two are "
                                "needed, one kept for validation (or a dataset's own train and val splits)"
                                if len(items) < 2 else f"all {len(items)} annotated photos are in the data's own "
                                "validation split (val/, val.txt): none is left to train on")
    write_coco(cache, [e for _, e in items])
    write_json(split_path, {"seed": seed, "val_source": " + ".join(sorted(val_sources)) or "seeded",
                            "leave_out": list(leave_out),
                            "train": [str(p) for p, _ in items if str(p) not in val_set],
                            "val": [str(p) for p, _ in items if str(p) in val_set],
                            "not_used": {"test_split": test, "left_out_sources": left_out,
                                         "also_in_a_yolo_dataset": duplicates},
                            **({"left_out": unusable} if unusable else {})})
    return [i for i in items if str(i[0]) not in val_set], [i for i in items if str(i[0]) in val_set]


def box_annotations(data: list[str]) -> dict[str, dict]:
    """Photo file name -> its entry as annotated, for the box-only ones (before pseudo-masking)."""
    out = {}
    for root in data:
        # (a photo whose annotations cannot be read was left out of the run and said by `prepare`; it stopped here)
        out.update({p.name: e for p, e in find_annotated_photos(root, []) if is_box_only(e)})
    return out


def val_items(boxes: dict[str, dict], val: list) -> list:
    """(image at its training scale, truth boxes) of the validation photos; boxes as annotated
    (``boxes`` from :func:`box_annotations`: BCCD's VOC boxes, not the pseudo-masks' tighter
    ones), which the VOC metric scores against. The scale is the photo's :func:`photo_scale`
    (from its annotated red cells: the model's ruler measures them at inference)."""
    out = []
    for p, e in val:
        source = boxes.get(Path(p).name, e)
        scale = photo_scale(source)
        out.append((load_scaled(p, e, scale)[0], truth_boxes(source, scale)))
    return out


def box_scales(originals: dict[str, dict], train: list) -> dict[str, float]:
    """How much larger the annotators drew each category's boxes than the cell inside them: the
    median ratio of a box's side to its pseudo-mask's, per category, over the training photos
    (BCCD boxes platelets loosely, ~1.5x). Output boxes are drawn the same way, so they compare
    with the training annotations' boxes (``originals`` from :func:`box_annotations`); 1.0 where
    the annotations are outlines, not boxes."""
    ratios: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for path, entry in train:
        source = originals.get(Path(path).name)
        if source is None:
            continue
        boxes = [(category_of(m["class_name"]), m["bounding_box"]) for m in source["masks"]]
        for m in entry["masks"]:
            cat, b = category_of(m["class_name"]), m["bounding_box"]
            same = [s for c, s in boxes if c == cat]
            if not same:
                continue
            key = (b["x1"], b["y1"], b["x2"], b["y2"])
            ious = [float(np.max(box_iou(key, (s["x1"], s["y1"], s["x2"], s["y2"])))) for s in same]
            s = same[int(np.argmax(ious))]
            if max(ious) > 0.2 and b["x2"] > b["x1"] and b["y2"] > b["y1"]:
                ratios[cat].append(np.sqrt((s["x2"] - s["x1"]) * (s["y2"] - s["y1"])
                                           / ((b["x2"] - b["x1"]) * (b["y2"] - b["y1"]))))
    return {c: round(float(np.median(v)), 3) if v else 1.0 for c, v in ratios.items()}


def load_scaled(path: Path, entry: dict, scale: float, mark_unknown: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image, encoded instance map) at ``scale``; the map is encoded at full size, then resized nearest."""
    image = read_image(path)
    enc = encode_instances({**entry, "height": image.shape[0], "width": image.shape[1]},
                           image if mark_unknown else None)
    if scale != 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        enc = cv2.resize(enc, size, interpolation=cv2.INTER_NEAREST)
    return image, enc


def training_photos(train: list, boxes: dict[str, dict], mark_unknown: bool) -> tuple[list, float]:
    """The training photos each at its :func:`photo_scale` (from its annotated red cells; ``boxes``
    from :func:`box_annotations`), as (image, encoded map) pairs, and the median of those scales: the
    model card's ``input_scale``, the first pass's scale at inference (INPUT_SCALE with no photo)."""
    scales = [photo_scale(boxes.get(Path(p).name, e)) for p, e in train]
    items = [load_scaled(p, e, f, mark_unknown=mark_unknown) for (p, e), f in zip(train, scales)]
    return items, round(float(np.median(scales)), 4) if scales else INPUT_SCALE


def truth_boxes(entry: dict, scale: float) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(category, box) of an entry's objects at ``scale`` (the boxes the VOC metric scores against)."""
    out = []
    for m in entry["masks"]:
        cat = category_of(m["class_name"])
        if cat in CATEGORIES:
            b = m["bounding_box"]
            out.append((cat, (b["x1"] * scale, b["y1"] * scale, b["x2"] * scale, b["y2"] * scale)))
    return out


def balanced_weights(encoded: np.ndarray) -> np.ndarray:
    """Class-balancing pixel weights of an encoded map's targets (platelets are ~0.2 % of the
    pixels and are otherwise never predicted); ignored pixels weigh 0."""
    t = cell_targets(encoded)
    valid = t != IGNORE
    return class_balance_weights(np.where(valid, t, 0), CENTRE + 1) * valid


def cells_data(cfg, run: Path, state: dict) -> tuple:
    """Training dataset, validation items (image, truth boxes) and model-card fields for ``cells``."""
    unusable: list[dict] = []
    train, val = prepare(cfg.data, run, cfg.seed, cfg.val_fraction, tuple(cfg.leave_out), unusable)
    if unusable:  # `hemaseg train` ends with exit 1, as a batch with a bad file (a resume: prepared before, kept)
        state["left_out"] = unusable
    boxes = box_annotations(cfg.data)
    scales = box_scales(boxes, train)
    train_items, input_scale = training_photos(train, boxes, cfg.ignore_unboxed)
    val_set = val_items(boxes, val)
    rbc_maps = [np.where((enc & 3) == 1, enc >> 2, 0) * (enc != 0xFFFF) for _, enc in train_items]
    diams = object_diameters(rbc_maps)
    diameter = float(np.median(diams)) if len(diams) else 34.0
    transform = train_transform(cfg.crop, cfg.augment, (cfg.scale_min, cfg.scale_max))
    strata = ["platelets" if any(category_of(m["class_name"]) == "platelet" for m in e["masks"]) else "no platelet"
              for _, e in train]
    share = cfg.stratum_weights or PLATELET_SHARE
    dataset = SegDataset(train_items, transform, cfg.norm_low, cfg.norm_high, cfg.samples_per_epoch,
                         target=cell_targets, weights=balanced_weights if cfg.class_balance else None,
                         probs=sampling_probs(strata, share), seed=cfg.seed)
    card = {
        "cell_diameter": diameter,  # red cells, px at the model's input
        "diameter_range": [float(v) for v in np.percentile(diams, [5, 95])] if len(diams) else [],
        # The first pass's scale at inference (the red cells found there are measured and the photo
        # rescaled to cell_diameter): the median of the photos' training scales.
        "input_scale": input_scale,
        "box_scale": scales,  # output boxes drawn as the training annotations draw them (see box_scales)
        "training": {"data": cfg.data, "n_train": len(train_items), "n_val": len(val_set), "seed": cfg.seed,
                     "leave_out": list(cfg.leave_out), "target_rbc_box": TARGET_RBC_BOX,
                     "strata": {k: strata.count(k) for k in sorted(set(strata))}, "stratum_weights": share,
                     "augment": cfg.augment, "scale_range": [cfg.scale_min, cfg.scale_max],
                     "pseudo_masks": str(run / "pseudo_masks.coco.json"), "split": str((run / "split.json").resolve()),
                     "ignore_unboxed": cfg.ignore_unboxed},
    }
    return dataset, val_set, card


def evaluate_boxes(model, items: list, low: float, high: float, stride: int, rbc_d: float,
                   box_scale: dict | None = None) -> dict[str, float]:
    """VOC AP@0.5 per category and their mean of the U-Net on (image, truth boxes) items at the
    model's scale (see :func:`score_instances`)."""
    def find(img: np.ndarray):
        return cell_instances(predict_tiled(model, normalize(img, prange=percentile_range(img, low, high)),
                                            stride=stride), rbc_d)

    return score_instances(items, find, box_scale)


def score_instances(items: list, find, box_scale: dict | None = None) -> dict[str, float]:
    """VOC AP@0.5 per category and their mean on (image, truth boxes) items, where ``find(image)``
    gives (instances, class per instance, scores) and each cell's box is its outline's box grown
    by its category's ``box_scale`` (as :func:`hemaseg.tasks.cells.infer.segment_cells` draws it)."""
    from scipy import ndimage as ndi

    preds: dict[str, list] = {c: [] for c in CATEGORIES}
    truths: dict[str, dict] = {c: {} for c in CATEGORIES}
    for i, (img, boxes) in enumerate(items):
        inst, owner, scores = find(img)
        for c in CATEGORIES:
            truths[c][i] = [b for cat, b in boxes if cat == c]
        for j, sl in enumerate(ndi.find_objects(inst), start=1):
            if sl is not None:
                c = CATEGORIES[owner[j] - 1]
                box = grow_box((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), (box_scale or {}).get(c, 1.0),
                               img.shape[1], img.shape[0])
                preds[c].append((i, float(scores[j - 1]), box))
    out = {f"ap50_{c}": detection_ap(preds[c], truths[c]) for c in CATEGORIES}
    vals = [v for v in out.values() if np.isfinite(v)]
    out["map50"] = float(np.mean(vals)) if vals else 0.0
    return out
