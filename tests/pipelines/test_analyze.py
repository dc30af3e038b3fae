"""analyze with a typer trained on PBC: further types counted, a "WBC" typed platelet counted as a platelet;
WBCs of unsure type left untyped; sample id and pixel size recorded."""
from __future__ import annotations

import numpy as np
import pytest

import hemaseg.pipelines.analyze as analyze_mod
from hemaseg.core.result import Segmentation
from hemaseg.errors import HemasegUsageError
from hemaseg.pipelines.report import counts_csv

CLASSES = ["neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil", "ig", "erythroblast", "platelet"]


def _box(x1, y1, x2, y2):
    return {"x1": x1, "x2": x2, "y1": y1, "y2": y2}


def _fake_models(monkeypatch, probs_of, diameters=(None, None, None)):
    """analyze on three square WBCs (red cells 20 px across; each WBC's measured ``diameters``, if
    given), typed with ``probs_of(n_records)`` (N, 8) probabilities."""
    instances = np.zeros((60, 90), np.int32)
    objects = []
    for k, x in enumerate((5, 35, 65), start=1):
        instances[20:40, x:x + 20] = k
        objects.append({"id": k, "class_name": "wbc", "category": "wbc", "score": 0.9,
                        "bounding_box": _box(x, 20, x + 20, 40), "vertices": [[x, 20], [x + 20, 20], [x + 20, 40]]})
        if diameters[k - 1] is not None:
            objects[-1]["diameter"] = diameters[k - 1]
    seg = Segmentation(np.zeros((60, 90), np.uint8), instances, np.zeros((0, 60, 90), np.float32), 20.0, 1.0, objects)

    class Cells:
        def predict(self, *args, **kwargs):
            return seg

    def fake_type(image, records, model, device):
        return probs_of(len(records)), [np.zeros((8, 8, 3), np.uint8)] * len(records), CLASSES

    monkeypatch.setattr(analyze_mod, "get_task", lambda name: Cells())
    monkeypatch.setattr(analyze_mod, "get_model", lambda model, device="cpu": (None, {"classes": CLASSES}))
    monkeypatch.setattr(analyze_mod, "type_wbcs", fake_type)


def _photo() -> np.ndarray:
    """A flat stained-looking photo (a grey one's WBCs are all unsure: the typer needs colour)."""
    return np.tile(np.array([215, 170, 200], np.uint8), (60, 90, 1))


def _one_hot(*names):
    def probs_of(n):
        probs = np.zeros((n, 8), np.float32)
        for i, name in enumerate(names):
            probs[i, CLASSES.index(name)] = 1.0
        return probs
    return probs_of


def test_pbc_typer_types_are_counted_and_platelets_recategorised(monkeypatch):
    _fake_models(monkeypatch, _one_hot("neutrophil", "platelet", "ig"))
    a = analyze_mod.analyze(_photo(), "x.png")
    assert a.counts["wbc"] == 2 and a.counts["platelet"] == 1  # the "WBC" typed platelet is a platelet
    assert a.counts["neutrophil"] == 1 and a.counts["ig"] == 1 and a.counts["erythroblast"] == 0
    assert a.differential["ig"] == 50.0 and "erythroblast" not in a.differential
    assert len(a.wbc_crops) == 2 and [m["category"] for m in a.entry["masks"]] == ["wbc", "platelet", "wbc"]
    header, row, batch = counts_csv([a]).splitlines()
    assert header.endswith("ig,erythroblast,ig_pct,ig_pct_lo,ig_pct_hi,unsure") and row.endswith("1,0,50.0,1.3,98.7,0")
    assert batch == "(all images)," + row.split(",", 1)[1]  # one photo: the batch is that photo


def test_a_wbc_as_big_as_a_red_cell_is_no_platelet_whatever_the_typer_says(monkeypatch):
    """The typer called BCDD's neutrophils platelets: a found WBC at least 0.9 red cell across keeps its
    category; a small one is still recategorised. One the typer holds more likely a platelet than not is
    listed unsure, saying why (a walkthrough, stop 71: PBC's platelet photos, platelet 0.95, were counted
    as sure neutrophils at 0.81, the rest renormalised); one it holds a platelet at under 0.5 takes its
    next most probable type, sure only when that type is once the platelet is ruled out."""
    def probs_of(n):
        probs = np.full((n, 8), 0.01, np.float32)
        probs[:, CLASSES.index("platelet")] = 0.75
        probs[:, CLASSES.index("lymphocyte")] = [0.19, 0.19, 0.09]  # given not a platelet: 0.76, 0.76, 0.39
        probs[2, CLASSES.index("monocyte")] = 0.09  # the third: lymphocyte or monocyte, 0.39 each
        return probs

    # red cells 20 px: the second 0.95 of one across (a BCDD neutrophil the typer of stop 62 called a platelet)
    _fake_models(monkeypatch, probs_of, diameters=(8.0, 19.0, 26.0))
    a = analyze_mod.analyze(_photo(), "x.png")
    assert [(m["category"], m["class_name"], m.get("unsure", False)) for m in a.entry["masks"]] == [
        ("platelet", "platelet", False), ("wbc", "wbc", True), ("wbc", "wbc", True)]
    assert [m.get("unsure_reason") for m in a.entry["masks"]] == [
        None, "typed platelet (0.75), too big for one", "typed platelet (0.75), too big for one"]
    assert a.counts["wbc"] == 2 and a.counts["platelet"] == 1 and a.counts["lymphocyte"] == 0

    def unsure_platelet(n):  # platelet 0.40 on top, lymphocyte 0.35: 0.58 once the platelet is ruled out
        probs = np.full((n, 8), 0.25 / 6, np.float32)
        probs[:, CLASSES.index("platelet")], probs[:, CLASSES.index("lymphocyte")] = 0.40, 0.35
        return probs

    _fake_models(monkeypatch, unsure_platelet, diameters=(8.0, 19.0, 26.0))
    b = analyze_mod.analyze(_photo(), "x.png")
    assert [(m["category"], m["class_name"], m.get("unsure", False)) for m in b.entry["masks"]] == [
        ("wbc", "wbc", True), ("wbc", "lymphocyte", False), ("wbc", "lymphocyte", False)]  # the small: 0.40, unsure
    c = analyze_mod.analyze(_photo(), "x.png", min_confidence=0.0)  # 0: every WBC typed, as asked
    assert [m["class_name"] for m in c.entry["masks"]] == ["platelet", "lymphocyte", "lymphocyte"]


def test_unsure_wbcs_are_left_untyped_and_out_of_the_differential(monkeypatch):
    def probs_of(n):
        probs = np.full((n, 8), 0.02, np.float32)
        probs[0, 0], probs[1, 3], probs[2, 3] = 0.86, 0.45, 0.86  # the second: lymphocyte 0.45
        probs[1, 0] = 0.41
        return probs

    _fake_models(monkeypatch, probs_of)
    a = analyze_mod.analyze(_photo(), "x.png", sample_id="S-17", pixel_size=0.25)
    wbcs = [m for m in a.entry["masks"] if m["category"] == "wbc"]
    assert [m["class_name"] for m in wbcs] == ["neutrophil", "wbc", "lymphocyte"]
    assert [m.get("unsure", False) for m in wbcs] == [False, True, False] and a.unsure == [wbcs[1]]
    assert wbcs[1]["unsure_reason"] == "lymphocyte 0.45, under 0.5" and "unsure_reason" not in wbcs[0]
    # decided on the probabilities kept (4 decimals), as the report reads them: 0.49996 is kept, and typed, as 0.5
    _fake_models(monkeypatch, lambda n: np.tile(np.float32([0.49996, 0.50004 / 7] + [0.50004 / 7] * 6), (n, 1)))
    assert [m["class_name"] for m in analyze_mod.analyze(_photo(), "x.png").entry["masks"]] == ["neutrophil"] * 3
    _fake_models(monkeypatch, probs_of)
    assert wbcs[1]["type_probs"]["lymphocyte"] == 0.45  # kept for the reviewer
    assert a.counts["wbc"] == 3 and a.counts["neutrophil"] == 1 and a.counts["lymphocyte"] == 1
    assert a.n_differential == 2 and a.differential["neutrophil"] == 50.0
    assert [round(v, 1) for v in a.differential_ci["neutrophil"]] == [1.3, 98.7]
    assert a.entry["sample_id"] == "S-17" and a.entry["pixel_size_um"] == 0.25
    header, row, batch = counts_csv([a]).splitlines()
    assert header.endswith(",unsure") and row.endswith(",1") and batch.endswith(",1")  # wbc 3 = 1 + 1 + 1 unsure
    assert len(a.wbc_crops) == 3 and set(a.models) == {"cells", "wbc-type"}
    # With no threshold every WBC is typed; and the entry has no sample_id when none is given.
    b = analyze_mod.analyze(_photo(), "x.png", min_confidence=0.0)
    assert b.unsure == [] and b.counts["lymphocyte"] == 2 and "sample_id" not in b.entry
    assert "pixel_size_um" not in b.entry
    with pytest.raises(HemasegUsageError, match="^min_confidence: "):
        analyze_mod.analyze(_photo(), min_confidence=1.5)


def test_each_wbc_label_is_drawn_on_its_own_cell_not_on_the_cell_above(monkeypatch):
    _fake_models(monkeypatch, _one_hot("neutrophil", "lymphocyte", "monocyte"))
    image = _photo()
    a = analyze_mod.analyze(image, "x.png")
    out = analyze_mod.draw_overlay(image, a, thickness=1)
    white = (out == 255).all(-1)
    assert white.any()
    assert not white[:20].any()  # nothing above the boxes (rows 20-40), where a neighbour would lie
    for b in (m["bounding_box"] for m in a.entry["masks"]):
        assert white[b["y1"]:b["y2"], b["x1"]:b["x2"]].any()  # each label inside its own box


def test_gallery_crops_share_one_magnification_and_show_grey_beyond_the_photo():
    image = np.full((200, 200, 3), 220, np.uint8)
    image[0:30, 0:30] = (90, 40, 140)  # a WBC in the corner
    small = analyze_mod.gallery_crop(image, {"x1": 0, "x2": 30, "y1": 0, "y2": 30}, rbc_diameter=40, size=60)
    assert (small[:15, :15] == analyze_mod.GALLERY_FILL).all()  # beyond the corner: grey, no mirrored cell
    assert (small[24:36, 24:36] == (90, 40, 140)).all()  # the cell itself at the centre
    # Two WBCs of 30 and 60 px with red cells of 40 px: both crops span 120 px, so the larger shows larger.
    image[100:160, 100:160] = (90, 40, 140)
    big = analyze_mod.gallery_crop(image, {"x1": 100, "x2": 160, "y1": 100, "y2": 160}, rbc_diameter=40, size=60)
    area = lambda c: int((np.abs(c.astype(int) - (90, 40, 140)).max(-1) < 30).sum())  # noqa: E731
    assert area(big) == pytest.approx(4 * area(small), rel=0.15)  # twice as wide: four times the area


def test_a_grey_photo_s_wbcs_are_counted_and_left_untyped(monkeypatch, caplog):
    """A walkthrough (stop 69): on a grey copy of a field the typer, which tells types by the stain's colours, called
    a monocyte ig at 0.97 and typed every WBC it had left unsure in colour. A grey photo's WBCs all count as WBCs,
    are listed unsure, and the photo is named."""
    _fake_models(monkeypatch, _one_hot("neutrophil", "monocyte", "ig"))
    a = analyze_mod.analyze(np.full((60, 90, 3), 200, np.uint8), "grey.png")
    assert a.counts["wbc"] == 3 and a.n_differential == 0 and len(a.unsure) == 3
    assert all(m["class_name"] == "wbc" and m["type_probs"] for m in a.entry["masks"])
    assert {m["unsure_reason"] for m in a.unsure} == {"a grey photo: no stain colours to type by"}
    assert "grey.png: a grey photo: WBC types rest on the stain's colours" in caplog.text
    # --min-confidence 0 types every WBC (the report said "every WBC typed" and listed them unsure: stop 71)
    z = analyze_mod.analyze(np.full((60, 90, 3), 200, np.uint8), "grey.png", min_confidence=0.0)
    assert z.unsure == [] and z.n_differential == 3 and "typed as asked" in caplog.text
    b = analyze_mod.analyze(_photo(), "colour.png")
    assert b.counts["neutrophil"] == 1 and b.unsure == []


def test_a_pixel_size_sizes_the_red_cells_as_the_command_line_does(monkeypatch, tmp_path):
    """A walkthrough (stop 71): `hemaseg.analyze(photo, pixel_size=0.15)` recorded the scale but estimated the size
    (88.9 px where 7.5 µm at 0.15 µm/px is 50), unlike `hemaseg analyze`; a photo given by path had no filename."""
    _fake_models(monkeypatch, _one_hot("neutrophil", "monocyte", "lymphocyte"))
    given = []
    real = analyze_mod.get_task

    class Cells:
        def predict(self, image, model, cell_diameter, *args, **kwargs):
            given.append(cell_diameter)
            return real("cells").predict(image, model, cell_diameter, *args, **kwargs)

    monkeypatch.setattr(analyze_mod, "get_task", lambda name: Cells())
    a = analyze_mod.analyze(_photo(), "x.png", pixel_size=0.15)
    assert given[-1] == 50.0 and a.entry["cell_diameter_from"] == "pixel size" and a.entry["pixel_size_um"] == 0.15
    b = analyze_mod.analyze(_photo(), "x.png", pixel_size=0.15, cell_diameter=40.0)
    assert given[-1] == 40.0 and b.entry["cell_diameter_from"] == "given"
    with pytest.raises(HemasegUsageError, match="^pixel_size: 5.3 µm per px"):
        analyze_mod.analyze(_photo(), pixel_size=5.3)
    from hemaseg.engine.task import given_params
    from hemaseg.tasks import get_task as real_get_task

    with pytest.raises(HemasegUsageError, match="^params: cells has no post-processing parameter nosuch"):
        given_params(real_get_task("cells"), {}, {"nosuch": None})  # (a None for an unknown name was ignored)
    from PIL import Image

    Image.fromarray(_photo()).save(tmp_path / "p.png")
    assert analyze_mod.analyze(tmp_path / "p.png").entry["filename"] == str(tmp_path / "p.png")
    Image.fromarray(_photo()).save(tmp_path / "t.png", dpi=(101600, 101600))  # 0.25 µm per px: its own scale, read
    e = analyze_mod.analyze(tmp_path / "t.png").entry
    assert given[-1] == 30.0 and e["pixel_size_um"] == pytest.approx(0.25) and e["cell_diameter_from"] == "pixel size"


def test_knobs_the_mask_rcnn_backend_does_not_read_are_said_and_not_recorded(caplog):
    """A docs check (stop 71): `analyze --model cells-maskrcnn --post wbc_min_score=0.7` changed nothing, yet
    results.json and the report said the knob was given and applied."""
    import hemaseg

    image = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")[:240, 160:480]
    a = analyze_mod.analyze(image, "x.png", cells_model="cells-maskrcnn", params={"split_min_piece": 0.55})
    assert "postprocess" not in a.entry
    assert "--post split_min_piece: not used by the Mask R-CNN cells model" in caplog.text
