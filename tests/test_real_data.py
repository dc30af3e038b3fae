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
    from hemaseg.evaluation import evaluate

    res = evaluate("wbc", [WBCSEG], "wbc", split=SPLIT)
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
