"""Peak memory of `hemaseg analyze` against the number of photos (issue 26: "peak memory flat in
the number of images"; the target is 200 photos within 10 % of the peak on 10).

    python benchmarks/analyze_memory.py                      # 10 and 200 copies of a 2000x1500 photo
    python benchmarks/analyze_memory.py --counts 10 50 --cell-diameter 0

The photo is the bundled sample tiled (mirrored) to 2000x1500 px; each batch is that JPEG copied N
times into a temporary folder and analysed in a fresh process (one torch thread) whose peak
resident memory (ru_maxrss) is printed with the wall time. ``--cell-diameter`` skips the per-photo
size estimate (0 estimates). Its default, 184 px, is twice the sample's red cell as the cells model
measures it (92 px): the network then sees the photo at a quarter of the pixels, which keeps 200
photos within reach of a shared 2-core machine; the photo's own arrays (image, instance map,
overlay) are still 2000x1500, and those are what a batch could pile up.
Writes benchmarks/results/analyze_memory.md. Not part of the test suite: 200 photos take minutes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import CHILD, tiled_photo  # noqa: E402
from record import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 200])
    ap.add_argument("--cell-diameter", type=float, default=184.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        Image.fromarray(tiled_photo(2000)[:1500]).save(photo, quality=92)
        for n in args.counts:
            folder = Path(tmp) / f"photos{n}"
            folder.mkdir()
            for k in range(n):
                shutil.copy(photo, folder / f"photo{k:04d}.jpg")
            cmd = ["analyze", str(folder), "--out", str(Path(tmp) / f"out{n}")]
            if args.cell_diameter:
                cmd += ["--cell-diameter", str(args.cell_diameter)]
            t0 = time.time()
            res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True,
                                 env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HEMASEG_QUIET": "1"})
            peak = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
            done = len(json.loads((Path(tmp) / f"out{n}" / "results.json").read_text())["data"])
            rows.append((n, done, peak, time.time() - t0))
            print(f"{n} photos ({done} analysed): peak {peak:,.0f} MB, {rows[-1][3]:.0f} s", flush=True)
            shutil.rmtree(folder)
    base = rows[0][2]
    lines = ["| photos (2000x1500) | analysed | peak RSS (MB) | x fewest | seconds |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {n} | {done} | {peak:,.0f} | {peak / base:.3f} | {sec:.0f} |" for n, done, peak, sec in rows]
    lines += ["", f"`python benchmarks/analyze_memory.py --counts {' '.join(map(str, args.counts))} "
                  f"--cell-diameter {args.cell_diameter:g}`"]
    print("\n" + "\n".join(lines))
    print(write_result("analyze_memory", lines))


if __name__ == "__main__":
    main()
