"""Known-MI image tasks: shapes, exact truths, injectivity, and what pooling keeps."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from mitoolkit import synthetic
from mitoolkit.synthetic import (
    blob_images,
    blob_positions,
    dense_image,
    dense_image_mi,
    spatial_image,
)


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small SVDs: one BLAS thread is much faster than two competing on shared cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def decode_blobs(x: np.ndarray, *, d: int, size: int = 8, width: float = 1.0) -> np.ndarray:
    """Invert :func:`blob_images`: latents (N, d) from images (N, ceil(d/2), size, size).

    A Gaussian profile m(i) ~ exp(-(i - p)^2 / 2 w^2) gives p = a + 1/2 + w^2 ln(m(a+1) / m(a))
    for any neighbouring pair; the two brightest entries are the most precise.
    """
    x = np.asarray(x, dtype=np.float64)
    positions = []
    for k in range(x.shape[1]):
        for profile in (x[:, k].sum(axis=2), x[:, k].sum(axis=1)):  # row profile, column profile
            peak = profile.argmax(axis=1)
            rows = np.arange(len(profile))
            left = np.where(profile[rows, peak + 1] > profile[rows, peak - 1], peak, peak - 1)
            ratio = profile[rows, left + 1] / profile[rows, left]
            positions.append(left + 0.5 + width**2 * np.log(ratio))
    positions = np.stack(positions, axis=1)[:, :d]
    centre, half_range = (size - 1) / 2.0, size / 2.0 - 1.5
    return 2.0 * np.arctanh((positions - centre) / half_range)


def sample_gaussian_mi(a: np.ndarray, b: np.ndarray) -> float:
    """MI of the Gaussian with the sample covariance of (a, b): a plug-in check of the truth."""
    joint = np.concatenate([a.reshape(len(a), -1), b.reshape(len(b), -1)], axis=1)
    return synthetic.gaussian_mi(np.cov(joint, rowvar=False), a.reshape(len(a), -1).shape[1])


# --------------------------------------------------------------------------- dense embedding


def test_dense_image_shapes_dtypes_and_seed() -> None:
    x, y, mi = dense_image(100, d=3, shape=(2, 4, 5), seed=1)
    assert x.shape == (100, 2, 4, 5) and y.shape == (100, 3)
    assert x.dtype == np.float32 and y.dtype == np.float32 and isinstance(mi, float)
    again = dense_image(100, d=3, shape=(2, 4, 5), seed=1)
    other = dense_image(100, d=3, shape=(2, 4, 5), seed=2)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert not np.allclose(x, other[0])


def test_dense_image_without_noise_is_injective_and_keeps_the_latent_mi() -> None:
    d, rho = 3, 0.7
    x, y, mi = dense_image(4000, d=d, rho=rho, noise=0.0, seed=0)
    assert mi == pytest.approx(-d / 2 * math.log(1 - rho**2), rel=1e-12)
    flat = x.reshape(len(x), -1).astype(np.float64)
    _, singular, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    assert singular[d - 1] > 1e3 * singular[d]  # rank exactly d: the d latents are all recoverable
    # Project on the d-dimensional signal subspace: the plug-in Gaussian MI matches the truth.
    assert sample_gaussian_mi(flat @ vt[:d].T, y) == pytest.approx(mi, abs=0.03)


def test_dense_image_mi_with_noise_matches_the_full_covariance() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 2))
    rho, noise = 0.8, 0.7
    cov = np.zeros((14, 14))
    cov[:12, :12] = a @ a.T + noise**2 * np.eye(12)
    cov[:12, 12:] = rho * a
    cov[12:, :12] = rho * a.T
    cov[12:, 12:] = np.eye(2)
    exact = synthetic.gaussian_mi(cov, 12)
    assert dense_image_mi(a, rho=rho, noise=noise) == pytest.approx(exact, rel=1e-10)
    assert exact < -math.log(1 - rho**2)  # noise loses information
    assert dense_image_mi(a, rho=rho, noise=0.0) == pytest.approx(-math.log(1 - rho**2))


def test_dense_image_truth_holds_on_samples() -> None:
    """With strong pixel noise the truth is well below the latent MI, and the samples agree."""
    x, y, mi = dense_image(20000, d=2, rho=0.8, shape=(1, 3, 3), noise=1.0, seed=0)
    assert mi < 0.95 * -math.log(1 - 0.8**2)
    assert sample_gaussian_mi(x.astype(np.float64), y.astype(np.float64)) == pytest.approx(mi, abs=0.03)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d": 10, "shape": (1, 2, 2)}, "d must be at most C*H*W = 4"),
        ({"rho": 1.0}, "rho must lie strictly between -1 and 1"),
        ({"noise": -0.1}, "noise must be a finite standard deviation"),
        ({"shape": (4, 8)}, "shape must be (C, H, W)"),
    ],
)
def test_dense_image_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dense_image(10, **kwargs)


# --------------------------------------------------------------------------- spatial code


def test_spatial_image_shapes_and_exact_constant_channel_means() -> None:
    x, y, mi = spatial_image(500, d=3, size=9, seed=0)
    assert x.shape == (500, 2, 9, 9) and y.shape == (500, 3) and x.dtype == np.float32
    assert mi == pytest.approx(-1.5 * math.log(1 - 0.8**2))
    pooled = torch.as_tensor(x).mean(dim=(2, 3))  # what GAP computes, in float32
    assert torch.equal(pooled, torch.full_like(pooled, 1.0 / 81))  # exactly, not approximately
    assert (x >= 0).all()


def test_blob_images_are_injective() -> None:
    """Decoding the images gives back the latents, to the 2^-16 rounding of the intensities."""
    z = np.random.default_rng(0).uniform(-3.5, 3.5, size=(2000, 4))
    z_hat = decode_blobs(blob_images(z), d=4)
    assert np.abs(z_hat - z).max() < 5e-3
    # Distinct latents, distinct images: even a 0.01 shift of one latent changes the image.
    shifted = z.copy()
    shifted[:, 1] += 0.01
    assert (np.abs(blob_images(shifted) - blob_images(z)).reshape(len(z), -1).max(axis=1) > 0).all()


def test_spatial_image_truth_holds_on_samples() -> None:
    x, y, mi = spatial_image(20000, d=2, rho=0.8, seed=1)
    z_hat = decode_blobs(x, d=2)
    assert sample_gaussian_mi(z_hat, y.astype(np.float64)) == pytest.approx(mi, abs=0.03)


def test_blob_positions_stay_inside_and_increase() -> None:
    z = np.linspace(-40, 40, 2001)
    p = blob_positions(z, size=8)
    assert (np.diff(p) >= 0).all() and np.diff(p)[900:1100].min() > 0
    assert p.min() > 1.0 - 1e-12 and p.max() < 6.0 + 1e-12


@pytest.mark.parametrize(
    "kwargs, message",
    [({"size": 4}, "size must be at least 5"), ({"width": 3.0}, "width must lie in"),
     ({"d": 0}, "d must be a positive integer")],
)
def test_spatial_image_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spatial_image(10, **kwargs)
