"""WBC typing: data readers, the gradient-reversal layer, Grad-CAM, classify/explain/train commands."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import toy_wbc
from hemaseg.cli import app
from hemaseg.io.datasets import find_labelled_cells
from hemaseg.models.classifier import grad_reverse
from hemaseg.models.registry import create_model, save_model

runner = CliRunner()
TYPES = ["neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil"]
TINY_BACKBONE = "resnet10-quarter"


def _crops(root, per_class=3, classes=("Neutrophil", "Lymphocyte"), size=72, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, _ = toy_wbc(rng, size, radius=size / (3.2 if c == "Neutrophil" else 4.5))
            Image.fromarray(img).save(root / c / f"{c[:2]}_{i}.jpg")
    return root


@pytest.fixture
def tiny_classifier(tmp_path):
    torch.manual_seed(0)
    kw = {"backbone": TINY_BACKBONE, "classes": 5, "dropout": 0.0, "domain_head": True}
    model = create_model("wbc-classifier", **kw).eval()
    card = {"name": "tiny-type", "task": "wbc-type", "classes": TYPES, "architecture": {"name": "wbc-classifier", "kwargs": kw},
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0}, "input_size": 48, "cell_normalised": True}
    return save_model(model, tmp_path / "tiny-type", card)[0]


def test_gradient_reversal_negates_and_scales_the_gradient():
    x = torch.ones(3, 4, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))


def test_readers_imagefolder_and_wbcseg_csv(tmp_path):
    _crops(tmp_path / "folder")
    items = find_labelled_cells(tmp_path / "folder")
    assert len(items) == 6 and {c for _, c in items} == {"neutrophil", "lymphocyte"}
    ws = tmp_path / "wbcseg" / "Dataset 1"
    ws.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):
        img, mask = toy_wbc(rng, 48)
        Image.fromarray(img).save(ws / f"{i:03d}.bmp")
        Image.fromarray(mask).save(ws / f"{i:03d}.png")
    (tmp_path / "wbcseg" / "Class Labels of Dataset 1.csv").write_text("Image ID,Class Label\n1,1\n2,2\n3,4\n")
    got = sorted((p.name, c) for p, c in find_labelled_cells(tmp_path / "wbcseg"))
    assert got == [("001.bmp", "neutrophil"), ("002.bmp", "lymphocyte"), ("003.bmp", "eosinophil")]


def test_grad_cam_map_has_the_input_size(tiny_classifier):
    from hemaseg.models.registry import load_model
    from hemaseg.tasks.wbc_type.explain import grad_cam, gradcam_mask

    module, card = load_model(tiny_classifier)
    crop = toy_wbc(np.random.default_rng(1), 70)[0][:50]
    cam, k = grad_cam(module, card, crop)
    assert cam.shape == (50, 70) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0 and 0 <= k < 5
    assert gradcam_mask(cam).shape == (50, 70)


@pytest.mark.parametrize("mode,columns", [
    (1, ["MONONUCLEAR", "POLYNUCLEAR"]),
    (2, ["NEUTROPHIL", "EOSINOPHIL", "MONOCYTE", "LYMPHOCYTE"]),
    (3, ["NEUTROPHIL", "EOSINOPHIL", "MONOCYTE", "LYMPHOCYTE", "BASOPHIL"]),
])
def test_classify_csv_columns_and_broken_image(tmp_path, tiny_classifier, mode, columns):
    d = _crops(tmp_path / "crops", per_class=2)
    (d / "Neutrophil" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["classify", "-m", str(mode), "-d", str(d), "-o", str(out), "--model", str(tiny_classifier)])
    assert res.exit_code == 1, res.output  # one broken input: reported, the rest classified
    assert "broken.png" in res.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["filename", "prediction", *columns]
    assert len(rows) == 1 + 4
    for r in rows[1:]:
        probs = np.array([float(v) for v in r[2:]])
        assert r[1] == columns[int(probs.argmax())] and abs(probs.sum() - 1) < 1e-4
    res = runner.invoke(app, ["classify", "-m", "4", "-d", str(d)])
    assert res.exit_code == 2


def test_classify_single_file_keeps_the_path_as_given(tmp_path, tiny_classifier):
    d = _crops(tmp_path / "c", per_class=1, classes=("Monocyte",))
    f = next((d / "Monocyte").iterdir())
    out = tmp_path / "o.csv"
    res = runner.invoke(app, ["classify", "-f", str(f), "-o", str(out), "--model", str(tiny_classifier)])
    assert res.exit_code == 0, res.output
    assert list(csv.reader(out.open()))[1][0] == str(f)


def test_train_wbc_type_with_dann_resume_and_explain(tmp_path):
    data = _crops(tmp_path / "a", per_class=4)
    target = _crops(tmp_path / "b", per_class=2, seed=5)
    run = tmp_path / "run"
    args = ["train", "wbc-type", "--data", str(data), "--out", str(run), "--backbone", TINY_BACKBONE, "--epochs", "2",
            "--batch-size", "4", "--crop", "48", "--samples-per-epoch", "8", "--target-images", str(target), "--val-fraction", "0.25"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and "domain_loss" in state["history"][0] and "accuracy_2" in state["history"][0]
    for name in ("model.safetensors", "model.json", "curves.png", "confusion.png", "split.json", "last.optim.pt"):
        assert (run / name).exists(), name
    card = json.loads((run / "model.json").read_text())
    assert card["task"] == "wbc-type" and card["input_size"] == 48 and card["training"]["target_images"]
    res = runner.invoke(app, ["train", "wbc-type", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "ex"
    res = runner.invoke(app, ["explain", str(data), "--out", str(out), "--model", str(run), "--tsne"])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*_gradcam.png"))) == 8 and (out / "tsne.png").exists()
    mask = np.array(Image.open(next(out.glob("*_gradcam_mask.png"))))
    assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
