"""`hemaseg convert` defects a walkthrough found (stop 66): outputs that replaced photos or mixed with earlier
ones, class ids, files of upper-case suffixes, objects dropped without a word, absurd coordinates."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.errors import HemasegInputError
from hemaseg.io.annotations import read_coco, read_voc_entry, write_coco, write_yolo
from hemaseg.io.datasets import read_dsb_masks

runner = CliRunner()


def _coco(path: Path, names: list[str], segs: list, size=(50, 60), file_name="a.png") -> Path:
    h, w = size
    anns = [{"id": i + 1, "image_id": 1, "category_id": i % len(names) + 1, "segmentation": s,
             "bbox": [2, 2, 8, 8]} for i, s in enumerate(segs)]
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": file_name, "height": h, "width": w}],
                                "annotations": anns,
                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))
    return path


def _square(x, y, s=8):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def test_folder_outputs_never_replace_or_mix_with_files_already_there(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((50, 60, 3), 200, np.uint8)).save(photos / "a.png")
    before = (photos / "a.png").read_bytes()
    coco = _coco(tmp_path / "c.json", ["wbc"], [_square(2, 2)])
    res = runner.invoke(app, ["convert", "--from", "coco", "--to", "labels", str(coco), str(photos)])
    assert res.exit_code == 2 and "already holds a.png" in res.output and "nothing written" in res.output
    assert (photos / "a.png").read_bytes() == before and sorted(p.name for p in photos.iterdir()) == ["a.png"]
    for to, there in (("voc", "a.XML"), ("yolo", "classes.txt"), ("yolo", "A.TXT")):
        out = tmp_path / f"{to}_{there}"
        out.mkdir()
        (out / there).write_text("someone else's")
        res = runner.invoke(app, ["convert", "--from", "coco", "--to", to, str(coco), str(out)])
        assert res.exit_code == 2 and f"already holds {there}" in res.output
        assert [p.name for p in out.iterdir()] == [there] and (out / there).read_text() == "someone else's"
    # DSB: an <id>/ already there would get a second set of masks beside its own
    labels = tmp_path / "labels"
    labels.mkdir()
    lab = np.zeros((20, 20), np.uint16)
    for k in range(1, 12):  # 11 nuclei: 2 and 10 read back in their own order
        lab[k, k:k + 3] = k
    Image.fromarray(lab).save(labels / "x.png")
    assert runner.invoke(app, ["convert", "--from", "labels", "--to", "dsb", str(labels), str(tmp_path / "d")]).exit_code == 0
    assert (read_dsb_masks(tmp_path / "d" / "x" / "masks") == lab).all()  # the numbers kept, not renumbered
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "dsb", str(labels), str(tmp_path / "d")])
    assert res.exit_code == 2 and "already holds x" in res.output
    assert len(list((tmp_path / "d" / "x" / "masks").iterdir())) == 11


def test_yolo_ids_follow_the_names_the_project_knows_whatever_their_spelling(tmp_path):
    coco = _coco(tmp_path / "c.json", ["Platelets", "WBC", "RBC", "Ghost"], [_square(2, 2), _square(20, 2),
                                                                              _square(2, 20), _square(30, 30)])
    assert runner.invoke(app, ["convert", "--from", "coco", "--to", "yolo", str(coco), str(tmp_path / "y")]).exit_code == 0
    assert (tmp_path / "y" / "classes.txt").read_text().split("\n")[:4] == ["wbc", "rbc", "platelet", "Ghost"]
    assert [ln.split()[0] for ln in (tmp_path / "y" / "a.txt").read_text().splitlines()] == ["2", "0", "1", "3"]
    with pytest.raises(HemasegInputError, match="a class named ''"):
        write_yolo(tmp_path / "y2", [{"filename": "a.png", "height": 9, "width": 9, "masks": [
            {"class_name": "", "bounding_box": {"x1": 1, "x2": 3, "y1": 1, "y2": 3}}]}])
    assert not (tmp_path / "y2").exists()


def test_upper_case_suffixes_are_read(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    obj = "<object><name>WBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
    for stem in ("a", "B"):
        (voc / f"{stem}.{'xml' if stem == 'a' else 'XML'}").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>20</width><height>20</height></size>{obj}"
            "</annotation>")
    res = runner.invoke(app, ["convert", "--from", "voc", "--to", "yolo", str(voc), str(tmp_path / "y")])
    assert res.exit_code == 0 and "2 images converted" in res.output
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("p.png", "Q.PNG"):
        Image.fromarray(np.eye(8, dtype=np.uint16)).save(labels / name, format="PNG")
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "rle", str(labels), str(tmp_path / "r.csv")])
    assert res.exit_code == 0 and "2 images converted" in res.output
    ds = tmp_path / "ds"
    ds.mkdir()
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(ds / "f.png")
    (ds / "f.TXT").write_text("0 0.5 0.5 0.2 0.2\n")
    (ds / "classes.txt").write_text("wbc\n")
    res = runner.invoke(app, ["convert", "--from", "yolo", "--to", "coco", str(ds), str(tmp_path / "y.json")])
    assert res.exit_code == 0 and len(read_coco(tmp_path / "y.json")[0]["masks"]) == 1  # not a background image


def test_objects_left_out_are_said_and_a_voc_without_size_takes_its_images(tmp_path, caplog):
    voc = tmp_path / "BCCD" / "Annotations"
    voc.mkdir(parents=True)
    (tmp_path / "BCCD" / "JPEGImages").mkdir()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "BCCD" / "JPEGImages" / "a.jpg")
    (voc / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><name>RBC</name></object><object>"
                               "<name>WBC</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax><ymax>8</ymax>"
                               "</bndbox></object></annotation>")
    (voc / "b.xml").write_text("<annotation><filename>b.jpg</filename></annotation>")  # no size, no image
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(tmp_path / "BCCD" / "JPEGImages" / "a.b.jpg")
    entry = read_voc_entry(voc / "a.xml")
    assert (entry["height"], entry["width"], len(entry["masks"])) == (30, 40, 1)  # a.jpg's, never a.b.jpg's
    (voc / "c.xml").write_text("<annotation><filename>IMG_0001.jpg</filename></annotation>")  # a stale name
    Image.fromarray(np.full((7, 9, 3), 200, np.uint8)).save(tmp_path / "BCCD" / "JPEGImages" / "c.png")
    assert (read_voc_entry(voc / "c.xml")["height"], read_voc_entry(voc / "c.xml")["width"]) == (7, 9)
    (voc / "c.xml").unlink()
    assert "1 <object>(s) without a <name> or a <bndbox> left out" in caplog.text
    res = runner.invoke(app, ["convert", "--from", "voc", "--to", "coco", str(voc), str(tmp_path / "v.json")])
    assert res.exit_code == 1 and "b.xml: no <size> and no image b.jpg" in res.output and "1 images converted" in res.output
    # CVAT: a brush mask or an ellipse is a cell someone drew: named, exit 1 (it was a log line and exit 0)
    (tmp_path / "c.xml").write_text('<annotations><image id="0" name="a.png" width="20" height="20">'
                                    '<box label="wbc" xtl="1" ytl="1" xbr="9" ybr="9"/><ellipse label="rbc" cx="5" '
                                    'cy="5" rx="2" ry="2"/></image></annotations>')
    res = runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(tmp_path / "c.xml"), str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "1 <ellipse> left out" in res.output
    assert len(read_coco(tmp_path / "c.json")[0]["masks"]) == 1
    # --to labels: an object wholly under a later one cannot be in a map of one label a pixel: said
    coco = _coco(tmp_path / "h.json", ["platelet", "wbc"], [_square(4, 4, 2), _square(2, 2, 10)])
    caplog.clear()
    assert runner.invoke(app, ["convert", "--from", "coco", "--to", "labels", str(coco), str(tmp_path / "l")]).exit_code == 0
    assert "1 object(s) wholly covered by later ones" in caplog.text
    caplog.clear()  # an object outside its image is said as such, not as covered
    write_coco(tmp_path / "o.json", [{"filename": "o.png", "height": 20, "width": 20, "masks": [
        {"class_name": "wbc", "score": 1.0, "bounding_box": {"x1": 2, "x2": 6, "y1": 2, "y2": 6},
         "vertices": [[2, 2], [5, 2], [5, 5], [2, 5]]}]}])
    (tmp_path / "o.xml").write_text('<annotations><image id="0" name="o.png" width="20" height="20">'
                                    '<box label="rbc" xtl="30" ytl="30" xbr="40" ybr="40"/>'
                                    '<box label="wbc" xtl="1" ytl="1" xbr="9" ybr="9"/></image></annotations>')
    assert runner.invoke(app, ["convert", "--from", "cvat", "--to", "labels", str(tmp_path / "o.xml"),
                               str(tmp_path / "ol")]).exit_code == 0
    assert "1 object(s) outside their image" in caplog.text and "covered" not in caplog.text
    # YOLO: such a box is left out, not written as a box of no size that no reader takes back
    assert runner.invoke(app, ["convert", "--from", "cvat", "--to", "yolo", str(tmp_path / "o.xml"),
                               str(tmp_path / "oy")]).exit_code == 0
    assert (tmp_path / "oy" / "o.txt").read_text().splitlines() == ["0 0.250000 0.250000 0.400000 0.400000"]


def test_a_coordinate_far_outside_the_image_costs_no_memory_and_boxes_are_the_objects_written(tmp_path):
    """A coordinate of 1e308 made pycocotools allocate ~24 GB (the walkthrough's machine ran out of memory)."""
    coco = _coco(tmp_path / "c.json", ["wbc", "rbc"], [[[1e308, 1, 5, 5, 9, 9]], [[1e9, 1e9, -1e9, 5, 9, 9]]])
    d = json.loads(coco.read_text())
    for a in d["annotations"]:
        del a["bbox"]  # the boxes are the masks' drawn in the image
    coco.write_text(json.dumps(d))
    entries = read_coco(coco)
    assert len(entries[0]["masks"]) == 2
    for m in entries[0]["masks"]:
        bb = m["bounding_box"]
        assert 0 <= bb["x1"] < bb["x2"] <= 60 and 0 <= bb["y1"] < bb["y2"] <= 50
    # a polygon within two image sizes (+ 64 px) of the image is drawn as given; only points beyond are moved
    from hemaseg.io.annotations import _clamped, polygon_mask

    near = np.array([[10, 10], [14, 10], [100, 75], [-140, -150]], float)  # a 40 x 50 image
    assert (_clamped(near, 50, 40) == near).all()
    assert _clamped(np.array([[1e308, -1e9]]), 50, 40).tolist() == [[40 + 144, -164]]
    sliver = [10, 10, 14, 10, 100, 75]
    assert polygon_mask(sliver, 50, 40).sum() == 70  # as before the clamp
    # two polygon parts, one outline kept: the box stays the annotation's, the whole object (box outputs, scoring)
    coco = _coco(tmp_path / "p.json", ["wbc"], [[*_square(2, 2, 10), *_square(40, 30, 4)]])
    coco_dict = json.loads(coco.read_text())
    coco_dict["annotations"][0]["bbox"] = [2, 2, 42, 32]
    coco.write_text(json.dumps(coco_dict))
    assert read_coco(coco)[0]["masks"][0]["bounding_box"] == {"x1": 2, "x2": 44, "y1": 2, "y2": 34}
    # a box past the image's edge is written clipped, as its mask and area are
    write_coco(tmp_path / "w.json", [{"filename": "a.png", "height": 20, "width": 20, "masks": [
        {"class_name": "wbc", "score": 1.0, "bounding_box": {"x1": 15, "x2": 30, "y1": 5, "y2": 9},
         "vertices": [[15, 5], [29, 5], [29, 8], [15, 8]]}]}])
    assert json.loads((tmp_path / "w.json").read_text())["annotations"][0]["bbox"] == [15, 5, 5, 4]


def test_rle_and_results_inputs_that_said_nothing_or_chose_silently_are_refused(tmp_path):
    cases = {"": "needs columns ImageId,EncodedPixels",  # an empty file: "0 images converted", exit 0
             "ImageId,EncodedPixels,Height,Width\na,1 2,5,5\na,3 2,6,6\n": "rows of different sizes",
             "ImageId,EncodedPixels,Height,Width\na,1 2,five,5\n": "are no whole numbers"}
    for k, (text, why) in enumerate(cases.items()):
        (tmp_path / f"{k}.csv").write_text(text)
        res = runner.invoke(app, ["convert", "--from", "rle", "--to", "labels", str(tmp_path / f"{k}.csv"),
                                  str(tmp_path / f"o{k}")])
        assert res.exit_code == 1 and why in res.output and not (tmp_path / f"o{k}").exists(), res.output
    (tmp_path / "r.json").write_text('{"data": []}')
    res = runner.invoke(app, ["convert", "--from", "results", "--to", "coco", str(tmp_path / "r.json"),
                              str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "'data' is a list" in res.output and not (tmp_path / "c.json").exists()


def test_a_one_file_output_must_carry_its_formats_suffix(tmp_path):
    """The Left list of stop 66: `--to coco out/x` wrote JSON named x, and `--to cvat out/` (a folder meant) a file
    named `out`: now one line naming OUT and the suffix, exit 2, nothing written; x.XML is taken."""
    coco = _coco(tmp_path / "c.json", ["rbc"], [_square(5, 5)])
    res = runner.invoke(app, ["convert", "--from", "coco", "--to", "cvat", str(coco), str(tmp_path / "x.XML")])
    assert res.exit_code == 0 and (tmp_path / "x.XML").is_file(), res.output
    for src, inp, to, out, want in (("cvat", "x.XML", "coco", "x", ".json"), ("coco", "c.json", "cvat", "out", ".xml"),
                                    ("coco", "c.json", "coco-rle", "x.xml", ".json"),
                                    ("labels", "lab", "rle", "r.txt", ".csv")):
        res = runner.invoke(app, ["convert", "--from", src, "--to", to, str(tmp_path / inp), str(tmp_path / out)])
        assert res.exit_code == 2 and "OUT" in res.output and f"ending in {want}" in res.output, res.output
        assert not (tmp_path / out).exists()
