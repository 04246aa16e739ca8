"""Bad input gets a ValueError naming the parameter, what was received and what to do."""
import numpy as np
import pytest
import torch

from mitoolkit import estimate_mi, synthetic


@pytest.fixture(scope="module")
def pair():
    x, y, _ = synthetic.correlated_gaussian(600, d=2, rho=0.5)
    return x, y


def test_different_sample_counts(pair):
    x, y = pair
    with pytest.raises(ValueError, match=r"same number of samples N.*x with N=600 and y with N=599"):
        estimate_mi(x, y[:-1], progress=False)


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite")])
def test_non_finite_values(pair, bad, word):
    x, y = pair
    y = y.copy()
    y[17, 1] = bad
    with pytest.raises(ValueError, match=rf"y contains {word} values in 1 samples \(first at sample 17\); remove or impute"):
        estimate_mi(x, y, progress=False)


def test_too_few_samples_says_how_many_are_needed(pair):
    x, y = pair
    with pytest.raises(ValueError, match=r"N=100 samples are too few.*batch_size=256.*at least 512 samples.*at most 50 here"):
        estimate_mi(x[:100], y[:100], progress=False)


@pytest.mark.parametrize("size", [1, 0])
def test_batch_size_below_two(pair, size):
    x, y = pair
    with pytest.raises(ValueError, match=rf"batch_size must be an integer of at least 2.*received {size}"):
        estimate_mi(x, y, batch_size=size, progress=False)


def test_unknown_bound(pair):
    x, y = pair
    with pytest.raises(ValueError, match=r"bound must be one of \['mine', 'dv', 'mine-f'.*received 'nce'"):
        estimate_mi(x, y, bound="nce", progress=False)


def test_unknown_device(pair):
    x, y = pair
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received 'tpu'"):
        estimate_mi(x, y, device="tpu", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(pair):
    x, y = pair
    with pytest.raises(ValueError, match="no CUDA device is available.*device='auto'"):
        estimate_mi(x, y, device="cuda", progress=False)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("test_fraction", 1.0, "test_fraction must be a fraction strictly between 0 and 1"),
        ("max_steps", 0, "max_steps must be a positive integer"),
        ("preprocess", "whiten", r"preprocess must be one of \['auto', 'standardize'"),
        ("ema_rate", 0.0, r"ema_rate must be in \(0, 1\]"),
    ],
)
def test_invalid_options(pair, option, value, message):
    x, y = pair
    with pytest.raises(ValueError, match=message):
        estimate_mi(x, y, progress=False, **{option: value})


def test_non_numeric_input(pair):
    _, y = pair
    with pytest.raises(ValueError, match="x must be a numeric array"):
        estimate_mi([["a", "b"]] * 600, y, progress=False)
