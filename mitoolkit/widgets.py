"""Notebook widgets: a live MINE curve and an explorer app. The only module importing ipywidgets/plotly.

:class:`LivePlot` is a :class:`~mitoolkit.callbacks.Callback` that draws a run in a plotly
``FigureWidget``: the training bound at each step, the held-out estimate at each evaluation, the
ceiling ln N and, when known, the true MI as horizontal lines, and the final estimate with its 95 %
interval when the run ends. Updates are buffered and sent inside ``batch_update()`` at most
``max_rate_hz`` times a second, and spaced so that drawing takes at most ``max_overhead`` (2 %) of
the training time.

:class:`MIExplorer` is an ipywidgets app: choose a dataset, model, layer, reducer and target, press
Run, and watch the estimate converge; Stop ends the run and keeps what it learned. Estimation runs
in a background thread, so the figure updates and Stop works while it trains.

>>> from mitoolkit.widgets import LivePlot
>>> live = LivePlot(true_mi=true_mi)          # doctest: +SKIP
>>> live.figure                               # doctest: +SKIP  (display it, then:)
>>> estimate_mi(x, y, callbacks=[live])       # doctest: +SKIP
"""
from __future__ import annotations

import html
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Mapping

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from torch import nn

from mitoolkit.callbacks import Callback, RunInfo
from mitoolkit.data import DATASETS, ImageDataset, load_dataset, minor_transforms
from mitoolkit.devices import cpu_threads as use_cpu_threads, resolve_device
from mitoolkit.experiments import mi_pair
from mitoolkit.layers import LayerInfo, collect_activations, list_layers
from mitoolkit.mine import estimate_mi
from mitoolkit.models import train_reference_model
from mitoolkit.reducers import make_reducer
from mitoolkit.results import MIResult

__all__ = ["LivePlane", "LivePlot", "MIExplorer", "new_figure"]

_PALETTE = qualitative.Plotly
_REDUCER_LABELS = {"none": "none (flatten)", "pca": "PCA", "cnn": "CNN", "gap": "GAP"}
# The main option of each reducer: (constructor keyword, label in the app, default).
_REDUCER_OPTION = {"pca": ("n_components", "components k", 16), "cnn": ("out_features", "features", 16)}
_TARGETS = {"input": "input  I(X; T)", "label": "label  I(T; Y)"}


# --------------------------------------------------------------------------------------------
# LivePlot
# --------------------------------------------------------------------------------------------


def new_figure(*, title: str | None = None, height: int = 420) -> go.FigureWidget:
    """An empty ``FigureWidget`` laid out for MI curves (steps on x, nats on y).

    Parameters
    ----------
    title : str, optional
    height : int
        Pixels.

    Returns
    -------
    plotly.graph_objects.FigureWidget
    """
    fig = go.FigureWidget()
    fig.update_layout(
        title=title,
        height=height,
        template="plotly_white",
        xaxis_title="training step",
        yaxis_title="mutual information (nats)",
        margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
        # Below the plot: long run names on the right squeezed the plot to a fifth of its width.
        legend={"orientation": "h", "x": 0.0, "y": -0.2, "yanchor": "top"},
        hovermode="x unified",
    )
    return fig


class LivePlot(Callback):
    """Draw MINE runs live in a plotly ``FigureWidget``.

    Each run it follows gets its own colour and three traces: the training bound per step (thin,
    pale), the held-out validation estimate per evaluation (line with markers) and, at the end,
    the final test estimate with its 95 % interval as an error bar (marked "stopped" when the run
    was stopped). The ceiling ln(n_test) and, when given, the true MI are drawn as horizontal lines.

    Several runs can share one figure: pass the same ``fig`` to several LivePlots, or pass one
    LivePlot to several runs.

    Parameters
    ----------
    fig : plotly.graph_objects.FigureWidget, optional
        Figure to draw in; default: a new one from :func:`new_figure`. Display ``.figure``.
    true_mi : float, optional
        The true mutual information in nats, drawn as a dotted line.
    label : str, optional
        Name of the run in the legend; default the run's ``label``, else "run <k>".
    max_rate_hz : float
        Most figure updates per second while training; the end of a run is always drawn.
    max_overhead : float
        Largest share of the training time spent updating the figure: after an update that took
        t seconds, the next waits at least t / max_overhead (slow front-ends, big figures).
    max_points : int
        Most points of the training-bound trace; longer runs are shown with every k-th step.
    show_train : bool
        Draw the per-step training bound. With False the LivePlot has no ``on_step`` hook at all,
        so on a GPU the estimator need not copy the bound to the host after every step.
    reference_lines : mapping of str to float, optional
        More horizontal lines, e.g. ``{"H(Y) = ln 10": 2.303}``.

    Attributes
    ----------
    figure : FigureWidget
    results : list of MIResult
        The result of each finished run, in order.
    status : str
        ``"idle"``, ``"running"``, ``"finished"`` or ``"stopped"``.
    """

    def __new__(cls, *args: Any, show_train: bool = True, **kwargs: Any) -> "LivePlot":
        if cls is LivePlot and not show_train:
            cls = _HeldoutLivePlot
        return super().__new__(cls)

    def __init__(
        self,
        fig: go.FigureWidget | None = None,
        *,
        true_mi: float | None = None,
        label: str | None = None,
        max_rate_hz: float = 4.0,
        max_overhead: float = 0.02,
        max_points: int = 1000,
        show_train: bool = True,
        reference_lines: Mapping[str, float] | None = None,
    ) -> None:
        if fig is not None and not isinstance(fig, go.FigureWidget):
            raise ValueError(
                f"fig must be a plotly.graph_objects.FigureWidget (or None for a new one); received "
                f"{type(fig).__name__}. Wrap a Figure with go.FigureWidget(fig)."
            )
        if not max_rate_hz > 0:
            raise ValueError(f"max_rate_hz must be positive; received {max_rate_hz!r}.")
        if not 0 < max_overhead <= 1:
            raise ValueError(f"max_overhead must be in (0, 1]; received {max_overhead!r}.")
        if not isinstance(max_points, int) or max_points < 2:
            raise ValueError(f"max_points must be an integer of at least 2; received {max_points!r}.")
        self.figure = fig if fig is not None else new_figure()
        self.true_mi = true_mi
        self.label = label
        self.max_rate_hz = float(max_rate_hz)
        self.max_overhead = float(max_overhead)
        self.max_points = max_points
        self.show_train = show_train
        self.reference_lines = dict(reference_lines or {})
        self.results: list[MIResult] = []
        self.status = "idle"
        self.flushes = 0
        self._interval = 1.0 / self.max_rate_hz
        self._reset_buffers()
        if true_mi is not None:
            self._add_line(float(true_mi), f"true MI = {float(true_mi):.3f}", "black", "dot")
        for name, value in self.reference_lines.items():
            self._add_line(float(value), f"{name} = {float(value):.3f}", "grey", "dashdot")

    # -- callback hooks ----------------------------------------------------------------------

    def on_start(self, info: RunInfo) -> None:
        self._reset_buffers()
        self._interval = 1.0 / self.max_rate_hz
        self.status = "running"
        run = self._count_runs()
        self._run_label = self.label or info.label or f"run {run + 1}"
        color = _PALETTE[run % len(_PALETTE)]
        self._color = color
        self._add_line(info.log_n, f"ln N = ln {info.n_test} = {info.log_n:.2f} (ceiling)", "firebrick", "dash")
        with self.figure.batch_update():
            if self.show_train:
                self.figure.add_scatter(
                    x=[], y=[], mode="lines", name=f"{self._run_label}: train bound",
                    line={"color": color, "width": 1}, opacity=0.35, legendgroup=self._run_label,
                    meta={"run": run, "role": "train"},
                )
                self._train_trace = self.figure.data[-1]
            self.figure.add_scatter(
                x=[], y=[], mode="lines+markers", name=f"{self._run_label}: held-out",
                line={"color": color, "width": 2}, marker={"size": 5}, legendgroup=self._run_label,
                meta={"run": run, "role": "heldout"},
            )
            self._heldout_trace = self.figure.data[-1]
        self._last_flush = time.perf_counter()

    def on_step(self, step: int, train_bound: float) -> None:
        self._steps.append(step)
        self._train.append(train_bound)
        if time.perf_counter() - self._last_flush >= self._interval:
            self._flush()
        return None

    def on_eval(self, step: int, heldout: float) -> None:
        self._eval_steps.append(step)
        self._heldout.append(heldout)
        if time.perf_counter() - self._last_flush >= self._interval:
            self._flush()
        return None

    def on_end(self, result: MIResult) -> None:
        if self._heldout_trace is None:  # on_end without on_start: nothing was drawn
            return
        # The history is the estimator's record; draw it rather than the buffers, so the figure
        # matches the result exactly (also the steps trained after the last on_step).
        hist = result.history
        self._steps, self._train = list(hist.step), list(hist.train_bound)
        self._eval_steps, self._heldout = list(hist.eval_step), list(hist.heldout)
        stopped = bool(result.flags.get("stopped"))
        self.status = "stopped" if stopped else "finished"
        suffix = " (stopped)" if stopped else ""
        self.results.append(result)
        with self.figure.batch_update():
            self._flush(batch=False)
            self._heldout_trace.name = f"{self._run_label}: held-out{suffix}"
            if math.isfinite(result.mi):
                self._add_final(result, suffix)

    # -- drawing -----------------------------------------------------------------------------

    def _reset_buffers(self) -> None:
        self._steps: list[int] = []
        self._train: list[float] = []
        self._eval_steps: list[int] = []
        self._heldout: list[float] = []
        self._train_trace = None
        self._heldout_trace = None
        self._last_flush = 0.0

    def _flush(self, *, batch: bool = True) -> None:
        """Send the buffered points to the figure (decimating the training bound)."""
        started = time.perf_counter()
        self.flushes += 1
        steps, values = _decimate(self._steps, self._train, self.max_points)
        if batch:
            with self.figure.batch_update():
                self._write(steps, values)
        else:
            self._write(steps, values)
        self._last_flush = time.perf_counter()
        cost = self._last_flush - started
        self._interval = max(1.0 / self.max_rate_hz, cost / self.max_overhead)

    def _write(self, steps: list[int], values: list[float]) -> None:
        if self._train_trace is not None:
            self._train_trace.x, self._train_trace.y = steps, _finite_or_none(values)
        if self._heldout_trace is not None:
            self._heldout_trace.x = list(self._eval_steps)
            self._heldout_trace.y = _finite_or_none(self._heldout)

    def _add_final(self, result: MIResult, suffix: str) -> None:
        low, high = result.ci95
        finite = math.isfinite(low) and math.isfinite(high)
        name = f"{self._run_label}: MI = {result.mi:.3f}"
        name += f" [{low:.2f}, {high:.2f}]" if finite else ""
        self.figure.add_scatter(
            x=[max(result.history.last_step, 1)], y=[result.mi], mode="markers",
            name=name + suffix,
            marker={"color": self._color, "size": 11, "symbol": "diamond",
                    "line": {"color": "black", "width": 1}},
            error_y={"type": "data", "symmetric": False, "array": [high - result.mi if finite else 0.0],
                     "arrayminus": [result.mi - low if finite else 0.0], "color": self._color,
                     "thickness": 2, "width": 8},
            legendgroup=self._run_label,
            meta={"run": self._count_runs() - 1, "role": "final", "stopped": suffix != ""},
        )

    def _add_line(self, value: float, text: str, color: str, dash: str) -> None:
        """A horizontal line across the plot, unless one with the same text is already there."""
        if any(getattr(shape, "name", None) == text for shape in self.figure.layout.shapes):
            return
        self.figure.add_hline(
            y=value, line={"color": color, "dash": dash, "width": 1.5}, name=text,
            annotation_text=text, annotation_position="top left", annotation_font_size=11,
        )

    def _count_runs(self) -> int:
        return sum(1 for trace in self.figure.data
                   if isinstance(trace.meta, dict) and trace.meta.get("role") == "heldout")


class _HeldoutLivePlot(LivePlot):
    """A LivePlot without the training curve: it defines no ``on_step``, which lets the estimator
    skip the per-step host copy of the bound (see :func:`mitoolkit.callbacks.overrides`)."""

    on_step = Callback.on_step  # type: ignore[assignment]


def _finite_or_none(values: list[float]) -> list[float | None]:
    """NaN and infinities become gaps (None): JSON, and so the front-end, has no NaN."""
    return [v if math.isfinite(v) else None for v in values]


def _decimate(steps: list[int], values: list[float], max_points: int) -> tuple[list[int], list[float]]:
    """Every k-th point (and the last) so that at most about ``max_points`` remain."""
    n = len(steps)
    if n <= max_points:
        return list(steps), list(values)
    stride = math.ceil(n / (max_points - 1))
    xs, ys = steps[::stride], values[::stride]
    if xs[-1] != steps[-1]:
        xs.append(steps[-1])
        ys.append(values[-1])
    return xs, ys


# --------------------------------------------------------------------------------------------
# MIExplorer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunSpec:
    dataset: str
    model: str
    layer: str
    reducer: str
    option: int | None
    target: str
    steps: int
    n_samples: int
    seed: int
    device: str

    @property
    def reducer_text(self) -> str:
        if self.reducer in _REDUCER_OPTION and self.option is not None:
            key = _REDUCER_OPTION[self.reducer][0]
            return f"{_REDUCER_LABELS[self.reducer]}({key}={self.option})"
        return _REDUCER_LABELS[self.reducer]

    @property
    def label(self) -> str:
        what = "I(X;T)" if self.target == "input" else "I(T;Y)"
        return f"{self.layer} · {self.reducer_text} · {what}"


class _StatusLine(Callback):
    """Keeps the explorer's status line current during a run (evaluations only)."""

    def __init__(self, explorer: "MIExplorer", spec: _RunSpec) -> None:
        self.explorer = explorer
        self.spec = spec
        self.max_steps = spec.steps

    def on_start(self, info: RunInfo) -> None:
        self.max_steps = info.max_steps
        self.explorer._set_status(
            f"training MINE on {self.spec.label}: {info.n_train} train / {info.n_valid} validation / "
            f"{info.n_test} test samples", "running")

    def on_eval(self, step: int, heldout: float) -> None:
        self.explorer._set_status(
            f"step {step}/{self.max_steps} of {self.spec.label}: held-out estimate {heldout:.3f} nats",
            "running")
        return None


class MIExplorer:
    """An app to choose a layer and a reducer and watch MINE estimate its information live.

    It estimates, for the chosen layer T of the chosen model: ``target="input"``, I(X; T), where X
    is one of N images and T the layer's activation of a randomly transformed copy (the paper's
    setting; at most ln N); ``target="label"``, I(T; Y), with Y the class label (at most ln K).
    The pair is built by :func:`mitoolkit.experiments.mi_pair`, as in the comparison. The
    activation goes through the chosen reducer (none, PCA, CNN or GAP) before the critic; the
    image or label side is only flattened.

    Display the explorer (make it the last expression of a cell) and use its controls, or drive
    it from Python: set ``layer_dropdown.value``, call ``run_button.click()``, then :meth:`wait`.

    Parameters
    ----------
    model : torch.nn.Module, optional
        A trained network taking the dataset's images; offered as "given model". By default the
        reference CNN of :func:`mitoolkit.models.train_reference_model`, trained (or loaded from
        its cache) for the chosen dataset.
    dataset : {"digits", "cifar10", "cifar100"}
        The data; CIFAR must be on disk (see :func:`mitoolkit.data.load_dataset`).
    layer : str, optional
        Initial layer; default ``"conv2"`` when the model has it, else its first layer.
    reducer : {"none", "pca", "cnn", "gap"}
        Initial reducer.
    target : {"input", "label"}
        Initial target.
    steps, n_samples, seed : int
        Initial MINE steps, samples (images) and seed.
    device : str
        Initial device (``"auto"``, ``"cpu"``, ``"cuda"``).
    batch_size : int
        MINE batch size (lowered to the training split's size when N is small).
    strength : float
        Strength of the random transformations (see :func:`mitoolkit.data.minor_transforms`).
    epochs : int, optional
        Epochs of the reference CNN (default per dataset).
    cache_dir : path, optional
        Where reference weights are cached (default ``$MITOOLKIT_CACHE``).
    train : bool
        Use the training split (the network's own training data) or the test split.
    cpu_threads : int or None
        Torch intra-op threads during a run on the CPU, restored afterwards (as in
        :func:`mitoolkit.experiments.compare_reducers`): 1 is fastest for these small critics,
        much faster on busy shared cores. None leaves torch's setting alone.
    estimator_options : mapping, optional
        More keyword arguments for :func:`mitoolkit.mine.estimate_mi` (e.g. ``{"lr": 1e-3}``).

    Attributes
    ----------
    figure : FigureWidget
        The live figure all runs share.
    widget : ipywidgets.VBox
        The whole app.
    results : list of (dict, MIResult)
        Each finished run's settings and result, in order.
    last_error : BaseException or None
        The last error raised in the background (also shown in the app).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        dataset: str = "digits",
        layer: str | None = None,
        reducer: str = "pca",
        target: str = "input",
        steps: int = 2000,
        n_samples: int = 1000,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 256,
        strength: float = 1.0,
        epochs: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        train: bool = True,
        cpu_threads: int | None = 1,
        estimator_options: Mapping[str, Any] | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {list(DATASETS)}; received {dataset!r}.")
        if reducer not in _REDUCER_LABELS:
            raise ValueError(f"reducer must be one of {list(_REDUCER_LABELS)}; received {reducer!r}.")
        if target not in _TARGETS:
            raise ValueError(f"target must be one of {list(_TARGETS)}; received {target!r}.")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module or None; received {type(model).__name__}.")
        self.given_model = model
        self.batch_size = batch_size
        self.strength = strength
        self.epochs = epochs
        self.cache_dir = cache_dir
        self.train_split = train
        if cpu_threads is not None and (not isinstance(cpu_threads, int) or cpu_threads < 1):
            raise ValueError(f"cpu_threads must be a positive integer or None; received {cpu_threads!r}.")
        self.cpu_threads = cpu_threads
        self.estimator_options = dict(estimator_options or {})
        self.results: list[tuple[dict[str, Any], MIResult]] = []
        self.last_error: BaseException | None = None
        self.status_text = ""
        self._cleared = 0
        self._datasets: dict[str, ImageDataset] = {}
        self._models: dict[tuple[str, str], nn.Module] = {}
        self._layers: dict[str, LayerInfo] = {}
        self._pairs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._worker: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._option_values = {name: spec[2] for name, spec in _REDUCER_OPTION.items()}
        self._build_controls(dataset, reducer, target, steps, n_samples, seed, device)
        self._prepare(dataset, self.model_dropdown.value, layer)
        self._connect()

    # -- building the app --------------------------------------------------------------------

    def _build_controls(self, dataset: str, reducer: str, target: str, steps: int,
                        n_samples: int, seed: int, device: str) -> None:
        style = {"description_width": "initial"}
        narrow = widgets.Layout(width="180px")
        self.dataset_dropdown = widgets.Dropdown(options=list(DATASETS), value=dataset,
                                                 description="dataset", style=style)
        models = (["given model"] if self.given_model is not None else []) + ["reference CNN"]
        self.model_dropdown = widgets.Dropdown(options=models, value=models[0], description="model",
                                               style=style)
        self.layer_dropdown = widgets.Dropdown(options=[], description="layer", style=style,
                                               layout=widgets.Layout(width="340px"))
        self.reducer_dropdown = widgets.Dropdown(
            options=[(text, name) for name, text in _REDUCER_LABELS.items()], value=reducer,
            description="reducer", style=style)
        self.option_input = widgets.BoundedIntText(value=16, min=1, max=100_000, description="k",
                                                   style=style, layout=narrow)
        self.target_toggle = widgets.ToggleButtons(
            options=[(text, name) for name, text in _TARGETS.items()], value=target,
            description="target", style=style)
        self.steps_input = widgets.BoundedIntText(value=steps, min=1, max=10_000_000,
                                                  description="steps", style=style, layout=narrow)
        self.samples_input = widgets.BoundedIntText(value=n_samples, min=8, max=10_000_000,
                                                    description="samples N", style=style, layout=narrow)
        self.seed_input = widgets.IntText(value=seed, description="seed", style=style, layout=narrow)
        devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.device_dropdown = widgets.Dropdown(options=devices, value=device if device in devices else "auto",
                                                description="device", style=style, layout=narrow)
        self.run_button = widgets.Button(description="Run", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                          disabled=True)
        self.clear_button = widgets.Button(description="Clear", icon="trash",
                                           tooltip="remove all runs from the figure and the table")
        self.status = widgets.HTML(value="")
        self.table = widgets.HTML(value="")
        self.log = widgets.Output(layout=widgets.Layout(max_height="240px", overflow="auto"))
        self.figure = new_figure()
        self.widget = widgets.VBox([
            widgets.HBox([self.dataset_dropdown, self.model_dropdown, self.layer_dropdown]),
            widgets.HBox([self.reducer_dropdown, self.option_input, self.target_toggle]),
            widgets.HBox([self.steps_input, self.samples_input, self.seed_input, self.device_dropdown]),
            widgets.HBox([self.run_button, self.stop_button, self.clear_button, self.status]),
            self.figure,
            self.table,
            self.log,
        ])
        # Stable hooks for page-level tests and user CSS (tests/browser finds controls by them).
        for element, css in [(self.widget, "explorer"), (self.run_button, "run"),
                             (self.stop_button, "stop"), (self.clear_button, "clear"),
                             (self.steps_input, "steps"), (self.status, "status")]:
            element.add_class(f"mitoolkit-{css}")
        self._show_option(reducer)

    def _connect(self) -> None:
        self.run_button.on_click(lambda _button: self.run())
        self.stop_button.on_click(lambda _button: self.stop())
        self.clear_button.on_click(lambda _button: self.clear())
        self.reducer_dropdown.observe(self._on_reducer, names="value")
        self.layer_dropdown.observe(lambda _change: self._check_compatible(), names="value")
        self.option_input.observe(self._on_option, names="value")
        self.dataset_dropdown.observe(self._on_model_choice, names="value")
        self.model_dropdown.observe(self._on_model_choice, names="value")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- public actions ----------------------------------------------------------------------

    def run(self) -> bool:
        """Start a run with the current settings (what the Run button does).

        Returns
        -------
        bool
            False when another run or a model load is still going on (nothing is started).
        """
        if self.busy:
            self._set_status("busy: wait for the current run to end, or press Stop", "warning")
            return False
        if self.layer_dropdown.value is None:
            self._set_status("no layer to choose: load a model first", "error")
            return False
        spec = self._current_spec()
        self._stop_event = threading.Event()
        self._set_running(True)
        self._set_status(f"collecting activations of {spec.layer} ({spec.n_samples} images) ...", "running")
        self._start(self._run_worker, spec)
        return True

    def stop(self) -> None:
        """Ask the current run to stop after its current step (what the Stop button does)."""
        if self.busy:
            self._stop_event.set()
            self._set_status("stopping ...", "warning")

    def clear(self) -> None:
        """Remove every run from the figure and the table (results stay in ``results``)."""
        if self.busy:
            self._set_status("cannot clear during a run", "warning")
            return
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.layout.shapes = ()
            self.figure.layout.annotations = ()
        self._cleared = len(self.results)
        self._render_table()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run (or model load) ends.

        Parameters
        ----------
        timeout : float, optional
            Seconds; default wait as long as it takes.

        Returns
        -------
        bool
            True when nothing is running any more.
        """
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.busy

    join = wait

    @property
    def busy(self) -> bool:
        """Whether a run or a model load is going on in the background."""
        return self._worker is not None and self._worker.is_alive()

    @property
    def layers(self) -> list[LayerInfo]:
        """The layers offered in the dropdown, with their output shapes."""
        return list(self._layers.values())

    # -- the model and its layers --------------------------------------------------------------

    def _on_model_choice(self, _change: Any) -> None:
        if self.busy:
            self._set_status("busy: the new choice applies after the current run", "warning")
            return
        self._start(self._prepare, self.dataset_dropdown.value, self.model_dropdown.value, None)

    def _prepare(self, dataset: str, model_name: str, layer: str | None) -> None:
        """Load the data and the model, and fill the layer dropdown (errors go to the status)."""
        self._lock(True)
        try:
            self._set_status(f"loading {dataset} and the {model_name} ...", "running")
            data = self._dataset(dataset)
            model = self._model(dataset, model_name)
            example = data.images[:2]
            infos = [info for info in list_layers(model, example)
                     if info.shape is not None and info.calls == 1]
            self._layers = {info.name: info for info in infos}
            options = [(f"{info.name}  ({info.type}, {_shape(info.shape)})", info.name) for info in infos]
            chosen = layer if layer in self._layers else ("conv2" if "conv2" in self._layers else
                                                          (infos[0].name if infos else None))
            if layer is not None and layer not in self._layers:
                raise ValueError(f"layer {layer!r} is not among the model's layers: "
                                 f"{', '.join(self._layers)}.")
            self.layer_dropdown.options = options
            self.layer_dropdown.value = chosen
            accuracy = getattr(model, "metadata", {}).get("test_accuracy")
            acc = f", test accuracy {accuracy:.1%}" if accuracy is not None else ""
            self._set_status(f"ready: {data.name}, {len(data)} images; {model_name}{acc}", "ok")
            self._check_compatible()
        except Exception as err:  # shown in the app, kept for inspection
            self._report_error(err, "loading the data or model failed")
        finally:
            self._lock(False)

    def _dataset(self, name: str) -> ImageDataset:
        if name not in self._datasets:
            self._datasets[name] = load_dataset(name, train=self.train_split)
        return self._datasets[name]

    def _model(self, dataset: str, model_name: str) -> nn.Module:
        if model_name == "given model":
            return self.given_model  # type: ignore[return-value]
        key = (dataset, model_name)
        if key not in self._models:
            self._set_status(f"training (or loading) the reference CNN for {dataset} ...", "running")
            self._models[key] = train_reference_model(
                dataset, epochs=self.epochs, seed=0, cache_dir=self.cache_dir, progress=False)
        return self._models[key]

    # -- reducer option and compatibility ------------------------------------------------------

    def _show_option(self, reducer: str) -> None:
        if reducer in _REDUCER_OPTION:
            _, text, _ = _REDUCER_OPTION[reducer]
            self.option_input.description = text
            self.option_input.value = self._option_values[reducer]
            self.option_input.disabled = False
        else:
            self.option_input.description = "(no option)"
            self.option_input.disabled = True

    def _on_reducer(self, change: Any) -> None:
        self._show_option(change["new"])
        self._check_compatible()

    def _on_option(self, change: Any) -> None:
        reducer = self.reducer_dropdown.value
        if reducer in _REDUCER_OPTION:
            self._option_values[reducer] = int(change["new"])

    def _check_compatible(self) -> bool:
        """Say at once when the reducer cannot take the layer (GAP or CNN on a flat layer)."""
        info = self._layers.get(self.layer_dropdown.value)
        reducer = self.reducer_dropdown.value
        if info is None or info.shape is None or reducer not in ("gap", "cnn"):
            return True
        try:
            make_reducer(reducer).fit(torch.zeros((2, *info.shape)))
        except ValueError as err:
            self._set_status(f"{info.name} has shape {_shape(info.shape)}: {err}", "error")
            return False
        return True

    # -- a run -------------------------------------------------------------------------------------

    def _current_spec(self) -> _RunSpec:
        reducer = self.reducer_dropdown.value
        return _RunSpec(
            dataset=self.dataset_dropdown.value, model=self.model_dropdown.value,
            layer=self.layer_dropdown.value, reducer=reducer,
            option=self._option_values.get(reducer) if reducer in _REDUCER_OPTION else None,
            target=self.target_toggle.value, steps=int(self.steps_input.value),
            n_samples=int(self.samples_input.value), seed=int(self.seed_input.value),
            device=self.device_dropdown.value,
        )

    def _run_worker(self, spec: _RunSpec) -> None:
        try:
            on_cpu = resolve_device(spec.device).type == "cpu"
            with use_cpu_threads(self.cpu_threads if on_cpu else None):
                self._estimate(spec)
        except Exception as err:  # shown in the app, kept for inspection
            self._report_error(err, f"the run {spec.label} failed")
        finally:
            self._set_running(False)

    def _estimate(self, spec: _RunSpec) -> None:
        """Build the pair, run MINE with the live plot and the status line, record the result."""
        other, activation = self._pair(spec)
        reducer = make_reducer(spec.reducer, **self._reducer_options(spec))
        test_fraction = self.estimator_options.get("test_fraction", 0.5)
        n_train = spec.n_samples - int(round(spec.n_samples * test_fraction))
        lines = {}
        if spec.target == "label":
            k = int(other.shape[1])
            lines[f"H(Y) ≤ ln {k}"] = math.log(k)
        live = LivePlot(self.figure, label=f"#{len(self.results) + 1} {spec.label}",
                        reference_lines=lines)
        options = {"batch_size": max(2, min(self.batch_size, n_train)), **self.estimator_options}
        result = estimate_mi(
            other, activation, reducer_x="none", reducer_y=reducer,
            callbacks=[live, _StatusLine(self, spec)], stop_event=self._stop_event,
            progress=False, max_steps=spec.steps, seed=spec.seed, device=spec.device,
            label=spec.label, **options,
        )
        self._record(spec, result)

    def _pair(self, spec: _RunSpec) -> tuple[torch.Tensor, torch.Tensor]:
        key = (spec.dataset, spec.model, spec.layer, spec.target, spec.n_samples, spec.seed)
        if key not in self._pairs:
            data = self._dataset(spec.dataset)
            if spec.n_samples > len(data):
                raise ValueError(f"samples N={spec.n_samples} exceeds the {len(data)} images of "
                                 f"{data.name}; choose N <= {len(data)}.")
            if len(self._pairs) >= 4:  # keep memory bounded
                self._pairs.pop(next(iter(self._pairs)))
            acts = collect_activations(
                self._model(spec.dataset, spec.model), data, [spec.layer],
                transform=minor_transforms(strength=self.strength), n_samples=spec.n_samples,
                seed=spec.seed, device=spec.device,
            )
            self._pairs[key] = mi_pair(acts, spec.layer, target=spec.target, dataset=data)
        return self._pairs[key]

    @staticmethod
    def _reducer_options(spec: _RunSpec) -> dict[str, Any]:
        if spec.reducer in _REDUCER_OPTION and spec.option is not None:
            return {_REDUCER_OPTION[spec.reducer][0]: spec.option}
        return {}

    def _record(self, spec: _RunSpec, result: MIResult) -> None:
        self.results.append((dict(spec.__dict__), result))
        state = _run_state(result)
        low, high = result.ci95
        self._set_status(
            f"{state}: {spec.label} = {result.mi:.3f} nats, 95% CI [{low:.3f}, {high:.3f}] after "
            f"{result.history.last_step} steps ({result.seconds:.1f} s)",
            "warning" if state == "stopped" else "ok")
        self._render_table()

    # -- display helpers -------------------------------------------------------------------------

    def _render_table(self) -> None:
        rows = self.results[self._cleared:]
        if not rows:
            self.table.value = ""
            return
        head = ("#", "dataset", "layer", "reducer", "target", "MI (nats)", "95% CI", "ln N", "steps",
                "seconds", "status")
        lines = ["<table style='border-collapse:collapse;font-size:12px'><tr>"
                 + "".join(f"<th style='padding:2px 8px;text-align:left'>{h}</th>" for h in head) + "</tr>"]
        for number, (spec, result) in enumerate(rows, start=self._cleared + 1):
            run = _RunSpec(**spec)
            low, high = result.ci95
            cells = (number, run.dataset, run.layer, run.reducer_text, run.target,
                     f"{result.mi:.3f}", f"[{low:.3f}, {high:.3f}]", f"{result.log_n:.2f}",
                     result.history.last_step, f"{result.seconds:.1f}", _run_state(result))
            lines.append("<tr>" + "".join(
                f"<td style='padding:2px 8px'>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        self.table.value = "".join(lines) + "</table>"

    def _set_status(self, text: str, kind: str = "ok") -> None:
        colors = {"ok": "#2a7a2a", "running": "#1f5fa8", "warning": "#a86a00", "error": "#b00020"}
        self.status_text = text
        self.status.value = (f"<span style='color:{colors.get(kind, 'black')}'>"
                             f"{html.escape(text)}</span>")

    def _set_running(self, running: bool) -> None:
        self._lock(running)
        self.stop_button.disabled = not running

    def _lock(self, locked: bool) -> None:
        """Disable Run and the data/model choices while something runs in the background."""
        for control in (self.run_button, self.dataset_dropdown, self.model_dropdown):
            control.disabled = locked

    def _report_error(self, err: BaseException, what: str) -> None:
        self.last_error = err
        self._set_status(f"{what}: {type(err).__name__}: {err}", "error")
        self.log.append_stderr("".join(traceback.format_exception(type(err), err, err.__traceback__)))

    def _start(self, target: Any, *args: Any) -> None:
        self._worker = threading.Thread(target=target, args=args, daemon=True, name="mitoolkit-explorer")
        self._worker.start()


def _run_state(result: MIResult) -> str:
    flags = result.flags
    if flags.get("stopped"):
        return "stopped"
    if flags.get("non_finite"):
        return "failed (non-finite loss)"
    extra = [name for name in ("early_stopped", "still_rising", "above_log_n") if flags.get(name)]
    return "finished" + (f" ({', '.join(n.replace('_', ' ') for n in extra)})" if extra else "")


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(map(str, shape)) if shape else "?"


# --------------------------------------------------------------------------------------------
# LivePlane (issue 8): the information plane, drawn as information_plane's rows arrive
# --------------------------------------------------------------------------------------------


class LivePlane:
    """Draw the information plane live: pass it as ``on_row`` to
    :func:`mitoolkit.experiments.information_plane` and display ``.figure``.

    Each finished estimate redraws the paths (one per layer, coloured by epoch, with error bars and
    the ceilings ln N and ln K) by :func:`mitoolkit.plane_report.update_plane_figure`, inside one
    ``batch_update``; a point appears once both I(X; T) and I(T; Y) of its (epoch, layer) are in.
    Rows read back from a resumed run's folder are drawn first.

    Parameters
    ----------
    fig : plotly.graph_objects.FigureWidget, optional
        Figure to draw in; default a new one.
    layers : sequence of str, optional
        Order of the paths (shallowest first); default the order rows arrive in.
    epochs : int, optional
        The last epoch E, the top of the colour scale; default the largest epoch seen so far.
    title : str, optional
    height : int
        Pixels.

    Attributes
    ----------
    figure : FigureWidget
    rows : list of PlaneRow
        The rows drawn, in arrival order.
    """

    def __init__(
        self,
        fig: go.FigureWidget | None = None,
        *,
        layers: list[str] | tuple[str, ...] | None = None,
        epochs: int | None = None,
        title: str | None = "Information plane (live)",
        height: int = 560,
    ) -> None:
        from mitoolkit.plane_report import _figure_layout

        if fig is not None and not isinstance(fig, go.FigureWidget):
            raise ValueError(
                f"fig must be a plotly.graph_objects.FigureWidget (or None for a new one); received "
                f"{type(fig).__name__}. Wrap a Figure with go.FigureWidget(fig)."
            )
        self.figure = fig if fig is not None else go.FigureWidget()
        _figure_layout(self.figure, title, height)
        self.layers = list(layers) if layers is not None else None
        self.epochs = epochs
        self.rows: list[Any] = []

    def __call__(self, row: Any) -> None:
        """Add one :class:`~mitoolkit.plane.PlaneRow` and redraw."""
        from mitoolkit.plane_report import update_plane_figure

        self.rows.append(row)
        with self.figure.batch_update():
            update_plane_figure(self.figure, self.rows, layers=self.layers, max_epoch=self.epochs)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.figure._repr_mimebundle_(**kwargs)
