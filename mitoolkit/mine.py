"""MINE: mutual information neural estimation with held-out evaluation and early stopping.

:func:`estimate_mi` is the entry point. The samples are split three ways, once, by the seed:

* train (``1 - test_fraction``): the critic (and a trainable reducer) learns on minibatches of it;
* validation (``valid_fraction`` of the held-out part): the bound evaluated there every
  ``eval_every`` steps drives early stopping and the live curve;
* test (the rest of the held-out part): the bound of the chosen critic evaluated there is the
  reported ``mi``. Neither held-out part is ever seen by training, and the reported value is not a
  maximum over training.

Marginal samples pair each x in a batch with the y of another sample of the same batch (a random
cyclic permutation: no sample is paired with itself). Everything runs on one device; data moves
there once and batches are drawn there.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mitoolkit.bounds import BOUNDS, bound_value, logmeanexp, training_loss
from mitoolkit.callbacks import Callback, ProgressBar, RunInfo, overrides
from mitoolkit.critics import MLPCritic
from mitoolkit.devices import resolve_device
from mitoolkit.reducers import Reducer, make_reducer
from mitoolkit.results import History, MIResult

__all__ = ["estimate_mi", "PREPROCESSING"]

PREPROCESSING: tuple[str, ...] = ("standardize", "quantile", "none")
_EVAL_CHUNK = 4096  # samples per forward pass in evaluation
_N_STDERR_CHUNKS = 10  # test batches whose spread gives the standard error


def estimate_mi(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    bound: str = "mine",
    reducer: str | Reducer | None = None,
    reducer_x: str | Reducer | None = None,
    reducer_y: str | Reducer | None = None,
    width: int = 128,
    depth: int = 2,
    activation: str = "relu",
    lr: float = 5e-4,
    batch_size: int = 256,
    max_steps: int = 5000,
    eval_every: int = 50,
    patience: int = 10,
    test_fraction: float = 0.5,
    valid_fraction: float = 0.5,
    ema_rate: float = 0.01,
    eval_marginals: int = 16,
    preprocess: str = "standardize",
    device: str | torch.device = "auto",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    progress: bool = True,
    label: str = "",
) -> MIResult:
    """Estimate the mutual information I(X; Y) in nats with MINE.

    Parameters
    ----------
    x, y : ndarray or Tensor of shape (N, ...)
        Paired samples: row i of x and row i of y are one draw of (X, Y). Any trailing shape;
        it is flattened unless a reducer says otherwise. 1-D arrays are one feature.
    bound : {"mine", "dv", "mine-f"}
        ``"mine"``: Donsker-Varadhan bound with the bias-corrected (moving-average) gradient;
        ``"dv"``: same bound, plain minibatch gradient; ``"mine-f"``: the f-divergence bound.
        See :mod:`mitoolkit.bounds`.
    reducer : str or Reducer, optional
        Dimensionality reducer for both sides (``"none"``, ``"pca"``, ``"gap"``, ``"cnn"`` or an
        instance from :mod:`mitoolkit.reducers`); ``reducer_x`` / ``reducer_y`` override it per
        side. Fixed reducers are fit on the train split only. Default: flatten.
    width, depth : int
        Hidden units per layer and number of hidden layers of the critic MLP.
    activation : {"relu", "elu", "tanh"}
        Critic non-linearity.
    lr : float
        Adam learning rate.
    batch_size : int
        Minibatch size (>= 2); marginal pairs are formed within the batch.
    max_steps : int
        Most optimizer steps.
    eval_every : int
        Steps between evaluations of the held-out validation estimate.
    patience : int
        Evaluations without a new best validation estimate before training stops.
    test_fraction : float
        Share of the N samples held out from training, in (0, 1).
    valid_fraction : float
        Share of the held-out samples used for early stopping, in (0, 1); the rest give ``mi``.
    ema_rate : float
        Weight of each new batch in the moving average of the DV denominator (``bound="mine"``).
    eval_marginals : int
        Marginal pairs per test sample in the final evaluation (each a different derangement).
    preprocess : {"standardize", "quantile", "none"}
        Per-feature preprocessing fit on the train split after the reducer. ``"quantile"`` maps
        each feature through its train quantiles to a standard normal (invertible: MI unchanged,
        heavy tails tamed) before standardizing.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        ``"auto"``: CUDA when available, else CPU.
    seed : int
        Seeds the split, the critic's initialisation and the batches. Same seed, same machine:
        same result. No global random state is used or changed.
    callbacks : sequence of Callback
        Notified on start, each step, each evaluation and at the end; may ask to stop.
    stop_event : threading.Event, optional
        When set (e.g. from another thread), the run stops after the current step.
    progress : bool
        Show a tqdm progress bar (the widget form in notebooks).
    label : str
        Name of the run passed to callbacks (for plots with several runs).

    Returns
    -------
    MIResult
        ``mi`` (nats) evaluated on held-out test samples, its standard error and 95 % interval,
        the training history, flags and the options used.

    Raises
    ------
    ValueError
        On inconsistent or invalid input, naming the parameter, what was received and what to do.
    """
    started = time.perf_counter()
    options = {
        "bound": bound, "width": width, "depth": depth, "activation": activation, "lr": lr,
        "batch_size": batch_size, "max_steps": max_steps, "eval_every": eval_every,
        "patience": patience, "test_fraction": test_fraction, "valid_fraction": valid_fraction,
        "ema_rate": ema_rate, "eval_marginals": eval_marginals, "preprocess": preprocess,
        "seed": seed,
    }
    _check_options(options)
    torch_device = resolve_device(device)
    options["device"] = str(torch_device)
    x_data = _as_samples("x", x)
    y_data = _as_samples("y", y)
    if x_data.shape[0] != y_data.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples N (first dimension); received x with "
            f"N={x_data.shape[0]} and y with N={y_data.shape[0]}. Row i of x and row i of y must "
            "be one paired draw of (X, Y)."
        )
    splits = _split(x_data.shape[0], options)
    x_data, y_data = x_data.to(torch_device), y_data.to(torch_device)
    splits = {name: idx.to(torch_device) for name, idx in splits.items()}
    side_x = _prepare_side("x", x_data, reducer_x if reducer_x is not None else reducer,
                           splits["train"], preprocess, seed)
    side_y = _prepare_side("y", y_data, reducer_y if reducer_y is not None else reducer,
                           splits["train"], preprocess, seed + 1)
    options["reducer_x"] = side_x.info
    options["reducer_y"] = side_y.info
    all_callbacks = list(callbacks)
    if progress:
        all_callbacks.insert(0, ProgressBar(desc=label or "MINE"))
    run = _MineRun(side_x, side_y, splits, options, torch_device, all_callbacks, stop_event, label)
    return run.train_and_evaluate(started)


# --------------------------------------------------------------------------- input checks


def _check_options(options: dict[str, Any]) -> None:
    def fail(name: str, requirement: str) -> None:
        raise ValueError(f"{name} must be {requirement}; received {options[name]!r}.")

    if options["bound"] not in BOUNDS:
        fail("bound", f"one of {list(BOUNDS)}")
    if options["preprocess"] not in PREPROCESSING:
        fail("preprocess", f"one of {list(PREPROCESSING)}")
    for name in ("width", "depth", "max_steps", "eval_every", "patience", "eval_marginals"):
        value = options[name]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            fail(name, "a positive integer")
    size = options["batch_size"]
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 2:
        fail("batch_size", "an integer of at least 2 (marginal samples pair each sample with "
             "another one of its batch)")
    for name in ("test_fraction", "valid_fraction"):
        if not 0.0 < float(options[name]) < 1.0:
            fail(name, "a fraction strictly between 0 and 1")
    if not 0.0 < float(options["ema_rate"]) <= 1.0:
        fail("ema_rate", "in (0, 1]")
    if not float(options["lr"]) > 0.0:
        fail("lr", "positive")
    if not isinstance(options["seed"], (int, np.integer)) or isinstance(options["seed"], bool):
        fail("seed", "an integer")


def _as_samples(name: str, data: Any) -> torch.Tensor:
    """Convert to a float32 CPU tensor (N, ...) and reject non-finite values."""
    if isinstance(data, torch.Tensor):
        tensor = data.detach().to("cpu", torch.float32)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(data, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be a numeric array or tensor of shape (N, ...); received "
                f"{type(data).__name__} that cannot be converted ({err})."
            ) from None
    if tensor.ndim == 0:
        raise ValueError(f"{name} must have a sample dimension (N, ...); received a scalar.")
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    bad = ~torch.isfinite(tensor)
    if bad.any():
        rows = bad.reshape(tensor.shape[0], -1).any(dim=1).nonzero().flatten()
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(bad.sum()) - n_nan
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values in {len(rows)} samples "
            f"(first at sample {int(rows[0])}); remove or impute those samples (in both x and y) "
            "before estimating MI."
        )
    return tensor


def _split(n_samples: int, options: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Random train / validation / test indices, shapes (1, n_*), from the seed."""
    n_heldout = int(round(n_samples * options["test_fraction"]))
    n_valid = int(round(n_heldout * options["valid_fraction"]))
    n_test = n_heldout - n_valid
    n_train = n_samples - n_heldout
    batch = options["batch_size"]
    if n_train < batch or n_valid < 2 or n_test < 2:
        needed = max(
            math.ceil(batch / (1.0 - options["test_fraction"])),
            math.ceil(2 / (options["test_fraction"] * min(options["valid_fraction"],
                                                           1 - options["valid_fraction"]))),
        )
        raise ValueError(
            f"N={n_samples} samples are too few: with test_fraction={options['test_fraction']} and "
            f"valid_fraction={options['valid_fraction']}, training gets {n_train} samples, "
            f"validation {n_valid} and test {n_test}, but a batch needs batch_size={batch} "
            f"training samples and each held-out part at least 2. Provide at least {needed} "
            f"samples, or lower batch_size (at most {max(n_train, 0)} here)."
        )
    generator = torch.Generator().manual_seed(int(options["seed"]))
    order = torch.randperm(n_samples, generator=generator)
    return {
        "train": order[:n_train][None],
        "valid": order[n_train:n_train + n_valid][None],
        "test": order[n_train + n_valid:][None],
    }


# --------------------------------------------------------------------------- one side of the pair


@dataclass
class _Side:
    """One side's data on the device, its standardization and its (optional) trainable encoder."""

    data: torch.Tensor  # (N, *shape)
    mean: torch.Tensor  # (K, 1, *shape)
    inv_std: torch.Tensor  # (K, 1, *shape)
    encoder: nn.Module | None
    dim: int
    info: dict[str, Any] = field(default_factory=dict)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Standardized (and encoded) features of samples ``idx`` (K, B) -> (K, B, dim)."""
        batch = (self.data[idx] - self.mean) * self.inv_std
        n_critics, size = idx.shape
        if self.encoder is not None:
            return self.encoder(batch.reshape(n_critics * size, *batch.shape[2:])).reshape(
                n_critics, size, -1)
        return batch.reshape(n_critics, size, -1)


def _prepare_side(
    name: str,
    data: torch.Tensor,
    reducer_spec: str | Reducer | None,
    train_idx: torch.Tensor,
    preprocess: str,
    seed: int,
) -> _Side:
    """Fit the reducer and the preprocessing on the training samples; encode trainable reducers."""
    started = time.perf_counter()
    reducer = make_reducer(reducer_spec)
    train_data = data[train_idx[0]]
    encoder = None
    if reducer.trainable:
        reducer.fit(train_data)
        encoder = reducer.build(seed=seed).to(data.device)
        features = data
    else:
        try:
            reducer.fit(train_data)
        except ValueError as err:
            raise ValueError(f"reducer for {name}: {err}") from None
        features = reducer.transform(data)
        if preprocess == "quantile":
            features = _quantile_normal(features, train_idx[0], seed)
    train_features = features[train_idx[0]]
    if preprocess == "none":
        mean = torch.zeros_like(train_features[0])
        inv_std = torch.ones_like(train_features[0])
    else:
        mean = train_features.mean(dim=0)
        std = train_features.std(dim=0)
        inv_std = torch.where(std > 1e-8, 1.0 / std.clamp_min(1e-8), torch.ones_like(std))
    if encoder is not None:
        with torch.no_grad():
            dim = int(encoder(train_features[:2]).shape[-1])
    else:
        dim = int(np.prod(features.shape[1:]))
    info = reducer.describe()
    info["input_shape"] = list(data.shape[1:])
    info["output_dim"] = dim
    info["fit_seconds"] = time.perf_counter() - started
    return _Side(features, mean[None, None], inv_std[None, None], encoder, dim, info)


def _quantile_normal(features: torch.Tensor, train_idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Map each feature through its train-split quantiles to a standard normal (sklearn)."""
    from sklearn.preprocessing import QuantileTransformer

    flat = features.reshape(features.shape[0], -1).cpu().double().numpy()
    transformer = QuantileTransformer(
        n_quantiles=min(1000, len(train_idx)), output_distribution="normal", random_state=seed
    )
    transformer.fit(flat[train_idx.cpu().numpy()])
    mapped = torch.as_tensor(transformer.transform(flat), dtype=features.dtype)
    return mapped.reshape(features.shape).to(features.device)


# --------------------------------------------------------------------------- the training run


class _MineRun:
    """Trains K critics (here K = 1) and evaluates them; one instance per call."""

    def __init__(
        self,
        side_x: _Side,
        side_y: _Side,
        splits: dict[str, torch.Tensor],
        options: dict[str, Any],
        device: torch.device,
        callbacks: list[Callback],
        stop_event: threading.Event | None,
        label: str,
    ) -> None:
        self.x, self.y = side_x, side_y
        self.splits = splits
        self.options = options
        self.device = device
        self.callbacks = callbacks
        self.stop_event = stop_event
        self.label = label
        seeds = [int(options["seed"])]
        self.critic = MLPCritic(
            side_x.dim, side_y.dim, width=options["width"], depth=options["depth"],
            seeds=seeds, activation=options["activation"],
        ).to(device)
        self.modules = nn.ModuleList(
            [self.critic] + [s.encoder for s in (side_x, side_y) if s.encoder is not None]
        )
        self.n_critics = len(seeds)

    # -- scores ---------------------------------------------------------------------------------

    def _embeddings(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.critic.embed_x(self.x.features(idx)),
                self.critic.embed_y(self.y.features(idx)))

    def _joint_and_marginal(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores on the batch's pairs and on its pairs (x_i, y_{i-1}): two (K, B) tensors."""
        hx, hy = self._embeddings(idx)
        scores = self.critic.head(torch.cat([hx + hy, hx + hy.roll(1, dims=1)], dim=1))
        return scores.split(idx.shape[1], dim=1)

    @torch.no_grad()
    def _heldout_scores(self, idx: torch.Tensor, n_marginals: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint scores (K, n) and marginal scores (K, n, R) for shifts 1..R of the held-out order."""
        chunks = [self._embeddings(part) for part in idx.split(_EVAL_CHUNK, dim=1)]
        hx = torch.cat([c[0] for c in chunks], dim=1)
        hy = torch.cat([c[1] for c in chunks], dim=1)
        joint = self.critic.head(hx + hy)
        marginal = torch.stack(
            [self.critic.head(hx + hy.roll(shift, dims=1)) for shift in range(1, n_marginals + 1)],
            dim=-1,
        )
        return joint, marginal

    # -- training -------------------------------------------------------------------------------

    def train_and_evaluate(self, started: float) -> MIResult:
        opts = self.options
        n_train = self.splits["train"].shape[1]
        n_valid = self.splits["valid"].shape[1]
        n_test = self.splits["test"].shape[1]
        batch, bound = opts["batch_size"], opts["bound"]
        info = RunInfo(
            max_steps=opts["max_steps"], eval_every=opts["eval_every"], n_train=n_train,
            n_valid=n_valid, n_test=n_test, log_n=math.log(n_test), bound=bound,
            label=self.label, options=opts,
        )
        step_callbacks = [cb for cb in self.callbacks if overrides(cb, "on_step")]
        sync_every_step = self.device.type == "cpu" or bool(step_callbacks)
        for callback in self.callbacks:
            callback.on_start(info)

        optimizer = torch.optim.Adam(self.modules.parameters(), lr=opts["lr"])
        generator = torch.Generator(device=self.device).manual_seed(int(opts["seed"]))
        train_idx = self.splits["train"]
        steps_per_epoch = n_train // batch
        log_ema: torch.Tensor | None = None
        pending: list[torch.Tensor] = []
        steps: list[int] = []
        train_values: list[float] = []
        eval_steps: list[int] = []
        heldout: list[float] = []
        best_value = -math.inf
        best_state = None
        since_best = 0
        flags = {"still_rising": False, "early_stopped": False, "above_log_n": False,
                 "stopped": False, "non_finite": False}
        order = None
        step = 0
        self.modules.train()
        try:
            for step in range(1, opts["max_steps"] + 1):
                position = (step - 1) % steps_per_epoch
                if position == 0:
                    order = torch.rand(self.n_critics, n_train, generator=generator,
                                       device=self.device).argsort(dim=1)
                idx = train_idx.gather(1, order[:, position * batch:(position + 1) * batch])
                t_joint, t_marginal = self._joint_and_marginal(idx)
                loss, value, log_ema = training_loss(bound, t_joint, t_marginal, log_ema,
                                                     opts["ema_rate"])
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
                pending.append(value)

                is_eval = step % opts["eval_every"] == 0
                if sync_every_step or is_eval or step == opts["max_steps"]:
                    first = step - len(pending) + 1
                    values = torch.stack(pending)[:, 0].tolist()
                    pending.clear()
                    steps.extend(range(first, step + 1))
                    train_values.extend(values)
                    if not all(math.isfinite(v) for v in values):
                        flags["non_finite"] = True
                        break
                stop = False
                for callback in step_callbacks:
                    stop = bool(callback.on_step(step, train_values[-1])) or stop
                if is_eval:
                    current = float(self._validation_value()[0])
                    eval_steps.append(step)
                    heldout.append(current)
                    if not math.isfinite(current):
                        flags["non_finite"] = True
                        break
                    if current > best_value:
                        best_value, since_best = current, 0
                        best_state = [p.detach().clone() for p in self.modules.parameters()]
                    else:
                        since_best += 1
                    for callback in self.callbacks:
                        stop = bool(callback.on_eval(step, current)) or stop
                    if since_best >= opts["patience"]:
                        flags["early_stopped"] = True
                        break
                if stop or (self.stop_event is not None and self.stop_event.is_set()):
                    flags["stopped"] = True
                    break
        except KeyboardInterrupt:
            flags["stopped"] = True
            warnings.warn(f"MINE run interrupted at step {step}; returning what it has.",
                          RuntimeWarning, stacklevel=3)
        if pending:  # steps trained but not yet synced (a stop between syncs)
            values = torch.stack(pending)[:, 0].tolist()
            steps.extend(range(steps[-1] + 1 if steps else 1, steps[-1] + 1 + len(values) if steps else len(values) + 1))
            train_values.extend(values)
        if flags["non_finite"]:
            warnings.warn(
                f"MINE training loss became non-finite at step {steps[-1]}; training stopped there. "
                "Try a smaller lr, bound='mine' or preprocess='quantile' for heavy-tailed data.",
                RuntimeWarning, stacklevel=3)
        ran_to_end = not (flags["early_stopped"] or flags["stopped"] or flags["non_finite"])
        flags["still_rising"] = ran_to_end and bool(heldout) and since_best < opts["patience"]

        if best_state is not None:
            with torch.no_grad():
                for param, saved in zip(self.modules.parameters(), best_state):
                    param.copy_(saved)
        mi, stderr = self._test_estimate() if (best_state is not None or not flags["non_finite"]) \
            else (math.nan, math.nan)
        flags["above_log_n"] = bool(math.isfinite(mi) and mi > math.log(n_test))
        self.modules.eval()
        result = MIResult(
            mi=mi, stderr=stderr, ci95=(mi - 1.96 * stderr, mi + 1.96 * stderr),
            history=History(tuple(steps), tuple(train_values), tuple(eval_steps), tuple(heldout)),
            flags=flags, n_train=n_train, n_valid=n_valid, n_test=n_test,
            seconds=time.perf_counter() - started, options=dict(opts),
        )
        for callback in self.callbacks:
            callback.on_end(result)
        return result

    def _validation_value(self) -> torch.Tensor:
        """Bound on the validation samples, marginals from one fixed derangement: (K,)."""
        was_training = self.modules.training
        self.modules.eval()
        joint, marginal = self._heldout_scores(self.splits["valid"], 1)
        self.modules.train(was_training)
        return bound_value(self.options["bound"], joint, marginal[..., 0])

    def _test_estimate(self) -> tuple[float, float]:
        """The reported estimate on the test samples and its standard error (critic 0)."""
        self.modules.eval()
        n_test = self.splits["test"].shape[1]
        n_marginals = min(self.options["eval_marginals"], n_test - 1)
        joint, marginal = self._heldout_scores(self.splits["test"], n_marginals)
        bound = self.options["bound"]
        estimate = bound_value(bound, joint, marginal.reshape(marginal.shape[0], -1))[0]
        n_chunks = min(_N_STDERR_CHUNKS, n_test // 2)
        parts = [
            bound_value(bound, j, m.reshape(m.shape[0], -1))[0]
            for j, m in zip(joint.chunk(n_chunks, dim=1), marginal.chunk(n_chunks, dim=1))
        ]
        spread = torch.stack(parts)
        stderr = float(spread.std() / math.sqrt(len(parts))) if len(parts) > 1 else math.nan
        return float(estimate), stderr
