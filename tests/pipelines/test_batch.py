"""Batches of photos (pipelines/batch.py): results written as each photo is done, --resume after a
kill gives the same files, --overwrite and changed options refused as train refuses them, results.json
streamed byte for byte as write_results writes it, and a local Dask cluster gives the serial files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.io.annotations import read_results, write_results
from hemaseg.io.images import read_image
from hemaseg.pipelines.batch import PARTS, write_results_stream

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "hemaseg" / "samples" / "BloodImage_00000.jpg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Three small photos cut from the bundled sample (different cells in each)."""
    root = tmp_path_factory.mktemp("photos")
    im = read_image(SAMPLE)
    out = []
    for name, (y, x) in {"a": (0, 0), "b": (240, 320), "c": (100, 200)}.items():
        Image.fromarray(np.ascontiguousarray(im[y:y + 240, x:x + 320])).save(root / f"{name}.png")
        out.append(root / f"{name}.png")
    return out


def _run(*args) -> object:
    return CliRunner().invoke(app, ["analyze", *map(str, args)])


def test_results_stream_is_write_results_byte_for_byte(tmp_path):
    entries = [{"filename": "a.png", "height": 2, "width": 3, "masks": [{"vertices": [[1, 2], [3, 4]], "s": 0.5}]},
               {"filename": "b é.png", "height": 1, "width": 1, "masks": []}]
    for some in (entries, entries[:1], []):
        write_results(tmp_path / "a.json", some)
        write_results_stream(tmp_path / "b.json", iter(some))
        assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_a_loop_of_links_among_the_photos_of_a_resumed_batch_is_one_failed_photo(photos, tmp_path):
    """A review (stop 68): once a folder listed its loops of links to fail as one line each, `analyze --resume` of it
    ended at the loop (exit 1) with the new photos never analysed (Path.resolve raised while matching the parts)."""
    import shutil

    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    shutil.copy(photos[0], folder / "a.png")
    assert _run(folder, "--out", out).exit_code == 0
    shutil.copy(photos[2], folder / "c.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    res = _run(folder, "--out", out, "--resume")
    assert res.exit_code == 1 and "loop.png: a loop of links, no file" in res.output, res.output
    assert sorted(p.name for p in (out / PARTS).glob("*.json")) == ["a.json", "c.json", "run.json"]


def test_resume_after_a_kill_gives_the_same_files(photos, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _run(*photos, "--out", whole).exit_code == 0
    parts = sorted(p.name for p in (whole / PARTS).glob("*.json"))
    assert parts == ["a.json", "b.json", "c.json", "run.json"]
    # A run killed after its first photo: that photo's overlay and part are on disk, nothing else.
    assert _run(photos[0], "--out", resumed).exit_code == 0
    (resumed / "results.json").unlink()
    a_part = (resumed / PARTS / "a.json").stat().st_mtime_ns
    res = _run(*photos, "--out", resumed, "--resume")
    assert res.exit_code == 0, res.output
    assert "1 of 3 photos already done" in res.output
    assert (resumed / PARTS / "a.json").stat().st_mtime_ns == a_part  # skipped, not redone
    for name in ("results.json", "counts.csv"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    entries = json.loads((resumed / "results.json").read_text())["data"]
    assert [Path(entries[k]["filename"]).name for k in ("0", "1", "2")] == ["a.png", "b.png", "c.png"]
    page = (resumed / "report.html").read_text()
    assert all(f"overlay of {p}" in page for p in photos)
    # Everything done: a resumed run only rebuilds the files.
    res = _run(*photos, "--out", resumed, "--resume")
    assert res.exit_code == 0 and "3 of 3 photos already done" in res.output
    assert (whole / "results.json").read_bytes() == (resumed / "results.json").read_bytes()


def test_a_folder_holding_a_batch_needs_resume_or_overwrite(photos, tmp_path):
    out = tmp_path / "out"
    assert _run(photos[0], "--out", out).exit_code == 0
    res = _run(photos[1], "--out", out)
    assert res.exit_code == 2 and "--out" in res.output and "--resume" in res.output and "--overwrite" in res.output
    res = _run(photos[1], "--out", out, "--resume", "--min-confidence", "0.7")
    assert res.exit_code == 2 and "--resume" in res.output and "min_confidence" in res.output
    res = _run(photos[1], "--out", out, "--resume", "--overwrite")
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = _run(photos[1], "--out", out, "--resume")  # a.png left out: resuming would drop its results
    assert res.exit_code == 2 and "--resume" in res.output and "a.png" in res.output
    assert len(json.loads((out / "results.json").read_text())["data"]) == 1 and (out / PARTS / "a.json").exists()
    res = _run(photos[1], "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "a_overlay.png").exists() and not (out / PARTS / "a.json").exists()
    assert len(json.loads((out / "results.json").read_text())["data"]) == 1


def test_a_failed_photo_is_redone_on_resume(photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    res = _run(photos[0], bad, "--out", out)
    assert res.exit_code == 1 and "bad.png" in res.output
    assert "Not analysed" in (out / "report.html").read_text()
    res = _run(photos[0], "--out", out, "--resume")  # the failed photo may be left out: it has no results
    assert res.exit_code == 0, res.output
    Image.open(photos[1]).save(bad)  # fixed
    res = _run(photos[0], bad, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert len(json.loads((out / "results.json").read_text())["data"]) == 2


@pytest.mark.timeout(900)  # two worker processes start and load torch and the models: slow on a busy machine
def test_dask_local_cluster_gives_the_serial_files(photos, tmp_path):
    """Needs dask.distributed (the dask extra). Serial here runs on one torch thread (tests/conftest.py),
    as each Dask worker does (Dask's nanny sets OMP_NUM_THREADS=1)."""
    pytest.importorskip("distributed", reason="the dask extra (dask[distributed]) is not installed")
    photos = photos[:2]
    serial, cluster = tmp_path / "serial", tmp_path / "dask"
    assert _run(*photos, "--out", serial).exit_code == 0
    res = _run(*photos, "--out", cluster, "--dask", "local:2")
    assert res.exit_code == 0, res.output
    for name in ("results.json", "counts.csv"):
        assert (serial / name).read_bytes() == (cluster / name).read_bytes(), name
    for p in photos:
        assert (np.asarray(Image.open(serial / f"{p.stem}_overlay.png"))
                == np.asarray(Image.open(cluster / f"{p.stem}_overlay.png"))).all()
    res = _run(photos[0], "--out", tmp_path / "x", "--dask", "local:0")
    assert res.exit_code == 2 and "--dask" in res.output


def test_a_photo_named_run_keeps_the_batch_options(photos, tmp_path):
    """An analyze audit: a photo named run.png wrote its part over OUT/parts/run.json (the batch's options),
    so --resume then refused the batch as 'analysed with other options'."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "run.png").write_bytes(photos[0].read_bytes())
    out = tmp_path / "o"
    res = _run(d / "run.png", "--out", out)
    assert res.exit_code == 0, res.output
    assert "run_png.*" in res.output
    assert "model" in json.loads((out / PARTS / "run.json").read_text())  # still the options
    assert (out / PARTS / "run_png.json").exists() and (out / "run_png_overlay.png").exists()
    res = _run(d / "run.png", "--out", out, "--resume")
    assert res.exit_code == 0 and "1 of 1 photos already done" in res.output, res.output


@pytest.mark.parametrize("extra", [["--coco", "{out}/results.json"], ["--cvat", "{out}/counts.csv"],
                                   ["--coco", "{out}/a_overlay.png"], ["--coco", "{out}/parts/x.json"],
                                   ["--coco", "{out}"], ["--cvat", "{out}/parts"],
                                   ["--coco", "{tmp}/same.json", "--cvat", "{tmp}/same.json"]])
def test_coco_and_cvat_never_replace_the_batch_files(photos, tmp_path, extra):
    """An analyze audit: each of these exited 0 having replaced results.json, counts.csv, an overlay,
    the batch's parts or the CVAT file."""
    out = tmp_path / "o"
    args = [a.format(out=out, tmp=tmp_path) for a in extra]
    res = _run(photos[0], "--out", out, *args)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and ("--coco" in res.output or "--cvat" in res.output)
    assert not out.exists() or not any(out.iterdir())


def test_an_existing_annotation_file_is_not_replaced_by_the_export(photos, tmp_path):
    """A walkthrough (stop 70): `analyze lab/images --coco lab/annotations.json` replaced the lab's annotations with
    predictions, exit 0; `--cvat` another batch's results.json the same way."""
    truth = tmp_path / "annotations.json"
    truth.write_text('{"images": [], "annotations": [], "categories": []}')
    cvat = tmp_path / "lab.xml"
    cvat.write_text("<annotations/>")
    for option, path in (("--coco", truth), ("--cvat", cvat)):
        before = path.read_bytes()
        res = _run(photos[0], "--out", tmp_path / "o", option, path)
        assert res.exit_code == 2 and option in res.output and "--overwrite" in res.output, res.output
        assert path.read_bytes() == before and not (tmp_path / "o").exists()
    out = tmp_path / "o2"
    assert _run(photos[0], "--out", out, "--coco", tmp_path / "mine.json").exit_code == 0
    # a --resume replaces none (a COCO file hemaseg's convert wrote is no export of this batch); --overwrite does
    for path in (tmp_path / "mine.json", truth):
        before = path.read_bytes()
        res = _run(photos[0], photos[1], "--out", out, "--coco", path, "--resume")
        assert res.exit_code == 2 and "--overwrite (not with --resume)" in res.output and path.read_bytes() == before
    assert _run(photos[0], "--out", out, "--cvat", cvat, "--overwrite").exit_code == 0
    assert cvat.read_text().count("<image ") == 1


def test_exported_names_of_photos_of_one_name_lie_under_one_folder(photos, tmp_path):
    """A walkthrough (stop 70): photos of one name in batch/ and batch/b/ went into the COCO and CVAT files as
    'x.png' beside 'b/x.png' and 'y.png' from batch/a/: no folder held every name, so `train --data` and COCO loaders
    could not find them."""
    import shutil

    batch = tmp_path / "batch"
    (batch / "a").mkdir(parents=True)
    (batch / "b").mkdir()
    shutil.copy(photos[0], batch / "x.png")
    shutil.copy(photos[1], batch / "b" / "x.png")
    shutil.copy(photos[2], batch / "a" / "y.png")
    res = _run(batch, batch / "a", batch / "b", "--out", tmp_path / "o", "--coco", tmp_path / "c.json", "--cvat",
               tmp_path / "c.xml")
    assert res.exit_code == 0, res.output
    names = [im["file_name"] for im in json.loads((tmp_path / "c.json").read_text())["images"]]
    assert sorted(names) == ["a/y.png", "b/x.png", "x.png"] and all((batch / n).is_file() for n in names)
    assert all(f'name="{n}"' in (tmp_path / "c.xml").read_text() for n in names)


def test_a_library_batch_tiles_as_the_command_line_does():
    """A walkthrough (stop 70): BatchOptions() tiled at 2048 px where `hemaseg analyze` and hemaseg.analyze tile at
    DEFAULT_TILE; a 4000 px mosaic gave 999 cells one way, 1003 the other."""
    import inspect

    from hemaseg.engine.tiling import DEFAULT_TILE
    from hemaseg.pipelines.analyze import analyze
    from hemaseg.pipelines.batch import BatchOptions

    assert BatchOptions().tile == DEFAULT_TILE == inspect.signature(analyze).parameters["tile"].default


def test_a_batch_of_no_photo_done_does_not_block_the_next(photos, tmp_path):
    """A walkthrough (stop 70): `analyze nothere --out o` (a mistyped path) left an empty batch, and the retry with
    the right path was refused: 'already holds an analysis (0 photo(s) done)'."""
    out = tmp_path / "o"
    res = _run(tmp_path / "nothere.png", "--out", out)
    assert res.exit_code == 1 and (out / PARTS / "run.json").exists()
    res = _run(photos[0], "--out", out)
    assert res.exit_code == 0, res.output
    assert [Path(e["filename"]).name for e in read_results(out / "results.json")] == ["a.png"]
    res = _run(photos[1], "--out", out)  # one photo done: refused as before
    assert res.exit_code == 2 and "already holds an analysis (1 photo(s) done)" in res.output
    busy = tmp_path / "busy"  # a batch still at (or killed at) its first photo: no results.json yet (a review)
    (busy / PARTS).mkdir(parents=True)
    (busy / PARTS / "run.json").write_text("{}")
    res = _run(photos[0], "--out", busy)
    assert res.exit_code == 2 and "already holds an analysis (0 photo(s) done)" in res.output, res.output


def test_a_missing_model_is_named_by_its_option(photos, tmp_path):
    """An analyze audit: --model nosuch and --type-model nosuch both said only 'nosuch: no such model file'."""
    for option in ("--model", "--type-model"):
        res = _run(photos[0], "--out", tmp_path / "o", option, "nosuch")
        assert res.exit_code == 2 and res.output.startswith(f"{option}: nosuch: no such model"), res.output


def test_analyze_takes_the_cells_post_processing_knobs(photos, tmp_path):
    """A walkthrough: `analyze --post split_neck=0.9` was 'No such option' though CellsParams recommends it; only
    `segment --task cells` took the knobs."""
    counts = {}
    for name, extra in (("default", []), ("strict", ["--post", "wbc_min_score=1.0", "--post", "platelet_min_score=1.0"])):
        res = _run(photos[1], "--out", tmp_path / name, *extra)
        assert res.exit_code == 0, res.output
        counts[name] = read_results(tmp_path / name / "results.json")[0]
    kinds = {k: {m["category"] for m in e["masks"]} for k, e in counts.items()}
    assert "rbc" in kinds["strict"] and not kinds["strict"] & {"wbc", "platelet"} and kinds["default"] - kinds["strict"]
    run = json.loads((tmp_path / "strict" / PARTS / "run.json").read_text())
    assert run["post"] == [["platelet_min_score", 1.0], ["wbc_min_score", 1.0]]  # sorted: --resume takes any order
    res = _run(photos[1], "--out", tmp_path / "strict", "--resume")  # other knobs: refused, named
    assert res.exit_code == 2 and "post" in res.output
    res = _run(photos[1], "--out", tmp_path / "bad", "--post", "no_such=1")
    assert res.exit_code == 2 and "--post" in res.output and not (tmp_path / "bad").exists()


def test_a_batch_resumes_from_another_working_folder(photos, tmp_path, monkeypatch):
    """A walkthrough: a batch started with relative paths could not be resumed from another folder (a cluster job's),
    even with the same photos given by absolute paths: "holds 1 analysed photo(s) not given now"."""
    monkeypatch.chdir(photos[0].parent)
    out = tmp_path / "o"
    assert _run(photos[0].name, "--out", out).exit_code == 0
    part = next(p for p in (out / "parts").glob("*.json") if p.name != "run.json")
    before = part.read_bytes()
    monkeypatch.chdir(tmp_path)
    res = _run(photos[0], photos[1], "--out", out, "--resume")
    assert res.exit_code == 0 and "1 of 2 photos already done" in res.output, res.output
    assert part.read_bytes() == before  # not analysed again


def test_a_batch_is_not_continued_with_a_model_changed_under_its_name(photos, tmp_path):
    """A walkthrough: the model's weights or card's thresholds changed under the same file name, and `--resume`
    mixed the two models' results in one batch (exit 0). Now refused, naming --resume."""
    import json
    import shutil

    from hemaseg.models.registry import resolve_model_path

    bundled = resolve_model_path("cells")
    mine = tmp_path / "m" / "my.safetensors"
    mine.parent.mkdir()
    for suffix in (".safetensors", ".json", ".onnx"):
        if bundled.with_suffix(suffix).exists():
            shutil.copy(bundled.with_suffix(suffix), mine.with_suffix(suffix))
    out = tmp_path / "o"
    assert _run(photos[0], "--out", out, "--model", mine).exit_code == 0
    card = json.loads(mine.with_suffix(".json").read_text())
    card.setdefault("postprocess", {})["min_area_fraction"] = 2.0
    mine.with_suffix(".json").write_text(json.dumps(card))
    res = _run(photos[0], photos[1], "--out", out, "--model", mine, "--resume")
    assert res.exit_code == 2 and res.output.startswith("--resume") and "fingerprints" in res.output, res.output


def test_a_photo_in_the_parts_folder_and_an_unreadable_run_file_are_refused(photos, tmp_path):
    """A walkthrough: `analyze out/parts/p.jpg --out out --overwrite` deleted the photo with the batch's parts, and a
    corrupt run.json read as "analysed with other options (model '?', ...)"."""
    import shutil

    out = tmp_path / "o"
    (out / "parts").mkdir(parents=True)
    inside = out / "parts" / "p.png"
    shutil.copy(photos[0], inside)
    res = _run(inside, "--out", out, "--overwrite")
    assert res.exit_code == 2 and res.output.startswith("--out") and inside.exists(), res.output
    inside.unlink()
    assert _run(photos[0], "--out", out).exit_code == 0
    (out / "parts" / "run.json").write_text("{broken")
    res = _run(photos[0], "--out", out, "--resume")
    assert res.exit_code == 2 and "cannot be read" in res.output, res.output


def test_out_holds_only_this_batchs_parts_and_overlays_after_a_resume(photos, tmp_path):
    """A walkthrough: after `--resume` with a second photo of the same name (both renamed apart) the old
    s_overlay.png and parts/s.json stayed in OUT; so did those of a photo that changed and then failed."""
    import shutil

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(photos[0] if sub == "a" else photos[1], tmp_path / sub / "s.png")
    out = tmp_path / "o"
    assert _run(tmp_path / "a" / "s.png", "--out", out).exit_code == 0
    assert (out / "s_overlay.png").exists() and (out / "parts" / "s.json").exists()
    res = _run(tmp_path / "a" / "s.png", tmp_path / "b" / "s.png", "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.glob("*_overlay.png"))
    assert len(names) == 2 and "s_overlay.png" not in names and not (out / "parts" / "s.json").exists(), names
    broken = tmp_path / "b" / "s.png"
    broken.write_bytes(broken.read_bytes()[:200])  # changed, and now truncated: it fails
    res = _run(tmp_path / "a" / "s.png", broken, "--out", out, "--resume")
    assert res.exit_code == 1, res.output
    assert len(list(out.glob("*_overlay.png"))) == 1 and len(list((out / "parts").glob("*.json"))) == 2  # + run.json


def test_analyze_runs_exported_onnx_files_with_backend_onnx(tmp_path):
    """A walkthrough (stop 65): `analyze --model x.onnx --backend onnx` was refused ("torch: x.onnx is an ONNX
    file; use --backend onnx or auto") wherever torch was installed: the batch's model fingerprints loaded both
    models on torch, whatever --backend said."""
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
    import hashlib
    import shutil

    from hemaseg.models.registry import WEIGHTS_DIR

    for name in ("cells", "wbc-type"):
        for suffix in (".onnx", ".json"):
            shutil.copy(WEIGHTS_DIR / f"{name}{suffix}", tmp_path / f"mine-{name}{suffix}")
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((96, 128, 3), 230, np.uint8)).save(photo)
    res = CliRunner().invoke(app, ["analyze", str(photo), "--out", str(tmp_path / "out"), "--backend", "onnx",
                                   "--model", str(tmp_path / "mine-cells.onnx"),
                                   "--type-model", str(tmp_path / "mine-wbc-type.onnx")])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "out" / PARTS / "run.json").read_text())
    onnx_digest = hashlib.sha256((tmp_path / "mine-cells.onnx").read_bytes()).hexdigest()[:12]
    assert f"sha256 {onnx_digest}" in run["fingerprints"]["model"], run  # the file run, not a torch copy


def test_a_resumed_batchs_report_dates_the_analysis_and_the_report_apart(photos, tmp_path, monkeypatch):
    """A report audit (stop 65): after --resume the "date of analysis" was the report's rebuild time, not when the
    photos were analysed."""
    import hemaseg.pipelines.batch as batch
    import hemaseg.pipelines.report as report

    out = tmp_path / "o"
    for when in ("2026-01-01 10:00:00 +0000", "2026-01-02 11:00:00 +0000"):  # the parts' stamps, the report's
        monkeypatch.setattr(report, "timestamp", lambda: when)
        monkeypatch.setattr(batch, "timestamp", lambda: when)
        assert _run(*(photos[:1] if when.startswith("2026-01-01") else photos), "--out", out,
                    *([] if when.startswith("2026-01-01") else ["--resume"])).exit_code == 0
    page = (out / "report.html").read_text()
    assert ("<th>date of analysis</th><td>2026-01-01 10:00:00 +0000 to 2026-01-02 11:00:00 +0000</td>" in page
            and "<th>report written</th><td>2026-01-02 11:00:00 +0000</td>" in page), page[:3000]


def test_a_photo_with_no_cell_is_said(tmp_path, caplog):
    """A report audit (stop 65): a white frame was "analysed, 0 cells", exit 0, without a word on the console."""
    white = tmp_path / "white.png"
    Image.fromarray(np.full((64, 96, 3), 255, np.uint8)).save(white)
    res = _run(white, "--out", tmp_path / "o")
    assert res.exit_code == 0 and "no cell found: a blank or unusable field?" in caplog.text + res.output, res.output


def test_a_batch_begun_with_other_post_processing_defaults_is_not_resumed(photos, tmp_path):
    """A review (stop 69): run.json kept the options given, not the post-processing defaults, so a batch begun before
    rescale_passes became 4 resumed under 4 and one results.json mixed parts of both. Every knob is recorded now; a
    batch whose run.json holds none (an earlier hemaseg) or others is refused."""
    out = tmp_path / "out"
    assert _run(photos[0], "--out", out).exit_code == 0
    run_file = out / PARTS / "run.json"
    run = json.loads(run_file.read_text())
    assert run["postprocess"]["rescale_passes"] == 4 and "platelet_rescore" not in run["postprocess"]
    assert run["postprocess"]["relative_size"]["wbc"] == 1.6  # a default held in the code, not the card (a review)
    run_file.write_text(json.dumps({**run, "postprocess": {**run["postprocess"], "rescale_passes": 2}}))
    res = _run(photos[0], photos[1], "--out", out, "--resume")
    assert res.exit_code == 2 and "postprocess.rescale_passes 2, now 4" in res.output, res.output
    assert "split_neck" not in res.output  # the knob apart, not both dicts whole (a review)
    run_file.write_text(json.dumps({k: v for k, v in run.items() if k != "postprocess"}))
    res = _run(photos[0], photos[1], "--out", out, "--resume")
    assert res.exit_code == 2 and "did not record its post-processing" in res.output, res.output
    # a knob added since (grow_boxes, stop 70) is read as the behaviour the batch ran with: it resumes (a review)
    run_file.write_text(json.dumps({**run, "postprocess": {k: v for k, v in run["postprocess"].items()
                                                           if k != "grow_boxes"}}))
    assert _run(photos[0], photos[1], "--out", out, "--resume").exit_code == 0


def test_an_earlier_report_without_its_parts_is_not_replaced_unasked(photos, tmp_path):
    """A walkthrough (stop 71): with OUT/parts/ gone (or counts.csv, results.json and report.html written by hand)
    a new batch replaced a report someone may have signed, exit 0."""
    out = tmp_path / "out"
    assert _run(photos[0], "--out", out, "--sample-id", "PATIENT-A").exit_code == 0
    for p in (out / PARTS).iterdir():
        p.unlink()
    (out / PARTS).rmdir()
    before = (out / "report.html").read_bytes()
    for extra in ([], ["--resume"]):
        res = _run(photos[1], "--out", out, "--sample-id", "PATIENT-B", *extra)
        assert res.exit_code == 2 and "report.html" in res.output and "--overwrite" in res.output, res.output
        assert (out / "report.html").read_bytes() == before
    res = _run(photos[1], "--out", out, "--sample-id", "PATIENT-B", "--overwrite")
    assert res.exit_code == 0, res.output
    assert "PATIENT-B" in (out / "report.html").read_text() and "PATIENT-A" not in (out / "report.html").read_text()


def test_results_say_the_settings_given_and_a_file_scale_no_microscope_wrote_is_not_recorded(photos, tmp_path, caplog):
    """A walkthrough (stop 71): --post and --cell-diameter changed the counts and neither results.json nor the
    report said so; a PNG tagged 4800 dpi (5.29 µm/px: a red cell of 1.4 px) was estimated, yet its scale was
    recorded and printed as the photo's."""
    res = _run(photos[1], "--out", tmp_path / "set", "--post", "wbc_min_score=0.95", "--cell-diameter", "60")
    assert res.exit_code == 0, res.output
    e = read_results(tmp_path / "set" / "results.json")[0]
    assert e["postprocess"] == {"wbc_min_score": 0.95} and e["cell_diameter_from"] == "given"
    page = (tmp_path / "set" / "report.html").read_text()
    assert "wbc_min_score=0.95 (given, --post)" in page and "(given, --cell-diameter: not measured)" in page
    res = _run(photos[1], "--out", tmp_path / "nopr", "--post", "platelet_rescore=null")  # (said, not copied: a review)
    assert res.exit_code == 0 and read_results(tmp_path / "nopr" / "results.json")[0]["postprocess"] == \
        {"platelet_rescore": "none"}, res.output
    plain = read_results(_done(photos[1], tmp_path / "plain"))[0]
    assert "postprocess" not in plain and "cell_diameter_from" not in plain
    tagged = tmp_path / "tagged.png"
    Image.open(photos[1]).save(tagged, dpi=(4800, 4800))
    res = _run(tagged, "--out", tmp_path / "tag")
    assert res.exit_code == 0, res.output
    e = read_results(tmp_path / "tag" / "results.json")[0]
    assert "pixel_size_um" not in e and "cell_diameter_from" not in e
    assert "not a microscope's scale; ignored" in caplog.text + res.output
    assert "pixel scale</th><td>not known" in (tmp_path / "tag" / "report.html").read_text()


def test_one_photo_given_twice_is_said(photos, tmp_path, caplog):
    """A walkthrough (stop 71): one photo through two links was counted twice in the batch, said only as two
    output names."""
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / photos[0].name).symlink_to(photos[0])
    res = _run(photos[0], tmp_path / "links" / photos[0].name, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "the same pixels as" in caplog.text + res.output
    assert "hold the same pixels as another given before" in (tmp_path / "o" / "report.html").read_text()


def _done(photo, out):
    assert _run(photo, "--out", out).exit_code == 0
    return out / "results.json"


def test_a_warning_logged_while_a_photo_is_analysed_names_it(photos, tmp_path, caplog):
    """A review (stop 71): the scale-bound warning logged during a batch named no photo (only the command line's
    per-input loops set the name: analyze's batch loop and evaluate's did not)."""
    res = _run(photos[0], "--out", tmp_path / "o", "--cell-diameter", "4000")
    assert res.exit_code == 0, res.output
    assert f"{photos[0]}: cells: run at 0.1x" in caplog.text + res.output


def test_a_batch_begun_under_an_old_default_is_told_the_post_that_finishes_it(photos, tmp_path):
    """A review (stop 71): a batch begun when wbc_min_score's default was 0.6 was refused on --resume, and the
    --post wbc_min_score=0.6 the message pointed to was refused too (the raw --post list was compared as well)."""
    out = tmp_path / "out"
    assert _run(photos[0], "--out", out).exit_code == 0
    run_file = out / PARTS / "run.json"
    run = json.loads(run_file.read_text())
    assert run["postprocess"]["wbc_min_score"] == 0.4 and "post" not in run
    run_file.write_text(json.dumps({**run, "postprocess": {**run["postprocess"], "wbc_min_score": 0.6}}))
    res = _run(photos[0], photos[1], "--out", out, "--resume")
    assert res.exit_code == 2 and "wbc_min_score's default was 0.6 (now 0.4)" in res.output and \
        "--post wbc_min_score=0.6 beside --resume" in res.output, res.output
    res = _run(photos[0], photos[1], "--out", out, "--resume", "--post", "wbc_min_score=0.6")
    assert res.exit_code == 0, res.output
    assert len(json.loads((out / "results.json").read_text())["data"]) == 2


def test_a_batch_whose_every_photo_failed_keeps_the_typers_columns(tmp_path):
    """A walkthrough (stop 71): counts.csv of a batch whose every photo failed had the five types' columns only, where
    every other run of the bundled typer has ig and erythroblast too (DESIGN.md: appended when the classifier names
    them)."""
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    res = _run(tmp_path / "bad.jpg", "--out", tmp_path / "o")
    assert res.exit_code == 1
    header = (tmp_path / "o" / "counts.csv").read_text().splitlines()[0]
    assert header.endswith(",ig,erythroblast,ig_pct,ig_pct_lo,ig_pct_hi,unsure"), header


def test_a_batch_begun_without_the_platelet_rescorer_is_not_resumed_with_it(photos, tmp_path):
    """A review (stop 71): comparing the knobs as run, not their --post spelling, lost platelet_rescore (left out of
    the recorded knobs: the card's fitted re-scorer): a batch begun with --post platelet_rescore=null resumed with it."""
    out = tmp_path / "out"
    assert _run(photos[0], "--out", out, "--post", "platelet_rescore=null").exit_code == 0
    res = _run(photos[0], photos[1], "--out", out, "--resume")
    assert res.exit_code == 2 and "platelet_rescore" in res.output, res.output
    res = _run(photos[0], photos[1], "--out", out, "--resume", "--post", "platelet_rescore=null")
    assert res.exit_code == 0, res.output
    out2 = tmp_path / "out2"  # a --post of the old default given by hand is no changed default
    assert _run(photos[0], "--out", out2, "--post", "wbc_min_score=0.6").exit_code == 0
    res = _run(photos[0], photos[1], "--out", out2, "--resume")
    assert res.exit_code == 2 and "default was" not in res.output and "wbc_min_score 0.6, now 0.4" in res.output
