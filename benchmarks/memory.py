"""Peak memory of `hemaseg segment --task wbc` against image size (issue 20: "memory flat in image
size"; the target is an 8,000² image within 1.5x of the peak on a 2,000² one).

    python benchmarks/memory.py                       # 2000 and 8000 px squares
    python benchmarks/memory.py --sizes 2000 4000 8000 --cell-diameter 280

Each size is a JPEG tiled from the bundled sample photo, segmented in a fresh process (one torch
thread) whose peak resident memory (ru_maxrss) is printed with the wall time. ``--cell-diameter``
(default 280 px, the sample's WBC) skips the size estimation passes; give 0 to estimate.
Not part of the test suite: it takes minutes and gigabytes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from hemaseg.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def tiled_photo(size: int) -> np.ndarray:
    """A size x size smear: the bundled sample photo repeated (mirrored, so seams look natural)."""
    import hemaseg

    tile = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")
    row = np.concatenate([tile, tile[:, ::-1]], 1)
    block = np.concatenate([row, row[::-1]], 0)
    reps = (-(-size // block.shape[0]), -(-size // block.shape[1]), 1)
    return np.ascontiguousarray(np.tile(block, reps)[:size, :size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--cell-diameter", type=float, default=280.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"smear{size}.jpg"
            Image.fromarray(tiled_photo(size)).save(path, quality=92)
            cmd = ["segment", "--task", "wbc", str(path), "--out", str(Path(tmp) / f"out{size}")]
            if args.cell_diameter:
                cmd += ["--cell-diameter", str(args.cell_diameter)]
            t0 = time.time()
            res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True,
                                 env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            peak = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
            rows.append((size, peak, time.time() - t0))
            print(f"{size}x{size}: peak {peak:,.0f} MB, {rows[-1][2]:.0f} s", flush=True)
    base = rows[0][1]
    print("\n| image | peak RSS (MB) | x smallest | seconds |\n| --- | ---: | ---: | ---: |")
    for size, peak, sec in rows:
        print(f"| {size}x{size} | {peak:,.0f} | {peak / base:.2f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
