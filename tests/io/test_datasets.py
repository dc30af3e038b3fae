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
    assert wbc_classes(np.array([[0, 255]], np.uint8)).tolist() == [[0, 1]]
    # JPEG-compressed masks snap to the nearest value.
    assert wbc_classes(np.array([[3, 120, 250, 0, 128, 255]], np.uint8), "m.jpg").tolist() == [[0, 1, 2, 0, 1, 2]]


def test_mask_of_wrong_size_in_pair(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.bmp")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "x.png")
    (pair,) = find_pairs(tmp_path)
    with pytest.raises(HemasegInputError, match="does not match"):
        load_pair(pair)


def test_not_a_folder(tmp_path):
    with pytest.raises(HemasegInputError):
        find_pairs(tmp_path / "missing")
