"""Speed of the bundled WBC model on this CPU: images/s at 300x300, seconds at 2048x2048,
peak memory at several sizes up to 4000x3000. Prints a Markdown table.

    python benchmarks/speed.py [--threads 2] [--model wbc]

Each size runs in a fresh subprocess so that its peak resident memory is its own.
Images are a BCCD-like photo (the bundled sample) resized, so the work is realistic.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(w: int, h: int, n: int, model: str, threads: int, diameter: str) -> dict:
    import cv2
    import numpy as np
    import torch

    import hemaseg
    from hemaseg.infer.segment import get_model

    torch.set_num_threads(threads)
    sample = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")
    image = cv2.resize(sample, (w, h), interpolation=cv2.INTER_LINEAR)
    loaded = get_model(model)
    trained = loaded[1]["cell_diameter"]
    # "fixed": cells already at the model's diameter (one pass); "estimated": the default.
    d = trained if diameter == "fixed" else None
    hemaseg.segment(np.ascontiguousarray(image[:64, :64]), loaded, cell_diameter=trained)  # warm-up
    base = _rss_mb()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        hemaseg.segment(image, loaded, cell_diameter=d)
        times.append(time.perf_counter() - t0)
    return {"size": f"{w}x{h}", "diameter": diameter, "seconds": float(np.median(times)),
            "images_per_s": 1 / float(np.median(times)), "peak_mb": _rss_mb(), "after_load_mb": base}


def seam_check(model: str, threads: int) -> str:
    """Agreement of tiled (tiles of at most 512 px, 64 px overlap) and single-pass labels on a 1024x1024 photo."""
    import cv2
    import numpy as np
    import torch

    import hemaseg
    from hemaseg.infer.segment import get_model, predict_probs

    torch.set_num_threads(threads)
    module, card = get_model(model)
    sample = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")
    image = cv2.resize(sample, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    whole = predict_probs(module, card, image, tile=1024).argmax(0)
    tiled = predict_probs(module, card, image, tile=512, overlap=64).argmax(0)
    return f"tiled vs single-pass labels on a 1024x1024 photo: {(whole == tiled).mean() * 100:.2f} % of pixels agree"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="wbc")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        w, h, n, diameter = args.case.split(",")
        print(json.dumps(run_case(int(w), int(h), int(n), args.model, args.threads, diameter)))
        return
    cases = [(300, 300, 20, "fixed"), (300, 300, 20, "estimated"), (640, 480, 5, "fixed"),
             (2048, 2048, 3, "fixed"), (2048, 2048, 3, "estimated"), (1000, 750, 1, "fixed"),
             (2000, 1500, 1, "fixed"), (4000, 3000, 1, "fixed")]
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model}\n")
    print(seam_check(args.model, args.threads) + "\n")
    print("| image | cell diameter | seconds / image | images / s | peak RSS (MB) | RSS after model load (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for w, h, n, diameter in cases:
        out = subprocess.run([sys.executable, __file__, "--case", f"{w},{h},{n},{diameter}", "--threads",
                              str(args.threads), "--model", args.model], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['size']} | {r['diameter']} | {r['seconds']:.3f} | {r['images_per_s']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['after_load_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
