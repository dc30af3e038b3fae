import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.io.annotations import (
    entry_labels,
    mask_record,
    rasterise,
    read_coco,
    read_cvat,
    read_results,
    read_voc_entry,
    to_coco,
    to_cvat,
    write_coco,
    write_cvat,
    write_results,
)

runner = CliRunner()


def _entries():
    """Two images with a few irregular objects of three classes."""
    out = []
    for i, (h, w) in enumerate([(60, 80), (50, 50)]):
        masks = []
        for k, (cx, cy, r, name) in enumerate([(20, 20, 9, "rbc"), (50, 30, 12, "neutrophil"), (40, 45, 3, "platelet")]):
            m = np.zeros((h, w), np.uint8)
            cv2.ellipse(m, (cx - 5 * i, cy - 5 * i), (r, max(2, r - 3)), 30 * k, 0, 360, 1, -1)
            masks.append(mask_record(m.astype(bool), name, score=0.5 + 0.1 * k))
        out.append({"filename": f"img{i}.jpg", "height": h, "width": w, "masks": masks})
    return out


def _same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert (ea["height"], ea["width"]) == (eb["height"], eb["width"])
        assert [m["class_name"] for m in ea["masks"]] == [m["class_name"] for m in eb["masks"]]
        for ma, mb in zip(ea["masks"], eb["masks"]):
            ra = rasterise(ma["vertices"], (ea["height"], ea["width"]))
            rb = rasterise(mb["vertices"], (eb["height"], eb["width"]))
            assert (ra == rb).all()
            assert ma["bounding_box"] == mb["bounding_box"]
            assert abs(ma["score"] - mb["score"]) < 1e-3


def test_polygon_record_round_trips_to_the_mask():
    m = np.zeros((40, 40), bool)
    cv2.circle(m.view(np.uint8), (20, 18), 10, 1, -1)
    rec = mask_record(m, "lymphocyte")
    assert rec["category"] == "wbc" and (rasterise(rec["vertices"], m.shape) == m).all()
    assert rec["bounding_box"] == {"x1": 10, "x2": 31, "y1": 8, "y2": 29}


def test_results_cvat_coco_round_trips(tmp_path):
    entries = _entries()
    write_results(tmp_path / "r.json", entries)
    _same(read_results(tmp_path / "r.json"), entries)
    write_cvat(tmp_path / "a.xml", entries)
    text = (tmp_path / "a.xml").read_text()
    assert "<version>1.1</version>" in text and 'label="neutrophil"' in text
    _same(read_cvat(tmp_path / "a.xml"), entries)
    for rle in (False, True):
        write_coco(tmp_path / "c.json", entries, rle=rle)
        d = json.loads((tmp_path / "c.json").read_text())
        assert {c["name"] for c in d["categories"]} == {"rbc", "neutrophil", "platelet"}
        assert isinstance(d["annotations"][0]["segmentation"], dict) == rle
        _same(read_coco(tmp_path / "c.json"), entries)


def test_labels_from_entries_keep_instances_and_classes():
    e = _entries()[0]
    inst, cls, names = entry_labels(e)
    assert names == ["neutrophil", "platelet", "rbc"] and inst.max() == 3
    assert (cls[inst == 2] == names.index("neutrophil") + 1).all()


def test_convert_cli_voc_to_coco_to_cvat_to_labels(tmp_path):
    xml = tmp_path / "BloodImage_00001.xml"
    xml.write_text("<annotation><filename>BloodImage_00001.jpg</filename><size><width>64</width><height>48</height>"
                   "<depth>3</depth></size><object><name>WBC</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax>"
                   "<ymax>28</ymax></bndbox></object><object><name>Platelets</name><bndbox><xmin>40</xmin><ymin>30"
                   "</ymin><xmax>46</xmax><ymax>36</ymax></bndbox></object></annotation>")
    assert [m["class_name"] for m in read_voc_entry(xml)["masks"]] == ["wbc", "platelet"]
    for args in (["--from", "voc", "--to", "coco", str(xml), str(tmp_path / "c.json")],
                 ["--from", "coco", "--to", "cvat", str(tmp_path / "c.json"), str(tmp_path / "a.xml")],
                 ["--from", "cvat", "--to", "labels", str(tmp_path / "a.xml"), str(tmp_path / "labels")]):
        res = runner.invoke(app, ["convert", *args])
        assert res.exit_code == 0, res.output
    inst = cv2.imread(str(tmp_path / "labels" / "BloodImage_00001.png"), cv2.IMREAD_UNCHANGED)
    assert inst.shape == (48, 64) and set(np.unique(inst)) == {0, 1, 2}
    # the WBC box: xmax / ymax are its edges (x2, y2 exclusive, as every box here), so the last pixels are 29 / 27
    assert (inst[6:28, 5:30] == 1).all() and not inst[28, 5:30].any() and not inst[6:28, 30].any()
    # a VOC root (Annotations/, JPEGImages/), as BCCD ships, is read too (was "no VOC XML files found"; stop 65)
    (tmp_path / "root" / "Annotations").mkdir(parents=True)
    xml.rename(tmp_path / "root" / "Annotations" / xml.name)
    res = runner.invoke(app, ["convert", "--from", "voc", "--to", "coco", str(tmp_path / "root"), str(tmp_path / "r.json")])
    assert res.exit_code == 0 and len(json.loads((tmp_path / "r.json").read_text())["annotations"]) == 2, res.output
    coco = json.loads((tmp_path / "c.json").read_text())["annotations"]
    assert [a["bbox"] for a in coco] == [[5, 6, 25, 22], [40, 30, 6, 6]]
    assert [a["area"] for a in coco] == [25 * 22, 6 * 6]  # the polygon's area is the box's (it was 26 x 23)
    back = read_cvat(tmp_path / "a.xml")[0]["masks"]  # ... and a reader taking the box from the polygon agrees
    assert [m["bounding_box"] for m in back] == [{"x1": 5, "x2": 30, "y1": 6, "y2": 28},
                                                  {"x1": 40, "x2": 46, "y1": 30, "y2": 36}]
    assert json.loads((tmp_path / "labels" / "classes.json").read_text())["1"] == "platelet"
    bad = runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(tmp_path / "c.json"), str(tmp_path / "x.json")])
    assert bad.exit_code == 1


def test_convert_never_replaces_its_input_and_a_malformed_file_is_one_line(tmp_path):
    """`convert ... tx tx` replaced the photos by label maps and `coco c.json c.json` the input file; a CVAT
    polygon with a word among its points was a 60-line traceback."""
    xml = tmp_path / "in" / "a.xml"
    xml.parent.mkdir()
    xml.write_text("<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height><depth>3</depth>"
                   "</size><object><name>WBC</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>28</ymax>"
                   "</bndbox></object></annotation>")
    before = xml.read_bytes()
    (tmp_path / "in" / "old.json").write_text("{}")
    for to, args, why in (("coco", [str(xml), str(xml)], "is the input"),
                          ("labels", [str(xml.parent), str(xml.parent)], "is the input"),
                          ("coco", [str(xml.parent), str(tmp_path / "in" / "old.json")], "lies inside the input folder"),
                          # a new file there is read back by the next conversion of that folder (an XML among
                          # the VOC files); a folder format there can replace its photos (YOLO's images/)
                          ("cvat", [str(xml.parent), str(tmp_path / "in" / "all.xml")], "lies inside the input folder"),
                          ("labels", [str(xml.parent), str(tmp_path / "in" / "sub")], "lies inside the input folder"),
                          ("coco", [str(xml), str(tmp_path)], "is a folder"),
                          ("labels", [str(xml), str(xml.parent)], "is the input's folder")):
        res = runner.invoke(app, ["convert", "--from", "voc", "--to", to, *args])
        assert res.exit_code == 2 and why in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert xml.read_bytes() == before and (tmp_path / "in" / "old.json").read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.xml", "old.json"]
    bad = tmp_path / "bad.xml"  # a word among a polygon's points: that polygon left out, named, the rest converted
    bad.write_text('<annotations><image id="0" name="a.png" width="10" height="10">'
                   '<polygon label="rbc" points="1,1;abc"/><box label="wbc" xtl="2" ytl="2" xbr="6" ybr="6"/>'
                   '</image></annotations>')
    res = runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(bad), str(tmp_path / "b.json")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and lines[0].startswith(f"{bad}: image a.png, <polygon> 1 (rbc): a coordinate"), lines
    assert len(lines) == 2 and "1 left out" in lines[1], lines
    assert [a["bbox"] for a in json.loads((tmp_path / "b.json").read_text())["annotations"]] == [[2, 2, 4, 4]]


def test_a_bad_object_costs_only_itself_and_a_round_trip_keeps_every_label(tmp_path):
    """A walkthrough: one bad polygon threw away the whole multi-image file; a two-point COCO polygon became a
    one-pixel object keeping its old box, and "x" passed as a coordinate (exit 0); cvat -> coco -> cvat dropped the
    WBC types no object had from CVAT's labels, and convert numbered COCO's categories otherwise than analyze."""
    from hemaseg.core.vocabulary import EXPORT_LABELS
    from hemaseg.errors import HemasegInputError
    from hemaseg.io.annotations import coco_labels, cvat_labels

    square = [0, 0, 8, 0, 8, 8, 0, 8]
    anns = [{"id": k + 1, "image_id": 1 + k % 2, "category_id": 1, "segmentation": [seg], "bbox": [0, 0, 8, 8]}
            for k, seg in enumerate([square, [10, 10, 20, 20], [1, 2, "x", 4, 5, 6], [1, 2, 3], square])]
    (tmp_path / "c.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.png", "height": 30, "width": 30} for i in (1, 2)],
        "categories": [{"id": 1, "name": "rbc"}, {"id": 2, "name": "monocyte"}], "annotations": anns}))
    res = runner.invoke(app, ["convert", "--from", "coco", "--to", "cvat", str(tmp_path / "c.json"), str(tmp_path / "x.xml")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 4 and "3 left out" in lines[-1], lines
    assert "image 2.png, annotation 2 (rbc): 2 points: a polygon needs three" in lines[0]
    assert "annotation 3 (rbc): a coordinate is not a number" in lines[1] and "annotation 4 (rbc): 3 numbers" in lines[2]
    entries = read_cvat(tmp_path / "x.xml")
    assert [len(e["masks"]) for e in entries] == [2, 0] and cvat_labels(tmp_path / "x.xml") == ["rbc", "monocyte"]
    with pytest.raises(HemasegInputError, match="annotation 2"):  # the API without a list of failures: an error
        read_coco(tmp_path / "c.json")
    # analyze's labels survive cvat -> coco -> cvat, and results -> coco numbers them as analyze does
    write_results(tmp_path / "r.json", _entries())
    res = runner.invoke(app, ["convert", "--from", "results", "--to", "coco", str(tmp_path / "r.json"), str(tmp_path / "r_coco.json")])
    assert res.exit_code == 0, res.output
    assert coco_labels(tmp_path / "r_coco.json")[:len(EXPORT_LABELS)] == list(EXPORT_LABELS)
    write_cvat(tmp_path / "a.xml", _entries(), list(EXPORT_LABELS))
    runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(tmp_path / "a.xml"), str(tmp_path / "a.json")])
    runner.invoke(app, ["convert", "--from", "coco", "--to", "cvat", str(tmp_path / "a.json"), str(tmp_path / "b.xml")])
    assert cvat_labels(tmp_path / "b.xml") == cvat_labels(tmp_path / "a.xml") == list(EXPORT_LABELS)
    assert [len(e["masks"]) for e in read_cvat(tmp_path / "b.xml")] == [len(e["masks"]) for e in _entries()]


def test_readers_refuse_what_they_used_to_take_silently(tmp_path):
    """A CVAT file whose root is not <annotations> gave 0 images; a COCO category id nobody declared
    became a class "7"; a YOLO box centred at 1.5 became a zero-width box."""
    from hemaseg.errors import HemasegInputError
    from hemaseg.io.annotations import read_coco, read_cvat, read_yolo_labels

    (tmp_path / "a.xml").write_text("<foo><image id='0' name='a.png' width='4' height='4'/></foo>")
    with pytest.raises(HemasegInputError, match="root is <foo>"):
        read_cvat(tmp_path / "a.xml")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
                                                 "categories": [{"id": 1, "name": "rbc"}],
                                                 "annotations": [{"id": 5, "image_id": 1, "category_id": 7,
                                                                  "bbox": [0, 0, 2, 2]}]}))
    with pytest.raises(HemasegInputError, match="unknown category 7"):
        read_coco(tmp_path / "c.json")
    (tmp_path / "y.txt").write_text("0 1.5 0.5 0.2 0.2\n")
    with pytest.raises(HemasegInputError, match="line 1: box 1.5"):
        read_yolo_labels(tmp_path / "y.txt", ["rbc"], 100, 100)


def test_convert_refuses_before_writing_what_its_writers_would_get_wrong(tmp_path, caplog):
    """Two images of one name (train/x.png, val/x.png) were written as two 'x.png' to CVAT / COCO; an image of
    size 0 x 0 left label PNGs behind before failing; a COCO box became the extent of its outline; a VOC box
    of zero size was written as a YOLO box of width 0 that no reader takes."""
    import logging

    box = [[10, 10], [19, 10], [19, 19], [10, 19]]
    rec = {"class_name": "rbc", "category": "rbc", "score": 1.0,
           "bounding_box": {"x1": 10, "x2": 20, "y1": 10, "y2": 20}, "vertices": box}
    same = [{"filename": f"{d}/x.png", "height": 32, "width": 32, "masks": [rec]} for d in ("train", "val")]
    write_results(tmp_path / "same.json", same)
    res = runner.invoke(app, ["convert", "--from", "results", "--to", "labels", str(tmp_path / "same.json"),
                              str(tmp_path / "s")])
    assert res.exit_code == 1 and "same file name as train/x.png" in res.output, res.output
    assert not (tmp_path / "s").exists()
    for to, out in (("cvat", "s.xml"), ("coco", "s.json")):  # these keep the folders that tell them apart
        res = runner.invoke(app, ["convert", "--from", "results", "--to", to, str(tmp_path / "same.json"),
                                  str(tmp_path / out)])
        assert res.exit_code == 0 and "train/x.png" in (tmp_path / out).read_text(), res.output
    write_coco(tmp_path / "same_coco.json", same)  # the COCO names them train/x.png and val/x.png
    res = runner.invoke(app, ["convert", "--from", "coco", "--to", "labels", str(tmp_path / "same_coco.json"),
                              str(tmp_path / "s2")])
    assert res.exit_code == 1 and "same file name as train/x.png" in res.output and not (tmp_path / "s2").exists()
    twice = [{**same[0], "filename": "x.png"}, {**same[1], "filename": "x.png"}]  # one whole name twice
    write_results(tmp_path / "twice.json", twice)
    res = runner.invoke(app, ["convert", "--from", "results", "--to", "coco", str(tmp_path / "twice.json"),
                              str(tmp_path / "t.json")])
    assert res.exit_code == 1 and "cannot be told apart" in res.output and not (tmp_path / "t.json").exists()
    write_results(tmp_path / "empty.json", [{"filename": "a.png", "height": 32, "width": 32, "masks": [rec]},
                                            {"filename": "b.png", "height": 0, "width": 0, "masks": [rec]}])
    res = runner.invoke(app, ["convert", "--from", "results", "--to", "labels", str(tmp_path / "empty.json"),
                              str(tmp_path / "lab")])
    assert res.exit_code == 1 and "b.png: no image size" in res.output and not (tmp_path / "lab").exists()
    # a COCO annotation keeps its own box, not its outline's extent
    wide = {**rec, "bounding_box": {"x1": 8, "x2": 22, "y1": 9, "y2": 21}}
    write_coco(tmp_path / "w.json", [{"filename": "a.png", "height": 32, "width": 32, "masks": [wide]}])
    assert read_coco(tmp_path / "w.json")[0]["masks"][0]["bounding_box"] == wide["bounding_box"]
    xml = tmp_path / "v.xml"
    xml.write_text("<annotation><filename>v.jpg</filename><size><width>64</width><height>48</height></size>"
                   "<object><name>RBC</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>5</xmax><ymax>6</ymax></bndbox>"
                   "</object><object><name>RBC</name><bndbox><xmin>9</xmin><ymin>9</ymin><xmax>20</xmax><ymax>21"
                   "</ymax></bndbox></object></annotation>")
    with caplog.at_level(logging.WARNING):
        masks = read_voc_entry(xml)["masks"]
    assert [m["bounding_box"]["x1"] for m in masks] == [9] and "empty or inverted: left out" in caplog.text


def test_two_photos_of_one_name_keep_their_folders_in_cvat_and_coco():
    """An analyze audit: dupA/x.jpg and dupB/x.jpg were both `x.jpg` in the COCO and CVAT files, so their
    annotations could not be matched back to their photos."""
    import xml.etree.ElementTree as ET

    entries = [{"filename": f"in/{d}/x.jpg", "height": 4, "width": 4, "masks": []} for d in ("dupA", "dupB")]
    entries.append({"filename": "in/dupA/y.jpg", "height": 4, "width": 4, "masks": []})
    # (since stop 70 every photo's path from the folder all lie in: y.jpg alone named no folder that holds it)
    assert [im["file_name"] for im in to_coco(entries)["images"]] == ["dupA/x.jpg", "dupB/x.jpg", "dupA/y.jpg"]
    names = [im.get("name") for im in ET.fromstring(to_cvat(entries).split("\n", 1)[1]).iter("image")]
    assert names == ["dupA/x.jpg", "dupB/x.jpg", "dupA/y.jpg"]


def test_conversion_and_scoring_edges_of_a_review(tmp_path, caplog):
    """An evaluate/convert review (stop 60): an RLE ImageId '../in/victim' wrote outside OUT over an input; images
    a.png and a_classes.png wrote one a_classes.png; CVAT ellipses and COCO zero-area boxes went unsaid (the box
    became a 1-px object); a JPEG nucleus mask made every grey level a nucleus; "White Blood Cell" was no WBC."""
    import logging

    from hemaseg.core.vocabulary import category_of
    from hemaseg.io.datasets import Pair, load_instances

    (tmp_path / "in").mkdir()
    victim = tmp_path / "in" / "victim.png"
    victim.write_bytes(b"keep")
    csv_path = tmp_path / "in" / "r.csv"
    csv_path.write_text("ImageId,EncodedPixels,Height,Width\n../in/victim,1 3,4,4\nok,1 2,4,4\n")
    res = runner.invoke(app, ["convert", "--from", "rle", "--to", "labels", str(csv_path), str(tmp_path / "out")])
    assert res.exit_code == 1 and "ImageId" in res.output and victim.read_bytes() == b"keep", res.output
    assert not (tmp_path / "out" / "ok.png").exists()  # nothing written

    for names in (("a.png", "a_classes.png"), ("a_classes.png", "a.png")):  # either order (a review's KeyError)
        entries = [{"filename": n, "height": 8, "width": 8, "masks": []} for n in names]
        write_coco(tmp_path / "two.json", entries)
        res = runner.invoke(app, ["convert", "--from", "coco", "--to", "labels", str(tmp_path / "two.json"),
                                  str(tmp_path / "lab")])
        # a walkthrough: it said "a_classes.png: has the same file name as a.png", names that differ
        assert res.exit_code == 1 and "class map (<stem>_classes.png) would be one file" in res.output, res.output

    cvat = tmp_path / "e.xml"
    cvat.write_text('<annotations><image id="0" name="x.png" width="20" height="20">'
                    '<box label="WBC" xtl="1" ytl="1" xbr="9" ybr="9"/><ellipse label="WBC" cx="5" cy="5" rx="2" ry="2"/>'
                    '<tag label="good"/></image></annotations>')
    with caplog.at_level(logging.WARNING):
        assert len(read_cvat(cvat)[0]["masks"]) == 1
    assert "1 <ellipse> left out" in caplog.text and "<tag>" not in caplog.text
    coco = {"images": [{"id": 1, "file_name": "x.png", "height": 20, "width": 20}],
            "categories": [{"id": 1, "name": "White Blood Cell"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 0, 0]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 4, 6, 6]},
                            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10.6, 10, 0.8, 5]}]}
    (tmp_path / "z.json").write_text(json.dumps(coco))
    masks = read_coco(tmp_path / "z.json")[0]["masks"]
    assert len(masks) == 2 and masks[0]["category"] == "wbc" and category_of("Neutrophils") == "wbc"
    assert masks[1]["bounding_box"]["x2"] - masks[1]["bounding_box"]["x1"] == 1  # a sub-pixel box keeps its pixel

    yy, xx = np.mgrid[:40, :40]
    two = (((yy - 10) ** 2 + (xx - 10) ** 2 < 30) | ((yy - 28) ** 2 + (xx - 28) ** 2 < 30)).astype(np.uint8) * 255
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((40, 40, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "m_mask.jpg"), cv2.GaussianBlur(two, (3, 3), 0), [cv2.IMWRITE_JPEG_QUALITY, 60])
    _, labels = load_instances(Pair(tmp_path / "m.png", tmp_path / "m_mask.jpg"))
    assert labels.max() == 2


def test_coco_polygons_are_on_pixel_edges_both_ways(tmp_path, caplog):
    """COCO's polygons lie on pixel edges (pycocotools' rasteriser): another tool's 7 x 7 square is 49 pixels,
    not 64 (it was read on inclusive corners), and hemaseg's own polygons give pycocotools the mask back
    (they were written on pixel centres, 1 px small on the right and bottom)."""
    from pycocotools import mask as mask_utils

    other = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
             "categories": [{"id": 1, "name": "platelet"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 3, 9, 3, 9, 10, 2, 10]]},
                             {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[4, 4, 4, 4, 4, 4]]}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    masks = read_coco(tmp_path / "other.json")[0]["masks"]
    assert len(masks) == 1 and "1 annotations that cover no pixel left out" in caplog.text
    assert masks[0]["bounding_box"] == {"x1": 2, "x2": 9, "y1": 3, "y2": 10}
    assert int(rasterise(masks[0]["vertices"], (20, 20)).sum()) == 49
    yy, xx = np.mgrid[:40, :40]
    blob = ((yy - 20) ** 2 / 120 + (xx - 17) ** 2 / 40) <= 1
    entry = {"filename": "b.png", "height": 40, "width": 40, "masks": [mask_record(blob, "wbc")]}
    coco = to_coco([entry])
    ann = coco["annotations"][0]
    theirs = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], 40, 40))[:, :, 0].astype(bool)
    assert (theirs == blob).all() and ann["area"] == int(blob.sum())
    write_coco(tmp_path / "b.json", [entry])
    assert (rasterise(read_coco(tmp_path / "b.json")[0]["masks"][0]["vertices"], (40, 40)) == blob).all()


def test_convert_one_bad_file_costs_only_itself(tmp_path):
    """A folder input with one unreadable file (a VOC XML cut short, a YOLO label of words, a corrupt DSB mask
    or label PNG) converts the others, names the bad file on one line and exits 1; when no file can be read,
    nothing is written (conversion was all-or-nothing: one bad file aborted the folder)."""
    voc = tmp_path / "voc"
    voc.mkdir()
    good = ("<annotation><filename>{}.jpg</filename><size><width>64</width><height>48</height></size><object>"
            "<name>WBC</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>28</ymax></bndbox></object>"
            "</annotation>")
    (voc / "a.xml").write_text(good.format("a"))
    (voc / "b.xml").write_text("<annotation><filename>b.jpg</filename><size>")
    (voc / "c.xml").write_text(good.format("c"))
    res = runner.invoke(app, ["convert", "--from", "voc", "--to", "coco", str(voc), str(tmp_path / "v.json")])
    assert res.exit_code == 1 and "b.xml" in res.output and "2 images converted" in res.output, res.output
    assert [im["file_name"] for im in json.loads((tmp_path / "v.json").read_text())["images"]] == ["a.jpg", "c.jpg"]

    lab = tmp_path / "lab"
    lab.mkdir()
    two = np.zeros((8, 8), np.uint16)
    two[1:3, 1:3], two[5:7, 4:7] = 1, 2
    cv2.imwrite(str(lab / "x.png"), two)
    (lab / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "rle", str(lab), str(tmp_path / "r.csv")])
    assert res.exit_code == 1 and "y.png" in res.output, res.output
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert len(rows) == 3 and all(r.startswith("x,") for r in rows[1:])
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "dsb", str(lab), str(tmp_path / "d")])
    assert res.exit_code == 1 and sorted(p.name for p in (tmp_path / "d" / "x" / "masks").iterdir()) == ["x_1.png", "x_2.png"]
    assert not (tmp_path / "d" / "y").exists()

    (lab / "x.png").write_bytes(b"broken too")
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "rle", str(lab), str(tmp_path / "none.csv")])
    assert res.exit_code == 1 and "nothing converted" in res.output and not (tmp_path / "none.csv").exists()


def test_convert_dsb_and_yolo_folders_keep_their_good_samples(tmp_path):
    """The DSB and YOLO readers list a sample they cannot read and convert the rest (exit 1)."""
    dsb = tmp_path / "dsb"
    for sid in ("s1", "s2"):
        (dsb / sid / "images").mkdir(parents=True)
        (dsb / sid / "masks").mkdir()
        cv2.imwrite(str(dsb / sid / "images" / f"{sid}.png"), np.zeros((10, 12, 3), np.uint8))
        m = np.zeros((10, 12), np.uint8)
        m[2:5, 3:7] = 255
        cv2.imwrite(str(dsb / sid / "masks" / "n1.png"), m)
    (dsb / "s2" / "masks" / "n2.png").write_bytes(b"corrupt")
    res = runner.invoke(app, ["convert", "--from", "dsb", "--to", "labels", str(dsb), str(tmp_path / "out")])
    assert res.exit_code == 1 and "n2.png" in res.output, res.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s1.png"]
    # labels -> dsb -> labels: the masks folders `--to dsb` writes (no image: label PNGs carry none) read back
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "dsb", str(tmp_path / "out"), str(tmp_path / "d2")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["convert", "--from", "dsb", "--to", "labels", str(tmp_path / "d2"), str(tmp_path / "l2")])
    assert res.exit_code == 0, res.output
    assert (cv2.imread(str(tmp_path / "l2" / "s1.png"), cv2.IMREAD_UNCHANGED) ==
            cv2.imread(str(tmp_path / "out" / "s1.png"), cv2.IMREAD_UNCHANGED)).all()

    yolo = tmp_path / "yolo"
    yolo.mkdir()
    (yolo / "classes.txt").write_text("WBC\nRBC\nPlatelets\n")
    for stem, label in (("p", "0 0.5 0.5 0.2 0.2\n"), ("q", "zero half half\n")):
        cv2.imwrite(str(yolo / f"{stem}.jpg"), np.zeros((20, 20, 3), np.uint8))
        (yolo / f"{stem}.txt").write_text(label)
    res = runner.invoke(app, ["convert", "--from", "yolo", "--to", "coco", str(yolo), str(tmp_path / "y.json")])
    assert res.exit_code == 1 and "q.txt" in res.output, res.output
    assert [im["file_name"] for im in json.loads((tmp_path / "y.json").read_text())["images"]] == ["p.jpg"]


def test_cvat_and_coco_read_the_same_numbers_as_the_same_object(tmp_path, caplog):
    """CVAT's polygons lie on pixel edges as its boxes and COCO's do (a review: CVAT's 2,3;9,3;9,10;2,10 was 64 px
    where the same numbers in COCO are 49); an empty file converts to an empty one; an object outside its image
    is left out of a COCO file, said; a COCO image without a size keeps its polygons; hemaseg's COCO files
    written before the change (no "polygons" note) are read as they were written."""
    xml = tmp_path / "a.xml"
    xml.write_text('<annotations><image id="0" name="a.png" width="20" height="20">'
                   '<polygon label="rbc" points="2,3;9,3;9,10;2,10"/></image></annotations>')
    m = read_cvat(xml)[0]["masks"][0]
    assert int(rasterise(m["vertices"], (20, 20)).sum()) == 49 and m["bounding_box"] == {"x1": 2, "x2": 9, "y1": 3, "y2": 10}
    res = runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(xml), str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    ann = json.loads((tmp_path / "a.json").read_text())["annotations"][0]
    assert ann["area"] == 49 and ann["bbox"] == [2, 3, 7, 7]
    write_cvat(tmp_path / "b.xml", read_coco(tmp_path / "a.json"))
    assert read_cvat(tmp_path / "b.xml")[0]["masks"][0]["bounding_box"] == m["bounding_box"]  # a round trip keeps it

    (tmp_path / "empty.xml").write_text("<annotations></annotations>")
    res = runner.invoke(app, ["convert", "--from", "cvat", "--to", "coco", str(tmp_path / "empty.xml"),
                              str(tmp_path / "e.json")])
    assert res.exit_code == 0 and json.loads((tmp_path / "e.json").read_text())["images"] == []

    outside = {**m, "vertices": [[30, 30], [35, 30], [35, 35]]}
    coco = to_coco([{"filename": "a.png", "height": 20, "width": 20, "masks": [m, outside]}])
    assert len(coco["annotations"]) == 1 and "1 objects cover no pixel" in caplog.text
    assert f"(a.png {m['class_name']!r} x1)" in caplog.text  # which image and class (a walkthrough, stop 68)

    sizeless = {"images": [{"id": 1, "file_name": "a.png", "height": 0, "width": 0}], "categories": [{"id": 1, "name": "rbc"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 3, 9, 3, 9, 10, 2, 10]]}]}
    (tmp_path / "s.json").write_text(json.dumps(sizeless))
    assert read_coco(tmp_path / "s.json")[0]["masks"][0]["bounding_box"] == m["bounding_box"]

    old = {**sizeless, "info": {"description": "hemaseg"}, "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 3, 8, 3, 8, 9, 2, 9]]}]}
    (tmp_path / "old.json").write_text(json.dumps(old))  # pixel centres 2..8: the same 7 x 7 object
    assert read_coco(tmp_path / "old.json")[0]["masks"][0]["bounding_box"] == m["bounding_box"]


def test_convert_names_the_files_left_out_before_an_error_stops_it(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    one = ("<annotation><filename>{}</filename><size><width>64</width><height>48</height></size><object><name>WBC"
           "</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>28</ymax></bndbox></object></annotation>")
    (voc / "a.xml").write_text(one.format("x/same.jpg"))
    (voc / "b.xml").write_text(one.format("y/same.jpg"))  # two photos of one name: YOLO cannot tell them apart
    (voc / "c.xml").write_text("<annotation>")
    res = runner.invoke(app, ["convert", "--from", "voc", "--to", "yolo", str(voc), str(tmp_path / "y")])
    assert res.exit_code == 1 and "c.xml" in res.output and "same file name" in res.output, res.output


def test_coco_objects_a_review_found_refused_are_read_again(tmp_path, caplog):
    """A review of the change above: a stray 2-point part beside a whole outline lost the object, a polygon beside
    an exporter's "bbox": [] was refused, [[]] with a box too; an RLE without counts cost the whole file; COCO ids
    of mixed kinds stopped the label list; training and scoring refused a whole COCO file for one bad object."""
    from hemaseg.io.annotations import coco_labels
    from hemaseg.tasks.cells.train import find_annotated_photos

    square = [10, 10, 30, 10, 30, 30, 10, 30]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square, [40, 40, 41, 41]], "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [square], "bbox": []},
            {"id": 3, "image_id": 1, "category_id": "b", "segmentation": [[]], "bbox": [0, 0, 5, 5]},
            {"id": 4, "image_id": 1, "category_id": 1, "segmentation": {"size": [50, 50]}, "bbox": [0, 0, 5, 5]}]
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 50}],
        "categories": [{"id": "b", "name": "platelet"}, {"id": 1, "name": "rbc"}], "annotations": anns}))
    failed = []
    entries = read_coco(tmp_path / "annotations.json", failed)
    areas = [int(rasterise(m["vertices"], (50, 50)).sum()) for m in entries[0]["masks"]]
    assert areas == [400, 400, 25] and len(failed) == 1 and "annotation 4" in failed[0]["reason"]
    assert "parts of fewer than three points" in caplog.text
    assert coco_labels(tmp_path / "annotations.json") == ["rbc", "platelet"]
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((50, 50, 3), np.uint8))
    failed = []
    assert len(find_annotated_photos(tmp_path, failed)) == 1 and "annotation 4" in failed[0]["reason"]


def test_dsb_round_trip_keeps_an_empty_image_and_takes_no_paired_layout(tmp_path):
    cv2.imwrite(str(tmp_path / "lab.png"), np.zeros((6, 9), np.uint16))
    (tmp_path / "labs").mkdir()
    cv2.imwrite(str(tmp_path / "labs" / "empty.png"), np.zeros((6, 9), np.uint16))
    one = np.zeros((6, 9), np.uint16)
    one[1:3, 2:5] = 1
    cv2.imwrite(str(tmp_path / "labs" / "one.png"), one)
    for args in (["--from", "labels", "--to", "dsb", str(tmp_path / "labs"), str(tmp_path / "d")],
                 ["--from", "dsb", "--to", "labels", str(tmp_path / "d"), str(tmp_path / "back")]):
        res = runner.invoke(app, ["convert", *args])
        assert res.exit_code == 0, res.output
    for name in ("empty.png", "one.png"):
        assert (cv2.imread(str(tmp_path / "back" / name), cv2.IMREAD_UNCHANGED) ==
                cv2.imread(str(tmp_path / "labs" / name), cv2.IMREAD_UNCHANGED)).all()
    for split in ("train", "val"):  # a paired layout (imgs/ and masks/ per split) is no DSB folder
        (tmp_path / "ds" / split / "imgs").mkdir(parents=True)
        (tmp_path / "ds" / split / "masks").mkdir()
        cv2.imwrite(str(tmp_path / "ds" / split / "masks" / "x.png"), np.zeros((6, 9), np.uint8))
    res = runner.invoke(app, ["convert", "--from", "dsb", "--to", "labels", str(tmp_path / "ds"), str(tmp_path / "o")])
    assert res.exit_code == 1 and "no DSB samples" in res.output


def test_two_voc_files_of_one_image_are_named_as_such(tmp_path):
    """A walkthrough: two VOC XMLs naming one photo said "x.jpg: has the same file name as x.jpg"."""
    voc = tmp_path / "voc"
    voc.mkdir()
    one = ("<annotation><filename>x.jpg</filename><size><width>64</width><height>48</height></size><object><name>WBC"
           "</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>28</ymax></bndbox></object></annotation>")
    for name in ("a.xml", "b.xml"):
        (voc / name).write_text(one)
    res = runner.invoke(app, ["convert", "--from", "voc", "--to", "coco", str(voc), str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "named by two entries of the input" in res.output, res.output
    assert not (tmp_path / "c.json").exists()
