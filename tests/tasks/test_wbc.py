import numpy as np
import pytest

import hemaseg
from helpers import ThresholdNet, toy_wbc
from hemaseg.core.labels import measure_diameter
from hemaseg.tasks.wbc import WbcParams, scale_factor

SCALE_DEADBAND = WbcParams().scale_deadband

CARD = {"cell_diameter": 48.0, "normalization": {"low": 1.0, "high": 99.0}}


@pytest.mark.parametrize("radius", [24, 60, 100])
def test_diameter_is_estimated_at_any_magnification(radius):
    size = int(radius * 5)
    image, mask = toy_wbc(np.random.default_rng(1), size=size, radius=radius, center=(size / 2, size / 2))
    seg = hemaseg.segment(image, (ThresholdNet(), CARD))
    assert seg.cell_diameter == pytest.approx(2 * radius, rel=0.15)
    # The scale used is within the dead-band of the ideal one.
    assert abs(np.log(seg.scale / scale_factor(CARD, 2 * radius))) <= np.log(SCALE_DEADBAND) + 1e-6
    assert seg.count == 1
    # Whatever the scale used inside, the output is at the input's size and right.
    assert seg.classes.shape == mask.shape
    from hemaseg.metrics import dice

    assert dice(seg.classes > 0, mask > 0) > 0.9


def test_given_diameter_is_used_and_no_estimate_needed():
    image, _ = toy_wbc(np.random.default_rng(2), size=300, radius=60, center=(150, 150))
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), cell_diameter=120)
    assert seg.cell_diameter == 120 and seg.scale == pytest.approx(0.4)


def test_scale_factor_deadband_and_limits():
    assert scale_factor(CARD, 50) == 1.0  # within 25 %: native scale
    assert scale_factor(CARD, 96) == pytest.approx(0.5)
    assert scale_factor(CARD, 1) == 4.0 and scale_factor(CARD, None) == 1.0


def test_measure_diameter_prefers_inner_cells_and_ignores_fragments():
    m = np.zeros((200, 200), bool)
    yy, xx = np.mgrid[:200, :200]
    m[(yy - 100) ** 2 + (xx - 100) ** 2 < 30**2] = True  # a cell, diameter 60
    m[(yy - 20) ** 2 + (xx - 150) ** 2 < 4**2] = True  # a fragment
    m[:10, :10] = True  # a piece cut by the border
    assert measure_diameter(m, min_area=5) == pytest.approx(60, rel=0.05)
    assert measure_diameter(np.zeros((5, 5), bool)) is None


def test_red_cells_without_nucleus_are_not_wbcs():
    image, _ = toy_wbc(np.random.default_rng(3), size=200, radius=30, center=(100, 100))
    # A pale, nucleus-free disc the colour of cytoplasm: a red cell to the stand-in model.
    yy, xx = np.mgrid[:200, :200]
    image[(yy - 40) ** 2 + (xx - 40) ** 2 < 25**2] = (180, 150, 215)
    seg = hemaseg.segment(image, (ThresholdNet(), CARD), cell_diameter=60)
    assert seg.count == 1 and seg.classes[40, 40] == 0
