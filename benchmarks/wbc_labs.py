"""WBC outlines across labs: on the TXL-PBC fields of each source (PBC/CellaVision, Raabin, BCCD,
BCDD; every cell boxed), how much predicted cytoplasm leaks into red cells, how many WBC boxes are
recovered and whether the WBC count is exact; plus the Dice on wbc-seg's validation split.
The worst source comes first.

    python benchmarks/wbc_labs.py [--models wbc runs/wbc-weak] [--split test] [--method hsv] [--fields-out F.json]
        [--post red_chroma=0] [--no-free] [--no-dice] [--name wbc_labs]

- leak: the fraction of predicted cytoplasm pixels inside a red-cell box and outside every WBC box
  (pooled over the source's fields; the WBC's own box is never counted);
- whole-cell leak: the same for every predicted WBC pixel, nucleus included (a red cell's dark rim
  taken for a piece of nucleus counts here, not in the leak);
- WBC recall: WBC boxes matched by a predicted WBC's box at IoU >= 0.5;
- count exact: fields whose number of predicted WBCs equals the number of WBC boxes;
- box IoU: each WBC box's best IoU with a predicted WBC's box, averaged (0 when none), a stand-in
  for the whole-cell Dice where no mask exists: a cell that swallows its red cells grows its box;
- WBC-free windows: up to two squares per field (1-1.5 WBC sides) clear of every WBC box and of every
  WBC the bundled ``cells`` model finds (``benchmarks/wbc_negatives.py``'s, at the field's own scale),
  each segmented alone: the share of them given a WBC, and the WBCs invented (a user's crop of
  red cells, a smear's WBC-free strip: there is none to find).

The TXL ``test`` fields are used by default: a model trained with ``--data .../txl-pbc/images/train``
never saw them. The diameter is estimated per field (the default a user gets). Prints Markdown,
also written to benchmarks/results/wbc_labs.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from record import write_result

HERE = Path(__file__).resolve().parent


def box_iou(a: dict, b: dict) -> float:
    """IoU of two {x1, x2, y1, y2} boxes (x2, y2 exclusive)."""
    iw = max(0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    ih = max(0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = iw * ih
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - inter
    return inter / union if union > 0 else 0.0


def matched(truth: list[dict], pred: list[dict], thr: float = 0.5) -> int:
    """Greedy one-to-one matches of true boxes by predicted boxes at IoU >= ``thr``."""
    pairs = sorted(((box_iou(t, p), i, j) for i, t in enumerate(truth) for j, p in enumerate(pred)), reverse=True)
    used_t, used_p, n = set(), set(), 0
    for iou, i, j in pairs:
        if iou < thr:
            break
        if i in used_t or j in used_p:
            continue
        used_t.add(i)
        used_p.add(j)
        n += 1
    return n


def field_scores(seg, boxes: list[dict], shape: tuple[int, int]) -> dict:
    """leak numerator/denominator, WBC boxes, matches and counts of one field."""
    h, w = shape
    rbc = np.zeros((h, w), bool)
    wbc = np.zeros((h, w), bool)
    truth = []
    for b in boxes:
        bb = b["bounding_box"]
        sl = slice(max(0, bb["y1"]), min(h, bb["y2"])), slice(max(0, bb["x1"]), min(w, bb["x2"]))
        if b["category"] == "rbc":
            rbc[sl] = True
        elif b["category"] == "wbc":
            wbc[sl] = True
            truth.append(bb)
    cyto = seg.classes == 1
    cell = seg.classes > 0
    pred = [o["bounding_box"] for o in seg.objects]
    return {"leak": int((cyto & rbc & ~wbc).sum()), "cyto": int(cyto.sum()),
            "cell_leak": int((cell & rbc & ~wbc).sum()), "cell": int(cell.sum()), "n_true": len(truth),
            "n_pred": len(pred), "matched": matched(truth, pred),
            "best_iou": [max((box_iou(t, p) for p in pred), default=0.0) for t in truth]}


def free_windows_of(pairs: list) -> dict[str, list]:
    """Each field's WBC-free windows (``benchmarks/wbc_negatives.py``), by image file name."""
    from wbc_negatives import pick_windows

    import hemaseg
    from hemaseg.core.vocabulary import category_of
    from hemaseg.io.annotations import read_yolo_labels, yolo_names

    out = {}
    for image_path, label in pairs:
        image = hemaseg.read_image(image_path)
        boxes = [{**m, "category": category_of(m["class_name"])}
                 for m in read_yolo_labels(label, yolo_names(label.parent), *image.shape[:2])]
        out[image_path.name] = pick_windows(image, boxes, 2, image_path.name)
    return out


def run(model: str | None, method: str | None, pairs: list, sources: dict[str, str],
        fields: list | None = None, windows: dict[str, list] | None = None,
        post: list[str] | None = None) -> dict[str, dict]:
    import hemaseg
    from hemaseg.cli import post_params
    from hemaseg.core.vocabulary import category_of
    from hemaseg.engine.predict import get_model
    from hemaseg.io.annotations import read_yolo_labels, yolo_names
    from hemaseg.tasks.registry import get_task

    task = get_task("wbc")
    loaded = get_model(model) if model else None
    params = post_params(task, loaded[1], post) if post and loaded else None
    per: dict[str, list[dict]] = {}
    for image_path, label in pairs:
        image = hemaseg.read_image(image_path)
        names = yolo_names(label.parent)
        boxes = [{**m, "category": category_of(m["class_name"])}
                 for m in read_yolo_labels(label, names, *image.shape[:2])]
        t0 = time.perf_counter()
        seg = task.predict(image, loaded, method=method) if method else task.predict(image, loaded, params=params)
        row = field_scores(seg, boxes, image.shape[:2])
        row["seconds"] = time.perf_counter() - t0
        row["free"] = []
        for y0, x0, side in (windows.get(image_path.name) if windows is not None else []):
            crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
            seg = task.predict(crop, loaded, method=method) if method else task.predict(crop, loaded, params=params)
            row["free"].append(len(seg.objects))
        per.setdefault(sources.get(image_path.name, "?"), []).append(row)
        if fields is not None:  # per-field rows, worst leak first in --fields-out
            fields.append({"image": image_path.name, "source": sources.get(image_path.name, "?"),
                           "model": model or method,
                           **{k: row[k] for k in ("leak", "cyto", "cell_leak", "cell", "n_true", "n_pred", "free")}})
    out = {}
    for src, rows in per.items():
        n_true = sum(r["n_true"] for r in rows)
        out[src] = {"fields": len(rows),
                    "leak": sum(r["leak"] for r in rows) / max(1, sum(r["cyto"] for r in rows)),
                    "cell_leak": sum(r["cell_leak"] for r in rows) / max(1, sum(r["cell"] for r in rows)),
                    "recall": sum(r["matched"] for r in rows) / max(1, n_true), "wbc_boxes": n_true,
                    "count_exact": float(np.mean([r["n_pred"] == r["n_true"] for r in rows])),
                    "box_iou": float(np.mean([v for r in rows for v in r["best_iou"]] or [0.0])),
                    "free": sum(len(r["free"]) for r in rows),
                    "free_with_wbc": sum(n > 0 for r in rows for n in r["free"]),
                    "free_wbcs": sum(n for r in rows for n in r["free"]),
                    "seconds": float(np.mean([r["seconds"] for r in rows]))}
    return out


def wbc_seg_dice(model: str | None, method: str | None, data: Path) -> tuple[float, float]:
    from hemaseg.tasks.registry import get_task

    res = get_task("wbc").evaluate([data / "wbc-seg"], model, HERE / "splits" / "wbc-seg.json", method=method,
                                   grid=None)
    return res["mean"]["dice_cell"], res["mean"]["dice_nucleus"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["wbc"])
    ap.add_argument("--method", nargs="*", default=[], help="also score these classical methods (hsv, watershed)")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--split", default="test", help="TXL-PBC split folder: test, val or train")
    ap.add_argument("--limit", type=int, default=0, help="at most this many fields per source (0: all)")
    ap.add_argument("--post", nargs="*", default=[], metavar="KEY=VALUE",
                    help="WbcParams for the models (e.g. red_chroma=0: that rule off); the Dice is the default's")
    ap.add_argument("--name", default="wbc_labs", help="results file name under benchmarks/results/")
    ap.add_argument("--no-free", action="store_true", help="skip the WBC-free windows")
    ap.add_argument("--no-dice", action="store_true", help="skip wbc-seg's validation Dice")
    ap.add_argument("--fields-out", type=Path, default=None,
                    help="also write every field's leak, cytoplasm and counts to this JSON, worst leak first")
    args = ap.parse_args()
    from hemaseg.io.annotations import find_yolo

    txl = args.data / "txl-pbc"
    with open(txl / "sources.csv", newline="") as f:
        sources = {r["image"]: r["source_dataset"] for r in csv.DictReader(f)}
    pairs = [(i, lab) for i, lab in find_yolo(txl / "images" / args.split) if lab is not None]
    if args.limit:
        by_source: dict[str, list] = {}
        for pair in pairs:
            by_source.setdefault(sources.get(pair[0].name, "?"), []).append(pair)
        pairs = [p for group in by_source.values() for p in group[:args.limit]]
    lines = [f"### WBC outlines on TXL-PBC `{args.split}` fields, per source (worst leak first)\n",
             "| model | source | fields | WBC boxes | cytoplasm leak into red cells | whole-cell leak "
             "| WBC recall (IoU ≥ 0.5) | WBC box IoU | count exact | WBC-free windows given a WBC (WBCs) "
             "| s / field |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    runs = [(m, None) for m in args.models] + [(None, m) for m in args.method]
    dice = []
    fields: list | None = [] if args.fields_out else None
    windows = None if args.no_free else free_windows_of(pairs)
    if args.post and args.method:
        ap.error("--post sets the models' WbcParams; the classical methods (--method) take none")
    for model, method in runs:
        name = f"`{model}`" if model else f"classical `{method}`"
        res = run(model, method, pairs, sources, fields, windows, args.post)
        for src, r in sorted(res.items(), key=lambda kv: -kv[1]["leak"]):
            lines.append(f"| {name} | {src} | {r['fields']} | {r['wbc_boxes']} | {r['leak'] * 100:.1f} % | "
                         f"{r['cell_leak'] * 100:.1f} % | "
                         f"{r['recall']:.3f} | {r['box_iou']:.3f} | {r['count_exact'] * 100:.0f} % | "
                         f"{r['free_with_wbc']} of {r['free']} ({r['free_wbcs']}) | {r['seconds']:.2f} |")
        print("\n".join(lines[-len(res):]), flush=True)
        if not args.no_dice:
            dice.append((name, *wbc_seg_dice(model, method, args.data)))
    if dice:
        lines += ["", "| model | wbc-seg validation Dice, cell | nucleus |", "| --- | --- | --- |"]
        lines += [f"| {n} | {c:.4f} | {nu:.4f} |" for n, c, nu in dice]
    print("\n".join(lines))
    write_result(args.name, lines)
    if args.fields_out:
        args.fields_out.write_text(json.dumps(sorted(fields, key=lambda r: -r["leak"]), indent=0))


if __name__ == "__main__":
    main()
