"""The live plot and the explorer app, driven from Python as a user would drive them by clicking."""
from __future__ import annotations

import math
import time

import plotly.graph_objects as go
import pytest
import torch

from mitoolkit import StopAfter, estimate_mi, synthetic
from mitoolkit.models import train_reference_model
from mitoolkit.widgets import LivePlot, MIExplorer, _decimate

# Small settings: the whole file runs in well under a minute on 2 shared cores.
N_SAMPLES = 400
STEPS = 200
RUN_TIMEOUT = 60.0


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    # These networks are tiny: on 2 shared cores, torch's second intra-op thread makes each step
    # tens of times slower (measured 0.45 s vs 31 s for the same run under load). Restored after.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    return train_reference_model("digits", epochs=3, seed=0, device="cpu", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def gaussians():
    return synthetic.correlated_gaussian(600, d=2, rho=0.8, seed=0)


def _fast(**extra):
    return {"max_steps": 150, "eval_every": 25, "batch_size": 128, "width": 32, "progress": False,
            "device": "cpu", **extra}


def _traces(fig, role):
    return [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("role") == role]


def _shape_names(fig):
    return [shape.name for shape in fig.layout.shapes]


def _wait_until(condition, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------------------------
# LivePlot
# --------------------------------------------------------------------------------------------


def test_liveplot_draws_curves_lines_and_final_estimate(gaussians):
    x, y, true_mi = gaussians
    live = LivePlot(true_mi=true_mi, label="gauss")
    assert isinstance(live.figure, go.FigureWidget)
    result = estimate_mi(x, y, callbacks=[live], **_fast())

    (train,) = _traces(live.figure, "train")
    (heldout,) = _traces(live.figure, "heldout")
    (final,) = _traces(live.figure, "final")
    assert list(train.x) == list(result.history.step)
    assert list(heldout.y) == pytest.approx(list(result.history.heldout))
    assert final.y[0] == pytest.approx(result.mi)
    assert final.error_y.array[0] == pytest.approx(result.ci95[1] - result.mi)
    assert "stopped" not in final.name and live.status == "finished"
    names = _shape_names(live.figure)
    assert any(name.startswith("true MI") for name in names)
    assert any(f"ln {result.n_test}" in name for name in names)
    assert live.results == [result]


def test_liveplot_marks_a_stopped_run(gaussians):
    x, y, _ = gaussians
    live = LivePlot()
    result = estimate_mi(x, y, callbacks=[live, StopAfter(40)], **_fast())
    assert result.flags["stopped"] and live.status == "stopped"
    (heldout,) = _traces(live.figure, "heldout")
    (final,) = _traces(live.figure, "final")
    assert "(stopped)" in heldout.name and "(stopped)" in final.name and final.meta["stopped"]
    assert len(_traces(live.figure, "train")[0].x) == result.history.last_step


def test_runs_share_a_figure_with_their_own_colours_and_one_ceiling(gaussians):
    x, y, _ = gaussians
    first = LivePlot(label="mine")
    second = LivePlot(first.figure, label="dv")
    estimate_mi(x, y, bound="mine", callbacks=[first], **_fast(max_steps=50))
    estimate_mi(x, y, bound="dv", callbacks=[second], **_fast(max_steps=50))
    heldout = _traces(first.figure, "heldout")
    assert [t.name for t in heldout] == ["mine: held-out", "dv: held-out"]
    assert heldout[0].line.color != heldout[1].line.color
    assert sum("ceiling" in name for name in _shape_names(first.figure)) == 1  # same N: one line


def test_without_the_training_curve_liveplot_needs_no_step_hook(gaussians):
    from mitoolkit.callbacks import overrides

    assert overrides(LivePlot(), "on_step")
    live = LivePlot(show_train=False, label="heldout only")
    assert isinstance(live, LivePlot) and not overrides(live, "on_step")  # no per-step GPU sync
    x, y, _ = gaussians
    estimate_mi(x, y, callbacks=[live], **_fast(max_steps=50))
    assert not _traces(live.figure, "train") and len(_traces(live.figure, "heldout")[0].x) == 2


def test_liveplot_updates_at_a_bounded_rate_and_decimates(gaussians):
    x, y, _ = gaussians
    live = LivePlot(max_rate_hz=2.0, max_points=50)
    started = time.perf_counter()
    result = estimate_mi(x, y, callbacks=[live], **_fast(max_steps=300, patience=1000))
    seconds = time.perf_counter() - started
    assert live.flushes <= 2 * seconds + 3  # rate-limited flushes, plus the final one
    (train,) = _traces(live.figure, "train")
    assert len(train.x) <= 51 and train.x[-1] == result.history.last_step


def test_decimate_keeps_the_last_point():
    steps = list(range(1, 1001))
    xs, ys = _decimate(steps, [float(s) for s in steps], 100)
    assert len(xs) <= 101 and xs[0] == 1 and xs[-1] == 1000 and ys == [float(s) for s in xs]
    assert _decimate([1, 2], [0.5, 0.6], 10) == ([1, 2], [0.5, 0.6])


def test_liveplot_draws_non_finite_values_as_gaps():
    from mitoolkit.callbacks import RunInfo

    live = LivePlot()
    live.on_start(RunInfo(max_steps=3, eval_every=1, n_train=4, n_valid=2, n_test=2, log_n=0.69, bound="mine"))
    for step, value in enumerate([0.1, float("nan"), float("inf")], start=1):
        live.on_step(step, value)
        live.on_eval(step, value)
    live._flush()
    assert list(_traces(live.figure, "train")[0].y) == [0.1, None, None]
    assert list(_traces(live.figure, "heldout")[0].y) == [0.1, None, None]


def test_liveplot_rejects_a_plain_figure():
    with pytest.raises(ValueError, match="FigureWidget"):
        LivePlot(go.Figure())


# --------------------------------------------------------------------------------------------
# MIExplorer
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def explorer(model):
    app = MIExplorer(model, steps=STEPS, n_samples=N_SAMPLES, seed=0, device="cpu",
                     estimator_options={"width": 64, "eval_every": 20})
    yield app
    app.stop()
    app.wait(RUN_TIMEOUT)


def test_explorer_lists_layers_with_shapes_and_reducers(explorer):
    labels = dict((value, text) for text, value in explorer.layer_dropdown.options)
    assert {"conv1", "conv2", "conv3", "fc1", "fc"} <= set(labels)
    assert "32×4×4" in labels["conv2"] and "64" in labels["fc1"]
    assert explorer.layer_dropdown.value == "conv2"
    assert set(v for _, v in explorer.reducer_dropdown.options) == {"none", "pca", "cnn", "gap"}
    explorer.reducer_dropdown.value = "pca"
    assert not explorer.option_input.disabled and "components" in explorer.option_input.description
    explorer.reducer_dropdown.value = "gap"
    assert explorer.option_input.disabled


def test_choose_layer_press_run_and_the_figure_fills(explorer):
    explorer.layer_dropdown.value = "conv3"
    explorer.reducer_dropdown.value = "gap"
    explorer.run_button.click()
    assert explorer.busy and explorer.run_button.disabled and not explorer.stop_button.disabled
    assert explorer.wait(RUN_TIMEOUT), "the run did not finish in time"
    assert explorer.last_error is None, explorer.status_text
    assert len(_traces(explorer.figure, "train")[0].x) > 0
    assert len(_traces(explorer.figure, "heldout")[0].x) > 0
    assert len(_traces(explorer.figure, "final")) == 1
    spec, result = explorer.results[-1]
    assert spec["layer"] == "conv3" and spec["reducer"] == "gap" and math.isfinite(result.mi)
    assert explorer.table.value.count("<tr>") == 2 and "conv3" in explorer.table.value
    assert "finished" in explorer.status_text
    assert not explorer.run_button.disabled and explorer.stop_button.disabled


def test_stop_mid_run_keeps_the_history_and_shows_stopped(explorer):
    explorer.estimator_options["patience"] = 100_000  # no early stop: only Stop ends it
    explorer.steps_input.value = 1_000_000
    explorer.reducer_dropdown.value = "pca"
    explorer.target_toggle.value = "label"
    explorer.run_button.click()
    arrived = _wait_until(lambda: any(len(t.x) >= 2 for t in _traces(explorer.figure, "heldout")), RUN_TIMEOUT)
    assert arrived, f"no held-out points arrived: {explorer.status_text}"
    explorer.stop_button.click()
    assert explorer.wait(RUN_TIMEOUT), "the run did not stop"
    assert explorer.last_error is None, explorer.status_text
    _, result = explorer.results[-1]
    assert result.flags["stopped"]
    assert 0 < result.history.last_step < 1_000_000 and len(result.history.heldout) >= 2
    assert math.isfinite(result.mi)
    assert explorer.status_text.startswith("stopped")
    assert "stopped" in explorer.table.value
    assert "(stopped)" in _traces(explorer.figure, "final")[-1].name
    assert any(name.startswith("H(Y)") for name in _shape_names(explorer.figure))  # label target


def test_gap_on_a_flat_layer_is_explained_in_the_app(explorer):
    explorer.layer_dropdown.value = "fc1"
    explorer.reducer_dropdown.value = "gap"
    assert "(N, C, H, W)" in explorer.status_text and "fc1" in explorer.status_text
    explorer.run_button.click()
    assert explorer.wait(RUN_TIMEOUT)
    assert isinstance(explorer.last_error, ValueError)
    assert "(N, C, H, W)" in explorer.status_text and "failed" in explorer.status_text
    assert "ValueError" in "".join(o.get("text", "") for o in explorer.log.outputs)
    assert not explorer.run_button.disabled and explorer.stop_button.disabled and not explorer.results


def test_a_missing_dataset_is_reported_in_the_app_and_digits_still_works(explorer, tmp_path, monkeypatch):
    monkeypatch.setenv("MITOOLKIT_DATA", str(tmp_path))  # no CIFAR files there
    explorer.dataset_dropdown.value = "cifar10"  # loads in the background
    assert explorer.wait(RUN_TIMEOUT)
    assert type(explorer.last_error).__name__ == "DatasetNotFoundError"
    assert "CIFAR-10 was not found" in explorer.status_text and not explorer.run_button.disabled
    explorer.dataset_dropdown.value = "digits"
    assert explorer.wait(RUN_TIMEOUT)
    assert explorer.status_text.startswith("ready") and "conv2" in [v for _, v in explorer.layer_dropdown.options]


def test_clear_empties_figure_and_table_but_keeps_results(explorer):
    explorer.steps_input.value = 40
    explorer.run_button.click()
    assert explorer.wait(RUN_TIMEOUT) and explorer.results
    explorer.clear()
    assert len(explorer.figure.data) == 0 and explorer.table.value == ""
    assert len(explorer.results) == 1


def test_a_second_click_while_running_starts_nothing(explorer):
    explorer.estimator_options["patience"] = 100_000
    explorer.steps_input.value = 1_000_000
    assert explorer.run()
    assert not explorer.run() and "busy" in explorer.status_text
    explorer.stop()
    assert explorer.wait(RUN_TIMEOUT)
    assert len(explorer.results) == 1


def test_a_run_uses_one_cpu_thread_and_restores_the_setting(explorer):
    torch.set_num_threads(2)
    try:
        explorer.steps_input.value = 20
        explorer.run_button.click()
        assert _wait_until(lambda: not explorer.busy or torch.get_num_threads() == 1, RUN_TIMEOUT)
        assert explorer.wait(RUN_TIMEOUT) and explorer.last_error is None
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_explorer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reducer must be one of"):
        MIExplorer(torch.nn.Linear(2, 2), reducer="tsne")
    with pytest.raises(ValueError, match="dataset must be one of"):
        MIExplorer(torch.nn.Linear(2, 2), dataset="mnist")
