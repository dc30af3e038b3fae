"""`hemaseg analyze` counts on TXL-PBC's fields, per source: the share of fields whose WBC count and whose
platelet count equal the boxes' (the typer's calls included: a found WBC it calls a platelet is counted as
one when small enough, ``hemaseg.pipelines.analyze.PLATELET_MAX_RBC``).

    python benchmarks/analyze_txl_counts.py [--split val] [--platelet-max 1.0 0.9] [--data ../shared/data]

Each ``--platelet-max`` value is run in turn (the bound in red-cell diameters); one table row per value and
source. Writes benchmarks/results/analyze_txl_counts.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from record import write_result

import hemaseg
import hemaseg.pipelines.analyze as A
from hemaseg.core.vocabulary import category_of
from hemaseg.io.annotations import find_yolo, read_yolo_labels, yolo_names
from hemaseg.tasks.cells.train import read_sources

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--split", default="val", help="TXL-PBC split folder: val, test or train")
    ap.add_argument("--platelet-max", type=float, nargs="+", default=[A.PLATELET_MAX_RBC])
    ap.add_argument("--name", default="analyze_txl_counts")
    args = ap.parse_args()
    txl = args.data / "txl-pbc"
    sources = {name: row["source_dataset"] for name, row in read_sources(txl).items()}
    fields = []
    for image_path, label in find_yolo(txl / "images" / args.split):
        if label is None:
            continue
        image = hemaseg.read_image(image_path)
        boxes = [category_of(m["class_name"]) for m in read_yolo_labels(label, yolo_names(label.parent), *image.shape[:2])]
        fields.append((sources.get(image_path.name, "?"), image, boxes.count("wbc"), boxes.count("platelet")))
    lines = [f"`hemaseg.analyze` on TXL-PBC `{args.split}` fields: count exact per source", "",
             "| platelet bound (red-cell diameters) | source | fields | WBC count exact | platelet count exact |",
             "| --- | --- | --- | --- | --- |"]
    bound = A.PLATELET_MAX_RBC
    try:
        for value in args.platelet_max:
            A.PLATELET_MAX_RBC = value
            per: dict[str, list[int]] = {}
            for source, image, n_wbc, n_platelet in fields:
                counts = A.analyze(image).counts
                row = per.setdefault(source, [0, 0, 0])
                row[0] += counts["wbc"] == n_wbc
                row[1] += counts["platelet"] == n_platelet
                row[2] += 1
            for source, (wbc, platelet, n) in sorted(per.items()):
                lines.append(f"| {value:g} | {source} | {n} | {wbc} of {n} | {platelet} of {n} |")
            print("\n".join(lines[-len(per):]), flush=True)
    finally:
        A.PLATELET_MAX_RBC = bound
    write_result(args.name, lines)


if __name__ == "__main__":
    main()
