"""The seed paper's comparison: baseline, PCA-MINE, CNN-MINE and GAP-MINE on a trained network's layers.

:func:`compare_reducers` is the main job of the toolkit (the ``mitoolkit compare`` command runs it).
For each layer it measures, over several seeds, either I(X; T) (``target="input"``) or I(T; Y)
(``target="label"``) with each method, and returns a :class:`~mitoolkit.comparison.Comparison`.

The channel (see DESIGN.md): X is one of the N images; T is the layer's activation of a randomly
transformed copy of it (:func:`mitoolkit.data.minor_transforms`). So:

* ``target="input"``: x = the untransformed image, flattened (N, C*H*W); y = the activation.
* ``target="label"``: x = the one-hot label (N, K); y = the activation.

The method names what happens to the activation (y) only: flattened (``"none"``, the baseline),
projected on its first principal components (``"pca"``), encoded by a small CNN trained with the
critic (``"cnn"``) or averaged over its spatial positions (``"gap"``). The other side (x) is
treated the same way for every method (flattened, or PCA with ``other_side="pca"``), so the methods
differ only where the paper says they do. :func:`mi_pair` builds the (x, y) pair.

What varies with the seed, and what does not: the activations are collected once per layer, with
the transformations drawn once from ``data_seed``, and shared by every method and seed; the seed of
each row seeds the estimator only (the train/validation/test split, the critic's and the CNN
encoder's initialisation, the batches). The spread across seeds (the paper's "stability") is
therefore the estimator's own variability on fixed data, and every method sees the very same
samples.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mitoolkit.callbacks import Callback
from mitoolkit.comparison import (
    METHOD_LABELS,
    METHODS,
    Comparison,
    ComparisonRow,
    RowStore,
    write_atomic,
)
from mitoolkit.data import DATASETS, ImageDataset, balanced_indices, load_dataset, minor_transforms
from mitoolkit.devices import cpu_threads as use_cpu_threads, resolve_device
from mitoolkit.layers import Activations, collect_activations, list_layers
from mitoolkit.mine import estimate_mi, estimate_mi_seeds
from mitoolkit.models import ReferenceCNN, train_reference_model
from mitoolkit.reducers import Reducer, make_reducer

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "TARGETS",
    "DEFAULT_N_SAMPLES",
    "compare_reducers",
    "load_model",
    "mi_pair",
    "resolve_methods",
]

TARGETS: tuple[str, ...] = ("input", "label")
SPLITS: tuple[str, ...] = ("train", "test", "all")
OTHER_SIDES: tuple[str, ...] = ("none", "pca")
DEFAULT_N_SAMPLES = 5000
DEFAULT_PCA_COMPONENTS = 32
_METHOD_ALIASES = {"baseline": "none", "flatten": "none"}
# estimate_mi options that compare_reducers sets itself, per row.
_RESERVED = {"reducer", "reducer_x", "reducer_y", "seed", "device", "callbacks", "stop_event",
             "progress", "label", "max_steps", "cpu_threads", "x", "y"}


# --------------------------------------------------------------------------------------------
# The pair
# --------------------------------------------------------------------------------------------


def mi_pair(
    activations: Activations, layer: str, *, target: str, dataset: ImageDataset
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) samples whose mutual information a comparison measures.

    Parameters
    ----------
    activations : Activations
        From :func:`mitoolkit.layers.collect_activations` run on ``dataset`` (typically with
        :func:`mitoolkit.data.minor_transforms` as ``transform``).
    layer : str
        One of the collected layers.
    target : {"input", "label"}
        ``"input"`` for I(X; T): x is the *untransformed* image ``dataset.images[indices]``,
        flattened. ``"label"`` for I(T; Y): x is the one-hot label.
    dataset : ImageDataset
        The dataset the activations were collected on (``activations.indices`` index into it).

    Returns
    -------
    x : torch.Tensor, float32, shape (N, C*H*W) or (N, K)
    y : torch.Tensor, shape (N, ...)
        The layer's activation, as collected (reduce it with ``estimate_mi(reducer_y=...)``).
    """
    _check_choice("target", target, TARGETS)
    if not isinstance(activations, Activations):
        raise ValueError(
            f"activations must be the Activations returned by collect_activations; received "
            f"{type(activations).__name__}."
        )
    y = activations[layer]
    idx = activations.indices
    if len(idx) and int(idx.max()) >= len(dataset):
        raise ValueError(
            f"activations index images up to {int(idx.max())} but dataset holds {len(dataset)}; "
            "pass the dataset the activations were collected on."
        )
    if target == "input":
        x = dataset.images[idx].reshape(len(idx), -1).to(torch.float32)
    else:
        labels = activations.labels if activations.labels is not None else dataset.labels[idx]
        x = torch.nn.functional.one_hot(labels.to(torch.int64), dataset.n_classes).to(torch.float32)
    return x, y


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def compare_reducers(
    layers: str | Sequence[str],
    *,
    model: nn.Module | str | os.PathLike = "reference",
    dataset: str | ImageDataset = "digits",
    methods: str | Sequence[str] = METHODS,
    seeds: int | Sequence[int] = 5,
    target: str = "input",
    n_samples: int | None = None,
    split: str = "train",
    data_root: str | os.PathLike | None = None,
    transforms: Callable[[torch.Tensor], torch.Tensor] | None | str = "default",
    data_seed: int = 0,
    other_side: str = "none",
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    cnn_options: Mapping[str, Any] | None = None,
    max_steps: int = 5000,
    estimator_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    cpu_threads: int | None = 1,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    on_row: Callable[[ComparisonRow], None] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
    vectorize_seeds: bool = False,
) -> Comparison:
    """Compare the four methods of the seed paper on layers of a trained network, over seeds.

    Parameters
    ----------
    layers : str or sequence of str
        Dotted layer names (see :func:`mitoolkit.layers.list_layers`), e.g. ``"conv2"``.
    model : nn.Module, "reference" or path
        ``"reference"`` (default): :class:`~mitoolkit.models.ReferenceCNN` trained on ``dataset``
        by :func:`~mitoolkit.models.train_reference_model` (cached on disk). A path: see
        :func:`load_model`. Any ``nn.Module`` is used as given (and left as it was).
    dataset : {"digits", "cifar10", "cifar100"} or ImageDataset
        ``"digits"`` is bundled and offline. CIFAR is read from ``data_root``.
    methods : str or sequence of {"none", "pca", "cnn", "gap"}
        What happens to the activation; default all four. ``"baseline"`` means ``"none"``; a
        comma-separated string is accepted. GAP and CNN need (C, H, W) activations: on a flat layer
        they are skipped with a warning and listed in ``Comparison.skipped``.
    seeds : int or sequence of int
        ``5`` means seeds 0..4. Each seed gives one estimate per (layer, method).
    target : {"input", "label"}
        ``"input"``: I(X; T), ceiling ln N. ``"label"``: I(T; Y), ceiling ln K (K classes).
    n_samples : int, optional
        Images used, class-balanced, chosen by ``data_seed``. Default: min(5000, images in the
        split); a larger number uses all the images, with a warning.
    split : {"train", "test", "all"}
        Which images of a named dataset (the reference network is trained on "train"; "all" is
        train and test together). Ignored when ``dataset`` is an ImageDataset.
    data_root : path, optional
        Where the CIFAR archives are (see :func:`mitoolkit.data.load_dataset`).
    transforms : callable, None or "default"
        The channel's noise, applied to each image before the forward pass. ``"default"``:
        :func:`mitoolkit.data.minor_transforms` (small shifts and horizontal flips). None: no
        transformation (then I(X; T) is not finite for a deterministic network; only for checks).
    data_seed : int
        Seeds the choice of images and the transformations' draw (fixed across rows).
    other_side : {"none", "pca"}
        How x (the image or one-hot label) is treated, the same for every method.
    pca_components : int
        k of PCA-MINE (and of ``other_side="pca"``), capped at what the data allows.
    cnn_options : dict, optional
        Options of :class:`mitoolkit.reducers.ConvEncoder` (``channels``, ``out_features``).
    max_steps : int
        Step budget of each estimate (early stopping usually ends it sooner).
    estimator_options : dict, optional
        Further :func:`mitoolkit.mine.estimate_mi` options (``batch_size``, ``lr``, ``bound``...),
        the same for every row.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
    cpu_threads : int or None
        Intra-op threads while working on the CPU, restored afterwards. 1 (default) is fastest for
        these small critics, especially on shared cores (measured on 2 busy cores: 4.6 s per
        estimate with 1 thread, 94 s with 2). None leaves torch's setting alone.
    callbacks : sequence of Callback
        Passed to every estimate. A callback that asks a run to stop ends the comparison (as
        Ctrl-C or ``stop_event`` do): the stopped row is discarded, the finished ones are kept.
    stop_event : threading.Event, optional
        Set it (from another thread) to stop after the current step.
    on_row : callable, optional
        Called with each :class:`~mitoolkit.comparison.ComparisonRow` as it finishes.
    out : path, optional
        Folder for the results. Each row is written there as it finishes (``rows/*.json``,
        atomically); ``results.json``, ``results.csv`` and ``summary.csv`` are rewritten after each
        row and ``report.html`` at the end (also after an interruption or an error). Rows already
        there from a run with the same arguments are reused, not recomputed. Checked writable
        before any work.
    overwrite : bool
        Delete rows in ``out`` computed with other arguments (otherwise they are an error).
    report : bool
        Write ``report.html`` into ``out`` (needs plotly: ``pip install "mitoolkit[notebooks]"``).
    progress : bool
        Show a progress bar over rows.
    vectorize_seeds : bool
        Train the seeds of each (layer, fixed-reducer method) together in one vectorized pass
        (:func:`mitoolkit.mine.estimate_mi_seeds`): the same rows in distribution, in much less time
        on a GPU. The ``cnn`` method still runs seed by seed. Callbacks then follow the pass's first
        seed, and an interruption discards the whole pass. Default False: one estimate per row.

    Returns
    -------
    Comparison
        Rows (layer, method, seed, MIResult), the summary per (layer, method) (mean, std across
        seeds, mean seconds, ceilings) and the config. ``complete`` is False after an interruption.

    Raises
    ------
    ValueError
        Unknown dataset, layer, method or target (listing the valid ones), an unwritable ``out``,
        or rows in ``out`` from other arguments; all before any work.
    mitoolkit.data.DatasetNotFoundError
        CIFAR missing: the message names the archive and the folder to place it in.
    """
    # -- arguments, all checked before any work ------------------------------------------------
    layer_names = _as_names("layers", layers)
    method_names = resolve_methods(methods)
    seed_list = _as_seeds(seeds)
    _check_choice("target", target, TARGETS)
    _check_choice("split", split, SPLITS)
    _check_choice("other_side", other_side, OTHER_SIDES)
    _check_positive_int("max_steps", max_steps)
    _check_positive_int("pca_components", pca_components)
    if cpu_threads is not None:
        _check_positive_int("cpu_threads", cpu_threads)
    options = _check_estimator_options(estimator_options)
    cnn_opts = dict(cnn_options or {})
    make_reducer("cnn", **cnn_opts)  # unknown options fail here, not at the first CNN row
    torch_device = resolve_device(device)
    if transforms == "default":
        transforms = minor_transforms()
    elif transforms is not None and not callable(transforms):
        raise ValueError(
            f"transforms must be 'default', None or a callable on one (C, H, W) image; received "
            f"{transforms!r}."
        )
    out_path = _check_writable(out) if out is not None else None
    if out_path is not None and report:
        from mitoolkit.report import require_plotly

        require_plotly()

    data, dataset_name = _resolve_dataset(dataset, split, data_root)
    n_total = len(data)
    if n_samples is None:
        n_samples = min(DEFAULT_N_SAMPLES, n_total)
    _check_positive_int("n_samples", n_samples)
    if n_samples > n_total:
        warnings.warn(
            f"n_samples={n_samples} exceeds the {n_total} images of {data.name}: using all "
            f"{n_total} (split='all' gives a named dataset's train and test images together).",
            UserWarning, stacklevel=2)
        n_samples = n_total
    skeleton = _model_skeleton(model, data, dataset_name)
    shapes = _layer_shapes(skeleton, data)
    _check_layers(layer_names, shapes, skeleton)
    skipped = _inapplicable(layer_names, method_names, shapes)
    for item in skipped:
        warnings.warn(f"skipping {METHOD_LABELS[item['method']]} on layer {item['layer']!r}: "
                      f"{item['reason']}", UserWarning, stacklevel=2)

    with use_cpu_threads(cpu_threads if torch_device.type == "cpu" else None):
        net, model_description = _resolve_model(model, data, dataset_name, data_root, torch_device,
                                                progress, skeleton)
        indices = balanced_indices(data.labels.numpy(), int(n_samples), seed=data_seed)
        subset = data.subset(indices)
        n_classes = data.n_classes
        common = {
            "dataset": dataset_name,
            "dataset_description": data.name,
            "split": split if isinstance(dataset, str) else None,
            "n_samples": int(n_samples),
            "n_classes": n_classes,
            "data_seed": int(data_seed),
            "data_hash": _hash_tensors([subset.images, subset.labels]),
            "model": model_description,
            "model_hash": _hash_tensors(list(net.state_dict().values())),
            "target": target,
            "transforms": _describe_callable(transforms),
            "other_side": other_side,
            "pca_components": int(pca_components),
            "cnn_options": cnn_opts,
            "max_steps": int(max_steps),
            "estimator_options": options,
            "device": torch_device.type,
        }
        fingerprint = hashlib.sha256(json.dumps(common, sort_keys=True, default=str).encode()).hexdigest()[:16]
        config = {
            **common,
            "fingerprint": fingerprint,
            "layers": layer_names,
            "layer_shapes": {name: list(shapes[name]) for name in layer_names},
            "methods": method_names,
            "seeds": seed_list,
            "ceiling": math.log(n_samples) if target == "input" else math.log(n_classes),
            "ceiling_name": "ln N" if target == "input" else "ln K",
        }
        return _run(config, subset, net, torch_device, skipped, out_path, overwrite, report,
                    transforms, callbacks, stop_event, on_row, progress, cpu_threads,
                    vectorize_seeds)


def _run(
    config: dict[str, Any],
    subset: ImageDataset,
    net: nn.Module,
    device: torch.device,
    skipped: list[dict[str, str]],
    out_path: Path | None,
    overwrite: bool,
    report: bool,
    transforms: Callable | None,
    callbacks: Sequence[Callback],
    stop_event: threading.Event | None,
    on_row: Callable[[ComparisonRow], None] | None,
    progress: bool,
    cpu_threads: int | None,
    vectorize_seeds: bool = False,
) -> Comparison:
    """Run the rows that are not on disk yet; keep the files up to date as rows finish."""
    skip_keys = {(s["layer"], s["method"]) for s in skipped}
    keys = [(layer, method, seed) for layer in config["layers"] for seed in config["seeds"]
            for method in config["methods"] if (layer, method) not in skip_keys]
    done: dict[tuple[str, str, int], ComparisonRow] = {}
    store = None
    if out_path is not None:
        store = RowStore(out_path, config["fingerprint"])
        found, stale = store.scan()
        if stale:
            if not overwrite:
                raise ValueError(_stale_message(out_path, stale, config))
            for path in stale:
                path.unlink()
        done = {key: row for key, row in found.items() if key in set(keys)}
        write_atomic(out_path / "config.json", json.dumps(config, indent=1))
    todo = [key for key in keys if key not in done]
    # estimate_mi sets its own thread count when it can: give it ours.
    threads = {"cpu_threads": cpu_threads} if "cpu_threads" in _ESTIMATE_DEFAULTS else {}

    rows: dict[tuple[str, str, int], ComparisonRow] = dict(done)
    state = {"interrupted": False, "failed": False}

    def current() -> Comparison:
        ordered = tuple(rows[k] for k in keys if k in rows)
        complete = len(ordered) == len(keys) and not state["interrupted"] and not state["failed"]
        return Comparison(config=config, rows=ordered, complete=complete, skipped=tuple(skipped))

    def save(final: bool) -> None:
        if out_path is None:
            return
        comparison = current()
        comparison.save(out_path)
        if final and report:
            from mitoolkit.report import write_report

            write_report(comparison, out_path / "report.html")

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keys), initial=len(done), desc="compare", unit="row")
    try:
        needed = [layer for layer in config["layers"] if any(k[0] == layer for k in todo)]
        pairs = {}
        if needed:
            activations = collect_activations(net, subset, needed, transform=transforms,
                                              device=device, seed=config["data_seed"])
            pairs = {layer: mi_pair(activations, layer, target=config["target"], dataset=subset)
                     for layer in needed}
            del activations
        for group in _row_groups(todo, vectorize_seeds):
            layer, method, _ = group[0]
            if stop_event is not None and stop_event.is_set():
                state["interrupted"] = True
                break
            x, y = pairs[layer]
            seeds = [key[2] for key in group]
            text = f"{layer} {METHOD_LABELS[method]} seed {', '.join(map(str, seeds))}"
            row_callbacks = list(callbacks)
            if bar is not None:
                bar.set_postfix_str(text)
                row_callbacks.append(_BarPostfix(bar, text))
            common = dict(
                reducer_x=_other_reducer(config, x),
                reducer_y=_method_reducer(method, config, y),
                max_steps=config["max_steps"], device=device,
                callbacks=row_callbacks, stop_event=stop_event, progress=False, label=text,
                **threads, **config["estimator_options"],
            )
            if len(group) == 1:
                results = [estimate_mi(x, y, seed=seeds[0], **common)]
            else:
                results = estimate_mi_seeds(x, y, seeds=seeds, **common)
            if any(result.flags.get("stopped") for result in results):
                state["interrupted"] = True
                break
            for key, result in zip(group, results):
                row = ComparisonRow(layer, method, key[2], result)
                rows[key] = row
                if store is not None:
                    store.write(row)
                    save(final=False)
                if bar is not None:
                    bar.update(1)
                if on_row is not None:
                    on_row(row)
    except BaseException:
        state["failed"] = True
        with contextlib.suppress(Exception):  # keep what finished; never mask the error
            save(final=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    if state["interrupted"]:
        warnings.warn(
            f"comparison interrupted after {len(rows)} of {len(keys)} rows"
            + (f"; the finished rows are saved in {out_path}: run again with the same arguments "
               "to resume" if out_path is not None else "")
            + ".", RuntimeWarning, stacklevel=3)
    save(final=True)
    return current()


class _BarPostfix(Callback):
    """Shows the current row and its latest held-out estimate on the comparison's progress bar."""

    def __init__(self, bar: Any, text: str) -> None:
        self.bar, self.text = bar, text

    def on_eval(self, step: int, heldout: float) -> None:
        self.bar.set_postfix_str(f"{self.text}: step {step}, held-out {heldout:.3f} nats")


def _row_groups(todo: list[tuple[str, str, int]], vectorize_seeds: bool) -> list[list[tuple[str, str, int]]]:
    """Rows to compute together: all seeds of a (layer, fixed-reducer method), or one row each."""
    groups: dict[tuple[str, str, Any], list[tuple[str, str, int]]] = {}
    for key in todo:
        layer, method, seed = key
        together = vectorize_seeds and method != "cnn"
        groups.setdefault((layer, method, None if together else seed), []).append(key)
    return list(groups.values())


def _method_reducer(method: str, config: Mapping[str, Any], y: torch.Tensor) -> Reducer:
    if method == "pca":
        return make_reducer("pca", n_components=_pca_k(config, y), seed=0)
    if method == "cnn":
        return make_reducer("cnn", **config["cnn_options"])
    return make_reducer(method)


def _other_reducer(config: Mapping[str, Any], x: torch.Tensor) -> Reducer:
    if config["other_side"] == "pca":
        return make_reducer("pca", n_components=_pca_k(config, x), seed=0)
    return make_reducer("none")


def _pca_k(config: Mapping[str, Any], data: torch.Tensor) -> int:
    """pca_components, capped at min(n_train, D) so that PCA can be fit on the train split."""
    test_fraction = config["estimator_options"].get("test_fraction", _ESTIMATE_DEFAULTS["test_fraction"])
    n = int(data.shape[0])
    n_train = n - int(round(n * float(test_fraction)))
    dim = int(np.prod(data.shape[1:]))
    return max(1, min(int(config["pca_components"]), n_train, dim))


_ESTIMATE_DEFAULTS = {name: p.default for name, p in inspect.signature(estimate_mi).parameters.items()
                      if p.default is not inspect.Parameter.empty}


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """Method names as a list of {"none", "pca", "cnn", "gap"}: accepts "a,b" strings and aliases.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if isinstance(methods, str):
        items = [m.strip() for m in methods.split(",") if m.strip()]
    elif isinstance(methods, Sequence) and all(isinstance(m, str) for m in methods):
        items = list(methods)
    else:
        items = None
    if not items:
        raise ValueError(
            f"methods must name at least one of {', '.join(METHODS)} (baseline = none), as a list "
            f"or a comma-separated string; received {methods!r}."
        )
    out = []
    for item in items:
        name = _METHOD_ALIASES.get(item.lower(), item.lower())
        if name not in METHODS:
            raise ValueError(
                f"unknown method {item!r} in methods; valid methods: "
                + ", ".join(f"{m} ({METHOD_LABELS[m]})" for m in METHODS) + "."
            )
        if name not in out:
            out.append(name)
    return out


def _as_names(name: str, value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            f"{name} must be a layer name or a non-empty list of names such as ['conv2']; received "
            f"{value!r}. mitoolkit.layers.list_layers(model) (or `mitoolkit layers`) lists them."
        )
    return list(dict.fromkeys(value))


def _as_seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive number of seeds or a list of seeds; received {seeds!r}.")
        return list(range(int(seeds)))
    if (isinstance(seeds, Sequence) and seeds
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds)):
        return list(dict.fromkeys(int(s) for s in seeds))
    raise ValueError(
        f"seeds must be a positive number of seeds (5 means 0..4) or a non-empty list of integer "
        f"seeds; received {seeds!r}."
    )


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; received {value!r}.")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}.")


def _check_estimator_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    reserved = sorted(set(options) & _RESERVED)
    if reserved:
        raise ValueError(
            f"estimator_options cannot set {', '.join(reserved)}: compare_reducers sets them per "
            "row (use its own max_steps, device, seeds, methods and callbacks arguments)."
        )
    unknown = sorted(set(options) - set(_ESTIMATE_DEFAULTS))
    if unknown:
        valid = sorted(set(_ESTIMATE_DEFAULTS) - _RESERVED)
        raise ValueError(
            f"unknown estimator_options {', '.join(unknown)}; estimate_mi accepts {', '.join(valid)}."
        )
    return options


def _check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` when missing and prove it can be written, before any work."""
    path = Path(out).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"out={str(out)!r} cannot be written ({err.strerror or err}); choose a folder you can "
            "write to (nothing was computed)."
        ) from None
    return path


def _stale_message(out: Path, stale: list[Path], config: Mapping[str, Any]) -> str:
    differing = ""
    try:
        old = json.loads((out / "config.json").read_text())
        keys = [k for k in config if k in old and k not in ("layers", "methods", "seeds",
                "fingerprint", "layer_shapes") and old[k] != config[k]]
        if keys:
            differing = " Arguments that differ: " + ", ".join(
                f"{k} (was {old[k]!r}, now {config[k]!r})" for k in keys) + "."
    except (OSError, ValueError, TypeError):
        pass
    return (
        f"out={str(out)!r} holds {len(stale)} rows computed with other arguments (in "
        f"{out / 'rows'}).{differing} Choose another out folder, or pass overwrite=True "
        "(--overwrite) to delete them; nothing was computed."
    )


# --------------------------------------------------------------------------------------------
# Dataset and model
# --------------------------------------------------------------------------------------------


def _resolve_dataset(dataset: str | ImageDataset, split: str, root: str | os.PathLike | None
                     ) -> tuple[ImageDataset, str]:
    if isinstance(dataset, ImageDataset):
        return dataset, dataset.name.split("[")[0]
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ValueError(
            f"dataset must be one of {', '.join(map(repr, DATASETS))} or an ImageDataset; "
            f"received {dataset!r}."
        )
    name = dataset.lower()
    if split == "all":
        train = load_dataset(name, root=root, train=True)
        test = load_dataset(name, root=root, train=False)
        return ImageDataset(torch.cat([train.images, test.images]),
                            torch.cat([train.labels, test.labels]), train.classes,
                            f"{name}[all]"), name
    return load_dataset(name, root=root, train=split == "train"), name


def load_model(path: str | os.PathLike, *, dataset: ImageDataset, trust_pickle: bool = False) -> nn.Module:
    """Load a network from a file.

    Parameters
    ----------
    path : path
        One of: a checkpoint written by :func:`mitoolkit.models.train_reference_model` (a dict with
        ``config`` and ``state_dict``); a plain ``state_dict`` of a
        :class:`~mitoolkit.models.ReferenceCNN` for ``dataset``'s image shape and classes; or,
        with ``trust_pickle=True``, a whole module saved by ``torch.save(model)``.
    dataset : ImageDataset
        Gives the image shape and number of classes of a plain ReferenceCNN state_dict.
    trust_pickle : bool
        Allow unpickling a whole module. A pickle runs code when loaded: only for files you trust.

    Returns
    -------
    nn.Module
        In eval mode, on the CPU.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"model must be 'reference' or an existing file; received {str(path)!r}, which does "
            "not exist."
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a pickle of a whole module, or not a torch file
        if not trust_pickle:
            raise ValueError(
                f"model file {str(path)!r} is not a ReferenceCNN checkpoint or state_dict that can be "
                f"loaded safely ({type(err).__name__}). If it is a whole module saved with "
                "torch.save(model) and you trust it, pass trust_pickle=True (--trust-pickle); its "
                "class must be importable."
            ) from None
        payload = torch.load(file, map_location="cpu", weights_only=False)
    if isinstance(payload, nn.Module):
        return payload.eval()
    if isinstance(payload, dict) and "state_dict" in payload and "config" in payload:
        config, state = dict(payload["config"]), payload["state_dict"]
        width = config.pop("width", 16)
        net = ReferenceCNN(**config, width=width)
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        c, h, _ = dataset.image_shape
        net, state = ReferenceCNN(c, dataset.n_classes, h), payload
    else:
        raise ValueError(
            f"model file {str(path)!r} holds a {type(payload).__name__} that is neither a "
            "ReferenceCNN checkpoint nor a state_dict."
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"model file {str(path)!r} does not fit a ReferenceCNN for {dataset.name} "
            f"(images {dataset.image_shape}, {dataset.n_classes} classes): {err}"
        ) from None
    return net.eval()


def _model_skeleton(model: nn.Module | str | os.PathLike, data: ImageDataset, name: str) -> nn.Module:
    """The network whose layers are checked before any training: the untrained reference CNN
    for ``"reference"`` (same layers as the trained one), else the model itself."""
    if isinstance(model, nn.Module):
        return model
    if model == "reference":
        c, h, _ = data.image_shape
        if name not in DATASETS:
            raise ValueError(
                f"model='reference' is trained on a named dataset ({', '.join(DATASETS)}); the "
                f"dataset given is {data.name!r}. Pass your own model=nn.Module for it."
            )
        return ReferenceCNN(c, data.n_classes, h)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, dataset=data, trust_pickle=False)
    raise ValueError(
        f"model must be 'reference', a file path or a torch.nn.Module; received {type(model).__name__}."
    )


def _resolve_model(model: Any, data: ImageDataset, name: str, root: Any, device: torch.device,
                   progress: bool, skeleton: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(model, str) and model == "reference":
        net = train_reference_model(name, device=device, root=root, progress=progress)
        meta = {k: net.metadata.get(k) for k in ("dataset", "architecture", "epochs", "seed",
                                                  "test_accuracy")}
        return net, {"kind": "reference", **meta}
    description = {"kind": "module" if isinstance(model, nn.Module) else "file",
                   "class": type(skeleton).__name__}
    if not isinstance(model, nn.Module):
        description["path"] = str(model)
    return skeleton, description


def _layer_shapes(model: nn.Module, data: ImageDataset) -> dict[str, tuple[int, ...] | None]:
    return {info.name: info.shape for info in list_layers(model, data.images[:2])}


def _check_layers(names: list[str], shapes: Mapping[str, Any], model: nn.Module) -> None:
    unknown = [n for n in names if n not in shapes]
    if unknown:
        listed = ", ".join(f"{n} ({'x'.join(map(str, s)) if s else '?'})" for n, s in shapes.items())
        raise ValueError(
            f"unknown layer{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
            f"{type(model).__name__}; valid layers (output shape): {listed}."
        )
    bad = [n for n in names if not shapes[n]]
    if bad:
        raise ValueError(
            f"layer{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} did not return a "
            "tensor in a forward pass; choose a layer with an output shape "
            "(mitoolkit.layers.list_layers(model, example_input))."
        )


def _inapplicable(layers: list[str], methods: list[str], shapes: Mapping[str, Any]) -> list[dict[str, str]]:
    out = []
    for layer in layers:
        if len(shapes[layer]) != 3:
            for method in methods:
                if method in ("gap", "cnn"):
                    out.append({"layer": layer, "method": method, "reason":
                                f"it needs (C, H, W) feature maps and the layer gives "
                                f"{tuple(shapes[layer])}"})
    return out


def _describe_callable(fn: Any) -> str | None:
    """A stable description: the repr when the class defines one, else the qualified name (a
    default repr holds a memory address, which would change the fingerprint at every run)."""
    if fn is None:
        return None
    if type(fn).__repr__ is not object.__repr__ and not inspect.isroutine(fn):
        return repr(fn)
    target = fn if inspect.isroutine(fn) else type(fn)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(fn).__name__)}"


def _hash_tensors(tensors: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The information plane (issue 8): lives in mitoolkit.plane, re-exported here
# --------------------------------------------------------------------------------------------

# At the end: mitoolkit.plane imports this module's helpers lazily, so either may be imported first.
from mitoolkit.plane import information_plane as information_plane  # re-export

__all__.append("information_plane")
