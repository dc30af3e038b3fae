"""The exact binomial interval of a differential count, checked against values computed another way."""
import math

import numpy as np
import pytest

from hemaseg.metrics import binomial_ci, dsb_scores


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
