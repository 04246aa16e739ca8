"""Known-MI generators: their samples have the distribution their truth claims."""
import math

import numpy as np
import pytest

from mitoolkit import synthetic


def test_correlated_gaussian_formula_and_correlation():
    x, y, mi = synthetic.correlated_gaussian(20000, d=3, rho=0.6, seed=1)
    assert x.shape == y.shape == (20000, 3) and x.dtype == np.float32
    assert mi == pytest.approx(-1.5 * math.log(1 - 0.36))
    corr = [np.corrcoef(x[:, i], y[:, i])[0, 1] for i in range(3)]
    assert np.allclose(corr, 0.6, atol=0.02)


def test_covariance_generator_agrees_with_the_pairwise_formula():
    rho = 0.7
    cov = np.array([[1, 0, rho, 0], [0, 1, 0, rho], [rho, 0, 1, 0], [0, rho, 0, 1]], dtype=float)
    x, y, mi = synthetic.gaussian_from_covariance(100, cov, dim_x=2)
    assert x.shape == (100, 2) and y.shape == (100, 2)
    assert mi == pytest.approx(-math.log(1 - rho**2))


def test_uniform_noise_channel_entropy_formula():
    x, y, mi = synthetic.uniform_noise_channel(200000, d=1, eps=0.2, seed=0)
    assert mi == pytest.approx(0.1 - math.log(0.2))
    # h(Y) = eps / 2 for the trapezoid density: check it with a histogram estimate.
    density, edges = np.histogram(y[:, 0], bins=600, range=(0, 1.2), density=True)
    width = edges[1] - edges[0]
    positive = density > 0
    h_y = -np.sum(density[positive] * np.log(density[positive])) * width
    assert h_y == pytest.approx(0.1, abs=0.01)


def test_cubic_keeps_the_truth_and_independent_is_zero():
    _, y, mi = synthetic.cubic_gaussian(10, d=3, rho=0.8)
    assert mi == pytest.approx(1.5324768712979724)
    _, _, zero = synthetic.independent(10, d=4)
    assert zero == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: synthetic.correlated_gaussian(10, rho=1.0), "rho must lie strictly between"),
        (lambda: synthetic.correlated_gaussian(0), "n must be a positive integer"),
        (lambda: synthetic.gaussian_from_covariance(10, np.eye(3) * -1, dim_x=1), "positive definite"),
        (lambda: synthetic.uniform_noise_channel(10, eps=2.0), r"eps must lie in \(0, 1\]"),
    ],
)
def test_bad_parameters(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_student_t_formula_tends_to_the_gaussian_and_matches_knn():
    from sklearn.feature_selection import mutual_info_regression

    gaussian = synthetic.correlated_gaussian(2, d=2, rho=0.5)[2]
    assert synthetic.student_t_mi(d=2, rho=0.5, df=1e7) == pytest.approx(gaussian, abs=1e-5)
    assert synthetic.student_t_mi(d=2, rho=0.5, df=3) > gaussian + 0.05  # shared scale adds MI
    x, y, true_mi = synthetic.student_t(20000, d=1, rho=0.5, df=3, seed=0)
    knn = mutual_info_regression(x, y[:, 0], n_neighbors=5, random_state=0)[0]
    assert knn == pytest.approx(true_mi, abs=0.03)


def test_sparse_and_staircase_truths():
    x, y, mi = synthetic.sparse_gaussian(5000, d=25, informative=2, rho=0.9)
    assert x.shape == y.shape == (5000, 25)
    assert mi == pytest.approx(-math.log(1 - 0.81))
    assert abs(np.corrcoef(x[:, 5], y[:, 5])[0, 1]) < 0.05
    assert np.corrcoef(x[:, 1], y[:, 1])[0, 1] == pytest.approx(0.9, abs=0.02)
    assert synthetic.gaussian_with_mi(10, mi=6.0, d=5)[2] == pytest.approx(6.0)
