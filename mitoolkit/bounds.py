"""Variational lower bounds on mutual information, evaluated on critic scores.

Pairwise bounds take ``t_joint`` of shape (K, B), the critic T(x, y) on paired samples
(x_i, y_i), and ``t_marginal`` of shape (K, M), on samples of the product of marginals
(x_i, y_j), j != i. InfoNCE takes the full score matrix (K, B, B) of a batch, S[k, i, j] =
T_k(x_i, y_j). K is the number of critics trained together (1 for a single estimate). Values are
in nats.

``"mine"`` (default)
    Donsker-Varadhan (DV) bound ``E_P[T] - ln E_Q[e^T]``, trained with the bias-corrected
    gradient of Belghazi et al. (2018): the minibatch denominator E_Q[e^T] in the gradient is
    replaced by an exponential moving average, kept in log space so that it cannot overflow.
    The tightest bound for a given critic (low bias); its variance grows quickly with the true MI
    (Song & Ermon 2020), because e^T on marginal samples is heavy-tailed.
``"dv"``
    The same DV bound trained with the plain minibatch gradient, whose ratio of minibatch means
    is biased. For teaching and comparison.
``"mine-f"`` / ``"nwj"``
    The f-divergence bound ``E_P[T] - E_Q[e^(T-1)]`` of Nguyen, Wainwright and Jordan, which
    MINE-f uses (two names, one bound). Unbiased minibatch gradients without a moving average,
    but looser than DV for an imperfect critic and of even higher variance at high MI.
``"infonce"``
    ``mean_i [S_ii - ln mean_j e^(S_ij)]`` over a batch (van den Oord et al. 2018): very low
    variance, but it can never exceed ln(batch size), so it is strongly biased low once the MI
    approaches that ceiling (the result is flagged ``near_log_batch``). Costs B^2 critic
    evaluations per batch.
``"smile"``
    DV with the critic clipped to [-clip, clip] in the partition term (Song & Ermon 2020),
    trained with the Jensen-Shannon objective. Clipping bounds the variance of e^T at the price
    of bias; a large clip gives back DV.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional

__all__ = [
    "BOUNDS",
    "PAIRWISE_BOUNDS",
    "logmeanexp",
    "bound_value",
    "infonce_value",
    "mine_loss",
    "training_loss",
]

PAIRWISE_BOUNDS: tuple[str, ...] = ("mine", "dv", "mine-f", "nwj", "smile")
BOUNDS: tuple[str, ...] = PAIRWISE_BOUNDS + ("infonce",)


def logmeanexp(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``ln mean(exp(values))`` along ``dim``, computed stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def bound_value(
    bound: str, t_joint: torch.Tensor, t_marginal: torch.Tensor, *, clip: float = 5.0
) -> torch.Tensor:
    """Value of a pairwise ``bound`` per critic.

    Parameters
    ----------
    bound : str
        One of :data:`PAIRWISE_BOUNDS`.
    t_joint : Tensor (K, B)
    t_marginal : Tensor (K, M)
    clip : float
        SMILE's clip value (ignored by the other bounds).

    Returns
    -------
    Tensor (K,)
        The bound in nats for each critic.
    """
    if bound in ("mine", "dv"):
        return t_joint.mean(dim=-1) - logmeanexp(t_marginal, dim=-1)
    if bound in ("mine-f", "nwj"):
        return t_joint.mean(dim=-1) - torch.exp(t_marginal - 1.0).mean(dim=-1)
    if bound == "smile":
        return t_joint.mean(dim=-1) - logmeanexp(t_marginal.clamp(-clip, clip), dim=-1)
    raise ValueError(f"bound must be one of {list(PAIRWISE_BOUNDS)}; received {bound!r}.")


def infonce_value(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE on a batch's score matrix (K, B, B) -> (K,) nats; never above ln B."""
    diagonal = scores.diagonal(dim1=-2, dim2=-1)
    return (diagonal - logmeanexp(scores, dim=-1)).mean(dim=-1)


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
    if log_ema is None or ema_rate >= 1.0:
        new_log_ema = batch_log
    else:
        new_log_ema = torch.logaddexp(log_ema + math.log1p(-ema_rate),
                                      batch_log + math.log(ema_rate))
    loss = -(t_joint.mean(dim=-1) - torch.exp(lme - new_log_ema))
    return loss, new_log_ema


def _jensen_shannon(t_joint: torch.Tensor, t_marginal: torch.Tensor) -> torch.Tensor:
    """The f-GAN Jensen-Shannon objective SMILE trains with: (K,)."""
    return (-functional.softplus(-t_joint)).mean(dim=-1) - functional.softplus(t_marginal).mean(dim=-1)


def training_loss(
    bound: str,
    t_joint: torch.Tensor,
    t_marginal: torch.Tensor,
    log_ema: torch.Tensor | None,
    ema_rate: float,
    *,
    clip: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss to minimise for a pairwise ``bound``, its minibatch value, and the moving average.

    Returns
    -------
    loss : Tensor (K,)
    value : Tensor (K,), detached
    log_ema : Tensor (K,) or None
    """
    value = bound_value(bound, t_joint.detach(), t_marginal.detach(), clip=clip)
    if bound == "mine":
        loss, log_ema = mine_loss(t_joint, t_marginal, log_ema, ema_rate)
        return loss, value, log_ema
    if bound == "smile":
        return -_jensen_shannon(t_joint, t_marginal), value, log_ema
    return -bound_value(bound, t_joint, t_marginal), value, log_ema
