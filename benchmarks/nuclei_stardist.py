"""Nuclei speed side by side with StarDist on the same CPU: a 2048x2048 fluorescence image through
hemaseg's whole nuclei pipeline (nucleus size estimated, post-processing included) against
StarDist's network alone (its default 2D configuration, random weights: only the time counts).
``--task wbc``: the same for the WBC pipeline on ``benchmarks/speed.py``'s 2048x2048 smear (WBC
size estimated), StarDist's network given the smear's grey.

    python benchmarks/nuclei_stardist.py [--task wbc] [--threads 2] [--repeats 3] [--stardist-python PY]
                                         [--backend auto]

``--backend``: where hemaseg's network runs (default ``auto``, what ``hemaseg segment`` and
``hemaseg.segment`` do: ONNX Runtime for a bundled model whose card allows it).

StarDist needs TensorFlow, which hemaseg does not depend on: install it in a separate
environment (``python -m venv sd && sd/bin/pip install tensorflow-cpu stardist``) and pass
its interpreter with ``--stardist-python sd/bin/python``. Without one (or when StarDist does not
import there) its half is reported as skipped. The image is the largest fluorescence image of
the DSB validation split mirrored out to 2048x2048 (nuclei at their native size); without
``../shared/data`` a synthetic image of round nuclei. Run on an idle machine.
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
from record import write_result

HERE = Path(__file__).resolve().parent
SIZE = 2048

STARDIST_CHILD = """
import json, os, sys, time
threads = int(sys.argv[2])
os.environ.setdefault("OMP_NUM_THREADS", str(threads))
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
from stardist.models import Config2D, StarDist2D
image = np.load(sys.argv[1]).astype(np.float32)
image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
with __import__("tempfile").TemporaryDirectory() as tmp:
    model = StarDist2D(Config2D(), name="random", basedir=tmp)  # default configuration, random weights
    model.keras_model.predict(image[None, :64, :64, None], verbose=0)  # warm-up
    times = []
    for _ in range(int(sys.argv[3])):
        t0 = time.perf_counter()
        model.predict(image, n_tiles=None)  # the network alone (no NMS)
        times.append(time.perf_counter() - t0)
import stardist
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "version": stardist.__version__,
                  "tensorflow": tf.__version__}))
"""


def test_image(data: Path, split: Path) -> tuple[np.ndarray, str]:
    """The largest fluorescence validation image mirrored to SIZE x SIZE, or a synthetic one."""
    from nuclei import mirrored

    from hemaseg.engine.evaluate import select_split
    from hemaseg.io.datasets import find_dsb, load_instances
    from hemaseg.tasks.nuclei import modality

    if (data / "dsb2018").is_dir():
        best = None
        for pair in select_split(find_dsb(data / "dsb2018"), split):
            image = load_instances(pair)[0]
            if modality(image) == "fluorescence" and (best is None or image.size > best[0].size):
                best = (image, pair.image.name)
        if best is not None:
            return mirrored(best[0], SIZE), f"DSB validation image {best[1][:12]}… mirrored to {SIZE}x{SIZE}"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    grey = rng.normal(20, 4, (SIZE, SIZE))
    for cy, cx in rng.uniform(10, SIZE - 10, (1500, 2)):
        grey[(yy[int(cy) - 10:int(cy) + 10, int(cx) - 10:int(cx) + 10] - cy) ** 2
             + (xx[int(cy) - 10:int(cy) + 10, int(cx) - 10:int(cx) + 10] - cx) ** 2 < 64] = 180
    img = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, -1), f"synthetic {SIZE}x{SIZE} (no ../shared/data)"


def time_hemaseg(image: np.ndarray, model: str, repeats: int, backend: str = "auto", threads: int = 0
                 ) -> tuple[float, int, str]:
    import hemaseg
    from hemaseg.engine.runtime import load_runner

    loaded = load_runner(model, "cpu", backend, threads)
    hemaseg.segment(np.ascontiguousarray(image[:64, :64]), loaded)  # warm-up
    times, count = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg = hemaseg.segment(image, loaded)
        times.append(time.perf_counter() - t0)
        count = seg.count
    return float(np.median(times)), count, getattr(loaded[0], "backend", "torch")


def time_stardist(python: str, image: np.ndarray, threads: int, repeats: int) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.npy"
        np.save(path, image[..., 0])
        res = subprocess.run([python, "-c", STARDIST_CHILD, str(path), str(threads), str(repeats)],
                             capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"StarDist skipped: {python} could not run it ({last})", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("nuclei", "wbc"), default="nuclei")
    ap.add_argument("--model", help="default: the task's bundled model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--split", type=Path, default=HERE / "splits" / "dsb2018-modality.json")
    ap.add_argument("--stardist-python", default=sys.executable,
                    help="a Python with tensorflow and stardist installed (default: this one)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    model = args.model or args.task
    if args.task == "wbc":
        from speed import smear

        from hemaseg.engine.predict import get_model

        image = smear(SIZE, SIZE, get_model(model)[1]["cell_diameter"])
        source, what = f"benchmarks/speed.py's {SIZE}x{SIZE} smear", "WBCs"
        # StarDist's network takes one channel: the smear's grey.
        grey = np.repeat(image.mean(-1, keepdims=True).astype(np.uint8), 3, -1)
    else:
        image, source = test_image(args.data, args.split)
        what, grey = "nuclei", image
    ours, count, runtime = time_hemaseg(image, model, args.repeats, args.backend, args.threads)
    theirs = time_stardist(args.stardist_python, grey, args.threads, args.repeats)
    title = {"nuclei": "Nuclei", "wbc": "WBCs"}[args.task]
    lines = [f"### {title}, {source}, {args.threads} threads, median of {args.repeats}\n",
             f"| what | seconds | {what} |", "| --- | --- | --- |",
             f"| hemaseg `{model}`: whole pipeline, size estimated, network on {runtime} | {ours:.2f} | {count} |"]
    if theirs:
        lines.append(f"| StarDist {theirs['version']} (TensorFlow {theirs['tensorflow']}): network alone, "
                     f"default 2D config, random weights | {theirs['seconds']:.2f} | |")
        lines.append(f"\nhemaseg / StarDist: **{ours / theirs['seconds']:.2f}**")
    else:
        lines.append("| StarDist | skipped (not installed; see --stardist-python) | |")
    print("\n".join(lines))
    write_result("nuclei_stardist" if args.task == "nuclei" else "wbc_stardist", lines)


if __name__ == "__main__":
    main()
