"""Unlabelled single-WBC crops of each TXL-PBC source (PBC, Raabin, BCCD, BCDD), cut around the WBC
boxes of its *train* fields the way ``hemaseg analyze`` cuts a found WBC for typing: the looks of
four labs for ``ClassifyConfig.looks`` (the WBC typer redrawn in other labs' colours).

    python benchmarks/txl_wbc_crops.py [--data ../shared/data] [--out runs/txl-wbc-crops] [--per-source 150]

Writes OUT/<source>/<field>_<k>.png (no type: TXL-PBC boxes WBCs, it does not type them). Fields are
taken in a seeded order, at most ``--per-source`` crops per source.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "txl-wbc-crops")
    ap.add_argument("--per-source", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from hemaseg.io.annotations import find_yolo, read_yolo_labels, yolo_names
    from hemaseg.io.images import read_image
    from hemaseg.io.writers import write_png
    from hemaseg.tasks.wbc_type.crops import CROP_MARGIN, square_crop

    root = args.data / "txl-pbc"
    with open(root / "sources.csv", newline="") as fh:
        source = {r["image"]: r["source_dataset"] for r in csv.DictReader(fh)}
    names = yolo_names(root)
    fields = find_yolo(root / "images" / "train")
    order = np.random.default_rng(args.seed).permutation(len(fields))
    made: dict[str, int] = {}
    for i in order:
        img_path, label = fields[i]
        src = source.get(img_path.name, "unknown")
        if label is None or made.get(src, 0) >= args.per_source:
            continue
        image = None
        for k, rec in enumerate(read_yolo_labels(label, names, 1, 1)):
            if rec["category"] != "wbc" or made.get(src, 0) >= args.per_source:
                continue
            if image is None:
                image = read_image(img_path)
                recs = read_yolo_labels(label, names, *image.shape[:2])
            crop = square_crop(image, recs[k]["bounding_box"], CROP_MARGIN)
            if min(crop.shape[:2]) < 16:
                continue
            out = args.out / src / f"{img_path.stem}_{k}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_png(out, crop)
            made[src] = made.get(src, 0) + 1
    print({k: made[k] for k in sorted(made)})


if __name__ == "__main__":
    main()
