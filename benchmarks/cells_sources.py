"""Whole-smear cells on every TXL-PBC source, worst source first: VOC AP@0.5 per class, COCO
mAP@[.5:.95] (pycocotools' COCOeval, boxes), and how often each class's count is exact, for one or
more cells models; optionally at several zooms (the photos and their boxes rescaled).

    # in-source: the bundled model(s) on each source's test split (never trained on)
    python benchmarks/cells_sources.py --model cells --model cells-maskrcnn
    # leave-one-source-out: each run scored on every photo of the source it left out
    python benchmarks/cells_sources.py --loso runs/cells-loso-{source}
    # zoom: the validation fields rescaled 0.4x-2.5x
    python benchmarks/cells_sources.py --model runs/cells-txl --split val --zoom 0.4 0.63 1 1.6 2.5

The TXL-PBC boxes cover every red cell, WBC and platelet; the model's boxes are its outlines grown
by the card's ``box_scale`` (how the training annotations drew them). Writes
benchmarks/results/cells_sources.md (``--name`` for another file).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from record import write_result

from hemaseg.engine.predict import get_model
from hemaseg.io.images import read_image
from hemaseg.metrics import coco_box_map, detection_ap
from hemaseg.tasks.cells.infer import CellsParams, segment_cells
from hemaseg.tasks.cells.train import find_annotated_photos

HERE = Path(__file__).resolve().parent
CATS = ("rbc", "wbc", "platelet")
OUT: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def photos(root: Path, source: str, split: str) -> list[tuple[Path, list]]:
    """(image, [(category, box)]) of one source's photos in ``split`` ("all": every split)."""
    out = []
    for path, e in find_annotated_photos(root):
        if e["source"] == source and (split == "all" or e["split"] == split):
            b = [(m["category"], tuple(m["bounding_box"][k] for k in ("x1", "y1", "x2", "y2"))) for m in e["masks"]]
            out.append((path, [(c, box) for c, box in b if c in CATS]))
    return out


def score(model, items: list, zoom: float = 1.0, params: CellsParams | None = None) -> dict:
    """VOC AP@0.5 per class, their mean, COCO mAP@[.5:.95], count exact per class, seconds/photo."""
    preds = {c: [] for c in CATS}
    truths = {c: {} for c in CATS}
    exact = {c: 0 for c in CATS}
    sizes, secs, miss = {}, [], []
    for i, (path, boxes) in enumerate(items):
        img = read_image(path)
        if zoom != 1.0:
            img = cv2.resize(img, (round(img.shape[1] * zoom), round(img.shape[0] * zoom)),
                             interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
        sizes[i] = img.shape[:2]
        t0 = time.perf_counter()
        seg = segment_cells(img, model, params=params)
        secs.append(time.perf_counter() - t0)
        for c in CATS:
            truths[c][i] = [tuple(v * zoom for v in b) for cat, b in boxes if cat == c]
        for r in seg.objects:
            b = r["bounding_box"]
            preds[r["category"]].append((i, r["score"], (b["x1"], b["y1"], b["x2"], b["y2"])))
        for c in CATS:
            n_pred = sum(1 for p in preds[c] if p[0] == i)
            if n_pred == len(truths[c][i]):
                exact[c] += 1
            elif c == "wbc":
                miss.append(f"{path.name} ({n_pred} found, {len(truths[c][i])} boxed)")
    ap = {c: detection_ap(preds[c], truths[c]) for c in CATS}
    finite = [v for v in ap.values() if np.isfinite(v)]  # a class no photo holds (BCDD: platelets) is left out
    return {"ap": ap, "map50": float(np.mean(finite)) if finite else float("nan"), "coco": coco_box_map(preds, truths, sizes, CATS),
            "exact": {c: exact[c] / max(1, len(items)) for c in CATS}, "n": len(items),
            "seconds": float(np.median(secs)) if secs else 0.0, "wbc_miscounts": miss}


def f3(v: float) -> str:
    return f"{v:.3f}" if np.isfinite(v) else "- (none boxed)"


def row(label: str, r: dict) -> str:
    return (f"| {label} | {r['n']} | {f3(r['ap']['rbc'])} | {f3(r['ap']['wbc'])} | {f3(r['ap']['platelet'])} | "
            f"**{r['map50']:.3f}** | {r['coco']:.3f} | {r['exact']['rbc']:.2f} | {r['exact']['wbc']:.2f} | "
            f"{r['exact']['platelet']:.2f} |")


HEADER = ("| {what} | photos | AP RBC | AP WBC | AP platelet | mAP@0.5 | COCO mAP@[.5:.95] | RBC count exact | "
          "WBC count exact | platelet count exact |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=[], help="cells model(s) scored on every source")
    ap.add_argument("--loso", help="run folder pattern with {source}: each run scored on every photo of its "
                                   "left-out source (split 'all')")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "txl-pbc")
    ap.add_argument("--split", default="test", help="test (default), val, train or all")
    ap.add_argument("--sources", nargs="+", default=["Raabin-WBC", "BCDD", "PBC", "BCCD"])
    ap.add_argument("--zoom", nargs="+", type=float, default=[1.0], help="rescale photos and boxes by these factors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rescale-tolerance", type=float, default=None,
                    help="CellsParams.rescale_tolerance (default: the card's or 1.15; 0: the older rule)")
    ap.add_argument("--post", nargs="*", default=[], metavar="KEY=VALUE",
                    help="post-processing knobs over each model's card (as `hemaseg segment --post`)")
    ap.add_argument("--name", default="cells_sources", help="results file name (benchmarks/results/NAME.md)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from hemaseg.cli import post_params
    from hemaseg.tasks import get_task

    post = list(args.post) + ([] if args.rescale_tolerance is None else [f"rescale_tolerance={args.rescale_tolerance}"])

    def params_of(loaded) -> CellsParams | None:  # the card's knobs with --post over them (CellsParams() lost the card's)
        return post_params(get_task("cells"), loaded[1], post) if post else None

    if args.loso:
        emit("### Leave-one-source-out: trained on the other three TXL-PBC sources, scored on every photo of "
             "the source left out (worst first)\n")
        emit(HEADER.format(what="left-out source (run)"))
        rows = []
        for s in args.sources:
            run = args.loso.format(source=s)
            if not Path(run).exists():
                print(f"skipped {s}: no run {run}", flush=True)
                continue
            loaded = get_model(run)
            r = score(loaded, photos(args.data, s, "all"), params=params_of(loaded))
            rows.append((r["map50"], row(f"{s} (`{run}`)", r), r))
        for _, line, _ in sorted(rows, key=lambda t: t[0]):
            emit(line)
        emit()
        for _, line, r in sorted(rows, key=lambda t: t[0]):
            emit(f"{line.split('|')[1].strip()}: WBC miscounts {len(r['wbc_miscounts'])}: "
                 f"{', '.join(r['wbc_miscounts'][:8]) or 'none'}")
    for m in args.model:
        model = get_model(m)
        params = params_of(model)
        for z in args.zoom:
            what = f"source, split {args.split}" + (f", zoom {z:g}x" if len(args.zoom) > 1 or z != 1 else "")
            emit(f"\n### `{m}` ({model[1]['architecture']['name']}) on TXL-PBC, split {args.split}, worst source "
                 f"first{f' (photos and boxes rescaled {z:g}x)' if z != 1 else ''}\n")
            emit(HEADER.format(what=what))
            rows = []
            for s in args.sources:
                items = photos(args.data, s, args.split)
                if items:
                    r = score(model, items, z, params)
                    rows.append((r["map50"], row(s, r), r))
            for _, line, _ in sorted(rows, key=lambda t: t[0]):
                emit(line)
            emit(f"\nmedian s/photo (segmentation): {np.median([r['seconds'] for *_, r in rows]):.3f}")
    write_result(args.name, OUT)


if __name__ == "__main__":
    main()
