"""Finding a model's layers and capturing their activations with forward hooks.

Two functions, in the manner of torchvision's feature extraction: :func:`list_layers` discovers
the dotted names of a model's modules, :func:`collect_activations` records what the named modules
output while the model runs over a dataset. Both work on any ``torch.nn.Module``. Every change
made to the model (hooks, eval mode, device) is undone before returning, on success and on error.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mitoolkit.data import ImageDataset, balanced_indices
from mitoolkit.devices import resolve_device

__all__ = ["Activations", "LayerInfo", "LayerList", "collect_activations", "list_layers"]

DEFAULT_MAX_BYTES = 4_000_000_000  # 4 GB


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """One module of a model.

    Attributes
    ----------
    name : str
        Dotted name, as in ``model.named_modules()`` (e.g. ``"layer1.0.conv1"``).
    type : str
        The module's class name.
    shape : tuple of int or None
        Output shape of one sample, without the batch dimension (e.g. ``(16, 8, 8)``); None when
        no example input was given, or the module did not run or did not return a tensor.
    calls : int or None
        How many times the module ran in one forward pass (None without an example input). A
        module that runs more than once (a shared ReLU) cannot be captured unambiguously.
    """

    name: str
    type: str
    shape: tuple[int, ...] | None = None
    calls: int | None = None

    def __str__(self) -> str:
        return self.name


class LayerList(list):
    """A list of :class:`LayerInfo` that prints as a table; ``.names`` gives the plain names."""

    @property
    def names(self) -> list[str]:
        return [info.name for info in self]

    def __repr__(self) -> str:
        if not self:
            return "LayerList([])"
        shown = [(i.name, i.type, _shape_text(i), "" if i.calls in (None, 1) else f"runs {i.calls}x") for i in self]
        widths = [max(len(row[k]) for row in shown) for k in range(3)]
        lines = [
            f"{n:<{widths[0]}}  {t:<{widths[1]}}  {s:<{widths[2]}}  {c}".rstrip() for n, t, s, c in shown
        ]
        return "\n".join(lines)

    __str__ = __repr__


def _shape_text(info: LayerInfo) -> str:
    if info.shape is not None:
        return "x".join(map(str, info.shape)) if info.shape else "scalar"
    if info.calls == 0:
        return "(not run)"
    return "" if info.calls is None else "(not a tensor)"


def list_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> LayerList:
    """The dotted names of a model's modules, with output shapes when an example is given.

    Parameters
    ----------
    model : torch.nn.Module
        Any module (the model itself is not listed, only its submodules).
    example_input : torch.Tensor, optional
        A batch, e.g. shape (B, C, H, W), run once through the model in eval and inference mode
        to record each module's output shape.

    Returns
    -------
    LayerList
        A list of :class:`LayerInfo` in registration order; prints as a table, and
        ``list_layers(model).names`` is the list of names.

    Raises
    ------
    ValueError
        When ``example_input`` does not fit the model; the message names the shape expected.
    """
    _check_model(model)
    modules = [(name, module) for name, module in model.named_modules() if name]
    if example_input is None:
        return LayerList(LayerInfo(name, type(module).__name__) for name, module in modules)
    if not isinstance(example_input, torch.Tensor):
        raise ValueError(
            f"example_input must be a torch.Tensor batch, e.g. shape (1, C, H, W); "
            f"received {type(example_input).__name__}."
        )
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls = {name: 0 for name, _ in modules}

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] += 1
            shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None

        return hook

    handles = []
    was_training = model.training
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        model.eval()
        device = _model_device(model) or torch.device("cpu")
        with torch.inference_mode():
            _forward_checked(model, example_input.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return LayerList(
        LayerInfo(name, type(module).__name__, shapes.get(name), calls[name]) for name, module in modules
    )


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Activations:
    """What :func:`collect_activations` captured, all in the same sample order.

    Attributes
    ----------
    layers : dict of str to torch.Tensor
        For each requested layer, its output: shape (N, C, H, W), (N, D) or whatever the module
        returns, on the CPU, in the requested dtype.
    inputs : torch.Tensor
        The inputs actually fed to the model (after the random transformation), (N, C, H, W).
    labels : torch.Tensor or None
        int64, shape (N,); None when the data had no labels.
    indices : torch.Tensor
        int64, shape (N,): the position of each sample in the data given (the image index X).

    ``activations["conv1"]`` is ``activations.layers["conv1"]``.
    """

    layers: dict[str, torch.Tensor]
    inputs: torch.Tensor
    labels: torch.Tensor | None
    indices: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(
                f"no layer {name!r} was collected; collected: {', '.join(map(repr, self.layers))}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {'x'.join(map(str, v.shape[1:]))}" for k, v in self.layers.items())
        return f"Activations(n={len(self)}, {shapes}; inputs {'x'.join(map(str, self.inputs.shape[1:]))})"


def collect_activations(
    model: nn.Module,
    data: ImageDataset | torch.utils.data.Dataset | torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    layers: str | Sequence[str],
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_samples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_bytes: int | float = DEFAULT_MAX_BYTES,
    progress: bool = False,
) -> Activations:
    """Run a model in inference mode over data and record the outputs of named layers.

    Parameters
    ----------
    model : torch.nn.Module
        Any module. It is run in eval mode; its train/eval mode, device and hooks are restored
        before returning, also when an error is raised.
    data : ImageDataset, torch Dataset, tensor or (images, labels) tuple
        An :class:`~mitoolkit.data.ImageDataset`; a tensor of inputs (N, ...), e.g. (N, C, H, W);
        a tuple ``(inputs, labels)``; or a ``torch.utils.data.Dataset`` whose items are
        ``(input, label)`` or ``input`` tensors.
    layers : str or sequence of str
        Dotted module names, see :func:`list_layers`.
    transform : callable, optional
        Applied to each sample (C, H, W) separately before the forward pass, e.g.
        :func:`mitoolkit.data.minor_transforms`. Its draws from torch's global generator are seeded
        by ``seed`` and independent of ``batch_size``; the caller's generator is left untouched.
    n_samples : int, optional
        Use this many samples (class-balanced when labels are known), chosen by ``seed``.
    batch_size : int, default 256
    device : str or torch.device, default "auto"
        Where the forward pass runs (see :func:`mitoolkit.devices.resolve_device`). Results are
        returned on the CPU.
    seed : int, default 0
        Seeds the subsampling and the transformations.
    dtype : torch.dtype, default torch.float32
        Floating dtype of the returned activations and inputs (``torch.float16`` halves memory).
    max_bytes : int, default 4e9
        Refuse, before running anything, when the returned tensors would need more memory.
    progress : bool, default False
        Show a progress bar over batches.

    Returns
    -------
    Activations
        ``.layers[name]`` (N, ...) per layer, ``.inputs`` (N, C, H, W), ``.labels`` (N,),
        ``.indices`` (N,).

    Raises
    ------
    ValueError
        Unknown layer names (with the closest names), inputs of the wrong shape (with the shape the
        model expects), ``n_samples`` above the data size, or the memory estimate above
        ``max_bytes`` (with the figure and the remedies).
    """
    _check_model(model)
    names = _resolve_layer_names(model, layers)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; received {batch_size!r}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating torch dtype such as torch.float32 or torch.float16; received {dtype!r}."
        )
    target = resolve_device(device)
    get_input, labels, total = _as_indexable(data)
    indices = _choose_indices(total, labels, n_samples, seed)
    n = len(indices)
    modules = dict(model.named_modules())

    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise ValueError(
                    f"layer {name!r} ({type(_module).__name__}) returns {type(output).__name__}, "
                    "not a tensor; choose a module that returns a tensor (see list_layers(model))."
                )
            # Copied at once: a later in-place operation (ReLU(inplace=True)) must not alter it.
            captured[name].append(output.detach().to(dtype=dtype, copy=True))

        return hook

    was_training = model.training
    original_device = _model_device(model)
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        model.eval()
        if original_device is not None and original_device != target:
            model.to(target)
        gen_state = _seeded_cpu_state(seed)

        def batch_inputs(batch_idx: np.ndarray, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # The transformation draws from its own stream, carried from batch to batch.
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                samples = [get_input(int(i)) for i in batch_idx]
                if transform is not None:  # on the CPU, whose generator is the one seeded
                    samples = [transform(x.cpu()) for x in samples]
                new_state = torch.get_rng_state()
            return _stack(samples), new_state

        def forward(x: torch.Tensor, *, first: bool = False) -> None:
            for name in names:
                captured[name].clear()
            with torch.inference_mode():
                if first:
                    _forward_checked(model, x.to(target))
                else:
                    model(x.to(target))
            for name in names:
                if len(captured[name]) != 1:
                    raise ValueError(
                        f"layer {name!r} ran {len(captured[name])} times in one forward pass "
                        "(a module used more than once, such as a shared ReLU), so its activation "
                        "is ambiguous; choose a module that runs once, e.g. its parent block "
                        "(see list_layers(model, example_input))."
                    )

        # A dry run on one sample, with its own copy of the stream: checks the input shape and
        # gives each layer's shape for the memory estimate, before anything large is allocated.
        with torch.random.fork_rng(devices=_rng_devices(target)):
            x0, _ = batch_inputs(indices[:1], gen_state)
            forward(x0, first=True)
        shapes = {name: tuple(captured[name][0].shape[1:]) for name in names}
        _check_memory(n, shapes, tuple(x0.shape[1:]), dtype, max_bytes)

        out_layers = {name: torch.empty((n, *shapes[name]), dtype=dtype) for name in names}
        out_inputs = torch.empty((n, *x0.shape[1:]), dtype=dtype)
        starts = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="collecting activations", unit="batch")
        # The model's own randomness (rare in eval mode) is seeded too, and the caller's
        # generators are restored afterwards.
        with torch.random.fork_rng(devices=_rng_devices(target)):
            torch.manual_seed(seed)
            for start in starts:
                stop = min(start + batch_size, n)
                x, gen_state = batch_inputs(indices[start:stop], gen_state)
                if tuple(x.shape[1:]) != tuple(out_inputs.shape[1:]):
                    raise ValueError(
                        f"inputs changed shape from {tuple(out_inputs.shape[1:])} to "
                        f"{tuple(x.shape[1:])} between samples; all samples must have one shape."
                    )
                forward(x)
                out_inputs[start:stop] = x.to(dtype)
                for name in names:
                    out_layers[name][start:stop] = captured[name][0].cpu()
                    captured[name].clear()
    finally:
        for handle in handles:
            handle.remove()
        if original_device is not None and original_device != target:
            model.to(original_device)
        model.train(was_training)
    return Activations(
        layers=out_layers,
        inputs=out_inputs,
        labels=None if labels is None else labels[torch.as_tensor(indices)].clone(),
        indices=torch.as_tensor(indices, dtype=torch.int64),
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; received {type(model).__name__}.")


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in _chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


def _chain(*iterables: Iterable) -> Iterable:
    for it in iterables:
        yield from it


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def _seeded_cpu_state(seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.get_rng_state()


def _resolve_layer_names(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        requested = [layers]
    elif isinstance(layers, Sequence) and layers and all(isinstance(x, str) for x in layers):
        requested = list(dict.fromkeys(layers))  # drop repeats, keep order
    else:
        raise ValueError(
            "layers must be a layer name or a non-empty sequence of names, such as 'conv1' or "
            f"['conv1', 'fc']; received {layers!r}. Call mitoolkit.layers.list_layers(model) to see all names."
        )
    known = [name for name, _ in model.named_modules() if name]
    for name in requested:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = (
                f"closest names: {', '.join(map(repr, close))}"
                if close
                else f"it has {len(known)} named layers, e.g. {', '.join(map(repr, known[:5]))}"
            )
            raise ValueError(
                f"unknown layer {name!r} for {type(model).__name__}; {hint}. "
                "Call mitoolkit.layers.list_layers(model) to see all names."
            )
    return requested


def _as_indexable(data: Any) -> tuple[Callable[[int], torch.Tensor], torch.Tensor | None, int]:
    """(get_input(i) -> sample tensor, labels (N,) or None, N) for the accepted kinds of data."""
    if isinstance(data, ImageDataset):
        return (lambda i: data.images[i]), data.labels, len(data)
    if isinstance(data, torch.Tensor):
        if data.ndim < 2:
            raise ValueError(f"data as a tensor must have shape (N, ...); received shape {tuple(data.shape)}.")
        return (lambda i: data[i]), None, int(data.shape[0])
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        if labels.shape[:1] != inputs.shape[:1] or labels.ndim != 1:
            raise ValueError(
                f"data as (inputs, labels) needs labels of shape (N,) = ({inputs.shape[0]},); "
                f"received inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)}."
            )
        return (lambda i: inputs[i]), labels.to(torch.int64), int(inputs.shape[0])
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        total = len(data)
        first = data[0] if total else None
        if isinstance(first, (tuple, list)):
            targets = getattr(data, "targets", None)  # torchvision datasets keep their labels here
            if targets is None or len(targets) != total:
                targets = [data[i][1] for i in range(total)]
            labels = torch.as_tensor([int(t) for t in targets], dtype=torch.int64)
            return (lambda i: _to_tensor(data[i][0])), labels, total
        return (lambda i: _to_tensor(data[i])), None, total
    raise ValueError(
        "data must be an ImageDataset (mitoolkit.data.load_dataset), a tensor (N, C, H, W), an "
        f"(inputs, labels) tuple of tensors, or a torch Dataset with a length; received {type(data).__name__}."
    )


def _to_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    from torchvision.transforms.v2 import functional as F

    return F.to_dtype(F.to_image(x), torch.float32, scale=True)  # PIL image or ndarray, HWC


def _choose_indices(total: int, labels: torch.Tensor | None, n_samples: int | None, seed: int) -> np.ndarray:
    if total == 0:
        raise ValueError("data is empty; it must hold at least one sample.")
    if n_samples is None:
        return np.arange(total)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer or None; received {n_samples!r}.")
    if n_samples > total:
        raise ValueError(
            f"n_samples={n_samples} exceeds the {total} samples the data holds; "
            f"use n_samples<={total}, or n_samples=None for all of them."
        )
    if labels is not None:
        return balanced_indices(labels.numpy(), int(n_samples), seed=seed)
    return np.sort(np.random.default_rng(seed).choice(total, size=int(n_samples), replace=False))


def _stack(samples: list[Any]) -> torch.Tensor:
    if not all(isinstance(s, torch.Tensor) for s in samples):
        kinds = sorted({type(s).__name__ for s in samples})
        raise ValueError(f"each input must be a tensor after the transform; received {', '.join(kinds)}.")
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"inputs must all have one shape; received shapes {sorted(shapes)}.")
    return torch.stack(samples).to(torch.float32) if not samples[0].is_floating_point() else torch.stack(samples)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def _check_memory(
    n: int, shapes: dict[str, tuple[int, ...]], input_shape: tuple[int, ...], dtype: torch.dtype, max_bytes: float
) -> None:
    itemsize = torch.empty((), dtype=dtype).element_size()
    layer_bytes = {name: n * math.prod(shape) * itemsize for name, shape in shapes.items()}
    input_bytes = n * math.prod(input_shape) * itemsize
    total = sum(layer_bytes.values()) + input_bytes
    if total <= max_bytes:
        return
    dtype_name = str(dtype).replace("torch.", "")
    described = ", ".join(
        f"{name!r} ({'x'.join(map(str, shapes[name]))}): {_gb(b)}" for name, b in layer_bytes.items()
    )
    noun = "layer" if len(shapes) == 1 else "layers"
    advice = "use fewer samples (n_samples=...)"
    if itemsize > 2:
        advice += ", dtype=torch.float16"
    advice += ", another layer (a smaller or pooled one)" if len(shapes) == 1 else ", fewer layers per call"
    raise ValueError(
        f"collecting {n} samples of {noun} {described} needs {_gb(sum(layer_bytes.values()))} in "
        f"{dtype_name} (plus {_gb(input_bytes)} for the inputs), above max_bytes={_gb(max_bytes)}; "
        f"{advice}, or raise max_bytes."
    )


def _expected_input(model: nn.Module) -> str | None:
    """What the model expects, in words, when it can be told."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return f"(N, {', '.join(map(str, shape))})"
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            dims = {1: "L", 2: "H, W", 3: "D, H, W"}.get(len(module.kernel_size), "...")
            return f"(N, {module.in_channels}, {dims}) (its first convolution takes {module.in_channels} channels)"
        if isinstance(module, nn.Linear):
            return f"(N, {module.in_features}) (its first linear layer takes {module.in_features} features)"
    return None


def _forward_checked(model: nn.Module, x: torch.Tensor) -> Any:
    """The first forward pass: a failure there is reported as an input-shape mismatch."""
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        hint = ""
        if tuple(x.shape) == tuple(expected):
            hint = " It looks like one sample without its batch dimension: use x.unsqueeze(0)."
        raise ValueError(
            f"{type(model).__name__} expects inputs of shape {_expected_input(model)}; received "
            f"inputs of shape {_batch_shape(x)}.{hint}"
        )
    try:
        return model(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        expected_text = _expected_input(model)
        hint = f"expects inputs of shape {expected_text}" if expected_text else "could not run on them"
        raise ValueError(
            f"{type(model).__name__} {hint}; received inputs of shape {_batch_shape(x)}. "
            f"The forward pass failed with: {err}"
        ) from err


def _batch_shape(x: torch.Tensor) -> str:
    return f"(N, {', '.join(map(str, x.shape[1:]))})"
