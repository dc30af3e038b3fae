"""smear10: the 10-class map on synthetic smears made from held-out crops, on stand-ins for other
labs' composites, and on real photos (BCCD, wbc-seg) at the level of cell groups. Prints Markdown
tables (also written to benchmarks/results/smear10.md) and writes docs/smear10_confusion.png and
docs/smear10_real.jpg.

    python benchmarks/smear10.py [--model smear10] [--n 300] [--data ../shared/data]

Synthetic test sets are composed with `hemaseg.tasks.smear10.synth` from the *test* crops (red cells and
platelets split by source photo; WBCs from the WBC-type classifier's held-out crops, so neither
model trained on them) with a fixed seed; the stand-ins change one thing each: procedural cells
only, stronger re-staining, a magnification outside the trained range, crowding, dark
backgrounds (grey to black, as some composites are pasted on).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from record import write_result

import hemaseg
from hemaseg.engine.evaluate import select_split
from hemaseg.engine.predict import get_model
from hemaseg.io.datasets import find_pairs, load_pair, read_voc
from hemaseg.io.images import read_image
from hemaseg.tasks.smear10 import SMEAR10
from hemaseg.tasks.smear10.classes import GROUPS
from hemaseg.tasks.smear10.synth import CellBank, SynthConfig, colour_map, compose, image_seed, write_smear
from hemaseg.tasks.smear10.train import held_out_crops, load_bank

HERE = Path(__file__).resolve().parent
OUT: list[str] = []
GROUP_NAMES = ("background", "rbc", "wbc", "platelet")


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def restain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stronger stain change than training's per-image jitter: hue rotation and saturation."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-25, 26))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.5), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def make_set(out: Path, bank: CellBank, cfg: SynthConfig, n: int, seed: int, post=None) -> Path:
    rng = np.random.default_rng(seed + 99)
    for i in range(n):
        s = compose(bank, cfg, image_seed(seed, "test", i))
        if post is not None:
            s = replace(s, image=post(s.image, rng))
        write_smear(out, f"t{i:04d}", s)
    return out


def synthetic(model: str, data: Path, n: int) -> None:
    # The test part's WBCs are crops neither the segmentation model nor the WBC-type classifier
    # trained on (the classifier's held-out crops, split by hash between val and test).
    test_bank = load_bank([str(data)], "test", 0, held_out=held_out_crops(HERE / "splits" / "wbc-type.json"))
    base = SynthConfig()
    sets = {
        "held-out crops (test)": (test_bank, base, None),
        "procedural cells only": (CellBank.procedural(), base, None),
        "held-out crops, re-stained": (test_bank, base, restain),
        "held-out crops, red cells 50-64 px (outside 20-44)": (test_bank, replace(base, size=320, rbc_diameter=(50, 64)),
                                                              None),
        "held-out crops, crowded (coverage 0.8-1.0)": (test_bank, replace(base, rbc_coverage=(0.8, 1.0), overlap=0.35),
                                                      None),
        "held-out crops, dark backgrounds": (test_bank, replace(base, dark_background=1.0), None),
    }
    emit(f"### Synthetic smears, model `{model}`, {n} images per set (seed 1, crops of the test part: "
         f"{', '.join(f'{k} {v}' for k, v in test_bank.count().items())})\n")
    emit("| set | pixel accuracy | mean IoU | " + " | ".join(SMEAR10.classes[1:]) + " | s / image |")
    emit("| --- | --- | --- | " + " | ".join("---" for _ in SMEAR10.classes[1:]) + " | --- |")
    for name, (bank, cfg, post) in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_set(Path(tmp), bank, cfg, n, 1, post)
            png = HERE.parent / "docs" / "smear10_confusion.png" if name.startswith("held-out crops (") else None
            res = SMEAR10.evaluate([folder], model, grid=png)
        m = res["mean"]
        ious = " | ".join("-" if m["iou"][c] is None else f"{m['iou'][c]:.3f}" for c in SMEAR10.classes[1:])
        secs = np.mean([r["seconds"] for r in res["per_image"]])
        emit(f"| {name} | {m['pixel_accuracy']:.3f} | {m['mean_iou']:.3f} | {ious} | {secs:.3f} |")
    emit()


def _group(classes: np.ndarray) -> np.ndarray:
    g = np.zeros(classes.shape, np.uint8)
    for k, name in enumerate(("rbc", "wbc", "platelet"), 1):
        g[np.isin(classes, GROUPS[name])] = k
    return g


def real(model: str, data: Path) -> None:
    loaded = get_model(model)
    root = data / "bccd" / "BCCD"
    ids = (root / "ImageSets" / "Main" / "val.txt").read_text().split()
    cm = np.zeros((3, 4), int)
    tiles = []
    for n, i in enumerate(ids):
        img = read_image(root / "JPEGImages" / f"{i}.jpg")
        seg = hemaseg.segment(img, loaded)
        g = _group(seg.classes)
        for name, (x1, y1, x2, y2) in read_voc(root / "Annotations" / f"{i}.xml"):
            row = {"RBC": 0, "WBC": 1, "Platelets": 2}.get(name)
            if row is None:
                continue
            yy, xx = np.mgrid[y1:y2, x1:x2]
            core = ((yy - (y1 + y2) / 2) / max(1, (y2 - y1) / 4)) ** 2 + ((xx - (x1 + x2) / 2) / max(1, (x2 - x1) / 4)) ** 2 <= 1
            votes = np.bincount(g[y1:y2, x1:x2][core], minlength=4)
            # The box's group: the most frequent cell group in its central half (background if no cell).
            cm[row, int(votes[1:].argmax()) + 1 if votes[1:].any() else 0] += 1
        if n < 2:
            tiles.append(np.hstack([img, colour_map(seg.classes)]))
    emit(f"### Real photos: BCCD validation ({len(ids)} photos), box centres by predicted group\n")
    emit("| truth \\ predicted | background | rbc | wbc | platelet | right group |")
    emit("| --- | --- | --- | --- | --- | --- |")
    for r, name in enumerate(("RBC", "WBC", "platelet")):
        emit(f"| {name} ({cm[r].sum()}) | " + " | ".join(str(v) for v in cm[r]) + f" | {cm[r, r + 1] / max(cm[r].sum(), 1):.3f} |")
    emit()
    split = HERE / "splits" / "wbc-seg.json"
    pairs = select_split(find_pairs(data / "wbc-seg"), split)
    inter = union = 0
    for k, p in enumerate(pairs):
        img, mask = load_pair(p)
        seg = hemaseg.segment(img, loaded, cell_diameter=None)
        pred, true = _group(seg.classes) == 2, mask > 0
        inter += (pred & true).sum()
        union += (pred | true).sum()
        if k < 4:
            w = tiles[0].shape[1] // 2  # two wbc-seg pairs side by side span one BCCD row
            tiles.append(cv2.resize(np.hstack([img, colour_map(seg.classes)]), (w, w // 2),
                                    interpolation=cv2.INTER_NEAREST))
    emit(f"wbc-seg validation ({len(pairs)} crops of 120x120, one WBC each): IoU of the predicted WBC group "
         f"(any of the five types) with the annotated cell: **{inter / max(union, 1):.3f}**\n")
    grid = np.vstack(tiles[:2] + [np.hstack(tiles[2:4]), np.hstack(tiles[4:6])] if len(tiles) >= 6 else tiles[:2])
    cv2.imwrite(str(HERE.parent / "docs" / "smear10_real.jpg"), grid[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])


def speed(model: str, repeats: int = 5) -> None:
    loaded = get_model(model)
    rng = np.random.default_rng(0)
    emit("### Speed (2 threads, scale check included)\n")
    emit("| image | seconds |")
    emit("| --- | --- |")
    for size in ((224, 224), (480, 640)):
        s = compose(CellBank.procedural(), replace(SynthConfig(), size=max(size)), rng)
        img = np.ascontiguousarray(s.image[:size[0], :size[1]])
        hemaseg.segment(img, loaded)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            hemaseg.segment(img, loaded)
            t.append(time.perf_counter() - t0)
        emit(f"| {size[1]}x{size[0]} | {np.median(t):.3f} |")
    emit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smear10")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    synthetic(args.model, args.data, args.n)
    real(args.model, args.data)
    speed(args.model)
    card = get_model(args.model)[1]
    emit(f"Model card: validation {json.dumps(card.get('metrics', {}).get('val', {}))}")
    write_result("smear10", OUT)


if __name__ == "__main__":
    main()
