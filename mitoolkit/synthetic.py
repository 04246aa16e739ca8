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
    "dense_image",
    "dense_image_mi",
    "spatial_image",
    "blob_positions",
    "blob_images",
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


def sparse_gaussian(n: int, *, d: int = 25, informative: int = 2, rho: float = 0.9,
                    seed: int = 0) -> Task:
    """x and y of dimension d each, of which only the first ``informative`` pairs are correlated.

    Returns
    -------
    x, y : ndarray of shape (N, d), float32; true_mi : float, ``-informative/2 ln(1 - rho^2)``
    """
    _check_positive_int("d", d)
    _check_positive_int("informative", informative)
    if informative > d:
        raise ValueError(f"informative must be at most d={d}; received {informative!r}.")
    x, y, mi = correlated_gaussian(n, d=d, rho=rho, seed=seed)
    rng = np.random.default_rng([seed, 1])
    y[:, informative:] = rng.standard_normal((n, d - informative)).astype(np.float32)
    return x, y, mi * informative / d


def student_t_mi(*, d: int, rho: float, df: float) -> float:
    """I(X; Y) in nats of the multivariate Student-t of :func:`student_t`.

    With m = 2d and psi the digamma function, the entropy of a d-dimensional t with df degrees of
    freedom contains ``-ln G((df+d)/2) + (df+d)/2 [psi((df+d)/2) - psi(df/2)]`` beyond its
    Gaussian-like terms, so MI = (Gaussian MI of the same correlation) + c(df, d) with
    ``c = ln G((df+m)/2) + ln G(df/2) - 2 ln G((df+d)/2)
    + df+d [psi((df+d)/2) - psi(df/2)] - (df+m)/2 [psi((df+m)/2) - psi(df/2)]``
    (Arellano-Valle, Contreras-Reyes and Genton 2013). c > 0: the shared scale adds dependence.
    """
    from scipy.special import digamma, gammaln

    m = 2 * d
    half, half_d, half_m = df / 2.0, (df + d) / 2.0, (df + m) / 2.0
    correction = (gammaln(half_m) + gammaln(half) - 2.0 * gammaln(half_d)
                  + (df + d) * (digamma(half_d) - digamma(half))
                  - half_m * (digamma(half_m) - digamma(half)))
    return -0.5 * d * math.log(1.0 - rho**2) + float(correction)


def student_t(n: int, *, d: int = 2, rho: float = 0.5, df: float = 3.0, seed: int = 0) -> Task:
    """Heavy tails: a bivariate-pairs Student-t with ``df`` degrees of freedom.

    A correlated Gaussian pair (z_x, z_y) divided by one shared sqrt(chi2(df) / df).

    Returns
    -------
    x, y : ndarray of shape (N, d), float32; true_mi : float (nats), see :func:`student_t_mi`
    """
    _check_positive_int("n", n)
    _check_positive_int("d", d)
    if not df > 0:
        raise ValueError(f"df must be positive; received {df!r}.")
    x, y, _ = correlated_gaussian(n, d=d, rho=rho, seed=seed)
    rng = np.random.default_rng([seed, 2])
    scale = np.sqrt(rng.chisquare(df, size=(n, 1)) / df).astype(np.float32)
    return x / scale, y / scale, student_t_mi(d=d, rho=rho, df=df)


def gaussian_with_mi(n: int, *, mi: float, d: int = 5, seed: int = 0) -> Task:
    """A correlated Gaussian pair of dimension d whose MI is exactly ``mi`` nats (staircases)."""
    if not mi > 0:
        raise ValueError(f"mi must be positive; received {mi!r}.")
    rho = math.sqrt(1.0 - math.exp(-2.0 * mi / d))
    return correlated_gaussian(n, d=d, rho=rho, seed=seed)


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


# --------------------------------------------------------------------------- known-MI images
#
# A low-dimensional correlated Gaussian pair (z, y) with z, y of shape (N, d) and corr(z_j, y_j) = rho
# is drawn; y is returned as is and z is written into images (N, C, H, W). An injective map of z
# keeps I(X; Y) = I(Z; Y) exactly; a Gaussian linear channel has a closed-form MI.

_BLOB_LEVELS = 2**16  # blob intensities are multiples of 1/_BLOB_LEVELS (see spatial_image)


def _check_rho(rho: float) -> None:
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie strictly between -1 and 1; received {rho!r}.")


def _latent_pair(rng: np.random.Generator, n: int, d: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(z, y), each (N, d) float64, with corr(z_j, y_j) = rho and independent coordinates."""
    z = rng.standard_normal((n, d))
    y = rho * z + math.sqrt(1.0 - rho**2) * rng.standard_normal((n, d))
    return z, y


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), three positive integers; received {shape!r}.")
    for name, value in zip(("C", "H", "W"), shape):
        _check_positive_int(f"shape's {name}", value)
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def dense_image_mi(embedding: np.ndarray, *, rho: float, noise: float) -> float:
    """Exact I(X; Y) in nats for X = embedding @ z + noise * e, Y = rho z + sqrt(1 - rho^2) n.

    z, e, n are independent standard normals; z and y are (d,), X is (D,). The statistic
    ``A^T X`` is sufficient for z, so the MI equals that of the d-dimensional pair
    (u, y) with u = z + noise (A^T A)^{-1} A^T e: ``Cov(u) = I + noise^2 (A^T A)^{-1}``,
    ``Cov(u, y) = rho I``, ``Cov(y) = I``.

    Parameters
    ----------
    embedding : ndarray of shape (D, d)
        The matrix A, of full column rank d.
    rho : float
        Correlation of each (z_j, y_j) pair.
    noise : float
        Standard deviation of the independent pixel noise (>= 0).

    Returns
    -------
    float
        I(X; Y) in nats; ``-d/2 ln(1 - rho^2)`` when ``noise == 0``.
    """
    a = np.asarray(embedding, dtype=np.float64)
    d = a.shape[1]
    gram = a.T @ a
    cov = np.zeros((2 * d, 2 * d))
    cov[:d, :d] = np.eye(d) + noise**2 * np.linalg.inv(gram)
    cov[:d, d:] = rho * np.eye(d)
    cov[d:, :d] = rho * np.eye(d)
    cov[d:, d:] = np.eye(d)
    return gaussian_mi(cov, d)


def dense_image(
    n: int,
    *,
    d: int = 2,
    rho: float = 0.8,
    shape: tuple[int, int, int] = (4, 8, 8),
    noise: float = 0.1,
    seed: int = 0,
) -> Task:
    """Images in which every pixel mixes the latents: x = reshape(A z) + noise, y the partner of z.

    A is a fixed random (C*H*W, d) matrix with N(0, 1/d) entries (so each noiseless pixel has
    variance about 1), drawn from ``seed`` before the samples, so it does not depend on ``n``. The
    signal lies in a d-dimensional subspace that the top d principal components recover: PCA with
    ``n_components >= d`` loses (almost) nothing. Global average pooling keeps C linear mixtures
    of z (all of it when C >= d, up to the averaged noise).

    Parameters
    ----------
    n : int
        Number of samples N.
    d : int
        Latent dimension (coordinate pairs); at most C*H*W.
    rho : float
        Correlation of each latent pair, in (-1, 1).
    shape : (C, H, W)
        Image shape.
    noise : float
        Standard deviation of independent Gaussian pixel noise (>= 0). The true MI accounts for
        it exactly (:func:`dense_image_mi`); with ``noise=0`` the map is injective and the MI is
        ``-d/2 ln(1 - rho^2)``.
    seed : int
        Seed of the generator (embedding and samples).

    Returns
    -------
    x : ndarray (N, C, H, W), float32
    y : ndarray (N, d), float32
    true_mi : float
        I(X; Y) in nats.
    """
    _check_positive_int("n", n)
    _check_positive_int("d", d)
    _check_rho(rho)
    shape = _check_shape(shape)
    pixels = shape[0] * shape[1] * shape[2]
    if d > pixels:
        raise ValueError(
            f"d must be at most C*H*W = {pixels} for shape={shape} (the embedding must be "
            f"injective); received d={d}. Use a larger shape or a smaller d."
        )
    if not noise >= 0.0 or not math.isfinite(noise):
        raise ValueError(f"noise must be a finite standard deviation >= 0; received {noise!r}.")
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((pixels, d)) / math.sqrt(d)
    if np.linalg.matrix_rank(embedding) < d:  # probability zero; checked, not assumed
        raise RuntimeError(f"the random embedding for seed={seed} is rank-deficient; use another seed.")
    z, y = _latent_pair(rng, n, d, rho)
    x = z @ embedding.T
    if noise > 0.0:
        x = x + noise * rng.standard_normal(x.shape)
    true_mi = dense_image_mi(embedding, rho=rho, noise=noise)
    return x.reshape(n, *shape).astype(np.float32), y.astype(np.float32), true_mi


def blob_positions(z: np.ndarray, *, size: int) -> np.ndarray:
    """Pixel coordinates of the blobs: ``(size - 1)/2 + (size/2 - 1.5) tanh(z / 2)``.

    A strictly increasing map of each latent into the open interval (1, size - 2) (pixels from the
    border), so the blob never touches the edge. Same shape as ``z``.
    """
    centre = (size - 1) / 2.0
    half_range = size / 2.0 - 1.5
    return centre + half_range * np.tanh(np.asarray(z, dtype=np.float64) / 2.0)


def spatial_image(
    n: int,
    *,
    d: int = 2,
    rho: float = 0.8,
    size: int = 8,
    width: float = 1.0,
    seed: int = 0,
) -> Task:
    """Images where each latent sets *where* a blob sits: global average pooling keeps nothing.

    Channel k (k = 0 .. ceil(d/2) - 1) holds one Gaussian blob of standard deviation ``width``
    pixels; latent 2k sets its row and latent 2k + 1 its column (an odd d leaves the last blob on
    the middle column), through the strictly increasing :func:`blob_positions` (rendered by
    :func:`blob_images`). A blob's row (column) is recoverable from the image, e.g. from the
    log-ratio of the two brightest entries of its row (column) profile, so the map is injective
    and ``I(X; Y) = I(Z; Y) = -d/2 ln(1 - rho^2)``.

    Every channel has the same total intensity, exactly: intensities are multiples of 2^-16 whose
    sum is 1 per channel (one pixel absorbs the rounding), so float32 sums are exact and the
    channel mean is the constant 1/size^2. GAP-MINE therefore sees constant features and the MI
    left after pooling is 0: the data-processing inequality at its most visible. The rounding to
    2^-16 blurs z by about 1e-3 at most (the map is injective up to that resolution), which
    changes the MI by far less than 1e-4 nats.

    Parameters
    ----------
    n : int
        Number of samples N.
    d : int
        Latent dimension (coordinate pairs).
    rho : float
        Correlation of each latent pair, in (-1, 1).
    size : int
        Height and width H = W of the images (>= 5).
    width : float
        Standard deviation of the blobs in pixels, in [0.5, size / 4].
    seed : int
        Seed of the generator.

    Returns
    -------
    x : ndarray (N, ceil(d/2), size, size), float32
        Non-negative intensities; each channel sums to 1.
    y : ndarray (N, d), float32
    true_mi : float
        ``-d/2 ln(1 - rho^2)`` nats.
    """
    _check_positive_int("n", n)
    _check_positive_int("d", d)
    _check_rho(rho)
    _check_positive_int("size", size)
    if size < 5:
        raise ValueError(f"size must be at least 5 pixels (room for a blob to move); received {size}.")
    if not 0.5 <= width <= size / 4.0:
        raise ValueError(
            f"width must lie in [0.5, size/4 = {size / 4.0}] pixels (a narrower blob falls between "
            f"pixels, a wider one is cut by the border); received {width!r}."
        )
    rng = np.random.default_rng(seed)
    z, y = _latent_pair(rng, n, d, rho)
    x = blob_images(z, size=size, width=width)
    return x, y.astype(np.float32), -0.5 * d * math.log(1.0 - rho**2)


def blob_images(z: np.ndarray, *, size: int = 8, width: float = 1.0) -> np.ndarray:
    """Render latents as blob positions, the map behind :func:`spatial_image`.

    Parameters
    ----------
    z : ndarray of shape (N, d)
        Latents; 2k and 2k + 1 set the row and the column of the blob in channel k.
    size : int
        Height and width of the images (pixels).
    width : float
        Standard deviation of the blobs (pixels).

    Returns
    -------
    ndarray of shape (N, ceil(d/2), size, size), float32
        Non-negative intensities, multiples of 2^-16, each channel summing to exactly 1.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"z must have shape (N, d); received shape {z.shape}.")
    n, d = z.shape
    channels = (d + 1) // 2
    rows_cols = np.full((n, 2 * channels), (size - 1) / 2.0)
    rows_cols[:, :d] = blob_positions(z, size=size)
    grid = np.arange(size, dtype=np.float64)
    rows = np.exp(-0.5 * ((grid - rows_cols[:, 0::2, None]) / width) ** 2)  # (N, channels, H)
    cols = np.exp(-0.5 * ((grid - rows_cols[:, 1::2, None]) / width) ** 2)  # (N, channels, W)
    return _quantize_to_unit_sum(rows[..., :, None] * cols[..., None, :]).astype(np.float32)


def _quantize_to_unit_sum(maps: np.ndarray) -> np.ndarray:
    """Scale each (H, W) map of (N, C, H, W) to sum 1, in exact multiples of 1/_BLOB_LEVELS."""
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
    levels = np.rint(flat / flat.sum(axis=-1, keepdims=True) * _BLOB_LEVELS)
    shortfall = _BLOB_LEVELS - levels.sum(axis=-1)  # a few levels at most
    brightest = levels.argmax(axis=-1)
    np.put_along_axis(
        levels, brightest[..., None],
        np.take_along_axis(levels, brightest[..., None], axis=-1) + shortfall[..., None], axis=-1,
    )
    return (levels / _BLOB_LEVELS).reshape(maps.shape)
