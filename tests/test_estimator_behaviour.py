"""How estimate_mi runs: splits, seeds, stopping, flags, callbacks, devices."""
import json
import math
import threading

import numpy as np
import pytest
import torch

from mitoolkit import Callback, MIResult, StopAfter, estimate_mi, synthetic
from mitoolkit.mine import split_indices
from mitoolkit.reducers import Flatten

FAST = dict(progress=False, max_steps=200, eval_every=25, batch_size=64)


@pytest.fixture(scope="module")
def gaussian():
    x, y, true_mi = synthetic.correlated_gaussian(1000, d=2, rho=0.8, seed=1)
    return x, y, true_mi


def test_split_is_disjoint_and_complete():
    split = split_indices(1000, test_fraction=0.5, valid_fraction=0.5, batch_size=64, seed=4)
    parts = [set(split[name].tolist()) for name in ("train", "valid", "test")]
    assert [len(p) for p in parts] == [500, 250, 250]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(range(1000))


class RecordingFlatten(Flatten):
    """A flatten reducer that remembers the rows it was fitted on (column 0 holds the row id)."""

    def fit(self, x):
        self.fitted_rows = set(x[:, 0].long().tolist())
        return super().fit(x)


def test_fit_sees_training_rows_only(gaussian):
    x, y, _ = gaussian
    ids = np.arange(len(x), dtype=np.float32)[:, None]
    recorder = RecordingFlatten()
    estimate_mi(np.hstack([ids, x]), y, reducer_x=recorder, seed=2, **FAST)
    split = split_indices(len(x), batch_size=64, seed=2)
    assert recorder.fitted_rows == set(split["train"].tolist())


def test_reported_value_comes_from_held_out_samples():
    """Train rows are strongly dependent, held-out rows independent: the report must be ~0."""
    n, seed = 2000, 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1)).astype(np.float32)
    y = rng.standard_normal((n, 1)).astype(np.float32)
    train = split_indices(n, batch_size=64, seed=seed)["train"].numpy()
    y[train] = x[train] + 0.1 * y[train]
    result = estimate_mi(x, y, seed=seed, **{**FAST, "max_steps": 400})
    assert max(result.history.train_bound) > 1.0  # the critic did learn the train dependence
    assert result.mi < 0.05, str(result)


def test_same_seed_same_result_different_seed_different_history(gaussian):
    x, y, _ = gaussian
    first = estimate_mi(x, y, seed=7, **FAST)
    again = estimate_mi(x, y, seed=7, **FAST)
    other = estimate_mi(x, y, seed=8, **FAST)
    assert first.mi == again.mi
    assert first.history == again.history
    assert first.history.train_bound != other.history.train_bound


def test_seed_leaves_global_random_state_alone(gaussian):
    x, y, _ = gaussian
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    estimate_mi(x, y, seed=1, **FAST)
    assert torch.equal(torch.rand(3), expected)


def test_stop_request_from_callback_at_step_50(gaussian):
    x, y, _ = gaussian
    result = estimate_mi(x, y, callbacks=[StopAfter(50)], seed=0, **FAST)
    assert result.history.last_step == 50
    assert len(result.history.train_bound) == 50
    assert result.flags["stopped"]
    assert math.isfinite(result.mi)


def test_stop_request_from_threading_event(gaussian):
    x, y, _ = gaussian
    event = threading.Event()

    class SetEventAt50(Callback):
        def on_eval(self, step, heldout):
            if step == 50:
                event.set()

    result = estimate_mi(x, y, callbacks=[SetEventAt50()], stop_event=event, seed=0, **FAST)
    assert result.history.last_step == 50
    assert result.flags["stopped"]


def test_keyboard_interrupt_keeps_history(gaussian):
    x, y, _ = gaussian

    class Interrupt(Callback):
        def on_step(self, step, train_bound):
            if step == 30:
                raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted at step 30"):
        result = estimate_mi(x, y, callbacks=[Interrupt()], seed=0, **FAST)
    assert result.history.last_step == 30
    assert result.flags["stopped"]


def test_callbacks_see_every_step_and_evaluation(gaussian):
    x, y, _ = gaussian

    class Recorder(Callback):
        def __init__(self):
            self.started, self.steps, self.evals, self.ended = None, [], [], None

        def on_start(self, info):
            self.started = info

        def on_step(self, step, train_bound):
            self.steps.append(step)

        def on_eval(self, step, heldout):
            self.evals.append((step, heldout))

        def on_end(self, result):
            self.ended = result

    recorder = Recorder()
    result = estimate_mi(x, y, callbacks=[recorder], seed=0, **FAST)
    assert recorder.started.n_test == result.n_test
    assert recorder.started.log_n == pytest.approx(math.log(result.n_test))
    assert recorder.steps == list(range(1, result.history.last_step + 1))
    assert [s for s, _ in recorder.evals] == list(result.history.eval_step)
    assert [v for _, v in recorder.evals] == list(result.history.heldout)
    assert recorder.ended is result


def test_early_stopping_on_independent_data():
    x, y, _ = synthetic.independent(1000, d=5)
    result = estimate_mi(x, y, seed=0, patience=3, **{**FAST, "max_steps": 2000})
    assert result.flags["early_stopped"]
    assert not result.flags["still_rising"]
    assert result.history.last_step < 2000


def test_still_rising_flag_when_budget_ends_early(gaussian):
    x, y, _ = gaussian
    result = estimate_mi(x, y, seed=0, **{**FAST, "max_steps": 50})
    assert result.history.last_step == 50
    assert result.flags["still_rising"]


def test_above_log_n_flag_for_nearly_deterministic_pair():
    """y = x + tiny noise has several nats of MI; 20 test samples can certify only ln 20 = 3.0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 1)).astype(np.float32)
    y = x + 1e-3 * rng.standard_normal((1000, 1)).astype(np.float32)
    result = estimate_mi(x, y, seed=0, lr=3e-3, test_fraction=0.04, **{**FAST, "max_steps": 1000})
    assert result.n_test == 20
    assert result.mi > math.log(20)
    assert result.flags["above_log_n"]


def test_non_finite_loss_stops_warns_and_keeps_history(gaussian):
    x, y, _ = gaussian
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = estimate_mi(x, y, bound="mine-f", lr=1e4, seed=0, **FAST)
    assert result.flags["non_finite"]
    assert 1 <= result.history.last_step < FAST["max_steps"]
    assert not math.isfinite(result.history.train_bound[-1])


def test_result_round_trips_through_json(gaussian):
    x, y, _ = gaussian
    result = estimate_mi(x, y, seed=0, **FAST)
    loaded = MIResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert loaded == result
    assert loaded.mi_bits == pytest.approx(result.mi / math.log(2))
    assert loaded.options["device"] == "cpu"


def test_accepts_tensors_and_image_shaped_input():
    x, y, _ = synthetic.correlated_gaussian(800, d=4, rho=0.8)
    result = estimate_mi(torch.from_numpy(x).reshape(800, 1, 2, 2), torch.from_numpy(y), seed=0,
                         **FAST)
    assert result.options["reducer_x"]["output_dim"] == 4
    assert math.isfinite(result.mi)


def test_auto_preprocess_gaussianizes_heavy_tails_only():
    x, y, _ = synthetic.cubic_gaussian(800, d=3, rho=0.8)
    result = estimate_mi(x, y, seed=0, **{**FAST, "max_steps": 25})
    assert result.options["reducer_x"]["gaussianized_features"] == 0
    assert result.options["reducer_y"]["gaussianized_features"] == 3


def test_device_auto_runs_on_the_available_device(gaussian):
    x, y, _ = gaussian
    result = estimate_mi(x, y, device="auto", seed=0, **{**FAST, "max_steps": 25})
    assert result.options["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
