"""Nuclei: accuracy of a model on the seeded DSB validation split (per modality) and its speed
on 512x512 and 2048x2048 images on this CPU, post-processing included. Prints Markdown tables
(also written to benchmarks/results/nuclei.md) and a worst-case grid (docs/nuclei_worst_cases.png).

    python benchmarks/nuclei.py [--model nuclei] [--threads 2] [--data ../shared/data]

The split is benchmarks/splits/dsb2018-modality.json (seed 0, 10 % of each modality, at least two
brightfield images), the one the bundled model was trained with: no training image is scored. Speed images are validation images mirrored out
to the size wanted (nuclei at their native size). Run on an idle machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from record import write_result

import hemaseg
from hemaseg.engine.evaluate import select_split
from hemaseg.engine.predict import get_model
from hemaseg.io.datasets import find_dsb, load_instances
from hemaseg.tasks.nuclei import NUCLEI, modality

HERE = Path(__file__).resolve().parent
OUT: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def mirrored(image: np.ndarray, size: int) -> np.ndarray:
    """Tile an image with mirrored copies out to (size, size, 3)."""
    ny, nx = -(-size // image.shape[0]), -(-size // image.shape[1])
    row = np.concatenate([image if j % 2 == 0 else image[:, ::-1] for j in range(nx)], 1)
    grid = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(ny)], 0)
    return np.ascontiguousarray(grid[:size, :size])


def accuracy(model: str, data: Path, split: Path) -> None:
    res = NUCLEI.evaluate([data / "dsb2018"], model, split, grid=HERE.parent / "docs" / "nuclei_worst_cases.png")
    emit(f"### DSB validation split ({res['n_images']} images), model `{model}`, diameter estimated per image\n")
    emit("| subset | images | DSB score (mean precision, IoU 0.50:0.95) | AP@0.5 | AP@0.75 | s / image |")
    emit("| --- | --- | --- | --- | --- | --- |")
    worst_first = sorted(res["per_modality"].items(), key=lambda kv: kv[1]["dsb"])  # the worst modality first
    for name, m in [*worst_first, ("all", {**res["mean"], "n_images": res["n_images"]})]:
        emit(f"| {name} | {m['n_images']} | {m['dsb']:.3f} | {m['ap50']:.3f} | {m['ap75']:.3f} | {m['seconds']:.2f} |")
    emit()


def speed(model: str, data: Path, split: Path, repeats: int) -> None:
    loaded = get_model(model)
    samples = select_split(find_dsb(data / "dsb2018"), split)
    by_mod: dict[str, np.ndarray] = {}
    for s in samples:
        image = load_instances(s)[0]
        m = modality(image)
        if m not in by_mod or image.size > by_mod[m].size:
            by_mod[m] = image  # the largest validation image of each modality
    hemaseg.segment(np.ascontiguousarray(next(iter(by_mod.values()))[:64, :64]), loaded)  # warm-up
    emit(f"### Speed, model `{model}`, {torch_threads()} threads, post-processing included (median of {repeats})\n")
    emit("| image | modality | nuclei found | s (diameter estimated) | s (diameter given) |")
    emit("| --- | --- | --- | --- | --- |")
    for size in (512, 2048):
        for m, src in sorted(by_mod.items()):
            image = mirrored(src, size)
            est, given, count = [], [], 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                seg = hemaseg.segment(image, loaded)
                est.append(time.perf_counter() - t0)
                count = seg.count
                t0 = time.perf_counter()
                hemaseg.segment(image, loaded, cell_diameter=seg.cell_diameter)
                given.append(time.perf_counter() - t0)
            emit(f"| {size}x{size} | {m} | {count} | {np.median(est):.2f} | {np.median(given):.2f} |")
    emit()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--split", type=Path, default=HERE / "splits" / "dsb2018-modality.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=["accuracy", "speed"])
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if "accuracy" in args.only:
        accuracy(args.model, args.data, args.split)
    if "speed" in args.only:
        speed(args.model, args.data, args.split, args.repeats)
    write_result("nuclei", OUT)


if __name__ == "__main__":
    main()
