"""Build a two-member WBC typer (``wbc-ensemble``) from trained typers and score it beside them on each
lab's in-lab validation crops. The default: an rgb member and a shape member (luminance beside the
nucleus and cell masks) sharing the five WBC types, the first member (rgb) alone telling them from
PBC's ig, erythroblast and platelet (stop 55: built, not bundled; docs/results.md).

    python benchmarks/wbc_type_ensemble.py --members RGB SHAPE [--out runs/wbc-type-ensemble/model]
        [--split benchmarks/splits/wbc-type-3labs.json] [--shared neutrophil eosinophil monocyte lymphocyte basophil]
        [--decides 0] [--weights W1 W2] [--cache DIR]

``--split``'s ``val`` crops (in-lab: the crops the members chose their checkpoints on) calibrate the ensemble;
run ``python benchmarks/wbc_type_labs.py --model OUT.safetensors`` for its per-lab table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIVE = ["neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", nargs="+", required=True, help="trained typers (weights files or run folders)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "wbc-type-ensemble" / "model")
    ap.add_argument("--split", type=Path, default=HERE / "splits" / "wbc-type-3labs.json")
    ap.add_argument("--shared", nargs="*", default=FIVE, help="classes the members' mean splits (none: all)")
    ap.add_argument("--decides", type=int, default=0, help="the member deciding the other classes")
    ap.add_argument("--weights", type=float, nargs="*", default=None, help="each member's share of the mean (default equal)")
    ap.add_argument("--cache", type=Path, default=HERE.parent / "runs" / "wbc-type-lolo" / "crops")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from hemaseg.tasks.wbc_type.train import make_ensemble

    torch.set_num_threads(args.threads)
    card = make_ensemble(args.members, args.out, args.split, args.cache, shared=args.shared or None,
                         decides=args.decides, weights=args.weights)
    print(json.dumps({"out": str(args.out), "temperature": card["temperature"], "val": card["metrics"]["val"]}, indent=1))


if __name__ == "__main__":
    main()
