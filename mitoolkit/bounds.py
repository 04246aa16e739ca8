"""Variational lower bounds on mutual information, evaluated on critic scores.

Scores come from a critic T(x, y): ``t_joint`` of shape (K, B) on paired samples (x_i, y_i) and
``t_marginal`` of shape (K, M) on samples of the product of marginals (x_i, y_j), j != i. K is the
number of critics trained together (1 for a single estimate). All values are in nats.

``"mine"``
    Donsker-Varadhan (DV) bound ``E_P[T] - ln E_Q[e^T]``, trained with the bias-corrected gradient
    of Belghazi et al. (2018): the minibatch denominator E_Q[e^T] in the gradient is replaced by an
    exponential moving average, kept in log space so that it cannot overflow. Tight, low bias; its
    variance grows with the true MI.
``"dv"``
    The same DV bound trained with the plain minibatch gradient (biased: for teaching and
    comparison).
``"mine-f"``
    The f-divergence bound ``E_P[T] - E_Q[e^(T-1)]`` (MINE-f, also called NWJ): unbiased minibatch
    gradients without a moving average, looser for a finite critic, higher variance at high MI.
"""
from __future__ import annotations

import math

import torch

__all__ = ["BOUNDS", "logmeanexp", "bound_value", "mine_loss", "training_loss"]

BOUNDS: tuple[str, ...] = ("mine", "dv", "mine-f")


def logmeanexp(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``ln mean(exp(values))`` along ``dim``, computed stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def bound_value(bound: str, t_joint: torch.Tensor, t_marginal: torch.Tensor) -> torch.Tensor:
    """Value of ``bound`` per critic.

    Parameters
    ----------
    bound : str
        One of :data:`BOUNDS`.
    t_joint : Tensor (K, B)
    t_marginal : Tensor (K, M)

    Returns
    -------
    Tensor (K,)
        The bound in nats for each critic.
    """
    if bound in ("mine", "dv"):
        return t_joint.mean(dim=-1) - logmeanexp(t_marginal, dim=-1)
    if bound == "mine-f":
        return t_joint.mean(dim=-1) - torch.exp(t_marginal - 1.0).mean(dim=-1)
    raise ValueError(f"bound must be one of {list(BOUNDS)}; received {bound!r}.")


def mine_loss(
    t_joint: torch.Tensor,
    t_marginal: torch.Tensor,
    log_ema: torch.Tensor | None,
    ema_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Belghazi et al.'s bias-corrected DV objective, with the moving average in log space.

    The gradient of ``ln mean(e^T)`` is ``grad mean(e^T) / mean(e^T)``; MINE replaces the
    minibatch denominator by a moving average ``m`` of ``mean(e^T)`` over steps. The surrogate
    ``exp(lme - ln m)``, with ``lme = ln mean(e^T)`` and ``ln m`` detached, has exactly that
    gradient: ``grad mean(e^T) / m``.

    Parameters
    ----------
    t_joint : Tensor (K, B)
    t_marginal : Tensor (K, M)
    log_ema : Tensor (K,) or None
        ln of the moving average so far; ``None`` at the first step (initialised to this batch).
    ema_rate : float
        Weight of the new batch in the moving average, in (0, 1].

    Returns
    -------
    loss : Tensor (K,)
        Per-critic loss to minimise (its value is not the bound; use :func:`bound_value`).
    new_log_ema : Tensor (K,)
        Updated ln moving average (detached).
    """
    lme = logmeanexp(t_marginal, dim=-1)
    batch_log = lme.detach()
    if log_ema is None:
        new_log_ema = batch_log
    else:
        new_log_ema = torch.logaddexp(
            log_ema + math.log1p(-ema_rate) if ema_rate < 1.0 else torch.full_like(log_ema, -math.inf),
            batch_log + math.log(ema_rate),
        )
    loss = -(t_joint.mean(dim=-1) - torch.exp(lme - new_log_ema))
    return loss, new_log_ema


def training_loss(
    bound: str,
    t_joint: torch.Tensor,
    t_marginal: torch.Tensor,
    log_ema: torch.Tensor | None,
    ema_rate: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss to minimise for ``bound``, the bound's minibatch value, and the updated moving average.

    Returns
    -------
    loss : Tensor (K,)
    value : Tensor (K,), detached
    log_ema : Tensor (K,) or None
    """
    value = bound_value(bound, t_joint.detach(), t_marginal.detach())
    if bound == "mine":
        loss, log_ema = mine_loss(t_joint, t_marginal, log_ema, ema_rate)
        return loss, value, log_ema
    return -bound_value(bound, t_joint, t_marginal), value, log_ema
