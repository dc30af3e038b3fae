"""Large TIFFs read region by region (io/images.LazyImage), the pixel size from TIFF/OME metadata
setting the diameter of `hemaseg segment`, and label PNGs written a band of rows at a time."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import hemaseg
from hemaseg.cli import app
from hemaseg.core.result import Segmentation
from hemaseg.io import outputs
from hemaseg.io.images import LazyImage, open_image, pixel_size_um, read_image
from hemaseg.io.outputs import write_png_bands, write_segmentation
from hemaseg.tasks.wbc import WbcParams

tifffile = pytest.importorskip("tifffile")
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "hemaseg" / "samples" / "BloodImage_00000.jpg"


def _pyramid(path: Path, image: np.ndarray, um: float | None = None, ome: bool = False) -> Path:
    """A tiled TIFF with two reduced levels (SubIFDs), as slide scanners write them."""
    kw = dict(tile=(128, 128), photometric="rgb")
    with tifffile.TiffWriter(path, ome=ome) as tif:
        if ome:
            tif.write(image, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeY": um}, **kw)
        else:
            res = dict(resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER") if um else {}
            tif.write(image, subifds=2, metadata=None, **res, **kw)
        tif.write(image[::2, ::2], subfiletype=1, **kw)
        tif.write(image[::4, ::4], subfiletype=1, **kw)
    return path


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return read_image(SAMPLE)


def test_lazy_regions_equal_the_whole_image(sample, tmp_path):
    path = _pyramid(tmp_path / "s.tif", sample)
    lazy = LazyImage(path)
    assert lazy.shape == sample.shape and lazy.dtype == np.uint8
    for key in [(slice(10, 200), slice(30, 500)), (slice(None, None, 7), slice(None, None, 5)), (slice(300, None),)]:
        assert np.array_equal(lazy[key], sample[key])
    assert np.array_equal(np.asarray(lazy), sample)
    small = lazy.downscaled(0.25)  # from the smallest pyramid level
    assert small.shape == (120, 160, 3) and np.abs(small.astype(int) - sample[::4, ::4]).mean() < 1
    # 16-bit grey: one range for the whole image, three channels.
    grey = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 7)
    tifffile.imwrite(tmp_path / "g.tif", grey, tile=(16, 16))
    g = LazyImage(tmp_path / "g.tif")
    assert np.array_equal(g[20:40, 8:16], read_image(tmp_path / "g.tif")[20:40, 8:16])
    # ... and a hot pixel is clipped as whole-image reading clips it (stop 67: one range rule for both)
    hot = grey // 10  # 0-3583, and one pixel at 65535
    hot[5, 5] = 65535
    tifffile.imwrite(tmp_path / "h.tif", hot, tile=(16, 16))
    h = LazyImage(tmp_path / "h.tif")
    assert np.array_equal(np.asarray(h), read_image(tmp_path / "h.tif")) and np.asarray(h)[60, 70, 0] > 200
    # ... but on a pyramid's reduced level cells are specks: no speck rule there (a review: the range became the
    # background's, every nucleus saturated)
    rng = np.random.default_rng(0)
    nuclei = (200 + np.linspace(0, 50, 512)[None] + rng.random((512, 512)) * 4).astype(np.uint16)  # a gradient
    for y in range(20, 500, 60):
        for x in range(20, 500, 60):
            nuclei[y:y + 12, x:x + 12] = 4000
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tif:
        tif.write(nuclei, subifds=2, tile=(128, 128))
        for f in (4, 8):  # levels of block means, as scanners write them (the noise averages away)
            tif.write(nuclei.reshape(512 // f, f, 512 // f, f).mean((1, 3)).astype(np.uint16), subfiletype=1,
                      tile=(64, 64))
    pyr = LazyImage(tmp_path / "pyr.tif")
    px = pyr[20:50, 20:50]
    assert px[5, 5, 0] == 255 and px[25, 25, 0] < 20 and pyr._range[1] == 4000, (px[5, 5], px[25, 25], pyr._range)


def test_an_ome_image_of_three_channel_pages_reads_as_one_colour_image_whatever_its_size(tmp_path):
    """A whole-slide walkthrough (stop 67): a CYX OME-TIFF of 3 channels read whole was its first channel ("3 planes
    ... only the first is read"), read region by region (over 8192^2 px) all three, as RGB."""
    cyx = np.stack([np.full((40, 50), v, np.uint16) for v in (4000, 2000, 1000)])
    tifffile.imwrite(tmp_path / "cyx.ome.tif", cyx, photometric="minisblack", metadata={"axes": "CYX"})
    whole, lazy = read_image(tmp_path / "cyx.ome.tif"), np.asarray(LazyImage(tmp_path / "cyx.ome.tif"))
    assert np.array_equal(whole, lazy) and whole[0, 0].tolist() == [255, 85, 0], whole[0, 0]  # one range: 1000-4000
    c4 = np.concatenate([cyx, cyx[:1]])  # four channels: planes, the first read and said (a fourth is no alpha)
    tifffile.imwrite(tmp_path / "c4.ome.tif", c4, photometric="minisblack", metadata={"axes": "CYX"})
    assert (read_image(tmp_path / "c4.ome.tif") == read_image(tmp_path / "c4.ome.tif")[..., :1]).all()


def test_a_lazy_stack_reads_its_first_plane_and_says_so(tmp_path, caplog):
    """A review (stop 65): a large TIFF read region by region dropped a stack's other planes without a word, where
    read_image says so; a pyramid (its levels) and RGB samples are no planes."""
    import logging

    stack = np.stack([np.full((64, 80), v, np.uint8) for v in (10, 20, 30)])
    tifffile.imwrite(tmp_path / "z.tif", stack, tile=(16, 16), photometric="minisblack", metadata={"axes": "ZYX"})
    with caplog.at_level(logging.WARNING):
        z = LazyImage(tmp_path / "z.tif")
        _pyramid(tmp_path / "p.tif", np.full((64, 80, 3), 90, np.uint8))
        LazyImage(tmp_path / "p.tif")
    assert z.shape == (64, 80, 3) and (z[:, :] == 10).all()
    said = [r.getMessage() for r in caplog.records if "only the first is read" in r.getMessage()]
    assert len(said) == 1 and "z.tif: 3 planes" in said[0], said


def test_open_image_is_lazy_over_the_threshold_only(sample, tmp_path, monkeypatch):
    path = _pyramid(tmp_path / "s.tif", sample)
    assert isinstance(open_image(path), np.ndarray)
    monkeypatch.setattr("hemaseg.io.images.LAZY_PIXELS", 1000)
    assert isinstance(open_image(path), LazyImage) and isinstance(open_image(path, lazy=False), np.ndarray)
    assert isinstance(open_image(SAMPLE), np.ndarray)  # JPEGs are read whole
    # --overlay of a slide read region by region is refused before the work (a walkthrough, stop 67: after 72 s of
    # it, its label PNG and JSON written, the slide counted failed)
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["segment", "--task", "wbc", str(path), "--out", str(out), "--overlay"])
    assert res.exit_code == 1 and "no overlay is drawn" in res.output and not list(out.glob("s*")), res.output


def test_wbc_region_by_region_on_a_lazy_image_equals_the_array(sample, tmp_path):
    big = np.concatenate([sample, sample[:, ::-1]], 1)
    lazy = LazyImage(_pyramid(tmp_path / "big.tif", big))
    p = WbcParams(block_size=600)
    a = hemaseg.segment(big, "wbc", cell_diameter=280, params=p)
    b = hemaseg.segment(lazy, "wbc", cell_diameter=280, params=p)
    assert a.count >= 2 and np.array_equal(a.classes, b.classes) and np.array_equal(a.instances, b.instances)
    c = hemaseg.segment(lazy, "wbc", params=p)  # the estimate runs on the pyramid's reduced copy
    assert c.count == a.count and abs(c.cell_diameter / a.cell_diameter - 1) < 0.3


def test_pixel_size_from_tiff_tags_and_ome_sets_the_diameter(sample, tmp_path):
    crop = np.ascontiguousarray(sample[:256, :256])
    tags = _pyramid(tmp_path / "tags.tif", crop, um=0.25)
    ome = _pyramid(tmp_path / "ome.ome.tif", crop, um=0.2, ome=True)
    assert pixel_size_um(tags) == 0.25 and pixel_size_um(ome) == 0.2
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["segment", "--task", "wbc", str(tags), str(ome), "--out", str(out)])
    assert res.exit_code == 0, res.output
    # wbc: a 12 µm white cell; cells: a 7.5 µm red cell.
    assert json.loads((out / "tags.json").read_text())["cell_diameter"] == 48.0
    assert json.loads((out / "ome.ome.json").read_text())["cell_diameter"] == 60.0
    res = CliRunner().invoke(app, ["segment", "--task", "wbc", str(tags), "--out", str(out), "--pixel-size", "0.5"])
    assert res.exit_code == 0 and json.loads((out / "tags.json").read_text())["cell_diameter"] == 24.0
    res = CliRunner().invoke(app, ["segment", "--task", "wbc", str(tags), "--out", str(out), "--cell-diameter",
                                   "30", "--pixel-size", "0.5"])
    assert res.exit_code == 0 and json.loads((out / "tags.json").read_text())["cell_diameter"] == 30.0
    res = CliRunner().invoke(app, ["segment", "--task", "wbc", str(tags), "--out", str(out), "--pixel-size", "-1"])
    assert res.exit_code == 2 and "--pixel-size" in res.output
    # a pixel size giving a cell outside the diameters hemaseg works at was dropped without a word (a walkthrough)
    for cmd in (["segment", "--task", "wbc", str(tags)], ["analyze", str(tags)]):
        res = CliRunner().invoke(app, [*cmd, "--out", str(tmp_path / "px"), "--pixel-size", "10"])
        assert res.exit_code == 2 and "is it in µm per px?" in res.output and not (tmp_path / "px").exists(), res.output



def test_ome_units_of_length_are_read_and_an_unknown_one_is_said(tmp_path, caplog):
    """A whole-slide walkthrough (stop 67): PhysicalSizeXUnit Å and in were taken as no pixel size, without a word."""
    import logging

    img = np.zeros((32, 32, 3), np.uint8)
    for name, size, unit, want in (("a", 750, "Å", 0.075), ("i", 3e-6, "in", 0.0762), ("n", 200, "nm", 0.2),
                                   ("f", 1, "furlong", None)):
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", img, photometric="rgb",
                         metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit})
        with caplog.at_level(logging.WARNING):
            assert pixel_size_um(tmp_path / f"{name}.ome.tif") == want, unit
    assert "PhysicalSizeXUnit 'furlong' is no unit of length" in caplog.text


def test_label_pngs_written_band_by_band_equal_whole_ones(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (700, 230), dtype=np.uint8)
    instances = rng.integers(0, 70000, (700, 230)).astype(np.int32)
    seg = Segmentation(classes, instances, np.zeros((3, 1, 1), np.float32), 10.0, 1.0, [])

    def hook(s):
        return {"": s.instances.astype(np.uint16), "_classes": np.asarray([0, 128, 255], np.uint8)[s.classes]}

    write_segmentation(tmp_path, "whole", Path("x.png"), None, seg, hook, "t", "m")
    monkeypatch.setattr(outputs, "BAND_WRITE_PIXELS", 1000)
    monkeypatch.setattr(outputs, "BAND_ROWS", 64)
    write_segmentation(tmp_path, "bands", Path("x.png"), None, seg, hook, "t", "m")
    for suffix in ("", "_classes"):
        whole = np.asarray(Image.open(tmp_path / f"whole{suffix}.png"))
        assert np.array_equal(whole, np.asarray(Image.open(tmp_path / f"bands{suffix}.png")))
    rgb = rng.integers(0, 255, (50, 31, 3), dtype=np.uint8)
    write_png_bands(tmp_path / "rgb.png", 50, 31, (rgb[y:y + 8] for y in range(0, 50, 8)))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)
    with pytest.raises(ValueError):
        write_png_bands(tmp_path / "short.png", 60, 31, (rgb[y:y + 8] for y in range(0, 50, 8)))
    assert not (tmp_path / "short.png").exists()
