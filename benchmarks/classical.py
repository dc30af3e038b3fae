"""Classical masking methods against the bundled learned models, on the same data and code.

    python benchmarks/classical.py [--data ../shared/data] [--threads 2]

Prints Markdown tables (also written to benchmarks/results/classical.md):
1. WBC on the seeded wbc-seg validation split (benchmarks/splits/wbc-seg.json), as-is and
   recoloured/magnified as other labs' images come; ms per image.
2. WBC counts and boxes on BCCD val photos (another lab; VOC boxes, no masks).
3. Nuclei on the seeded DSB validation split (benchmarks/splits/dsb2018.json): DSB score, AP@0.5.
4. BCCD boxes recovered by ``mask_in_box``: mean IoU of the mask's bounding box with the box.
5. Seed 003 Algorithm 1 speed at its image size (360x363).
Run on an idle machine: the timings are wall-clock.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

import hemaseg
from hemaseg import classical as C
from hemaseg.engine.evaluate import select_split
from hemaseg.engine.predict import get_model
from hemaseg.io.datasets import find_dsb, find_pairs, load_instances, load_pair, read_voc
from hemaseg.metrics import dsb_scores, wbc_scores

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record import write_result
from wbc_accuracy import CONDITIONS, _box_iou  # noqa: E402

OUT: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def methods(task: str) -> dict:
    """name -> image -> Segmentation, classical methods first, then the bundled model."""
    loaded = get_model(task)
    runs = {f"classical {m}": (lambda m: lambda im: C.segment_classical(im, task, m))(m)
            for m in (("hsv", "watershed", "blobs") if task == "wbc" else C.NUCLEI_METHODS)}
    if task == "wbc":
        def seed_hsv(im):
            classes, instances = C.hsv_wbc_mask(im, thresholds="seed")
            return hemaseg.Segmentation(classes, instances, None, 0.0, 1.0, [])
        runs["classical hsv, seed's fixed HSV bounds"] = seed_hsv
    runs[f"learned ({task} model)"] = lambda im: hemaseg.segment(im, loaded)
    return runs


def timed(fn, image):
    t0 = time.perf_counter()
    out = fn(image)
    return out, time.perf_counter() - t0


def wbc_table(data: Path, split: Path) -> None:
    items = [load_pair(p) for p in select_split(find_pairs(data / "wbc-seg"), split)]
    emit(f"### WBC: wbc-seg validation split ({len(items)} images), whole-cell / nucleus Dice\n")
    conds = list(CONDITIONS)
    emit("| method | " + " | ".join(conds) + " | ms / image (as-is) |")
    emit("| --- |" + " --- |" * (len(conds) + 1))
    for name, fn in methods("wbc").items():
        cells, secs = [], []
        for cond in conds:
            scores = []
            for image, target in items:
                im, tg = CONDITIONS[cond](image, target)
                seg, dt = timed(fn, im)
                if cond == "as-is":
                    secs.append(dt)
                scores.append(wbc_scores(seg.classes, tg))
            cells.append(f"{np.mean([s['dice_cell'] for s in scores]):.3f} / "
                         f"{np.mean([s['dice_nucleus'] for s in scores]):.3f}")
        emit(f"| {name} | " + " | ".join(cells) + f" | {1000 * np.mean(secs):.1f} |")
    emit()


def _voc(xml: Path, names=("RBC", "WBC", "Platelets")) -> list[tuple[str, list[int]]]:
    return [(name, list(box)) for name, box in read_voc(xml) if name in names]


def _bccd_val(data: Path):
    root = data / "bccd" / "BCCD"
    for i in (root / "ImageSets" / "Main" / "val.txt").read_text().split():
        xml, jpg = root / "Annotations" / f"{i}.xml", root / "JPEGImages" / f"{i}.jpg"
        if xml.exists() and jpg.exists():
            yield jpg, _voc(xml)


def bccd_wbc_table(data: Path) -> None:
    samples = list(_bccd_val(data))
    emit(f"### WBC: BCCD val photos ({len(samples)}, another lab, no masks): count and boxes\n")
    emit("| method | exact WBC count | GT WBC boxes found (IoU >= 0.5) | mean best box IoU | ms / photo |")
    emit("| --- | --- | --- | --- | --- |")
    for name, fn in methods("wbc").items():
        exact, ious, secs = 0, [], []
        for jpg, objs in samples:
            seg, dt = timed(fn, hemaseg.read_image(jpg))
            secs.append(dt)
            from scipy import ndimage as ndi

            pred = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndi.find_objects(seg.instances) if s]
            boxes = [b for n, b in objs if n == "WBC"]
            exact += len(pred) == len(boxes)
            ious += [max((_box_iou(b, p) for p in pred), default=0.0) for b in boxes]
        emit(f"| {name} | {exact / len(samples):.3f} | {np.mean(np.array(ious) >= 0.5):.3f} | {np.mean(ious):.3f} "
             f"| {1000 * np.mean(secs):.0f} |")
    emit()


def nuclei_table(data: Path, split: Path) -> None:
    samples = select_split(find_dsb(data / "dsb2018"), split)
    items = [load_instances(p) for p in samples]
    emit(f"### Nuclei: DSB validation split ({len(items)} images)\n")
    emit("| method | DSB score | AP@0.5 | AP@0.75 | s / image |")
    emit("| --- | --- | --- | --- | --- |")
    for name, fn in methods("nuclei").items():
        rows, secs = [], []
        for image, target in items:
            seg, dt = timed(fn, image)
            secs.append(dt)
            rows.append(dsb_scores(seg.instances, target))
        emit(f"| {name} | {np.mean([r['dsb'] for r in rows]):.3f} | {np.mean([r['ap50'] for r in rows]):.3f} "
             f"| {np.mean([r['ap75'] for r in rows]):.3f} | {np.mean(secs):.3f} |")
    emit()


def mask_in_box_table(data: Path) -> None:
    samples = list(_bccd_val(data))
    ious: dict[str, list[float]] = {}
    fallbacks: dict[str, int] = {}
    secs = []
    for jpg, objs in samples:
        image = hemaseg.read_image(jpg)
        for name, (x1, y1, x2, y2) in objs:
            t0 = time.perf_counter()
            m = C.mask_in_box(image, (x1, y1, x2, y2), kind="wbc" if name == "WBC" else None)
            secs.append(time.perf_counter() - t0)
            if not m.any():
                ious.setdefault(name, []).append(0.0)
                continue
            ys, xs = np.nonzero(m)
            iou = (ys.max() + 1 - ys.min()) * (xs.max() + 1 - xs.min()) / m.size
            ious.setdefault(name, []).append(float(iou))
            yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
            ell = ((yy + 0.5 - m.shape[0] / 2) / (m.shape[0] / 2)) ** 2 + ((xx + 0.5 - m.shape[1] / 2) / (m.shape[1] / 2)) ** 2 <= 1
            fallbacks[name] = fallbacks.get(name, 0) + int(np.array_equal(m, ell))
    emit(f"### BCCD val boxes turned into masks by `mask_in_box` ({len(samples)} photos)\n")
    emit("| class | boxes | mean IoU (mask's box vs annotated box) | mask fills >= 0.8 of the box | ellipse fallback |")
    emit("| --- | --- | --- | --- | --- |")
    for name, v in ious.items():
        v = np.array(v)
        emit(f"| {name} | {len(v)} | {v.mean():.3f} | {np.mean(v >= 0.8):.3f} | {fallbacks.get(name, 0) / len(v):.3f} |")
    emit(f"\n{1000 * np.mean(secs):.2f} ms per box.\n")


def algorithm1_speed(data: Path, split: Path) -> None:
    pairs = select_split(find_pairs(data / "wbc-seg"), split)
    images = [cv2.resize(load_pair(p)[0], (363, 360), interpolation=cv2.INTER_LINEAR) for p in pairs]
    for im in images[:3]:
        C.hsv_wbc_mask(im)  # warm-up
    secs = []
    for im in images:
        t0 = time.perf_counter()
        _, inst = C.hsv_wbc_mask(im)
        k = C.central_instance(inst)
        if k:
            x1, y1, x2, y2 = C.wbc_crops(im, np.where(inst == k, inst, 0))[0]["box"]
            _ = im[y1:y2, x1:x2].copy()
        secs.append(time.perf_counter() - t0)
    s = float(np.mean(secs))
    emit("### Seed 003 Algorithm 1 (HSV mask + watershed + centred crop) at 360x363\n")
    emit("| implementation | s / image | speed-up |")
    emit("| --- | --- | --- |")
    emit("| seed 003 (reported) | 0.1448 | 1x |")
    emit(f"| hemaseg `hsv_wbc_mask` + `wbc_crops` ({len(images)} images, this CPU) | {s:.4f} | {0.1448 / s:.1f}x |")
    emit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=["wbc", "bccd", "nuclei", "boxes", "speed"])
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    wbc_split, dsb_split = HERE / "splits" / "wbc-seg.json", HERE / "splits" / "dsb2018.json"
    if "speed" in args.only:
        algorithm1_speed(args.data, wbc_split)
    if "wbc" in args.only:
        wbc_table(args.data, wbc_split)
    if "bccd" in args.only:
        bccd_wbc_table(args.data)
    if "nuclei" in args.only:
        nuclei_table(args.data, dsb_split)
    if "boxes" in args.only:
        mask_in_box_table(args.data)
    write_result("classical", OUT)


if __name__ == "__main__":
    main()
