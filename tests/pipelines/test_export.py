"""hemaseg export: the format registry, the ONNX exporter through the CLI, and its refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
pytest.importorskip("onnx", reason="exporting needs the onnx package (the onnx extra)")
pytest.importorskip("torch", reason="exporting needs the train extra")

from helpers import toy_wbc  # noqa: E402
from hemaseg.cli import app  # noqa: E402
from hemaseg.pipelines import export as export_mod  # noqa: E402

runner = CliRunner()


def test_export_onnx_then_segment_with_it_as_with_torch(tiny_model_path, tmp_path):
    out = tmp_path / "exported" / "tiny.onnx"
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["file"] == "tiny.onnx" and summary["opset"] == export_mod.DEFAULT_OPSET
    assert summary["max_abs_prob_diff"] <= summary["tolerance"] == export_mod.DEFAULT_TOLERANCE
    assert out.exists() and json.loads(out.with_suffix(".json").read_text())["onnx"]["file"] == "tiny.onnx"
    img, _ = toy_wbc(np.random.default_rng(0), 96)
    src = tmp_path / "cell.png"
    Image.fromarray(img).save(src)
    labels = {}
    for backend, model in (("torch", tiny_model_path), ("onnx", out)):
        dest = tmp_path / backend
        res = runner.invoke(app, ["segment", str(src), "--out", str(dest), "--model", str(model),
                                  "--backend", backend, "--cell-diameter", "24"])
        assert res.exit_code == 0, res.output
        labels[backend] = np.asarray(Image.open(dest / "cell.png"))
    assert (labels["torch"] == labels["onnx"]).mean() > 0.999


def test_export_refusals_are_one_line(tiny_model_path, tmp_path):
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "tflite", "--out", str(tmp_path / "m.x")])
    assert res.exit_code == 2 and "--format" in res.output and "onnx" in res.output
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "m.bin")])
    assert res.exit_code == 2 and "--out" in res.output and ".onnx" in res.output
    res = runner.invoke(app, ["export", "cells-maskrcnn", "--out", str(tmp_path / "cells.onnx")])  # the Mask R-CNN
    assert res.exit_code == 1 and "Mask R-CNN" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "cells.onnx").exists()
    res = runner.invoke(app, ["export", str(tmp_path / "nothing.safetensors"), "--out", str(tmp_path / "n.onnx")])
    assert res.exit_code == 2 and "nothing.safetensors" in res.output  # bad usage, as segment and classify say it


def test_a_format_registers_in_one_line(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(export_mod.EXPORTERS, "echo", lambda model, out: calls.append((model, out)) or {"ok": 1})
    assert export_mod.export("wbc", "echo", tmp_path / "x") == {"ok": 1} and calls == [("wbc", tmp_path / "x")]


def test_export_never_replaces_the_card_of_a_model_beside_it(tiny_model_path, tmp_path):
    """PATH.onnx's card is PATH.json: when PATH.safetensors is there, that is its model's card (was replaced by
    another model's, which then no longer loaded)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for suffix in (".safetensors", ".json"):
        (folder / f"wbc{suffix}").write_bytes(tiny_model_path.with_suffix(suffix).read_bytes())
    before = (folder / "wbc.json").read_bytes()
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(folder / "wbc.onnx")])
    assert res.exit_code == 2 and "wbc.json is the card of" in res.output
    assert (folder / "wbc.json").read_bytes() == before and not (folder / "wbc.onnx").exists()


def test_export_keeps_a_runs_card_and_any_other_json_and_writes_the_pair_or_nothing(tiny_model_path, tmp_path):
    """--out run/model.onnx replaced a training run's model.json (which its best/last weights read: the run no
    longer loaded), and --out x.onnx any x.json; a card that could not be written (x.json a folder) was a traceback
    with x.onnx left behind without its card. An earlier export's own card is replaced, as before."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(tiny_model_path.read_bytes())
    (run / "model.json").write_bytes(tiny_model_path.with_suffix(".json").read_bytes())
    (tmp_path / "seg.json").write_text('{"objects": []}')
    (tmp_path / "dir.json").mkdir()
    before = (run / "model.json").read_bytes()
    for out, says in ((run / "model.onnx", "not the card of an earlier export"),
                      (tmp_path / "seg.onnx", "not the card of an earlier export"),
                      (tmp_path / "dir.onnx", "is a folder")):
        res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(out)])
        assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not out.exists()
    assert (run / "model.json").read_bytes() == before and (tmp_path / "seg.json").read_text() == '{"objects": []}'
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0 and (tmp_path / "m.onnx").exists() and (tmp_path / "m.json").exists(), res.output
    # an earlier export (perhaps of another run) is replaced only when asked (a walkthrough, stop 69: unsaid, exit 0)
    (tmp_path / "m.onnx").write_bytes(b"earlier")
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "m.onnx exists; give another name, or --overwrite" in res.output, res.output
    assert (tmp_path / "m.onnx").read_bytes() == b"earlier"
    (tmp_path / "m.onnx").unlink()  # its card alone is still an earlier export's
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "m.json exists" in res.output and not (tmp_path / "m.onnx").exists(), res.output
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "m.onnx"), "--overwrite"])
    assert res.exit_code == 0 and (tmp_path / "m.onnx").stat().st_size > 1000, res.output
    (tmp_path / "seg.json").unlink()  # --overwrite replaces no run's card and no other JSON
    (tmp_path / "seg.json").write_text('{"objects": []}')
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "seg.onnx"), "--overwrite"])
    assert res.exit_code == 2 and (tmp_path / "seg.json").read_text() == '{"objects": []}', res.output


def test_export_card_failure_leaves_no_onnx_file(tiny_model_path, tmp_path, monkeypatch):
    import hemaseg.pipelines.export as ex

    def no_card(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ex, "write_json", no_card)
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and "cannot write the card" in res.output and not (tmp_path / "m.onnx").exists()


def test_bioimageio_export_takes_an_empty_folder_as_its_help_says(tiny_model_path, tmp_path, monkeypatch):
    """--out EMPTY_FOLDER was refused ('is a folder; give a file name') though --help and the docs allow it."""
    import hemaseg.cli as cli

    calls = []
    monkeypatch.setattr(cli, "run_export", lambda model, fmt, out: calls.append((fmt, out)) or {"ok": 1})
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out", str(tmp_path / "empty")])
    assert res.exit_code == 0 and calls == [("bioimageio", tmp_path / "empty")], res.output
    (tmp_path / "empty" / "x").write_text("")
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out", str(tmp_path / "empty")])
    assert res.exit_code == 2 and len(calls) == 1 and "PATH.zip or a new (or empty) folder" in res.output, res.output
    # a file name of another kind became a folder of that name (a walkthrough, stop 65)
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and len(calls) == 1 and not (tmp_path / "m.onnx").exists(), res.output
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out", str(tmp_path / "m.zip")])
    assert res.exit_code == 0 and calls[-1] == ("bioimageio", tmp_path / "m.zip"), res.output
    (tmp_path / "backup.zip").write_bytes(b"a lab's own zip")  # replaced unsaid before (a walkthrough, stop 69)
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out",
                              str(tmp_path / "backup.zip")])
    assert res.exit_code == 2 and "backup.zip exists" in res.output and len(calls) == 2, res.output
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out",
                              str(tmp_path / "backup.zip"), "--overwrite"])
    assert res.exit_code == 0 and calls[-1] == ("bioimageio", tmp_path / "backup.zip"), res.output
    (tmp_path / "pkg.v1").mkdir()  # a folder whose name has a dot, empty or new, is a folder (a review, stop 65)
    for out in (tmp_path / "pkg.v1", tmp_path / "wbc-1.0"):
        res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "bioimageio", "--out", str(out)])
        assert res.exit_code == 0 and calls[-1] == ("bioimageio", out), res.output


def test_an_exported_file_runs_where_no_backend_is_named_and_a_card_of_another_file_is_refused(
        tiny_model_path, tmp_path, wbc_folder):
    """A walkthrough (stop 65): `evaluate --model x.onnx` (evaluate has no --backend) was refused with "use --backend
    onnx or auto"; and an ONNX file beside another model's card ran silently with the wrong classes (nuclei weights
    under a wbc card: no WBC found)."""
    out = tmp_path / "exported" / "tiny.onnx"
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--model", str(out), "--cell-diameter",
                              "24", "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0 and "MEAN" in res.output, res.output
    card = json.loads(out.with_suffix(".json").read_text())
    src = tmp_path / "cell.png"
    Image.fromarray(toy_wbc(np.random.default_rng(0), 96)[0]).save(src)
    for name, edit, said in (("classes", {"classes": ["background", "nucleus", "boundary"]}, "its classes"),
                             ("hash", {"onnx": {**card["onnx"], "sha256": "0" * 64}}, "SHA-256 differs")):
        other = tmp_path / f"{name}.onnx"
        other.write_bytes(out.read_bytes())
        other.with_suffix(".json").write_text(json.dumps({**card, **edit}))
        res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / name), "--model", str(other),
                                  "--backend", "onnx", "--cell-diameter", "24"])
        assert res.exit_code == 2 and said in res.output and f"{name}.onnx" in res.output, res.output
        assert not (tmp_path / name / "cell.png").exists()
    # an upper-case suffix is an ONNX file too (it was taken for torch weights; a review, stop 65)
    upper = tmp_path / "UP.ONNX"
    upper.write_bytes(out.read_bytes())
    upper.with_suffix(".json").write_text(json.dumps(card))
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "up"), "--model", str(upper),
                              "--cell-diameter", "24"])
    assert res.exit_code == 0 and (tmp_path / "up" / "cell.png").exists(), res.output
    # a card with no SHA-256 (written before exports hashed their file, or by hand) still loads
    old = tmp_path / "old.onnx"
    old.write_bytes(out.read_bytes())
    old.with_suffix(".json").write_text(json.dumps({**card, "onnx": {"file": "old.onnx"}}))
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "old"), "--model", str(old), "--backend",
                              "onnx", "--cell-diameter", "24"])
    assert res.exit_code == 0 and (tmp_path / "old" / "cell.png").exists(), res.output


def test_a_bioimageio_package_given_as_model_is_refused_not_swapped_for_its_name_mate(tiny_model_path, tmp_path):
    """A walkthrough (stop 69): `--model A.zip` (a bioimage.io package) beside A.json, the card of an ONNX export
    A.onnx of another model, ran A.onnx and recorded "model": "A.zip"; any file with a card beside it was taken."""
    res = runner.invoke(app, ["export", str(tiny_model_path), "--out", str(tmp_path / "A.onnx")])
    assert res.exit_code == 0, res.output
    (tmp_path / "A.zip").write_bytes(b"PK a package")
    (tmp_path / "A.png").write_bytes(b"a photo")
    for model, says in (("A.zip", "a bioimage.io package is for bioimage.io's tools"), ("A.png", "not a model")):
        res = runner.invoke(app, ["segment", "--task", "wbc", str(tmp_path / "A.png"), "--model",
                                  str(tmp_path / model), "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and says in res.output and not (tmp_path / "o").exists(), res.output


def test_an_onnx_file_beside_a_card_written_for_no_onnx_file_a_json_model_and_a_light_export(tiny_model_path, tmp_path,
                                                                                            monkeypatch, caplog):
    """A walkthrough (stop 71): an .onnx beside a training run's model.json (or under a card with no ONNX entry) ran
    silently with that card's size; `--model X.json` of an export was read as safetensors ("header too large");
    export without the onnx package was a traceback; an export kept the bundled file's measurements ("auto": false),
    so auto imported torch to run it."""
    import sys

    card = json.loads(tiny_model_path.with_suffix(".json").read_text())
    tiny_model_path.with_suffix(".json").write_text(json.dumps(
        {**card, "onnx": {"auto": False, "pipeline_agrees": False, "seconds_per_batch": {"torch": 1.0, "onnx": 2.0}}}))
    out = tmp_path / "exp" / "tiny.onnx"
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    entry = json.loads(out.with_suffix(".json").read_text())["onnx"]
    assert entry["sha256"] and not {"auto", "pipeline_agrees", "seconds_per_batch"} & set(entry)
    src = tmp_path / "cell.png"
    Image.fromarray(toy_wbc(np.random.default_rng(0), 96)[0]).save(src)
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "j"), "--model", str(out.with_suffix(".json")),
                              "--cell-diameter", "24"])
    assert res.exit_code == 0 and (tmp_path / "j" / "cell.png").exists(), res.output  # the ONNX file it was written for
    lone = tmp_path / "lone.json"
    lone.write_text(json.dumps(card))
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "l"), "--model", str(lone)])
    assert res.exit_code == 2 and "a model card with no weights beside it" in res.output, res.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps(card))  # a training card: written for no ONNX file
    (run / "exported.onnx").write_bytes(out.read_bytes())
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "m"), "--model", str(run / "exported.onnx"),
                              "--backend", "onnx", "--cell-diameter", "24"])
    assert res.exit_code == 2 and "its card was not written for this ONNX file" in res.output, res.output
    # an .onnx found beside weights whose card it does not match (a run retrained since its export): under auto the
    # weights run on torch, said (a review: it stopped the run); asked for by --backend onnx it is refused
    (run / "model.safetensors").write_bytes(tiny_model_path.read_bytes())
    (run / "model.onnx").write_bytes(out.read_bytes())
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "a"), "--model", str(run), "--cell-diameter",
                              "24"])
    assert res.exit_code == 0 and (tmp_path / "a" / "cell.png").exists(), res.output
    assert "model.onnx beside its weights was not exported from them" in caplog.text + res.output
    monkeypatch.setitem(sys.modules, "onnx", None)  # the light and train installs hold no onnx package
    res = runner.invoke(app, ["export", str(tiny_model_path), "--format", "onnx", "--out", str(tmp_path / "n.onnx")])
    assert res.exit_code == 2 and "pip install 'hemaseg[train,onnx]'" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "n.onnx").exists()
