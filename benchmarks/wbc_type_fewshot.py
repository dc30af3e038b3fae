"""Few-shot adaptation of the WBC typer to a lab it never saw: the leave-one-lab-out model of each
lab, fine-tuned (``hemaseg train wbc-type --init``) on k labelled crops per class of that lab
(k = 0, 5, 10, 25, 50; seeded draw), tested on the lab's other crops; and, to show what it
forgets, on the in-lab validation crops of the labs it was trained on.

    python benchmarks/wbc_type_fewshot.py [--data ../shared/data] [--runs runs/wbc-type-lolo] [--threads 2]
                                          [--shots 0 5 10 25 50] [--epochs 8] [--only bccd wbc-seg pbc] [--replay]
                                          [--cache RUNS/crops]

Needs the runs of benchmarks/wbc_type_lolo.py (``RUNS/without-<lab>``). Scored on the five WBC
types (prediction = the most probable of the five). Prints a Markdown table and writes
benchmarks/results/wbc_type_fewshot.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from record import write_result

HERE = Path(__file__).resolve().parent
LABS = {"bccd": "bccd-wbc", "wbc-seg": "wbc-seg", "pbc": "pbc"}
OUT: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def accuracy5(model_path: Path, items: list, cache: Path) -> float:
    """5-class accuracy of a model on (path, class) crops."""
    from hemaseg.models.registry import load_model
    from hemaseg.tasks.wbc_type.crops import crop_padding, group_probs
    from hemaseg.tasks.wbc_type.train import predict_as_trained, prepare_crops

    if not items:
        return float("nan")
    model, card = load_model(model_path)
    img, parts, ext = prepare_crops([p for p, _ in items], int(card["input_size"]), True, cache, progress=False,
                                    padding=crop_padding(card))
    probs = predict_as_trained(model, card, img, parts, ext)
    names, q = group_probs(probs, list(card["classes"]), 3)
    truth = np.array([names.index(c.upper()) for _, c in items])
    return float((q.argmax(1) == truth).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "wbc-type-lolo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shots", type=int, nargs="*", default=[0, 5, 10, 25, 50])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=list(LABS))
    ap.add_argument("--cache", type=Path, default=None, help="normalised crops (default RUNS/crops)")
    ap.add_argument("--replay", action="store_true", help="the fine-tune also replays the two training labs' crops "
                                                          "(half the draws), against forgetting")
    args = ap.parse_args()

    import torch

    from hemaseg.io.datasets import find_labelled_cells
    from hemaseg.tasks.wbc_type.crops import CLASSES
    from hemaseg.tasks.wbc_type.train import ClassifyConfig, fit_classifier

    torch.set_num_threads(args.threads)
    cache = args.cache or args.runs / "crops"
    rows = {}
    for lab in args.only:
        base = args.runs / f"without-{lab}" / "model.safetensors"
        if not base.exists():
            emit(f"{lab}: no leave-one-out run at {base.parent}; run benchmarks/wbc_type_lolo.py first")
            continue
        items = [(p, c) for p, c in find_labelled_cells(args.data / LABS[lab]) if c in CLASSES]
        rng = np.random.default_rng(0)
        order = {c: rng.permutation([i for i, (_, k) in enumerate(items) if k == c]).tolist() for c in CLASSES}
        split = json.loads((args.runs / f"without-{lab}" / "split.json").read_text())
        seen_val = [(Path(p), c) for p, c in split["val"] if c in CLASSES]
        for k in args.shots:
            shots = {i for c in CLASSES for i in order[c][:k]}
            test = [it for i, it in enumerate(items) if i not in shots and
                    # the test set is the same for every k: crops beyond the largest draw
                    all(i not in order[c][:max(args.shots)] for c in CLASSES)]
            if k == 0:
                model_path, minutes = base, 0.0
            else:
                tag = f"fewshot{'-replay' if args.replay else ''}-{lab}-{k}"
                folder = args.runs / tag / "crops-in"
                shutil.rmtree(folder, ignore_errors=True)
                for i in sorted(shots):
                    p, c = items[i]
                    (folder / c).mkdir(parents=True, exist_ok=True)
                    (folder / c / f"{i}_{Path(p).name}").symlink_to(Path(p).resolve())
                run = args.runs / tag / "run"
                shutil.rmtree(run, ignore_errors=True)
                replay = [str(args.data / LABS[o]) for o in LABS if o != lab] if args.replay else []
                cfg = ClassifyConfig(data=[str(folder)], init=str(base), epochs=args.epochs, lr=5e-4, replay=replay,
                                     samples_per_epoch=256, val_fraction=0.2, cache=str(cache), patience=args.epochs)
                t0 = time.time()
                fit_classifier(cfg, run, progress=False)
                model_path, minutes = run / "model.safetensors", (time.time() - t0) / 60
            rows[(lab, k)] = {"test": accuracy5(model_path, test, cache), "n_test": len(test),
                              "other_labs_val": accuracy5(model_path, seen_val, cache), "minutes": round(minutes, 1)}
            emit(f"{lab} k={k}: {rows[(lab, k)]}")
    emit("")
    emit("| left-out lab | crops per class | 5-class accuracy on its other crops | trained labs' val (forgetting) | "
         "minutes |")
    emit("| --- | --- | --- | --- | --- |")
    for (lab, k), r in sorted(rows.items()):
        emit(f"| {lab} | {k} | {r['test']:.3f} (n={r['n_test']}) | {r['other_labs_val']:.3f} | {r['minutes']} |")
    write_result("wbc_type_fewshot_replay" if args.replay else "wbc_type_fewshot", OUT)


if __name__ == "__main__":
    main()
