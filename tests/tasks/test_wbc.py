from dataclasses import replace

import numpy as np
import pytest

import hemaseg
from helpers import ThresholdNet, toy_wbc
from hemaseg.core.labels import measure_diameter
from hemaseg.errors import HemasegUsageError
from hemaseg.tasks.wbc import WbcParams, scale_factor

SCALE_DEADBAND = WbcParams().scale_deadband

CARD = {"cell_diameter": 48.0, "normalization": {"low": 1.0, "high": 99.0}}


@pytest.mark.parametrize("radius", [24, 60, 100])
def test_diameter_is_estimated_at_any_magnification(radius):
    """The wbc model's own scale search (no cells model asked)."""
    size = int(radius * 5)
    image, mask = toy_wbc(np.random.default_rng(1), size=size, radius=radius, center=(size / 2, size / 2))
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), params=WbcParams(size_model="none"))
    assert seg.cell_diameter == pytest.approx(2 * radius, rel=0.15)
    # The scale used is within the dead-band of the ideal one.
    assert abs(np.log(seg.scale / scale_factor(CARD, 2 * radius))) <= np.log(SCALE_DEADBAND) + 1e-6
    assert seg.count == 1
    # Whatever the scale used inside, the output is at the input's size and right.
    assert seg.classes.shape == mask.shape
    from hemaseg.metrics import dice

    assert dice(seg.classes > 0, mask > 0) > 0.9


def test_the_wbc_size_comes_from_the_cells_models_wbcs_when_it_finds_one(monkeypatch):
    """By default the bundled cells model's WBCs give the diameter (one pass of the wbc model at
    the scale it implies); with no WBC found, on images over ``red_cells_max_pixels`` or with
    ``size_model="none"``, the wbc model's own scale search decides."""
    import hemaseg.tasks.wbc as wbc
    from hemaseg.core.result import Segmentation

    asked = []

    def fake_cells(image, model="cells", cell_diameter=None, device="cpu", params=None):
        asked.append(model)
        classes = np.zeros(image.shape[:2], np.uint8)
        if found:  # one WBC of 96 px across (class 2 of the cells task), one red cell
            yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
            classes[(yy - 150) ** 2 + (xx - 150) ** 2 < 48 ** 2] = 2
            classes[(yy - 40) ** 2 + (xx - 40) ** 2 < 20 ** 2] = 1
        from scipy import ndimage as ndi

        return Segmentation(classes, ndi.label(classes > 0)[0], None, 40.0, 1.0, [])

    passes = []

    def counting(real):
        def predict(module, card, image, factor, *args, **kwargs):
            passes.append(factor)
            return real(module, card, image, factor, *args, **kwargs)
        return predict

    monkeypatch.setattr(wbc, "segment_cells", fake_cells)
    # A pass of the network: at the input's scale (predict_probs) or left at the model's (predict_scaled).
    monkeypatch.setattr(wbc, "predict_probs", counting(wbc.predict_probs))
    monkeypatch.setattr(wbc, "predict_scaled", counting(wbc.predict_scaled))
    image, _ = toy_wbc(np.random.default_rng(2), size=300, radius=60, center=(150, 150))
    no_check = WbcParams(red_cells="none")  # the red-cell check would ask the (fake) cells model too
    found = True
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), params=no_check)
    assert asked == ["cells"] and seg.cell_diameter == pytest.approx(96, rel=0.02)
    assert passes == [pytest.approx(48 / seg.cell_diameter)]  # one pass, at the scale the cells model's WBC implies
    asked.clear(), passes.clear()
    found = False  # no WBC found: the wbc model measures the cell itself (several passes)
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), params=no_check)
    assert asked == ["cells"] and len(passes) > 1 and seg.cell_diameter == pytest.approx(120, rel=0.15)
    asked.clear()
    found = True
    for params in (WbcParams(red_cells="none", size_model="none"), WbcParams(red_cells="none", red_cells_max_pixels=300 * 299)):
        hemaseg.segment(image, (ThresholdNet(), CARD), params=params)
        assert asked == []


def test_red_cells_the_network_takes_for_a_wbc_go_when_the_cells_model_finds_none(monkeypatch):
    """A crop of red cells alone: the network calls some of them nucleated cells, the cells model finds
    red cells and no WBC. A "nucleus" of the red cells' own colour is no WBC (red_chroma; off at 0);
    a purple nucleus among them stays; a grey copy of the crop is left alone."""
    import torch
    from scipy import ndimage as ndi

    import hemaseg.tasks.wbc as wbc
    from hemaseg.core.result import Segmentation

    class LeftNet(torch.nn.Module):  # calls every dark thing in the left half a nucleus, nothing else
        stride = 1

        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            m = x.mean(1, keepdim=True)
            left = (torch.arange(x.shape[3]) < x.shape[3] // 2).view(1, 1, 1, -1).float()
            nucleus = 50.0 * (0.5 - m) * left - 50.0 * (1 - left)
            return torch.cat([torch.zeros_like(m), torch.full_like(m, -50.0), nucleus], 1)

    yy, xx = np.mgrid[:200, :200]
    image = np.full((200, 200, 3), (235, 228, 230), np.uint8)
    red = np.zeros((200, 200), bool)
    for cy in (40, 100, 160):
        for cx in (40, 160):
            red |= (yy - cy) ** 2 + (xx - cx) ** 2 < 22 ** 2
    image[red] = (200, 105, 120)
    rng = np.random.default_rng(0)
    image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)

    def fake_cells(img, model="cells", cell_diameter=None, device="cpu", params=None):
        classes = np.zeros(img.shape[:2], np.uint8)
        classes[red[:img.shape[0], :img.shape[1]]] = 1  # every red cell, no WBC
        return Segmentation(classes, ndi.label(classes > 0)[0], None, 44.0, 1.0, [])

    monkeypatch.setattr(wbc, "segment_cells", fake_cells)
    card = {"cell_diameter": 44.0, "normalization": {"low": 1.0, "high": 99.0}}
    base = WbcParams(red_cells="none", red_nucleus=2.0, red_cytoplasm=False)
    off = hemaseg.segment(image, (LeftNet(), card), cell_diameter=None, params=replace(base, red_chroma=0))
    assert off.count == 3  # the three red cells on the left, taken for WBCs
    assert hemaseg.segment(image, (LeftNet(), card), params=base).count == 0
    purple = image.copy()
    purple[(yy - 100) ** 2 + (xx - 80) ** 2 < 12 ** 2] = (95, 45, 140)  # a WBC's nucleus among them
    seg = hemaseg.segment(purple, (LeftNet(), card), params=base)
    assert seg.count == 1 and seg.instances[100, 80] > 0
    grey = np.repeat(image.mean(2, keepdims=True), 3, 2).astype(np.uint8)
    assert hemaseg.segment(grey, (LeftNet(), card), params=base).count == 3
    # the cells model calls the left red cells WBCs: its own WBC rules decide, not this one
    wbc_found = red & (xx < 100)
    monkeypatch.setattr(wbc, "found_cells",
                        lambda img, model="cells", device="cpu": (44.0, wbc_found, red & ~wbc_found))
    assert hemaseg.segment(image, (LeftNet(), card), params=replace(base, found_margin=-1)).count == 3


def test_reject_red_coloured_keeps_cells_without_a_nucleus_and_abstains_without_red_cells():
    """reject_red_coloured alone: a cell with no nucleus pixel is kept (scipy's median of a missing label
    is no NaN), and too few red-cell pixels outside the cells leave every cell alone."""
    from hemaseg.tasks.wbc import RED_CHROMA_MIN_PIXELS, reject_red_coloured

    yy, xx = np.mgrid[:80, :160]
    disc = lambda cy, cx, r: (yy - cy) ** 2 + (xx - cx) ** 2 < r * r  # noqa: E731
    img = np.full((80, 160, 3), 235, np.uint8)
    red = disc(40, 20, 15) | disc(40, 60, 15) | disc(40, 100, 15)
    img[red] = (205, 110, 120)
    inst = np.zeros((80, 160), np.uint16)
    inst[disc(40, 60, 15)] = 1  # a red cell called a cell, its nucleus the red cell's colour
    inst[disc(40, 140, 12)] = 2  # a cell with cytoplasm only
    cls = np.where(inst > 0, 1, 0).astype(np.uint8)
    cls[disc(40, 60, 8)] = 2
    c2, i2 = reject_red_coloured(img, cls, inst, red)
    assert int(i2.max()) == 1 and i2[40, 140] == 1 and c2[40, 60] == 0
    few = np.zeros_like(red)
    few[40, 20:20 + RED_CHROMA_MIN_PIXELS - 1] = True  # fewer red-cell pixels outside the cells than needed
    c3, i3 = reject_red_coloured(img, cls, inst, few | disc(40, 60, 15))
    assert i3 is inst and c3 is cls
    assert reject_red_coloured(img, cls, inst, red, margin=0)[1] is inst


def test_given_diameter_is_used_and_no_estimate_needed():
    image, _ = toy_wbc(np.random.default_rng(2), size=300, radius=60, center=(150, 150))
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), cell_diameter=120)
    assert seg.cell_diameter == 120 and seg.scale == pytest.approx(0.4)


def test_scale_factor_deadband_and_limits():
    assert scale_factor(CARD, 50) == 1.0  # within 25 %: native scale
    assert scale_factor(CARD, 96) == pytest.approx(0.5)
    assert scale_factor(CARD, 1) == 4.0 and scale_factor(CARD, None) == 1.0


def test_measure_diameter_prefers_inner_cells_and_ignores_fragments():
    m = np.zeros((200, 200), bool)
    yy, xx = np.mgrid[:200, :200]
    m[(yy - 100) ** 2 + (xx - 100) ** 2 < 30**2] = True  # a cell, diameter 60
    m[(yy - 20) ** 2 + (xx - 150) ** 2 < 4**2] = True  # a fragment
    m[:10, :10] = True  # a piece cut by the border
    assert measure_diameter(m, min_area=5) == pytest.approx(60, rel=0.05)
    assert measure_diameter(np.zeros((5, 5), bool)) is None


def test_red_cells_without_nucleus_are_not_wbcs():
    image, _ = toy_wbc(np.random.default_rng(3), size=200, radius=30, center=(100, 100))
    # A pale, nucleus-free disc the colour of cytoplasm: a red cell to the stand-in model.
    yy, xx = np.mgrid[:200, :200]
    image[(yy - 40) ** 2 + (xx - 40) ** 2 < 25**2] = (180, 150, 215)
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), cell_diameter=60)
    assert seg.count == 1 and seg.classes[40, 40] == 0


# --- weak supervision: fields with complete boxes (TXL-PBC style, YOLO) ---------------------------

def _yolo_fields(root, n: int = 4):
    """A YOLO folder of toy fields: one WBC box (from the toy mask), a red-cell box at the corner and a
    whole red cell drawn and boxed away from the WBC and the border (the one that can be cut out)."""
    from PIL import Image

    rng = np.random.default_rng(5)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("0 White Blood Cell (WBC)\n1 Red Blood Cell (RBC)\n2 Platelet\n")
    for i in range(n):
        img, mask = toy_wbc(rng, 96)
        yy, xx = np.mgrid[:96, :96]
        img[(yy - 83) ** 2 + (xx - 83) ** 2 < 49] = (200, 95, 110)
        ys, xs = np.nonzero(mask)
        y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        Image.fromarray(img).save(root / "images" / "train" / f"f{i}.png")
        lines = [f"0 {(x1 + x2) / 2 / 96:.5f} {(y1 + y2) / 2 / 96:.5f} {(x2 - x1) / 96:.5f} {(y2 - y1) / 96:.5f}",
                 "1 0.08 0.08 0.15 0.15", f"1 {83 / 96:.5f} {83 / 96:.5f} {16 / 96:.5f} {16 / 96:.5f}"]
        (root / "labels" / "train" / f"f{i}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_boxed_fields_load_as_weak_labels(tmp_path):
    from hemaseg.engine.losses import ANY_FOREGROUND, IGNORE
    from hemaseg.tasks.wbc import RED_CELL, WBC

    pairs = WBC.find_samples(_yolo_fields(tmp_path / "yolo"))
    assert len(pairs) == 4 and all(p.mask.suffix == ".txt" for p in pairs)
    image, mask = WBC.load_sample(pairs[0])
    assert image.shape[:2] == mask.shape
    assert set(np.unique(mask)) <= {0, 1, 2, RED_CELL, IGNORE, ANY_FOREGROUND}
    assert (mask == RED_CELL).any() and (mask == IGNORE).any()
    assert WBC.stratum(image, mask) == "boxes"
    # background where the red-cell box is; inside the WBC's box only what the bundled model is sure of
    assert set(np.unique(WBC.target(mask))) <= {0, 1, 2, IGNORE, ANY_FOREGROUND}
    cell = (mask == 1) | (mask == 2) | (mask == ANY_FOREGROUND)
    ys, xs = np.nonzero(cell)
    assert cell.sum() > 0 and ys.min() > 0.1 * mask.shape[0] and xs.min() > 0.1 * mask.shape[1]
    assert WBC.measure_mask(mask).max() == 0  # weak fields do not measure the card's cell diameter


def _train_one_epoch(wbc_folder, extra, run) -> tuple[dict, dict]:
    """``hemaseg train wbc`` for one tiny epoch on wbc_folder and ``extra``: (model card, first history entry)."""
    import json

    from typer.testing import CliRunner

    from hemaseg.cli import app

    res = CliRunner().invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--data", str(extra), "--out", str(run),
                                   "--epochs", "1", "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "8",
                                   "--val-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    return json.loads((run / "model.json").read_text()), json.loads((run / "state.json").read_text())["history"][0]


def test_train_on_masks_and_boxes_together(tmp_path, wbc_folder):
    card, history = _train_one_epoch(wbc_folder, _yolo_fields(tmp_path / "yolo"), tmp_path / "run")
    assert card["training"]["strata"] == {"boxes": 2, "masks": 5}
    # the WBC diameter comes from the pixel masks only (toy WBCs: 48 px images, radius 10-14 px)
    assert 15 < card["cell_diameter"] < 32
    assert "paste_red_cells" not in card["training"]  # off by default
    assert 0.0 <= history["leak"] <= 1.0
    assert history["metric"] == pytest.approx((history["dice_cell"] + history["dice_nucleus"]) / 2
                                              * (1 - history["leak"]))


def test_images_without_a_wbc_train_as_negatives(tmp_path, wbc_folder):
    """An image whose mask holds no cell (red cells alone, benchmarks/wbc_negatives.py) is its own
    stratum, drawn at the task's default share; validation reports the share of its pixels called
    cell (false_cell), kept out of the Dice and of the checkpoint's metric."""

    from PIL import Image

    from hemaseg.tasks.wbc import WBC

    neg = tmp_path / "neg"
    (neg / "images").mkdir(parents=True)
    (neg / "masks").mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    for i in range(4):
        img = np.full((48, 48, 3), 235, np.uint8)
        for cy, cx in rng.integers(8, 40, (3, 2)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = (200, 95, 110)  # red cells, no WBC
        Image.fromarray(img).save(neg / "images" / f"n{i}.png")
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(neg / "masks" / f"n{i}.png")
    image, mask = WBC.load_sample(WBC.find_samples(neg)[0])
    assert WBC.stratum(image, mask) == "empty" and WBC.stratum(image, np.full_like(mask, 2)) == "masks"
    card, history = _train_one_epoch(wbc_folder, neg, tmp_path / "run")
    assert card["training"]["strata"] == {"empty": 2, "masks": 5}
    assert card["training"]["stratum_weights"]["empty"] == pytest.approx(0.7 * 0.15 / 0.85)
    assert 0.0 <= history["false_cell"] <= 1.0 and "leak" not in history
    assert history["metric"] == pytest.approx((history["dice_cell"] + history["dice_nucleus"]) / 2)


def test_validation_keeps_negatives_out_of_the_dice():
    """A model calling everything background: Dice 0 on the WBC image, no false cell on the negative (were
    the negative scored by Dice, its perfect empty match would lift the mean)."""
    from hemaseg.tasks.wbc import WBC

    image = np.zeros((16, 16, 3), np.uint8)
    full = np.zeros((16, 16), np.uint8)
    full[4:12, 4:12] = 1
    full[6:10, 6:10] = 2
    background = lambda img: np.stack([np.ones((16, 16)), np.zeros((16, 16)), np.zeros((16, 16))])  # noqa: E731
    val = WBC.validate(background, [(image, full), (image, np.zeros((16, 16), np.uint8))], None, {})
    assert val["dice_cell"] == pytest.approx(0.0, abs=1e-6) and val["false_cell"] == 0.0
    cell = lambda img: np.stack([np.zeros((16, 16)), np.ones((16, 16)), np.zeros((16, 16))])  # noqa: E731
    assert WBC.validate(cell, [(image, full), (image, np.zeros((16, 16), np.uint8))], None, {})["false_cell"] == 1.0


def test_red_cells_of_boxed_fields_are_pasted_against_wbcs(tmp_path, wbc_folder):
    """--paste-red-cells cuts the whole red cells of the training split's boxed fields and presses
    them against the pixel-annotated WBCs; without boxed fields it names the problem and trains nothing."""
    import json

    from typer.testing import CliRunner

    from hemaseg.cli import app
    from hemaseg.tasks.wbc import WBC

    yolo = _yolo_fields(tmp_path / "yolo")
    WBC.load_sample(WBC.find_samples(yolo)[0])
    crops = WBC._red_cells[str(WBC.find_samples(yolo)[0].image)]
    assert len(crops) == 1 and crops[0].shape[2] == 4 and 20 < crops[0].shape[0] <= 40  # 18 px, rescaled with its field (WBC to 75 px)
    run = tmp_path / "run"
    args = ["train", "wbc", "--data", str(wbc_folder), "--epochs", "1", "--crop", "32", "--batch-size", "4",
            "--samples-per-epoch", "8", "--val-fraction", "0.5", "--paste-red-cells", "1"]
    res = CliRunner().invoke(app, args + ["--data", str(yolo), "--out", str(run)])
    assert res.exit_code == 0, res.output
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["paste_red_cells"] == {"chance": 1.0, "red_cells": 2}  # the two training fields'
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run2")])
    assert res.exit_code == 1 and "boxed fields" in res.output and not (tmp_path / "run2" / "model.json").exists()


def test_cells_are_cut_to_the_wbcs_the_cells_model_found_unless_round(monkeypatch):
    """``found_margin`` cuts a cell to 0.1 diameters around the cells model's WBC; a round cell
    (``found_solidity``) or one whose nucleus lies mostly elsewhere (``found_agree``) stays whole."""
    import hemaseg.tasks.wbc as wbc
    from hemaseg.core.result import Segmentation

    def fake_cells(image, model="cells", cell_diameter=None, device="cpu", params=None):
        yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
        classes = np.where((yy - 150) ** 2 + (xx - 150) ** 2 < 48 ** 2, 2, 0).astype(np.uint8)  # a WBC, 96 px
        return Segmentation(classes, (classes > 0).astype(np.int32), None, 40.0, 1.0, [])

    monkeypatch.setattr(wbc, "segment_cells", fake_cells)
    image, _ = toy_wbc(np.random.default_rng(2), size=300, radius=60, center=(150, 150))  # 120 px

    def area(**kw):
        seg = hemaseg.segment(image, (ThresholdNet(), CARD), params=WbcParams(red_cells="none", **kw))
        return int((seg.classes > 0).sum())

    whole = area(found_margin=-1)
    assert area() == whole  # round: not cut
    cut = area(found_solidity=1.01)  # no cell counts as round: cut at 48 + 0.1 * 96 px from the centre
    assert cut < 0.95 * whole and cut == pytest.approx(np.pi * 57.6 ** 2, rel=0.05)
    assert area(found_solidity=1.01, found_agree=1.01) == whole  # no cell agrees enough: none cut


def test_estimate_diameter_is_the_size_segment_works_at():
    """It measured with the wbc model alone (281 px on the sample) where segment asks the cells model (199 px)."""
    import hemaseg

    image = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    assert hemaseg.estimate_diameter(image) == pytest.approx(hemaseg.segment(image).cell_diameter)
    with pytest.raises(HemasegUsageError, match="nuclei model"):
        hemaseg.estimate_diameter(image, model="nuclei")


def test_train_on_boxes_alone_is_refused_and_leaves_no_run(tmp_path):
    """A walkthrough (stop 64): `train wbc` on boxed fields alone trained with a WBC size of 0 and a NaN Dice to
    choose its checkpoint on; it is one line naming the data, exit 1, and no run folder is left behind."""
    from typer.testing import CliRunner

    from hemaseg.cli import app

    yolo = _yolo_fields(tmp_path / "yolo")
    res = CliRunner().invoke(app, ["train", "wbc", "--data", str(yolo), "--out", str(tmp_path / "run"), "--epochs",
                                   "1", "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "8"])
    assert res.exit_code == 1, res.output
    assert "no pixel-annotated WBC in the training split" in res.output and str(yolo) in res.output
    assert not (tmp_path / "run").exists()
