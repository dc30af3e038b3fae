"""Nuclei at other magnifications: the seeded DSB validation images (per modality) enlarged 1x-6x, as a
microscope with a stronger objective or camera would show them, the nucleus size estimated per image
(the default a user gets). AP@0.5 and the DSB score against the enlarged masks, worst zoom first per
modality: accuracy should not depend on the zoom.

    python benchmarks/nuclei_zoom.py [--model nuclei] [--zooms 1 2 4 6] [--side 192] [--data ../shared/data]

Each image's central ``side`` x ``side`` square (the whole image when smaller) is enlarged by each zoom
(cubic for the image, nearest for the labels), so a 6x image is at most 1152 px a side. Writes
benchmarks/results/nuclei_zoom.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from record import write_result

import hemaseg
from hemaseg.engine.evaluate import select_split
from hemaseg.io.datasets import find_dsb, load_instances
from hemaseg.metrics import dsb_scores
from hemaseg.tasks.nuclei import modality

HERE = Path(__file__).resolve().parent


def centre(a: np.ndarray, side: int) -> np.ndarray:
    """The central ``side`` x ``side`` square of ``a`` (each axis whole when shorter)."""
    h, w = a.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(a[y0:y0 + side, x0:x0 + side])


def zoomed(image: np.ndarray, labels: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``labels`` enlarged ``z`` times (cubic; nearest)."""
    if z == 1:
        return image, labels
    size = (round(image.shape[1] * z), round(image.shape[0] * z))
    return (cv2.resize(image, size, interpolation=cv2.INTER_CUBIC),
            cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--split", type=Path, default=HERE / "splits" / "dsb2018-modality.json")
    ap.add_argument("--zooms", type=float, nargs="+", default=[1, 2, 4, 6])
    ap.add_argument("--side", type=int, default=192)
    ap.add_argument("--name", default="nuclei_zoom")
    args = ap.parse_args()
    pairs = select_split(find_dsb(args.data / "dsb2018"), args.split)
    items = []
    for pair in pairs:
        image, labels = load_instances(pair)
        items.append((modality(image), centre(image, args.side), centre(labels, args.side)))
    rows: dict[tuple[str, float], list[dict]] = {}
    for kind, image, labels in items:
        for z in args.zooms:
            im, lab = zoomed(image, labels, z)
            seg = hemaseg.segment(im, model=args.model)
            rows.setdefault((kind, z), []).append({**dsb_scores(seg.instances, lab), "d": seg.cell_diameter / z})
    lines = [f"Nuclei of the DSB validation split ({args.split.name}), central {args.side} px enlarged; "
             f"`{args.model}`, size estimated", "",
             "| modality | images | zoom | AP@0.5 | DSB score | nucleus diameter estimated, px at 1x (median) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind in sorted({k for k, _ in rows}):
        for z in sorted(args.zooms, key=lambda z: np.mean([r["ap50"] for r in rows[(kind, z)]])):
            r = rows[(kind, z)]
            lines.append(f"| {kind} | {len(r)} | {z:g}x | {np.mean([x['ap50'] for x in r]):.3f} | "
                         f"{np.mean([x['dsb'] for x in r]):.3f} | {np.median([x['d'] for x in r]):.1f} |")
    print("\n".join(lines))
    write_result(args.name, lines)


if __name__ == "__main__":
    main()
