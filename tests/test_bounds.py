"""The bounds and the bias-corrected MINE gradient."""
import math

import pytest
import torch

from mitoolkit.bounds import bound_value, logmeanexp, mine_loss, training_loss


def test_dv_value_matches_its_formula():
    joint = torch.tensor([[1.0, 2.0, 3.0]])
    marginal = torch.tensor([[0.0, 1.0]])
    expected = 2.0 - math.log((1 + math.e) / 2)
    assert bound_value("mine", joint, marginal).item() == pytest.approx(expected)
    expected_f = 2.0 - (math.exp(-1) + 1) / 2
    assert bound_value("mine-f", joint, marginal).item() == pytest.approx(expected_f)


def test_logmeanexp_does_not_overflow():
    values = torch.tensor([[1000.0, 1000.0]])
    assert logmeanexp(values).item() == pytest.approx(1000.0)


def test_moving_average_enters_the_gradient():
    """d loss / d t_marginal_i must be exp(t_i) / (B * ema), not the plain exp(t_i) / sum exp(t)."""
    batch = 4
    t_marginal = torch.tensor([[0.5, -0.2, 1.0, 0.3]], requires_grad=True)
    t_joint = torch.tensor([[1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    previous_ema = 3.0  # the running average of mean(exp(T)) from earlier batches
    rate = 0.1
    loss, new_log_ema = mine_loss(t_joint, t_marginal, torch.tensor([math.log(previous_ema)]), rate)
    loss.sum().backward()
    exp_t = t_marginal.detach().exp()
    ema = (1 - rate) * previous_ema + rate * exp_t.mean().item()
    assert new_log_ema.item() == pytest.approx(math.log(ema))
    corrected = exp_t / (batch * ema)
    plain = exp_t / exp_t.sum()
    assert torch.allclose(t_marginal.grad, corrected, atol=1e-6)
    assert not torch.allclose(t_marginal.grad, plain, atol=1e-3)
    assert torch.allclose(t_joint.grad, torch.full((1, batch), -1.0 / batch))


def test_plain_dv_gradient_uses_the_minibatch_denominator():
    t_marginal = torch.tensor([[0.5, -0.2, 1.0, 0.3]], requires_grad=True)
    t_joint = torch.ones(1, 4)
    loss, _, _ = training_loss("dv", t_joint, t_marginal, None, 0.1)
    loss.sum().backward()
    exp_t = t_marginal.detach().exp()
    assert torch.allclose(t_marginal.grad, exp_t / exp_t.sum(), atol=1e-6)


def test_moving_average_starts_at_the_first_batch_and_stays_finite():
    t = torch.full((1, 8), 500.0)
    loss, log_ema = mine_loss(torch.zeros(1, 8), t, None, 0.01)
    assert log_ema.item() == pytest.approx(500.0)
    assert torch.isfinite(loss).all()
