"""WBC typing in labs it never saw: leave-one-lab-out over BCCD, wbc-seg and PBC, the zoom curve
and the in-lab figures.

    python benchmarks/wbc_type_lolo.py [--data ../shared/data] [--runs runs/wbc-type-lolo] [--threads 2]
                                       [--epochs 40] [--only bccd wbc-seg pbc all] [--zoom-n 120] [--seed 0]
                                       [--init RUN_OR_MODEL_{lab}]

For each lab L: a classifier is trained on the two other labs (each split on its own, seeded and
stratified, 20 % held out for checkpoint choice and calibration: in-lab validation only) and
tested on *every* crop of L, none of which any choice saw. Scored on the five WBC types all
three labs share (PBC's ig / erythroblast / platelet crops are left out of a PBC test; the
prediction is the most probable of the five). ``all`` trains on the three labs (the bundled
candidate) and reports its in-lab validation. The zoom curve: ``--zoom-n`` crops of each test
lab rescaled 0.5x-3x before cell normalisation, accuracy per zoom. ``--targets DIR`` (the crops of
benchmarks/txl_wbc_crops.py): every run also sees the unlabelled WBC crops of ``--target-sources``
(default Raabin-WBC and BCDD, labs that are none of the three) as DANN's target images, so its features
are taught not to tell those labs from the training ones. Prints Markdown tables and
writes benchmarks/results/wbc_type_lolo.md; per-run JSON beside the runs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from record import write_result

HERE = Path(__file__).resolve().parent
OUT: list[str] = []
LABS = {"bccd": "bccd-wbc", "wbc-seg": "wbc-seg", "pbc": "pbc"}
LOOK_SOURCE = {"bccd": "BCCD", "pbc": "PBC"}  # a lab's own photos among TXL-PBC's sources
ZOOMS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def without_basophils(test: dict) -> float:
    """Accuracy over the left-out lab's crops of the four types other than basophil (from its confusion):
    wbc-seg and BCCD hold one basophil each, so with PBC left out its 600 basophils cannot be learnt
    and its five-type accuracy cannot pass 0.80."""
    c, names = np.asarray(test["confusion"]), test["classes"]
    keep = [i for i, n in enumerate(names) if n != "basophil"]
    return float(sum(c[i, i] for i in keep) / max(1, c[keep].sum()))


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def test_lab(run: Path, root: Path, cache: Path, zoom_n: int, seed: int = 0) -> dict:
    """Scores of a run's model on every crop of a lab (five WBC types), its confusion, the zoom curve."""
    import cv2

    import hemaseg
    from hemaseg.io.datasets import find_labelled_cells
    from hemaseg.metrics import classification_report
    from hemaseg.models.registry import load_model
    from hemaseg.tasks.wbc_type.crops import CLASSES, cell_crops, crop_padding, group_probs
    from hemaseg.tasks.wbc_type.train import predict_as_trained, prepare_crops

    model, card = load_model(run / "model.safetensors")
    items = [(p, c) for p, c in find_labelled_cells(root) if c in CLASSES]
    img, parts, ext = prepare_crops([p for p, _ in items], int(card["input_size"]), True, cache, progress=False,
                                    padding=crop_padding(card))
    t0 = time.perf_counter()
    probs = predict_as_trained(model, card, img, parts, ext)
    seconds = time.perf_counter() - t0
    names, q = group_probs(probs, list(card["classes"]), 3)
    five = [n.lower() for n in names]
    truth = np.array([five.index(c) for _, c in items])
    rep = classification_report(truth, q.argmax(1), five)
    res = {"n": len(items), "accuracy_5": rep["accuracy"], "macro_f1": rep["macro_f1"], "confusion": rep["confusion"],
           "classes": five, "per_class_recall": {c: v["recall"] for c, v in rep["per_class"].items()}, "classifier_crops_per_s": len(items) / seconds}
    # Zoom curve: the same crops rescaled before normalisation (a lab at another magnification).
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(items))[:zoom_n]
    curve = {}
    for z in ZOOMS:
        zoomed = [cv2.resize(hemaseg.read_image(items[i][0]), None, fx=z, fy=z,
                             interpolation=cv2.INTER_AREA if z < 1 else cv2.INTER_LINEAR) for i in pick]
        cells = cell_crops(zoomed, int(card["input_size"]), padding=crop_padding(card))
        pz = predict_as_trained(model, card, np.stack([c.image for c in cells]), np.stack([c.parts for c in cells]),
                                np.stack([c.extras for c in cells]))
        _, qz = group_probs(pz, list(card["classes"]), 3)
        curve[str(z)] = float((qz.argmax(1) == truth[pick]).mean())
    res["zoom"] = curve
    return res


def report(name: str, entry: dict) -> None:
    """One run's lines: its training and in-lab figures, then its left-out lab's."""
    emit(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'test'})}")
    if "test" in entry:
        t = entry["test"]
        emit(f"  left out {name}: accuracy_5 {t['accuracy_5']:.3f} macro-F1 {t['macro_f1']:.3f} (n={t['n']}) "
             f"zoom {t['zoom']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "wbc-type-lolo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--samples-per-epoch", type=int, default=1536)
    ap.add_argument("--only", nargs="*", default=["bccd", "wbc-seg", "pbc", "all"])
    ap.add_argument("--zoom-n", type=int, default=120)
    ap.add_argument("--no-extras", action="store_true", help="train without the ruler (size and nucleus share)")
    ap.add_argument("--cache", type=Path, default=None, help="normalised crops (default RUNS/crops)")
    ap.add_argument("--looks", type=Path, default=None,
                    help="folder of per-source unlabelled WBC crops (benchmarks/txl_wbc_crops.py): the training "
                         "crops are redrawn in their looks (--looks-share of the draws); the left-out lab's own "
                         "source is never among them")
    ap.add_argument("--looks-share", type=float, default=0.5)
    ap.add_argument("--targets", type=Path, default=None,
                    help="folder of unlabelled WBC crops per source (benchmarks/txl_wbc_crops.py): the crops of "
                         "--target-sources are DANN's target images in every run (labs that are none of the three)")
    ap.add_argument("--target-sources", nargs="*", default=["Raabin-WBC", "BCDD"])
    ap.add_argument("--colour", default="rgb", help="the crops' colours as the classifier sees them: rgb, grey, stain, shape or shape-hue")
    ap.add_argument("--crop-padding", default="reflect",
                    help="where a crop's square leaves the image: reflect, or background (and tight cuts in training)")
    ap.add_argument("--seed", type=int, default=0, help="each run's seed (its labs' validation split and training draws); "
                                                        "the test lab is every crop of it whatever the seed")
    ap.add_argument("--mixstyle", type=float, default=0.0, help="MixStyle's probability in training (0: none)")
    ap.add_argument("--lab-balance", type=int, default=0,
                    help="within each type the training labs share its draws by min(their crops of it, N) (0: pooled)")
    ap.add_argument("--init", default="",
                    help="each run starts from this wbc-type model (e.g. self-supervised features); '{lab}' in it is "
                         "replaced by the left-out lab's name, so that no run starts from weights that saw its test lab")
    ap.add_argument("--table-only", action="store_true", help="no training: the tables from the runs' lolo.json")
    args = ap.parse_args()

    import logging

    import torch

    from hemaseg.tasks.wbc_type.train import ClassifyConfig, fit_classifier

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    torch.set_num_threads(args.threads)
    cache = args.cache or args.runs / "crops"  # shared by every run: each crop is normalised once
    results = {}
    for name in args.only:
        run = args.runs / (f"without-{name}" if name != "all" else "all")
        if args.table_only:
            if (run / "lolo.json").exists():
                results[name] = json.loads((run / "lolo.json").read_text())
                report(name, results[name])
            continue
        train_labs = [k for k in LABS if k != name]
        cfg = ClassifyConfig(data=[str(args.data / LABS[k]) for k in train_labs], epochs=args.epochs,
                             samples_per_epoch=args.samples_per_epoch, cache=str(cache), extras=not args.no_extras,
                             colour=args.colour, crop_padding=args.crop_padding, seed=args.seed,
                             mixstyle=args.mixstyle, lab_balance=args.lab_balance,
                             init=args.init.replace("{lab}", name))
        if args.looks:
            cfg.looks = [str(d) for d in sorted(args.looks.iterdir()) if d.is_dir() and d.name != LOOK_SOURCE.get(name)]
            cfg.looks_share = args.looks_share
        if args.targets:
            if LOOK_SOURCE.get(name) in args.target_sources:
                raise SystemExit(f"--target-sources holds {LOOK_SOURCE[name]}, the left-out lab's own source")
            cfg.target_images = [str(args.targets / s) for s in args.target_sources]
        if (run / "state.json").exists():  # resumed: it must be the run asked for, not another input's
            was = json.loads((run / "state.json").read_text())["config"]
            for k in ("colour", "crop_padding", "extras", "looks", "target_images", "seed", "mixstyle", "lab_balance",
                      "init"):
                if was.get(k, getattr(ClassifyConfig(), k)) != getattr(cfg, k):
                    raise SystemExit(f"{run}: a run with {k}={was.get(k)!r}, not {getattr(cfg, k)!r}; give another --runs")
        t0 = time.time()
        state = fit_classifier(cfg, run, resume=(run / "state.json").exists(), progress=False)
        minutes = (time.time() - t0) / 60
        best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
        entry = {"train": train_labs, "minutes": round(minutes, 1), "in_lab_val": {k: best[k] for k in best
                 if k.startswith(("accuracy", "macro", "ece"))}, "epoch": state["best_epoch"]}
        card = json.loads((run / "model.json").read_text())
        entry["in_lab_val"]["ece_calibrated"] = card["metrics"]["val"].get("ece")
        entry["temperature"] = card.get("temperature")
        if name != "all":
            entry["test"] = test_lab(run, args.data / LABS[name], cache, args.zoom_n)
        results[name] = entry
        (run / "lolo.json").write_text(json.dumps(entry, indent=1))
        report(name, entry)

    rows = sorted((r for r in results.items() if "test" in r[1]), key=lambda r: r[1]["test"]["accuracy_5"])
    emit("")
    emit("| left-out lab (never seen) | crops | 5-class accuracy | 4 types, basophils left out | macro-F1 | trained on | "
         "in-lab val accuracy (5) | zoom 0.5x / 1x / 3x | minutes |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, e in rows:
        t = e["test"]
        emit(f"| {name} | {t['n']} | {t['accuracy_5']:.3f} | {without_basophils(t):.3f} | {t['macro_f1']:.3f} | "
             f"{' + '.join(e['train'])} | "
             f"{e['in_lab_val'].get('accuracy_5', float('nan')):.3f} | {t['zoom']['0.5']:.2f} / {t['zoom']['1.0']:.2f} / "
             f"{t['zoom']['3.0']:.2f} | {e['minutes']} |")
    if "all" in results:
        v = results["all"]["in_lab_val"]
        emit(f"\nAll three labs (in-lab validation only): accuracy {v.get('accuracy', float('nan')):.3f} "
             f"({len(json.loads((args.runs / 'all' / 'model.json').read_text())['classes'])} classes), "
             f"5-class {v.get('accuracy_5', float('nan')):.3f}, ECE {v.get('ece_calibrated')} calibrated "
             f"(uncalibrated {v.get('ece')})")
    write_result("wbc_type_lolo" + ("_looks" if args.looks else "") + ("_dann" if args.targets else "")
                 + ("_noruler" if args.no_extras else "")
                 + ("_" + args.colour if args.colour != "rgb" else "")
                 + ("_" + args.crop_padding if args.crop_padding != "reflect" else ""), OUT)


if __name__ == "__main__":
    main()
