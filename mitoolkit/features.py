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

from mitoolkit.chunks import chunk_length
from mitoolkit.quantiles import apply_quantiles, fit_quantiles, n_quantiles
from mitoolkit.reducers import Reducer, make_reducer

__all__ = ["FeatureSide", "QuantileMap", "prepare_side", "prepare_sides", "PREPROCESSING"]

PREPROCESSING: tuple[str, ...] = ("auto", "standardize", "quantile", "none")
_HEAVY_TAIL_KURTOSIS = 3.0  # excess kurtosis above which preprocess="auto" gaussianizes a feature
_MIN_DISTINCT = 50  # ... provided it takes at least this many distinct values on the train split


_MATERIALIZE_BYTES = 64 * 2**20  # mapped features up to this size are stored; larger are mapped per batch
_CHUNK_ELEMENTS = 2**19  # elements per temporary when computing train statistics


@dataclass
class QuantileMap:
    """Gaussianization of some features, per critic, applied to minibatches.

    ``columns`` (m,) are the flat feature indices mapped by any critic; ``table`` (K, m, Q) holds
    each critic's train-split quantiles of them; ``selected`` (K, 1, m) says which critic maps
    which of them (heavy-tailed on its own split), or is None when every critic maps every one.
    """

    columns: torch.Tensor
    table: torch.Tensor
    selected: torch.Tensor | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(K, B, D) flat features -> the same with the columns mapped (a new tensor).

        Works through the columns in chunks: besides the result, temporaries stay small.
        """
        out = batch.clone()
        step = chunk_length(_CHUNK_ELEMENTS, batch.shape[0] * batch.shape[1])
        for start in range(0, len(self.columns), step):
            columns = self.columns[start:start + step]
            raw = batch[..., columns]
            mapped = apply_quantiles(raw, self.table[:, start:start + step])
            if self.selected is not None:
                mapped = torch.where(self.selected[..., start:start + step], mapped, raw)
            out[..., columns] = mapped
        return out


@dataclass
class FeatureSide:
    """One side's data on the device, its preprocessing and its (optional) trainable encoder."""

    data: torch.Tensor  # (N, *shape) shared by the K critics, or (K, N, *shape) when per_critic
    mean: torch.Tensor  # (K, 1, *shape)
    inv_std: torch.Tensor  # (K, 1, *shape)
    encoder: nn.Module | None
    dim: int
    info: dict[str, Any] = field(default_factory=dict)
    per_critic: bool = False  # data has a leading K dimension (features fit per split)
    quantile_map: QuantileMap | None = None  # gaussianization applied per batch (wide data)

    @property
    def sample_numel(self) -> int:
        """Values per sample that a batch gathers (before an encoder)."""
        return int(np.prod(self.data.shape[2 if self.per_critic else 1:]))

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Preprocessed (and encoded) features of samples ``idx`` (K, B) -> (K, B, dim)."""
        if self.per_critic:
            rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
            batch = self.data[rows, idx]
        else:
            batch = self.data[idx]
        n_critics, size = idx.shape
        if self.quantile_map is not None:
            batch = self.quantile_map(batch.reshape(n_critics, size, -1)).reshape(batch.shape)
        batch = batch.sub_(self.mean).mul_(self.inv_std)  # in place: batch is a fresh gather
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
    """Fit the reducer and the preprocessing on the training samples; build trainable encoders.

    ``train_idx`` is (1, n): one critic. :func:`prepare_sides` does the same for K critics.
    """
    started = time.perf_counter()
    reducer = make_reducer(reducer_spec)
    if reducer.trainable:
        try:
            reducer.fit(data[train_idx[0]] if _learns(reducer) else data[:2])
        except ValueError as err:
            raise ValueError(f"reducer for {name}: {err}") from None
        encoder = reducer.build(seed=seed).to(data.device)
        flat = data.reshape(data.shape[0], -1)
        mean, inv_std = _standardization(flat, train_idx[0], None, preprocess)
        mean, inv_std = mean.reshape(1, 1, *data.shape[1:]), inv_std.reshape(1, 1, *data.shape[1:])
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            dim = int(encoder(((data[:2] - mean[0]) * inv_std[0])).shape[-1])
        encoder.train(was_training)
        info = reducer.describe()
        info.update(input_shape=list(data.shape[1:]), output_dim=dim, gaussianized_features=0,
                    fit_seconds=time.perf_counter() - started)
        return FeatureSide(data, mean, inv_std, encoder, dim, info)
    side = prepare_sides(name, data, reducer, train_idx, preprocess, [seed])
    side.info["fit_seconds"] = time.perf_counter() - started
    return side


def prepare_sides(
    name: str,
    data: torch.Tensor,
    reducer_spec: str | Reducer | None,
    train_idx: torch.Tensor,
    preprocess: str,
    seeds: list[int],
) -> FeatureSide | None:
    """The features of K critics, each with its reducer and preprocessing fit on its own split.

    Row k of ``train_idx`` (K, n) is critic k's training split. Features that do not depend on
    the split (flatten, global average pooling) are kept once, (N, D); a fitted reducer's (PCA)
    are stacked per critic, (K, N, d). Means and scales are per critic, (K, 1, D). Gaussianized
    features are stored when small (at most 64 MiB for the K critics) and otherwise mapped per
    batch through each critic's quantile table, so that wide layers are never copied per critic.
    Trainable reducers and reduced widths that differ between splits are not supported (None):
    the caller then runs the seeds one by one.
    """
    started = time.perf_counter()
    first = make_reducer(reducer_spec)
    if first.trainable:
        return None
    if len(seeds) > 1:  # each critic fits its own copy; the caller's instance is left alone
        reducers = [make_reducer(copy.deepcopy(reducer_spec) if isinstance(reducer_spec, Reducer)
                                 else reducer_spec) for _ in seeds]
        first = reducers[0]
    else:
        reducers = [first]
    learns = _learns(first)
    outputs = []
    for k, reducer in enumerate(reducers):
        if k > 0 and not learns:
            break
        try:
            reducer.fit(data[train_idx[k]] if learns else data[:2])
        except ValueError as err:
            raise ValueError(f"reducer for {name}: {err}") from None
        outputs.append(reducer.transform(data).reshape(data.shape[0], -1))
        if outputs[-1].shape != outputs[0].shape:
            return None
    per_critic = len(outputs) > 1
    features = torch.stack(outputs) if per_critic else outputs[0]  # (K, N, D) or (N, D)
    del outputs
    n_critics, dim = len(seeds), int(features.shape[-1])

    def split_of(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic k's flat features (N, D) and training rows (n,)."""
        return (features[k] if per_critic else features), train_idx[k]

    quantile_map = None
    if preprocess in ("auto", "quantile"):
        quantile_map = _fit_quantile_map(split_of, n_critics, dim,
                                         heavy_tailed_only=preprocess == "auto")
    gaussianized = 0
    if quantile_map is not None:
        selected = quantile_map.selected
        gaussianized = int(selected[0].sum()) if selected is not None else len(quantile_map.columns)
    stats = [_standardization(*split_of(k), _critic(quantile_map, k), preprocess)
             for k in range(n_critics)]
    stored = n_critics * features.shape[-2] * dim * features.element_size()
    if quantile_map is not None and stored <= _MATERIALIZE_BYTES:
        # Small enough to store: map once, one copy per critic (K, N, D), or (N, D) for one.
        stacked = features if per_critic else features.expand(n_critics, *features.shape)
        features = quantile_map(stacked)
        if n_critics == 1 and not per_critic:
            features = features[0]
        else:
            per_critic = True
        quantile_map = None
    info = first.describe()
    info.update(input_shape=list(data.shape[1:]), output_dim=dim, gaussianized_features=gaussianized,
                fit_seconds=time.perf_counter() - started)
    means = torch.stack([mean for mean, _ in stats])[:, None]
    inv_stds = torch.stack([inv_std for _, inv_std in stats])[:, None]
    return FeatureSide(features, means, inv_stds, None, dim, info, per_critic=per_critic,
                       quantile_map=quantile_map)


def _learns(reducer: Reducer) -> bool:
    """Whether fitting the reducer learns from the data (PCA) or only records shapes."""
    return type(reducer).fit is not Reducer.fit


def _critic(quantile_map: QuantileMap | None, k: int) -> QuantileMap | None:
    """Critic k's part of a K-critic map."""
    if quantile_map is None:
        return None
    selected = quantile_map.selected
    return QuantileMap(quantile_map.columns, quantile_map.table[k:k + 1],
                       None if selected is None else selected[k:k + 1])


def _standardization(
    flat: torch.Tensor, rows: torch.Tensor, quantile_map: QuantileMap | None, preprocess: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train mean and inverse std per feature (D,), after the critic's gaussianization.

    Small training sets are read at once (float32); large ones in chunks of rows, combining the
    chunks' means and squared deviations in float64, so that no copy of the split is made.
    """
    dim = flat.shape[1]
    if preprocess == "none":
        return flat.new_zeros(dim), flat.new_ones(dim)

    def block(part: torch.Tensor) -> torch.Tensor:
        values = flat[part]
        return values if quantile_map is None else quantile_map(values[None])[0]

    if len(rows) * dim <= _CHUNK_ELEMENTS:
        train = block(rows)
        mean, std, peak = train.mean(dim=0), train.std(dim=0), train.abs().amax(dim=0)
    else:
        count = 0
        mean64 = flat.new_zeros(dim, dtype=torch.float64)
        squares = flat.new_zeros(dim, dtype=torch.float64)
        peak = flat.new_zeros(dim)
        step = chunk_length(_CHUNK_ELEMENTS, dim)
        for start in range(0, len(rows), step):
            values = block(rows[start:start + step])
            part = values.to(torch.float64)
            n_part = part.shape[0]
            part_mean = part.mean(dim=0)
            delta = part_mean - mean64
            total = count + n_part
            squares += ((part - part_mean) ** 2).sum(dim=0) + delta**2 * count * n_part / total
            mean64 += delta * n_part / total
            count = total
            peak = torch.maximum(peak, values.abs().amax(dim=0))
        mean = mean64.to(flat.dtype)
        std = (squares / max(count - 1, 1)).sqrt().to(flat.dtype)
    # Constant up to rounding (relative to the feature's size): leave it unscaled, else
    # standardization would blow rounding noise up to unit variance.
    constant = std <= 1e-6 * peak.clamp_min(1e-30)
    return mean, torch.where(constant, torch.ones_like(std), 1.0 / std.clamp_min(1e-30))


def _heavy_tailed(flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(D,) mask of features with excess kurtosis above the threshold on the training rows and at
    least :data:`_MIN_DISTINCT` distinct values there; computed in chunks of features."""
    dim = flat.shape[1]
    mask = torch.zeros(dim, dtype=torch.bool, device=flat.device)
    step = chunk_length(_CHUNK_ELEMENTS, len(rows))
    for start in range(0, dim, step):
        columns = torch.arange(start, min(start + step, dim), device=flat.device)
        train = flat[rows[:, None], columns[None, :]]
        z = (train - train.mean(dim=0)) / train.std(dim=0).clamp_min(1e-12)
        kurtosis = z.pow(4).mean(dim=0) - 3.0
        ordered = train.sort(dim=0).values
        distinct = (ordered[1:] != ordered[:-1]).sum(dim=0) + 1
        mask[columns] = (kurtosis > _HEAVY_TAIL_KURTOSIS) & (distinct >= _MIN_DISTINCT)
    return mask


def _fit_quantile_map(split_of, n_critics: int, dim: int, *, heavy_tailed_only: bool) -> QuantileMap | None:
    """Each critic's quantile table of the features it gaussianizes (all, or its heavy-tailed ones)."""
    if heavy_tailed_only:
        chosen = torch.stack([_heavy_tailed(*split_of(k)) for k in range(n_critics)])
    else:
        flat, _ = split_of(0)
        chosen = torch.ones(n_critics, dim, dtype=torch.bool, device=flat.device)
    columns = chosen.any(dim=0).nonzero().flatten()
    if len(columns) == 0:
        return None
    flat, rows = split_of(0)
    count = n_quantiles(len(rows), dim)  # depends on the split's size and D only, not on K
    table = flat.new_empty((n_critics, len(columns), count), dtype=torch.float64)
    step = chunk_length(_CHUNK_ELEMENTS, len(rows))
    for k in range(n_critics):
        flat, rows = split_of(k)
        for start in range(0, len(columns), step):
            part = columns[start:start + step]
            table[k, start:start + step] = fit_quantiles(flat[rows[:, None], part[None, :]], count)
    selected = chosen[:, None, columns]
    return QuantileMap(columns, table, None if bool(selected.all()) else selected)
