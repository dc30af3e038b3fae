from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaseg.errors import HemasegInputError
from hemaseg.io.datasets import find_pairs, load_pair, wbc_classes


def test_wbcseg_layout(wbc_folder):
    pairs = find_pairs(wbc_folder)
    assert len(pairs) == 10
    assert all(p.image.suffix == ".bmp" and p.mask.suffix == ".png" and p.image.stem == p.mask.stem for p in pairs)
    image, classes = load_pair(pairs[0])
    assert image.shape == (48, 48, 3) and classes.shape == (48, 48)
    assert set(np.unique(classes)) == {0, 1, 2}


def test_paired_folders_and_mask_suffix(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{stem}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train-0.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train-0-mask.jpg")
    pairs = find_pairs(tmp_path)
    names = sorted((p.image.name, p.mask.name) for p in pairs)
    assert names == [("a.jpg", "a.png"), ("b.jpg", "b.png"), ("train-0.jpg", "train-0-mask.jpg")]


def test_mask_conventions():
    m = np.array([[0, 128, 255]], np.uint8)
    assert wbc_classes(m).tolist() == [[0, 1, 2]]
    assert wbc_classes(np.array([[0, 1, 2]], np.uint8)).tolist() == [[0, 1, 2]]
    # a binary mask outlines whole cells, parts unknown (stop 68: they were cytoplasm, the nucleus taught as cytoplasm)
    assert wbc_classes(np.array([[0, 255]], np.uint8)).tolist() == [[0, 254]]
    assert wbc_classes(np.array([[0, 1]], np.uint8)).tolist() == [[0, 254]]
    # JPEG-compressed masks snap to the nearest value.
    def block(row):  # each value a 4 x 4 block, as a mask's regions are
        return np.kron(np.array([row], np.uint8), np.ones((4, 4), np.uint8))

    assert (wbc_classes(block([3, 120, 250, 0, 128, 255]), "m.jpg") == block([0, 1, 2, 0, 1, 2])).all()


def test_jpeg_masks_of_every_convention_keep_their_cells(tmp_path):
    """A wbc fine-tune walkthrough (stop 68): a 0/1/2 index mask saved as JPEG was read as all background (two WBC
    images trained as "no WBC"), and a binary 0/255 JPEG mask as all nucleus."""
    import cv2

    m = np.zeros((64, 64), np.uint8)
    cv2.circle(m, (32, 32), 20, 1, -1)
    cv2.circle(m, (32, 32), 9, 2, -1)
    for name, mask, want in (("index.jpg", m, m), ("wbcseg.jpg", np.array([0, 128, 255], np.uint8)[m], m),
                             ("binary.jpg", np.where(m > 0, 255, 0).astype(np.uint8), np.where(m > 0, 254, 0))):
        cv2.imwrite(str(tmp_path / name), mask, [cv2.IMWRITE_JPEG_QUALITY, 75])
        got = wbc_classes(cv2.imread(str(tmp_path / name), cv2.IMREAD_GRAYSCALE), tmp_path / name)
        assert (got == want).mean() > 0.95, (name, np.unique(got, return_counts=True))  # (JPEG rings at edges)
        assert set(np.unique(got).tolist()) <= set(np.unique(want).tolist()), name
    # binary masks as labs save them: 0/1 at any quality (its edges ring into a few 2s), 0/255 smoothed by a resize
    # (its edges pass through the middle values): whole cells, parts unknown (a review: read as 0/1/2 and as nucleus)
    big = cv2.resize(m, (256, 256), interpolation=cv2.INTER_NEAREST)
    smooth = cv2.resize(np.where(big > 0, 255, 0).astype(np.uint8), (1024, 1024))
    smooth = cv2.resize(smooth, (256, 256), interpolation=cv2.INTER_AREA)
    for quality in (50, 75, 95):
        for name, mask in (("b01.jpg", (m > 0).astype(np.uint8)), ("smooth.jpg", smooth))[quality == 50:]:
            # (a 0/1 JPEG at quality 50 holds no cell any more: every pixel decodes to 0)
            cv2.imwrite(str(tmp_path / name), mask, [cv2.IMWRITE_JPEG_QUALITY, quality])
            got = wbc_classes(cv2.imread(str(tmp_path / name), cv2.IMREAD_GRAYSCALE), tmp_path / name)
            assert set(np.unique(got).tolist()) == {0, 254}, (name, quality, np.unique(got, return_counts=True))
    # soft-edged binary masks of any cell size are whole cells or refused, never a ring of cytoplasm (a review: read
    # so under 2.5-8 % of middle values); a small lymphocyte's thin cytoplasm (3 px) stays cytoplasm
    for size, radius in ((256, 60), (256, 30), (128, 20), (575, 150)):
        soft = np.zeros((size, size), np.uint8)
        cv2.circle(soft, (size // 2, size // 2), radius, 255, -1)
        cv2.imwrite(str(tmp_path / "soft.jpg"), cv2.GaussianBlur(soft, (0, 0), 1.0), [cv2.IMWRITE_JPEG_QUALITY, 90])
        try:
            got = wbc_classes(cv2.imread(str(tmp_path / "soft.jpg"), cv2.IMREAD_GRAYSCALE), tmp_path / "soft.jpg")
        except HemasegInputError:
            continue
        assert set(np.unique(got).tolist()) == {0, 254}, (size, radius, np.unique(got, return_counts=True))
    lympho = np.zeros((64, 64), np.uint8)
    cv2.circle(lympho, (32, 32), 12, 128, -1)
    cv2.circle(lympho, (32, 32), 9, 255, -1)
    cv2.imwrite(str(tmp_path / "lympho.jpg"), lympho, [cv2.IMWRITE_JPEG_QUALITY, 90])
    got = wbc_classes(cv2.imread(str(tmp_path / "lympho.jpg"), cv2.IMREAD_GRAYSCALE), tmp_path / "lympho.jpg")
    assert (got == np.array([0, 1, 2])[np.searchsorted([0, 128, 255], lympho)]).mean() > 0.95


def test_mask_of_wrong_size_in_pair(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.bmp")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "x.png")
    (pair,) = find_pairs(tmp_path)
    with pytest.raises(HemasegInputError, match="does not match"):
        load_pair(pair)


def test_not_a_folder(tmp_path):
    with pytest.raises(HemasegInputError):
        find_pairs(tmp_path / "missing")


def test_masks_off_the_convention_are_refused(tmp_path):
    """Issue 20, case 10: a 0/50/100 mask trained silently (cytoplasm read as background)."""
    from hemaseg.engine.task import Task
    from hemaseg.tasks import get_task

    img = np.full((8, 8, 3), 200, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6], mask[3:5, 3:5] = 50, 100
    Image.fromarray(img).save(tmp_path / "001.bmp")
    Image.fromarray(mask).save(tmp_path / "001.png")
    pair = find_pairs(tmp_path)[0]
    with pytest.raises(HemasegInputError, match="0, 50, 100") as e:
        load_pair(pair)
    assert str(pair.mask) in str(e.value) and "\n" not in str(e.value)
    # the generic reader of a task's label values (Task.load_sample) refuses the same way
    with pytest.raises(HemasegInputError, match="0, 50, 100"):
        Task.load_sample(get_task("wbc"), pair)


def test_paired_images_and_masks_folders_are_no_dsb_id(tmp_path):
    """images/a.png + masks/a.png (one label image per image) was read as one DSB id: the first image given
    every label image as a nucleus, the others dropped. A DSB id (<id>/images/<id>.png) is still one."""
    from hemaseg.io.datasets import find_dsb
    from hemaseg.tasks import get_task

    for name in ("images", "masks"):
        (tmp_path / "paired" / name).mkdir(parents=True)
        (tmp_path / "dsb" / "id1" / name).mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "paired" / "images" / f"{stem}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "paired" / "masks" / f"{stem}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "dsb" / "id1" / "images" / "id1.png")
    for k in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "dsb" / "id1" / "masks" / f"n{k}.png")
    assert find_dsb(tmp_path / "paired") == []
    assert [(p.image.name, p.mask.name) for p in get_task("nuclei").find_samples(tmp_path / "paired")] == \
        [("a.png", "a.png"), ("b.png", "b.png")]
    assert [(p.image.name, p.mask.name) for p in find_dsb(tmp_path / "dsb")] == [("id1.png", "masks")]


def test_an_image_without_its_mask_is_named_by_wbc_and_nuclei_but_not_a_yolo_image(tmp_path):
    """images/b.png without masks/b.png was skipped unsaid by `evaluate nuclei` (wbc named it); a YOLO image whose
    label is labels/x.txt was named 'no mask' in a folder holding wbc-seg pairs too."""
    from hemaseg.tasks import get_task

    for name in ("images", "masks"):
        (tmp_path / "p" / name).mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p" / "images" / f"{stem}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "p" / "masks" / "a.png")
    for task in ("wbc", "nuclei"):
        failed: list = []
        pairs = get_task(task).find_scored(tmp_path / "p", failed)
        assert [p.image.name for p in pairs] == ["a.png"] and [f["image"][-5:] for f in failed] == ["b.png"], task
    (tmp_path / "m" / "images").mkdir(parents=True)
    (tmp_path / "m" / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "m" / "001.bmp")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m" / "001.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "m" / "images" / "x.png")
    (tmp_path / "m" / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    failed = []
    get_task("wbc").find_scored(tmp_path / "m", failed)
    assert failed == []


def test_a_lone_image_in_a_wbcseg_folder_is_named(tmp_path):
    """In the wbc-seg layout (NNN.bmp beside NNN.png) an image without its PNG mask was skipped unsaid; a lone PNG
    there (a mask, or an earlier run's worst_cases.png) and the seed-000 pairs beside are no lone images."""
    for stem in ("001", "002"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{stem}.bmp")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "001.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "worst_cases.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x_mask.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "field.jpg")  # a YOLO photo with its label
    (tmp_path / "field.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    failed: list = []
    pairs = find_pairs(tmp_path, failed)
    assert sorted(p.image.name for p in pairs) == ["001.bmp", "x.jpg"]
    assert [(f["image"][-7:], f["reason"]) for f in failed] == [("002.bmp", "no mask (002.png missing)")]
    (tmp_path / "001.png").unlink()  # no wbc-seg pair left: beside x.jpg + x_mask.png the lone images lack X_mask
    failed = []
    find_pairs(tmp_path, failed)
    assert [(f["image"][-7:], f["reason"]) for f in failed] == [("001.bmp", "no mask (001_mask.* missing)"),
                                                                ("002.bmp", "no mask (002_mask.* missing)")]
    (tmp_path / "x_mask.png").unlink()  # no pair of any layout left: a lone image there may be no sample
    failed = []
    find_pairs(tmp_path, failed)
    assert failed == []


def test_class_csv_rows_left_out_are_said(tmp_path, caplog):
    """find_labelled_cells skipped a row naming no image or an unknown class number unsaid, so evaluate wbc-type
    scored fewer crops than the CSV lists with exit 0 (an evaluate review, stop 60)."""
    import logging

    import cv2

    from hemaseg.io.datasets import find_labelled_cells

    for n in (1, 2):
        cv2.imwrite(str(tmp_path / f"{n:03d}.bmp"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "Class Labels of Dataset 1.csv").write_text("Image ID,class label\n1,1\n2,9\n3,2\n")
    with caplog.at_level(logging.WARNING):
        assert [c for _, c in find_labelled_cells(tmp_path)] == ["neutrophil"]
    assert "1 name no image here (3)" in caplog.text and "1 a class number other than 1-5 (2)" in caplog.text


def test_a_wbc_class_mask_is_no_nucleus_instance_map(tmp_path):
    """A walkthrough (stop 64): `evaluate nuclei` / `train nuclei` on a wbc-seg folder read each 0/128/255 mask as two
    "nuclei" (the cytoplasm and the nucleus) and scored or trained on them; refused, naming the mask. Instance maps
    (1..N, also with 255 nuclei) and binary 0/255 masks are read as before."""
    from hemaseg.io.datasets import Pair, load_instances

    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[1:7, 1:7], mask[3:5, 3:5] = 128, 255
    Image.fromarray(mask).save(tmp_path / "wbc.png")
    with pytest.raises(HemasegInputError, match="0/128/255 are a class mask") as e:
        load_instances(Pair(tmp_path / "a.png", tmp_path / "wbc.png"))
    assert "wbc.png" in str(e.value)
    labels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4 + 3  # 3, 7, ..., 255: instances
    labels[0, 0] = 0
    Image.fromarray(labels).save(tmp_path / "inst.png")
    assert len(np.unique(load_instances(Pair(tmp_path / "a.png", tmp_path / "inst.png"))[1])) == 64
    binary = np.zeros((8, 8), np.uint8)
    binary[1:3, 1:3] = binary[5:7, 5:7] = 255
    Image.fromarray(binary).save(tmp_path / "bin.png")
    assert load_instances(Pair(tmp_path / "a.png", tmp_path / "bin.png"))[1].max() == 2  # components


def test_an_image_without_its_x_mask_is_named(tmp_path):
    """A wbc fine-tune walkthrough (stop 68): in the X.jpg + X_mask.png layout an image without its mask was neither
    trained on nor scored, without a word (paired folders and wbc-seg folders named it)."""
    for name in ("a.jpg", "a_mask.png", "b.jpg", "c.png", "c_mask.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    failed: list[dict] = []
    pairs = find_pairs(tmp_path, failed)
    assert sorted(p.image.name for p in pairs) == ["a.jpg", "c.png"]
    assert [(Path(f["image"]).name, f["reason"]) for f in failed] == [("b.jpg", "no mask (b_mask.* missing)")]


def test_a_palette_index_mask_is_read_by_its_indices(tmp_path):
    """A wbc fine-tune walkthrough (stop 68): a VOC-style palette PNG (0/1/2 in the VOC colour map) was refused as "a
    colour image"; a palette of grey levels keeps its grey values."""
    from hemaseg.io.images import _voc_colour, read_mask

    idx = np.array([[0, 1, 2, 2]], np.uint8)
    voc = [c for i in range(256) for c in _voc_colour(i)]  # the standard VOC colour map
    im = Image.fromarray(idx, mode="P")
    im.putpalette(voc)
    im.save(tmp_path / "voc.png")
    assert read_mask(tmp_path / "voc.png").tolist() == [[0, 1, 2, 2]]
    assert wbc_classes(read_mask(tmp_path / "voc.png")).tolist() == [[0, 1, 2, 2]]
    # VOC's void border (255) is neither class nor object: refused (a review: read as an instance); a palette of other
    # colours (a PNG optimiser's, in any order) means nothing by its indices: refused as a colour image, as before
    im = Image.fromarray(np.array([[0, 1, 255]], np.uint8), mode="P")
    im.putpalette(voc)
    im.save(tmp_path / "void.png")
    with pytest.raises(HemasegInputError, match="void"):
        read_mask(tmp_path / "void.png")
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (253 * 3))
    im.save(tmp_path / "other.png")
    with pytest.raises(HemasegInputError, match="colour image"):
        read_mask(tmp_path / "other.png")
    grey = Image.fromarray(idx, mode="P")
    grey.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255] + [0] * (253 * 3))
    grey.save(tmp_path / "grey.png")
    assert read_mask(tmp_path / "grey.png").tolist() == [[0, 128, 255, 255]]


def test_a_binary_mask_saved_as_a_grey_palette_png_is_read_by_its_grey_values(tmp_path):
    """A docs check (stop 68): a 0/255 mask converted to a palette PNG (black and white) was taken for a VOC index
    mask and refused for its 'void' 255."""
    from hemaseg.io.images import read_mask

    a = np.zeros((8, 8), np.uint8)
    a[2:6, 2:6] = 255
    Image.fromarray(a, "L").convert("P").save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert (read_mask(tmp_path / "m.png") == a).all()
    assert set(np.unique(wbc_classes(read_mask(tmp_path / "m.png"))).tolist()) == {0, 254}


def test_a_colour_png_beside_its_grey_tiff_label_is_the_image(tmp_path):
    """A wbc fine-tune walkthrough (stop 68): X.png (the photo) beside X.tif (its 0/128/255 mask) was paired the wbc-seg
    way, the PNG taken for the mask (refused as "a colour image"); a grey PNG beside a TIFF photo stays the mask."""
    import tifffile

    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "x.png")
    tifffile.imwrite(tmp_path / "x.tif", np.array([0, 128, 255], np.uint8)[np.arange(64).reshape(8, 8) % 3])
    (pair,) = find_pairs(tmp_path)
    assert (pair.image.name, pair.mask.name) == ("x.png", "x.tif")
    assert set(np.unique(load_pair(pair)[1]).tolist()) == {0, 1, 2}
    other = tmp_path / "o"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(other / "y.png")
    tifffile.imwrite(other / "y.tif", np.full((8, 8, 3), 200, np.uint8))
    (pair,) = find_pairs(other)
    assert (pair.image.name, pair.mask.name) == ("y.tif", "y.png")
