"""WBC types called on labs with no type labels: the share of each type a typer calls on the WBC crops of
each TXL-PBC source (PBC, Raabin, BCCD, BCDD; cut by benchmarks/txl_wbc_crops.py), beside the shares a
normal blood differential has.

    python benchmarks/txl_wbc_crops.py --out runs/txl-wbc-crops --per-source 400
    python benchmarks/wbc_type_unlabelled.py [--crops runs/txl-wbc-crops] [--models wbc-type runs/X ...]

No accuracy: TXL-PBC boxes WBCs without typing them. A diagnostic only: a typer that calls a quarter
of a lab's WBCs basophils or immature granulocytes, or hardly any lymphocytes, is wrong there
whatever the true shares of that lab's fields (a normal adult differential: neutrophils 40-75 %,
lymphocytes 20-45 %, monocytes 2-10 %, eosinophils 1-6 %, basophils 0-2 %; Raabin-WBC's own
published counts are close to it). PBC's TXL fields come from a data set drawn evenly over its types,
so its shares are not a differential. Writes benchmarks/results/wbc_type_unlabelled.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from record import write_result

HERE = Path(__file__).resolve().parent
NORMAL = {"neutrophil": "40-75", "lymphocyte": "20-45", "monocyte": "2-10", "eosinophil": "1-6", "basophil": "0-2",
          "ig": "0", "erythroblast": "0", "platelet": "0", "no WBC found": "0"}


def shares(model: str, folder: Path) -> tuple[int, dict[str, float]]:
    """(number of crops, {class: share of the crops called it}) of ``model`` on the crops in ``folder``."""
    from hemaseg.engine.predict import get_model
    from hemaseg.io.images import list_images, read_image
    from hemaseg.tasks.wbc_type.crops import NO_WBC, UNSURE, crops_for, prediction_rows

    card = get_model(model)[1]
    files = list_images(folder)
    cells = [c for i in range(0, len(files), 64) for c in crops_for([read_image(p) for p in files[i:i + 64]], card)]
    # as `hemaseg classify -m 4` names them: every class of the model, the crop's most probable one
    names, rows = prediction_rows(cells, model, mode=4 if len(card["classes"]) == 8 else 3)
    calls = [label.lower() for label, _ in rows]
    out = {n.lower(): calls.count(n.lower()) / max(1, len(calls)) for n in names}
    out["no WBC found"] = calls.count(NO_WBC.lower()) / max(1, len(calls))
    if UNSURE.lower() in calls:  # -m 3: a crop likelier a type it has no column for (ig)
        out["unsure"] = calls.count(UNSURE.lower()) / max(1, len(calls))
    return len(files), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=Path, default=HERE.parent / "runs" / "txl-wbc-crops")
    ap.add_argument("--models", nargs="+", default=["wbc-type"])
    ap.add_argument("--sources", nargs="*", default=["Raabin-WBC", "BCDD", "BCCD", "PBC"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="wbc_type_unlabelled")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = [f"### WBC types called on TXL-PBC's WBC crops (no type labels), crops in `{args.crops.name}`", ""]
    for model in args.models:
        rows = {s: shares(model, args.crops / s) for s in args.sources if (args.crops / s).is_dir()}
        classes = list(next(iter(rows.values()))[1]) if rows else []
        out += [f"`{model}`: share of each source's crops called each type", "",
                "| source | crops | " + " | ".join(classes) + " |", "| --- | ---: |" + " ---: |" * len(classes)]
        for s, (n, sh) in rows.items():
            out.append(f"| {s} | {n} | " + " | ".join(f"{100 * sh[c]:.0f} %" for c in classes) + " |")
        out.append("| a normal differential | | " + " | ".join(f"{NORMAL.get(c, '?')} %" for c in classes) + " |")
        out.append("")
    print("\n".join(out))
    write_result(args.name, out)


if __name__ == "__main__":
    main()
