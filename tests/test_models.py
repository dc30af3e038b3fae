import numpy as np
import pytest
import torch

from helpers import TINY
from hemaseg.engine.tiling import predict_tiled
from hemaseg.errors import HemasegInputError
from hemaseg.models.registry import create_model, list_models, load_model, save_model


def test_registry_lists_both_families():
    assert {"unet-dropout", "smp-unet"} <= set(list_models())
    with pytest.raises(KeyError, match="unknown architecture"):
        create_model("nope")


@pytest.mark.parametrize("name,kw", [
    ("unet-dropout", TINY),
    ("unet-dropout", {**TINY, "stem_stride": 2, "norm": "group"}),
    ("smp-unet", {"encoder": "tu-resnet10t", "decoder_channels": [16, 8, 8, 8, 4]}),
])
def test_three_classes_any_size(name, kw):
    torch.manual_seed(0)
    model = create_model(name, classes=3, **kw).eval()
    x = np.random.default_rng(0).random((45, 70, 3), dtype=np.float32)
    p = predict_tiled(model, x, stride=model.stride)
    assert p.shape == (3, 45, 70)


def test_dropout_is_inside_the_conv_blocks():
    model = create_model("unet-dropout", classes=3, **TINY)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.down[1].modules())


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet-dropout", classes=3, **TINY).eval()
    card = {"task": "wbc", "architecture": {"name": "unet-dropout", "kwargs": {"classes": 3, **TINY}}}
    save_model(model, tmp_path / "m", card)
    loaded, card2 = load_model(tmp_path / "m.safetensors")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)  # channels_last may reorder sums
    assert card2 == card
    # a score with nothing to score (NaN) is standard JSON's null, not a bare NaN other parsers refuse
    import json

    save_model(model, tmp_path / "n", {**card, "metrics": {"val": {"dice": float("nan"), "iou": 0.5}}})
    text = (tmp_path / "n.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["val"] == {"dice": None, "iou": 0.5}


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(HemasegInputError, match="no such model"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    (tmp_path / "bad.json").write_text('{"architecture": {"name": "unet-dropout", "kwargs": {}}}')
    with pytest.raises(HemasegInputError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")


def test_list_models_names_the_bundled_models_and_a_wrong_name_lists_them():
    import hemaseg
    from hemaseg.errors import HemasegInputError

    bundled = hemaseg.list_models(bundled=True)
    assert {"wbc", "nuclei", "smear10", "cells", "wbc-type"} <= set(bundled)
    assert "unet-dropout" in hemaseg.list_models() and "unet-dropout" not in bundled
    with pytest.raises(HemasegInputError, match="bundled: cells, "):
        hemaseg.load_model("smp-unet")  # an architecture, not a model with weights


def test_a_folder_named_like_a_bundled_model_does_not_replace_it(tmp_path, monkeypatch):
    """A walkthrough: `segment --task wbc photos/ --out wbc` left a folder ./wbc, and every later command's default
    model resolved to it ("--model: wbc: folder holds no model.safetensors"); `./wbc` still names the folder."""
    import pytest

    from hemaseg.errors import HemasegInputError
    from hemaseg.models.registry import WEIGHTS_DIR, resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "wbc").mkdir()
    assert resolve_model_path("wbc") == WEIGHTS_DIR / "wbc.safetensors"
    with pytest.raises(HemasegInputError, match="folder holds no model"):
        resolve_model_path("./wbc")
