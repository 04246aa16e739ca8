"""The information plane: I(X; T) and I(T; Y) of each layer, measured while a network trains.

:func:`information_plane` trains a network for E epochs (the reference CNN with its usual recipe,
or any model with your ``train_fn``) and, at the epochs you choose (0 is the untrained network),
collects the chosen layers' activations under the minor random transformations and estimates both
quantities with MINE and the chosen reducer, over several seeds:

* I(X; T): X is one of the N images, T the layer's activation of a randomly transformed copy (the
  transformation is the channel's only noise; see DESIGN.md). Ceiling ln N.
* I(T; Y): Y is the label (one-hot). Ceiling ln K for K classes.

The pairs are built by :func:`mitoolkit.experiments.mi_pair`, as in the paper's comparison. The
transformations are drawn once (``data_seed``) and are the same at every epoch, so what changes
from one epoch to the next is the network only; a row's seed seeds the estimator only.

Results are rows (epoch, layer, quantity, seed, estimate, interval, flags) and a summary per
(epoch, layer, quantity) over seeds: :class:`InformationPlane` (:mod:`mitoolkit.plane_results`),
saved as ``plane.json``, ``plane.csv`` and ``plane_summary.csv``; drawn by :func:`plane_figure`
(one path per layer in the (I(X; T), I(T; Y)) plane, coloured by epoch, with the ceilings) and
written as a self-contained ``plane.html`` by :func:`write_plane_report`
(:mod:`mitoolkit.plane_report`). :class:`mitoolkit.widgets.LivePlane` draws the plane live in a
notebook. This module re-exports all of them.

With ``out``, a checkpoint is written after every epoch (model, optimizer, scheduler, the
training's random state and its history; atomically), and every row as it finishes: running the
same call again resumes, without retraining finished epochs or re-estimating finished rows.

The seeds of one (epoch, layer, quantity) are estimated together by
:func:`mitoolkit.mine.estimate_mi_seeds` (the many-estimators issue: one critic per seed, trained
in one vectorized pass; each result is distributed as ``estimate_mi`` with its seed). Layers,
quantities and epochs are still one after another.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mitoolkit.callbacks import Callback
from mitoolkit.comparison import METHOD_LABELS, write_atomic
from mitoolkit.data import ImageDataset, balanced_indices, load_dataset, minor_transforms
from mitoolkit.devices import cpu_threads as use_cpu_threads, resolve_device
from mitoolkit.layers import collect_activations
from mitoolkit.mine import estimate_mi

try:  # the many-estimators issue: K critics, one per seed, trained in one vectorized pass
    from mitoolkit.mine import estimate_mi_seeds
except ImportError:  # pragma: no cover - an older estimator: one seed after another
    estimate_mi_seeds = None
from mitoolkit.models import (
    _BATCH_SIZE,
    _LEARNING_RATE,
    _WEIGHT_DECAY,
    DEFAULT_EPOCHS,
    ReferenceCNN,
    _save_atomic,
    evaluate_accuracy,
)
from mitoolkit.plane_report import plane_figure, quantity_figure, update_plane_figure, write_plane_report
from mitoolkit.plane_results import (
    ABOVE_CEILING,
    DEFAULT_REDUCER,
    QUANTITIES,
    QUANTITY_LABELS,
    ROW_FORMAT,
    DPICheck,
    InformationPlane,
    PlaneRow,
    PlaneSummary,
    summarize_rows,
)

__all__ = [
    "ABOVE_CEILING",
    "QUANTITIES",
    "QUANTITY_LABELS",
    "DPICheck",
    "InformationPlane",
    "PlaneRow",
    "PlaneSummary",
    "information_plane",
    "plane_figure",
    "quantity_figure",
    "summarize_rows",
    "train_epoch",
    "update_plane_figure",
    "write_plane_report",
]

_TARGET = {"ixt": "input", "ity": "label"}  # mi_pair's name for each quantity
CHECKPOINT_FORMAT = "mitoolkit.plane-checkpoint/1"
DEFAULT_MAX_STEPS = 2000
_MAX_SAMPLES = 5000



# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_epoch(
    model: nn.Module,
    data: ImageDataset,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    batch_size: int = _BATCH_SIZE,
    device: str | torch.device = "auto",
    generator: torch.Generator | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Train ``model`` for one pass over ``data`` in a random order: the reference recipe's epoch.

    Parameters
    ----------
    model : nn.Module
        Trained in place, in train mode; left in eval mode.
    data : ImageDataset
        Images (N, C, H, W) and labels (N,).
    optimizer : torch.optim.Optimizer
    scheduler : learning-rate scheduler, optional
        Stepped after every batch (e.g. ``OneCycleLR``).
    batch_size : int
    device : str or torch.device
        Where the batches go; the model must already be there.
    generator : torch.Generator, optional
        Draws the order of the samples; default torch's global generator.
    loss_fn : callable, optional
        ``loss_fn(logits, labels)``; default cross-entropy.

    Returns
    -------
    float
        The mean training loss over the epoch.
    """
    target = resolve_device(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    x_all, y_all = data.images.to(target), data.labels.to(target)
    n = len(data)
    model.train()
    order = torch.randperm(n, generator=generator).to(target)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        loss = loss_fn(model(x_all[idx]), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(idx)
    model.eval()
    return total / max(n, 1)


class _ReferenceTraining:
    """The reference network's recipe (that of :func:`mitoolkit.models.train_reference_model`),
    one epoch per call: AdamW, one-cycle learning rate over all epochs, batches of 64, shuffled by
    torch's global generator (the training's own stream, carried in the checkpoints)."""

    def __init__(self, model: nn.Module, train: ImageDataset, test: ImageDataset, epochs: int,
                 device: torch.device) -> None:
        self.train, self.test, self.device = train, test, device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=_WEIGHT_DECAY)
        steps = epochs * -(-len(train) // _BATCH_SIZE)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=_LEARNING_RATE, total_steps=steps, pct_start=0.15)

    def __call__(self, model: nn.Module, epoch: int) -> dict[str, float]:
        loss = train_epoch(model, self.train, optimizer=self.optimizer, scheduler=self.scheduler,
                           device=self.device)
        return {"train_loss": loss, "test_accuracy": evaluate_accuracy(model, self.test, device=self.device)}

    def initial(self, model: nn.Module) -> dict[str, float]:
        """The untrained network's test accuracy (epoch 0)."""
        return {"test_accuracy": evaluate_accuracy(model, self.test, device=self.device)}


# --------------------------------------------------------------------------------------------
# The training's random state
# --------------------------------------------------------------------------------------------


def _rng_get(cuda: bool) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def _rng_set(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_as_tuple(state["python"]))


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class _TrainingRandomness:
    """The training's own random stream (torch, CUDA, numpy, random), seeded once, saved in every
    checkpoint. Training runs inside it; the caller's generators are restored afterwards, and the
    measurements in between cannot shift it, so a resumed run trains exactly as an uninterrupted one.
    """

    def __init__(self, seed: int, cuda: bool) -> None:
        self.cuda = cuda
        with self._caller_kept():
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            self.state = _rng_get(cuda)

    @contextlib.contextmanager
    def _caller_kept(self) -> Iterator[None]:
        saved = _rng_get(self.cuda)
        try:
            yield
        finally:
            _rng_set(saved)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._caller_kept():
            _rng_set(self.state)
            yield
            self.state = _rng_get(self.cuda)


# --------------------------------------------------------------------------------------------
# Files: checkpoints and rows
# --------------------------------------------------------------------------------------------


class _Checkpoints:
    """One file per epoch under ``folder/checkpoints``, tagged with the training's fingerprint."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder / "checkpoints"
        self.fingerprint = fingerprint

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.pt"

    def scan(self) -> tuple[set[int], list[Path]]:
        """Epochs saved with this fingerprint, and the files saved with another (or unreadable)."""
        found, stale = set(), []
        if not self.folder.is_dir():
            return found, stale
        for path in sorted(self.folder.glob("epoch-*.pt")):
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                ok = payload.get("format") == CHECKPOINT_FORMAT and payload.get("fingerprint") == self.fingerprint
            except Exception:  # noqa: BLE001 - damaged or foreign: treated as written by something else
                ok = False
            if ok:
                found.add(int(payload["epoch"]))
            else:
                stale.append(path)
        return found, stale

    def save(self, epoch: int, payload: dict[str, Any]) -> None:
        _save_atomic({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "epoch": epoch,
                      **payload}, self.path(epoch))

    def load(self, epoch: int) -> dict[str, Any]:
        return torch.load(self.path(epoch), map_location="cpu", weights_only=True)


class _Rows:
    """Rows on disk, one JSON file each under ``folder/rows`` (written with
    :func:`mitoolkit.comparison.write_atomic`), tagged with the arguments' fingerprint: the
    :class:`mitoolkit.comparison.RowStore` scheme for (epoch, layer, quantity, seed) keys."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder / "rows"
        self.fingerprint = fingerprint

    def path(self, key: tuple[int, str, str, int]) -> Path:
        epoch, layer, quantity, seed = key
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", layer)
        return self.folder / f"e{epoch:04d}--{safe}--{quantity}--seed{seed}.json"

    def scan(self) -> tuple[dict[tuple[int, str, str, int], PlaneRow], list[Path]]:
        found: dict[tuple[int, str, str, int], PlaneRow] = {}
        stale: list[Path] = []
        if not self.folder.is_dir():
            return found, stale
        for path in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                if data.get("format") != ROW_FORMAT:
                    raise ValueError("not a row file")
                row = PlaneRow.from_dict(data["row"])
            except (ValueError, KeyError, TypeError, OSError):
                stale.append(path)
                continue
            if data.get("fingerprint") == self.fingerprint:
                found[row.key] = row
            else:
                stale.append(path)
        return found, stale

    def write(self, row: PlaneRow) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(row.key), json.dumps(
            {"format": ROW_FORMAT, "fingerprint": self.fingerprint, "row": row.to_dict()}))


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def information_plane(
    layers: str | Sequence[str],
    *,
    model: nn.Module | str = "reference",
    train_fn: Callable[[nn.Module, int], Mapping[str, float] | None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    dataset: str | ImageDataset = "digits",
    epochs: int | None = None,
    epochs_to_measure: Sequence[int] | None = None,
    reducer: str = DEFAULT_REDUCER,
    seeds: int | Sequence[int] = 2,
    n_samples: int | None = None,
    data_root: str | os.PathLike | None = None,
    transforms: Callable[[torch.Tensor], torch.Tensor] | None | str = "default",
    data_seed: int = 0,
    train_seed: int = 0,
    other_side: str = "none",
    pca_components: int = 32,
    cnn_options: Mapping[str, Any] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    estimator_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    cpu_threads: int | None = 1,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    on_row: Callable[[PlaneRow], None] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> InformationPlane:
    """Train a network and measure I(X; T) and I(T; Y) of its layers at chosen epochs.

    Parameters
    ----------
    layers : str or sequence of str
        Dotted layer names (:func:`mitoolkit.layers.list_layers`), e.g. ``["conv1", "conv2"]``.
    model : "reference" or nn.Module
        ``"reference"`` (default): a :class:`~mitoolkit.models.ReferenceCNN` initialised by
        ``train_seed`` and trained on ``dataset``'s train split with the recipe of
        :func:`~mitoolkit.models.train_reference_model` (AdamW, one-cycle learning rate, batches of
        64), its test accuracy recorded after each epoch. An ``nn.Module`` needs ``train_fn``; it
        is trained in place and ends with the last epoch's weights (its device and mode restored).
    train_fn : callable, optional
        ``train_fn(model, epoch)`` trains ``model`` (on ``device``, in train mode) for one epoch,
        ``epoch`` counting from 1; it may return a dict of numbers to record (e.g.
        ``{"train_loss": ...}``).
        It runs inside the training's own random stream (torch, numpy, random), seeded by
        ``train_seed`` and saved in the checkpoints, so a resumed run trains as an uninterrupted one.
    optimizer, scheduler : optional
        The optimizer (and learning-rate scheduler) your ``train_fn`` uses: their state is saved in
        each checkpoint and restored on resuming. Without them a resumed run restarts them fresh.
    dataset : {"digits", "cifar10", "cifar100"} or ImageDataset
        The measured images come from its train split (what the network learns), class-balanced;
        ``"digits"`` is bundled and offline. An ImageDataset needs a model with ``train_fn``.
    epochs : int, optional
        Epochs to train, E. Default for the reference network: its usual epochs (10 on digits);
        required with ``train_fn``.
    epochs_to_measure : sequence of int, optional
        Epochs after which to measure, from 0 (untrained) to E. Default: every one, 0..E.
    reducer : {"pca", "gap", "none", "cnn"}
        What happens to the activation T before MINE, for both quantities (see
        :mod:`mitoolkit.reducers`; ``"baseline"`` means ``"none"``). Default PCA (k =
        ``pca_components``): it applies to every layer and the seed paper finds it stable and fast.
        GAP and CNN need (C, H, W) maps: a flat layer is flattened instead, with a warning. A
        reduction loses most on the widest layers: on digits, PCA puts conv1 (1,024 features)
        below conv2, where the baseline (``"none"``) finds I(X; T) falling with depth as it must.
    seeds : int or sequence of int
        ``2`` means seeds 0 and 1: estimates per (epoch, layer, quantity), their critics trained
        together by :func:`mitoolkit.mine.estimate_mi_seeds` (a row's ``seconds`` is then the
        time of that shared pass).
    n_samples : int, optional
        Images measured, class-balanced, chosen by ``data_seed``; default min(5000, the split's).
    data_root : path, optional
        Where the CIFAR archives are.
    transforms : callable, None or "default"
        The channel's noise (:func:`mitoolkit.data.minor_transforms` by default), drawn once by
        ``data_seed`` and the same at every epoch.
    data_seed, train_seed : int
        Seed the images and transformations; the initialisation and the training's order.
    other_side : {"none", "pca"}
        How X (the image, flattened) and Y (the one-hot label) are treated.
    pca_components : int
        k of the PCA reducer, capped at what the data allows.
    cnn_options : dict, optional
        Options of :class:`mitoolkit.reducers.ConvEncoder` for ``reducer="cnn"``.
    max_steps : int
        Step budget of each estimate (early stopping usually ends it sooner).
    estimator_options : dict, optional
        Further :func:`mitoolkit.mine.estimate_mi` options (``batch_size``, ``lr``, ``bound``...).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        Training, activations and estimates all run there.
    cpu_threads : int or None
        Torch intra-op threads while on the CPU, restored afterwards (1: fastest for these small
        networks on shared cores). None leaves torch's setting alone.
    callbacks : sequence of Callback
        Passed to every estimate; one that stops a run stops the whole job (finished rows kept).
    stop_event : threading.Event, optional
        Set it to stop after the current step or epoch.
    on_row : callable, optional
        Called with each :class:`PlaneRow` as it finishes, and first with the rows read back from
        ``out`` (e.g. :class:`mitoolkit.widgets.LivePlane`, which draws the plane live).
    out : path, optional
        Folder for ``checkpoints/`` (one per epoch), ``rows/`` (one per estimate),
        ``plane.json``, ``plane.csv``, ``plane_summary.csv`` (rewritten after each measured epoch)
        and ``plane.html`` (at the end, also after an interruption). Running again with the same
        arguments resumes: finished epochs are loaded, not retrained, and finished rows reused.
        Checked writable before any work.
    overwrite : bool
        Delete checkpoints and rows in ``out`` made with other arguments (otherwise an error).
    report : bool
        Write ``plane.html`` into ``out`` (needs plotly).
    progress : bool
        Show a progress bar over the estimates.

    Returns
    -------
    InformationPlane
        Rows per (epoch, layer, quantity, seed) with their :class:`MIResult` and the flag
        ``above_ceiling``; summaries over seeds; the training history; the config.

    Raises
    ------
    ValueError
        Unknown dataset, layer or reducer (listing the valid ones), epochs to measure outside
        0..E, a model without its ``train_fn``, an unwritable ``out``, or files in ``out`` from
        other arguments; all before any work.
    """
    from mitoolkit.experiments import (
        _as_names,
        _as_seeds,
        _check_choice,
        _check_estimator_options,
        _check_layers,
        _check_positive_int,
        _check_writable,
        _describe_callable,
        _hash_tensors,
        _layer_shapes,
        resolve_methods,
    )
    from mitoolkit.reducers import make_reducer

    # -- arguments, all checked before any work ------------------------------------------------
    layer_names = _as_names("layers", layers)
    method = _resolve_reducer(reducer, resolve_methods)
    seed_list = _as_seeds(seeds)
    _check_choice("other_side", other_side, ("none", "pca"))
    _check_positive_int("max_steps", max_steps)
    _check_positive_int("pca_components", pca_components)
    for name, value in (("data_seed", data_seed), ("train_seed", train_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer; received {value!r}.")
    if cpu_threads is not None:
        _check_positive_int("cpu_threads", cpu_threads)
    options = _check_estimator_options(estimator_options)
    cnn_opts = dict(cnn_options or {})
    if method == "cnn":
        make_reducer("cnn", **cnn_opts)  # unknown options fail now
    torch_device = resolve_device(device)
    if transforms == "default":
        transforms = minor_transforms()
    elif transforms is not None and not callable(transforms):
        raise ValueError(
            f"transforms must be 'default', None or a callable on one (C, H, W) image; received "
            f"{transforms!r}."
        )
    reference = isinstance(model, str) and model == "reference"
    if reference:
        if train_fn is not None or optimizer is not None or scheduler is not None:
            raise ValueError(
                "train_fn, optimizer and scheduler go with your own model=nn.Module; the reference "
                "network (model='reference') is trained with its own recipe. Pass model=your_module."
            )
        if not isinstance(dataset, str):
            raise ValueError(
                f"model='reference' is trained on a named dataset ('digits', 'cifar10', 'cifar100'); "
                f"received {type(dataset).__name__}. Pass your own model=nn.Module and train_fn for it."
            )
    elif isinstance(model, nn.Module):
        if train_fn is None or not callable(train_fn):
            raise ValueError(
                f"model={type(model).__name__} needs train_fn=callable(model, epoch) that trains it "
                f"for one epoch; received train_fn={train_fn!r}. (Or use model='reference'.)"
            )
    else:
        raise ValueError(
            f"model must be 'reference' or a torch.nn.Module with train_fn; received {model!r}."
        )
    if epochs is None:
        if not reference:
            raise ValueError("epochs is required with train_fn: how many epochs to train (E).")
        epochs = DEFAULT_EPOCHS.get(str(dataset).lower(), 10)
    _check_positive_int("epochs", epochs)
    measure = _epochs_to_measure(epochs_to_measure, epochs)
    out_path = _check_writable(out) if out is not None else None
    if out_path is not None and report:
        from mitoolkit.report import require_plotly

        require_plotly()

    data, dataset_name = _dataset(dataset, data_root)
    n_total = len(data)
    if n_samples is None:
        n_samples = min(_MAX_SAMPLES, n_total)
    _check_positive_int("n_samples", n_samples)
    if n_samples > n_total:
        warnings.warn(f"n_samples={n_samples} exceeds the {n_total} images of {data.name}: using all "
                      f"{n_total}.", UserWarning, stacklevel=2)
        n_samples = n_total
    c, h, _ = data.image_shape
    if reference:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(train_seed))
            net: nn.Module = ReferenceCNN(c, data.n_classes, h)
    else:
        net = model  # type: ignore[assignment]
    shapes = _layer_shapes(net, data)
    _check_layers(layer_names, shapes, net)
    order = _forward_order(net, data.images[:2], layer_names)
    reducers = {}
    for layer in order:
        reducers[layer] = method
        if method in ("gap", "cnn") and len(shapes[layer]) != 3:
            reducers[layer] = "none"
            warnings.warn(
                f"{METHOD_LABELS[method]} needs (C, H, W) feature maps and layer {layer!r} gives "
                f"{tuple(shapes[layer])}: its activation is flattened instead (reducer 'none').",
                UserWarning, stacklevel=2)

    # -- fingerprints: what checkpoints and rows depend on -------------------------------------
    if reference:
        model_description: dict[str, Any] = {
            "kind": "reference", "architecture": net.architecture,  # type: ignore[union-attr]
            "recipe": {"optimizer": "AdamW", "lr": _LEARNING_RATE, "weight_decay": _WEIGHT_DECAY,
                       "batch_size": _BATCH_SIZE, "schedule": "one-cycle, pct_start 0.15"}}
    else:
        model_description = {
            "kind": "module", "class": type(net).__name__,
            "parameters": {k: list(v.shape) for k, v in net.state_dict().items()},
            "train_fn": _describe_callable(train_fn),
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        }
    training_config = {"dataset": dataset_name, "dataset_description": data.name,
                       "model": model_description, "epochs": int(epochs),
                       "train_seed": int(train_seed), "device": torch_device.type}
    train_fingerprint = _fingerprint(training_config)
    indices = balanced_indices(data.labels.numpy(), int(n_samples), seed=data_seed)
    subset = data.subset(indices)
    measure_config = {
        "n_samples": int(n_samples), "n_classes": data.n_classes, "data_seed": int(data_seed),
        "data_hash": _hash_tensors([subset.images, subset.labels]),
        "transforms": _describe_callable(transforms), "reducer": method, "other_side": other_side,
        "pca_components": int(pca_components), "cnn_options": cnn_opts, "max_steps": int(max_steps),
        "estimator_options": options,
    }
    common = {**training_config, **measure_config, "train_fingerprint": train_fingerprint}
    config = {
        **common,
        "fingerprint": _fingerprint(common),
        "layers": layer_names,
        "layer_order": order,
        "layer_shapes": {name: list(shapes[name]) for name in layer_names},
        "reducers": reducers,
        "epochs_to_measure": measure,
        "seeds": seed_list,
        "ceiling_ixt": math.log(n_samples),
        "ceiling_ity": math.log(data.n_classes),
    }

    job = _PlaneJob(config=config, net=net, reference=reference, train_fn=train_fn,
                    optimizer=optimizer, scheduler=scheduler, data=data, data_root=data_root,
                    subset=subset, device=torch_device, transforms=transforms, callbacks=callbacks,
                    stop_event=stop_event, on_row=on_row, out=out_path, overwrite=overwrite,
                    report=report, progress=progress, cpu_threads=cpu_threads)
    return job.run()


def _resolve_reducer(reducer: Any, resolve_methods: Callable[[Any], list[str]]) -> str:
    valid = ", ".join(f"{m} ({METHOD_LABELS[m]})" for m in ("pca", "gap", "none", "cnn"))
    names: list[str] = []
    if isinstance(reducer, str) and "," not in reducer:
        with contextlib.suppress(ValueError):
            names = resolve_methods(reducer)
    if len(names) != 1:
        raise ValueError(f"reducer must be one of {valid} ('baseline' means none); received {reducer!r}.")
    return names[0]


def _epochs_to_measure(value: Sequence[int] | None, epochs: int) -> list[int]:
    if value is None:
        return list(range(epochs + 1))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [int(value)]
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
          and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in value))
    if not ok:
        raise ValueError(
            f"epochs_to_measure must be a non-empty list of epochs between 0 (untrained) and "
            f"epochs={epochs}, e.g. [0, 1, 2, {epochs}]; received {value!r}."
        )
    bad = [int(e) for e in value if not 0 <= int(e) <= epochs]
    if bad:
        raise ValueError(
            f"epochs_to_measure holds {bad}, outside 0..{epochs} (0 is the untrained network, "
            f"epochs={epochs} the last); received {list(value)!r}."
        )
    return sorted({int(e) for e in value})


def _dataset(dataset: str | ImageDataset, root: Any) -> tuple[ImageDataset, str]:
    from mitoolkit.data import DATASETS

    if isinstance(dataset, ImageDataset):
        return dataset, dataset.name.split("[")[0]
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ValueError(
            f"dataset must be one of {', '.join(map(repr, DATASETS))} or an ImageDataset; "
            f"received {dataset!r}."
        )
    return load_dataset(dataset.lower(), root=root, train=True), dataset.lower()


def _forward_order(model: nn.Module, example: torch.Tensor, names: Sequence[str]) -> list[str]:
    """``names`` in the order their forward hooks fire (shallowest first); the hooks are removed."""
    modules = dict(model.named_modules())
    fired: list[str] = []
    handles = [modules[n].register_forward_hook(lambda *_args, n=n: fired.append(n)) for n in names]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.inference_mode():
            model(example.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    order = list(dict.fromkeys(fired))
    return order + [n for n in names if n not in order]


def _estimate_seeds(x: torch.Tensor, y: torch.Tensor, seeds: Sequence[int], **options: Any) -> list[Any]:
    """One :class:`MIResult` per seed: the seeds' critics trained together by
    :func:`mitoolkit.mine.estimate_mi_seeds` (each result distributed as ``estimate_mi`` with
    that seed), or one :func:`estimate_mi` after another for a single seed."""
    if estimate_mi_seeds is not None and len(seeds) > 1:
        return list(estimate_mi_seeds(x, y, seeds=list(seeds), **options))
    results = []
    for seed in seeds:
        results.append(estimate_mi(x, y, seed=seed, **options))
        if results[-1].flags.get("stopped"):
            break
    return results


def _fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _PlaneJob:
    """The training and measuring loop of :func:`information_plane`, its files and its state."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.rows: dict[tuple[int, str, str, int], PlaneRow] = {}
        self.history: dict[int, dict[str, Any]] = {}
        self.interrupted = False
        self.failed = False
        self.bar: Any = None
        self.current: int | None = None  # the epoch the in-memory model holds

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> InformationPlane:
        cfg = self.config
        keys = [(e, layer, q, s) for e in cfg["epochs_to_measure"] for layer in cfg["layer_order"]
                for q in QUANTITIES for s in cfg["seeds"]]
        self.keys = keys
        self.checkpoints = self.store = None
        saved_epochs: set[int] = set()
        if self.out is not None:
            self.checkpoints = _Checkpoints(self.out, cfg["train_fingerprint"])
            self.store = _Rows(self.out, cfg["fingerprint"])
            saved_epochs, stale_ckpt = self.checkpoints.scan()
            found, stale_rows = self.store.scan()
            if stale_ckpt or stale_rows:
                if not self.overwrite:
                    raise ValueError(self._stale_message(stale_ckpt, stale_rows))
                for path in stale_ckpt + stale_rows:
                    path.unlink()
            self.rows = {k: r for k, r in found.items() if k in set(keys)}
            if saved_epochs:  # the history of the epochs trained before
                for entry in self.checkpoints.load(max(saved_epochs)).get("history", []):
                    self.history[int(entry["epoch"])] = dict(entry)
            write_atomic(self.out / "config.json", json.dumps(cfg, indent=1))
        if self.on_row is not None:
            for key in keys:
                if key in self.rows:
                    self.on_row(self.rows[key])
        todo = [k for k in keys if k not in self.rows]
        if self.progress and todo:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc="plane", unit="estimate")
        model_device = next((p.device for p in self.net.parameters()), None)
        was_training = self.net.training
        self.randomness = _TrainingRandomness(cfg["train_seed"], self.device.type == "cuda")
        try:
            with use_cpu_threads(self.cpu_threads if self.device.type == "cpu" else None):
                self.net.to(self.device)
                self._setup_training()
                self._loop(saved_epochs, set(k[0] for k in todo))
        except BaseException:
            self.failed = True
            with contextlib.suppress(Exception):  # keep what finished; never mask the error
                self._save(final=True)
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
            if not self.reference:
                if model_device is not None:
                    self.net.to(model_device)
                self.net.train(was_training)
        if self.interrupted:
            warnings.warn(
                f"information plane interrupted after {len(self.rows)} of {len(keys)} estimates"
                + (f"; the finished epochs and rows are saved in {self.out}: run again with the same "
                   "arguments to resume" if self.out is not None else "") + ".",
                RuntimeWarning, stacklevel=3)
        self._save(final=True)
        return self._result()

    def _loop(self, saved_epochs: set[int], epochs_todo: set[int]) -> None:
        epochs = self.config["epochs"]
        for epoch in range(epochs + 1):
            if self._stop_requested():
                return
            if epoch not in saved_epochs:
                if epoch == 0:
                    self.current = 0
                    if self.reference:
                        self.history[0] = {"epoch": 0, "seconds": 0.0, **self.train_fn.initial(self.net)}
                else:
                    self._goto(epoch - 1)
                    self._train(epoch)
                self._checkpoint(epoch)
            elif epoch == epochs and not self.reference:
                self._goto(epoch)  # the user's model ends with its last epoch's weights
            if epoch in epochs_todo:
                self._goto(epoch)
                self._measure(epoch)
                if self.interrupted:
                    return
                self._save(final=False)

    def _stop_requested(self) -> bool:
        if self.stop_event is not None and self.stop_event.is_set():
            self.interrupted = True
        return self.interrupted

    def _setup_training(self) -> None:
        if self.reference:
            train = self.data
            test = load_dataset(self.config["dataset"], root=self.data_root, train=False)
            recipe = _ReferenceTraining(self.net, train, test, self.config["epochs"], self.device)
            self.train_fn, self.optimizer, self.scheduler = recipe, recipe.optimizer, recipe.scheduler

    def _train(self, epoch: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"training epoch {epoch}")
        start = time.perf_counter()
        self.net.train()  # the same mode whether the epoch before was trained now or loaded
        with self.randomness.active():
            metrics = self.train_fn(self.net, epoch)
        entry: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - start}
        if isinstance(metrics, Mapping):
            entry.update({str(k): float(v) for k, v in metrics.items()
                          if isinstance(v, (int, float, np.floating, np.integer))})
        self.history[epoch] = entry
        self.net.eval()
        self.current = epoch

    def _checkpoint(self, epoch: int) -> None:
        if self.checkpoints is None:
            return
        self.checkpoints.save(epoch, {
            "model": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": self.randomness.state,
            "history": [self.history[e] for e in sorted(self.history) if e <= epoch],
        })

    def _goto(self, epoch: int) -> None:
        """Make the in-memory model, optimizer, scheduler and random stream those after ``epoch``."""
        if self.current == epoch:
            return
        payload = self.checkpoints.load(epoch)  # present: every epoch not in memory was saved
        self.net.load_state_dict(payload["model"])
        self.net.to(self.device)
        if self.optimizer is not None and payload.get("optimizer") is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload.get("scheduler") is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.randomness.state = payload["rng"]
        for entry in payload.get("history", []):
            self.history.setdefault(int(entry["epoch"]), dict(entry))
        self.current = epoch

    def _measure(self, epoch: int) -> None:
        from mitoolkit.experiments import _ESTIMATE_DEFAULTS, _method_reducer, _other_reducer, mi_pair

        cfg = self.config
        todo = [k for k in self.keys if k[0] == epoch and k not in self.rows]
        groups: dict[tuple[str, str], list[int]] = {}
        for _, layer, quantity, seed in todo:
            groups.setdefault((layer, quantity), []).append(seed)
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch}: activations")
        acts = collect_activations(self.net, self.subset, list(dict.fromkeys(k[1] for k in todo)),
                                   transform=self.transforms, device=self.device, seed=cfg["data_seed"])
        threads = {"cpu_threads": self.cpu_threads} if "cpu_threads" in _ESTIMATE_DEFAULTS else {}
        for (layer, quantity), seeds in groups.items():
            if self._stop_requested():
                return
            x, y = mi_pair(acts, layer, target=_TARGET[quantity], dataset=self.subset)
            text = (f"epoch {epoch} {layer} {QUANTITY_LABELS[quantity]} seed"
                    + (f"s {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f" {seeds[0]}"))
            row_callbacks = list(self.callbacks)
            if self.bar is not None:
                self.bar.set_postfix_str(text)
                row_callbacks.append(_BarPostfix(self.bar, text))
            method = cfg["reducers"][layer]
            results = _estimate_seeds(
                x, y, seeds, reducer_x=_other_reducer(cfg, x), reducer_y=_method_reducer(method, cfg, y),
                max_steps=cfg["max_steps"], device=self.device, callbacks=row_callbacks,
                stop_event=self.stop_event, progress=False, label=text, **threads,
                **cfg["estimator_options"],
            )
            ceiling = cfg["ceiling_ixt"] if quantity == "ixt" else cfg["ceiling_ity"]
            for seed, result in zip(seeds, results):
                if result.flags.get("stopped"):
                    self.interrupted = True
                    return
                row = PlaneRow(epoch, layer, quantity, seed, result, ceiling, method)
                self.rows[(epoch, layer, quantity, seed)] = row
                if self.store is not None:
                    self.store.write(row)
                if self.bar is not None:
                    self.bar.update(1)
                if self.on_row is not None:
                    self.on_row(row)

    # -- results and files ---------------------------------------------------------------------

    def _result(self) -> InformationPlane:
        ordered = tuple(self.rows[k] for k in self.keys if k in self.rows)
        complete = len(ordered) == len(self.keys) and not self.interrupted and not self.failed
        training = tuple(self.history[e] for e in sorted(self.history))
        return InformationPlane(config=self.config, rows=ordered, training=training, complete=complete)

    def _save(self, final: bool) -> None:
        if self.out is None:
            return
        plane = self._result()
        plane.save(self.out)
        if final and self.report:
            write_plane_report(plane, self.out / "plane.html")

    def _stale_message(self, checkpoints: list[Path], rows: list[Path]) -> str:
        parts = []
        if checkpoints:
            parts.append(f"{len(checkpoints)} checkpoints trained with other arguments (in "
                         f"{self.out / 'checkpoints'})")
        if rows:
            parts.append(f"{len(rows)} rows computed with other arguments (in {self.out / 'rows'})")
        differing = ""
        try:
            old = json.loads((self.out / "config.json").read_text())
            keys = [k for k in self.config if k in old and old[k] != self.config[k] and k not in (
                "layers", "layer_order", "layer_shapes", "reducers", "seeds", "epochs_to_measure",
                "fingerprint", "train_fingerprint")]
            if keys:
                differing = " Arguments that differ: " + ", ".join(
                    f"{k} (was {old[k]!r}, now {self.config[k]!r})" for k in keys) + "."
        except (OSError, ValueError, TypeError):
            pass
        return (f"out={str(self.out)!r} holds {' and '.join(parts)}.{differing} Choose another out "
                "folder, or pass overwrite=True (--overwrite) to delete them; nothing was computed.")


class _BarPostfix(Callback):
    def __init__(self, bar: Any, text: str) -> None:
        self.bar, self.text = bar, text

    def on_eval(self, step: int, heldout: float) -> None:
        self.bar.set_postfix_str(f"{self.text}: step {step}, held-out {heldout:.3f} nats")
