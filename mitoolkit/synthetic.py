"""Tasks whose true mutual information is known, for tests, benchmarks and teaching.

Every generator returns ``(x, y, true_mi)``: two float32 arrays with the same number of rows N and
the exact mutual information I(X; Y) in nats. Each takes a ``seed`` and uses its own
:class:`numpy.random.Generator`, so no global random state is touched.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "correlated_gaussian",
    "gaussian_from_covariance",
    "gaussian_mi",
    "uniform_noise_channel",
    "cubic_gaussian",
    "independent",
]

Task = tuple[np.ndarray, np.ndarray, float]


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}.")


def correlated_gaussian(n: int, *, d: int = 1, rho: float = 0.9, seed: int = 0) -> Task:
    """d independent pairs of standard normals, each pair with correlation ``rho``.

    Parameters
    ----------
    n : int
        Number of samples N.
    d : int
        Number of coordinate pairs; x and y are (N, d).
    rho : float
        Correlation of each pair, in (-1, 1).
    seed : int
        Seed of the generator.

    Returns
    -------
    x, y : ndarray of shape (N, d), float32
    true_mi : float
        ``-d/2 ln(1 - rho^2)`` nats.
    """
    _check_positive_int("n", n)
    _check_positive_int("d", d)
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie strictly between -1 and 1; received {rho!r}.")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    noise = rng.standard_normal((n, d))
    y = rho * x + math.sqrt(1.0 - rho**2) * noise
    return x.astype(np.float32), y.astype(np.float32), -0.5 * d * math.log(1.0 - rho**2)


def gaussian_mi(cov: np.ndarray, dim_x: int) -> float:
    """I(X; Y) in nats of a joint Gaussian whose first ``dim_x`` coordinates are X.

    ``I = (ln det S_xx + ln det S_yy - ln det S) / 2``.
    """
    cov = np.asarray(cov, dtype=np.float64)
    _, logdet = np.linalg.slogdet(cov)
    _, logdet_x = np.linalg.slogdet(cov[:dim_x, :dim_x])
    _, logdet_y = np.linalg.slogdet(cov[dim_x:, dim_x:])
    return 0.5 * (logdet_x + logdet_y - logdet)


def gaussian_from_covariance(n: int, cov: np.ndarray, *, dim_x: int, seed: int = 0) -> Task:
    """Samples of a zero-mean Gaussian with covariance ``cov``, split into X (first ``dim_x``) and Y.

    Parameters
    ----------
    n : int
        Number of samples N.
    cov : ndarray of shape (D, D)
        Symmetric positive definite covariance; D = dim_x + dim_y.
    dim_x : int
        Number of coordinates that form X; the remaining ones form Y.
    seed : int
        Seed of the generator.

    Returns
    -------
    x : ndarray (N, dim_x); y : ndarray (N, D - dim_x); true_mi : float (nats)
    """
    _check_positive_int("n", n)
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be a square (D, D) matrix; received shape {cov.shape}.")
    if not 0 < dim_x < cov.shape[0]:
        raise ValueError(
            f"dim_x must be between 1 and D-1 = {cov.shape[0] - 1}; received {dim_x!r}."
        )
    if not np.allclose(cov, cov.T):
        raise ValueError("cov must be symmetric; received a matrix that is not (cov != cov.T).")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(
            "cov must be positive definite (its Cholesky factorization failed); add a small "
            "multiple of the identity or check the matrix."
        ) from None
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, cov.shape[0])) @ chol.T
    z = z.astype(np.float32)
    return z[:, :dim_x], z[:, dim_x:], gaussian_mi(cov, dim_x)


def uniform_noise_channel(n: int, *, d: int = 1, eps: float = 0.1, seed: int = 0) -> Task:
    """Additive uniform noise: X ~ U[0, 1]^d, Y = X + E with E ~ U[0, eps]^d independent of X.

    Per coordinate, h(Y) = eps/2 and h(E) = ln(eps) (for eps <= 1), so
    ``I(X; Y) = d (eps/2 - ln eps)`` nats.

    Returns
    -------
    x, y : ndarray of shape (N, d), float32; true_mi : float (nats)
    """
    _check_positive_int("n", n)
    _check_positive_int("d", d)
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must lie in (0, 1]; received {eps!r}.")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, d))
    y = x + rng.uniform(0.0, eps, (n, d))
    return x.astype(np.float32), y.astype(np.float32), d * (eps / 2.0 - math.log(eps))


def cubic_gaussian(n: int, *, d: int = 3, rho: float = 0.8, seed: int = 0) -> Task:
    """A correlated Gaussian pair with y replaced by y**3: an invertible map, so MI is unchanged.

    Returns
    -------
    x, y : ndarray of shape (N, d), float32; true_mi : float, ``-d/2 ln(1 - rho^2)`` nats
    """
    x, y, mi = correlated_gaussian(n, d=d, rho=rho, seed=seed)
    return x, y**3, mi


def independent(n: int, *, d: int = 10, seed: int = 0) -> Task:
    """Independent standard normal x and y of dimension d each: I(X; Y) = 0.

    Returns
    -------
    x, y : ndarray of shape (N, d), float32; true_mi : 0.0
    """
    _check_positive_int("n", n)
    _check_positive_int("d", d)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal((n, d)).astype(np.float32)
    return x, y, 0.0
