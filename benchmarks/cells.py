"""Whole-smear cells: VOC mAP@0.5 per class on BCCD's validation photos, exact WBC counts, and
speed of ``hemaseg analyze`` (classification included), for one or more cells models (our U-Net
+ watershed and the Mask R-CNN backend). Prints Markdown tables (also written to
benchmarks/results/cells.md).

    python benchmarks/cells.py [--model cells] [--model runs/cells-maskrcnn] [--data ../shared/data]

Scored against BCCD's own VOC boxes (ImageSets/Main/val.txt). A model also trained on TXL-PBC saw
some of those photos there (TXL-PBC re-boxed 132 BCCD photos, 26 of BCCD's val.txt among its
training fields): every photo its split.json names (train or val, by TXL-PBC's sources.csv
original_name) is left out and the number scored is printed. BCCD leaves some
red cells, mostly at the borders, without a box: a found but unboxed red cell counts as a false
positive here, which lowers the RBC AP of every model alike.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from record import write_result

from hemaseg.engine.predict import get_model
from hemaseg.io.datasets import read_voc
from hemaseg.io.images import read_image
from hemaseg.metrics import detection_ap
from hemaseg.pipelines.analyze import analyze
from hemaseg.tasks.cells.infer import segment_cells

HERE = Path(__file__).resolve().parent
OUT: list[str] = []
NOTES: list[str] = []  # said under the table
CATS = {"RBC": "rbc", "WBC": "wbc", "Platelets": "platelet"}


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def seen_in_training(card: dict) -> set[str]:
    """Stems of the BCCD photos a model trained or chose its checkpoint on through another dataset
    (TXL-PBC's copies, by sources.csv's original_name), from the run's split.json; when that file
    is not on this machine, every field of the dataset's own ``train`` and ``val`` folders (the
    fields a cells run may draw; its ``test`` fields are never used)."""
    split_file = Path(card.get("training", {}).get("split", ""))
    split = json.loads(split_file.read_text()) if split_file.is_file() else None
    out = set()
    for d in card.get("training", {}).get("data", []):
        f = Path(d) / "sources.csv"
        if not f.is_file():
            continue
        if split is not None:
            seen = {Path(p).name for p in split.get("train", []) + split.get("val", [])}
        else:
            seen = {p.name for part in ("train", "val") for p in (Path(d) / "images" / part).glob("*")}
            NOTES.append(f"{split_file} not found: every photo of {d}'s train and val folders counted as seen.")
        with open(f, newline="") as fh:
            out |= {Path(r["original_name"]).stem for r in csv.DictReader(fh) if r["image"] in seen}
    return out


def accuracy(model: str, root: Path) -> dict:
    loaded = get_model(model)
    seen = seen_in_training(loaded[1])
    ids = [i for i in (root / "ImageSets" / "Main" / "val.txt").read_text().split() if i not in seen]
    preds = {c: [] for c in CATS.values()}
    truths = {c: {} for c in CATS.values()}
    exact, wrong, secs = 0, [], []
    for i in ids:
        img = read_image(root / "JPEGImages" / f"{i}.jpg")
        t0 = time.perf_counter()
        seg = segment_cells(img, loaded)
        secs.append(time.perf_counter() - t0)
        boxes = read_voc(root / "Annotations" / f"{i}.xml")
        for c in CATS.values():
            truths[c][i] = [b for n, b in boxes if CATS.get(n) == c]
        for r in seg.objects:
            b = r["bounding_box"]
            preds[r["category"]].append((i, r["score"], (b["x1"], b["y1"], b["x2"], b["y2"])))
        n_true = len(truths["wbc"][i])
        n_pred = sum(r["category"] == "wbc" for r in seg.objects)
        if n_true == n_pred:
            exact += 1
        else:
            wrong.append(f"{i} ({n_pred} found, {n_true} boxed)")
    ap = {c: detection_ap(preds[c], truths[c]) for c in CATS.values()}
    return {"ap": ap, "map": float(np.mean(list(ap.values()))), "exact_wbc": exact / len(ids), "n": len(ids),
            "wrong": wrong, "seconds": float(np.median(secs)),
            "counts": {c: (sum(len(v) for v in truths[c].values()), len(preds[c])) for c in CATS.values()}}


def mirrored(image: np.ndarray, h: int, w: int) -> np.ndarray:
    ny, nx = -(-h // image.shape[0]), -(-w // image.shape[1])
    row = np.concatenate([image if j % 2 == 0 else image[:, ::-1] for j in range(nx)], 1)
    grid = np.concatenate([row if k % 2 == 0 else row[::-1] for k in range(ny)], 0)
    return np.ascontiguousarray(grid[:h, :w])


def speed(model: str, root: Path, n: int = 10) -> tuple[float, float]:
    """(photos per second for 640x480, seconds for one 4000x3000 photo), analyze() end to end."""
    ids = (root / "ImageSets" / "Main" / "val.txt").read_text().split()[:n]
    imgs = [read_image(root / "JPEGImages" / f"{i}.jpg") for i in ids]
    analyze(imgs[0], "warm-up", model)
    t0 = time.perf_counter()
    for img in imgs:
        analyze(img, "", model)
    per_s = len(imgs) / (time.perf_counter() - t0)
    big = mirrored(imgs[0], 3000, 4000)
    t0 = time.perf_counter()
    analyze(big, "big", model)
    return per_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="cells model(s); default: the bundled one")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    root = args.data / "bccd" / "BCCD"
    models = args.model or ["cells"]
    emit("### BCCD validation photos (ImageSets/Main/val.txt), VOC AP@0.5 against BCCD's boxes\n")
    emit("| model | AP RBC | AP WBC | AP platelet | mAP@0.5 | WBC count exact | s / photo (segmentation) | "
         "photos/s 640x480 (analyze) | s 4000x3000 (analyze) | training |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    wrongs = {}
    for m in models:
        r = accuracy(m, root)
        ps, big = speed(m, root)
        card = get_model(m)[1]
        tr = card.get("training", {}).get("minutes")
        emit(f"| `{m}` ({card['architecture']['name']}) | {r['ap']['rbc']:.3f} | {r['ap']['wbc']:.3f} | "
             f"{r['ap']['platelet']:.3f} | **{r['map']:.3f}** | {r['exact_wbc']:.3f} ({r['n']} photos) | "
             f"{r['seconds']:.2f} | {ps:.2f} | {big:.1f} | {tr if tr is not None else '-'} min |")
        wrongs[m] = r
    emit()
    for m, r in wrongs.items():
        emit(f"`{m}`: boxes vs found: " + ", ".join(f"{c} {t} boxed / {p} found" for c, (t, p) in r["counts"].items())
             + f"; WBC miscounts: {', '.join(r['wrong']) or 'none'}\n")
    for note in NOTES:
        emit(note)
    write_result("cells", OUT)


if __name__ == "__main__":
    main()
