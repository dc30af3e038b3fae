"""`hemaseg classify` end to end on this CPU: a folder of single-WBC crops from every lab in
../shared/data (PBC, BCCD, wbc-seg; drawn at random with a fixed seed, as many from each lab as
it has up to an equal share, the largest lab making up the rest), timed as a user runs it (a new process: start-up, reading,
cell normalisation, classification, the CSV), then the steady rate without start-up.

    python benchmarks/classify_speed.py [--data ../shared/data] [--n 1000] [--backend auto] [--repeat 2]

Writes benchmarks/results/classify_speed.md. The crops are linked, not copied, into a temporary
folder; nothing is written into ../shared.
"""
from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_result

HERE = Path(__file__).resolve().parent
LABS = {"pbc": "pbc", "bccd": "bccd-wbc", "wbc-seg": "wbc-seg"}


def crops(data: Path, n: int, seed: int) -> list[tuple[str, Path]]:
    """(lab, path) of ``n`` labelled crops, an equal share from each lab (seeded; a lab with fewer gives all it has)."""
    from hemaseg.io.datasets import find_labelled_cells

    rng = random.Random(seed)
    found = {lab: sorted(p for p, _ in find_labelled_cells(data / folder)) for lab, folder in LABS.items()}
    out = []
    for k, lab in enumerate(sorted(found, key=lambda lab: len(found[lab]))):  # smallest lab first; the largest fills up
        share = (n - len(out)) // (len(LABS) - k)
        out += [(lab, p) for p in rng.sample(found[lab], min(share, len(found[lab])))]
    return out


def run_cli(folder: Path, out: Path, backend: str) -> float:
    """Wall-clock seconds of one `hemaseg classify` process over ``folder``."""
    cmd = [str(Path(sys.executable).parent / "hemaseg"), "classify", "-d", str(folder), "-o", str(out), "-m", "3",
           "--backend", backend]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each timing; the fastest is kept")
    args = ap.parse_args()

    chosen = crops(args.data, args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder, one = Path(tmp) / "crops", Path(tmp) / "one"
        folder.mkdir()
        one.mkdir()
        for i, (lab, p) in enumerate(chosen):
            (folder / f"{i:05d}_{lab}{p.suffix}").symlink_to(p.resolve())
        (one / f"00000{chosen[0][1].suffix}").symlink_to(chosen[0][1].resolve())
        start = min(run_cli(one, Path(tmp) / "one.csv", args.backend) for _ in range(args.repeat))
        total = min(run_cli(folder, Path(tmp) / "all.csv", args.backend) for _ in range(args.repeat))
        with open(Path(tmp) / "all.csv") as fh:
            rows = list(csv.DictReader(fh))
    n = len(chosen)
    counts = {lab: sum(1 for k, _ in chosen if k == lab) for lab in LABS}
    lines = [f"`hemaseg classify -m 3 --backend {args.backend}` on {n} crops ("
             + ", ".join(f"{lab} {c}" for lab, c in counts.items()) + f"), {len(rows)} rows written; "
             f"fastest of {args.repeat} runs each",
             "",
             "| measure | value |",
             "| --- | --- |",
             f"| one crop (start-up: imports, models) | {start:.2f} s |",
             f"| {n} crops, end to end | {total:.2f} s |",
             f"| **end to end, crops / s** | **{n / total:.1f}** |",
             f"| steady (start-up taken off), crops / s | {(n - 1) / max(total - start, 1e-9):.1f} |"]
    print("\n".join(lines))
    write_result("classify_speed", lines)


if __name__ == "__main__":
    main()
