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

import copy
import functools
import inspect
import math
import threading
import time
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mitoolkit.bounds import BOUNDS, bound_value, infonce_value, training_loss
from mitoolkit.callbacks import Callback, ProgressBar, RunInfo, overrides
from mitoolkit.chunks import chunk_length
from mitoolkit.critics import MLPCritic
from mitoolkit.devices import cpu_threads as use_cpu_threads, resolve_device
from mitoolkit.features import PREPROCESSING, FeatureSide, prepare_side, prepare_sides
from mitoolkit.reducers import Reducer, make_reducer
from mitoolkit.results import History, MIResult

__all__ = ["estimate_mi", "estimate_mi_seeds", "split_indices", "PREPROCESSING"]

_EVAL_CHUNK = 4096  # samples per forward pass in evaluation, shared by the K critics ...
_EVAL_CHUNK_BYTES = 16 * 2**20  # ... and at most this many bytes of their gathered features
_N_STDERR_CHUNKS = 10
_NEAR_CEILING = 0.9  # InfoNCE is flagged near_log_batch above this share of ln(batch_size)
_CHECK_CHUNK_ELEMENTS = 2**20  # values checked for NaN and inf at a time
_MIN_AUTO_MEMORY_MB = 64  # memory_mb="auto" on the CPU: at least this, else the size of x and y
_VALID_MARGINALS = 8  # derangements per validation sample: ranks checkpoints at ~15 % of the step time


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
    activation: str = "elu",
    lr: float = 5e-4,
    batch_size: int = 256,
    max_steps: int = 5000,
    eval_every: int = 50,
    patience: int = 10,
    test_fraction: float = 0.5,
    valid_fraction: float = 0.5,
    ema_rate: float = 0.01,
    clip: float = 5.0,
    eval_marginals: int = 256,
    preprocess: str = "auto",
    device: str | torch.device = "auto",
    cpu_threads: int | None = 1,
    seed: int | Sequence[int] = 0,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    progress: bool = True,
    label: str = "",
) -> MIResult | list[MIResult]:
    """Estimate the mutual information I(X; Y) in nats with MINE.

    Parameters
    ----------
    x, y : ndarray or Tensor of shape (N, ...)
        Paired samples: row i of x and row i of y are one draw of (X, Y). Any trailing shape;
        it is flattened unless a reducer says otherwise. 1-D arrays are one feature.
    bound : {"mine", "dv", "mine-f", "nwj", "infonce", "smile"}
        ``"mine"``: Donsker-Varadhan bound with the bias-corrected (moving-average) gradient;
        ``"dv"``: same bound, plain minibatch gradient; ``"mine-f"`` / ``"nwj"``: the
        f-divergence bound; ``"infonce"``: contrastive, at most ln(batch_size); ``"smile"``:
        DV with a clipped partition term. :mod:`mitoolkit.bounds` gives their trade-offs.
    reducer : str or Reducer, optional
        Dimensionality reducer for both sides (``"none"``, ``"pca"``, ``"gap"``, ``"cnn"`` or an
        instance from :mod:`mitoolkit.reducers`); ``reducer_x`` / ``reducer_y`` override it per
        side. Fixed reducers are fit on the train split only. Default: flatten.
    width, depth : int
        Hidden units per layer and number of hidden layers of the critic MLP.
    activation : {"elu", "relu", "tanh"}
        Critic non-linearity. ELU is the default: on held-out known-MI Gaussians it came closer
        to the truth than ReLU (smoother critics generalise better from a few thousand samples).
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
    clip : float
        SMILE's clip of the critic in the partition term (``bound="smile"`` only).
    eval_marginals : int
        Marginal pairs per test sample in the final evaluation (each from a different
        derangement of the test samples); more pairs lower the variance of the DV denominator.
    preprocess : {"auto", "standardize", "quantile", "none"}
        Per-feature preprocessing fit on the train split after a fixed reducer. All but
        ``"none"`` standardize with train statistics. ``"quantile"`` first maps every feature
        through its train quantiles to a standard normal (monotone, so MI is unchanged, and heavy
        tails are tamed); ``"auto"`` does so only for heavy-tailed continuous features (excess
        kurtosis > 3). Trainable reducers get standardized inputs.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        ``"auto"``: CUDA when available, else CPU.
    cpu_threads : int or None
        Torch intra-op threads while running on the CPU, restored afterwards (None: leave the
        setting alone). One is fastest for these small critics on a few shared cores.
    seed : int or sequence of int
        Seeds the split, the critic's initialisation and the batches. Same seed, same machine:
        same result. No global random state is used or changed. Several seeds (a list, tuple,
        range or integer array) give one estimate per seed, their critics trained together in one
        vectorized pass by :func:`estimate_mi_seeds` (with its default ``memory_mb``).
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
    MIResult, or list of MIResult for several seeds
        ``mi`` (nats) evaluated on held-out test samples, its standard error and 95 % interval,
        the training history, flags and the options used.

    Raises
    ------
    ValueError
        On inconsistent or invalid input, naming the parameter, what was received and what to do.
    """
    settings = {name: value for name, value in locals().items() if name not in ("x", "y", "seed")}
    if isinstance(seed, (list, tuple, range, np.ndarray)):
        return estimate_mi_seeds(x, y, seeds=list(seed), **settings)
    return _estimate(x, y, [seed], settings)[0]


def estimate_mi_seeds(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    seeds: Sequence[int],
    memory_mb: float | str | None = "auto",
    **options: Any,
) -> list[MIResult]:
    """Estimate I(X; Y) in nats once per seed, training the K = len(seeds) critics together.

    Result k is distributed as ``estimate_mi(x, y, seed=seeds[k], **options)``: its own
    train/validation/test split, critic initialisation, batches, moving average, early stopping
    (a critic out of patience keeps its best snapshot and its history ends there while the others
    go on), test estimate and flags. The K critics share one vectorized pass (stacked parameters,
    batched products), which costs far less than K runs on small critics.

    Parameters
    ----------
    x, y : ndarray or Tensor of shape (N, ...)
        As in :func:`estimate_mi`.
    seeds : sequence of int
        One estimate per seed, in this order.
    memory_mb : float, "auto" or None
        Most memory (MiB) the critics trained together may take, estimated from the input widths
        (parameters, gradients, optimizer state, best snapshot and a minibatch per critic); the
        seeds are trained in consecutive groups that fit. ``"auto"``: on the CPU, the size of x
        and y as float32 (at least 64 MiB), so that wide layers cost at most about as much again
        as the data; on a GPU, no limit. None: all seeds in one pass.
    **options
        Any other option of :func:`estimate_mi` (not ``seed``).

    Returns
    -------
    list of MIResult
        One per seed. ``seconds`` is the time of the whole shared pass.

    Notes
    -----
    Trainable reducers (``"cnn"``), and fixed reducers whose reduced width differs between splits,
    run the seeds one by one. Callbacks follow the first seed (on_start, on_step, on_eval while
    it trains, on_end with its result); a stop they ask for, or ``stop_event``, stops all critics
    and the groups not yet started. Each group of seeds shows its own progress bar.

    Raises
    ------
    ValueError
        On an empty or non-integer ``seeds``, ``seed`` among the options, an unknown option, or any
        error :func:`estimate_mi` raises.
    """
    if "seed" in options:
        raise ValueError("estimate_mi_seeds takes seeds=[...], not seed; received seed="
                         f"{options['seed']!r}. Pass seeds=[{options['seed']!r}] for one seed.")
    known = {name: p.default for name, p in inspect.signature(estimate_mi).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "seed"}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for estimate_mi_seeds; it "
                         f"accepts seeds and {', '.join(known)}.")
    if (isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds)):
        raise ValueError(f"seeds must be a non-empty sequence of integers; received {seeds!r}.")
    settings = {**known, **options}
    seed_list = [int(s) for s in seeds]
    if len(seed_list) > 1 and any(
        make_reducer(settings[name] if settings[name] is not None else settings["reducer"]).trainable
        for name in ("reducer_x", "reducer_y")
    ):
        return _one_by_one(x, y, seed_list, settings)
    size = _group_size(x, y, settings, memory_mb)
    results: list[MIResult] = []
    for start in range(0, len(seed_list), size):
        # Callbacks follow the first seed, which is in the first group.
        group_settings = settings if start == 0 else dict(settings, callbacks=())
        results.extend(_estimate(x, y, seed_list[start:start + size], group_settings))
        if results[-1].flags["stopped"]:
            break
    return results


def _group_size(x: Any, y: Any, settings: dict[str, Any], memory_mb: float | str | None) -> int:
    """How many critics to train together within ``memory_mb`` (see estimate_mi_seeds)."""
    if memory_mb is None:
        return 2**62
    widths = [int(np.prod(np.shape(data)[1:])) for data in (x, y)]
    if memory_mb == "auto":
        if resolve_device(settings["device"]).type != "cpu":
            return 2**62
        memory_mb = max(_MIN_AUTO_MEMORY_MB, len(x) * sum(widths) * 4 / 2**20)
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not memory_mb > 0:
        raise ValueError(f"memory_mb must be a positive number of MiB, 'auto' or None; received "
                         f"{memory_mb!r}.")
    width = settings["width"]
    first_layer = sum(widths) * width + settings["depth"] * width * (width + 1)
    # parameters, gradients, two Adam moments and the best snapshot; gathered, standardized and
    # saved minibatch features
    per_critic = 4 * (5 * first_layer + 3 * settings["batch_size"] * sum(widths))
    return max(1, int(memory_mb * 2**20 // per_critic))


def _one_by_one(x: Any, y: Any, seeds: list[int], settings: dict[str, Any]) -> list[MIResult]:
    """Separate runs, one per seed (trainable reducers; per-split reduced widths that differ)."""
    results = []
    for seed in seeds:
        spec = {k: copy.deepcopy(v) if isinstance(v, Reducer) else v for k, v in settings.items()}
        results.append(estimate_mi(x, y, seed=seed, **spec))
        if results[-1].flags["stopped"]:
            break
    return results


def _estimate(x: Any, y: Any, seeds: list[int], settings: dict[str, Any]) -> list[MIResult]:
    """Checks, split, features and the training of K = len(seeds) critics; one result per seed."""
    started = time.perf_counter()
    options = {name: settings[name] for name in (
        "bound", "width", "depth", "activation", "lr", "batch_size", "max_steps", "eval_every",
        "patience", "test_fraction", "valid_fraction", "ema_rate", "clip", "eval_marginals",
        "preprocess")}
    options["seed"] = seeds[0]
    _check_options(options)
    torch_device = resolve_device(settings["device"])
    options["device"] = str(torch_device)
    x_data = _as_samples("x", x)
    y_data = _as_samples("y", y)
    if x_data.shape[0] != y_data.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples N (first dimension); received x with "
            f"N={x_data.shape[0]} and y with N={y_data.shape[0]}. Row i of x and row i of y must "
            "be one paired draw of (X, Y)."
        )
    per_seed = [split_indices(
        x_data.shape[0], test_fraction=options["test_fraction"],
        valid_fraction=options["valid_fraction"], batch_size=options["batch_size"], seed=seed,
    ) for seed in seeds]
    x_data, y_data = x_data.to(torch_device), y_data.to(torch_device)
    # (K, n) index rows, one per critic trained together.
    splits = {name: torch.stack([s[name] for s in per_seed]).to(torch_device)
              for name in per_seed[0]}
    spec_x = settings["reducer_x"] if settings["reducer_x"] is not None else settings["reducer"]
    spec_y = settings["reducer_y"] if settings["reducer_y"] is not None else settings["reducer"]
    if isinstance(spec_y, Reducer) and spec_y is spec_x:
        spec_y = copy.deepcopy(spec_y)  # one instance for both sides: each side fits its own
    preprocess = options["preprocess"]
    if len(seeds) == 1:
        side_x = prepare_side("x", x_data, spec_x, splits["train"], preprocess, seeds[0])
        side_y = prepare_side("y", y_data, spec_y, splits["train"], preprocess, seeds[0] + 1)
    else:
        side_x = prepare_sides("x", x_data, spec_x, splits["train"], preprocess, seeds)
        side_y = prepare_sides("y", y_data, spec_y, splits["train"], preprocess,
                               [s + 1 for s in seeds])
        if side_x is None or side_y is None:
            return _one_by_one(x, y, seeds, settings)
    options["reducer_x"] = side_x.info
    options["reducer_y"] = side_y.info
    label = settings["label"]
    all_callbacks = list(settings["callbacks"])
    if settings["progress"]:
        all_callbacks.insert(0, ProgressBar(desc=label or "MINE"))
    run = _MineRun(side_x, side_y, splits, options, seeds, torch_device, all_callbacks,
                   settings["stop_event"], label)
    threads = settings["cpu_threads"]
    with use_cpu_threads(threads if torch_device.type == "cpu" else None):
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
    if not float(options["clip"]) > 0.0:
        fail("clip", "positive")
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
    flat = tensor.reshape(tensor.shape[0], -1)
    step = chunk_length(_CHECK_CHUNK_ELEMENTS, flat.shape[1])  # isfinite's temporaries stay small
    if not all(bool(torch.isfinite(flat[i:i + step]).all()) for i in range(0, flat.shape[0], step)):
        bad = ~torch.isfinite(tensor)
        rows = bad.reshape(tensor.shape[0], -1).any(dim=1).nonzero().flatten()
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(bad.sum()) - n_nan
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values in {len(rows)} samples "
            f"(first at sample {int(rows[0])}); remove or impute those samples (in both x and y) "
            "before estimating MI."
        )
    return tensor


def split_indices(
    n_samples: int,
    *,
    test_fraction: float = 0.5,
    valid_fraction: float = 0.5,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The train / validation / test split that :func:`estimate_mi` uses for these options.

    Parameters
    ----------
    n_samples : int
        N.
    test_fraction, valid_fraction, batch_size, seed
        As in :func:`estimate_mi`.

    Returns
    -------
    dict with keys ``"train"``, ``"valid"``, ``"test"``
        Disjoint int64 index tensors covering ``range(n_samples)``.

    Raises
    ------
    ValueError
        When N is too small for the batch size and the split; the message says how many samples
        are needed.
    """
    n_heldout = int(round(n_samples * test_fraction))
    n_valid = int(round(n_heldout * valid_fraction))
    n_test = n_heldout - n_valid
    n_train = n_samples - n_heldout
    if n_train < batch_size or n_valid < 2 or n_test < 2:
        needed = max(
            math.ceil(batch_size / (1.0 - test_fraction)),
            math.ceil(2 / (test_fraction * min(valid_fraction, 1 - valid_fraction))),
        )
        raise ValueError(
            f"N={n_samples} samples are too few: with test_fraction={test_fraction} and "
            f"valid_fraction={valid_fraction}, training gets {n_train} samples, validation "
            f"{n_valid} and test {n_test}, but a batch needs batch_size={batch_size} training "
            f"samples and each held-out part at least 2. Provide at least {needed} samples, or "
            f"lower batch_size (at most {max(n_train, 0)} here)."
        )
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_samples, generator=generator)
    return {
        "train": order[:n_train],
        "valid": order[n_train:n_train + n_valid],
        "test": order[n_train + n_valid:],
    }


# --------------------------------------------------------------------------- the training run


class _MineRun:
    """Trains K critics together and evaluates each; one instance per call."""

    def __init__(
        self,
        side_x: FeatureSide,
        side_y: FeatureSide,
        splits: dict[str, torch.Tensor],
        options: dict[str, Any],
        seeds: list[int],
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
        self.seeds = seeds
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

    def _score_matrix(self, idx: torch.Tensor) -> torch.Tensor:
        """Scores of every pairing in the batch, S[k, i, j] = T_k(x_i, y_j): (K, B, B)."""
        hx, hy = self._embeddings(idx)
        return self.critic.head(hx[:, :, None, :] + hy[:, None, :, :])

    @torch.no_grad()
    def _heldout_scores(self, idx: torch.Tensor, n_marginals: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint scores (K, n) and marginal scores (K, n, R) for shifts 1..R of the held-out order."""
        n_critics = idx.shape[0]  # K critics: the same memory as one
        widest = max(self.x.sample_numel, self.y.sample_numel) * 4
        chunk = max(1, min(_EVAL_CHUNK // n_critics, _EVAL_CHUNK_BYTES // (n_critics * widest)))
        chunks = [self._embeddings(part) for part in idx.split(chunk, dim=1)]
        hx = torch.cat([c[0] for c in chunks], dim=1)
        hy = torch.cat([c[1] for c in chunks], dim=1)
        joint = self.critic.head(hx + hy)
        # Written into one buffer allocated up front: keeping R small outputs between the large
        # temporaries of each shift fragments the CPU heap (measured: +1.4 GB at K=10, D=8192).
        marginal = joint.new_empty((*joint.shape, n_marginals))
        for shift in range(1, n_marginals + 1):
            marginal[..., shift - 1] = self.critic.head(hx + hy.roll(shift, dims=1))
        return joint, marginal

    # -- training -------------------------------------------------------------------------------

    def train_and_evaluate(self, started: float) -> list[MIResult]:
        """Train with early stopping, restore each best critic, evaluate them on their test samples."""
        opts = self.options
        sizes = {name: idx.shape[1] for name, idx in self.splits.items()}
        info = RunInfo(
            max_steps=opts["max_steps"], eval_every=opts["eval_every"], n_train=sizes["train"],
            n_valid=sizes["valid"], n_test=sizes["test"], log_n=math.log(sizes["test"]),
            bound=opts["bound"], label=self.label, options=opts,
        )
        for callback in self.callbacks:
            callback.on_start(info)
        log = _TrainingLog(patience=opts["patience"], n_critics=self.n_critics)
        try:
            self._train(log)
        except KeyboardInterrupt:
            log.stop_all("stopped")
            warnings.warn(f"MINE run interrupted at step {log.last_step}; returning what it has.",
                          RuntimeWarning, stacklevel=4)
        for k, flags in enumerate(log.flags):
            if flags["non_finite"]:
                warnings.warn(
                    f"MINE training{self._which(k)} became non-finite at step {log.last_step_of(k)}; "
                    "training stopped there and the history is kept. Try a smaller lr, or "
                    "preprocess='quantile' for heavy-tailed data.", RuntimeWarning, stacklevel=4)
            flags["still_rising"] = not (
                flags["early_stopped"] or flags["stopped"] or flags["non_finite"]
            ) and bool(log.heldout[k])

        if log.best_state is not None:
            has_best = torch.tensor(log.has_best, device=self.device)
            with torch.no_grad():
                for param, best in zip(self._params(), log.best_state):
                    param.copy_(torch.where(_per_critic(has_best, param), best, param))
        estimates, stderrs = self._test_estimate()
        results = []
        elapsed = time.perf_counter() - started
        for k, seed in enumerate(self.seeds):
            flags = log.flags[k]
            mi, stderr = estimates[k], stderrs[k]
            if not log.has_best[k] and flags["non_finite"]:
                mi, stderr = math.nan, math.nan
            flags["above_log_n"] = bool(math.isfinite(mi) and mi > info.log_n)
            if opts["bound"] == "infonce":
                flags["near_log_batch"] = bool(
                    math.isfinite(mi) and mi > _NEAR_CEILING * math.log(opts["batch_size"]))
            results.append(MIResult(
                mi=mi, stderr=stderr, ci95=(mi - 1.96 * stderr, mi + 1.96 * stderr),
                history=log.history(k), flags=flags, n_train=sizes["train"],
                n_valid=sizes["valid"], n_test=sizes["test"], seconds=elapsed,
                options=dict(opts, seed=seed),
            ))
        self.modules.eval()
        for callback in self.callbacks:
            callback.on_end(results[0])
        return results

    def _which(self, k: int) -> str:
        return f" of seed {self.seeds[k]}" if self.n_critics > 1 else ""

    def _params(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.modules.parameters()]

    def _train(self, log: "_TrainingLog") -> None:
        """The optimisation loop; records into ``log`` and returns when any stop condition holds."""
        opts = self.options
        batch, n_train = opts["batch_size"], self.splits["train"].shape[1]
        step_callbacks = [cb for cb in self.callbacks if overrides(cb, "on_step")]
        # Reading the loss back forces a device sync: every step on the CPU (free) or when a
        # callback wants per-step values, otherwise only at evaluations.
        sync_every_step = self.device.type == "cpu" or bool(step_callbacks)
        optimizer = torch.optim.Adam(self.modules.parameters(), lr=opts["lr"])
        generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in self.seeds]
        steps_per_epoch = n_train // batch
        log_ema: torch.Tensor | None = None
        self.modules.train()
        for step in range(1, opts["max_steps"] + 1):
            position = (step - 1) % steps_per_epoch
            if position == 0:  # a fresh random order of the training samples each epoch
                order = torch.cat([torch.rand(1, n_train, generator=g, device=self.device)
                                   for g in generators]).argsort(dim=1)
            idx = self.splits["train"].gather(1, order[:, position * batch:(position + 1) * batch])
            if opts["bound"] == "infonce":
                value = infonce_value(self._score_matrix(idx))
                loss = -value
                value = value.detach()
            else:
                t_joint, t_marginal = self._joint_and_marginal(idx)
                loss, value, log_ema = training_loss(opts["bound"], t_joint, t_marginal, log_ema,
                                                     opts["ema_rate"], clip=opts["clip"])
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            log.pending.append(value)

            is_eval = step % opts["eval_every"] == 0
            if (sync_every_step or is_eval) and not log.flush() and log.all_done:
                return
            stop = False
            if log.active[0]:  # callbacks follow critic 0
                for callback in step_callbacks:
                    stop = bool(callback.on_step(step, log.train_bound[0][-1])) or stop
            if is_eval:
                follow = log.active[0]
                current = log.record_eval(step, self._validation_value().tolist(), self._params())
                if follow and math.isfinite(current[0]):
                    for callback in self.callbacks:
                        stop = bool(callback.on_eval(step, current[0])) or stop
                if log.all_done:
                    return
            if stop or (self.stop_event is not None and self.stop_event.is_set()):
                log.stop_all("stopped")
                return
        log.flush()

    def _validation_value(self) -> torch.Tensor:
        """The bound on the validation samples: (K,). Fewer marginal pairs than the test."""
        was_training = self.modules.training
        estimate, _ = self._heldout_value(self.splits["valid"], _VALID_MARGINALS)
        self.modules.train(was_training)
        return estimate

    def _test_estimate(self) -> tuple[list[float], list[float]]:
        """The reported estimates on the test samples and their standard errors: K of each."""
        estimate, parts = self._heldout_value(self.splits["test"], self.options["eval_marginals"])
        n_parts = parts.shape[1]
        stderr = (parts.std(dim=1) / math.sqrt(n_parts)).tolist() if n_parts > 1 else [math.nan] * len(estimate)
        return estimate.tolist(), stderr

    @torch.no_grad()
    def _heldout_value(self, idx: torch.Tensor, n_marginals: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The bound on held-out samples ``idx`` (K, n), with the critic in eval mode.

        Returns
        -------
        estimate : Tensor (K,)
        parts : Tensor (K, P)
            The bound on P disjoint groups of the samples; their spread gives the standard error.
        """
        self.modules.eval()
        n = idx.shape[1]
        if self.options["bound"] == "infonce":
            # Batches of the training batch size, so the ceiling is ln(batch_size) as in training.
            size = min(self.options["batch_size"], n)
            parts = torch.stack([infonce_value(self._score_matrix(part))
                                 for part in idx[:, : n - n % size].split(size, dim=1)], dim=1)
            return parts.mean(dim=1), parts
        joint, marginal = self._heldout_scores(idx, min(n_marginals, n - 1))
        value = functools.partial(bound_value, self.options["bound"], clip=self.options["clip"])
        estimate = value(joint, marginal.reshape(marginal.shape[0], -1))
        n_parts = min(_N_STDERR_CHUNKS, n // 2)
        parts = torch.stack([
            value(j, m.reshape(m.shape[0], -1))
            for j, m in zip(joint.chunk(n_parts, dim=1), marginal.chunk(n_parts, dim=1))
        ], dim=1)
        return estimate, parts


def _per_critic(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A (K,) mask shaped to broadcast over a stacked (K, ...) parameter."""
    return mask.view(-1, *([1] * (param.ndim - 1)))


class _TrainingLog:
    """Histories, flags and early-stopping state of K critics trained together.

    A critic is active until it runs out of patience, becomes non-finite or is stopped; after that
    its history, best snapshot and flags no longer change, while the others go on.
    """

    def __init__(self, *, patience: int, n_critics: int = 1) -> None:
        self.patience = patience
        self.pending: list[torch.Tensor] = []  # per-step (K,) bounds not yet read back from the device
        self.train_bound: list[list[float]] = [[] for _ in range(n_critics)]
        self.eval_step: list[list[int]] = [[] for _ in range(n_critics)]
        self.heldout: list[list[float]] = [[] for _ in range(n_critics)]
        self.best_value = [-math.inf] * n_critics
        self.has_best = [False] * n_critics
        self.best_state: list[torch.Tensor] | None = None  # stacked (K, ...) snapshots
        self.since_best = [0] * n_critics
        self.active = [True] * n_critics
        self.flags = [{"still_rising": False, "early_stopped": False, "above_log_n": False,
                       "stopped": False, "non_finite": False} for _ in range(n_critics)]
        self._steps = 0

    @property
    def last_step(self) -> int:
        return self._steps + len(self.pending)

    def last_step_of(self, k: int) -> int:
        return len(self.train_bound[k])

    @property
    def all_done(self) -> bool:
        return not any(self.active)

    def stop_all(self, flag: str) -> None:
        for k, active in enumerate(self.active):
            if active:
                self.flags[k][flag] = True
                self.active[k] = False

    def flush(self) -> bool:
        """Read pending training bounds back; False when one became non-finite (it is then done)."""
        if not self.pending:
            return True
        rows = torch.stack(self.pending).T.tolist()
        self._steps += len(self.pending)
        self.pending.clear()
        ok = True
        for k, values in enumerate(rows):
            if not self.active[k]:
                continue
            self.train_bound[k].extend(values)
            if not all(math.isfinite(v) for v in values):
                self.flags[k]["non_finite"] = True
                self.active[k] = False
                ok = False
        return ok

    def record_eval(self, step: int, values: list[float], params: list[torch.Tensor]) -> list[float]:
        """Record the active critics' validation estimates; snapshot each critic at its best."""
        improved = [False] * len(values)
        for k, value in enumerate(values):
            if not self.active[k]:
                continue
            if not math.isfinite(value):
                self.flags[k]["non_finite"] = True
                self.active[k] = False
                continue
            self.eval_step[k].append(step)
            self.heldout[k].append(value)
            if value > self.best_value[k]:
                self.best_value[k], self.since_best[k] = value, 0
                improved[k] = self.has_best[k] = True
            else:
                self.since_best[k] += 1
                if self.since_best[k] >= self.patience:
                    self.flags[k]["early_stopped"] = True
                    self.active[k] = False
        if self.best_state is None and any(improved):
            self.best_state = [p.clone() for p in params]
        elif any(improved):
            mask = torch.tensor(improved, device=params[0].device)
            self.best_state = [torch.where(_per_critic(mask, p), p, best)
                               for p, best in zip(params, self.best_state)]
        return values

    def history(self, k: int = 0) -> History:
        self.flush()
        return History(
            step=tuple(range(1, len(self.train_bound[k]) + 1)),
            train_bound=tuple(self.train_bound[k]),
            eval_step=tuple(self.eval_step[k]),
            heldout=tuple(self.heldout[k]),
        )
