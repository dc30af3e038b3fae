"""Adding a task is one class and one registration line: a toy task defined here is picked up by
``segment --task``, ``train`` and ``evaluate`` without any edit elsewhere in the package."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from typer.testing import CliRunner

from helpers import TINY
from hemaseg.cli import app
from hemaseg.core.labels import instance_objects
from hemaseg.core.result import Segmentation
from hemaseg.engine.predict import get_model, predict_probs
from hemaseg.engine.task import Task
from hemaseg.tasks import TASKS, get_task, register_task


class SpotsTask(Task):
    """Dark round spots on a light background, labelled 0 / 255 on disk."""

    name = "toy-spots"
    classes = ("background", "spot")
    label_values = (0, 255)
    colors = {1: (255, 0, 0)}
    description = "toy task of the test suite"
    train_defaults = {"arch_kwargs": {**TINY, "norm": "group"}, "crop": 32, "batch_size": 2, "samples_per_epoch": 4,
                      "epochs": 2, "val_fraction": 0.25, "augment": False}

    def segment(self, image, model, cell_diameter=None, device="cpu", tile=1024, overlap=64, tta=None, params=None):
        module, card = get_model(model, device)
        probs = predict_probs(module, card, image, 1.0, tile, overlap)
        classes = probs.argmax(0).astype(np.uint8)
        instances = ndi.label(classes > 0)[0].astype(np.int32)
        return Segmentation(classes, instances, probs, 0.0, 1.0, instance_objects(instances, probs, "spot"))


@pytest.fixture
def spots(tmp_path):
    """The registered toy task and a folder of X.png + X_mask.png pairs."""
    register_task(SpotsTask())
    rng = np.random.default_rng(0)
    data = tmp_path / "spots"
    data.mkdir()
    yy, xx = np.mgrid[:48, :48]
    for i in range(4):
        cy, cx = rng.uniform(12, 36, 2)
        spot = np.hypot(yy - cy, xx - cx) < 8
        image = np.where(spot[..., None], 60, 220).astype(np.uint8).repeat(3, -1)
        Image.fromarray(image).save(data / f"s{i}.png")
        Image.fromarray((spot * 255).astype(np.uint8)).save(data / f"s{i}_mask.png")
    yield data
    TASKS.pop("toy-spots", None)


def test_a_task_defined_outside_the_package_trains_segments_and_evaluates(spots, tmp_path):
    runner = CliRunner()
    assert get_task("toy-spots").name == "toy-spots"
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "toy-spots", "--data", str(spots), "--out", str(run)])
    assert res.exit_code == 0, res.output
    card = json.loads((run / "model.json").read_text())
    assert card["task"] == "toy-spots" and card["classes"] == ["background", "spot"]
    assert card["training"]["n_val"] == 1  # 4 pairs, val_fraction 0.25: the task's own defaults were used

    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", "--task", "toy-spots", str(spots / "s0.png"), "--model", str(run),
                              "--out", str(out), "--overlay"])
    assert res.exit_code == 0, res.output
    labels = np.asarray(Image.open(out / "s0.png"))
    assert set(np.unique(labels).tolist()) <= {0, 255}  # the task's label values on disk
    assert json.loads((out / "s0.json").read_text())["task"] == "toy-spots"
    assert (out / "s0_overlay.png").exists()

    res = runner.invoke(app, ["evaluate", "toy-spots", "--data", str(spots), "--model", str(run),
                              "--json", str(tmp_path / "eval.json"), "--grid", str(tmp_path / "worst.png")])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["task"] == "toy-spots" and scores["n_images"] == 4
    assert 0.0 <= scores["mean"]["mean_iou"] <= 1.0 and "MEAN (4 images)" in res.output
    assert (tmp_path / "worst.png").exists()


def test_unknown_task_names_the_known_ones(spots, tmp_path):
    res = CliRunner().invoke(app, ["segment", "--task", "nope", str(spots / "s0.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "toy-spots" in res.output and "smear10" in res.output


def test_an_option_a_task_does_not_take_is_refused(spots, tmp_path):
    res = CliRunner().invoke(app, ["train", "toy-spots", "--data", str(spots), "--out", str(tmp_path / "r"),
                                   "--backbone", "resnet18"])
    assert res.exit_code == 2 and "not an option of task toy-spots" in res.output
