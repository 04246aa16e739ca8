"""information_plane on small settings: rows per (epoch, layer, quantity, seed), ceilings and their
flag, a checkpoint per epoch and resuming without retraining, the DPI check, figures, the command."""
from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch

import mitoolkit.plane as plane_module
from mitoolkit.cli import main
from mitoolkit.data import load_dataset
from mitoolkit.experiments import information_plane as reexported
from mitoolkit.models import ReferenceCNN, train_reference_model
from mitoolkit.plane import (
    QUANTITIES,
    InformationPlane,
    PlaneRow,
    information_plane,
    plane_figure,
    summarize_rows,
    write_plane_report,
)
from mitoolkit.results import History, MIResult

# Small settings: 300 images, batches of 64, 40 steps (seconds, not minutes).
SMALL = dict(n_samples=300, max_steps=40, estimator_options={"batch_size": 64, "eval_every": 20},
             device="cpu", progress=False)
FLAGS = {"still_rising": False, "early_stopped": True, "above_log_n": False, "stopped": False,
         "non_finite": False}


@pytest.fixture(autouse=True, scope="module")
def private_cache_and_one_blas_thread(tmp_path_factory):
    from threadpoolctl import threadpool_limits

    # One BLAS thread under scikit-learn's PCA: several on shared cores made each fit ~1 s.
    with pytest.MonkeyPatch.context() as mp, threadpool_limits(1):
        mp.setenv("MITOOLKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def fake_result(mi: float, n: int = 300) -> MIResult:
    return MIResult(mi=mi, stderr=0.05, ci95=(mi - 0.1, mi + 0.1),
                    history=History(step=(1,), train_bound=(mi,), eval_step=(1,), heldout=(mi,)),
                    flags=dict(FLAGS), n_train=n // 2, n_valid=n // 4, n_test=n // 4, seconds=0.0)


class FakeEstimator:
    """Stands in for estimate_mi where the estimate itself is not under test: instant, counted."""

    def __init__(self, value=lambda x, seed: 0.5 + 0.01 * seed) -> None:
        self.calls = 0
        self.value = value

    def __call__(self, x, y, *, seed=0, **_kwargs) -> MIResult:
        self.calls += 1
        return fake_result(self.value(x, seed), len(x))

    def seeds(self, x, y, *, seeds, **kwargs) -> list[MIResult]:
        return [self(x, y, seed=s, **kwargs) for s in seeds]

    def install(self, monkeypatch) -> "FakeEstimator":
        monkeypatch.setattr(plane_module, "estimate_mi", self)
        monkeypatch.setattr(plane_module, "estimate_mi_seeds", self.seeds)
        return self


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plane")
    rows_seen = []
    plane = information_plane(["conv2", "fc1"], epochs=2, seeds=2, out=out, on_row=rows_seen.append,
                              **SMALL)
    return plane, out, rows_seen


# ----------------------------------------------------------------------------- rows and files


def test_a_row_for_every_epoch_layer_quantity_and_seed(run):
    plane, _, rows_seen = run
    expected = {(e, layer, q, s) for e in (0, 1, 2) for layer in ("conv2", "fc1")
                for q in ("ixt", "ity") for s in (0, 1)}
    assert {r.key for r in plane.rows} == expected and len(plane.rows) == len(expected)
    assert plane.complete and [r.key for r in rows_seen] == [r.key for r in plane.rows]
    for row in plane.rows:
        assert math.isfinite(row.mi) and row.ci95[0] <= row.mi <= row.ci95[1]
        assert row.ceiling == (math.log(300) if row.quantity == "ixt" else math.log(10))
        assert row.flags["above_ceiling"] == (row.mi > row.ceiling)
        assert row.reducer == "pca" and row.result.options["reducer_y"]["name"] == "pca"
        assert row.result.options["seed"] == row.seed  # the seeds' critics are trained together
    summary = plane.summary
    assert {(s.epoch, s.layer, s.quantity) for s in summary} == {k[:3] for k in expected}
    s = plane.summary_for(1, "conv2", "ixt")
    values = [r.mi for r in plane.rows if (r.epoch, r.layer, r.quantity) == (1, "conv2", "ixt")]
    assert s.n_seeds == 2 and s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1)) and s.low <= min(values) <= max(values) <= s.high
    assert [h["epoch"] for h in plane.training] == [0, 1, 2]
    assert plane.training[-1]["test_accuracy"] > 0.8 > plane.training[0]["test_accuracy"]
    assert plane.layers == ["conv2", "fc1"] and plane.epochs == [0, 1, 2]


def test_files_round_trip_and_a_checkpoint_per_epoch(run):
    plane, out, _ = run
    assert {"plane.json", "plane.csv", "plane_summary.csv", "plane.html", "config.json"} <= {
        p.name for p in out.iterdir()}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch-0000.pt", "epoch-0001.pt", "epoch-0002.pt"]
    checkpoint = torch.load(out / "checkpoints" / "epoch-0001.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and {"model", "optimizer", "scheduler", "rng", "history"} <= set(checkpoint)
    assert len(list((out / "rows").glob("*.json"))) == len(plane.rows)
    again = InformationPlane.load(out)
    assert again.to_dict() == json.loads(json.dumps(plane.to_dict()))
    lines = (out / "plane.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,layer,quantity,label,seed,reducer,mi_nats") and len(lines) == 25
    assert len((out / "plane_summary.csv").read_text().splitlines()) == 13
    page = (out / "plane.html").read_text()
    assert "<script src=" not in page and "plotly" in page and "data-processing inequality" in page


def test_reexported_from_experiments():
    assert reexported is information_plane


# ----------------------------------------------------------------------------- ceilings


def test_an_estimate_above_ln_k_is_never_reported_without_a_flag(tmp_path, monkeypatch):
    # I(T; Y) estimates of 3 nats, above ln 10 = 2.30: the rows, summary, table and files say so.
    fake = FakeEstimator(lambda x, seed: 3.0 if x.shape[1] == 10 else 1.0)
    fake.install(monkeypatch)
    plane = information_plane("fc1", epochs=1, epochs_to_measure=[1], seeds=1, out=tmp_path, **SMALL)
    ity = [r for r in plane.rows if r.quantity == "ity"]
    assert ity and all(r.mi == 3.0 and r.flags["above_ceiling"] for r in ity)
    assert not any(r.flags["above_ceiling"] for r in plane.rows if r.quantity == "ixt")
    summary = plane.summary_for(1, "fc1", "ity")
    assert summary.above_ceiling and summary.n_flagged["above_ceiling"] == 1
    table_line = next(line for line in plane.summary_table().splitlines() if line.startswith("1 "))
    assert "3.000" in table_line and "!" in table_line and "above_ceiling" in table_line
    assert "above_ceiling" in (tmp_path / "plane.csv").read_text()
    stored = json.loads((tmp_path / "plane.json").read_text())
    assert any(r["above_ceiling"] and r["quantity"] == "ity" for r in stored["rows"])
    assert "Above the ceiling" in (tmp_path / "plane.html").read_text()


def test_summary_flags_a_mean_above_the_ceiling_and_intervals_span_the_seeds():
    rows = [PlaneRow(0, "a", "ity", s, fake_result(v), math.log(10)) for s, v in enumerate((2.2, 2.5))]
    (s,) = summarize_rows(rows)
    assert s.above_ceiling and s.n_flagged == {"early_stopped": 2, "above_ceiling": 1}
    assert (s.low, s.high) == pytest.approx((2.1, 2.6)) and s.mean == pytest.approx(2.35)


# ----------------------------------------------------------------------------- resuming


def test_an_interrupted_run_resumes_without_retraining_finished_epochs(tmp_path, monkeypatch):
    data = load_dataset("digits").subset(range(200))
    FakeEstimator().install(monkeypatch)
    calls = []

    def make(crash_at=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            model = ReferenceCNN(1, 10, 8, width=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def train_fn(model, epoch):
            calls.append(epoch)
            if epoch == crash_at:
                raise KeyboardInterrupt
            order = torch.randperm(len(data))  # the training's own random stream
            jitter = float(np.random.rand())  # numpy's too
            for idx in order.split(50):
                loss = torch.nn.functional.cross_entropy(model(data.images[idx] + 0.01 * jitter),
                                                         data.labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return {"train_loss": float(loss.detach())}

        return model, optimizer, train_fn

    settings = dict(dataset=data, epochs=3, epochs_to_measure=[0, 2, 3], seeds=1, **{**SMALL, "n_samples": 100})
    model, optimizer, train_fn = make(crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        information_plane("conv2", model=model, train_fn=train_fn, optimizer=optimizer, out=tmp_path, **settings)
    assert calls == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0000.pt", "epoch-0001.pt", "epoch-0002.pt"]
    assert len(list((tmp_path / "rows").glob("*.json"))) == 4  # epochs 0 and 2, two quantities
    interrupted = InformationPlane.load(tmp_path)
    assert not interrupted.complete and len(interrupted.rows) == 4

    calls.clear()
    estimator = FakeEstimator()
    estimator.install(monkeypatch)
    model, optimizer, train_fn = make()
    resumed = information_plane("conv2", model=model, train_fn=train_fn, optimizer=optimizer,
                                out=tmp_path, **settings)
    assert calls == [3] and estimator.calls == 2  # only epoch 3 trained, only its two rows estimated
    assert resumed.complete and len(resumed.rows) == 6
    assert [h["epoch"] for h in resumed.training] == [1, 2, 3]

    # The resumed run trained exactly as an uninterrupted one (optimizer and random streams restored).
    calls.clear()
    fresh, fresh_optimizer, fresh_train = make()
    information_plane("conv2", model=fresh, train_fn=fresh_train, optimizer=fresh_optimizer,
                      out=tmp_path / "uninterrupted", **settings)
    assert calls == [1, 2, 3]
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name

    # Everything done: nothing trained, nothing estimated; the model ends with the last weights.
    calls.clear()
    estimator.calls = 0
    again, again_optimizer, again_train = make()
    information_plane("conv2", model=again, train_fn=again_train, optimizer=again_optimizer,
                      out=tmp_path, **settings)
    assert calls == [] and estimator.calls == 0
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fresh.state_dict().values()))


def test_reference_training_resumes_from_checkpoints_and_is_the_reference_network(tmp_path, monkeypatch):
    FakeEstimator().install(monkeypatch)
    epochs_trained = []
    real_train_epoch = plane_module.train_epoch

    def counting(*args, **kwargs):
        epochs_trained.append(1)
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(plane_module, "train_epoch", counting)
    settings = dict(epochs=2, epochs_to_measure=[0, 2], seeds=1, report=False, **SMALL)
    first = information_plane("fc1", out=tmp_path, **settings)
    assert len(epochs_trained) == 2
    # The epoch-2 network is train_reference_model's 2-epoch network, bit for bit.
    reference = train_reference_model("digits", epochs=2, device="cpu", progress=False,
                                      cache_dir=tmp_path / "models")
    saved = torch.load(tmp_path / "checkpoints" / "epoch-0002.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in reference.state_dict().items())
    assert first.training[-1]["test_accuracy"] == reference.metadata["test_accuracy"]

    epochs_trained.clear()
    information_plane("fc1", out=tmp_path, **settings)
    assert epochs_trained == []
    # Other estimator settings: the rows are stale (an error naming the argument), the
    # checkpoints are not; with overwrite the rows are recomputed and no epoch is retrained.
    with pytest.raises(ValueError, match=r"rows computed with other arguments.*max_steps \(was 40, now 30\)"):
        information_plane("fc1", out=tmp_path, **{**settings, "max_steps": 30})
    information_plane("fc1", out=tmp_path, overwrite=True, **{**settings, "max_steps": 30})
    assert epochs_trained == []
    # Another training (seed): the checkpoints are stale too.
    with pytest.raises(ValueError, match="checkpoints trained with other arguments"):
        information_plane("fc1", out=tmp_path, train_seed=1, **{**settings, "max_steps": 30})


def test_stop_event_keeps_finished_rows_and_the_same_call_completes(tmp_path, monkeypatch):
    FakeEstimator().install(monkeypatch)
    stop = threading.Event()

    def on_row(row):
        if row.epoch == 1:
            stop.set()

    settings = dict(epochs=2, seeds=1, report=False, **SMALL)
    with pytest.warns(RuntimeWarning, match="interrupted after 3 of 6 estimates.*resume"):
        partial = information_plane("fc1", out=tmp_path, stop_event=stop, on_row=on_row, **settings)
    assert not partial.complete and len(partial.rows) == 3 and "incomplete" in partial.summary_table()
    done = information_plane("fc1", out=tmp_path, **settings)
    assert done.complete and len(done.rows) == 6


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers="conv9"), r"unknown layer 'conv9' for ReferenceCNN; valid layers .*conv2 \(32x4x4\)"),
    (dict(reducer="umap"), r"reducer must be one of pca .*received 'umap'"),
    (dict(dataset="mnist"), r"dataset must be one of 'digits', 'cifar10', 'cifar100'.*'mnist'"),
    (dict(epochs_to_measure=[0, 5]), r"epochs_to_measure holds \[5\], outside 0..2"),
    (dict(epochs_to_measure=[]), r"epochs_to_measure must be a non-empty list"),
    (dict(seeds=0), r"seeds must be a positive number"),
    (dict(model=torch.nn.Linear(2, 2)), r"needs train_fn=callable\(model, epoch\)"),
    (dict(train_fn=lambda m, e: None), r"train_fn, optimizer and scheduler go with your own model"),
    (dict(model="net.pt"), r"model must be 'reference' or a torch.nn.Module"),
    (dict(estimator_options={"seed": 3}), r"estimator_options cannot set seed"),
])
def test_bad_input_is_reported_before_any_work(kwargs, message, monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(plane_module, "estimate_mi", fail)
    monkeypatch.setattr(plane_module, "estimate_mi_seeds", fail)
    monkeypatch.setattr(plane_module, "train_epoch", fail)
    args = {"layers": "conv2", "epochs": 2, **SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        information_plane(args.pop("layers"), **args)


def test_an_unwritable_out_is_reported_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"out=.*cannot be written.*nothing was computed"):
        information_plane("conv2", epochs=1, out=blocker / "sub", **SMALL)


def test_gap_on_a_flat_layer_flattens_it_with_a_warning(monkeypatch):
    FakeEstimator().install(monkeypatch)
    with pytest.warns(UserWarning, match="layer 'fc1' gives \\(64,\\): its activation is flattened"):
        plane = information_plane(["conv2", "fc1"], reducer="gap", epochs=1, epochs_to_measure=[1],
                                  seeds=1, **SMALL)
    assert {r.layer: r.reducer for r in plane.rows} == {"conv2": "gap", "fc1": "none"}
    assert plane.config["reducers"] == {"conv2": "gap", "fc1": "none"}


# ----------------------------------------------------------------------------- DPI, figures


def _plane_of(values: dict[tuple[int, str, str], tuple[float, float]]) -> InformationPlane:
    """A plane whose rows have the given (mean, half-width) per (epoch, layer, quantity)."""
    rows = []
    for (epoch, layer, quantity), (mi, half) in values.items():
        result = MIResult(mi, half / 1.96, (mi - half, mi + half), History(), dict(FLAGS), 50, 25, 25, 0.1)
        rows.append(PlaneRow(epoch, layer, quantity, 0, result, math.log(100 if quantity == "ixt" else 10)))
    config = {"layer_order": ["a", "b", "c"], "ceiling_ixt": math.log(100), "ceiling_ity": math.log(10),
              "epochs": 3, "epochs_to_measure": [0, 3], "seeds": [0], "layers": ["a", "b", "c"]}
    return InformationPlane(config=config, rows=tuple(rows))


def test_dpi_check_flags_only_a_rise_beyond_the_error_bars():
    values = {(0, "a", "ixt"): (2.0, 0.2), (0, "b", "ixt"): (2.1, 0.2), (0, "c", "ixt"): (1.0, 0.1),
              (3, "a", "ixt"): (1.0, 0.1), (3, "b", "ixt"): (1.5, 0.1), (3, "c", "ixt"): (1.4, 0.3)}
    values.update({(e, layer, "ity"): (0.5, 0.1) for e, layer, _ in list(values)})
    checks = _plane_of(values).check_dpi()
    verdicts = [(c.epoch, c.upstream.layer, c.downstream.layer, c.rises, c.holds) for c in checks]
    assert verdicts == [(0, "a", "b", True, True), (0, "b", "c", False, True),
                        (3, "a", "b", True, False), (3, "b", "c", False, True)]
    assert "rises beyond the error bars" in str(checks[2]) and "falls" in str(checks[1])
    assert str(checks[0]).startswith("epoch 0: I(X; T) a 2.000") and checks[0].quantity == "ixt"
    assert [c.holds for c in _plane_of(values).check_dpi("ity")] == [True] * 4
    with pytest.raises(ValueError, match="quantity must be one of 'ixt', 'ity'"):
        _plane_of(values).check_dpi("ixy")


def test_plane_figure_draws_a_path_per_layer_coloured_by_epoch_with_the_ceilings(tmp_path):
    values = {(e, layer, q): (v + 0.1 * e, 0.1) for e in (0, 3) for layer, v in (("a", 2.0), ("b", 1.0))
              for q in QUANTITIES}
    plane = _plane_of(values)
    fig = plane_figure(plane)
    paths = {t.name: t for t in fig.data if t.meta.startswith("plane-layer-")}
    assert set(paths) == {"a", "b", "c"} and len(paths["c"].x) == 0  # c has no rows yet
    assert list(paths["a"].x) == pytest.approx([2.0, 2.3]) and list(paths["b"].y) == pytest.approx([1.0, 1.3])
    assert list(paths["a"].marker.color) == [0, 3] and paths["a"].marker.cmax == 3
    assert list(paths["a"].error_x.array) == pytest.approx([0.1, 0.1])
    ceilings = {t.meta: t for t in fig.data if t.meta.startswith("plane-ceiling")}
    assert list(ceilings["plane-ceiling-ixt"].x) == pytest.approx([math.log(100)] * 2)
    assert list(ceilings["plane-ceiling-ity"].y) == pytest.approx([math.log(10)] * 2)
    assert "ln N = 4.61" in ceilings["plane-ceiling-ixt"].name
    path = write_plane_report(plane, tmp_path / "p.html")
    assert path.read_text().count("<script src=") == 0


def test_live_plane_updates_its_figure_row_by_row():
    widgets = pytest.importorskip("mitoolkit.widgets")
    values = {(e, "a", q): (1.0 + e, 0.1) for e in (0, 1, 2) for q in QUANTITIES}
    rows = _plane_of(values).rows
    live = widgets.LivePlane(layers=["a"], epochs=2)
    for row in rows[:3]:  # epochs 0 (both quantities) and 1 (I(X; T) only)
        live(row)
    path = next(t for t in live.figure.data if t.meta == "plane-layer-a")
    assert list(path.x) == [1.0]
    for row in rows[3:]:
        live(row)
    assert list(path.x) == [1.0, 2.0, 3.0] and len(live.rows) == 6


# ----------------------------------------------------------------------------- the command


def test_cli_plane_writes_files_prints_the_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["plane", "--layer", "conv3", "--layer", "fc1", "--epochs", "1", "--measure-epochs", "0,1",
            "--seeds", "1", "--n-samples", "300", "--max-steps", "40", "--batch-size", "64",
            "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert {"plane.json", "plane.csv", "plane_summary.csv", "plane.html"} <= {p.name for p in out.iterdir()}
    plane = InformationPlane.load(out)
    assert len(plane.rows) == 8 and plane.complete
    assert "I(X; T) mean ± std [interval]" in printed and "does I(X; T) fall with depth?" in printed
    assert "does I(T; Y) fall with depth?" in printed
    assert main(argv) == 0  # everything on disk: the same table, nothing recomputed
    assert capsys.readouterr().out == printed
    assert main(["plane", "--layer", "conv9", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "unknown layer 'conv9'" in capsys.readouterr().err
