"""Fit, choose and check the `cells` model's platelet re-scorer (``CellsParams.platelet_rescore``).

Every platelet call of the model (network score kept) on TXL-PBC's fields becomes a row of
:func:`hemaseg.tasks.cells.infer.platelet_features`, labelled a platelet when its box overlaps a
boxed platelet by IoU >= 0.5. A logistic regression is fitted on the ``train`` fields' rows; the
feature set and its regularisation are chosen on the ``val`` fields only (the mean over sources
with boxed platelets of the platelet AP@0.5); the ``test`` fields are reported, never chosen on.
A transfer check fits it on three sources' ``train`` fields and scores the fourth's ``val`` +
``test`` fields (the network saw every source; the re-scorer did not).

    python benchmarks/platelet_rescore.py                           # table only
    python benchmarks/platelet_rescore.py --write-card src/hemaseg/weights/cells.json
    # a leave-one-source-out run: fitted and chosen without the source, scored on all of its photos
    python benchmarks/platelet_rescore.py --model runs/cells-loso-Raabin-WBC --leave-out Raabin-WBC \
        --write-card runs/cells-loso-Raabin-WBC/model.json --name platelet_rescore_loso_raabin

Writes benchmarks/results/platelet_rescore.md (``--name`` for another file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from cells_sources import photos
from record import write_result

from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.engine.predict import get_model
from hemaseg.engine.task import params_from_card
from hemaseg.io.images import read_image
from hemaseg.metrics import box_iou, detection_ap
from hemaseg.tasks.cells.infer import (
    PLATELET_FEATURES,
    CellsParams,
    platelet_features,
    rescore_platelets,
    segment_cells,
)

HERE = Path(__file__).resolve().parent
SOURCES = ("BCDD", "Raabin-WBC", "BCCD", "PBC")
# Feature subsets tried (columns of PLATELET_FEATURES; the others' coefficients are 0).
SUBSETS = {"all": PLATELET_FEATURES,
           "no-probabilities": tuple(f for f in PLATELET_FEATURES if f not in ("p0", "p3")),
           "colour-size-score": ("score", "larea", "dL", "da", "db", "bgL")}
CS = (0.01, 0.1, 1.0)
OUT: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def collect(model, root: Path, split: str, sources=SOURCES) -> list[dict]:
    """Per photo: source, boxed platelets, and each platelet call's box, features and network score."""
    raw = params_from_card(CellsParams, model[1], "cells", platelet_rescore={}, platelet_min_score=0.0)
    rows = []
    for source in sources:
        for path, boxes in photos(root, source, split):
            img = read_image(path)
            seg = segment_cells(img, model, params=raw)
            n = int(seg.instances.max())
            owner, scores = np.zeros(n + 1, int), np.zeros(n, np.float32)
            for o in seg.objects:
                owner[o["id"]] = CATEGORIES.index(o["category"]) + 1
                scores[o["id"] - 1] = o["score"]
            ids, feats = platelet_features(img, seg.instances, owner, seg.probs, scores, seg.cell_diameter)
            by_id = {o["id"]: o["bounding_box"] for o in seg.objects}
            gt = [b for c, b in boxes if c == "platelet"]
            calls = []
            for k, f in zip(ids, feats):
                b = by_id[int(k)]
                box = (b["x1"], b["y1"], b["x2"], b["y2"])
                hit = bool(gt) and float(box_iou([box], gt)[0].max()) >= 0.5
                calls.append({"box": box, "f": f, "hit": hit})
            rows.append({"source": source, "gt": gt, "calls": calls})
        print(f"{split}: {source} done", flush=True)
    return rows


def per_source(rows: list[dict], score, min_score: float = 0.0) -> dict:
    """Per source: (platelet AP@0.5, share of photos whose platelet count is exact, calls, boxed)."""
    out = {}
    for s in [s for s in SOURCES if any(r["source"] == s for r in rows)]:
        preds, truths, exact, n_calls = [], {}, 0, 0
        mine = [r for r in rows if r["source"] == s]
        for i, r in enumerate(mine):
            truths[i] = [tuple(b) for b in r["gt"]]
            k = 0
            for c in r["calls"]:
                v = score(c["f"])
                if v >= min_score:
                    preds.append((i, v, c["box"]))
                    k += 1
            exact += k == len(r["gt"])
            n_calls += k
        out[s] = (detection_ap(preds, truths), exact / max(1, len(mine)), n_calls, sum(map(len, truths.values())))
    return out


def fit(rows: list[dict], subset: tuple[str, ...], c: float) -> dict:
    """Logistic model over PLATELET_FEATURES (columns outside ``subset`` get coefficient 0)."""
    from sklearn.linear_model import LogisticRegression

    x = np.array([c_["f"] for r in rows for c_ in r["calls"]], np.float64)
    y = np.array([c_["hit"] for r in rows for c_ in r["calls"]])
    cols = [PLATELET_FEATURES.index(f) for f in subset]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=5000).fit(((x - mean) / scale)[:, cols], y)
    coef = np.zeros(len(PLATELET_FEATURES))
    coef[cols] = lr.coef_[0]
    return {"features": list(PLATELET_FEATURES), "mean": [round(float(v), 6) for v in mean],
            "scale": [round(float(v), 6) for v in scale], "coef": [round(float(v), 6) for v in coef],
            "intercept": round(float(lr.intercept_[0]), 6), "C": c, "subset": list(subset), "rows": int(len(y)),
            "positives": int(y.sum())}


def scorer(m: dict | None):
    if m is None:
        return lambda f: float(f[0])
    return lambda f: float(rescore_platelets(np.asarray([f], np.float64), m)[0])


def mean_ap(r: dict) -> float:
    return float(np.mean([v[0] for v in r.values() if np.isfinite(v[0])]))


def table(title: str, rows: list[dict], models: dict, min_score: float = 0.0) -> None:
    sources = [s for s in SOURCES if any(r["source"] == s for r in rows)]
    emit(f"\n{title}\n")
    emit("| re-scorer | " + " | ".join(f"{s} AP / count exact" for s in sources) + " | mean AP |")
    emit("| --- |" + " --- |" * (len(sources) + 1))
    for name, m in models.items():
        r = per_source(rows, scorer(m), min_score)
        cells = [("-" if not np.isfinite(v[0]) else f"{v[0]:.3f}") + f" / {v[1]:.2f} ({v[2]} calls, {v[3]} boxed)"
                 for v in (r[s] for s in sources)]
        emit(f"| {name} | " + " | ".join(cells) + f" | **{mean_ap(r):.3f}** |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cells")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "txl-pbc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-card", type=Path, help="write the chosen re-scorer into this card's postprocess")
    ap.add_argument("--leave-out", choices=SOURCES, help="a leave-one-source-out run's re-scorer: fitted and chosen "
                    "on the other sources' fields; every photo of this source scored (never chosen on)")
    ap.add_argument("--name", default="platelet_rescore")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    model = get_model(args.model)
    kept = tuple(s for s in SOURCES if s != args.leave_out)
    data = {s: collect(model, args.data, s, kept) for s in ("train", "val")}
    data["test"] = (collect(model, args.data, "all", (args.leave_out,)) if args.leave_out
                    else collect(model, args.data, "test", kept))
    emit(f"### Platelet re-scorer for `{args.model}`: fitted on TXL-PBC `train` fields "
         f"({sum(len(r['calls']) for r in data['train'])} platelet calls), chosen on `val`\n")
    emit("| subset | C | val mean platelet AP (sources with boxed platelets) |")
    emit("| --- | --- | --- |")
    best, best_ap = None, per_source(data["val"], scorer(None))
    base = mean_ap(best_ap)
    emit(f"| network score (none) | - | {base:.3f} |")
    top = base
    for name, subset in SUBSETS.items():
        for c in CS:
            m = fit(data["train"], subset, c)
            v = mean_ap(per_source(data["val"], scorer(m)))
            emit(f"| {name} | {c} | {v:.3f} |")
            if v > top:
                best, top = m, v
    chosen = {"network score": None, "re-scored (chosen)": best}
    table("Validation fields (chose the re-scorer), platelet AP@0.5 / platelet count exact:", data["val"], chosen)
    for t in (0.3, 0.5):
        table(f"Validation fields, calls under {t} dropped (`platelet_min_score`):", data["val"], {"re-scored": best}, t)
    table(f"Every photo of {args.leave_out}, the source left out (never chosen on):" if args.leave_out
          else "Test fields (never chosen on):", data["test"], chosen)
    if best is not None and not args.leave_out:
        emit("\nTransfer: fitted (same subset and C) on the other three sources' `train` fields, scored on the "
             "left-out source's `val` + `test` fields:\n")
        emit("| source | network score AP | re-scorer without the source | with every source |")
        emit("| --- | --- | --- | --- |")
        both = data["val"] + data["test"]
        for s in kept:
            m = fit([r for r in data["train"] if r["source"] != s], tuple(best["subset"]), best["C"])
            a = [per_source([r for r in both if r["source"] == s], scorer(x)).get(s, (np.nan,))[0] for x in (None, m, best)]
            emit(f"| {s} | " + " | ".join("-" if not np.isfinite(v) else f"{v:.3f}" for v in a) + " |")
    write_result(args.name, OUT)
    if args.write_card and best is not None:
        card = json.loads(args.write_card.read_text())
        best["fitted_by"] = "python benchmarks/platelet_rescore.py " + " ".join(sys.argv[1:])
        card.setdefault("postprocess", {})["platelet_rescore"] = best
        tmp = args.write_card.with_suffix(".tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        tmp.replace(args.write_card)
        print(f"wrote platelet_rescore into {args.write_card}")


if __name__ == "__main__":
    main()
