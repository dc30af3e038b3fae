"""Large images region by region (issue 20, memory flat in image size): the wbc task cuts an image
longer than WbcParams.block_size into overlapping blocks; the output must be the whole image's."""
import numpy as np
import pytest

import hemaseg
from helpers import ThresholdNet
from hemaseg.engine.blocks import image_blocks
from hemaseg.tasks.wbc import WbcParams, segment_wbc

CARD = {"cell_diameter": 28.0, "normalization": {"low": 1.0, "high": 99.0}}
RADIUS = 14
SIZE = 304
BLOCKS = WbcParams(block_size=160)  # margin ceil(1.5 * 28) = 42 px, cores of 76 px: 4 x 4 blocks
# Cores are cut at 76, 152, 228 px. Cells well inside cores, and one centred on the core border x = 152.
CENTRES = [(38, 38), (38, 114), (114, 38), (190, 266), (266, 190), (266, 38), (114, 266)]
STRADDLING = (114, 152)


def smear(centres, size=SIZE, radius=RADIUS, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (235, 215, 215)
    for cy, cx in centres:
        d = np.hypot(yy - cy, xx - cx)
        img[d < radius] = (180, 150, 215)
        img[(np.hypot(yy - cy - radius / 5, xx - cx) < radius * 0.55) & (d < radius)] = (90, 40, 130)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def masks(seg):
    """{frozenset of pixel indices: object record} of a segmentation's instances."""
    out = {}
    for o in seg.objects:
        out[frozenset(np.flatnonzero(seg.instances.ravel() == o["id"]).tolist())] = o
    return out


def test_blocks_cover_the_image_once():
    blocks = image_blocks((SIZE, SIZE), 76, 42)
    cover = np.zeros((SIZE, SIZE), int)
    for b in blocks:
        y0, y1, x0, x1 = b.core
        cover[y0:y1, x0:x1] += 1
    assert len(blocks) == 16 and (cover == 1).all()
    assert blocks[5].outer == (34, 194, 34, 194)


def test_region_by_region_equals_whole_image():
    image = smear(CENTRES + [STRADDLING])
    model = (ThresholdNet(), CARD)
    whole = segment_wbc(image, model, cell_diameter=28.0)
    blocks = segment_wbc(image, model, cell_diameter=28.0, params=BLOCKS)
    assert whole.count == len(CENTRES) + 1
    assert blocks.count == whole.count
    assert blocks.instances.dtype == np.uint16 and blocks.classes.dtype == np.uint8
    # The same cells, pixel for pixel, with the same classes and scores.
    np.testing.assert_array_equal(blocks.classes, whole.classes)
    got, want = masks(blocks), masks(whole)
    assert got.keys() == want.keys()
    for pix, o in want.items():
        assert got[pix]["score"] == o["score"] and got[pix]["area"] == o["area"]
        assert got[pix]["nucleus_area"] == o["nucleus_area"]
    # The cell on the border between two cores comes out once, whole.
    cy, cx = STRADDLING
    k = blocks.instances[cy, cx]
    assert k > 0 and np.count_nonzero(blocks.instances[cy, cx - 20:cx + 21] == k) == np.count_nonzero(
        whole.instances[cy, cx - 20:cx + 21] == whole.instances[cy, cx])
    assert len(np.unique(blocks.instances[cy - RADIUS:cy + RADIUS, cx - RADIUS:cx + RADIUS])) == 2
    # probs: pieced together from the blocks' cores (downsampled only past PROBS_SUMMARY_SIZE px).
    assert whole.probs.shape == blocks.probs.shape == (3, SIZE, SIZE) and blocks.probs.dtype == np.float32
    np.testing.assert_allclose(blocks.probs, whole.probs, atol=1e-6)


def test_probs_summary_of_a_large_image(monkeypatch):
    import hemaseg.tasks.wbc as wbc

    monkeypatch.setattr(wbc, "PROBS_SUMMARY_SIZE", SIZE // 4)
    image = smear(CENTRES + [STRADDLING])
    seg = segment_wbc(image, (ThresholdNet(), CARD), cell_diameter=28.0, params=BLOCKS)
    assert seg.probs.shape == (3, SIZE // 4, SIZE // 4) and seg.classes.shape == (SIZE, SIZE)
    assert seg.count == len(CENTRES) + 1
    cy, cx = CENTRES[0]
    assert seg.probs[0, 2, 2] > 0.9 and seg.probs[0, cy // 4, cx // 4] < 0.1  # background, cell


def test_region_by_region_estimates_the_diameter():
    image = smear(CENTRES + [STRADDLING])
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), params=BLOCKS)
    assert seg.cell_diameter == pytest.approx(2 * RADIUS, rel=0.15)
    assert seg.count == len(CENTRES) + 1


def test_the_diameter_of_a_large_image_is_estimated_at_full_resolution(monkeypatch):
    """On a copy of the whole image shrunk to the estimate's size, small WBCs went below what the
    network's first pass can see (the 4000x3000 mosaic's estimate settled 4x off): the estimate is
    made on the central square at full resolution, and the result is the same as with the size given."""
    import hemaseg.tasks.wbc as W

    image = smear(CENTRES + [STRADDLING])
    seen, estimate = [], W._estimate_scale

    def spy(module, card, im, *args, **kwargs):
        seen.append(im)
        return estimate(module, card, im, *args, **kwargs)

    monkeypatch.setattr(W, "_estimate_scale", spy)
    monkeypatch.setattr(W, "ESTIMATE_SIZE", 128)  # the central 128-px square holds one whole cell
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), params=BLOCKS)
    assert len(seen) == 1 and np.array_equal(seen[0], image[88:216, 88:216])
    assert seg.cell_diameter == pytest.approx(2 * RADIUS, rel=0.15)
    assert seg.count == len(CENTRES) + 1


@pytest.mark.parametrize("centre_cell", [True, False])
def test_the_first_pass_sees_the_centre_of_a_large_image_first(monkeypatch, centre_cell):
    """The scale search's first pass runs on the central FIRST_PASS_SIZE-px square of a larger image
    (a quarter of a 2048x2048 one) and on the whole image only when that square shows no cell (here
    a lone red cell); the estimate and the cells are those of the size given either way."""
    import hemaseg.tasks.wbc as W

    image = smear(CENTRES + ([STRADDLING] if centre_cell else []))
    if not centre_cell:  # a red cell, no WBC, in the central square
        yy, xx = np.mgrid[:SIZE, :SIZE]
        image[np.hypot(yy - 152, xx - 152) < 9] = (215, 140, 150)
    seen, measure = [], W._measure_small

    def spy(module, card, im, *args, **kwargs):
        seen.append(im.shape[:2])
        return measure(module, card, im, *args, **kwargs)

    monkeypatch.setattr(W, "_measure_small", spy)
    monkeypatch.setattr(W, "FIRST_PASS_SIZE", 128)
    p = WbcParams(size_model="none", red_cells="none")
    seg = segment_wbc(image, (ThresholdNet(), CARD), params=p)
    assert seen[0] == (128, 128)
    assert seen[1:] == ([] if centre_cell else [(SIZE, SIZE)])
    given = segment_wbc(image, (ThresholdNet(), CARD), cell_diameter=28.0, params=p)
    assert seg.cell_diameter == pytest.approx(2 * RADIUS, rel=0.15)
    assert seg.count == given.count == len(CENTRES) + centre_cell


def test_a_large_image_shows_progress_block_by_block(monkeypatch):
    """A whole-slide walkthrough (stop 67): the batch's bar stood at 0/1 for the minutes a slide took; its blocks have a
    bar of their own (an image of one block, none)."""
    import hemaseg.tasks.wbc as wbc_module

    seen = []

    def track(items, desc, **kw):
        seen.append((desc, len(items)))
        return items

    monkeypatch.setattr(wbc_module, "track", track)
    segment_wbc(smear(CENTRES), (ThresholdNet(), CARD), cell_diameter=28.0, params=BLOCKS)
    assert seen == [("blocks", 16)], seen
    seen.clear()
    segment_wbc(smear(CENTRES), (ThresholdNet(), CARD), cell_diameter=28.0)
    assert seen == []
