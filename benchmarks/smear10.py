"""smear10: the 10-class map on synthetic smears made from held-out crops, on stand-ins for other
labs' composites, on real photos (BCCD, TXL-PBC fields, wbc-seg) at the level of cell groups, and on
the bundled sample photo. Prints Markdown tables (also written to benchmarks/results/smear10.md) and
writes docs/smear10_confusion.png and docs/smear10_real.jpg (neither with --no-write).

    python benchmarks/smear10.py [--model smear10] [--typer NAME] [--n 300] [--data ../shared/data]
        [--held-out benchmarks/splits/wbc-type-3labs.json] [--max-fields N]
        [--only synthetic,real,sample,speed] [--no-write] [--post NAME=VALUE ...]

Synthetic test sets are composed with `hemaseg.tasks.smear10.synth` from the *test* crops (red cells and
platelets split by source photo; WBCs from the WBC-type classifier's held-out crops, ``--held-out``,
so neither model trained on them) with a fixed seed, all in our own look (``seed_style=0``); the
stand-ins change one thing each: seed 002's own look (plain white-pink background, whole real
cells, hard edges), procedural cells only, stronger re-staining, a magnification outside the trained
range, crowding, dark backgrounds (grey to black, as some composites are pasted on). Rows are
printed worst mean IoU first. Every WBC object is named by the WBC-type model ``--typer`` (default:
the segmentation model card's own ``wbc_typing``).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import typer
from record import write_result

import hemaseg
from hemaseg.cli import post_params
from hemaseg.engine.evaluate import select_split
from hemaseg.engine.predict import get_model
from hemaseg.errors import HemasegError, HemasegUsageError
from hemaseg.io.annotations import read_yolo
from hemaseg.io.datasets import find_pairs, load_pair, read_voc
from hemaseg.io.images import read_image
from hemaseg.models.registry import SAMPLE_PHOTO
from hemaseg.tasks.smear10 import SMEAR10
from hemaseg.tasks.smear10.classes import CLASSES, GROUPS
from hemaseg.tasks.smear10.synth import CellBank, SynthConfig, colour_map, compose, image_seed, write_smear
from hemaseg.tasks.smear10.train import held_out_crops, load_bank

HERE = Path(__file__).resolve().parent
# Red cells cover this share of a test (and speed) composite: the coverage every test set had before training
# moved to 0.1-1.0 (stop 49), so every model is scored on the same composites as before.
TEST_COVERAGE = (0.1, 0.8)
OUT: list[str] = []
GROUP_NAMES = ("background", "rbc", "wbc", "platelet")
TRUTH = ("RBC", "WBC", "platelet")  # confusion-table rows; row r's right group is column r + 1
PARTS = ("synthetic", "real", "sample", "speed")


def emit(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def with_typer(model, typer: str | None, device: str = "cpu") -> tuple:
    """The loaded smear10 model (module, card) whose WBC objects are named by the WBC-type model
    ``typer`` (None: the card's own ``wbc_typing``). ``get_model`` passes a (module, card) tuple
    through, so a copied card with another ``wbc_typing`` reaches ``segment_smear`` through
    ``hemaseg.segment`` and ``SMEAR10.evaluate`` alike; the cached card is left as it is."""
    module, card = get_model(model, device)
    if typer is None:
        return module, card
    names = get_model(typer, device)[1].get("classes") or []  # fail here, once, on a typer that does not load
    # segment_smear names each WBC object by the typer's most probable of the map's five WBC types
    # (the 8-class wbc-type model's ig / erythroblast / platelet are left out): it must know all five.
    wbc_classes = {CLASSES[k] for k in GROUPS["wbc"]}
    if wbc_classes - set(names):
        raise HemasegUsageError(typer, f"classes {names} miss smear10 WBC classes ({', '.join(sorted(wbc_classes))})")
    return module, {**card, "wbc_typing": typer}


def typer_name(loaded: tuple) -> str:
    return loaded[1].get("wbc_typing") or "none (the map's own WBC classes)"


def restain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stronger stain change than training's per-image jitter: hue rotation and saturation."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-25, 26))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.5), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def make_set(out: Path, bank: CellBank, cfg: SynthConfig, n: int, seed: int, post=None) -> Path:
    rng = np.random.default_rng(seed + 99)
    for i in range(n):
        s = compose(bank, cfg, image_seed(seed, "test", i))
        if post is not None:
            s = replace(s, image=post(s.image, rng))
        write_smear(out, f"t{i:04d}", s)
    return out


def synthetic(model: str, loaded: tuple, data: Path, n: int, held_out: Path, write: bool) -> None:
    # The test part's WBCs are crops neither the segmentation model nor the WBC-type classifier
    # trained on (the classifier's held-out crops, split by hash between val and test).
    test_bank = load_bank([str(data)], "test", 0, held_out=held_out_crops(held_out))
    # our own look; seed 002's is a set of its own
    base = SynthConfig(seed_style=0.0, rbc_coverage=TEST_COVERAGE)
    sets = {
        "held-out crops (test)": (test_bank, base, None),
        "seed-002 style (plain white-pink background, whole real cells, hard edges)":
            (test_bank, replace(base, seed_style=1.0), None),
        "procedural cells only": (CellBank.procedural(), base, None),
        "held-out crops, re-stained": (test_bank, base, restain),
        "held-out crops, red cells 50-64 px (outside 20-44)": (test_bank, replace(base, size=320, rbc_diameter=(50, 64)),
                                                              None),
        "held-out crops, crowded (coverage 0.8-1.0)": (test_bank, replace(base, rbc_coverage=(0.8, 1.0), overlap=0.35),
                                                      None),
        "held-out crops, dark backgrounds": (test_bank, replace(base, dark_background=1.0), None),
    }
    rows = []
    for name, (bank, cfg, post) in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_set(Path(tmp), bank, cfg, n, 1, post)
            png = HERE.parent / "docs" / "smear10_confusion.png" if write and name.startswith("held-out crops (") else None
            res = SMEAR10.evaluate([folder], loaded, grid=png)
        m = res["mean"]
        ious = " | ".join("-" if m["iou"][c] is None else f"{m['iou'][c]:.3f}" for c in SMEAR10.classes[1:])
        secs = np.mean([r["seconds"] for r in res["per_image"]])
        rows.append((m["mean_iou"], f"| {name} | {m['pixel_accuracy']:.3f} | {m['mean_iou']:.3f} | {ious} | {secs:.3f} |"))
    emit(f"### Synthetic smears, model `{model}`, WBC typer `{typer_name(loaded)}`, {n} images per set (seed 1, "
         f"crops of the test part, WBCs held out by {held_out.name}: "
         f"{', '.join(f'{k} {v}' for k, v in test_bank.count().items())}); worst mean IoU first\n")
    emit("| set | pixel accuracy | mean IoU | " + " | ".join(SMEAR10.classes[1:]) + " | s / image |")
    emit("| --- | --- | --- | " + " | ".join("---" for _ in SMEAR10.classes[1:]) + " | --- |")
    for _, line in sorted(rows, key=lambda r: r[0]):
        emit(line)
    emit()


def _group(classes: np.ndarray) -> np.ndarray:
    g = np.zeros(classes.shape, np.uint8)
    for k, name in enumerate(("rbc", "wbc", "platelet"), 1):
        g[np.isin(classes, GROUPS[name])] = k
    return g


def box_group(g: np.ndarray, x1: int, y1: int, x2: int, y2: int) -> int:
    """The predicted group (index into GROUP_NAMES) of a box: the most frequent cell group in the
    ellipse of its central half; background when no cell pixel lies there."""
    x1, y1, x2, y2 = max(0, int(x1)), max(0, int(y1)), min(g.shape[1], int(x2)), min(g.shape[0], int(y2))
    if x2 <= x1 or y2 <= y1:
        return 0
    yy, xx = np.mgrid[y1:y2, x1:x2]
    core = ((yy - (y1 + y2) / 2) / max(1, (y2 - y1) / 4)) ** 2 + ((xx - (x1 + x2) / 2) / max(1, (x2 - x1) / 4)) ** 2 <= 1
    votes = np.bincount(g[y1:y2, x1:x2][core], minlength=4)
    return int(votes[1:].argmax()) + 1 if votes[1:].any() else 0


def emit_confusion(cm: np.ndarray) -> None:
    emit("| truth \\ predicted | background | rbc | wbc | platelet | right group |")
    emit("| --- | --- | --- | --- | --- | --- |")
    for r, name in enumerate(TRUTH):
        emit(f"| {name} ({cm[r].sum()}) | " + " | ".join(str(v) for v in cm[r]) + f" | {cm[r, r + 1] / max(cm[r].sum(), 1):.3f} |")
    emit()


def right_cells(cm: np.ndarray) -> tuple[float, list[str]]:
    """(lowest right-group fraction over the rows that have boxes, one 'fraction (right/all)' cell per row)."""
    fracs, cells = [], []
    for r in range(3):
        total = int(cm[r].sum())
        if total == 0:
            cells.append("-")
            continue
        fracs.append(cm[r, r + 1] / total)
        cells.append(f"{fracs[-1]:.3f} ({cm[r, r + 1]}/{total})")
    return (min(fracs) if fracs else float("nan")), cells


def txl_fields(data: Path, split: str) -> dict[str, list[tuple[Path, list]]]:
    """TXL-PBC fields of one split (``images/<split>/``) by source, sorted: (image path, [(row of
    :data:`TRUTH`, (x1, y1, x2, y2))] of its boxes)."""
    txl = data / "txl-pbc"
    source_of = {r["image"]: r["source_dataset"] for r in csv.DictReader((txl / "sources.csv").open())}
    rows = {"rbc": 0, "wbc": 1, "platelet": 2}
    by_source: dict[str, list[tuple[Path, list]]] = defaultdict(list)
    for e in read_yolo(txl):
        if e["filename"].startswith(f"images/{split}/"):
            boxes = [(rows[m["class_name"]], tuple(m["bounding_box"][c] for c in ("x1", "y1", "x2", "y2")))
                     for m in e["masks"] if m["class_name"] in rows]
            by_source[source_of.get(Path(e["filename"]).name, "unknown")].append((txl / e["filename"], boxes))
    return dict(sorted(by_source.items()))


def real(loaded: tuple, data: Path, max_fields: int | None, write: bool) -> None:
    summary: dict[str, np.ndarray] = {}
    scale: dict[str, tuple[list[float], list[float], list[float]]] = {}  # source: (estimates, box sides, ratios)
    infected: dict[str, list[int]] = defaultdict(list)  # source: infected red cells called per photo (none has a parasite)

    def field(img: np.ndarray, boxes, cm: np.ndarray, source: str) -> np.ndarray:
        """Segment one field with the default scale estimate; count its boxes into ``cm`` and its scale into ``scale``."""
        seg = hemaseg.segment(img, loaded)
        g = _group(seg.classes)
        sides = []
        for row, (x1, y1, x2, y2) in boxes:
            cm[row, box_group(g, x1, y1, x2, y2)] += 1
            if row == 0:
                sides.append(((x2 - x1) + (y2 - y1)) / 2)
        infected[source].append(sum(o["class_name"] == "infected rbc" for o in seg.objects))
        est, box, ratio = scale.setdefault(source, ([], [], []))
        est.append(seg.cell_diameter)
        box += sides
        if sides:
            ratio.append(seg.cell_diameter / float(np.median(sides)))
        return seg.classes

    root = data / "bccd" / "BCCD"
    ids = (root / "ImageSets" / "Main" / "val.txt").read_text().split()[:max_fields]
    cm = np.zeros((3, 4), int)
    tiles = []
    for n, i in enumerate(ids):
        img = read_image(root / "JPEGImages" / f"{i}.jpg")
        boxes = [({"RBC": 0, "WBC": 1, "Platelets": 2}[name], box) for name, box in read_voc(root / "Annotations" / f"{i}.xml")
                 if name in ("RBC", "WBC", "Platelets")]
        classes = field(img, boxes, cm, "BCCD val (own VOC boxes)")
        if n < 2:
            tiles.append(np.hstack([img, colour_map(classes)]))
    emit(f"### Real photos, WBC typer `{typer_name(loaded)}`: BCCD validation ({len(ids)} photos), "
         "box centres by predicted group\n")
    emit_confusion(cm)
    summary["BCCD val (own VOC boxes)"] = cm

    for source, fields in txl_fields(data, "test").items():
        entries = fields[:max_fields]
        cm = np.zeros((3, 4), int)
        for path, boxes in entries:
            field(read_image(path), boxes, cm, f"TXL-PBC {source}")
        emit(f"### Real photos, WBC typer `{typer_name(loaded)}`: TXL-PBC test fields from {source} ({len(entries)} of "
             f"{len(fields)} fields), box centres by predicted group\n")
        emit_confusion(cm)
        summary[f"TXL-PBC {source}"] = cm

    emit("### Real photos: share of boxes in the right group per source (default scale estimate), worst first\n")
    emit("| source | RBC | WBC | platelet |")
    emit("| --- | --- | --- | --- |")
    for _, cells, name in sorted((*right_cells(cm), name) for name, cm in summary.items()):
        emit(f"| {name} | " + " | ".join(cells) + " |")
    emit()
    emit("### Real photos: infected red cells called (no photo of these sources shows a parasite)\n")
    emit("| source | photos | infected red cells called | photos with any | RBC boxes |")
    emit("| --- | --- | --- | --- | --- |")
    for name, calls in sorted(infected.items(), key=lambda kv: -np.mean(kv[1])):
        emit(f"| {name} | {len(calls)} | {sum(calls)} | {np.mean(np.array(calls) > 0):.0%} | {summary[name][0].sum()} |")
    emit()
    emit("### Real photos: estimated red-cell diameter (Segmentation.cell_diameter) against the RBC boxes\n")
    emit("| source | fields | median estimate (px) | median RBC box side (w+h)/2 (px) | median per-field estimate / box side |")
    emit("| --- | --- | --- | --- | --- |")
    for name, (est, box, ratio) in scale.items():
        emit(f"| {name} | {len(est)} | {np.median(est):.1f} | " + (f"{np.median(box):.1f}" if box else "-") + " | "
             + (f"{np.median(ratio):.2f}" if ratio else "-") + " |")
    emit()

    split = HERE / "splits" / "wbc-seg.json"
    pairs = select_split(find_pairs(data / "wbc-seg"), split)[:max_fields]
    inter = union = 0
    for k, p in enumerate(pairs):
        img, mask = load_pair(p)
        seg = hemaseg.segment(img, loaded, cell_diameter=None)
        pred, true = _group(seg.classes) == 2, mask > 0
        inter += (pred & true).sum()
        union += (pred | true).sum()
        if k < 4 and tiles:
            w = tiles[0].shape[1] // 2  # two wbc-seg pairs side by side span one BCCD row
            tiles.append(cv2.resize(np.hstack([img, colour_map(seg.classes)]), (w, w // 2),
                                    interpolation=cv2.INTER_NEAREST))
    emit(f"wbc-seg validation ({len(pairs)} crops of 120x120, one WBC each): IoU of the predicted WBC group "
         f"(any of the five types) with the annotated cell: **{inter / max(union, 1):.3f}**\n")
    if write and tiles:
        grid = np.vstack(tiles[:2] + [np.hstack(tiles[2:4]), np.hstack(tiles[4:6])] if len(tiles) >= 6 else tiles[:2])
        cv2.imwrite(str(HERE.parent / "docs" / "smear10_real.jpg"), grid[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])


def sample(loaded: tuple) -> None:
    """The bundled sample photo (what `hemaseg segment --task smear10` reads without images), default scale estimate."""
    img = read_image(SAMPLE_PHOTO)
    seg = hemaseg.segment(img, loaded)
    objs = Counter((o["category"], o["class_name"]) for o in seg.objects)
    wbc = {c: v for (g, c), v in objs.items() if g == "wbc"}
    emit(f"### Bundled sample photo (BloodImage_00000.jpg, {img.shape[1]}x{img.shape[0]}; one neutrophil, no "
         f"parasite), WBC typer `{typer_name(loaded)}`, default scale estimate\n")
    emit("| estimated red-cell diameter (px) | scale | objects | WBC objects | infected rbc | thrombocyte | "
         "platelet clump | healthy rbc |")
    emit("| --- | --- | --- | --- | --- | --- | --- | --- |")
    names = ", ".join(f"{c} {v}" for c, v in sorted(wbc.items())) or "none"
    emit(f"| {seg.cell_diameter:.1f} | {seg.scale:.2f} | {len(seg.objects)} | {sum(wbc.values())} ({names}) | "
         f"{objs[('rbc', 'infected rbc')]} | {objs[('platelet', 'thrombocyte')]} | {objs[('platelet', 'platelet clump')]} | "
         f"{objs[('rbc', 'healthy rbc')]} |")
    emit()


def speed(loaded: tuple, repeats: int = 5) -> None:
    rng = np.random.default_rng(0)
    emit(f"### Speed (2 threads, scale check included, WBC typer `{typer_name(loaded)}`)\n")
    emit("| image | seconds |")
    emit("| --- | --- |")
    for size in ((224, 224), (480, 640)):
        s = compose(CellBank.procedural(), replace(SynthConfig(), size=max(size), rbc_coverage=TEST_COVERAGE), rng)
        img = np.ascontiguousarray(s.image[:size[0], :size[1]])
        hemaseg.segment(img, loaded)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            hemaseg.segment(img, loaded)
            t.append(time.perf_counter() - t0)
        emit(f"| {size[1]}x{size[0]} | {np.median(t):.3f} |")
    emit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smear10", help="smear10 model: bundled name, .safetensors file or run folder")
    ap.add_argument("--typer", default=None, help="WBC-type model naming each WBC object (default: the smear10 "
                                                  "model card's own wbc_typing)")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--held-out", type=Path, default=HERE / "splits" / "wbc-type-3labs.json",
                    help="split JSON whose 'val' crops are the WBCs of the synthetic test sets")
    ap.add_argument("--n", type=int, default=300, help="synthetic images per set")
    ap.add_argument("--max-fields", type=int, default=None, help="at most this many photos per real source "
                                                                 "(BCCD val, each TXL-PBC source, wbc-seg); default all")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts to run: {','.join(PARTS)}")
    ap.add_argument("--no-write", action="store_true", help="print only: no results/smear10.md, no docs/ images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--post", nargs="*", default=[], metavar="NAME=VALUE",
                    help="post-processing parameters (SmearParams) over the card's, as `hemaseg segment --post` takes them")
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--only: expected a comma list of {', '.join(PARTS)}, got {args.only!r}")
    if args.n < 1 or (args.max_fields is not None and args.max_fields < 1):
        ap.error("--n and --max-fields: at least 1")
    if "synthetic" in parts and not args.held_out.is_file():
        ap.error(f"--held-out: {args.held_out} is not a file")
    import torch

    torch.set_num_threads(args.threads)
    try:
        loaded = with_typer(args.model, args.typer)
    except HemasegError as exc:
        ap.error(f"--model/--typer: {exc}")
    if args.post:
        try:  # the CLI's own reading of --post: the same names, values and refusals
            params = post_params(SMEAR10, loaded[1], args.post)
        except typer.BadParameter as exc:
            ap.error(exc.format_message())
        loaded = (loaded[0], {**loaded[1], "postprocess": asdict(params)})
        emit(f"Post-processing over the card's: {' '.join(args.post)}\n")
    write = not args.no_write
    if "synthetic" in parts:
        synthetic(args.model, loaded, args.data, args.n, args.held_out, write)
    if "real" in parts:
        real(loaded, args.data, args.max_fields, write)
    if "sample" in parts:
        sample(loaded)
    if "speed" in parts:
        speed(loaded)
    emit(f"Model card: validation {json.dumps(loaded[1].get('metrics', {}).get('val', {}))}")
    if write:
        write_result("smear10", OUT)


if __name__ == "__main__":
    main()
