"""Fields with no WBC, as training negatives for the ``wbc`` model: windows of TXL-PBC's boxed fields
that hold red cells (and platelets) but no WBC, each with an all-background mask, and a split JSON
joining them to wbc-seg's own split.

    python benchmarks/wbc_negatives.py [--out runs/wbc-negatives] [--per-field 2]
    hemaseg train wbc --data ../shared/data/wbc-seg --data runs/wbc-negatives \\
        --split runs/wbc-negatives/split.json --out runs/wbc-neg

Why: the bundled ``wbc`` model learnt only crops that hold a WBC. Shown red cells alone (a field's
corner, a smear's WBC-free strip) it calls them nucleated cells, more so once its scale search has
blown them up to a WBC's size (docs/results.md, "Fields with no WBC").

Each field is rescaled as the weakly labelled fields are (:func:`hemaseg.tasks.wbc.weak_wbc_sample`:
its median WBC box side to ~75 px, wbc-seg's WBC diameter; without a WBC box, 1.8 red-cell sides),
so the training's scale augmentation (0.5-2x) shows its red cells from half to twice that size,
the size at which the scale search's error shows them included. Windows are squares of 1.5 (else
1.2, 1.0) WBC sides on a grid of half a window, kept when they lie clear of every WBC box grown by
:data:`MARGIN` of its side; up to ``--per-field`` of them per field, drawn with a seed per field.
A WBC the field's edge cuts may be unboxed, so a window keeps a tenth of a WBC side clear of the field's
edge (:data:`EDGE`), and none touches a WBC the bundled ``cells`` model finds in the field
(:func:`hemaseg.tasks.wbc.found_wbcs`, every call however unsure).

TXL-PBC ``train`` fields give the training negatives, ``val`` fields the validation ones (scored as
``false_cell`` by the training's validation, never in its Dice); the ``test`` fields stay for
``benchmarks/wbc_labs.py``. The split JSON lists wbc-seg's train/val images
(``benchmarks/splits/wbc-seg.json``) and the windows: the bundled split, plus negatives.
"""
from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
MARGIN = 0.2  # share of a WBC box's side kept clear around it (a loose cytoplasm, a tight box)
EDGE = 0.1  # WBC sides from the field's edge a window must keep (an unboxed WBC cut by the edge)
WINDOWS = (1.5, 1.2, 1.0)  # window sides tried, in WBC sides, largest first


def free_windows(shape: tuple[int, int], boxes: list[dict], side: float) -> list[tuple[int, int, int]]:
    """(y0, x0, S) squares of the largest of :data:`WINDOWS` that fits, clear of every grown WBC box
    and of the field's edge band, on a grid of S / 2; [] when none fits."""
    h, w = shape
    blocked = np.zeros((h, w), bool)
    for b in boxes:
        if b["category"] != "wbc":
            continue
        bb = b["bounding_box"]
        mx, my = MARGIN * (bb["x2"] - bb["x1"]), MARGIN * (bb["y2"] - bb["y1"])
        blocked[max(0, int(bb["y1"] - my)):max(0, int(np.ceil(bb["y2"] + my))),
                max(0, int(bb["x1"] - mx)):max(0, int(np.ceil(bb["x2"] + mx)))] = True
    band = int(EDGE * side)
    integral = cv2.integral(blocked.view(np.uint8))
    for k in WINDOWS:
        s = int(round(k * side))
        if s > min(h, w) - 2 * band:
            continue
        step = max(1, s // 2)
        found = []
        for y0 in range(band, h - band - s + 1, step):
            for x0 in range(band, w - band - s + 1, step):
                if integral[y0 + s, x0 + s] - integral[y0, x0 + s] - integral[y0 + s, x0] + integral[y0, x0] == 0:
                    found.append((y0, x0, s))
        if found:
            return found
    return []


def pick_windows(image: np.ndarray, boxes: list[dict], most: int, name: str) -> list[tuple[int, int, int]]:
    """Up to ``most`` WBC-free (y0, x0, S) windows of a boxed field (:func:`free_windows`), none touching
    a WBC the bundled ``cells`` model finds there, drawn with a seed of the field's file ``name``;
    [] for a field with no red-cell box."""
    from hemaseg.tasks.wbc import box_sides, field_wbc_side, found_wbcs

    if not box_sides(boxes, "rbc"):
        return []  # no red cell: nothing a negative is for
    windows = free_windows(image.shape[:2], boxes, field_wbc_side(boxes))
    if windows:
        # a WBC the boxes miss (cut by the edge, or boxed as something else): the bundled cells
        # model's WBCs, however unsure, keep every window they touch out
        found = found_wbcs(image)[1]
        if found is not None:
            windows = [(y0, x0, s) for y0, x0, s in windows if not found[y0:y0 + s, x0:x0 + s].any()]
    if not windows:
        return []
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    pick = rng.choice(len(windows), size=min(most, len(windows)), replace=False)
    return [windows[i] for i in sorted(pick.tolist())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("runs/wbc-negatives"))
    ap.add_argument("--per-field", type=int, default=2, help="at most this many windows per field")
    ap.add_argument("--split", type=Path, default=HERE / "splits" / "wbc-seg.json",
                    help="wbc-seg's split, joined with the windows in OUT/split.json")
    args = ap.parse_args()
    import hemaseg
    from hemaseg.core.vocabulary import category_of
    from hemaseg.io.annotations import find_yolo, read_yolo_labels, yolo_names
    from hemaseg.tasks.wbc import weak_factor

    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    base = json.loads(args.split.read_text())
    split = {"seed": 0, "note": f"{args.split.name}'s images, plus the WBC-free windows of TXL-PBC's train "
                                f"(train) and val (val) fields (benchmarks/wbc_negatives.py)",
             "train": list(base["train"]), "val": list(base["val"])}
    counts = {}
    for part, folder in (("train", "train"), ("val", "val")):
        n_fields = 0
        for image_path, label in find_yolo(args.data / "txl-pbc" / "images" / folder):
            if label is None:
                continue
            image = hemaseg.read_image(image_path)
            h, w = image.shape[:2]
            boxes = [{**m, "category": category_of(m["class_name"])}
                     for m in read_yolo_labels(label, yolo_names(label.parent), h, w)]
            picked = pick_windows(image, boxes, args.per_field, image_path.name)
            if not picked:
                continue
            f = weak_factor(boxes)
            n_fields += 1
            for k, (y0, x0, s) in enumerate(picked):
                crop = image[y0:y0 + s, x0:x0 + s]
                n = max(1, round(s * f))
                crop = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
                name = f"neg_{image_path.stem}_{k}.png"
                cv2.imwrite(str(args.out / "images" / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(args.out / "masks" / name), np.zeros((n, n), np.uint8))
                split[part].append(name)
                counts[part] = counts.get(part, 0) + 1
        print(f"{part}: {counts.get(part, 0)} windows from {n_fields} fields", flush=True)
    (args.out / "split.json").write_text(json.dumps(split, indent=1))
    print(f"wrote {args.out}/images, masks and split.json")


if __name__ == "__main__":
    main()
