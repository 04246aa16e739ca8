"""estimate_mi against distributions whose true MI is known, at N = 5,000 (issue 2's tolerances).

Tolerance: max(0.1 nats, 10 % of the truth). Default options, seed 0; each run takes seconds.
"""
import pytest

from mitoolkit import estimate_mi, synthetic


def tolerance(true_mi: float) -> float:
    return max(0.1, 0.1 * true_mi)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, expected",
    [
        (lambda: synthetic.correlated_gaussian(5000, d=1, rho=0.9), 0.830),
        (lambda: synthetic.correlated_gaussian(5000, d=5, rho=0.8), 2.554),
        (lambda: synthetic.cubic_gaussian(5000, d=3, rho=0.8), 1.532),
    ],
    ids=["gaussian-d1-rho0.9", "gaussian-d5-rho0.8", "cubic-d3-rho0.8"],
)
def test_estimate_within_tolerance_of_truth(task, expected):
    x, y, true_mi = task()
    assert true_mi == pytest.approx(expected, abs=1e-3)
    result = estimate_mi(x, y, progress=False, seed=0)
    assert abs(result.mi - true_mi) <= tolerance(true_mi), str(result)
    assert result.n_test + result.n_valid + result.n_train == 5000
    assert result.ci95[0] < result.mi < result.ci95[1]


@pytest.mark.slow
def test_independent_variables_give_near_zero():
    x, y, true_mi = synthetic.independent(5000, d=10)
    assert true_mi == 0.0
    result = estimate_mi(x, y, progress=False, seed=0)
    assert abs(result.mi) < 0.05, str(result)


def test_mine_f_bound_on_a_small_gaussian():
    x, y, true_mi = synthetic.correlated_gaussian(3000, d=1, rho=0.9, seed=3)
    result = estimate_mi(x, y, bound="mine-f", progress=False, seed=0)
    assert abs(result.mi - true_mi) <= 0.15, str(result)
