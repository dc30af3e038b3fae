"""Metrics checked against values computed another way, and the inputs they refuse (with a message saying why)."""
import math
import typing

import numpy as np
import pytest

from hemaseg.metrics import (
    binomial_ci,
    classification_report,
    coco_box_map,
    confusion_matrix,
    detection_ap,
    dsb_scores,
    matching_counts,
)


def _binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """By definition, solved by bisection on the binomial tails (no scipy): the lower bound is the p
    at which P(X >= k) = alpha/2, the upper one the p at which P(X <= k) = alpha/2."""
    def solve(f, lo=0.0, hi=1.0):  # f increasing in p
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: (1 - _binom_cdf(k - 1, n, p)) - alpha / 2)
    high = 1.0 if k == n else solve(lambda p: alpha / 2 - _binom_cdf(k, n, p))
    return low, high


def test_known_binomial_cases():
    # 0 of 100: the upper bound solves (1 - p)^100 = 0.025.
    lo, hi = binomial_ci(0, 100)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), abs=1e-12)
    assert round(100 * hi, 2) == 3.62
    # 50 of 100: 39.8 % to 60.2 % (Rümke's table, rounded to whole percent: 40-60).
    lo, hi = binomial_ci(50, 100)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (39.8, 60.2)
    assert lo + hi == pytest.approx(1.0)  # symmetric at one half
    # n of n: the lower bound solves p^n = 0.025.
    assert binomial_ci(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (1, 3), (3, 10), (7, 20), (12, 100), (95, 100), (1, 200)])
def test_matches_the_definition(k, n):
    assert binomial_ci(k, n) == pytest.approx(_clopper_pearson(k, n), abs=1e-9)


def test_no_cell_counted_and_bad_arguments():
    assert binomial_ci(0, 0) == (0.0, 1.0)
    assert binomial_ci(5, 100, 0.99)[1] > binomial_ci(5, 100)[1]
    for k, n in ((3, 2), (-1, 5), (1.5, 3)):
        with pytest.raises(ValueError):
            binomial_ci(k, n)
    with pytest.raises(ValueError):
        binomial_ci(1, 2, confidence=1.0)


def test_dsb_scores_refuses_labels_it_cannot_score():
    """Shapes that differ, an RGB label image or negative labels: a ValueError saying so (numpy's broadcast
    error, or the background counted as a nucleus: n_pred 3, dsb 0.667)."""
    t = np.zeros((8, 8), int)
    t[:4, :4] = 1
    for pred, says in ((np.zeros((8, 9), int), "differ in shape"), (np.zeros((8, 8, 3), int), "label image"),
                       (-t, "negative")):
        with pytest.raises(ValueError, match=says):
            dsb_scores(pred, t)


def test_matching_below_half_is_refused_not_counted_twice():
    """Below IoU 0.5 one prediction may match two targets: FP went negative ((2, -1, 0)); dsb_scores took any
    thresholds."""
    with pytest.raises(ValueError, match="0.3"):
        matching_counts(np.array([[0.4], [0.4]]), 0.3)
    assert matching_counts(np.array([[0.6], [0.0]]), 0.5) == (1, 0, 1)
    t = np.zeros((8, 8), int)
    t[:4, :4] = 1
    with pytest.raises(ValueError, match="0.3"):
        dsb_scores(t, t, thresholds=(0.3, 0.5))
    assert dsb_scores(t, t, thresholds=(0.5, 0.9))["dsb"] == 1.0


def test_confusion_matrix_refuses_class_indices_out_of_range():
    """An index of K or more, or a negative one, was counted in a wrong cell (or a bincount error)."""
    with pytest.raises(ValueError, match=r"y_pred.*\b2\b.*2 classes"):
        confusion_matrix([0], [2], 2)
    with pytest.raises(ValueError, match=r"y_pred.*-1.*2 classes"):
        confusion_matrix([1], [-1], 2)  # 1 * 2 - 1 = 1: was counted as (0, 1)
    with pytest.raises(ValueError, match=r"y_true.*\b3\b.*2 classes"):
        classification_report([3], [0], ["a", "b"])
    assert confusion_matrix([1, 0], [1, 1], 2).tolist() == [[0, 1], [0, 1]]


def test_dsb_scores_of_an_empty_image_says_so_and_counts_are_ints():
    empty = np.zeros((0, 5), int)
    with pytest.raises(ValueError, match="empty"):
        dsb_scores(empty, empty)
    ret = typing.get_type_hints(dsb_scores)["return"]
    assert int in typing.get_args(typing.get_args(ret)[1])


def test_coco_box_map_empty_cases_agree_with_detection_ap_and_unknown_images_are_named():
    """No truth box: nan (it gave 0.0 with no detection, nan with some); a detection on an image not in
    ``sizes``: pycocotools' bare AssertionError."""
    det = {"rbc": [(0, 0.9, (0, 0, 10, 10))]}
    none = {"rbc": []}
    boxed, unboxed = {"rbc": {0: [(0, 0, 10, 10)]}}, {"rbc": {0: []}}
    sizes = {0: (20, 20)}
    assert math.isnan(detection_ap([], {})) and math.isnan(coco_box_map(none, unboxed, sizes, ("rbc",)))
    assert math.isnan(coco_box_map(det, unboxed, sizes, ("rbc",)))
    assert math.isnan(coco_box_map(none, {"rbc": {5: [(0, 0, 10, 10)]}}, sizes, ("rbc",)))  # image 5 not evaluated
    assert coco_box_map(none, boxed, sizes, ("rbc",)) == 0.0 == detection_ap([], boxed["rbc"])
    with pytest.raises(ValueError, match="image id 7"):
        coco_box_map({"rbc": [(7, 0.9, (0, 0, 10, 10))]}, boxed, sizes, ("rbc",))
