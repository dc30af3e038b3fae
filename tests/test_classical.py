"""Classical methods on synthetic images whose answer is known."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import toy_nuclei, toy_wbc
from hemaseg import classical as C
from hemaseg.cli import app
from hemaseg.metrics import dice, dsb_scores

runner = CliRunner()


def _discs(centres, radius, size=(80, 120), dark=True):
    yy, xx = np.mgrid[:size[0], :size[1]]
    labels = np.zeros(size, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        labels[(np.hypot(yy - cy, xx - cx) < radius) & (labels == 0)] = k
    grey = np.where(labels > 0, 70, 225) if dark else np.where(labels > 0, 200, 15)
    noise = np.random.default_rng(0).normal(0, 3, size)
    return np.clip(grey + noise, 0, 255).astype(np.uint8)[..., None].repeat(3, -1), labels


@pytest.mark.parametrize("radius", [6, 12, 20])
def test_watershed_finds_discs_of_given_radius(radius):
    img, labels = _discs([(40, 30), (40, 90)], radius)
    pred = C.watershed_cells(img)
    assert pred.max() == 2
    for k in (1, 2):
        area = (pred == k).sum()
        assert abs(area - np.pi * radius ** 2) < 0.2 * np.pi * radius ** 2


def test_watershed_splits_touching_pair_both_polarities():
    for dark in (True, False):
        img, labels = _discs([(40, 45), (40, 75)], 16, dark=dark)  # centres 30 px apart, radius 16: overlap
        pred = C.watershed_cells(img)
        assert pred.max() == 2, dark
        assert dsb_scores(pred, labels)["ap50"] == 1.0


def test_hsv_mask_finds_the_purple_blob():
    img = np.full((100, 100, 3), (240, 228, 200), np.uint8)  # yellowish background
    yy, xx = np.mgrid[:100, :100]
    img[np.hypot(yy - 30, xx - 70) < 12] = (225, 150, 160)  # a pink red cell: not a nucleus
    cell = np.hypot(yy - 55, xx - 40) < 20
    nuc = np.hypot(yy - 55, xx - 40) < 11
    img[cell] = (200, 170, 210)
    img[nuc] = (95, 45, 140)
    classes, inst = C.hsv_wbc_mask(img)
    assert inst.max() == 1
    assert dice(classes == 2, nuc) > 0.9
    assert dice(classes > 0, cell) > 0.85
    assert not classes[30, 70]
    # The seed's fixed HSV bounds (hue 100-180) take the whole lilac cell, which Algorithm 1
    # crops with, but also this pink red cell (hue 176): why the default thresholds adapt.
    seed = C.nucleus_mask(img, "seed")
    assert dice(seed, cell) > 0.8 and seed[30, 70]


def test_hsv_mask_on_toy_wbcs():
    rng = np.random.default_rng(3)
    scores = []
    for _ in range(5):
        img, mask = toy_wbc(rng, 96)
        classes, _ = C.hsv_wbc_mask(img)
        scores.append(dice(classes > 0, mask > 0))
    assert np.mean(scores) > 0.85


def test_blob_confidence_mask_covers_big_cells_more_than_small():
    img, labels = _discs([(40, 30), (40, 90)], 20)
    small, _ = _discs([(40, 60)], 4)
    img = np.minimum(img, small)
    m = C.blob_confidence_mask(img)
    assert m[labels == 1].mean() > 0.5 and m[labels == 2].mean() > 0.5
    assert m[:5, :5].sum() == 0


def test_mask_in_box_recovers_cell_and_falls_back_to_ellipse():
    yy, xx = np.mgrid[:100, :100]
    img = np.full((100, 100, 3), 235, np.uint8)
    cell = np.hypot(yy - 50, xx - 50) < 15
    img[cell] = (205, 100, 120)
    box = (33, 33, 68, 68)
    m = C.mask_in_box(img, box)
    assert m.shape == (35, 35)
    assert dice(m, cell[33:68, 33:68]) > 0.9
    blank = np.full((100, 100, 3), 235, np.uint8)
    fallback = C.mask_in_box(blank, box)
    assert fallback[17, 17] and not fallback[0, 0]


def test_wbc_crops_are_square_and_inside():
    inst = np.zeros((50, 60), np.int32)
    inst[5:25, 40:60] = 1
    crops = C.wbc_crops(np.zeros((50, 60, 3), np.uint8), inst, margin=0.1)
    x1, y1, x2, y2 = crops[0]["box"]
    assert 0 <= x1 < x2 <= 60 and 0 <= y1 < y2 <= 50 and x1 <= 40 and y1 <= 5


def test_cli_segment_methods_write_the_task_files(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(toy_wbc(rng, 64)[0]).save(src / "wbc.png")
    Image.fromarray(toy_nuclei(rng, 64)[0]).save(src / "nuc.png")
    for method in ("hsv", "watershed", "blobs"):
        out = tmp_path / method
        res = runner.invoke(app, ["segment", "--task", "wbc", "--method", method, str(src / "wbc.png"), "--out", str(out)])
        assert res.exit_code == 0, res.output
        lab = np.array(Image.open(out / "wbc.png"))
        assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 128, 255}
        assert json.loads((out / "wbc.json").read_text())["model"] == f"classical:{method}"
    res = runner.invoke(app, ["segment", "--task", "nuclei", "--method", "watershed", str(src / "nuc.png"), "--out",
                              str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert np.array(Image.open(tmp_path / "n" / "nuc.png")).dtype == np.uint16
    res = runner.invoke(app, ["segment", "--task", "nuclei", "--method", "hsv", str(src / "nuc.png")])
    assert res.exit_code == 2


def test_cli_crop_and_evaluate_method(tmp_path, wbc_folder):
    out = tmp_path / "crops"
    res = runner.invoke(app, ["crop", str(wbc_folder), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = (out / "crops.csv").read_text().splitlines()
    assert rows[0] == "crop,source,x1,y1,x2,y2,class,method" and len(rows) >= 11
    first = rows[1].split(",")
    assert (out / first[0]).exists() and first[6] == "unknown"
    again = runner.invoke(app, ["crop", str(wbc_folder), "--out", str(out)])  # the earlier crops would be orphaned
    assert again.exit_code == 2 and "earlier run" in again.output and (out / "crops.csv").read_text().splitlines() == rows
    # a run that cut nothing (its one photo unreadable) leaves a header alone: the folder serves the next run
    bad, empty_out = tmp_path / "bad", tmp_path / "none"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    first_try = runner.invoke(app, ["crop", str(bad), "--out", str(empty_out)])
    assert first_try.exit_code == 1 and len((empty_out / "crops.csv").read_text().splitlines()) == 1
    res = runner.invoke(app, ["crop", str(wbc_folder), "--out", str(empty_out)])
    assert res.exit_code == 0 and len((empty_out / "crops.csv").read_text().splitlines()) == len(rows), res.output
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--method", "hsv", "--json",
                              str(tmp_path / "e.json"), "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["model"] == "classical:hsv" and ev["mean"]["dice_cell"] > 0.8


def test_watershed_wbcs_are_not_platelets():
    # A platelet (a small blob of the nuclear stain) away from the WBC is a "cell holding a nucleus"
    # too; as in hsv_wbc_mask, one whose nucleus is far smaller than the biggest is no WBC.
    from hemaseg.classical import watershed_wbc_mask

    img, _ = toy_wbc(np.random.default_rng(3), size=160, radius=40, center=(80, 70))
    yy, xx = np.mgrid[:160, :160]
    img[(yy - 20) ** 2 + (xx - 140) ** 2 < 8 ** 2] = (90, 40, 130)
    classes, instances = watershed_wbc_mask(img)
    assert instances.max() == 1 and instances[80, 70] == 1 and instances[20, 140] == 0


def _dark_red_cell_field(with_wbc: bool = True):
    """A low-magnification field whose red cells are as dark as a nucleus where they are thickest
    (BCDD's look), with one WBC (pale cytoplasm, purple nucleus) pressed against two of them."""
    h, w = 160, 200
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (215, 232, 215)  # greenish background
    red = np.zeros((h, w), bool)
    centres = [(30, 30), (30, 170), (130, 30), (130, 170), (80, 40), (80, 160), (25, 100), (135, 100)]
    if with_wbc:
        centres += [(80, 127)]  # touching the WBC's right edge
    for cy, cx in centres:
        r = np.hypot(yy - cy, xx - cx)
        disc = r < 16
        red |= disc
        img[disc] = (175, 85, 100)
        img[r < 9] = (120, 40, 60)  # thick, dark-red centre
    if with_wbc:
        r = np.hypot(yy - 80, xx - 95)
        img[r < 19] = (205, 195, 215)  # pale cytoplasm
        img[r < 10] = (80, 45, 130)  # purple nucleus
        red &= r >= 19
    img += np.random.default_rng(1).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), red


def test_hsv_mask_never_takes_dark_red_cells_for_nuclei():
    """Red cells whose centres are as dark as a nucleus are no WBC, and the WBC they touch does
    not swallow them (red_cell_pieces: their colour is the red cells', not the nuclear stain's)."""
    img, red = _dark_red_cell_field()
    classes, inst = C.hsv_wbc_mask(img)
    assert inst.max() == 1
    assert (inst[red] > 0).mean() < 0.02
    assert inst[80, 95] == 1 and classes[80, 95] == 2


def test_red_cell_pieces_keeps_every_nucleus_of_a_grey_image():
    img, _ = _dark_red_cell_field()
    grey = np.repeat(img.mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    pieces = np.zeros(img.shape[:2], np.int32)
    pieces[75:86, 90:101] = 1
    pieces[25:36, 25:36] = 2
    assert not C.red_cell_pieces(grey, pieces, 2).any()


def test_the_public_functions_take_what_the_model_functions_take_and_find_nothing_in_noise(tmp_path):
    """A path, a PIL image, grey, float and 16-bit arrays are taken as ``hemaseg.segment`` takes them (they
    raised deep OpenCV errors); noise and a faint blank field give no cell (noise gave 12 WBCs, 2,252 cells)."""
    from hemaseg.errors import HemasegInputError

    img, _ = toy_wbc(np.random.default_rng(0), 64)
    want = C.hsv_wbc_mask(img)[1].max()
    assert want == 1
    Image.fromarray(img).save(tmp_path / "cell.png")
    for other in (tmp_path / "cell.png", str(tmp_path / "cell.png"), Image.fromarray(img), img / 255.0,
                  img.astype(np.uint16) * 257):
        assert C.hsv_wbc_mask(other)[1].max() == want
    grey = img.mean(-1)
    assert C.watershed_cells(grey).max() == C.watershed_cells(np.dstack([grey.round().astype(np.uint8)] * 3)).max()
    assert C.blob_confidence_mask(grey[:40, :40]).shape == (40, 40)
    with pytest.raises(HemasegInputError, match="image"):
        C.hsv_wbc_mask([1, 2])
    noise = np.clip(128 + np.random.default_rng(0).uniform(-5, 5, (120, 160, 1)), 0, 255).round().astype(np.uint8)
    noise = noise.repeat(3, -1)
    yy, xx = np.mgrid[:120, :160]
    faint = (np.array((232.0, 214, 222)) - 4 * (((yy - 60) / 60) ** 2 + ((xx - 80) / 80) ** 2)[..., None]).astype(np.uint8)
    for blank in (noise, faint):
        assert C.hsv_wbc_mask(blank)[1].max() == 0 and C.watershed_wbc_mask(blank)[1].max() == 0
        assert C.watershed_cells(blank).max() == 0 and not C.blob_confidence_mask(blank).any()
        assert C.segment_classical(blank).count == 0
        assert C.segment_classical(blank, task="nuclei", method="watershed").count == 0


def test_darkness_of_a_grey_array_keeps_its_shape():
    grey = np.full((4, 5), 51, np.uint8)  # the mean ran over its rows: (4,) or (1, 4)
    for sigma in (0, 1.0):
        d = C.darkness(grey, sigma=sigma)
        assert d.shape == (4, 5) and d.dtype == np.float32
    assert C.darkness(grey, sigma=0)[0, 0] == pytest.approx(0.8)


def test_watershed_without_opening_keeps_the_cells():
    """open_iterations=0: SciPy opened until nothing changed, so no cell was left."""
    img, _ = _discs([(20, 15), (20, 45)], 8, size=(40, 60))
    assert C.watershed_cells(img, open_iterations=0).max() == 2


def test_red_cell_diameter_takes_an_integer_exclude_mask():
    """A 0/1 uint8 mask: ``~`` made it 255/254 and the threshold's mask an index array (IndexError)."""
    yy, xx = np.mgrid[:120, :120]
    img = np.full((120, 120, 3), 235, np.uint8)
    for cy, cx in ((30, 30), (30, 80), (85, 40), (90, 95)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = (200, 120, 130)
    assert C.red_cell_diameter(img, np.zeros((120, 120), np.uint8)) == C.red_cell_diameter(img)
    assert C.red_cell_diameter(img, np.ones((120, 120), np.uint8)) is None


def test_box_cell_takes_float_boxes_paths_and_grey(tmp_path):
    yy, xx = np.mgrid[:60, :60]
    img = np.full((60, 60, 3), 235, np.uint8)
    img[(yy - 30) ** 2 + (xx - 30) ** 2 < 100] = (200, 90, 110)
    want = C.box_cell(img, (19, 19, 41, 41))
    assert want is not None
    np.testing.assert_array_equal(C.box_cell(img, (19.2, 18.6, 40.8, 41.4)), want)  # rounded as mask_in_box rounds
    Image.fromarray(img).save(tmp_path / "cell.png")
    np.testing.assert_array_equal(C.box_cell(tmp_path / "cell.png", (19, 19, 41, 41)), want)
    grey = C.box_cell(img.mean(-1).astype(np.uint8), (19, 19, 41, 41))
    assert grey is not None and grey.shape == want.shape


def test_round_cell_is_a_python_bool():
    yy, xx = np.mgrid[:21, :21]
    disc = (yy - 10) ** 2 + (xx - 10) ** 2 <= 100
    for mask in (disc, np.ones((21, 21), bool), np.zeros((0, 0), bool), disc[:, :3]):
        assert type(C.round_cell(mask)) is bool


def test_mask_in_box_refuses_an_unknown_kind():
    img = np.full((40, 40, 3), 235, np.uint8)
    with pytest.raises(ValueError, match="'wbc'"):
        C.mask_in_box(img, (10, 10, 30, 30), kind="WBC")
    assert C.mask_in_box(img, (10, 10, 30, 30), kind=None).shape == (20, 20)


def test_wbc_crops_reads_no_image_but_checks_its_size(tmp_path, monkeypatch):
    """The boxes come from ``instances`` alone: a path was read for nothing."""
    import hemaseg.io.images

    inst = np.zeros((50, 60), np.int32)
    inst[10:30, 20:30] = 3
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "cell.png")

    def no_read(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(hemaseg.io.images, "read_image", no_read)
    assert C.wbc_crops(tmp_path / "cell.png", inst) == C.wbc_crops(np.zeros((50, 60, 3), np.uint8), inst)
    with pytest.raises(ValueError, match="size"):
        C.wbc_crops(np.zeros((40, 60, 3), np.uint8), inst)


def test_red_cell_pieces_of_no_piece_is_nothing():
    """n=0 with red cells around raised ValueError (max of an empty array)."""
    from hemaseg.classical import red_cell_pieces

    image = np.full((80, 80, 3), 235, np.uint8)
    image[10:70, 10:70] = (200, 90, 110)  # a large pink, stained area: red cells to compare with
    assert red_cell_pieces(image, np.zeros((80, 80), np.int32), 0).tolist() == [False]


def test_hsv_finds_no_wbc_in_a_grey_photo_and_says_why(caplog):
    """A grey photo (no stain colour to find nuclei by) came out as one WBC covering 91 % of the frame."""
    import logging

    import hemaseg
    from hemaseg.classical import hsv_wbc_mask

    photo = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    grey = np.repeat(photo.mean(2, keepdims=True).astype(np.uint8), 3, axis=2)
    with caplog.at_level(logging.WARNING):
        classes, inst = hsv_wbc_mask(grey)
    assert inst.max() == 0 and not classes.any() and "needs a colour photo" in caplog.text
    assert hsv_wbc_mask(photo)[1].max() == 1  # the colour photo's one WBC is still found


def test_a_batch_warning_names_its_photo(tmp_path, caplog):
    """A segment audit: `segment --method hsv grey.png la.png colour.bmp` said "the hsv method needs a colour
    photo" twice, naming neither photo."""
    from typer.testing import CliRunner

    from helpers import toy_wbc
    from hemaseg.cli import app

    Image.fromarray(toy_wbc(np.random.default_rng(0), 96)[0]).convert("L").save(tmp_path / "grey.png")
    res = CliRunner().invoke(app, ["segment", "--method", "hsv", str(tmp_path / "grey.png"), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'grey.png'}: the hsv method needs a colour photo" in caplog.text + res.output
    # a warning that names its photo already (a stack's first plane read) names it once, not twice
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", np.stack([toy_wbc(np.random.default_rng(1), 96)[0]] * 2))
    res = CliRunner().invoke(app, ["segment", "--method", "hsv", str(tmp_path / "stack.tif"), "--out",
                                   str(tmp_path / "o2")])
    said = [ln for ln in (caplog.text + res.output).splitlines() if "only the first is read" in ln]
    assert res.exit_code == 0 and said and all(ln.count("stack.tif") == 1 for ln in said), said
