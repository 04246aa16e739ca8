"""NWJ, InfoNCE and SMILE: estimates against known MI, InfoNCE's ceiling, SMILE's limit."""
import math

import numpy as np
import pytest
import torch

from mitoolkit import estimate_mi, synthetic
from mitoolkit.bounds import bound_value, infonce_value

TASKS = {
    "gaussian-d1-rho0.9": lambda: synthetic.correlated_gaussian(2000, d=1, rho=0.9, seed=11),
    "uniform-channel-eps0.3": lambda: synthetic.uniform_noise_channel(2000, d=1, eps=0.3, seed=12),
}
SETTINGS = {
    "nwj": dict(max_steps=2000),
    "smile": dict(max_steps=2000),
    "infonce": dict(max_steps=800, batch_size=64),  # B^2 critic calls per step: keep B small
}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("bound", sorted(SETTINGS))
def test_bound_within_tolerance_of_truth(bound, task):
    x, y, true_mi = TASKS[task]()
    result = estimate_mi(x, y, bound=bound, progress=False, seed=0, **SETTINGS[bound])
    assert abs(result.mi - true_mi) <= max(0.15, 0.15 * true_mi), f"{bound} on {task}: {result}"


def test_infonce_never_exceeds_log_batch_size_and_is_flagged():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((800, 1)).astype(np.float32)
    y = x + 1e-3 * rng.standard_normal((800, 1)).astype(np.float32)  # several nats of MI
    result = estimate_mi(x, y, bound="infonce", batch_size=16, max_steps=400, lr=3e-3,
                         progress=False, seed=0)
    assert result.mi <= math.log(16) + 1e-6
    assert max(result.history.train_bound) <= math.log(16) + 1e-6
    assert max(result.history.heldout) <= math.log(16) + 1e-6
    assert result.flags["near_log_batch"], str(result)


def test_infonce_value_is_log_b_for_a_perfect_critic():
    scores = torch.full((1, 8, 8), -1e4)
    scores.diagonal(dim1=-2, dim2=-1).fill_(0.0)
    assert infonce_value(scores).item() == pytest.approx(math.log(8))


def test_smile_with_a_large_clip_is_dv_and_a_small_clip_differs():
    generator = torch.Generator().manual_seed(0)
    joint = torch.randn(1, 50, generator=generator) + 2
    marginal = 3 * torch.randn(1, 400, generator=generator)
    dv = bound_value("mine", joint, marginal)
    assert torch.allclose(bound_value("smile", joint, marginal, clip=1e6), dv)
    assert not torch.allclose(bound_value("smile", joint, marginal, clip=1.0), dv, atol=1e-2)


def test_smile_with_large_clip_agrees_with_dv_estimate():
    x, y, _ = synthetic.correlated_gaussian(2000, d=1, rho=0.9, seed=13)
    smile = estimate_mi(x, y, bound="smile", clip=1e3, progress=False, seed=0, max_steps=1500)
    dv = estimate_mi(x, y, bound="mine", progress=False, seed=0, max_steps=1500)
    assert abs(smile.mi - dv.mi) <= 0.1, (smile, dv)


def test_nwj_and_mine_f_are_one_bound():
    joint, marginal = torch.randn(2, 10), torch.randn(2, 30)
    assert torch.equal(bound_value("nwj", joint, marginal), bound_value("mine-f", joint, marginal))
