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
