"""Unlabelled single-WBC crops of each TXL-PBC source (PBC, Raabin, BCCD, BCDD), cut around the WBC
boxes of its *train* fields the way ``hemaseg analyze`` cuts a found WBC for typing: the looks of
four labs for ``ClassifyConfig.looks`` (the WBC typer redrawn in other labs' colours).

    python benchmarks/txl_wbc_crops.py [--data ../shared/data] [--out runs/txl-wbc-crops] [--per-source 150]

Writes OUT/<source>/<field>_<k>.png (no type: TXL-PBC boxes WBCs, it does not type them). Fields are
taken in a seeded order, at most ``--per-source`` crops per source.
"""
from __future__ import annotations

import argparse
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

    from hemaseg.io.images import read_image
    from hemaseg.io.writers import write_png
    from hemaseg.tasks.cells.train import find_annotated_photos
    from hemaseg.tasks.wbc_type.crops import CROP_MARGIN, square_crop

    fields = [(p, e) for p, e in find_annotated_photos(args.data / "txl-pbc") if e["split"] == "train"]
    order = np.random.default_rng(args.seed).permutation(len(fields))
    made: dict[str, int] = {}
    for i in order:
        path, entry = fields[i]
        src = entry["source"] or "unknown"
        wbcs = [(k, m) for k, m in enumerate(entry["masks"]) if m["category"] == "wbc"]
        if not wbcs or made.get(src, 0) >= args.per_source:
            continue
        image = read_image(path)
        for k, m in wbcs:
            if made.get(src, 0) >= args.per_source:
                break
            crop = square_crop(image, m["bounding_box"], CROP_MARGIN)
            if min(crop.shape[:2]) < 16:
                continue
            out = args.out / src / f"{path.stem}_{k}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_png(out, crop)
            made[src] = made.get(src, 0) + 1
    print({k: made[k] for k in sorted(made)})


if __name__ == "__main__":
    main()
