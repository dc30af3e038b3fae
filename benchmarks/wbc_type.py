"""WBC typing across two labs (seed 003's table): trained on A tested on B, B on A, both mixed,
DANN each way, and what cell normalisation and augmentation buy; then crops/s on this CPU.

    python benchmarks/wbc_type.py [--data ../shared/data] [--runs runs/wbc-type] [--threads 2]
                                  [--only NAME ...] [--epochs 80]

Labs: A = BCCD WBC crops (bccd-wbc), B = wbc-seg Dataset 1 with its class CSV. Each lab is
split on its own (seeded, stratified, 20 % held out; the same split in every run), so no
test crop is ever trained on. Model selection uses the training lab's held-out crops only.
DANN runs see the other lab's *training* images without labels. Prints Markdown tables and
writes benchmarks/results/wbc_type.md.
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


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def lab_splits(data: Path) -> dict[str, tuple[list, list]]:
    from hemaseg.io.datasets import find_labelled_cells
    from hemaseg.tasks.wbc_type.train import split_labelled

    labs = {"A (BCCD)": data / "bccd-wbc", "B (wbc-seg)": data / "wbc-seg"}
    return {k: split_labelled(find_labelled_cells(v), 0.2, 0) for k, v in labs.items()}


def experiments(data: Path, splits) -> dict[str, dict]:
    a_train = [str(p) for p, _ in splits["A (BCCD)"][0]]
    b_train = [str(p) for p, _ in splits["B (wbc-seg)"][0]]
    A, B = str(data / "bccd-wbc"), str(data / "wbc-seg")
    return {
        "A only": {"data": [A]},
        "B only": {"data": [B]},
        "A+B mixed": {"data": [A, B]},
        "A + DANN to B": {"data": [A], "target_images": b_train},
        "B + DANN to A": {"data": [B], "target_images": a_train},
        "A+B, no cell normalisation": {"data": [A, B], "normalise_cells": False},
        "A+B, no augmentation": {"data": [A, B], "augment": False},
        "A only, no cell normalisation": {"data": [A], "normalise_cells": False},
        "A only, no augmentation": {"data": [A], "augment": False},
        # The bundled model: both labs, twice the epochs.
        "A+B mixed, 100 epochs (bundled)": {"data": [A, B], "epochs": 100},
    }


def run_all(args) -> None:
    import torch

    from hemaseg.models.registry import load_model
    from hemaseg.tasks.wbc_type.crops import crop_padding
    from hemaseg.tasks.wbc_type.train import (
        TYPES,
        ClassifyConfig,
        fit_classifier,
        predict_as_trained,
        prepare_crops,
        scores,
    )

    torch.set_num_threads(args.threads)
    splits = lab_splits(args.data)
    exps = experiments(args.data, splits)
    names = args.only or list(exps)
    saved = args.runs / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in names:
        run = args.runs / name.replace(" ", "_").replace("+", "p").replace(",", "")
        cfg = ClassifyConfig(**{"epochs": args.epochs, "cache": str(args.runs / "crops"), **exps[name]})
        t0 = time.time()
        state = fit_classifier(cfg, run, resume=(run / "state.json").exists(), progress=False)
        minutes = (time.time() - t0) / 60
        module, card = load_model(run)
        row = {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "minutes_this_call": round(minutes, 1)}
        for lab, (_, val) in splits.items():
            imgs, parts, ext = prepare_crops([p for p, _ in val], cfg.size, cfg.normalise_cells, Path(cfg.cache),
                                             progress=False, padding=crop_padding(card))
            labels = np.array([TYPES.index(c) for _, c in val])
            row[lab] = scores(predict_as_trained(module, card, imgs, parts, ext), labels)
        results[name] = row
        print(name, json.dumps(row), flush=True)
        saved.write_text(json.dumps(results, indent=2))
    emit("### WBC type across labs (held-out crops; accuracy / macro-F1 over 5 types; 4-type and 2-type accuracy)\n")
    labs = list(splits)
    emit("| training | " + " | ".join(f"tested on {lab}: acc / macro-F1 / acc4 / acc2" for lab in labs) + " |")
    emit("| --- |" + " --- |" * len(labs))
    for name in [n for n in exps if n in results]:
        row = results[name]
        cells = [f"{row[lab]['accuracy']:.3f} / {row[lab]['macro_f1']:.3f} / {row[lab]['accuracy_4']:.3f} / "
                 f"{row[lab]['accuracy_2']:.3f}" for lab in labs]
        emit(f"| {name} | " + " | ".join(cells) + " |")
    emit()
    emit("Held-out crops per lab: " + ", ".join(f"{lab} {len(v)} ({', '.join(f'{c} {sum(1 for _, k in v if k == c)}' for c in TYPES)})"
                                               for lab, (_, v) in splits.items()))
    emit()


def speed(args) -> None:
    import torch

    import hemaseg
    from hemaseg.engine.predict import get_model
    from hemaseg.errors import HemasegError
    from hemaseg.io.datasets import find_labelled_cells
    from hemaseg.tasks.wbc_type.crops import crops_for, predict_crops

    torch.set_num_threads(args.threads)
    try:
        loaded = get_model(args.model)
    except HemasegError as exc:
        print(f"speed skipped: {exc}")
        return
    paths = [p for p, _ in find_labelled_cells(args.data / "bccd-wbc")][:64]
    images = [hemaseg.read_image(p) for p in paths]
    crops_for(images[:2], loaded[1])
    t0 = time.perf_counter()
    cells = crops_for(images, loaded[1])  # one batch, as `hemaseg classify` does
    crops, parts = [c.image for c in cells], [c.parts for c in cells]
    t_norm = time.perf_counter() - t0
    predict_crops(crops[:4], loaded, parts=parts[:4])
    t0 = time.perf_counter()
    predict_crops(crops, loaded, parts=parts)
    t_cls = time.perf_counter() - t0
    emit(f"### Speed, `{args.model}`, {args.threads} threads, {len(images)} BCCD crops\n")
    emit("| step | crops / s |")
    emit("| --- | --- |")
    emit(f"| cell normalisation (WBC segmentation, centre, rescale) | {len(images) / t_norm:.1f} |")
    emit(f"| classification of normalised crops (batch 64) | {len(images) / t_cls:.1f} |")
    emit(f"| both (what `hemaseg classify` does) | {len(images) / (t_norm + t_cls):.1f} |")
    emit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "wbc-type")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--model", default="wbc-type")
    ap.add_argument("--skip-training", action="store_true", help="only the speed table")
    args = ap.parse_args()
    if not args.skip_training:
        run_all(args)
    speed(args)
    write_result("wbc_type_speed" if args.skip_training else "wbc_type", OUT)


if __name__ == "__main__":
    main()
