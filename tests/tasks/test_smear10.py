import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import TINY
from hemaseg.cli import app
from hemaseg.data.weights import class_balance_weights, contact_weights
from hemaseg.io.datasets import read_colour_map, read_smear_labels, read_smear_pairs
from hemaseg.io.writers import write_png
from hemaseg.tasks.smear10 import SMEAR10
from hemaseg.tasks.smear10.infer import rbc_diameter, vote_per_object
from hemaseg.tasks.smear10.synth import (
    CLUMP,
    HEALTHY,
    INFECTED,
    CellBank,
    SynthConfig,
    colour_map,
    compose,
    image_seed,
    write_smear,
)

runner = CliRunner()


def _smears(n=6, size=160, bank=None, **kw):
    cfg = SynthConfig(size=size, **kw)
    return [compose(bank or CellBank.procedural(), cfg, image_seed(1, "train", i)) for i in range(n)]


def test_maps_agree_with_json_labels():
    for s in _smears():
        assert s.image.shape == (160, 160, 3) and s.image.dtype == np.uint8
        ids = sorted(v["instance"] for v in s.labels.values())
        assert ids == list(range(1, len(ids) + 1))
        assert set(np.unique(s.instances)) - {0} == set(ids)  # every visible object is labelled, no stray ids
        for obj in s.labels.values():
            sel = s.instances == obj["instance"]
            assert (s.classes[sel] == obj["classIdx"]).all()
            assert obj["className"] == SMEAR10.classes[obj["classIdx"]]
            ys, xs = np.nonzero(sel)
            assert (obj["tlX"], obj["tlY"]) == (xs.min(), ys.min())
            assert (obj["bboxW"], obj["bboxH"]) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert obj["area"] == sel.sum()
        assert ((s.classes > 0) == (s.instances > 0)).all()


def test_composer_makes_every_class_and_is_reproducible():
    smears = _smears(n=30, wbc_counts=(0, 0, 1), clump_probability=1.0)
    seen = set(np.unique(np.concatenate([s.classes.ravel() for s in smears])))
    assert seen == set(range(10))
    a = compose(CellBank.procedural(), SynthConfig(size=96), image_seed(5, "val", 3))
    b = compose(CellBank.procedural(), SynthConfig(size=96), image_seed(5, "val", 3))
    assert (a.image == b.image).all() and a.labels == b.labels


def test_infected_mode_and_clumps():
    s = _smears(n=1, rbc_modes=(0, 1, 0), clump_probability=1.0)[0]
    names = {v["classIdx"] for v in s.labels.values()}
    assert INFECTED in names and HEALTHY not in names and CLUMP in names


def test_every_palette_class_round_trips_through_the_colour_map_reader(tmp_path):
    classes = np.repeat(np.arange(10, dtype=np.uint8), 4).reshape(1, -1).repeat(3, 0)
    rgb = colour_map(classes).astype(np.int16)
    write_png(tmp_path / "exact.png", rgb.astype(np.uint8))
    assert (read_colour_map(tmp_path / "exact.png", SMEAR10.colors) == classes).all()
    # Anti-aliased / near colours (JPEG-ish noise, seed 002's (255, 225, 0) thrombocytes) map to the nearest class.
    noisy = np.clip(rgb + np.random.default_rng(0).integers(-12, 13, rgb.shape), 0, 255).astype(np.uint8)
    noisy[classes == 6] = (255, 225, 0)
    write_png(tmp_path / "noisy.png", noisy)
    assert (read_colour_map(tmp_path / "noisy.png", SMEAR10.colors) == classes).all()


def test_an_index_map_in_segments_is_read_as_indices_and_other_grey_maps_are_refused(tmp_path):
    """A smear10 walkthrough (stop 67): the 0-9 index maps `segment` writes, put in segments/, were read as colour maps,
    every pixel nearest black: background, pixel accuracy 0.33, exit 0."""
    from hemaseg.errors import HemasegInputError
    from hemaseg.io.datasets import read_smear_label

    classes = np.repeat(np.arange(10, dtype=np.uint8), 4).reshape(1, -1).repeat(3, 0)
    (tmp_path / "segments").mkdir()
    write_png(tmp_path / "segments" / "idx.png", classes)
    assert (read_smear_label(tmp_path / "segments" / "idx.png", SMEAR10.colors) == classes).all()
    write_png(tmp_path / "segments" / "col.png", colour_map(classes))  # a colour map still reads as one
    assert (read_smear_label(tmp_path / "segments" / "col.png", SMEAR10.colors) == classes).all()
    write_png(tmp_path / "segments" / "grey.png", (classes * 20).astype(np.uint8))
    with pytest.raises(HemasegInputError, match="neither class indices"):
        read_smear_label(tmp_path / "segments" / "grey.png", SMEAR10.colors)


def test_class_balance_weights_balance_classes():
    t = np.zeros((100, 100), np.uint8)
    t[:5] = 3  # 5 % of pixels
    t[5:30] = 9  # 25 %
    w = class_balance_weights(t, 10, power=1.0)
    totals = [w[t == k].sum() for k in (0, 3, 9)]
    assert max(totals) / min(totals) < 1.01  # each class present carries the same total weight
    assert abs(w.mean() - 1) < 1e-5
    soft = class_balance_weights(t, 10)  # default power 0.5: rarer still weighs more, less extremely
    assert soft[0, 0] > soft[50, 50] and soft[0, 0] / soft[50, 50] < w[0, 0] / w[50, 50]


def test_contact_weights_mark_only_gaps_between_instances():
    lab = np.zeros((20, 30), np.uint16)
    lab[5:15, 2:12] = 1
    lab[5:15, 13:23] = 2  # one-pixel gap at column 12
    lab[2:4, 26:29] = 3  # alone
    w = contact_weights(lab, weight=9)
    assert w[10, 12] == 10 and w[10, 6] == 1 and w[3, 27] == 1


def test_rbc_diameter_and_vote():
    classes = np.zeros((100, 100), np.uint8)
    for cy, cx in [(20, 20), (20, 45), (60, 60)]:
        cv2.circle(classes, (cx, cy), 12, 9, -1)
    assert 22 <= rbc_diameter(classes) <= 27
    rings = np.zeros((160, 160), np.uint8)  # big cells whose pale centres came out as background
    for cy, cx in [(40, 40), (40, 104), (110, 70)]:
        cv2.circle(rings, (cx, cy), 28, 9, -1)
        cv2.circle(rings, (cx, cy), 15, 0, -1)
    assert 52 <= rbc_diameter(rings) <= 60
    probs = np.zeros((10, 100, 100), np.float32)
    probs[0] = 1
    wbc = np.zeros((100, 100), bool)
    wbc[70:90, 10:30] = True
    classes[wbc] = 3
    classes[75:78, 12:15] = 4  # a speck of another type inside the cell
    probs[3][wbc], probs[4][75:78, 12:15] = 0.7, 0.9
    voted = vote_per_object(classes, probs, (1, 2, 3, 4, 5))
    assert (voted[wbc] == 3).all() and (voted[classes == 9] == 9).all()


def _fake_data(root):
    """A wbc-seg folder (2 typed cells) and a BCCD-like photo with VOC boxes."""
    rng = np.random.default_rng(0)
    ds = root / "wbc-seg" / "Dataset 1"
    ds.mkdir(parents=True)
    rows = ["image ID,class label"]
    for i in range(1, 3):
        img = np.full((60, 60, 3), 230, np.uint8)
        mask = np.zeros((60, 60), np.uint8)
        cv2.circle(mask, (30, 30), 18, 128, -1)
        cv2.circle(mask, (30, 30), 9, 255, -1)
        img[mask == 128], img[mask == 255] = (190, 160, 220), (90, 40, 130)
        write_png(ds / f"{i:03d}.png", mask)
        cv2.imwrite(str(ds / f"{i:03d}.bmp"), img[..., ::-1])
        rows.append(f"{i},{i}")
    (root / "wbc-seg" / "Class Labels of Dataset 1.csv").write_text("\n".join(rows) + "\n")
    voc = root / "bccd" / "BCCD"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    photo = np.full((120, 160, 3), 235, np.uint8)
    boxes = []
    for k, (cx, cy) in enumerate([(30, 30), (80, 40), (120, 80), (40, 90)]):
        cv2.circle(photo, (cx, cy), 12, (210, 120, 130), -1)
        boxes.append(f"<object><name>RBC</name><bndbox><xmin>{cx - 14}</xmin><ymin>{cy - 14}</ymin>"
                     f"<xmax>{cx + 14}</xmax><ymax>{cy + 14}</ymax></bndbox></object>")
    photo = np.clip(photo + rng.normal(0, 2, photo.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(voc / "JPEGImages" / "BloodImage_00001.jpg"), photo[..., ::-1])
    (voc / "Annotations" / "BloodImage_00001.xml").write_text(f"<annotation>{''.join(boxes)}</annotation>")
    return root


def test_bank_from_data_cuts_real_cells(tmp_path):
    root = _fake_data(tmp_path)
    banks = {p: CellBank.from_data(root, p, seed=0) for p in ("train", "val", "test")}
    counts = [b.count() for b in banks.values()]
    assert sum(c.get("neutrophil", 0) + c.get("lymphocyte", 0) for c in counts) == 2  # each cell in one part
    assert sum(c.get("healthy rbc", 0) for c in counts) == 4
    bank = next(b for b in banks.values() if b.count().get("healthy rbc"))
    crop = bank.crops[HEALTHY][0]
    assert crop.shape[2] == 4 and 300 < (crop[..., 3] > 127).sum() < 600  # the 12 px disc, alpha = its mask
    bank.save(tmp_path / "bank.npz")
    again = CellBank.load(tmp_path / "bank.npz")
    assert again.count() == bank.count() and (again.crops[HEALTHY][0] == crop).all()
    s = compose(again, SynthConfig(size=96, real_share=1.0, rbc_modes=(1, 0, 0)), image_seed(0, "train", 0))
    assert (s.classes == HEALTHY).any()


def test_a_labs_own_folders_feed_the_bank_under_any_name(tmp_path):
    """A smear10 walkthrough (stop 67): `train smear10 --data lab` refused a lab's typed crops and its YOLO boxed fields
    ("no cells found to compose smears from") unless their folders bore a public set's name (bccd-wbc, txl-pbc)."""
    rng = np.random.default_rng(0)
    for k in range(8):
        img = np.full((60, 60, 3), 230, np.uint8)
        cv2.circle(img, (30, 30), 18, (190, 160, 220), -1)
        cv2.circle(img, (30, 30), 9, (90, 40, 130), -1)
        (tmp_path / "mylab" / "Neutrophils").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "mylab" / "Neutrophils" / f"c{k}.png"),
                    np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)[..., ::-1])
    fields = tmp_path / "myfields"
    fields.mkdir()
    (fields / "classes.txt").write_text("wbc\nrbc\nplatelet\n")
    for k in range(6):
        photo = np.full((120, 160, 3), 235, np.uint8)
        lines = []
        for cx, cy in [(30, 30), (80, 40), (120, 80), (40, 90)]:
            cv2.circle(photo, (cx, cy), 12, (210, 120, 130), -1)
            lines.append(f"1 {cx / 160:.5f} {cy / 120:.5f} {28 / 160:.5f} {28 / 120:.5f}")
        photo = np.clip(photo + rng.normal(0, 2, photo.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(fields / f"f{k}.png"), photo[..., ::-1])
        (fields / f"f{k}.txt").write_text("\n".join(lines) + "\n")
    # a lab's boxes of infected red cells are infected crops (they were cut as healthy ones), an ig box is named
    mal = tmp_path / "malaria_fields"
    mal.mkdir()
    (mal / "classes.txt").write_text("rbc\ninfected rbc\nig\n")
    for k in range(6):
        photo = np.full((120, 160, 3), 235, np.uint8)
        for cx, cy in [(30, 30), (80, 40), (120, 80)]:
            cv2.circle(photo, (cx, cy), 12, (210, 120, 130), -1)
        cv2.circle(photo, (80, 40), 3, (90, 30, 120), -1)
        cv2.imwrite(str(mal / f"m{k}.png"), photo[..., ::-1])
        (mal / f"m{k}.txt").write_text(f"0 {30 / 160:.5f} {30 / 120:.5f} {28 / 160:.5f} {28 / 120:.5f}\n"
                                       f"1 {80 / 160:.5f} {40 / 120:.5f} {28 / 160:.5f} {28 / 120:.5f}\n"
                                       f"2 {120 / 160:.5f} {80 / 120:.5f} {28 / 160:.5f} {28 / 120:.5f}\n")
    banks = [CellBank.from_data(mal, part) for part in ("train", "val", "test")]
    assert sum(b.count().get("infected rbc", 0) for b in banks) == 6, [b.count() for b in banks]
    assert sum(b.count().get("healthy rbc", 0) for b in banks) == 6
    said = [f["reason"] for b in banks for f in b.left_out]
    assert said and all("of type 'ig'" in r for r in said), said
    crops = [CellBank.from_data(tmp_path / "mylab", part).count() for part in ("train", "val", "test")]
    assert sum(c.get("neutrophil", 0) for c in crops) >= 6 and crops[0].get("neutrophil"), crops
    boxed = [CellBank.from_data(fields, part).count() for part in ("train", "val", "test")]
    assert sum(c.get("healthy rbc", 0) for c in boxed) == 24 and boxed[0].get("healthy rbc"), boxed
    assert not CellBank.from_data(tmp_path / "mylab" / "Neutrophils", "train").count()  # loose crops: no type
    # a split layout without a test part (Roboflow's images/train + images/valid) is split by file, every part fed
    split = tmp_path / "roboflow"
    for k, f in enumerate(sorted(fields.glob("f*.png"))):
        sub = "train" if k % 2 else "valid"
        (split / "images" / sub).mkdir(parents=True, exist_ok=True)
        (split / "labels" / sub).mkdir(parents=True, exist_ok=True)
        (split / "images" / sub / f.name).write_bytes(f.read_bytes())
        (split / "labels" / sub / f.with_suffix(".txt").name).write_bytes(f.with_suffix(".txt").read_bytes())
    (split / "data.yaml").write_text("names: [wbc, rbc, platelet]\n")
    got = [CellBank.from_data(split, part).count().get("healthy rbc", 0) for part in ("train", "val", "test")]
    assert sum(got) == 24 and got[0] < 24, got  # every field in some part, not train alone (valid/ was unused)
    # crops of a type no class is drawn from (a malaria lab's infected rbc/, a smudge/ folder) were dropped unsaid
    # (a walkthrough, stop 69): named, and synth ends with 1; crops in unknown/ (not typed yet) are no such type
    for kind in ("infected rbc", "smudge", "unknown"):
        (tmp_path / "mylab" / kind).mkdir()
        cv2.imwrite(str(tmp_path / "mylab" / kind / "x.png"), np.full((40, 40, 3), 200, np.uint8))
    bank = CellBank.from_data(tmp_path / "mylab", "train")
    assert sorted(Path(f["image"]).name for f in bank.left_out) == ["infected rbc", "smudge"], bank.left_out
    assert "1 crop(s) of type 'smudge'" in bank.left_out[1]["reason"] and bank.count().get("neutrophil")
    # kept in the bank's cache: a run resumed from it before its first checkpoint names them again (a review)
    from hemaseg.tasks.smear10.train import load_bank

    first = load_bank([str(tmp_path / "mylab")], "train", 0, tmp_path / "bank.npz")
    assert load_bank([str(tmp_path / "mylab")], "train", 0, tmp_path / "bank.npz").left_out == first.left_out != []
    res = runner.invoke(app, ["synth", "--n", "1", "--size", "96", "--out", str(tmp_path / "s"), "--data",
                              str(tmp_path / "mylab"), "--part", "train"])
    assert res.exit_code == 1 and "'infected rbc', from which no smear10 class is drawn" in res.output, res.output
    assert (tmp_path / "s" / "images").is_dir()  # the smears written from the rest
    for kind in ("infected rbc", "smudge", "unknown"):
        shutil.rmtree(tmp_path / "mylab" / kind)
    # --real-fields without TXL-PBC-like fields: refused before the banks and the validation set were built
    res = runner.invoke(app, ["train", "smear10", "--data", str(tmp_path / "mylab"), "--out", str(tmp_path / "r"),
                              "--real-fields", "0.4", "--epochs", "1"])
    assert res.exit_code == 1 and "real_fields needs boxed fields" in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_synth_cli_writes_seed002_folders(tmp_path):
    out = tmp_path / "syn"
    res = runner.invoke(app, ["synth", "--n", "2", "--out", str(out), "--size", "96", "--seed", "4",
                              "--wbc-crops", str(tmp_path / "crops")])
    assert res.exit_code == 0, res.output
    for sub, ext in (("images", "png"), ("segments", "png"), ("classes", "png"), ("instances", "png"),
                     ("labels", "json")):
        assert len(list((out / sub).glob(f"*.{ext}"))) == 2
    # one crop per labelled WBC, filed under its type
    wbcs = sorted(o["className"] for f in sorted((out / "labels").glob("*.json")) for o in read_smear_labels(f)
                  if o["className"] in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"))
    assert wbcs and sorted(p.parent.name for p in (tmp_path / "crops").glob("*/*.png")) == wbcs
    pairs = read_smear_pairs(out, SMEAR10.colors)
    objs = read_smear_labels(sorted((out / "labels").glob("*.json"))[0])
    assert len(pairs) == 2 and pairs[0][1].max() <= 9
    classes = pairs[0][1]
    for o in objs:  # every labelled object's box holds its class in the map read back from the palette PNG
        box = classes[o["tlY"]:o["tlY"] + o["bboxH"], o["tlX"]:o["tlX"] + o["bboxW"]]
        assert (box == o["classIdx"]).any()
    # --first continues a set (new names, new images) and --param changes one synthesis field
    res = runner.invoke(app, ["synth", "--n", "1", "--out", str(out), "--size", "96", "--seed", "4", "--first", "2",
                              "--param", "dark_background=1.0"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (out / "images").glob("*.png"))
    assert names == ["test_00000.png", "test_00001.png", "test_00002.png"]
    from hemaseg.io.images import read_image
    dark = read_image(out / "images" / "test_00002.png")
    background = cv2.imread(str(out / "classes" / "test_00002.png"), cv2.IMREAD_UNCHANGED) == 0
    assert dark[background].max(1).mean() < 140  # grey to black, not white/pink/yellow
    res = runner.invoke(app, ["synth", "--n", "1", "--out", str(out), "--param", "dark=1"])
    assert res.exit_code != 0 and "dark_background" in res.output
    # values a parameter cannot take: one line naming it, exit 2, nothing written (they raised ValueError,
    # cv2.error or TypeError deep inside, or were taken: a chance of 5, a size --size then replaced)
    for bad in ("rbc_diameter=[60,40]", "rbc_diameter=[-5,0]", "rbc_diameter=[40,null]", "wbc_ratio=[0,0]",
                "dark_background=5", "size=0", "thrombocytes=[3,1]", "wbc_counts=[0,0,0,0]"):
        res = runner.invoke(app, ["synth", "--n", "1", "--out", str(tmp_path / "bad"), "--param", bad])
        assert res.exit_code == 2 and bad.split("=")[0] in res.output, (bad, res.output)
    for args in (["--held-out", str(tmp_path / "nosuch.json")], ["--data", str(tmp_path / "nosuch")]):
        res = runner.invoke(app, ["synth", "--n", "1", "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and "nosuch" in res.output, (args, res.output)
    assert not (tmp_path / "bad" / "images").exists()
    (out / "labels" / "bad.json").write_text('{"0": {"className": "x"}}')
    with pytest.raises(Exception, match="bad.json"):
        read_smear_labels(out / "labels" / "bad.json")


@pytest.fixture()
def smear_run(tmp_path, monkeypatch):
    import hemaseg.tasks.smear10.train as smear
    from hemaseg.tasks import fit, task_config

    monkeypatch.setattr(smear, "N_VAL", 3)
    cfg = task_config("smear10", arch_kwargs={**TINY, "norm": "group"}, epochs=2, batch_size=4, samples_per_epoch=8,
                      workers=1, reuse=1)  # new smears every epoch, composed in a data-loader worker process
    return fit(cfg, tmp_path / "run", progress=False), tmp_path / "run"


def test_smear10_resume_equals_unbroken_run(smear_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import hemaseg.tasks.smear10.train as smear
    from hemaseg.tasks import fit, task_config

    monkeypatch.setattr(smear, "N_VAL", 3)
    full, full_run = smear_run
    cfg = task_config("smear10", arch_kwargs={**TINY, "norm": "group"}, epochs=2, batch_size=4, samples_per_epoch=8,
                      workers=0, reuse=1)  # in-process this time: the smears must not depend on where they are composed
    fit(cfg, tmp_path / "broken", progress=False, max_epochs_this_call=1)
    resumed = fit(None, tmp_path / "broken", resume=True, progress=False)
    a, b = load_file(str(full_run / "last.safetensors")), load_file(str(tmp_path / "broken" / "last.safetensors"))
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in a)
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in resumed["history"]]


def test_smear10_reuse_resumed_mid_block_equals_unbroken_run(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import hemaseg.tasks.smear10.train as smear
    from hemaseg.tasks import fit, task_config

    monkeypatch.setattr(smear, "N_VAL", 2)
    kw = dict(arch_kwargs={**TINY, "norm": "group"}, epochs=2, batch_size=4, samples_per_epoch=8, reuse=2)
    full = fit(task_config("smear10", workers=1, **kw), tmp_path / "full", progress=False)
    fit(task_config("smear10", workers=0, **kw), tmp_path / "broken", progress=False, max_epochs_this_call=1)
    resumed = fit(None, tmp_path / "broken", resume=True, progress=False)  # epoch 2 re-composes block 0
    a, b = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("full", "broken"))
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in a)
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in resumed["history"]]
    assert json.loads((tmp_path / "full" / "model.json").read_text())["training"]["reuse"] == 2


def test_smear10_training_segment_and_evaluate(smear_run, tmp_path):
    state, run = smear_run
    assert state["finished"] and (run / "val" / "segments").is_dir() and (run / "curves.png").exists()
    card = json.loads((run / "model.json").read_text())
    assert card["task"] == "smear10" and len(card["classes"]) == 10 and "mean_iou" in card["metrics"]["val"]
    assert card["tta"] is True  # a retrained model segments as the bundled one does
    write_smear(tmp_path / "test", "a", _smears(n=1, size=96)[0])
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", "--task", "smear10", str(tmp_path / "test" / "images"), "--out", str(out),
                              "--model", str(run / "model.safetensors"), "--overlay"])
    assert res.exit_code == 0, res.output
    idx = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    colour = cv2.imread(str(out / "a_color.png"))[..., ::-1]
    assert idx.shape == (96, 96) and idx.max() <= 9 and (colour == colour_map(idx)).all()
    assert (out / "a_overlay.png").exists()
    res = runner.invoke(app, ["evaluate", "smear10", "--data", str(tmp_path / "test"), "--model",
                              str(run / "model.safetensors"), "--grid", str(tmp_path / "cm.png"),
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= r["mean"]["pixel_accuracy"] <= 1 and np.array(r["confusion"]).sum() == 96 * 96
    assert (tmp_path / "cm.png").exists()
    # tta: the final pass is the mean of the image's and its three flips' predictions, flipped back
    from hemaseg.tasks.smear10.infer import segment_smear

    image = _smears(n=1, size=96)[0].image
    model = str(run / "model.safetensors")
    tta = segment_smear(image, model, cell_diameter=32.0, tta=True).probs
    flips = [(slice(None), slice(None)), (slice(None, None, -1), slice(None)), (slice(None), slice(None, None, -1)),
             (slice(None, None, -1), slice(None, None, -1))]
    mean = np.mean([segment_smear(np.ascontiguousarray(image[fy, fx]), model, cell_diameter=32.0).probs[:, fy, fx]
                    for fy, fx in flips], 0)
    plain = segment_smear(image, model, cell_diameter=32.0, tta=False).probs
    assert np.allclose(tta, mean, atol=1e-4) and not np.allclose(tta, plain, atol=1e-4)
    # with no tta given, the model card decides
    from hemaseg.engine.predict import get_model

    module, card = get_model(model)
    for flag, expect in ((True, tta), (False, plain)):
        got = segment_smear(image, (module, {**card, "tta": flag}), cell_diameter=32.0).probs
        assert np.allclose(got, expect, atol=1e-6)
    res = runner.invoke(app, ["segment", "--task", "wbc", str(tmp_path / "test" / "images"), "--tta"])
    assert res.exit_code == 2 and "smear10" in res.output


def test_evaluate_smear10_names_an_image_without_its_class_map(tmp_path):
    """An image of a seed-002 folder with no map in classes/ or segments/ was skipped without a word: one line
    naming it, the others scored, exit 1."""
    import torch

    from hemaseg.models.registry import create_model, save_model

    torch.manual_seed(0)
    arch = {"name": "unet-dropout", "kwargs": {"classes": 10, **TINY}}
    card = {"name": "tiny-smear10", "task": "smear10", "classes": list(SMEAR10.classes), "architecture": arch,
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0}, "cell_diameter": 32.0}
    model = save_model(create_model("unet-dropout", **arch["kwargs"]).eval(), tmp_path / "tiny", card)[0]
    for i, smear in enumerate(_smears(n=3, size=64)):
        write_smear(tmp_path / "test", f"s{i}", smear)
    for sub in ("classes", "segments"):
        (tmp_path / "test" / sub / "s1.png").unlink()
    res = runner.invoke(app, ["evaluate", "smear10", "--data", str(tmp_path / "test"), "--model", str(model),
                              "--cell-diameter", "32", "--grid", str(tmp_path / "cm.png"),
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 1, res.output
    said = [line for line in res.output.splitlines() if "s1.png" in line]
    assert len(said) == 1 and said[0].startswith(str(tmp_path / "test" / "images" / "s1.png")), res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n_images"] == 2 and np.array(r["confusion"]).sum() == 2 * 64 * 64 and len(r["failed"]) == 1
    # a class map holding an index beyond the ten: that image named, the others scored (a traceback before)
    from PIL import Image

    bad = np.array(Image.open(tmp_path / "test" / "classes" / "s2.png"))
    bad[0, 0] = 12
    Image.fromarray(bad).save(tmp_path / "test" / "classes" / "s2.png")
    (tmp_path / "test" / "segments" / "s2.png").unlink(missing_ok=True)
    res = runner.invoke(app, ["evaluate", "smear10", "--data", str(tmp_path / "test"), "--model", str(model),
                              "--cell-diameter", "32", "--grid", str(tmp_path / "cm.png"),
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 1 and "s2.png: holds class 12" in res.output, res.output
    assert json.loads((tmp_path / "r.json").read_text())["n_images"] == 1
    # --split: only its 'val' images (it was ignored); what it leaves out is no failure of this run
    (tmp_path / "split.json").write_text(json.dumps({"train": [], "val": ["s0.png"]}))
    res = runner.invoke(app, ["evaluate", "smear10", "--data", str(tmp_path / "test"), "--model", str(model),
                              "--cell-diameter", "32", "--grid", str(tmp_path / "cm.png"),
                              "--json", str(tmp_path / "r.json"), "--split", str(tmp_path / "split.json")])
    assert res.exit_code == 0 and json.loads((tmp_path / "r.json").read_text())["n_images"] == 1, res.output


def test_a_fine_tune_draws_smears_its_start_model_never_saw(smear_run):
    from hemaseg.tasks.smear10.train import SynthDataset, smear_transform, training_stream

    _, run = smear_run
    assert training_stream("") == 0
    assert json.loads((run / "model.json").read_text())["training"]["stream"] == 0
    assert training_stream(str(run / "model.safetensors")) == 1  # one after the start model's stream
    bank = CellBank.procedural()
    sets = [SynthDataset(bank, SynthConfig(size=64), 2, 0, smear_transform(False), 1, 99, balance=False, stream=s)
            for s in (0, 0, 1)]
    first, again, other = (d[1][1].numpy() for d in sets)
    assert (first == again).all() and not (first == other).all()


def test_reuse_keeps_a_smear_for_its_block_and_augments_it_anew():
    from hemaseg.tasks.smear10.train import SynthDataset, smear_transform

    bank = CellBank.procedural()
    ds = SynthDataset(bank, SynthConfig(size=64), 3, 0, smear_transform(True), 1, 99, balance=False, reuse=2)
    seen = {}
    for epoch in range(4):
        ds.epoch = epoch
        ds.prepare(0)
        assert ds.pool_block == epoch // 2 and len(ds.pool) == 3
        seen[epoch] = ds.pool[1][1].copy(), ds[1][0].numpy()
    # the composed classes are one smear per block of two epochs; the augmented images all differ
    assert (seen[0][0] == seen[1][0]).all() and (seen[2][0] == seen[3][0]).all()
    assert not (seen[0][0] == seen[2][0]).all()
    assert not np.allclose(seen[0][1], seen[1][1])
    # without a prepared pool (e.g. a worker that missed it) the same smear is composed again
    ds.pool_block = -1
    image, classes = ds.compose(1)
    assert (classes == seen[3][0]).all()


def test_wbc_objects_are_named_whole_by_the_classifier():
    from hemaseg.tasks.smear10.infer import type_wbc_objects
    from hemaseg.tasks.smear10.train import WBC_AS_ONE, merge_wbc_types

    rng = np.random.default_rng(0)
    s = compose(CellBank.procedural(), SynthConfig(size=160, wbc_counts=(0, 0, 1)), rng)
    merged = merge_wbc_types(s.classes)
    assert set(np.unique(merged)) <= {0, WBC_AS_ONE, 6, 7, 8, 9}
    typed = type_wbc_objects(s.image, merged)
    from scipy import ndimage as ndi

    lab, n = ndi.label((merged >= 1) & (merged <= 5))
    assert n >= 1
    for k in range(1, n + 1):
        vals = np.unique(typed[lab == k])
        assert len(vals) == 1 and 1 <= vals[0] <= 5  # one type per object
    assert (typed[lab == 0] == merged[lab == 0]).all()  # nothing else changes


def test_smear_scale_is_read_where_the_model_is_most_confident(monkeypatch):
    """Big cells (a photo at its native magnification) are read at the downscale where the
    model is most sure of them; at the trained size the first pass stays."""
    import hemaseg.tasks.smear10.infer as smear

    card = {"cell_diameter": 32.0, "diameter_range": [20.0, 44.0], "normalization": {}}
    calls = []

    def fake_probs(module, card_, image, factor, *args, **kwargs):
        calls.append(factor)
        h, w = image.shape[:2]
        p = np.full((10, h, w), 0.02, np.float32)
        p[0, :, : w // 2] = 0.82  # left half background, right half red cells
        sure = 0.9 if abs(factor - confident_at) < 1e-6 else 0.5
        p[9, :, w // 2:] = sure
        p[8, :, w // 2:] = 1 - sure - 0.16
        return p

    monkeypatch.setattr(smear, "get_model", lambda model, device="cpu": (None, card))
    monkeypatch.setattr(smear, "predict_probs", fake_probs)
    image = np.full((400, 400, 3), 200, np.uint8)
    own = smear.SmearParams(size_model="none")  # the map's own reading (the default), not a cells model's
    for confident_at, expected in ((0.35, 0.35), (1.0, None)):
        calls.clear()
        seg = smear.segment_smear(image, "fake", params=own)
        assert calls[:5] == [1.0, *smear.DOWNSCALES]
        if expected is not None:
            assert seg.scale == expected
        else:
            assert seg.scale != 0.35 and seg.scale not in smear.DOWNSCALES[1:]
    calls.clear()
    smear.segment_smear(image[:100, :100], "fake", params=own)  # small image: no downscale below MIN_SIDE px
    assert calls[:2] == [1.0, 0.71] and not set(calls[2:]) & set(smear.DOWNSCALES[1:])  # 50 px < MIN_SIDE
    assert smear.cell_confidence(fake_probs(None, card, image, 0.5)) == pytest.approx(0.5)  # over the cells only


def test_red_cell_size_can_come_from_a_cells_model_when_it_finds_enough_red_cells(monkeypatch):
    """With ``size_model`` a cells model measures the red cells (one pass of the map, at the scale
    that brings them to the trained middle); with fewer than ``size_min_cells``
    red cells found, or a size that does not hold in the enlarged image, the map reads the image
    at several scales itself."""
    import hemaseg.tasks.smear10.infer as smear
    from hemaseg.core.result import Segmentation

    card = {"cell_diameter": 32.0, "diameter_range": [20.0, 44.0], "normalization": {}}
    calls, found = [], {}

    def fake_probs(module, card_, image, factor, *args, **kwargs):
        calls.append(factor)
        p = np.full((10, *image.shape[:2]), 0.02, np.float32)
        p[9] = 0.82
        return p

    def fake_cells(image, model="cells", cell_diameter=None, device="cpu"):
        found["model"] = model
        if cell_diameter is None:  # the model's own scale search: 96 px red cells
            objects = [{"category": "rbc"}] * found["n"] + [{"category": "wbc"}] * 3
            return Segmentation(np.zeros(image.shape[:2], np.uint8), None, None, 96.0, 1.0, objects)
        assert cell_diameter == pytest.approx(96.0 / smear.SIZE_CHECK_ZOOM)
        yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]  # the check: one red cell of found["again"] px
        cell = ((yy - 200) ** 2 + (xx - 200) ** 2 < (found["again"] / 2) ** 2).astype(np.int32)
        return Segmentation(cell.astype(np.uint8), cell, None, cell_diameter, 1.0, [{"category": "rbc"}])

    monkeypatch.setattr(smear, "get_model", lambda model, device="cpu": (None, card))
    monkeypatch.setattr(smear, "predict_probs", fake_probs)
    monkeypatch.setattr(smear, "segment_cells", fake_cells)
    image = np.full((400, 400, 3), 200, np.uint8)
    found["n"], found["again"] = 5, 90
    cells = smear.SmearParams(size_model="cells")
    seg = smear.segment_smear(image, "fake", tta=False, params=cells)
    assert calls == [pytest.approx(32 / 96)] and seg.cell_diameter == 96.0 and found["model"] == "cells"
    calls.clear()
    found.clear()
    seg = smear.segment_smear(image, "fake", tta=False)  # the default: the map's own reading
    assert calls[:5] == [1.0, *smear.DOWNSCALES] and "model" not in found
    calls.clear()
    found["n"], found["again"] = 4, 90  # the three WBCs do not count: too few red cells, the map's reading decides
    seg = smear.segment_smear(image, "fake", tta=False, params=cells)
    assert calls[:5] == [1.0, *smear.DOWNSCALES] and seg.cell_diameter != 96.0
    calls.clear()
    found["n"], found["again"] = 30, 48  # clumps of small cells: resolved in the enlarged image, half the size
    seg = smear.segment_smear(image, "fake", tta=False, params=cells)
    assert calls[:5] == [1.0, *smear.DOWNSCALES] and seg.cell_diameter != 96.0
    calls.clear()
    smear.segment_smear(image, "fake", cell_diameter=64.0, tta=False, params=cells)  # a given size is never measured
    assert calls == [pytest.approx(0.5)]


def test_wbcs_on_dark_backgrounds_are_typed_on_light_plasma(monkeypatch):
    import hemaseg.tasks.smear10.infer as pipeline
    from hemaseg.tasks.smear10.infer import PLASMA, type_wbc_objects
    from hemaseg.tasks.smear10.train import merge_wbc_types

    seen = []

    def fake_type(image, records, model, device):
        seen.append(image)
        return np.tile([[0.0, 0.0, 1.0, 0.0, 0.0]], (len(records), 1)), [], list(SMEAR10.classes[1:6])

    monkeypatch.setattr(pipeline, "type_wbcs", fake_type)
    for dark, expect_plasma in ((1.0, True), (0.0, False)):
        s = compose(CellBank.procedural(), SynthConfig(size=160, wbc_counts=(0, 1), dark_background=dark),
                    np.random.default_rng(1))
        seen.clear()
        typed = type_wbc_objects(s.image, merge_wbc_types(s.classes))
        bg = s.classes == 0
        assert (typed[(s.classes >= 1) & (s.classes <= 5)] == 3).all()  # every WBC named by the (fake) classifier
        assert ((seen[0][bg] == PLASMA).all(axis=1).all()) == expect_plasma
        assert (seen[0][~bg] == s.image[~bg]).all()  # cells untouched


def test_a_red_cell_is_healthy_or_infected_as_a_whole_and_slivers_are_not_cells():
    from hemaseg.core.labels import split_instances
    from hemaseg.tasks.smear10.classes import CLASSES, GROUPS
    from hemaseg.tasks.smear10.infer import absorb_fragments

    healthy, infected, neutro = (CLASSES.index(n) for n in ("healthy rbc", "infected rbc", "neutrophil"))
    yy, xx = np.mgrid[:60, :100]
    a = (yy - 30) ** 2 + (xx - 30) ** 2 < 20 ** 2
    b = (yy - 30) ** 2 + (xx - 68) ** 2 < 20 ** 2  # touching a: one connected red-cell piece
    probs = np.zeros((len(CLASSES), 60, 100), np.float32)
    probs[0] = 1.0
    probs[:, a | b] = 0.0
    probs[healthy, a] = 0.9
    probs[infected, a] = 0.1
    spot = a & ((yy - 30) ** 2 + (xx - 30) ** 2 < 5 ** 2)  # a dark spot the network calls infected
    probs[healthy, spot], probs[infected, spot] = 0.2, 0.8
    probs[infected, b] = 0.7  # b: infected all over
    probs[healthy, b & ~a] = 0.3
    classes = probs.argmax(0).astype(np.uint8)
    assert (classes[spot] == infected).all()
    cells = split_instances(np.isin(classes, GROUPS["rbc"]), 40.0)
    voted = vote_per_object(classes, probs, GROUPS["rbc"], cells)
    assert (voted[a & ~b] == healthy).all() and (voted[b & ~a] == infected).mean() > 0.95
    # one connected piece voted as a whole would have made both cells one class
    assert len(np.unique(vote_per_object(classes, probs, GROUPS["rbc"])[a | b])) == 1
    voted[5, 95] = neutro  # a one-pixel "WBC" on the background: a sliver, not a cell
    voted[30, 20] = neutro  # ... and one inside a red cell
    out = absorb_fragments(voted, 0.05 * np.pi * 20 ** 2, GROUPS["wbc"] + GROUPS["rbc"])
    assert out[5, 95] == 0 and out[30, 20] == healthy
    assert (out[b & ~a] == voted[b & ~a]).all()  # whole cells stay


def _boxed_fields(root, n=3):
    """A TXL-PBC-like folder: pink red cells and one purple WBC per field, every cell boxed (YOLO),
    sources.csv naming each field's original photo."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("0 White Blood Cell (WBC)\n1 Red Blood Cell (RBC)\n2 Platelet\n")
    rows = ["image,source_dataset,original_name"]
    for i in range(n):
        img = np.full((120, 160, 3), 235, np.uint8)
        lines = []
        for cx, cy in ((30, 30), (130, 30), (30, 90)):
            cv2.circle(img, (cx, cy), 12, (200, 110, 120), -1)
            lines.append(f"1 {cx / 160:.5f} {cy / 120:.5f} {24 / 160:.5f} {24 / 120:.5f}")
        cv2.circle(img, (110, 85), 20, (120, 60, 160), -1)
        lines.append(f"0 {110 / 160:.5f} {85 / 120:.5f} {40 / 160:.5f} {40 / 120:.5f}")
        cv2.imwrite(str(root / "images" / "train" / f"f{i}.png"), img[..., ::-1])
        (root / "labels" / "train" / f"f{i}.txt").write_text("\n".join(lines) + "\n")
        rows.append(f"f{i}.png,SRC,Photo_{i}.jpg")
    (root / "sources.csv").write_text("\n".join(rows) + "\n")
    return root


def test_real_fields_teach_only_what_their_boxes_are_sure_of(tmp_path):
    from hemaseg.engine.losses import IGNORE
    from hemaseg.tasks.smear10.train import WBC_AS_ONE, RealFields, SynthDataset, boxed_fields, smear_transform

    _boxed_fields(tmp_path / "data" / "txl")
    voc = tmp_path / "data" / "voc" / "ImageSets" / "Main"
    voc.mkdir(parents=True)
    (voc / "val.txt").write_text("Photo_1\n")  # another data set holds this photo out: so does training
    fields = boxed_fields([str(tmp_path / "data")])
    assert sorted(f[0].name for f in fields) == ["f0.png", "f2.png"]
    real = RealFields(fields, (20.0, 30.0), 64)
    ds = SynthDataset(CellBank.procedural(), SynthConfig(size=64), 6, 0, smear_transform(False), 1, 99, balance=True,
                      merge_wbc=True, real=real, real_share=1.0)
    seen = set()
    for i in range(6):
        x, t, w = ds[i]
        t, w = t.numpy(), w.numpy()
        assert x.shape == (3, 64, 64) and set(np.unique(t)) <= {0, HEALTHY, WBC_AS_ONE, 6, IGNORE}
        assert (w[t == IGNORE] == 0).all() and (w[t != IGNORE] > 0).all()
        seen |= set(np.unique(t).tolist())
    assert {0, HEALTHY, IGNORE} <= seen and INFECTED not in seen  # parasite-free: never an infected pixel
    # a share of 0 draws composites only (no IGNORE pixel in a composite)
    ds0 = SynthDataset(CellBank.procedural(), SynthConfig(size=64), 3, 0, smear_transform(False), 1, 99,
                       balance=False, real=real, real_share=0.0)
    assert all(IGNORE not in ds0[i][1].numpy() for i in range(3))
    res = runner.invoke(app, ["train", "smear10", "--out", str(tmp_path / "run"), "--real-fields", "1.5",
                              "--data", str(tmp_path / "data")])
    assert res.exit_code == 2 and "real-fields" in res.output
    assert not (tmp_path / "run").exists()  # refused before the run folder is made: a retry is not blocked


def test_a_data_sets_own_folder_given_to_synth_is_searched(tmp_path):
    """`synth --data ../shared/data/bccd-wbc` searched below that folder only and used no crop, without a word."""
    from hemaseg.tasks.smear10.synth import _named

    (tmp_path / "bccd-wbc" / "Neutrophil").mkdir(parents=True)
    (tmp_path / "x" / "bccd-wbc").mkdir(parents=True)
    assert _named(tmp_path / "bccd-wbc", "bccd-wbc") == [tmp_path / "bccd-wbc"]
    assert _named(tmp_path, "bccd-wbc") == [tmp_path / "bccd-wbc", tmp_path / "x" / "bccd-wbc"]


def test_a_typed_wbc_is_scored_by_the_maps_wbc_probability():
    """A segment audit: a WBC the typer named a monocyte, which the map had called a lymphocyte, scored 0.0."""
    from hemaseg.tasks.smear10.infer import GROUPS, smear_objects

    classes = np.zeros((20, 20), np.uint8)
    mono, lymph = GROUPS["wbc"][:2]
    classes[5:15, 5:15] = mono
    probs = np.zeros((10, 20, 20), np.float32)
    probs[0] = 1.0
    probs[0, 5:15, 5:15], probs[lymph, 5:15, 5:15] = 0.1, 0.9  # the map: a lymphocyte; the typer: mono
    assert smear_objects(classes, probs)[1][0]["score"] == 0.0
    assert smear_objects(classes, probs, typed_wbcs=True)[1][0]["score"] == pytest.approx(0.9)


def test_touching_red_cells_are_counted_one_by_one(monkeypatch):
    """smear10's objects were connected pieces of one class: two touching red cells were one object (a crowded
    field's red cells one object of 25,302 px). Each red cell is now its own object, through segment_smear."""
    from hemaseg.tasks.smear10 import infer
    from hemaseg.tasks.smear10.classes import CLASSES

    healthy = CLASSES.index("healthy rbc")
    yy, xx = np.mgrid[:80, :140]
    cells = [((yy - 40) ** 2 + (xx - 30 - 36 * i) ** 2 < 20 ** 2) for i in range(3)]  # a row of three, touching
    probs = np.zeros((len(CLASSES), 80, 140), np.float32)
    probs[0] = 1.0
    for c in cells:
        probs[0, c], probs[healthy, c] = 0.0, 1.0
    monkeypatch.setattr(infer, "predict_probs", lambda *a, **k: probs)
    monkeypatch.setattr(infer, "get_model", lambda *a, **k: (None, {"cell_diameter": 40.0, "classes": list(CLASSES)}))
    seg = infer.segment_smear(np.full((80, 140, 3), 200, np.uint8), cell_diameter=40.0)
    rbcs = [o for o in seg.objects if o["class_name"] == "healthy rbc"]
    assert len(rbcs) == 3 and len(np.unique(seg.instances[seg.instances > 0])) == 3
    assert sum(o["area"] for o in rbcs) == int(np.logical_or.reduce(cells).sum())


def test_train_smear10_refuses_crop(tmp_path):
    """A walkthrough (stop 64): `train smear10 --crop 320` was recorded in the run's config while the smears stayed
    224 px; a usage error naming --crop, before anything is written."""
    from typer.testing import CliRunner

    from hemaseg.cli import app

    (tmp_path / "data").mkdir()  # (an --out inside --data is refused first since stop 69)
    res = CliRunner().invoke(app, ["train", "smear10", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                                   "--crop", "320"])
    assert res.exit_code == 2 and "--crop" in res.output and "224 px" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_a_white_cell_object_far_smaller_than_a_red_cell_is_recast_unless_the_frame_cuts_it():
    """A walkthrough (stop 69): smear10 kept white-cell objects far smaller than a red cell (a red cell's sliver
    called a lymphocyte, a platelet an eosinophil): 3 WBCs where analyze found 1. Under half a red cell's disc
    (the default), such an object takes its most probable other class; one the frame cuts may be any size."""
    from hemaseg.tasks.smear10.classes import CLASSES
    from hemaseg.tasks.smear10.infer import SmearParams, small_wbcs_recast

    d = 20.0  # red cells px: disc 314 px; half of it 157
    classes = np.zeros((60, 60), np.uint8)
    classes[10:20, 10:20] = CLASSES.index("lymphocyte")  # 100 px: a sliver, inside
    classes[30:50, 30:50] = CLASSES.index("neutrophil")  # 400 px: a white cell
    classes[0:8, 50:60] = CLASSES.index("eosinophil")  # 80 px at the frame: kept
    probs = np.zeros((10, 60, 60), np.float32)
    probs[CLASSES.index("lymphocyte")] = 0.6
    probs[CLASSES.index("healthy rbc"), 10:20, 10:20] = 0.3
    probs[CLASSES.index("thrombocyte"), 10:20, 10:20] = 0.1
    out = small_wbcs_recast(classes, probs, SmearParams().wbc_min_rbc * np.pi * (d / 2) ** 2)
    assert (out[10:20, 10:20] == CLASSES.index("healthy rbc")).all()
    assert (out[30:50, 30:50] == classes[30:50, 30:50]).all() and (out[0:8, 50:60] == classes[0:8, 50:60]).all()
    assert SmearParams().wbc_min_rbc == 0.5


def test_a_grey_image_s_map_is_said_to_rest_on_colours_it_lacks(caplog):
    """A walkthrough (stop 69): smear10 on a grey copy of the sample typed its WBC neutrophil at 0.94 and called a red
    cell infected, unsaid (analyze lists a grey photo's WBCs unsure)."""
    import hemaseg

    sample = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")[:200, :200]
    grey = np.repeat(sample.mean(2, keepdims=True).astype(np.uint8), 3, 2)
    hemaseg.segment(grey, model="smear10", cell_diameter=90)
    assert "a grey image: the map's WBC types and its infected red cells rest on" in caplog.text
    caplog.clear()
    hemaseg.segment(sample, model="smear10", cell_diameter=90)
    assert "a grey image" not in caplog.text


def test_a_platelet_speck_takes_the_class_around_it():
    """A walkthrough (stop 69): 8-px specks were thrombocyte objects (46 platelets called where 12 were boxed). Under
    0.02 of a red cell's disc (the default) a platelet object takes the class around it."""
    from hemaseg.tasks.smear10.classes import CLASSES
    from hemaseg.tasks.smear10.infer import SmearParams, absorb_fragments

    d = 60.0  # red cells: disc 2,827 px, 0.02 of it 57 px
    classes = np.zeros((80, 80), np.uint8)
    rbc, plt = CLASSES.index("healthy rbc"), CLASSES.index("thrombocyte")
    classes[10:70, 10:70] = rbc
    classes[30:33, 30:33] = plt  # 9 px on a red cell: a speck
    classes[72:77, 2:14] = plt  # 60 px on the background: a platelet
    out = absorb_fragments(classes, SmearParams().platelet_min_rbc * np.pi * (d / 2) ** 2, (plt, CLASSES.index(
        "platelet clump")))
    assert (out[30:33, 30:33] == rbc).all() and (out[72:77, 2:14] == plt).all()
    assert SmearParams().platelet_min_rbc == 0.02
