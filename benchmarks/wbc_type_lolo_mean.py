"""Leave-one-lab-out runs averaged (two inputs, or one recipe's seeds): each left-out lab's 5-class accuracy and
the training labs' held-out crops, for each run alone and for the mean of their calibrated probabilities (a diagnostic).

    python benchmarks/wbc_type_lolo_mean.py --runs runs/lolo/grey runs/lolo/shape [--colours grey -]
                                            [--cache runs/lolo/crops4] [--data ../shared/data]
                                            [--weights 0.5 0.5] [--as-ensemble]

``--as-ensemble`` averages the runs' full probabilities (their classes must be the same) before taking the five
types, as a ``wbc-ensemble`` typer answers (benchmarks/wbc_type_ensemble.py); without it each run's five-type
probabilities are averaged. ``--weights``: each run's share of the mean (default equal).

Each RUNS folder holds without-LAB/ runs of benchmarks/wbc_type_lolo.py. Prints one line per left-out lab; the
in-lab crops are the last run's validation crops (with runs of other seeds, the others may have trained on them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--runs", type=Path, nargs="+", default=[HERE.parent / "runs" / "lolo" / "grey",
                                                              HERE.parent / "runs" / "lolo" / "shape"])
    ap.add_argument("--colours", nargs="*", default=[], help="each run's colour when its cards predate the option "
                                                             "(- : as its card says)")
    ap.add_argument("--cache", type=Path, default=HERE.parent / "runs" / "lolo" / "crops4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=float, nargs="*", default=None, help="each run's share of the mean")
    ap.add_argument("--as-ensemble", action="store_true", help="average the full probabilities, then take the five types")
    args = ap.parse_args()
    weights = np.asarray(args.weights or [1.0] * len(args.runs), float)
    if len(weights) != len(args.runs) or (weights <= 0).any():
        raise SystemExit("--weights: one positive weight per run")
    weights = weights / weights.sum()

    import torch

    from hemaseg.io.datasets import find_labelled_cells
    from hemaseg.models.registry import load_model
    from hemaseg.tasks.wbc_type.crops import CLASSES, crop_padding, group_probs
    from hemaseg.tasks.wbc_type.train import predict_as_trained, prepare_crops

    torch.set_num_threads(args.threads)
    labs = {"wbc-seg": "wbc-seg", "bccd": "bccd-wbc", "pbc": "pbc"}
    for lab, folder in labs.items():
        items = [(p, c) for p, c in find_labelled_cells(args.data / folder) if c in CLASSES]
        split = json.loads((args.runs[-1] / f"without-{lab}" / "split.json").read_text())
        val = [(Path(p), c) for p, c in split["val"] if c in CLASSES]
        models = {}  # each run loaded once, its crops cut as its card says
        for k, runs in enumerate(args.runs):
            m, card = load_model(runs / f"without-{lab}" / "model.safetensors")
            colour = args.colours[k] if k < len(args.colours) else "-"
            if colour != "-":
                card.setdefault("normalization", {})["colour"] = colour
            models[f"{k}:{runs.name}"] = (m, card)
        out = {}
        for name, its in (("left out", items), ("in-lab val", val)):
            qs, full = {}, []
            for key, (m, card) in models.items():
                img, parts, ext = prepare_crops([p for p, _ in its], int(card["input_size"]),
                                                bool(card.get("cell_normalised", True)), args.cache, progress=False,
                                                padding=crop_padding(card))
                probs = predict_as_trained(m, card, img, parts, ext)
                names, q = group_probs(probs, list(card["classes"]), 3)
                qs[key] = q
                full.append((probs, list(card["classes"])))
            truth = np.array([names.index(c.upper()) for _, c in its])
            if args.as_ensemble:
                if any(c != full[0][1] for _, c in full):
                    raise SystemExit("--as-ensemble: the runs' classes differ")
                _, qs["mean"] = group_probs(sum(w * p for w, (p, _) in zip(weights, full)), full[0][1], 3)
            else:
                qs["mean"] = sum(w * q for w, q in zip(weights, list(qs.values())))
            out[name] = {k: round(float((q.argmax(1) == truth).mean()), 3) for k, q in qs.items()}
        print(lab, json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
