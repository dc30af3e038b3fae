"""Export every bundled model that ONNX can hold to ``src/hemaseg/weights/<name>.onnx`` and note the file
in its card (``"onnx"``: file, opset, size, sha256, largest probability difference from torch on the
bundled sample). A model that cannot be exported (the Mask R-CNN cells model) gets ``"onnx"``: the
reason and the fallback its task runs without torch. Needs torch and onnx; run from the repository root:

    .venv/bin/python benchmarks/export_bundled.py
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from hemaseg import classify, read_image, segment
from hemaseg.data.transforms import input_channels
from hemaseg.engine.predict import get_model
from hemaseg.engine.runtime import as_runner
from hemaseg.errors import HemasegError
from hemaseg.io.writers import write_text
from hemaseg.models.registry import SAMPLE_PHOTO, WEIGHTS_DIR
from hemaseg.pipelines.export import CLASSIFIERS, DEFAULT_OPSET, export_onnx

MAX_BYTES = 10 * 1024 * 1024  # each bundled ONNX file stays under 10 MB
# Models ONNX cannot hold, and the bundled model their task runs instead in the light install.
FALLBACK = {"cells-maskrcnn": "cells"}
AUTO_MARGIN = 1.1  # ONNX Runtime may be this much slower than torch per batch and still be auto's choice


def note_in_card(name: str, onnx: dict) -> None:
    """Set the bundled card's ``"onnx"`` entry, keeping the file's own indentation (a small diff)."""
    path = WEIGHTS_DIR / f"{name}.json"
    text = path.read_text()
    second = text.splitlines()[1]
    card = json.loads(text)
    card["onnx"] = onnx
    write_text(path, json.dumps(card, indent=len(second) - len(second.lstrip())) + "\n")


def decide_auto(name: str, card: dict) -> dict:
    """Whether ``auto`` runs ``name`` on ONNX Runtime: its outputs agree with torch's through the whole
    pipeline on the bundled sample photo (the same label and instance maps for a U-Net, the same
    type and probabilities within 1e-3 for a classifier), and it is faster (median of 3 passes of the
    network on a 1024 x 1024 tile, this machine's threads), or not more than AUTO_MARGIN slower."""
    image = read_image(SAMPLE_PHOTO)
    if card["architecture"]["name"] in CLASSIFIERS:
        crops = [image[y:y + 160, x:x + 160] for y in (60, 200, 300) for x in (80, 260, 420)]
        p = {b: np.array([list(classify(c, model=name, backend=b).values()) for c in crops]) for b in ("torch", "onnx")}
        agrees = bool(np.abs(p["torch"] - p["onnx"]).max() <= 1e-3
                      and (p["torch"].argmax(1) == p["onnx"].argmax(1)).all())
        size = card.get("input_size", 96)
        channels = input_channels(card.get("normalization", {}).get("colour", "rgb"))
        batch = np.random.default_rng(0).normal(size=(64, size, size, channels))
    else:
        seg = {b: segment(image, model=name, backend=b) for b in ("torch", "onnx")}
        agrees = bool((seg["torch"].classes == seg["onnx"].classes).all()
                      and (seg["torch"].instances is None or (seg["torch"].instances == seg["onnx"].instances).all()))
        batch = np.random.default_rng(0).normal(size=(1, 1024, 1024, 3))
    batch = batch.astype(np.float32)
    seconds = {}
    for b in ("torch", "onnx"):
        run = as_runner(get_model(name, "cpu", b)[0])
        run(batch)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - t)
        seconds[b] = float(np.median(times))
    # ONNX Runtime unless torch is clearly faster: where neither is, not importing torch saves ~3-4 s
    # of every process's start-up (a one-crop `hemaseg classify`: 0.9 s on ONNX Runtime, 4.8 s with torch).
    faster = seconds["onnx"] <= AUTO_MARGIN * seconds["torch"]
    return {"auto": agrees and faster, "pipeline_agrees": agrees,
            "seconds_per_batch": {b: round(v, 3) for b, v in seconds.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("models", nargs="*", help="bundled names (default: all)")
    args = ap.parse_args()
    names = args.models or sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
    failed = 0
    for name in names:
        out = WEIGHTS_DIR / f"{name}.onnx"
        try:
            entry = export_onnx(name, out, opset=args.opset, write_card=False)
        except HemasegError as exc:
            onnx = {"reason": getattr(exc, "reason", str(exc))}
            if name in FALLBACK:
                onnx["fallback"] = FALLBACK[name]
            note_in_card(name, onnx)
            print(f"{name}: not exported ({onnx['reason']})", file=sys.stderr)
            failed += name not in FALLBACK
            continue
        note_in_card(name, entry)  # the file first: decide_auto runs it
        entry.update(decide_auto(name, json.loads((WEIGHTS_DIR / f"{name}.json").read_text())))
        note_in_card(name, entry)
        if entry["bytes"] >= MAX_BYTES:
            print(f"{name}: {entry['bytes']} bytes, over the 10 MB limit", file=sys.stderr)
            failed += 1
        print(f"{name}: {out.name} {entry['bytes'] / 1e6:.2f} MB, opset {entry['opset']}, "
              f"max |p_onnx - p_torch| = {entry['max_abs_prob_diff']:.2g}, pipeline agrees: {entry['pipeline_agrees']}, "
              f"s/batch {entry['seconds_per_batch']}, auto -> {'onnx' if entry['auto'] else 'torch'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
