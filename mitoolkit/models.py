"""A small reference CNN and its training, cached on disk.

The paper measures MI in *trained* networks. :class:`ReferenceCNN` is a small network whose layers
have readable names (``conv1``, ``conv2``, ``conv3``, ``fc1``, ``fc``) and spatial maps for the
reducers to work on; :func:`train_reference_model` trains it on a dataset of
:mod:`mitoolkit.data`, reporting test accuracy, and caches the weights by
(dataset, architecture, epochs, seed), so that a second call loads them.

Everything else in the toolkit takes any ``torch.nn.Module``; this network is only a convenient,
reproducible subject.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mitoolkit.atomic import atomic_open
from mitoolkit.data import ImageDataset, load_dataset
from mitoolkit.devices import cpu_threads, resolve_device

__all__ = ["ReferenceCNN", "default_cache_dir", "evaluate_accuracy", "train_reference_model"]

CACHE_ENV_VAR = "MITOOLKIT_CACHE"
_CACHE_FORMAT = 1

# Default epochs per dataset, and the fixed training recipe (part of the cache key through
# ReferenceCNN.architecture and the format version).
DEFAULT_EPOCHS = {"digits": 10, "cifar10": 30, "cifar100": 40}
_BATCH_SIZE = 64
_LEARNING_RATE = 3e-3
_WEIGHT_DECAY = 1e-4


class ConvBlock(nn.Module):
    """``conv`` (3x3, same padding) -> ``bn`` -> ``relu`` -> optional ``pool`` (2x2 max)."""

    def __init__(self, in_channels: int, out_channels: int, *, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


class DenseBlock(nn.Module):
    """``linear`` -> ``relu``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.linear(x))


class ReferenceCNN(nn.Module):
    """A small CNN for 1- or 3-channel square images.

    ======  =====================================  ================================
    layer   what it does                            output, 8x8 digits (32x32 CIFAR)
    ======  =====================================  ================================
    conv1   3x3 conv, batch norm, ReLU              (w, 8, 8)     ((w, 32, 32))
    conv2   3x3 conv, batch norm, ReLU, 2x2 pool    (2w, 4, 4)    ((2w, 16, 16))
    conv3   3x3 conv, batch norm, ReLU, 2x2 pool    (4w, 2, 2)    ((4w, 8, 8))
    fc1     linear, ReLU                            (64,)         ((128,))
    fc      linear: the logits                      (n_classes,)
    ======  =====================================  ================================

    ``w = width`` (16 by default). Each block's output is after its ReLU (and pooling), so
    capturing ``"conv2"`` gives what the next block sees; ``"conv2.conv"`` is the raw convolution.

    Parameters
    ----------
    in_channels : int, default 1
    n_classes : int, default 10
    image_size : int, default 8
        Height and width of the inputs, a multiple of 4.
    width : int, default 16
        Channels of ``conv1``.

    Attributes
    ----------
    input_shape : tuple of int
        (in_channels, image_size, image_size): inputs must be (N, *input_shape).
    metadata : dict
        Filled by :func:`train_reference_model`: dataset, epochs, seed, test accuracy, history.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 8, *, width: int = 16) -> None:
        super().__init__()
        for pname, value in (("in_channels", in_channels), ("n_classes", n_classes), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{pname} must be a positive integer; received {value!r}.")
        if not isinstance(image_size, int) or image_size < 4 or image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (e.g. 8 or 32); received {image_size!r}.")
        self.config = {"in_channels": in_channels, "n_classes": n_classes, "image_size": image_size, "width": width}
        self.input_shape = (in_channels, image_size, image_size)
        self.metadata: dict[str, Any] = {}
        hidden = 64 if image_size <= 16 else 128
        self.conv1 = ConvBlock(in_channels, width, pool=False)
        self.conv2 = ConvBlock(width, 2 * width, pool=True)
        self.conv3 = ConvBlock(2 * width, 4 * width, pool=True)
        self.flatten = nn.Flatten()
        self.fc1 = DenseBlock(4 * width * (image_size // 4) ** 2, hidden)
        self.fc = nn.Linear(hidden, n_classes)

    @property
    def architecture(self) -> str:
        """A short name of the architecture and its size, used in cache file names."""
        c = self.config
        return f"refcnn-c{c['in_channels']}-s{c['image_size']}-w{c['width']}-k{c['n_classes']}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, n_classes) logits."""
        return self.fc(self.fc1(self.flatten(self.conv3(self.conv2(self.conv1(x))))))


def default_cache_dir() -> Path:
    """``$MITOOLKIT_CACHE`` when set, else ``~/.cache/mitoolkit/models``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mitoolkit" / "models"


def evaluate_accuracy(
    model: nn.Module, dataset: ImageDataset, *, batch_size: int = 512, device: str | torch.device = "auto"
) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (argmax of its output).

    The model is run in eval and inference mode; its mode and device are restored afterwards.
    """
    target = resolve_device(device)
    was_training = model.training
    original = next(iter(model.parameters()), None)
    original_device = original.device if original is not None else None
    try:
        model.eval()
        if original_device is not None:
            model.to(target)
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                x = dataset.images[start : start + batch_size].to(target)
                y = dataset.labels[start : start + batch_size].to(target)
                correct += int((model(x).argmax(dim=1) == y).sum())
        return correct / max(len(dataset), 1)
    finally:
        if original_device is not None:
            model.to(original_device)
        model.train(was_training)


def train_reference_model(
    dataset: str = "digits",
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> ReferenceCNN:
    """Train a :class:`ReferenceCNN` on a dataset's train split, or load it from the cache.

    AdamW (weight decay 1e-4) with a one-cycle learning-rate schedule peaking at 3e-3, batches of
    64, cross-entropy; no data augmentation. Test accuracy is measured after each epoch and shown on the progress bar.

    Parameters
    ----------
    dataset : {"digits", "cifar10", "cifar100"}, default "digits"
        See :func:`mitoolkit.data.load_dataset`.
    epochs : int, optional
        Default: 10 for digits (about 98 % test accuracy in seconds on a CPU), 30 for CIFAR-10,
        40 for CIFAR-100.
    seed : int, default 0
        Seeds initialisation and shuffling (the caller's global generator is left untouched).
    device : str or torch.device, default "auto"
    cache_dir : path, optional
        Default :func:`default_cache_dir` (``$MITOOLKIT_CACHE``, else ``~/.cache/mitoolkit/models``).
        Weights are stored as ``<dataset>-<architecture>-e<epochs>-s<seed>.pt``, written atomically.
    root : path, optional
        Where the CIFAR files are (see :func:`mitoolkit.data.load_dataset`).
    progress : bool, default True
        Show a progress bar over epochs with the loss and test accuracy.
    retrain : bool, default False
        Train even when cached weights exist, and overwrite them.

    Returns
    -------
    ReferenceCNN
        In eval mode, on ``device``; ``model.metadata`` holds the dataset, epochs, seed,
        ``test_accuracy``, ``train_seconds``, per-epoch ``history`` and ``cache_path``.
    """
    if epochs is None:
        if not isinstance(dataset, str) or dataset.lower() not in DEFAULT_EPOCHS:
            raise ValueError(
                f"dataset must be one of {', '.join(map(repr, DEFAULT_EPOCHS))}; received {dataset!r}."
            )
        epochs = DEFAULT_EPOCHS[dataset.lower()]
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; received {epochs!r}.")
    target = resolve_device(device)
    train_set = load_dataset(dataset, root=root, train=True)
    test_set = load_dataset(dataset, root=root, train=False)
    dataset = dataset.lower()
    c, h, _ = train_set.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceCNN(c, train_set.n_classes, h)

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_path = cache_root / f"{dataset}-{model.architecture}-e{epochs}-s{seed}.pt"
    if not retrain and cache_path.is_file():
        loaded = _load_cached(model, cache_path)
        if loaded:
            model.metadata = {**loaded, "cache_path": str(cache_path), "from_cache": True}
            return model.to(target).eval()

    start = time.perf_counter()
    # A network this small gains nothing from intra-op threads on 8x8 images, and loses much when
    # the cores are shared (measured: 3 digits epochs 0.75 s on one thread, 4-23 s on two).
    threads = 1 if target.type == "cpu" and h <= 16 else None
    with cpu_threads(threads):
        history = _train(model, train_set, test_set, epochs=epochs, seed=seed, device=target, progress=progress)
    metadata = {
        "dataset": dataset,
        "architecture": model.architecture,
        "epochs": epochs,
        "seed": seed,
        "test_accuracy": history[-1]["test_accuracy"],
        "train_seconds": time.perf_counter() - start,
        "history": history,
    }
    _save_atomic(
        {"format": _CACHE_FORMAT, "config": model.config, "state_dict": _cpu_state(model), "metadata": metadata},
        cache_path,
    )
    model.metadata = {**metadata, "cache_path": str(cache_path), "from_cache": False}
    return model.eval()


def _train(
    model: ReferenceCNN,
    train_set: ImageDataset,
    test_set: ImageDataset,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> list[dict[str, float]]:
    from tqdm.auto import tqdm

    model.to(device)
    x_all = train_set.images.to(device)
    y_all = train_set.labels.to(device)
    steps_per_epoch = -(-len(train_set) // _BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=_LEARNING_RATE, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    bar = tqdm(range(epochs), desc=f"training {model.architecture} on {train_set.name}", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train_set), generator=generator).to(device)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * _BATCH_SIZE : (step + 1) * _BATCH_SIZE]
            loss = loss_fn(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(idx)
        accuracy = evaluate_accuracy(model, test_set, device=device)
        history.append({"epoch": epoch + 1, "train_loss": total_loss / len(train_set), "test_accuracy": accuracy})
        bar.set_postfix(loss=f"{total_loss / len(train_set):.3f}", test_acc=f"{accuracy:.1%}")
    bar.close()
    model.eval()
    return history


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically: readers never see half a file."""
    with atomic_open(path, binary=True) as f:
        torch.save(obj, f)


def _load_cached(model: ReferenceCNN, path: Path) -> dict[str, Any] | None:
    """Load weights into ``model``; warn and return None when the file cannot be used."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != _CACHE_FORMAT or payload.get("config") != model.config:
            raise ValueError("it was written by another version or for another configuration")
        model.load_state_dict(payload["state_dict"])
        return dict(payload["metadata"])
    except Exception as err:  # a damaged or foreign cache file: train again and overwrite it
        warnings.warn(f"ignoring the cached weights {path} ({err}); training again.", UserWarning, stacklevel=3)
        return None
