"""An image with no cell gives no cell (issue 20, case 3): black, flat grey and noise images gave
7, 4 and 361 WBCs scored about 0.9."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import hemaseg
from hemaseg.cli import app

RNG = np.random.default_rng(0)
EMPTY = {
    "black": np.zeros((120, 120, 3), np.uint8),
    "grey": np.full((48, 64, 3), 128, np.uint8),
    "white_speckle": np.clip(235 + RNG.normal(0, 1.0, (64, 64, 3)), 0, 255).astype(np.uint8),
    "noise": RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8),
}
_YY, _XX = np.mgrid[:96, :128]
# A blank field under a lamp: a 4-level vignette, a 10-level gradient, smooth noise (gave 4 WBCs, 1 WBC, 92 cells)
EMPTY.update({
    "vignette": np.clip(np.array((232.0, 214, 222)) - 4 * (((_YY - 48) / 48) ** 2 + ((_XX - 64) / 64) ** 2)[..., None]
                        / 2, 0, 255).round().astype(np.uint8),
    "gradient": (np.array((232.0, 214, 222)) - 10 * (_XX / 128)[..., None]).round().astype(np.uint8),
    "smooth_noise": np.clip(np.array((232.0, 214, 222)) + 3 * cv2.GaussianBlur(
        RNG.uniform(-4, 4, (96, 128, 3)).astype(np.float32), (0, 0), 2), 0, 255).round().astype(np.uint8),
})


@pytest.mark.parametrize("model", ["wbc", "nuclei", "smear10", "cells"])
@pytest.mark.parametrize("name", sorted(EMPTY))
def test_every_bundled_model_finds_nothing_in_an_empty_image(model, name):
    image = EMPTY[name]
    seg = hemaseg.segment(image, model=model)
    assert seg.count == 0 and seg.objects == []
    assert not seg.instances.any() and not seg.classes.any()
    assert seg.classes.shape == image.shape[:2]


def test_analyze_and_segment_cli_on_empty_images(tmp_path):
    for name, image in EMPTY.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    a = hemaseg.analyze(EMPTY["black"])
    assert a.entry["masks"] == [] and a.counts["wbc"] == 0 and a.counts["rbc"] == 0
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["segment", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in EMPTY:
        assert json.loads((out / f"{name}.json").read_text())["count"] == 0
        assert not np.array(Image.open(out / f"{name}.png")).any()


def test_a_cell_on_a_plain_background_is_still_seen():
    """The gate looks at the image's content, not its size or mean: one dark disc is content."""
    from hemaseg.core.content import featureless

    image = np.full((64, 64, 3), 230, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    image[(yy - 30) ** 2 + (xx - 34) ** 2 < 100] = (90, 40, 130)
    assert featureless(image) is None
    sample = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    assert featureless(sample) is None and featureless(sample[:120, :120]) is None


@pytest.mark.parametrize("name", ["black", "grey", "white_speckle", "vignette", "gradient", "smooth_noise"])
def test_the_python_typer_and_size_estimate_find_nothing_in_an_empty_image(name):
    """The CLI says NO_WBC for such a crop; the Python functions said "lymphocyte 0.98" and "135 px"."""
    assert hemaseg.classify(EMPTY[name]) == {}
    assert hemaseg.estimate_diameter(EMPTY[name]) is None


def test_evaluate_scores_what_segment_gives_and_names_an_image_without_its_mask(tmp_path):
    """evaluate ran the task's network on a blank field (4 'WBCs', Dice 0 against its empty mask) where `hemaseg
    segment` gives none; and an image of images/ + masks/ without its mask was skipped unsaid."""
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((64, 64, 3), 220, np.uint8)).save(tmp_path / "d" / "images" / f"{name}.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "d" / "masks" / "a.png")
    res = CliRunner().invoke(app, ["evaluate", "wbc", "--data", str(tmp_path / "d"), "--json", str(tmp_path / "s.json"),
                                   "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 1 and "b.png: no mask (masks/b.* missing)" in res.output, res.output
    row = json.loads((tmp_path / "s.json").read_text())["per_image"][0]
    assert row["count"] == 0 and row["dice_cell"] == row["dice_nucleus"] == 1.0, row


def test_a_crop_of_a_few_pixels_is_no_wbc(tmp_path):
    """A 2x2 noise crop was typed 'lymphocyte 0.92' (the noise test cannot judge so few pixels)."""
    crop = np.random.default_rng(0).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    assert hemaseg.classify(crop) == {}
    assert hemaseg.segment(crop).count == 0
    Image.fromarray(crop).save(tmp_path / "tiny.png")
    res = CliRunner().invoke(app, ["classify", "-f", str(tmp_path / "tiny.png"), "-o", str(tmp_path / "p.csv")])
    assert res.exit_code == 0 and (tmp_path / "p.csv").read_text().splitlines()[1].split(",")[1] == "NO_WBC"
