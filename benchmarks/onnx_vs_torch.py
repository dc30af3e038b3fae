"""torch vs ONNX Runtime on this CPU: seconds to segment a 2048 x 2048 smear with the bundled WBC
and nuclei models, crops/s of the WBC-type classifier, and how closely the outputs agree.
Writes benchmarks/results/onnx_vs_torch.md (a Markdown table) and prints it.

    python benchmarks/onnx_vs_torch.py [--threads 2] [--repeats 3] [--crops 256]

Both backends get the same number of threads (torch.set_num_threads, ONNX Runtime's intra-op
threads) and run the same pipeline (hemaseg.segment with the model's own cell diameter, so one
pass at the trained scale; hemaseg.tasks.wbc_type.crops.predict_crops with its four rotations).
Each figure is the median of --repeats runs after one warm-up run. Agreement: the largest
difference of a class probability, the share of label-map pixels that are the same, and whether
the instance maps are identical (segmentation); the largest probability difference and the share
of crops given the same type (classifier). Needs the train extra (torch) and onnxruntime.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402


def smear(size: int, trained_diameter: float | None) -> np.ndarray:
    """A (size, size, 3) smear from the bundled BCCD photo, scaled so its WBC (~215 px) has the
    trained diameter when one is given, mirrored out to the size wanted."""
    import cv2

    import hemaseg

    photo = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")
    f = (trained_diameter or 215.0) / 215.0
    small = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    ny, nx = -(-size // small.shape[0]), -(-size // small.shape[1])
    row = np.concatenate([small if j % 2 == 0 else small[:, ::-1] for j in range(nx)], 1)
    grid = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(ny)], 0)
    return np.ascontiguousarray(grid[:size, :size])


def timed(fn, repeats: int):
    """(result of the last run, median seconds of ``repeats`` runs after a warm-up run)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--crops", type=int, default=256)
    ap.add_argument("--models", nargs="*", default=["wbc", "nuclei"], help="segmentation models to time (none: "
                                                                           "the classifier only)")
    args = ap.parse_args()

    import onnxruntime
    import torch

    import hemaseg
    from hemaseg.engine.runtime import load_runner
    from hemaseg.tasks.wbc_type.crops import crop_for, predict_crops

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        loaded = {b: load_runner(name, "cpu", b, threads=args.threads) for b in ("torch", "onnx")}
        card = loaded["torch"][1]
        image = smear(args.size, card.get("cell_diameter"))
        d = card.get("cell_diameter")
        res = {}
        for b, model in loaded.items():
            res[b] = timed(lambda: hemaseg.segment(image, model, cell_diameter=d), args.repeats)
            print(f"{name} {b}: {res[b][1]:.2f} s (runs {', '.join(f'{t:.2f}' for t in res[b][2])})", file=sys.stderr)
        a, o = res["torch"][0], res["onnx"][0]
        same_px = float((a.classes == o.classes).mean())
        inst = "yes" if a.instances is None or np.array_equal(a.instances, o.instances) else "no"
        rows.append(f"| {name} segmentation, {args.size} x {args.size} (s) | {res['torch'][1]:.2f} | {res['onnx'][1]:.2f} "
                    f"| {res['torch'][1] / res['onnx'][1]:.2f}x | max prob diff {np.abs(a.probs - o.probs).max():.1e}; "
                    f"labels {100 * same_px:.3f} % same; instances identical: {inst} |")
    # Classifier: crops of the sample photo, cell-normalised as classify does, N of them.
    loaded = {b: load_runner("wbc-type", "cpu", b, threads=args.threads) for b in ("torch", "onnx")}
    card = loaded["torch"][1]
    photo = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")
    rng = np.random.default_rng(0)
    base = [crop_for(photo[y:y + 160, x:x + 160], card) for y, x in zip(rng.integers(0, 320, 16), rng.integers(0, 480, 16))]
    crops = [base[i % len(base)].image for i in range(args.crops)]
    parts = [base[i % len(base)].parts for i in range(args.crops)]
    res = {}
    for b, model in loaded.items():
        res[b] = timed(lambda: predict_crops(crops, model, parts=parts), args.repeats)
        print(f"wbc-type {b}: {len(crops) / res[b][1]:.0f} crops/s", file=sys.stderr)
    p, q = res["torch"][0], res["onnx"][0]
    rate = {b: len(crops) / res[b][1] for b in res}
    rows.append(f"| WBC-type classifier (crops/s, 4 rotations each) | {rate['torch']:.0f} | {rate['onnx']:.0f} "
                f"| {rate['onnx'] / rate['torch']:.2f}x | max prob diff {np.abs(p - q).max():.1e}; "
                f"{100 * float((p.argmax(1) == q.argmax(1)).mean()):.1f} % same type |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# torch vs ONNX Runtime", "",
        f"`python benchmarks/onnx_vs_torch.py --threads {args.threads} --repeats {args.repeats} --size {args.size} "
        f"--crops {args.crops} --models {' '.join(args.models)}`; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads each; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"medians of {args.repeats} runs after a warm-up; load average {load:.1f} when done "
        "(other jobs were running: figures are noisy).", "",
        "| | torch | ONNX Runtime | speed-up | agreement |", "| --- | --- | --- | --- | --- |", *rows,
    ]
    path = write_result("onnx_vs_torch", lines)
    print("\n".join(lines))
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
