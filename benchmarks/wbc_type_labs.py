"""WBC typers side by side on each lab's held-out crops: the seeded 20 % validation split of every
lab (the split training uses, so no model listed here trained on these crops), per lab, worst
first: 5-class accuracy (prediction = the most probable of the five WBC types), 8-class accuracy
on PBC for models that know its eight classes, expected calibration error, crops/s.

    python benchmarks/wbc_type_labs.py [--data ../shared/data] [--model wbc-type --model runs/x ...]
                                       [--threads 2]

A lab a model did not train on is marked "(never seen)": that is its cross-lab figure. Writes
benchmarks/results/wbc_type_labs.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from record import write_result

HERE = Path(__file__).resolve().parent
LABS = {"bccd": "bccd-wbc", "wbc-seg": "wbc-seg", "pbc": "pbc"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=HERE.parent / "runs" / "wbc-type-lolo" / "crops")
    args = ap.parse_args()

    import torch

    from hemaseg.io.datasets import find_labelled_cells
    from hemaseg.models.registry import load_model
    from hemaseg.tasks.wbc_type.crops import CLASSES, PBC_CLASSES, crop_padding, group_probs
    from hemaseg.tasks.wbc_type.train import (
        expected_calibration_error,
        predict_as_trained,
        prepare_crops,
        split_labelled,
    )

    torch.set_num_threads(args.threads)
    out = ["| model | lab | crops (5 types / all) | 5-class accuracy | 8-class accuracy | ECE | trained on this lab |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in args.model or ["wbc-type"]:
        model, card = load_model(name)
        trained = " ".join(card.get("training", {}).get("data", []))
        rows = []
        for lab, folder in LABS.items():
            _, val = split_labelled(find_labelled_cells(args.data / folder), 0.2, 0)
            img, parts, ext = prepare_crops([p for p, _ in val], int(card["input_size"]),
                                            bool(card.get("cell_normalised", True)), args.cache, progress=False,
                                            padding=crop_padding(card))
            t0 = time.perf_counter()
            probs = predict_as_trained(model, card, img, parts, ext)
            speed = len(val) / (time.perf_counter() - t0)
            five = [(i, c) for i, (_, c) in enumerate(val) if c in CLASSES]
            names, q = group_probs(probs[[i for i, _ in five]], list(card["classes"]), 3)
            acc5 = float((q.argmax(1) == np.array([names.index(c.upper()) for _, c in five])).mean())
            acc8, ece = "-", "-"
            if all(c in card["classes"] for c in PBC_CLASSES):
                truth = np.array([list(card["classes"]).index(c) for _, c in val])
                acc8 = f"{float((probs.argmax(1) == truth).mean()):.3f}"
                ece = f"{expected_calibration_error(probs, truth):.3f}"
            seen = folder in trained
            rows.append((acc5, f"| {name} | {lab}{'' if seen else ' (never seen)'} | {len(five)} / {len(val)} | {acc5:.3f} | {acc8} | "
                         f"{ece} | {'yes' if seen else 'no'} |"))
            print(json.dumps({"model": name, "lab": lab, "acc5": acc5, "acc8": acc8, "classifier_crops_per_s": speed}),
                  flush=True)
        out += [r for _, r in sorted(rows)]
    print("\n".join(out))
    write_result("wbc_type_labs", out)


if __name__ == "__main__":
    main()
