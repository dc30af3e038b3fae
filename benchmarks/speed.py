"""Speed of the bundled WBC model on this CPU: images/s at 300x300, seconds at 2048x2048,
peak memory up to 4000x3000, and how closely tiled inference matches a single pass.
Prints Markdown tables.

    python benchmarks/speed.py [--threads 2] [--model wbc] [--backend auto]

``--backend``: where the network runs, as ``hemaseg segment --backend`` (default ``auto``, the
CLI's and ``hemaseg.segment``'s: ONNX Runtime for a bundled model with an ONNX file).

Images are smears at the model's magnification: the bundled BCCD photo scaled so that its
WBC has the trained diameter, mirrored out to the size wanted (many WBCs and red cells).
Each size runs in a fresh subprocess so that its peak resident memory is its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def smear(w: int, h: int, trained_diameter: float) -> np.ndarray:
    """A (h, w, 3) smear at the model's magnification built from the bundled BCCD photo
    (its WBC box is ~215 px across), mirrored in both directions."""
    import cv2

    import hemaseg

    photo = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")
    f = trained_diameter / 215.0
    small = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    ny, nx = -(-h // small.shape[0]), -(-w // small.shape[1])
    row = np.concatenate([small if j % 2 == 0 else small[:, ::-1] for j in range(nx)], 1)
    grid = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(ny)], 0)
    return np.ascontiguousarray(grid[:h, :w])


def run_case(w: int, h: int, n: int, model: str, threads: int, diameter: str, everywhere: bool = False,
             backend: str = "auto") -> dict:
    import torch

    import hemaseg
    from hemaseg.engine.runtime import load_runner

    torch.set_num_threads(threads)
    from hemaseg.tasks.wbc import WBC, asks_red_cells

    loaded = load_runner(model, "cpu", backend, threads)
    trained = loaded[1]["cell_diameter"]
    params = WBC.params(loaded[1])
    if everywhere:  # the cells model's red-cell check on every image, however large
        params = dataclasses.replace(params, red_cells_max_pixels=0)
    image = smear(w, h, trained)
    # "given": --cell-diameter equal to the model's (one pass); "estimated": the default.
    d = trained if diameter == "given" else None
    hemaseg.segment(np.ascontiguousarray(image[:64, :64]), loaded, cell_diameter=trained)  # warm-up
    base = _rss_mb()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        seg = hemaseg.segment(image, loaded, cell_diameter=d, params=params)
        times.append(time.perf_counter() - t0)
    return {"size": f"{w}x{h}", "diameter": diameter, "red_cell_check": asks_red_cells(image.shape, params),
            "wbcs": len(seg.objects), "backend": getattr(loaded[0], "backend", "torch"),
            "seconds": float(np.median(times)),
            "images_per_s": 1 / float(np.median(times)), "peak_mb": _rss_mb(),
            "after_load_mb": base}


def seam_check(model: str, threads: int) -> str:
    """Agreement of tiled (tiles of at most 1024 px, 64 px overlap) and single-pass labels."""
    import torch

    from hemaseg.engine.predict import get_model, predict_probs

    torch.set_num_threads(threads)
    module, card = get_model(model)
    image = smear(2048, 2048, card["cell_diameter"])
    whole = predict_probs(module, card, image, tile=2048).argmax(0)
    tiled = predict_probs(module, card, image, tile=1024, overlap=64).argmax(0)
    fg = (whole > 0) | (tiled > 0)
    return (f"tiled (<= 1024 px tiles) vs single pass on a 2048x2048 smear: {(whole == tiled).mean() * 100:.2f} % of "
            f"pixels agree, {(whole == tiled)[fg].mean() * 100:.2f} % of the pixels either calls WBC")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="wbc")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        w, h, n, diameter, everywhere = args.case.split(",")
        print(json.dumps(run_case(int(w), int(h), int(n), args.model, args.threads, diameter, everywhere == "1",
                                  args.backend)))
        return
    import torch

    # The last field: 1 runs the cells model's red-cell check on every image (by default only on
    # images of at most WbcParams.red_cells_max_pixels).
    cases = [(300, 300, 20, "given", 0), (300, 300, 20, "estimated", 0), (640, 480, 5, "estimated", 0),
             (2048, 2048, 3, "given", 0), (2048, 2048, 3, "estimated", 0), (2048, 2048, 3, "estimated", 1),
             (1000, 750, 2, "given", 0), (2000, 1500, 2, "given", 0), (4000, 3000, 1, "given", 0),
             (4000, 3000, 1, "estimated", 0)]
    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model}, backend {args.backend}\n")
    print(seam_check(args.model, args.threads) + "\n")
    print("| image | cell diameter | red-cell check (`cells`) | network on | WBCs | seconds / image | images / s | "
          "peak RSS (MB) | "
          "RSS after load (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for w, h, n, diameter, everywhere in cases:
        out = subprocess.run([sys.executable, __file__, "--case", f"{w},{h},{n},{diameter},{everywhere}", "--threads",
                              str(args.threads), "--model", args.model, "--backend", args.backend],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        check = "yes" if r["red_cell_check"] else "no"
        print(f"| {r['size']} | {r['diameter']} | {check} | {r['backend']} | {r['wbcs']} | {r['seconds']:.3f} | "
              f"{r['images_per_s']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['after_load_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
