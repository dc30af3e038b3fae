"""Write the golden outputs that tests/test_golden.py checks the code against.

    python tests/golden/make_golden.py          # from the repository root, in the project's venv

REGENERATE ONLY WHEN A MODEL OR AN ALGORITHM CHANGE IS INTENDED. These files record what every
bundled model (wbc, nuclei, smear10 with smear10-type inside, cells via analyze, wbc-type via
classify) outputs today on a few fixed inputs cut from the bundled sample photo, through the
public API (``hemaseg.segment``, ``hemaseg.analyze``, ``hemaseg.classify``, ``hemaseg.read_image``)
and the CLI (``hemaseg.cli:app``). A refactor must leave them valid: if test_golden.py fails
after a change that was meant to change nothing, fix the code, not the goldens. When a change
of outputs *is* intended, rerun this script and commit the new files together with the change,
saying why the outputs moved.

Files written beside this script (every input is defined here and stored in the goldens, so
test_golden.py rebuilds the same inputs without importing this script):

- ``segment.json``  one record per ``hemaseg.segment`` case: input, model, cell_diameter
  argument, and the result's cell_diameter, scale and objects (boxes, outlines, scores...).
- ``labels.npz``    the label maps (compressed .npz, np.load reads it; fixed zip timestamps, so a
  rerun with unchanged outputs rewrites identical bytes): ``<case>.classes`` and
  ``<case>.instances`` per segment case, ``analyze.instances``.
- ``analyze.json``  ``hemaseg.analyze`` of the sample photo: entry (every mask) and counts.
- ``classify.json`` ``hemaseg.classify`` probabilities of three crops.
- ``cli.json``      the CLI's outputs: ``segment --task wbc|nuclei|smear10`` (the JSON file, whose
  masks are the matching segment.json case's objects, and how the PNGs map to labels.npz),
  ``classify -m 3`` (CSV rows), ``analyze`` (results.json, whose masks are analyze.json's,
  counts.csv rows, how many of the overlay's pixels differ from the photo's). File paths are reduced to their names.

Runs the models with one torch thread, as the tests do (tests/conftest.py).
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

import hemaseg
from hemaseg.cli import app

OUT = Path(__file__).resolve().parent
SAMPLE = "BloodImage_00000.jpg"

# The sample's one WBC (a neutrophil): its nucleus spans x 287-480, y 182-352 (centroid x 380,
# y 264) in hemaseg.segment(sample, model="wbc"). Crops are [y0, y1, x0, x1].
WBC_120 = [204, 324, 320, 440]  # 120x120 around the nucleus' centroid (most of the nucleus)
WBC_240 = [144, 384, 260, 500]  # 240x240: the whole WBC with bits of red cells
RBC_120 = [0, 120, 0, 120]  # top-left corner: red cells only, no WBC
NUC_A = [0, 256, 0, 256]  # grey-inverted: dark plasma, bright red cells (what the nuclei model sees)
NUC_B = [0, 256, 384, 640]
SMEAR_224 = [128, 352, 208, 432]  # 224x224: red cells, platelets, the WBC in its lower right

INPUTS = {
    "sample": {"source": "sample"},
    "wbc120": {"source": "sample", "crop": WBC_120},
    "wbc240": {"source": "sample", "crop": WBC_240},
    "rbc120": {"source": "sample", "crop": RBC_120},
    "black96": {"source": "black", "shape": [96, 96, 3]},
    "nuc_a": {"source": "sample", "crop": NUC_A, "transform": "grey_invert"},
    "nuc_b": {"source": "sample", "crop": NUC_B, "transform": "grey_invert"},
    "smear224": {"source": "sample", "crop": SMEAR_224},
}

# hemaseg.segment cases: (input, model, cell_diameter argument). None = estimated, as users run it.
SEGMENT_CASES = {
    "wbc_wbc240": ("wbc240", "wbc", None),
    "wbc_wbc120": ("wbc120", "wbc", None),
    "wbc_sample": ("sample", "wbc", None),
    "wbc_sample_d200": ("sample", "wbc", 200.0),
    "wbc_black96": ("black96", "wbc", None),
    "nuclei_a": ("nuc_a", "nuclei", None),
    "nuclei_b_d30": ("nuc_b", "nuclei", 30.0),
    "smear10_smear224": ("smear224", "smear10", None),
    "smear10_sample": ("sample", "smear10", None),
}
CLASSIFY_CASES = ["wbc120", "wbc240", "rbc120"]  # hemaseg.classify and `classify -m 3`
CLI_SEGMENT = {"wbc": "wbc240", "nuclei": "nuc_a", "smear10": "smear224"}  # --task: input


def sample_path() -> Path:
    return Path(hemaseg.__file__).parent / "samples" / SAMPLE


def build_input(spec: dict) -> np.ndarray:
    """The (H, W, 3) uint8 image an input spec describes (test_golden.py has the same function)."""
    if spec["source"] == "black":
        return np.zeros(spec["shape"], np.uint8)
    image = hemaseg.read_image(sample_path())
    if "crop" in spec:
        y0, y1, x0, x1 = spec["crop"]
        image = image[y0:y1, x0:x1]
    if spec.get("transform") == "grey_invert":
        grey = (image.astype(np.uint16).sum(2) + 1) // 3  # integer mean: no float rounding
        image = np.repeat((255 - grey).astype(np.uint8)[..., None], 3, 2)
    return np.ascontiguousarray(image)


def digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def plain(obj):
    """JSON-ready copy (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def dumps(obj, indent: str = "") -> str:
    """JSON with one key per line, but lists of numbers (outlines, boxes) on one line: small and diffable."""
    flat = lambda o: not isinstance(o, (dict, list)) or (isinstance(o, list) and all(map(flat, o)))  # noqa: E731
    if flat(obj):
        return json.dumps(obj, separators=(",", ":"))
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    return "[\n" + ",\n".join(inner + dumps(v, inner) for v in obj) + "\n" + indent + "]"


def write_json(name: str, obj) -> None:
    (OUT / name).write_text(dumps(obj) + "\n", encoding="utf-8")


def read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f)]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed zip timestamps: the same arrays give the same bytes."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def png_array(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    if res.exit_code != 0:
        raise SystemExit(f"hemaseg {' '.join(args)} exited {res.exit_code}:\n{res.output}\n{res.exception!r}")


def main() -> None:
    torch.set_num_threads(1)
    images = {name: build_input(spec) for name, spec in INPUTS.items()}
    inputs = {name: {**spec, "sha256": digest(images[name]), "shape": list(images[name].shape)}
              for name, spec in INPUTS.items()}
    arrays: dict[str, np.ndarray] = {}

    # ---- hemaseg.segment
    seg_cases, segs = {}, {}
    for case, (inp, model, diameter) in SEGMENT_CASES.items():
        seg = hemaseg.segment(images[inp], model=model, cell_diameter=diameter)
        segs[case] = seg
        arrays[f"{case}.classes"] = seg.classes
        arrays[f"{case}.instances"] = seg.instances
        seg_cases[case] = {"input": inp, "model": model, "cell_diameter_arg": diameter,
                           "cell_diameter": float(seg.cell_diameter), "scale": float(seg.scale),
                           "count": len(seg.objects), "objects": plain(seg.objects)}
        print(f"segment {case}: {len(seg.objects)} objects, diameter {seg.cell_diameter:.2f}, scale {seg.scale:.4f}")
    write_json("segment.json", {"inputs": inputs, "cases": seg_cases})

    # ---- hemaseg.analyze
    analysis = hemaseg.analyze(images["sample"], filename=SAMPLE)
    arrays["analyze.instances"] = analysis.instances
    write_json("analyze.json", {"input": "sample", "filename": SAMPLE, "inputs": {"sample": inputs["sample"]},
                                "entry": plain(analysis.entry), "counts": plain(analysis.counts)})
    print(f"analyze: {analysis.counts}")

    # ---- hemaseg.classify
    cls = {name: [[k, float(v)] for k, v in hemaseg.classify(images[name]).items()] for name in CLASSIFY_CASES}
    write_json("classify.json", {"inputs": {n: inputs[n] for n in CLASSIFY_CASES}, "cases": cls})
    print("classify:", {n: max(p, key=lambda kv: kv[1])[0] for n, p in cls.items()})

    # ---- CLI
    cli: dict = {"segment": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in set(CLI_SEGMENT.values()) | set(CLASSIFY_CASES):
            Image.fromarray(images[name]).save(tmp / f"{name}.png")
        for task, inp in CLI_SEGMENT.items():
            out = tmp / f"seg-{task}"
            invoke(["segment", "--task", task, str(tmp / f"{inp}.png"), "--out", str(out)])
            case = next(c for c, (i, m, d) in SEGMENT_CASES.items() if i == inp and m == task and d is None)
            meta = json.loads((out / f"{inp}.json").read_text())
            meta["filename"] = Path(meta["filename"]).name
            # Its masks are the API case's objects (stored once, in segment.json).
            assert meta.pop("masks") == seg_cases[case]["objects"]
            png = png_array(out / f"{inp}.png")
            rec = {"input": inp, "api_case": case, "json_without_masks": meta, "png_dtype": str(png.dtype)}
            if task == "wbc":  # label value per class index (0/128/255)
                lut = [int(np.unique(png[segs[case].classes == k])[0]) if (segs[case].classes == k).any() else None
                       for k in range(3)]
                lut_arr = np.asarray([0 if v is None else v for v in lut], np.uint8)  # None: class absent
                assert np.array_equal(png, lut_arr[segs[case].classes])
                rec.update(png_of="classes", lut=lut)
            elif task == "nuclei":  # uint16 instance labels
                assert np.array_equal(png.astype(np.int64), segs[case].instances.astype(np.int64))
                rec.update(png_of="instances", lut=None)
            else:  # class indices, plus the palette image
                assert np.array_equal(png, segs[case].classes)
                colour = png_array(out / f"{inp}_color.png")
                palette = {}
                for k in np.unique(segs[case].classes):
                    cols = np.unique(colour[segs[case].classes == k], axis=0)
                    assert len(cols) == 1
                    palette[str(int(k))] = cols[0].tolist()
                rec.update(png_of="classes", lut=None, colour_palette=palette)
            cli["segment"][task] = rec
            print(f"cli segment --task {task}: {meta['count']} objects")

        out_csv = tmp / "classify.csv"
        invoke(["classify", "-m", "3", *[a for n in CLASSIFY_CASES for a in ("-f", str(tmp / f"{n}.png"))],
                "-o", str(out_csv)])
        rows = read_csv_rows(out_csv)
        cli["classify"] = {"args": ["-m", "3"], "inputs": CLASSIFY_CASES, "header": rows[0],
                           "rows": [[Path(r[0]).name, *r[1:]] for r in rows[1:]]}

        out = tmp / "analyze"
        invoke(["analyze", str(sample_path()), "--out", str(out)])
        results = json.loads((out / "results.json").read_text())
        assert list(results) == ["data"] and list(results["data"]) == ["0"]
        entry = results["data"]["0"]
        entry["filename"] = Path(entry["filename"]).name
        # Its masks are hemaseg.analyze's (stored once, in analyze.json).
        assert entry.pop("masks") == plain(analysis.entry["masks"])
        counts = read_csv_rows(out / "counts.csv")
        overlay = png_array(out / f"{Path(SAMPLE).stem}_overlay.png")
        # Not a digest of its pixels: OpenCV's anti-aliased lines and text differ by a few hundred
        # pixels between releases (4.14 and 5.1), while the outlines they draw are the same.
        drawn = int((overlay[..., :3] != hemaseg.read_image(sample_path())).any(-1).sum())
        cli["analyze"] = {"results_entry_without_masks": entry, "counts_header": counts[0],
                          "counts_rows": [[Path(r[0]).name, *r[1:]] for r in counts[1:]],
                          "overlay_drawn_pixels": drawn}
        print(f"cli analyze: {len(analysis.entry['masks'])} masks")
    write_json("cli.json", cli)

    save_npz(OUT / "labels.npz", arrays)
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.suffix in (".json", ".npz"))
    print(f"goldens in {OUT}: {total / 1024:.0f} KB", file=sys.stderr)


if __name__ == "__main__":
    main()
