"""Checks on the real data in ../shared/data; skipped cleanly where it is absent."""
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WBCSEG = DATA / "wbc-seg"
SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "splits" / "wbc-seg.json"

pytestmark = pytest.mark.skipif(not WBCSEG.is_dir(), reason="../shared/data/wbc-seg not present")


def test_bundled_model_on_validation_images():
    """A quick slice of the validation benchmark (the full figures are in the README)."""
    from hemaseg.tasks import get_task

    res = get_task("wbc").evaluate([WBCSEG], "wbc", split=SPLIT)
    assert res["n_images"] == 60
    assert res["mean"]["dice_cell"] > 0.95
    assert res["mean"]["dice_nucleus"] > 0.90


def test_split_has_no_training_image_in_validation():
    import json

    d = json.loads(SPLIT.read_text())
    assert len(d["val"]) == 60 and len(d["train"]) == 240
    assert not set(d["val"]) & set(d["train"])


def test_reads_whole_wbcseg_folder():
    from hemaseg.io.datasets import find_pairs, load_pair

    pairs = find_pairs(WBCSEG)
    assert len(pairs) == 300
    image, classes = load_pair(pairs[0])
    assert image.ndim == 3 and set(np.unique(classes)) <= {0, 1, 2}


DSB = DATA / "dsb2018"
DSB_MODALITY_SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "splits" / "dsb2018-modality.json"
TYPE_SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "splits" / "wbc-type.json"


@pytest.mark.skipif(not DSB.is_dir(), reason="../shared/data/dsb2018 not present")
def test_nuclei_model_on_some_validation_images():
    """Ten fluorescence validation images (the full figures are in the README)."""
    import json

    from hemaseg.io.datasets import find_dsb, load_instances
    from hemaseg.metrics import dsb_scores
    from hemaseg.pipelines.segment import segment
    from hemaseg.tasks.nuclei import modality

    val = set(json.loads(DSB_MODALITY_SPLIT.read_text())["val"])
    assert not val & set(json.loads(DSB_MODALITY_SPLIT.read_text())["train"])
    scores = []
    for s in (s for s in find_dsb(DSB) if s.image.name in val):
        image, labels = load_instances(s)
        if modality(image) == "fluorescence" and image.shape[0] <= 360:
            scores.append(dsb_scores(segment(image, "nuclei").instances, labels))
        if len(scores) == 10:
            break
    assert len(scores) == 10
    assert np.mean([r["ap50"] for r in scores]) > 0.6 and np.mean([r["dsb"] for r in scores]) > 0.4


@pytest.mark.skipif(not DSB.is_dir(), reason="../shared/data/dsb2018 not present")
def test_nuclei_split_holds_every_modality():
    """The nuclei split is stratified: each modality has validation images, none trained on."""
    import json

    from hemaseg.io.datasets import find_dsb
    from hemaseg.io.images import read_image
    from hemaseg.tasks.nuclei import modality

    d = json.loads(DSB_MODALITY_SPLIT.read_text())
    assert not set(d["val"]) & set(d["train"])
    kinds = {"train": [], "val": []}
    for s in find_dsb(DSB):
        part = "val" if s.image.name in d["val"] else "train" if s.image.name in d["train"] else None
        if part:
            kinds[part].append(modality(read_image(s.image)))
    assert len(kinds["val"]) + len(kinds["train"]) == 600
    for kind in ("fluorescence", "histology", "brightfield"):
        assert kinds["val"].count(kind) >= 2 and kinds["train"].count(kind) >= 2, kind


@pytest.mark.skipif(not (DATA / "bccd-wbc").is_dir(), reason="../shared/data/bccd-wbc not present")
def test_classifier_on_bccd_held_out_crops():
    """The bundled classifier on BCCD's 56 held-out crops (measured 45 right: 0.804, with the crops
    normalised in one pass; the model before scored 48 with its scale search; eosinophils called
    neutrophils are its main error there)."""
    import json

    import hemaseg

    val = [(p, c) for p, c in json.loads(TYPE_SPLIT.read_text())["val"] if "bccd-wbc" in p]
    right = 0
    for p, c in val:
        probs = hemaseg.classify(hemaseg.read_image(DATA / Path(p).relative_to("../shared/data")))
        assert abs(sum(probs.values()) - 1) < 1e-4
        right += max(probs, key=probs.get) == c
    assert len(val) == 56 and right >= 44


@pytest.mark.skipif(not (DATA / "bccd").is_dir(), reason="../shared/data/bccd not present")
def test_analyzes_own_outlines_read_back_from_cvat_score_one(tmp_path):
    """The analyze -> CVAT -> evaluate loop (stop 66): CVAT keeps outlines only, whose tight boxes the found cells'
    grown boxes (box_scale: platelets x1.57) never met: platelet AP 0.0 on analyze's own unedited pre-annotations."""
    from typer.testing import CliRunner

    from hemaseg.cli import app

    runner = CliRunner()
    photos = tmp_path / "ds" / "images"
    photos.mkdir(parents=True)
    for n in ("BloodImage_00001.jpg", "BloodImage_00002.jpg"):  # a platelet each
        (photos / n).write_bytes((DATA / "bccd" / "BCCD" / "JPEGImages" / n).read_bytes())
    assert runner.invoke(app, ["analyze", str(photos), "--out", str(tmp_path / "an"), "--cvat",
                               str(tmp_path / "c.xml")]).exit_code == 0
    assert runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(tmp_path / "c.xml"),
                               str(tmp_path / "ds" / "annotations.json")]).exit_code == 0
    res = runner.invoke(app, ["evaluate", "cells", "--data", str(tmp_path / "ds"), "--json", str(tmp_path / "e.json"),
                              "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    import json

    mean = json.loads((tmp_path / "e.json").read_text())["mean"]
    assert mean["ap50_platelet"] == 1.0 and mean["map50"] == 1.0
