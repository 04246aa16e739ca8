"""Per-feature quantile maps to a standard normal: fit on a training split, applied in torch.

The map is scikit-learn's ``QuantileTransformer(output_distribution="normal")``: a feature's value
goes to its position among the training quantiles (linear between neighbours, the middle of a run
of tied quantiles, 0 or 1 at and beyond the extremes), then through the standard normal's inverse
CDF, clipped at about +-5.2. It is monotone, so mutual information is unchanged, and it tames heavy
tails. Written in torch so that it runs on the estimator's device, on a minibatch as well as on a
whole array (features of K critics are mapped without a per-critic copy of the data), and in
chunks, so that its temporaries stay small whatever the number of features.
"""
from __future__ import annotations

import math

import torch

from mitoolkit.chunks import chunk_length

__all__ = ["n_quantiles", "fit_quantiles", "apply_quantiles"]

MAX_QUANTILES = 1000  # scikit-learn's default
MIN_QUANTILES = 64
TABLE_ENTRIES = 2**20  # quantiles kept per fit at most (8 MiB in float64), whatever the width
BOUNDS_THRESHOLD = 1e-7  # as scikit-learn: values this close to the extremes map to 0 or 1
_CHUNK_ELEMENTS = 2**18  # elements per temporary when fitting or mapping (2 MiB at 8 bytes)
# The normal scores that outputs are clipped to, as scikit-learn's: computed once at import, not
# per minibatch (on a GPU, reading them back each time would stall the training loop).
_CLIP_P = BOUNDS_THRESHOLD - 2.0**-52
_CLIP_LOW, _CLIP_HIGH = torch.special.ndtri(
    torch.tensor([_CLIP_P, 1 - _CLIP_P], dtype=torch.float64)).tolist()


def n_quantiles(n_train: int, n_features: int) -> int:
    """Quantiles per feature: scikit-learn's 1,000 (at most one per training sample), fewer for
    wide data so that the table holds at most :data:`TABLE_ENTRIES` (128 for 8,192 features)."""
    per_feature = max(MIN_QUANTILES, TABLE_ENTRIES // max(n_features, 1))
    return max(2, min(MAX_QUANTILES, n_train, per_feature))


def fit_quantiles(train: torch.Tensor, count: int) -> torch.Tensor:
    """Quantile table of each feature of the training samples.

    Parameters
    ----------
    train : Tensor (n, m)
        Training samples of the m features to map.
    count : int
        Quantiles per feature, at probabilities ``linspace(0, 1, count)`` (linear interpolation
        between order statistics, as ``numpy.percentile``).

    Returns
    -------
    Tensor (m, count), float64
        Non-decreasing along the last dimension.
    """
    n, m = train.shape
    position = torch.linspace(0, 1, count, dtype=torch.float64, device=train.device) * (n - 1)
    below = position.floor().long().clamp(max=n - 1)
    above = (below + 1).clamp(max=n - 1)
    weight = (position - below)[:, None]
    table = train.new_empty((m, count), dtype=torch.float64)
    step = chunk_length(_CHUNK_ELEMENTS, n)
    for start in range(0, m, step):
        ordered = train[:, start:start + step].to(torch.float64).sort(dim=0).values
        low, high = ordered[below], ordered[above]
        table[start:start + step] = (low + (high - low) * weight).T
    return table.cummax(dim=1).values


def apply_quantiles(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map values through their features' quantile tables to a standard normal.

    Parameters
    ----------
    values : Tensor (..., n, m)
        n samples of m features; leading dimensions (e.g. K critics) must match ``table``'s.
    table : Tensor (..., m, Q)
        From :func:`fit_quantiles` (stacked per critic for a leading K).

    Returns
    -------
    Tensor (..., n, m)
        In the dtype of ``values``.
    """
    out = torch.empty_like(values)
    n = values.shape[-2]
    step = chunk_length(_CHUNK_ELEMENTS, n * math.prod(values.shape[:-2]))
    for start in range(0, values.shape[-1], step):
        part = values[..., start:start + step].transpose(-1, -2).to(torch.float64).contiguous()
        mapped = _to_normal(part, table[..., start:start + step, :].contiguous())
        out[..., start:start + step] = mapped.transpose(-1, -2).to(values.dtype)
    return out


def _to_normal(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(..., m, n) values, (..., m, Q) table -> (..., m, n) standard normal scores."""
    last = q.shape[-1] - 1
    at_most = torch.searchsorted(q, v, right=True)  # quantiles <= v
    below = torch.searchsorted(q, v)  # quantiles < v
    i = below.clamp(1, last)
    low, high = q.gather(-1, i - 1), q.gather(-1, i)
    between = (i - 1 + (v - low) / (high - low)) / last
    p = torch.where(at_most > below, (below + at_most - 1) / (2.0 * last), between)
    p = torch.where(v + BOUNDS_THRESHOLD > q[..., -1:], 1.0, p)
    p = torch.where(v - BOUNDS_THRESHOLD < q[..., :1], 0.0, p)
    return torch.special.ndtri(p).clamp(_CLIP_LOW, _CLIP_HIGH)
