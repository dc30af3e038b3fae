"""YOLO reader and writer: round trips through `hemaseg convert`, the layouts read, errors, TXL-PBC."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.errors import HemasegInputError
from hemaseg.io.annotations import (
    box_vertices,
    find_yolo,
    read_coco,
    read_voc_entry,
    read_yolo,
    read_yolo_labels,
    write_coco,
    write_yolo,
    yolo_names,
)

runner = CliRunner()
TXL = Path(__file__).resolve().parents[3] / "shared" / "data" / "txl-pbc"


def _box_entry(name: str, h: int, w: int, boxes: list[tuple[str, int, int, int, int]]) -> dict:
    masks = [{"class_name": c, "category": c, "score": 1.0, "bounding_box": {"x1": x1, "x2": x2, "y1": y1, "y2": y2},
              "vertices": box_vertices(x1, y1, x2, y2)} for c, x1, y1, x2, y2 in boxes]
    return {"filename": name, "height": h, "width": w, "masks": masks}


def _entries() -> list[dict]:
    """Two images of odd sizes; boxes touching the borders, one a single pixel wide."""
    return [_box_entry("a.png", 61, 83, [("rbc", 0, 0, 20, 17), ("wbc", 30, 12, 71, 55), ("platelet", 80, 58, 83, 61)]),
            _box_entry("b.jpg", 37, 29, [("platelet", 3, 4, 4, 9), ("rbc", 10, 10, 29, 37)])]


def _boxes(entries: list[dict]) -> dict[str, list]:
    return {Path(e["filename"]).name: [(m["class_name"], *(m["bounding_box"][k] for k in ("x1", "y1", "x2", "y2")))
                                       for m in e["masks"]] for e in entries}


def _within_a_pixel(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert [b[0] for b in got[name]] == [b[0] for b in want[name]], name
        assert np.abs(np.array([b[1:] for b in got[name]]) - np.array([b[1:] for b in want[name]])).max() <= 1, name


def _images(folder: Path, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        Image.fromarray(np.full((e["height"], e["width"], 3), 200, np.uint8)).save(folder / e["filename"])


def _convert(*args: str) -> None:
    res = runner.invoke(app, ["convert", *args])
    assert res.exit_code == 0, res.output


def test_coco_to_yolo_and_back_keeps_the_boxes(tmp_path):
    entries = _entries()
    write_coco(tmp_path / "c.json", entries)
    want = _boxes(entries)  # COCO keeps each annotation's own box (it took the polygon's extent, 1 px wider)
    assert _boxes(read_coco(tmp_path / "c.json")) == want
    _convert("--from", "coco", "--to", "yolo", str(tmp_path / "c.json"), str(tmp_path / "yolo"))
    # Class ids are TXL-PBC's: 0 wbc, 1 rbc, 2 platelet.
    assert (tmp_path / "yolo" / "classes.txt").read_text().split() == ["wbc", "rbc", "platelet"]
    first = (tmp_path / "yolo" / "a.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in first] == ["1", "0", "2"]
    assert first[0] == "1 0.120482 0.139344 0.240964 0.278689"  # (0+20)/2/83, (0+17)/2/61, 20/83, 17/61
    _images(tmp_path / "yolo", entries)  # YOLO coordinates are fractions: reading needs the images
    _convert("--from", "yolo", "--to", "coco", str(tmp_path / "yolo"), str(tmp_path / "back.json"))
    back = read_coco(tmp_path / "back.json")
    assert [(e["height"], e["width"]) for e in back] == [(61, 83), (37, 29)]
    _within_a_pixel(_boxes(back), want)  # exact but for the boxes past the border, clipped to the image


def test_voc_to_yolo_and_back_keeps_the_boxes(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    objects = [("WBC", 5, 6, 30, 28), ("RBC", 0, 0, 12, 47), ("Platelets", 40, 30, 46, 36), ("RBC", 50, 20, 64, 48)]
    xml = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
                  "</bndbox></object>" for n, a, b, c, d in objects)
    (voc / "BloodImage_00001.xml").write_text("<annotation><filename>BloodImage_00001.jpg</filename><size><width>64"
                                              f"</width><height>48</height><depth>3</depth></size>{xml}</annotation>")
    want = _boxes([read_voc_entry(voc / "BloodImage_00001.xml")])
    _convert("--from", "voc", "--to", "yolo", str(voc), str(tmp_path / "yolo"))
    # The Ultralytics layout: images/ and labels/ side by side, the class list at the top.
    (tmp_path / "ds" / "labels").mkdir(parents=True)
    shutil.copy(tmp_path / "yolo" / "BloodImage_00001.txt", tmp_path / "ds" / "labels")
    shutil.copy(tmp_path / "yolo" / "classes.txt", tmp_path / "ds")
    _images(tmp_path / "ds" / "images", [{"filename": "BloodImage_00001.jpg", "height": 48, "width": 64}])
    back = read_yolo(tmp_path / "ds")
    assert back[0]["filename"] == "images/BloodImage_00001.jpg"
    _within_a_pixel(_boxes(back), want)
    _convert("--from", "yolo", "--to", "cvat", str(tmp_path / "ds"), str(tmp_path / "a.xml"))


def test_coco_to_voc_and_back_keeps_every_box_exactly(tmp_path):
    import xml.etree.ElementTree as ET

    entries = _entries()
    entries[0]["masks"][1]["score"] = 0.87
    write_coco(tmp_path / "c.json", entries)
    _convert("--from", "coco", "--to", "voc", str(tmp_path / "c.json"), str(tmp_path / "voc"))
    assert sorted(p.name for p in (tmp_path / "voc").iterdir()) == ["a.xml", "b.xml"]
    root = ET.parse(tmp_path / "voc" / "a.xml").getroot()  # the layout labelImg and BCCD write
    assert (root.findtext("filename"), root.findtext("size/width"), root.findtext("size/height")) == ("a.png", "83", "61")
    assert [o.findtext("name") for o in root.iter("object")] == ["rbc", "wbc", "platelet"]
    assert [o.findtext("truncated") for o in root.iter("object")] == ["1", "0", "1"]
    assert [o.findtext("score") for o in root.iter("object")] == [None, "0.8700", None]  # a score under 1 kept
    back = [read_voc_entry(tmp_path / "voc" / n) for n in ("a.xml", "b.xml")]
    assert _boxes(back) == _boxes(_entries())  # exact: xmax/ymax exclusive both ways
    _convert("--from", "voc", "--to", "coco", str(tmp_path / "voc"), str(tmp_path / "back.json"))
    assert _boxes(read_coco(tmp_path / "back.json")) == _boxes(_entries())


def test_voc_writer_refuses_two_images_of_one_name_before_writing(tmp_path):
    from hemaseg.io.annotations import write_voc

    entries = [_box_entry("x/a.png", 10, 10, []), _box_entry("y/A.jpg", 10, 10, [])]
    with pytest.raises(HemasegInputError, match="collide"):
        write_voc(tmp_path / "out", entries)
    assert not (tmp_path / "out").exists()
    with pytest.raises(HemasegInputError, match="no image size"):
        write_voc(tmp_path / "out", [_box_entry("a.png", 0, 0, [])])
    assert not (tmp_path / "out").exists()
    write_voc(tmp_path / "out", [_box_entry("a.png", 10, 10, [("rbc", 12, 1, 19, 5), ("wbc", 2, 2, 6, 6)])])
    assert [m["class_name"] for m in read_voc_entry(tmp_path / "out" / "a.xml")["masks"]] == ["wbc"]  # past the edge: out


def test_reads_split_layout_with_numbered_class_list_polygons_scores_and_background(tmp_path):
    root = tmp_path / "txl"
    for split in ("train", "val"):
        _images(root / "images" / split, [{"filename": f"{split}0.png", "height": 40, "width": 50}])
        (root / "labels" / split).mkdir(parents=True)
    _images(root / "images" / "val", [{"filename": "empty.png", "height": 40, "width": 50}])  # no label: no object
    (root / "labels" / "train" / "train0.txt").write_text("0 0.5 0.5 0.2 0.25\n\n2 0.1 0.1 0.04 0.05 0.73\n")
    (root / "labels" / "val" / "val0.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.5\n")
    (root / "classes.txt").write_text("0 White Blood Cell (WBC)\r\n1 Red Blood Cell (RBC)\r\n2 Platelet")
    assert yolo_names(root) == ["wbc", "rbc", "platelet"]
    (root / "data.yaml").write_text("train: ./images/train/\nnames:\n  0: WBC\n  1: RBC\n  2: Platelets\n")
    assert yolo_names(root) == ["wbc", "rbc", "platelet"]  # data.yaml first
    assert [(i.name, lab and lab.name) for i, lab in find_yolo(root)] == [
        ("train0.png", "train0.txt"), ("empty.png", None), ("val0.png", "val0.txt")]
    train, empty, val = read_yolo(root)
    assert [m["class_name"] for m in train["masks"]] == ["wbc", "platelet"]
    assert train["masks"][0]["bounding_box"] == {"x1": 20, "x2": 30, "y1": 15, "y2": 25}
    assert train["masks"][1]["score"] == pytest.approx(0.73) and train["masks"][0]["score"] == 1.0
    assert empty["masks"] == [] and empty["filename"] == "images/val/empty.png"
    poly = val["masks"][0]
    assert poly["class_name"] == "rbc" and poly["vertices"] == [[5, 4], [25, 4], [25, 20]]
    # Reading one split finds the class list two folders up.
    assert [e["filename"] for e in read_yolo(root / "images" / "val")] == ["empty.png", "val0.png"]


def test_yolo_to_coco_keeps_each_image_path_below_the_root(tmp_path):
    """The Left list of stop 66: yolo -> coco of a split layout (TXL-PBC's images/{train,val}/) named each image by
    its file name alone (`x.png`), which a COCO loader with one image root, `train cells` among them, cannot find;
    the COCO and CVAT files now keep `images/train/x.png`. hemaseg's own results keep their shortest names."""
    from hemaseg.tasks.cells.train import find_annotated_photos

    root = tmp_path / "txl"
    for split in ("train", "val"):
        _images(root / "images" / split, [{"filename": f"{split}0.png", "height": 40, "width": 50}])
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / f"{split}0.txt").write_text("1 0.5 0.5 0.2 0.25\n")
    (root / "classes.txt").write_text("wbc\nrbc\nplatelet\n")
    _convert("--from", "yolo", "--to", "coco", str(root), str(tmp_path / "coco.json"))  # (OUT never inside IN)
    (tmp_path / "coco.json").rename(root / "annotations.json")  # the dataset's root is the COCO's image root
    coco = read_coco(root / "annotations.json")
    assert [e["filename"] for e in coco] == ["images/train/train0.png", "images/val/val0.png"]
    assert sorted(p.relative_to(root).as_posix() for p, _ in find_annotated_photos(root / "annotations.json")) == [
        "images/train/train0.png", "images/val/val0.png"]
    _convert("--from", "yolo", "--to", "cvat", str(root), str(tmp_path / "c.xml"))
    assert 'name="images/val/val0.png"' in (tmp_path / "c.xml").read_text()


def test_an_image_name_that_is_no_utf8_is_refused_by_the_xml_writers(tmp_path):
    """A review (stop 67): once text outputs kept such names as their bytes, --to cvat / --to voc wrote XML no reader
    (CVAT, hemaseg itself) could parse, exit 0. One line naming the file, exit 1, nothing written; COCO keeps it."""
    import os

    root = tmp_path / "y"
    _images(root, [{"filename": "a.png", "height": 40, "width": 50}])
    os.rename(root / "a.png", os.fsdecode(bytes(root) + b"/caf\xe9.png"))
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("1 0.5 0.5 0.2 0.25\n")
    (root / "classes.txt").write_text("wbc\nrbc\nplatelet\n")
    for to, out in (("cvat", "c.xml"), ("voc", "v")):
        res = runner.invoke(app, ["convert", "--from", "yolo", "--to", to, str(root), str(tmp_path / out)])
        assert res.exit_code == 1 and "no UTF-8" in res.output and not (tmp_path / out).exists(), res.output
    _convert("--from", "yolo", "--to", "coco", str(root), str(tmp_path / "c.json"))
    assert read_coco(tmp_path / "c.json")[0]["filename"] == os.fsdecode(b"caf\xe9.png")


def test_images_without_a_label_file_are_said_once(tmp_path, caplog):
    """A walkthrough (stop 64): an image without its label file is a field with no cell (YOLO's background
    images), so a label folder misplaced reads as empty fields; a warning counts them and names the first, once
    per root however often it is read."""
    import logging

    _images(tmp_path, [{"filename": n, "height": 20, "width": 20} for n in ("a.png", "b.png", "c.png")])
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "classes.txt").write_text("wbc\nrbc\nplatelet\n")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert [len(e["masks"]) for e in read_yolo(tmp_path)] == [1, 0, 0]
    said = [r.getMessage() for r in caplog.records if "without a YOLO label file" in r.getMessage()]
    assert len(said) == 1 and "2 image(s)" in said[0] and "b.png" in said[0], said


@pytest.mark.parametrize("text, reason", [("3 0.5 0.5 0.1 0.1\n", "class 3"), ("0 0.5 0.5 0.1\n", "3 numbers"),
                                          ("wbc 0.5 0.5 0.1 0.1\n", "expected numbers"),
                                          ("0 0.5 nan 0.1 0.1\n", "finite")])
def test_bad_label_lines_are_one_error_naming_the_file(tmp_path, text, reason):
    (tmp_path / "x.txt").write_text(text)
    with pytest.raises(HemasegInputError) as exc:
        read_yolo_labels(tmp_path / "x.txt", ["wbc", "rbc", "platelet"], 40, 50)
    assert reason in exc.value.reason and "x.txt" in str(exc.value.path)


def test_missing_class_list_orphan_label_and_missing_size_are_refused(tmp_path):
    _images(tmp_path / "flat", [{"filename": "a.png", "height": 20, "width": 20}])
    (tmp_path / "flat" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "flat" / "README.txt").write_text("not a label file\n")
    with pytest.raises(HemasegInputError, match="naming the YOLO classes"):
        read_yolo(tmp_path / "flat")
    (tmp_path / "flat" / "classes.txt").write_text("WBC\nRBC\n")
    assert [m["class_name"] for m in read_yolo(tmp_path / "flat")[0]["masks"]] == ["wbc"]
    (tmp_path / "flat" / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    res = runner.invoke(app, ["convert", "--from", "yolo", "--to", "coco", str(tmp_path / "flat"),
                              str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "b.txt" in res.output and "without an image" in res.output
    assert len(res.output.strip().splitlines()) == 1
    with pytest.raises(HemasegInputError, match="no image size"):
        write_yolo(tmp_path / "out", [_box_entry("c.png", 0, 0, [("rbc", 1, 1, 2, 2)])])
    with pytest.raises(HemasegInputError, match="collide"):
        write_yolo(tmp_path / "out", [_box_entry("d.png", 9, 9, []), _box_entry("x/d.jpg", 9, 9, [])])


@pytest.mark.skipif(not TXL.is_dir(), reason="../shared/data/txl-pbc not present")
def test_reads_txl_pbc_and_writes_its_files_back(tmp_path):
    entries = read_yolo(TXL)
    assert len(entries) == 1232
    assert {e["filename"].split("/")[1] for e in entries} == {"train", "val", "test"}
    names = {m["class_name"] for e in entries for m in e["masks"]}
    assert names == {"wbc", "rbc", "platelet"}
    for e in entries:
        assert e["height"] >= 256 and e["width"] >= 256
        for m in e["masks"]:
            b = m["bounding_box"]
            assert 0 <= b["x1"] <= b["x2"] <= e["width"] and 0 <= b["y1"] <= b["y2"] <= e["height"]
    # Written back with the same class ids, every number within a pixel of the original.
    some = entries[::100]
    write_yolo(tmp_path, some)
    for e in some:
        stem = Path(e["filename"]).stem
        ours = np.loadtxt(tmp_path / f"{stem}.txt", ndmin=2)
        theirs = np.loadtxt(TXL / "labels" / e["filename"].split("/")[1] / f"{stem}.txt", ndmin=2)
        assert (ours[:, 0] == theirs[:, 0]).all()
        size = np.array([e["width"], e["height"]] * 2)
        assert (np.abs(ours[:, 1:] - theirs[:, 1:]) * size).max() <= 1.0


def test_evaluate_wbc_refuses_boxes_for_masks(tmp_path):
    """`evaluate wbc` on a YOLO folder scored Dice against its boxes (red-cell boxes and ignored pixels as the
    WBC's outline): now one line, exit 1, pointing at the benchmark that scores boxed fields (stop 60)."""
    write_yolo(tmp_path / "y", _entries())
    for e in _entries():
        Image.fromarray(np.full((e["height"], e["width"], 3), 200, np.uint8)).save(tmp_path / "y" / e["filename"])
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(tmp_path / "y")])
    assert res.exit_code == 1 and "YOLO boxes, no pixel masks" in res.output, res.output


def test_evaluate_cells_reads_the_flat_folder_convert_writes(tmp_path):
    """A walkthrough: `evaluate cells` refused the folder `convert --to yolo` writes (photos put beside its .txt files)
    as "neither a VOC root nor a COCO annotations.json", though usage says it takes YOLO boxes."""
    from hemaseg.tasks.cells.train import find_annotated_photos, is_yolo_root

    write_yolo(tmp_path / "y", _entries())
    _images(tmp_path / "y", _entries())
    assert is_yolo_root(tmp_path / "y") and not is_yolo_root(tmp_path)
    found = find_annotated_photos(tmp_path / "y")
    assert sorted(p.name for p, _ in found) == ["a.png", "b.jpg"]
    _within_a_pixel(_boxes([e for _, e in found]), _boxes(_entries()))
