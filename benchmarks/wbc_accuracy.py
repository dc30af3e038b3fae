"""Accuracy of WBC models on the seeded wbc-seg validation split, as-is and on harder
looks (recoloured, magnified 2.5x as another lab's images come), and WBC counts on BCCD
photos (another lab, another stain, ~2.7x magnification). Prints Markdown tables.

    python benchmarks/wbc_accuracy.py [--models wbc runs/wbc_noaug] [--data ../shared/data]

The validation split is benchmarks/splits/wbc-seg.json (seed 0, 20 %), the one the bundled
model was trained with; no training image is scored.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

import hemaseg
from hemaseg.engine.evaluate import select_split
from hemaseg.engine.predict import get_model
from hemaseg.io.datasets import find_pairs, load_pair, read_voc
from hemaseg.metrics import wbc_scores

HERE = Path(__file__).resolve().parent


def recolour(image: np.ndarray, look: str) -> np.ndarray:
    """Deterministic stain/colour changes: 'pink' (white background, magenta stain), 'blue', 'grey'."""
    if look == "grey":
        g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return np.dstack([g] * 3)
    # White-balance on the bright background first, as a different lamp/camera would.
    ref = np.percentile(image.reshape(-1, 3), 95, axis=0)
    wb = np.clip(image.astype(np.float32) * (245.0 / np.maximum(ref, 1)), 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(wb, cv2.COLOR_RGB2HSV).astype(np.int32)
    shift = {"pink": -15, "blue": 30}[look]  # OpenCV hue units (degrees / 2)
    hsv[..., 0] = (hsv[..., 0] + shift) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.3, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def red_cells_as_cytoplasm(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The red cells (stained pixels the mask calls background) given the cytoplasm's colour: each
    such pixel is shifted by (mean cytoplasm colour - mean red-cell colour), keeping its texture and
    pale centre, so only shape and texture can tell a red cell touching the WBC from cytoplasm."""
    from hemaseg.classical import stained

    red = stained(image) & (mask == 0)
    cyto = mask == 1  # class indices (load_pair): 0 background, 1 cytoplasm, 2 nucleus
    if red.sum() < 20 or cyto.sum() < 20:
        return image
    out = image.astype(np.float32)
    out[red] += out[cyto].mean(0) - out[red].mean(0)
    return np.clip(out, 0, 255).astype(np.uint8)


def magnify(image: np.ndarray, mask: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (linear) and mask (nearest) by ``f``."""
    h, w = mask.shape
    size = (round(w * f), round(h * f))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


CONDITIONS = {
    "as-is": lambda im, m: (im, m),
    "pink-purple": lambda im, m: (recolour(im, "pink"), m),
    "blue": lambda im, m: (recolour(im, "blue"), m),
    "grey": lambda im, m: (recolour(im, "grey"), m),
    "2.5x (300 px)": lambda im, m: magnify(im, m, 2.5),
    "pink-purple 2.5x": lambda im, m: magnify(recolour(im, "pink"), m, 2.5),
    "red cells given the cytoplasm's colour": lambda im, m: (red_cells_as_cytoplasm(im, m), m),
}


def wbcseg_table(models: list[str], data: Path, split: Path) -> list[dict]:
    pairs = select_split(find_pairs(data / "wbc-seg"), split)
    items = [load_pair(p) for p in pairs]
    rows = []
    for name in models:
        loaded = get_model(name)
        for cond, fn in CONDITIONS.items():
            scores = []
            for image, target in items:
                im, tg = fn(image, target)
                seg = hemaseg.segment(im, loaded)
                scores.append(wbc_scores(seg.classes, tg))
            rows.append({"model": name, "condition": cond, "n": len(items),
                         **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
            print(f"| {name} | {cond} | {len(items)} | {rows[-1]['dice_cell']:.4f} | {rows[-1]['dice_nucleus']:.4f} "
                  f"| {rows[-1]['iou_cell']:.4f} | {rows[-1]['iou_nucleus']:.4f} |", flush=True)
    return rows


def _box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def bccd_table(models: list[str], data: Path) -> list[dict]:
    """WBC count and box overlap on the BCCD 'val' list (VOC boxes; no masks exist)."""
    root = data / "bccd" / "BCCD"
    ids = (root / "ImageSets" / "Main" / "val.txt").read_text().split()
    rows = []
    for name in models:
        loaded = get_model(name)
        exact, ious, n = 0, [], 0
        for i in ids:
            xml = root / "Annotations" / f"{i}.xml"
            jpg = root / "JPEGImages" / f"{i}.jpg"
            if not (xml.exists() and jpg.exists()):
                continue
            boxes = [list(box) for name, box in read_voc(xml) if name == "WBC"]
            seg = hemaseg.segment(hemaseg.read_image(jpg), loaded)
            pred = [[o["bounding_box"][k] for k in ("x1", "y1", "x2", "y2")] for o in seg.objects]
            n += 1
            exact += len(pred) == len(boxes)
            for b in boxes:
                ious.append(max((_box_iou(b, p) for p in pred), default=0.0))
        rows.append({"model": name, "images": n, "exact_count": exact / max(n, 1),
                     "mean_box_iou": float(np.mean(ious)) if ious else 0.0,
                     "recall_iou50": float(np.mean(np.array(ious) >= 0.5)) if ious else 0.0})
        r = rows[-1]
        print(f"| {name} | {n} | {r['exact_count']:.3f} | {r['mean_box_iou']:.3f} | {r['recall_iou50']:.3f} |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["wbc"])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--split", type=Path, default=HERE / "splits" / "wbc-seg.json")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print("wbc-seg validation split (Dice/IoU at the input's own resolution; diameter estimated per image)\n")
    print("| model | condition | images | Dice cell | Dice nucleus | IoU cell | IoU nucleus |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    seg_rows = wbcseg_table(args.models, args.data, args.split)
    print("\nBCCD val photos (640x480, other lab): WBC count and VOC box overlap\n")
    print("| model | images | exact WBC count | mean IoU of GT box with best predicted box | GT boxes found (IoU >= 0.5) |")
    print("| --- | --- | --- | --- | --- |")
    bccd_rows = bccd_table(args.models, args.data)
    if args.json:
        args.json.write_text(json.dumps({"wbcseg": seg_rows, "bccd": bccd_rows}, indent=2))


if __name__ == "__main__":
    main()
