"""Peak memory of `hemaseg segment --task wbc` against image size (issue 20: "memory flat in image
size"; the target is an 8,000² image within 1.5x of the peak on a 2,000² one).

    python benchmarks/memory.py                       # 2000 and 8000 px squares
    python benchmarks/memory.py --sizes 2000 4000 8000 --cell-diameter 280

Each size is a JPEG tiled from the bundled sample photo, segmented in a fresh process (one torch
thread) whose peak resident memory (ru_maxrss) is printed with the wall time. ``--cell-diameter``
(default 280 px, the sample's WBC) skips the size estimation passes; give 0 to estimate.
Not part of the test suite: it takes minutes and gigabytes.

    python benchmarks/memory.py --slide 20000         # a 20,000² pyramidal TIFF (issue 26: under 3 GB)

writes a pyramidal tiled TIFF tile by tile (its resolution tags give the WBC ``--cell-diameter`` px)
and segments it: read region by region, the label PNG written a band of rows at a time.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402

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


def pyramid_tiff(path: Path, size: int, pixel_size: float, tile: int = 512) -> Path:
    """A size x size pyramidal tiled TIFF of the tiled sample (full resolution, then each level
    halved down to ~1000 px, as SubIFDs), written tile by tile: never whole in memory. Its
    resolution tags say ``pixel_size`` µm per px."""
    import cv2
    import tifffile

    block = tiled_photo(2 * tile)  # a seamless (mirrored) pattern, repeated

    def tiles(n: int, f: int):
        pattern = cv2.resize(block, (2 * tile // f, 2 * tile // f), interpolation=cv2.INTER_AREA) if f > 1 else block
        reps = np.tile(pattern, (max(1, f), max(1, f), 1))[:2 * tile, :2 * tile]
        for y in range(0, n, tile):
            for x in range(0, n, tile):
                yield np.ascontiguousarray(reps[y % (2 * tile):][:tile, x % (2 * tile):][:, :tile]
                                           if reps.shape[0] >= 2 * tile else reps[:tile, :tile])

    levels = []
    n = size
    while n > 1000:
        levels.append(n)
        n //= 2
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        res = dict(resolution=(1e4 / pixel_size, 1e4 / pixel_size), resolutionunit="CENTIMETER")
        for k, n in enumerate(levels):
            kw = dict(subifds=len(levels) - 1, **res) if k == 0 else dict(subfiletype=1)
            tif.write(tiles(n, 2 ** k), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                      compression="zlib", metadata=None, **kw)
    return path


def slide(size: int, cell_diameter: float) -> None:
    """Peak memory of `segment --task wbc` on a size x size pyramidal TIFF whose pixel size (resolution
    tags) gives a WBC of ``cell_diameter`` px (12 µm): read region by region, labels written in bands."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pyramid_tiff(Path(tmp) / f"slide{size}.tif", size, 12.0 / cell_diameter)
        cmd = ["segment", "--task", "wbc", str(path), "--out", str(Path(tmp) / "out")]
        t0 = time.time()
        res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HEMASEG_QUIET": "1"})
        peak = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
        result = json.loads((Path(tmp) / "out" / f"slide{size}.json").read_text())
        lines = ["| slide (pyramidal tiled TIFF) | WBC diameter from its pixel size | WBCs | peak RSS (MB) | seconds |",
                 "| --- | ---: | ---: | ---: | ---: |",
                 f"| {size}x{size} | {result['cell_diameter']} px | {result['count']} | {peak:,.0f} | "
                 f"{time.time() - t0:.0f} |", "",
                 f"`python benchmarks/memory.py --slide {size} --cell-diameter {cell_diameter:g}`"]
        print("\n".join(lines))
        print(write_result("slide_memory", lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--cell-diameter", type=float, default=280.0)
    ap.add_argument("--slide", type=int, default=0, help="instead: a SLIDE x SLIDE pyramidal TIFF (e.g. 20000)")
    args = ap.parse_args()
    if args.slide:
        return slide(args.slide, args.cell_diameter)
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
