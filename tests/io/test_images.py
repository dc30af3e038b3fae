from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from hemaseg.errors import HemasegInputError
from hemaseg.io.images import list_images, read_image, read_mask

RGB = (np.arange(6 * 7 * 3) % 256).reshape(6, 7, 3).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_reads_8bit_formats(tmp_path, suffix, mode):
    if suffix in (".jpg",) and mode == "RGBA":
        pytest.skip("JPEG has no alpha")
    p = tmp_path / f"x{suffix}"
    arr = {"L": RGB[..., 0], "RGB": RGB, "RGBA": np.dstack([RGB, np.full((6, 7), 200, np.uint8)])}[mode]
    Image.fromarray(arr).save(p)
    out = read_image(p)
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    if suffix != ".jpg":
        expected = np.repeat(arr[..., None], 3, 2) if mode == "L" else arr[..., :3]
        assert np.array_equal(out, expected)


def test_reads_16bit_png_and_tiff(tmp_path):
    arr = np.linspace(0, 4095, 6 * 7).reshape(6, 7).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.dstack([arr] * 3))
    for name in ("a.png", "b.tif"):
        out = read_image(tmp_path / name)
        assert out.shape == (6, 7, 3) and out.dtype == np.uint8
        assert out.min() == 0 and out.max() == 255  # rescaled to the image's own range


def test_reads_multipage_tiff_first_plane(tmp_path, caplog):
    """The first plane of a stack, saying so once (the other planes were dropped without a word); a pyramid's
    smaller levels are no planes."""
    import logging

    stack = np.zeros((3, 10, 12), np.uint8)
    stack[0] = 7
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    with tifffile.TiffWriter(tmp_path / "p.tif") as tif:  # pages of one shape: a series of fields
        for v in (7, 8):
            tif.write(np.full((10, 12), v, np.uint8))
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tif:
        tif.write(np.full((20, 24), 7, np.uint8))
        tif.write(np.full((10, 12), 7, np.uint8))
    with caplog.at_level(logging.WARNING):
        for name in ("s.tif", "s.tif", "p.tif", "pyramid.tif"):
            out = read_image(tmp_path / name)
            assert out.shape[2] == 3 and (out == 7).all()
    said = [r.getMessage() for r in caplog.records if "only the first" in r.getMessage()]
    assert len(said) == 2 and "s.tif: 3 planes" in said[0] and "p.tif: 2 planes" in said[1], said
    # grey + alpha (2 samples a pixel) is one image, not 40 planes of 50 x 2 px (a review, stop 65)
    grey = np.tile(np.arange(50, dtype=np.uint8) * 5, (40, 1))
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([grey, np.full_like(grey, 255)]), photometric="minisblack",
                     extrasamples=["unassalpha"])
    out = read_image(tmp_path / "la.tif")
    assert out.shape == (40, 50, 3) and (out[..., 0] == grey).all()
    assert not [r for r in caplog.records if "la.tif" in r.getMessage()]


@pytest.mark.parametrize("name,content,reason", [
    ("empty.png", b"", "empty"),
    ("text.png", b"hello, I am not an image", "not an image"),
    ("fake.tif", b"II*\x00garbage", "TIFF"),
])
def test_broken_inputs_raise_clear_error(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(HemasegInputError) as e:
        read_image(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_truncated_jpeg_and_png(tmp_path):
    for suffix in (".jpg", ".png"):
        p = tmp_path / f"full{suffix}"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(p)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
        with pytest.raises(HemasegInputError, match="corrupt or truncated"):
            read_image(cut)


def test_missing_and_folder(tmp_path):
    with pytest.raises(HemasegInputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(HemasegInputError, match="folder"):
        read_image(tmp_path)


def test_zero_size_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((0, 5), np.uint8))
    with pytest.raises(HemasegInputError):
        read_image(tmp_path / "z.tif")


def test_mask_of_wrong_size(tmp_path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(HemasegInputError, match="does not match"):
        read_mask(tmp_path / "m.png", (6, 5))
    assert read_mask(tmp_path / "m.png", (5, 5)).shape == (5, 5)


def test_mask_in_colour_is_refused_grey_saved_as_rgb_is_read(tmp_path):
    """A photo given as a label image was read by its red channel (one "nucleus" per red value): refused now;
    a grey mask saved as RGB or RGBA is still read."""
    grey = np.array([[0, 1], [2, 2]], np.uint8)
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)])).save(tmp_path / "rgba.png")
    for name in ("rgb.png", "rgba.png"):
        assert read_mask(tmp_path / name).tolist() == grey.tolist()
    photo = np.dstack([grey * 100, grey * 50 + 3, grey]).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    with pytest.raises(HemasegInputError, match="colour channels differ"):
        read_mask(tmp_path / "photo.png")


def test_list_images_files_folders_globs(tmp_path):
    for n in ("a.png", "b.jpg", "c.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg"]
    assert [p.name for p in list_images(str(tmp_path / "*.jpg"))] == ["b.jpg"]
    # An explicit file is kept whatever its suffix, so that it is reported, not skipped.
    assert list_images([tmp_path / "c.txt"]) == [Path(tmp_path / "c.txt")]


# ---- issue 20, cases 7 and 8: planar TIFF, NaN/Inf, one size guard for every format
def test_planar_rgb_tiff_is_read_as_colour(tmp_path):
    rgb = np.zeros((3, 20, 30), np.uint8)
    rgb[0], rgb[1, :, :15], rgb[2, 10:] = 200, 120, 60
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    out = read_image(tmp_path / "planar.tif")
    assert out.shape == (20, 30, 3)
    assert np.array_equal(out, np.moveaxis(rgb, 0, -1))


def test_nan_and_inf_in_a_float_tiff_do_not_blank_the_image(tmp_path):
    a = np.linspace(0.0, 10.0, 20 * 30, dtype=np.float32).reshape(20, 30)
    a[3, 4], a[5, 6], a[7, 8] = np.nan, np.inf, -np.inf
    tifffile.imwrite(tmp_path / "f.tif", a)
    out = read_image(tmp_path / "f.tif")[..., 0]
    ok = np.isfinite(a)
    expected = np.clip(a / 10.0 * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(out[ok], expected[ok])
    assert out[3, 4] == 0 and out[5, 6] == 255 and out[7, 8] == 0


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_one_size_guard_for_every_format(tmp_path, monkeypatch, fmt):
    """A TIFF skipped the guard a PNG met, and the PNG's message said "corrupt"."""
    import hemaseg.io.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 50 * 40)
    p = tmp_path / f"big.{fmt}"
    big = np.zeros((41, 50, 3), np.uint8)
    if fmt == "tif":
        tifffile.imwrite(p, big)
    else:
        Image.fromarray(big).save(p)
    with pytest.raises(HemasegInputError, match=r"50x41 px .* over the .* limit") as e:
        read_image(p)
    assert "corrupt" not in str(e.value)
    small = tmp_path / f"ok.{fmt}"
    (tifffile.imwrite(small, big[:40]) if fmt == "tif" else Image.fromarray(big[:40]).save(small))
    assert read_image(small).shape == (40, 50, 3)


def test_the_public_functions_take_any_photo_array_or_path_and_refuse_the_rest_in_one_line(tmp_path):
    """as_photo: what segment / classify / analyze / estimate_diameter take. A float photo in 0-1 is the
    same photo as its uint8 (it gave no cell before); grey and RGBA are photos; channels-first, empty,
    text and 4-D arrays are refused naming the argument; a path is read."""
    import hemaseg
    from hemaseg.io.images import as_photo

    assert as_photo(RGB) is RGB  # no copy
    assert np.array_equal(as_photo(RGB.astype(np.float32) / 255), RGB)
    assert np.array_equal(as_photo(np.dstack([RGB, np.full((6, 7), 9, np.uint8)])), RGB)
    assert np.array_equal(as_photo(RGB[..., 0]), np.repeat(RGB[..., :1], 3, 2))
    Image.fromarray(RGB).save(tmp_path / "x.png")
    assert np.array_equal(as_photo(tmp_path / "x.png"), RGB)
    for bad, why in ((np.zeros((3, 40, 50)), "channels-first"), (np.zeros((0, 0, 3)), "empty"),
                     (np.array([["a"]]), "values"), (np.zeros((2, 3, 4, 5)), "shape"), (tmp_path / "no.png", "no such"),
                     ([tmp_path / "x.png"] * 2, "list of 2 images or paths; give one image")):
        with pytest.raises(HemasegInputError, match=why):
            as_photo(bad)
    sample = hemaseg.read_image(Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg")[100:400, 50:450]
    a, b = hemaseg.segment(sample), hemaseg.segment(sample.astype(np.float32) / 255)
    assert a.count == b.count >= 1 and np.array_equal(a.classes, b.classes)
    with pytest.raises(HemasegInputError, match="channels-first"):
        hemaseg.segment(np.moveaxis(sample, -1, 0))


def test_a_16_bit_colour_png_is_read_as_a_16_bit_tiff_is(tmp_path):
    """PIL kept the high byte of a 16-bit RGB PNG (no stretch) where the same pixels in a TIFF were stretched to
    their range: one sample typed neutrophil from one file and eosinophil from the other."""
    import cv2
    import tifffile

    rng = np.random.default_rng(0)
    rgb = (rng.integers(100, 200, (20, 30, 3)) * 257).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), np.ascontiguousarray(rgb[..., ::-1]))
    tifffile.imwrite(tmp_path / "c.tif", rgb)
    png, tif = read_image(tmp_path / "c.png"), read_image(tmp_path / "c.tif")
    assert (png == tif).all() and png.min() == 0 and png.max() == 255  # the TIFF is RGB: channel order kept too
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb[..., ::-1], np.full((20, 30), 65535, np.uint16)]))
    assert (read_image(tmp_path / "a.png") == tif).all()


def test_an_exif_rotated_photo_is_read_as_viewers_show_it(tmp_path):
    """An analyze audit: a camera's portrait JPEG (EXIF orientation 6) was read as stored, sideways, so its
    overlay and polygons did not match the photo a user sees."""
    from hemaseg.io.images import image_size

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, 20:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: the black half on top
    Image.fromarray(stored).save(tmp_path / "p.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "p.jpg")
    assert img.shape == (40, 20, 3) and image_size(tmp_path / "p.jpg") == (40, 20)
    assert img[:15].mean() < 40 and img[-15:].mean() > 215
    Image.fromarray(stored).save(tmp_path / "q.jpg", quality=95)  # no EXIF: as stored
    assert read_image(tmp_path / "q.jpg").shape == (20, 40, 3) and image_size(tmp_path / "q.jpg") == (20, 40)


def test_a_transparent_border_is_read_as_white_not_as_black_stain(tmp_path, caplog):
    """A walkthrough (stop 69): an RGBA PNG whose transparent strip was stored black was read black (alpha dropped):
    the strip merged with the neutrophil beside it into one 'lymphocyte'. A pixel of no opacity is white now, said
    once; pixels of any opacity keep their colour; a TIFF's fourth sample not marked as alpha is no opacity."""
    from hemaseg.io.images import as_photo

    alpha = np.full((6, 7), 255, np.uint8)
    alpha[:, :2] = 0
    rgba = np.dstack([RGB, alpha])
    rgba[:, :2, :3] = 0
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    out = read_image(tmp_path / "cut.png")
    assert (out[:, :2] == 255).all() and np.array_equal(out[:, 2:], RGB[:, 2:])
    assert "cut.png: 28.6 % of its pixels are transparent: read as white" in caplog.text
    assert np.array_equal(as_photo(rgba)[:, :2], np.full((6, 2, 3), 255, np.uint8))
    tifffile.imwrite(tmp_path / "four.tif", rgba, photometric="rgb", extrasamples=[0])  # unspecified, not alpha
    assert np.array_equal(read_image(tmp_path / "four.tif"), rgba[..., :3])
    tifffile.imwrite(tmp_path / "alpha.tif", rgba, photometric="rgb", extrasamples=[2])  # unassociated alpha
    assert np.array_equal(read_image(tmp_path / "alpha.tif"), out)
