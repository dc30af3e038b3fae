"""smear10 model choice on in-lab real photos: TXL-PBC *val* fields (never trained on: training draws
its real fields from ``images/train``; no benchmark scores them), every one parasite-free. Per model:
infected red-cell objects called (8-connected), fields with any, and the share of boxes whose centre
lies in the right group (the rule of benchmarks/smear10.py). Prints one line per model and source.

    python benchmarks/smear10_choice.py smear10 runs/smear10-realfields2 [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
from smear10 import _group, box_group, with_typer

from hemaseg.core.vocabulary import category_of
from hemaseg.io.annotations import find_yolo, read_yolo_labels, yolo_names
from hemaseg.io.images import read_image
from hemaseg.tasks.smear10.classes import CLASSES
from hemaseg.tasks.smear10.infer import segment_smear

HERE = Path(__file__).resolve().parent
INFECTED = CLASSES.index("infected rbc")
WANT = {"rbc": 1, "wbc": 2, "platelet": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = ap.parse_args()
    txl = args.data / "txl-pbc"
    with open(txl / "sources.csv", newline="") as fh:
        sources = {r["image"]: r["source_dataset"] for r in csv.DictReader(fh)}
    for model in args.models:
        loaded = with_typer(model, None)
        per: dict[str, dict] = {}
        for path, label in find_yolo(txl / "images" / "val"):
            if label is None:
                continue
            image = read_image(path)
            seg = segment_smear(image, loaded)
            n, _ = cv2.connectedComponents((seg.classes == INFECTED).astype(np.uint8), connectivity=8)
            groups = _group(seg.classes)
            st = per.setdefault(sources.get(path.name, "?"), {"fields": 0, "infected": 0, "with_any": 0,
                                                                "right": {}, "boxes": {}})
            st["fields"] += 1
            st["infected"] += n - 1
            st["with_any"] += n > 1
            for m in read_yolo_labels(label, yolo_names(label.parent), *image.shape[:2]):
                c, b = category_of(m["class_name"]), m["bounding_box"]
                st["boxes"][c] = st["boxes"].get(c, 0) + 1
                st["right"][c] = st["right"].get(c, 0) + (box_group(groups, b["x1"], b["y1"], b["x2"], b["y2"]) == WANT[c])
        for src, st in [("all", {k: sum(v[k] for v in per.values()) for k in ("fields", "infected", "with_any")}
                         | {"right": {c: sum(v["right"].get(c, 0) for v in per.values()) for c in WANT},
                            "boxes": {c: sum(v["boxes"].get(c, 0) for v in per.values()) for c in WANT}}),
                        *sorted(per.items())]:
            groups_txt = ", ".join(f"{c} {st['right'].get(c, 0)}/{n} = {st['right'].get(c, 0) / n:.3f}"
                                   for c, n in st["boxes"].items() if n)
            print(f"{model} | {src} | fields {st['fields']} | infected called {st['infected']} "
                  f"({st['with_any']} fields) | {groups_txt}", flush=True)


if __name__ == "__main__":
    main()
