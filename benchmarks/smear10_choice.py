"""smear10 model choice on in-lab real photos: TXL-PBC *val* fields (never trained on: training draws
its real fields from ``images/train``; no benchmark scores them), every one parasite-free. Per model
and source: infected red cells called (objects, as benchmarks/smear10.py counts them), fields with
any, and the share of boxes whose centre lies in the right group (its rule too). One line each.

    python benchmarks/smear10_choice.py smear10 runs/smear10-realfields2 [--data ../shared/data]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from smear10 import _group, box_group, right_cells, txl_fields, with_typer

import hemaseg
from hemaseg.io.images import read_image

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--post", nargs="*", default=[], metavar="KEY=VALUE",
                    help="post-processing knobs over each model's card (as `hemaseg segment --post`)")
    args = ap.parse_args()
    from hemaseg.cli import post_params
    from hemaseg.tasks import get_task
    from hemaseg.tasks.smear10.classes import GROUPS

    fields = txl_fields(args.data, "val")
    for model in args.models:
        loaded = with_typer(model, None)
        params = post_params(get_task("smear10"), loaded[1], args.post) if args.post else None
        cms, calls, wbc_exact, plt_found = {}, {}, {}, {}
        for source, entries in fields.items():
            cm, calls[source], wbc_exact[source], plt_found[source] = np.zeros((3, 4), int), [], [], []
            for path, boxes in entries:
                seg = hemaseg.segment(read_image(path), loaded, params=params)
                groups = _group(seg.classes)
                for row, box in boxes:
                    cm[row, box_group(groups, *box)] += 1
                calls[source].append(sum(o["class_name"] == "infected rbc" for o in seg.objects))
                # WBC objects against WBC boxes: a white-cell object smaller than a red cell counts here
                found = len(np.unique(seg.instances[np.isin(seg.classes, GROUPS["wbc"])]))
                wbc_exact[source].append(found == sum(row == 1 for row, _ in boxes))
                plt = len(np.unique(seg.instances[np.isin(seg.classes, GROUPS["platelet"])]))
                plt_found[source].append((plt, sum(row == 2 for row, _ in boxes)))
            cms[source] = cm
        cms["all"], calls["all"] = sum(cms.values()), [c for v in calls.values() for c in v]
        wbc_exact["all"] = [e for v in wbc_exact.values() for e in v]
        plt_found["all"] = [e for v in plt_found.values() for e in v]
        for source in ["all", *fields]:
            n = np.array(calls[source])
            print(f"{model}{' ' + ' '.join(args.post) if args.post else ''} | {source} | fields {len(n)} | "
                  f"infected called {n.sum()} ({(n > 0).sum()} fields) | right group RBC / WBC / platelet "
                  f"{' / '.join(right_cells(cms[source])[1])} | WBC count exact {np.mean(wbc_exact[source]):.3f} | "
                  f"platelet objects / boxes {sum(f for f, _ in plt_found[source])} / "
                  f"{sum(b for _, b in plt_found[source])}, count exact "
                  f"{np.mean([f == b for f, b in plt_found[source]]):.3f}", flush=True)


if __name__ == "__main__":
    main()
