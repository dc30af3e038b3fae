"""The light install: `pip install hemaseg` (no torch) runs segment and analyze on ONNX Runtime with
the bundled models, with the same outputs as torch; importing the CLI imports no torch."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "hemaseg" / "samples" / "BloodImage_00000.jpg"
HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "albumentations")
# A meta-path finder refusing the training stack, as if it were not installed.
BLOCKER = f"""
import sys
class _NoTrainingStack:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"No module named {{name!r}} (blocked: light install test)")
        return None
sys.meta_path.insert(0, _NoTrainingStack())
"""


def _light(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``python -m hemaseg.cli ARGS`` where importing torch (and the rest of the training stack) fails."""
    site = tmp_path / "no_torch"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "hemaseg.cli", *args], env=env, capture_output=True, text=True,
                          timeout=240)


def test_importing_the_cli_imports_no_training_stack():
    code = f"import sys, hemaseg.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_the_blocker_does_block(tmp_path):
    res = _light(["train", "wbc", "--out", str(tmp_path / "run")], tmp_path)
    assert res.returncode == 2 and "needs torch" in res.stderr and "hemaseg[train]" in res.stderr


def test_light_segment_and_analyze_match_torch(tmp_path):
    pytest.importorskip("onnxruntime", reason="the light install runs on onnxruntime")
    pytest.importorskip("torch", reason="the torch reference needs the train extra")
    # segment --task wbc: the light install (ONNX Runtime) and torch give the same label map.
    res = _light(["segment", str(SAMPLE), "--task", "wbc", "--out", str(tmp_path / "light")], tmp_path)
    assert res.returncode == 0, res.stderr
    ref = CliRunner().invoke(app, ["segment", str(SAMPLE), "--task", "wbc", "--out", str(tmp_path / "torch"),
                                   "--backend", "torch"])
    assert ref.exit_code == 0, ref.output
    light = np.asarray(Image.open(tmp_path / "light" / "BloodImage_00000.png"))
    torch_ = np.asarray(Image.open(tmp_path / "torch" / "BloodImage_00000.png"))
    assert light.shape == torch_.shape and (light == torch_).mean() >= 0.9999 and (light > 0).any()
    # analyze: the bundled cells U-Net runs on ONNX Runtime as on torch; asked for the Mask R-CNN
    # (no ONNX file), the light install gives way to the U-Net and says so.
    res = _light(["analyze", str(SAMPLE), "--out", str(tmp_path / "light_a")], tmp_path)
    assert res.returncode == 0, res.stderr
    mrcnn = _light(["analyze", str(SAMPLE), "--out", str(tmp_path / "light_m"), "--model", "cells-maskrcnn"], tmp_path)
    assert mrcnn.returncode == 0 and "cells instead" in mrcnn.stderr, mrcnn.stderr
    ref = CliRunner().invoke(app, ["analyze", str(SAMPLE), "--out", str(tmp_path / "torch_a"), "--model", "cells",
                                   "--backend", "torch"])
    assert ref.exit_code == 0, ref.output

    def counts(folder):
        with open(folder / "counts.csv") as f:
            return list(csv.reader(f))

    assert counts(tmp_path / "light_a") == counts(tmp_path / "torch_a")
    a, b = (json.loads((tmp_path / k / "results.json").read_text())["data"]["0"]["masks"] for k in ("light_a", "torch_a"))
    assert [r["class_name"] for r in a] == [r["class_name"] for r in b] and len(a) > 10
    assert [r["bounding_box"] for r in a] == [r["bounding_box"] for r in b]


def test_light_evaluate_of_a_model_it_cannot_run_is_a_usage_error_as_segment_says_it(tmp_path, tiny_model_path,
                                                                                      wbc_folder):
    """A walkthrough (stop 65): without torch, a run folder with no ONNX file was exit 2 for segment (naming
    --model) and exit 1 for evaluate (a failed evaluation)."""
    for args in (["segment", str(SAMPLE), "--out", str(tmp_path / "s")],
                 ["evaluate", "wbc", "--data", str(wbc_folder), "--grid", str(tmp_path / "g.png")]):
        res = _light([*args, "--model", str(tiny_model_path)], tmp_path)
        assert res.returncode == 2 and "--model" in res.stderr and "without torch" in res.stderr, (args, res.stderr)
