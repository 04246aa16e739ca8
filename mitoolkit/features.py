"""One side of a pair, ready for the critic: reduced, preprocessed and on the device.

:func:`prepare_side` fits the side's reducer and its per-feature preprocessing on the training
split only, then returns a :class:`FeatureSide` from which the training loop draws standardized
(and, for a trainable reducer, encoded) minibatches.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mitoolkit.reducers import Reducer, make_reducer

__all__ = ["FeatureSide", "prepare_side", "prepare_sides", "gaussianize", "PREPROCESSING"]

PREPROCESSING: tuple[str, ...] = ("auto", "standardize", "quantile", "none")
_HEAVY_TAIL_KURTOSIS = 3.0  # excess kurtosis above which preprocess="auto" gaussianizes a feature
_MIN_DISTINCT = 50  # ... provided it takes at least this many distinct values on the train split


@dataclass
class FeatureSide:
    """One side's data on the device, its standardization and its (optional) trainable encoder."""

    data: torch.Tensor  # (N, *shape) shared by the K critics, or (K, N, *shape) when per_critic
    mean: torch.Tensor  # (K, 1, *shape)
    inv_std: torch.Tensor  # (K, 1, *shape)
    encoder: nn.Module | None
    dim: int
    info: dict[str, Any] = field(default_factory=dict)
    per_critic: bool = False  # data has a leading K dimension (features fit per split)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Standardized (and encoded) features of samples ``idx`` (K, B) -> (K, B, dim)."""
        if self.per_critic:
            rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
            batch = (self.data[rows, idx] - self.mean) * self.inv_std
        else:
            batch = (self.data[idx] - self.mean) * self.inv_std
        n_critics, size = idx.shape
        if self.encoder is not None:
            return self.encoder(batch.reshape(n_critics * size, *batch.shape[2:])).reshape(
                n_critics, size, -1)
        return batch.reshape(n_critics, size, -1)


def prepare_side(
    name: str,
    data: torch.Tensor,
    reducer_spec: str | Reducer | None,
    train_idx: torch.Tensor,
    preprocess: str,
    seed: int,
) -> FeatureSide:
    """Fit the reducer and the preprocessing on the training samples; build trainable encoders."""
    started = time.perf_counter()
    reducer = make_reducer(reducer_spec)
    train_data = data[train_idx[0]]
    try:
        reducer.fit(train_data)
    except ValueError as err:
        raise ValueError(f"reducer for {name}: {err}") from None
    encoder = None
    gaussianized = 0
    if reducer.trainable:
        encoder = reducer.build(seed=seed).to(data.device)
        features = data
    else:
        features = reducer.transform(data)
        if preprocess in ("auto", "quantile"):
            features, gaussianized = gaussianize(features, train_idx[0], seed,
                                                  heavy_tailed_only=preprocess == "auto")
    train_features = features[train_idx[0]]
    if preprocess == "none":
        mean = torch.zeros_like(train_features[0])
        inv_std = torch.ones_like(train_features[0])
    else:
        mean = train_features.mean(dim=0)
        std = train_features.std(dim=0)
        # Constant up to rounding (relative to the feature's size): leave it unscaled, else
        # standardization would blow rounding noise up to unit variance.
        constant = std <= 1e-6 * train_features.abs().amax(dim=0).clamp_min(1e-30)
        inv_std = torch.where(constant, torch.ones_like(std), 1.0 / std.clamp_min(1e-30))
    if encoder is not None:
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            dim = int(encoder(train_features[:2]).shape[-1])
        encoder.train(was_training)
    else:
        dim = int(np.prod(features.shape[1:]))
    info = reducer.describe()
    info.update(input_shape=list(data.shape[1:]), output_dim=dim,
                gaussianized_features=gaussianized, fit_seconds=time.perf_counter() - started)
    return FeatureSide(features, mean[None, None], inv_std[None, None], encoder, dim, info)


def prepare_sides(
    name: str,
    data: torch.Tensor,
    reducer_spec: str | Reducer | None,
    train_idx: torch.Tensor,
    preprocess: str,
    seeds: list[int],
) -> FeatureSide | None:
    """:func:`prepare_side` for K critics, each fit on its own train split (row k of ``train_idx``).

    Features that do not depend on the split (flatten, global average pooling, no gaussianized
    feature) are kept once, (N, ...), with per-critic mean and std (K, 1, ...); features fit per
    split (PCA, gaussianized features) are stacked per critic, (K, N, d). Trainable reducers are
    not supported (None), nor reduced widths that differ between splits (None): the caller then
    runs the seeds one by one.
    """
    if make_reducer(reducer_spec).trainable:
        return None
    sides: list[FeatureSide] = []
    stacked: torch.Tensor | None = None  # (K, N, d), allocated once features differ by split
    for k, seed in enumerate(seeds):
        spec = copy.deepcopy(reducer_spec) if isinstance(reducer_spec, Reducer) else reducer_spec
        side = prepare_side(name, data, spec, train_idx[k:k + 1], preprocess, seed)
        if sides and side.dim != sides[0].dim:
            return None
        first = sides[0] if sides else side
        if stacked is None and sides and not _same(side.data, first.data):
            stacked = first.data.new_empty((len(seeds), *first.data.shape))
            stacked[:k] = first.data  # the earlier seeds' features all equal the first's
        if stacked is not None:
            stacked[k] = side.data
            if k > 0:
                side.data = first.data  # drop this seed's own copy
        sides.append(side)
    first = sides[0]
    info = dict(first.info, fit_seconds=sum(side.info["fit_seconds"] for side in sides))
    return FeatureSide(
        first.data if stacked is None else stacked,
        torch.cat([side.mean for side in sides]), torch.cat([side.inv_std for side in sides]),
        None, first.dim, info, per_critic=stacked is not None,
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and torch.equal(a, b))


def gaussianize(
    features: torch.Tensor, train_idx: torch.Tensor, seed: int, *, heavy_tailed_only: bool
) -> tuple[torch.Tensor, int]:
    """Map features through their train-split quantiles to a standard normal (scikit-learn).

    The map is monotone per feature, hence invertible on the data: MI is unchanged, while heavy
    tails and outliers, which make the critic's job hard, are tamed. With ``heavy_tailed_only``,
    only features with excess kurtosis above :data:`_HEAVY_TAIL_KURTOSIS` and at least
    :data:`_MIN_DISTINCT` distinct train values are mapped (Gaussian-like or discrete features,
    such as one-hot labels, are left alone).

    Returns
    -------
    features : Tensor, same shape as the input
    n_mapped : int
        How many features were mapped.
    """
    from sklearn.preprocessing import QuantileTransformer

    flat = features.reshape(features.shape[0], -1)
    train = flat[train_idx]
    if heavy_tailed_only:
        z = (train - train.mean(dim=0)) / train.std(dim=0).clamp_min(1e-12)
        kurtosis = z.pow(4).mean(dim=0) - 3.0
        ordered = train.sort(dim=0).values
        distinct = (ordered[1:] != ordered[:-1]).sum(dim=0) + 1
        columns = ((kurtosis > _HEAVY_TAIL_KURTOSIS) & (distinct >= _MIN_DISTINCT)).nonzero().flatten()
    else:
        columns = torch.arange(flat.shape[1], device=flat.device)
    if len(columns) == 0:
        return features, 0
    chosen = flat[:, columns].cpu().double().numpy()
    transformer = QuantileTransformer(
        n_quantiles=min(1000, len(train_idx)), output_distribution="normal", random_state=seed
    )
    transformer.fit(chosen[train_idx.cpu().numpy()])
    mapped = flat.clone()
    mapped[:, columns] = torch.as_tensor(transformer.transform(chosen), dtype=flat.dtype,
                                         device=flat.device)
    return mapped.reshape(features.shape), len(columns)
