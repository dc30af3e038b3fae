"""The runtime abstraction: the same tiled prediction and crop typing on torch and ONNX Runtime,
which backend get_model picks, and the fallbacks."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
pytest.importorskip("onnx", reason="exporting needs the onnx package (the onnx extra)")
torch = pytest.importorskip("torch", reason="comparing against torch needs the train extra")

from helpers import TINY  # noqa: E402
from hemaseg.engine import runtime  # noqa: E402
from hemaseg.engine.predict import _cached_model, get_model, predict_probs  # noqa: E402
from hemaseg.engine.runtime import OnnxRunner, TorchRunner, load_runner  # noqa: E402
from hemaseg.engine.tiling import predict_tiled  # noqa: E402
from hemaseg.errors import HemasegInputError, HemasegUsageError  # noqa: E402
from hemaseg.models.registry import WEIGHTS_DIR, create_model, save_model  # noqa: E402
from hemaseg.pipelines.export import export_onnx  # noqa: E402
from hemaseg.tasks.wbc_type.crops import predict_crops  # noqa: E402

TOLERANCE = 1e-4  # largest probability difference accepted between the backends


@pytest.fixture
def tiny_onnx(tiny_model_path):
    """The tiny U-Net's safetensors path, with its ONNX export beside it."""
    export_onnx(tiny_model_path, tiny_model_path.with_suffix(".onnx"), write_card=True)
    _cached_model.cache_clear()
    return tiny_model_path


def test_tiled_prediction_agrees_between_backends_at_any_size(tiny_onnx):
    module, card = get_model(tiny_onnx, backend="torch")
    onnx, card2 = get_model(tiny_onnx, backend="onnx")
    assert isinstance(onnx, OnnxRunner) and not isinstance(module, OnnxRunner)
    assert card2["onnx"]["file"] == tiny_onnx.with_suffix(".onnx").name and card2["onnx"]["opset"] >= 13
    rng = np.random.default_rng(0)
    for h, w in [(37, 50), (120, 96)]:  # dynamic height and width, one tile and several
        x = rng.random((h, w, 3), dtype=np.float32)
        a = predict_tiled(module, x, tile=64, overlap=16, stride=module.stride)
        b = predict_tiled(onnx, x, tile=64, overlap=16, stride=onnx.stride)
        assert a.shape == b.shape == (3, h, w)
        assert np.abs(a - b).max() < TOLERANCE
    image = (rng.random((80, 90, 3)) * 255).astype(np.uint8)
    assert np.abs(predict_probs(module, card, image) - predict_probs(onnx, card, image)).max() < TOLERANCE


def test_torch_runner_is_the_module_itself(tiny_model_path):
    torch.manual_seed(0)
    module = create_model("unet-dropout", classes=3, **TINY).eval()
    x = np.random.default_rng(1).random((2, 32, 40, 3), dtype=np.float32)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(TorchRunner(module)(x), ref, atol=1e-5)


def test_classifier_with_extras_agrees_between_backends(tmp_path):
    torch.manual_seed(0)
    kw = {"backbone": "resnet10-quarter", "classes": 5, "dropout": 0.0, "domain_head": True, "extras": 3}
    card = {"name": "tiny-type", "task": "wbc-type", "classes": ["a", "b", "c", "d", "e"],
            "architecture": {"name": "wbc-classifier", "kwargs": kw},
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0}, "input_size": 48, "temperature": 1.5}
    st, _ = save_model(create_model("wbc-classifier", **kw).eval(), tmp_path / "tiny-type", card)
    entry = export_onnx(st, st.with_suffix(".onnx"))
    assert entry["inputs"] == ["image", "extras"] and entry["max_abs_prob_diff"] <= entry["tolerance"]
    rng = np.random.default_rng(2)
    crops = [(rng.random((48, 48, 3)) * 255).astype(np.uint8) for _ in range(5)]
    extras = rng.normal(size=(5, 3)).astype(np.float32)
    _cached_model.cache_clear()
    p_torch = predict_crops(crops, get_model(st, backend="torch"), extras=extras)
    p_onnx = predict_crops(crops, get_model(st, backend="onnx"), extras=extras)
    assert p_onnx.shape == (5, 5) and np.allclose(p_onnx.sum(1), 1.0, atol=1e-5)
    assert np.abs(p_torch - p_onnx).max() < TOLERANCE
    # The extras do reach the ONNX graph: other rulers, other probabilities.
    assert np.abs(predict_crops(crops, get_model(st, backend="onnx"), extras=extras * 5) - p_onnx).max() > 1e-4


def test_backend_choice(tiny_model_path, tiny_onnx, caplog):
    assert not isinstance(get_model(tiny_onnx, backend="torch")[0], OnnxRunner)
    assert isinstance(get_model(tiny_onnx, backend="auto")[0], OnnxRunner)  # an ONNX file: ONNX Runtime
    assert isinstance(get_model(tiny_onnx.with_suffix(".onnx"), backend="auto")[0], OnnxRunner)
    with pytest.raises(HemasegUsageError, match="^backend: "):
        get_model(tiny_onnx, backend="tensorflow")
    with pytest.raises(HemasegUsageError, match="ONNX file"):
        get_model(tiny_onnx.with_suffix(".onnx"), backend="torch")
    # A card saying ONNX Runtime did not agree through the pipeline: auto keeps torch.
    card_path = tiny_onnx.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["onnx"]["auto"] = False
    card_path.write_text(json.dumps(card))
    _cached_model.cache_clear()
    assert not isinstance(get_model(tiny_onnx, backend="auto")[0], OnnxRunner)
    assert isinstance(get_model(tiny_onnx, backend="onnx")[0], OnnxRunner)
    # No ONNX file: --backend onnx falls back to torch and says so in one line.
    tiny_onnx.with_suffix(".onnx").unlink()
    _cached_model.cache_clear()
    with caplog.at_level(logging.WARNING):
        model, _ = get_model(tiny_onnx, backend="onnx")
    assert not isinstance(model, OnnxRunner)
    assert any("cannot run on ONNX Runtime" in r.getMessage() and "torch" in r.getMessage() for r in caplog.records)


def test_without_torch_a_model_falls_back_to_the_one_its_card_names(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "torch_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        model, card = load_runner("cells-maskrcnn", backend="auto")  # the Mask R-CNN: no ONNX file
    assert isinstance(model, OnnxRunner) and card["name"] == "cells"
    assert any("cells instead" in r.getMessage() for r in caplog.records)
    with pytest.raises(HemasegUsageError, match="not installed"):
        load_runner("wbc", backend="torch")


def test_without_torch_a_model_without_onnx_or_fallback_is_one_clear_error(tiny_model_path, monkeypatch):
    monkeypatch.setattr(runtime, "torch_available", lambda: False)
    with pytest.raises(HemasegInputError, match="cannot run without torch"):
        load_runner(tiny_model_path, backend="auto")


@pytest.mark.parametrize("card_path", sorted(WEIGHTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_bundled_models_ship_as_onnx_under_10_mb(card_path):
    card = json.loads(card_path.read_text())
    onnx = card.get("onnx", {})
    if card["architecture"]["name"] == "maskrcnn-light":
        assert onnx.get("fallback") and onnx.get("reason")  # says why, and what runs instead
        return
    path = WEIGHTS_DIR / onnx["file"]
    data = path.read_bytes()
    assert len(data) < 10 * 1024 * 1024 and onnx["bytes"] == len(data)
    import hashlib

    assert hashlib.sha256(data).hexdigest() == onnx["sha256"]
    assert onnx["opset"] >= 13 and onnx["max_abs_prob_diff"] <= onnx["tolerance"]


def test_the_public_calls_take_a_backend():
    import hemaseg

    image = hemaseg.read_image(WEIGHTS_DIR.parent / "samples" / "BloodImage_00000.jpg")[200:456, 60:316]
    segs = {b: hemaseg.segment(image, model="wbc", cell_diameter=75, backend=b) for b in ("torch", "onnx")}
    assert np.abs(segs["torch"].probs - segs["onnx"].probs).max() < TOLERANCE
    assert (segs["torch"].classes == segs["onnx"].classes).all() and segs["onnx"].classes.any()
    types = {b: hemaseg.classify(image, backend=b) for b in ("torch", "onnx")}
    assert max(abs(types["torch"][k] - types["onnx"][k]) for k in types["torch"]) < TOLERANCE
    with pytest.raises(HemasegUsageError, match="^backend: "):
        hemaseg.segment(image, model="wbc", backend="gpu")
