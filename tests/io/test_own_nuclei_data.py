"""A lab's own nuclei data, walked through (stop 67): 16-bit images with a hot pixel, two-channel TIFFs, label
maps as labs save them (binary 0/1, int32 ids past 65535, TIFF folders), read alike by evaluate, train and convert."""
import csv
import logging

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.errors import HemasegInputError
from hemaseg.io.datasets import read_instances
from hemaseg.io.images import read_image, to_uint8

runner = CliRunner()


def _nuclei16(rng, hot: int | None = None) -> np.ndarray:
    img = (rng.random((96, 128)) * 100).astype(np.uint16)
    for y, x in ((20, 20), (20, 80), (60, 40), (70, 100)):
        img[y - 6:y + 6, x - 6:x + 6] += 3000
    if hot is not None:
        img[40:43, 60:63] = hot  # a saturated speck of 3 x 3 px (one camera pixel is the same case)
    return img


def test_a_hot_speck_leaves_a_16bit_image_its_grey_levels(tmp_path):
    """A walkthrough: one pixel at 65535 among nuclei of 0-4000 squeezed them into 3-5 grey levels (min..max):
    0 nuclei found, exit 0. The speck is clipped now; an ordinary 16-bit image is scaled by min..max as before."""
    rng = np.random.default_rng(0)
    for hot in (65535, 12000):
        tifffile.imwrite(tmp_path / "hot.tif", _nuclei16(rng, hot))
        img = read_image(tmp_path / "hot.tif")[..., 0]
        assert img[20, 20] >= 250 and img[60, 40] >= 250 and img[5:15, 40:60].mean() < 20, hot
    # a speck within the content's own span leaves the range alone (nuclei at 3000-3100, the speck 4095)
    assert 150 < to_uint8(_nuclei16(rng, 4095))[20, 20] < 255
    plain = _nuclei16(rng)
    want = np.clip((plain - float(plain.min())) * 255 / (float(plain.max()) - plain.min()) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(plain), want)
    flat = np.full((40, 40), 7, np.uint16)
    flat[3, 3] = 900  # a flat image and one speck: nothing else to scale to, so its range stays
    assert to_uint8(flat)[3, 3] == 255 and to_uint8(flat)[0, 0] == 0


def test_a_two_channel_tiff_is_not_read_as_grey_and_alpha(tmp_path, caplog):
    """(H, W, 2) samples with no alpha (two stains) lost the second channel without a word; a marked alpha is
    still alpha."""
    a = np.zeros((20, 30, 2), np.uint16)
    a[5:15, 5:15, 0] = 1000
    a[..., 1] = 50
    tifffile.imwrite(tmp_path / "two.tif", a, photometric="minisblack", extrasamples=["unspecified"])
    tifffile.imwrite(tmp_path / "ga.tif", a, photometric="minisblack", extrasamples=["unassalpha"])
    with caplog.at_level(logging.WARNING):
        two = read_image(tmp_path / "two.tif")
        ga = read_image(tmp_path / "ga.tif")
    assert two.shape == ga.shape == (20, 30, 3) and two[10, 10, 0] == 255 and np.array_equal(two, ga)
    assert "two.tif: 2 channels" in caplog.text and "ga.tif" not in caplog.text, caplog.text


def test_label_maps_as_labs_save_them_are_read_alike_everywhere(tmp_path):
    """A walkthrough: a 0/1 mask of 38 nuclei was one nucleus to evaluate (0/255 was read as its pieces), int32 ids
    k * 65536 wrapped to 0 (true 0, exit 0), and convert --from labels skipped TIFFs and kept a 0/255 mask as one
    object. One reader (read_instances) now serves evaluate, train and convert."""
    two = np.zeros((32, 32), np.uint8)
    two[2:8, 2:8] = 1
    two[20:28, 20:28] = 1
    Image.fromarray(two).save(tmp_path / "b01.png")
    Image.fromarray(two * 255).save(tmp_path / "b255.png")
    assert np.unique(read_instances(tmp_path / "b01.png")).tolist() == [0, 1, 2]
    assert np.array_equal(read_instances(tmp_path / "b01.png"), read_instances(tmp_path / "b255.png"))
    big = np.zeros((32, 32), np.int32)
    big[2:8, 2:8], big[20:28, 20:28], big[2:8, 20:28] = 65536, 2 * 65536, 65530
    tifffile.imwrite(tmp_path / "big.tif", big)
    got = read_instances(tmp_path / "big.tif")
    assert got.dtype == np.uint16 and len(np.unique(got)) == 4 and (got[big == 0] == 0).all()
    tifffile.imwrite(tmp_path / "neg.tif", -big)
    with pytest.raises(HemasegInputError, match="negative label values"):
        read_instances(tmp_path / "neg.tif")
    labels = tmp_path / "labels"
    labels.mkdir()
    for f in ("b01.png", "b255.png", "big.tif"):
        (labels / f).write_bytes((tmp_path / f).read_bytes())
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "rle", str(labels), str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "r.csv") as f:
        rows = [r["ImageId"] for r in csv.DictReader(f)]
    assert sorted(rows) == ["b01", "b01", "b255", "b255", "big", "big", "big"], rows
    (labels / "big.png").write_bytes((tmp_path / "b01.png").read_bytes())  # big.png beside big.tif: one ImageId
    res = runner.invoke(app, ["convert", "--from", "labels", "--to", "dsb", str(labels), str(tmp_path / "d")])
    assert res.exit_code == 1 and "same name as big" in res.output and not (tmp_path / "d").exists(), res.output


def test_pairs_beside_dsb_samples_are_said_to_be_left_out(tmp_path, caplog):
    """A walkthrough: a folder holding DSB samples and image/mask pairs scored the DSB samples alone (5 of 8), without
    a word."""
    from helpers import make_dsb
    from hemaseg.tasks import get_task

    make_dsb(tmp_path / "mix", n=3)
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:16, 8:16] = 200
    Image.fromarray(img).save(tmp_path / "mix" / "c1.png")
    Image.fromarray((img[..., 0] > 0).astype(np.uint8)).save(tmp_path / "mix" / "c1_mask.png")
    with caplog.at_level(logging.WARNING):
        found = get_task("nuclei").find_scored(tmp_path / "mix", [])
    assert len(found) == 3 and "1 image/label pair(s) beside its DSB samples are not read" in caplog.text, caplog.text
