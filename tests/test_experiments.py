"""compare_reducers on small settings: rows, summary, files on disk, resuming, interruptions, bad input."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import mitoolkit.experiments as experiments
from mitoolkit.callbacks import Callback
from mitoolkit.comparison import METHOD_LABELS, Comparison
from mitoolkit.data import DatasetNotFoundError, load_dataset, minor_transforms
from mitoolkit.experiments import compare_reducers, mi_pair
from mitoolkit.layers import collect_activations
from mitoolkit.models import ReferenceCNN

# Small settings: 300 images, batches of 64, 80 steps, 2 seeds (seconds, not minutes).
SMALL = dict(n_samples=300, seeds=2, max_steps=80, estimator_options={"batch_size": 64, "eval_every": 20},
             device="cpu", progress=False)


def small_model() -> ReferenceCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ReferenceCNN(1, 10, 8).eval()  # untrained is enough to exercise the pipeline


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = compare_reducers(["conv2", "fc1"], model=model, out=out, **SMALL)
    return comparison, out, caught


# ----------------------------------------------------------------------------- the pair


def test_mi_pair_gives_the_untransformed_image_or_the_one_hot_label(model):
    data = load_dataset("digits").subset(range(40))
    acts = collect_activations(model, data, ["conv2"], transform=minor_transforms(), device="cpu", seed=3)
    x, y = mi_pair(acts, "conv2", target="input", dataset=data)
    assert x.shape == (40, 64) and torch.equal(x, data.images[acts.indices].reshape(40, -1))
    assert not torch.equal(acts.inputs, data.images[acts.indices])  # the model saw transformed copies
    assert y is acts["conv2"] and y.shape == (40, 32, 4, 4)
    x, _ = mi_pair(acts, "conv2", target="label", dataset=data)
    assert x.shape == (40, 10) and torch.equal(x.argmax(1), data.labels[acts.indices])
    assert torch.equal(x.sum(1), torch.ones(40))
    with pytest.raises(ValueError, match="target must be one of 'input', 'label'"):
        mi_pair(acts, "conv2", target="output", dataset=data)


# ----------------------------------------------------------------------------- rows and summary


def test_one_row_per_layer_method_seed_and_gap_cnn_skipped_on_a_flat_layer(run):
    comparison, _, caught = run
    keys = {(r.layer, r.method, r.seed) for r in comparison.rows}
    expected = {("conv2", m, s) for m in ("none", "pca", "cnn", "gap") for s in (0, 1)}
    expected |= {("fc1", m, s) for m in ("none", "pca") for s in (0, 1)}
    assert keys == expected and len(comparison.rows) == len(expected) and comparison.complete
    assert {(s["layer"], s["method"]) for s in comparison.skipped} == {("fc1", "gap"), ("fc1", "cnn")}
    assert any("skipping GAP-MINE on layer 'fc1'" in str(w.message) for w in caught)
    for row in comparison.rows:
        assert math.isfinite(row.mi) and row.ci95[0] <= row.mi <= row.ci95[1]
        assert row.seconds > 0 and len(row.history.eval_step) > 0
    pca = next(r for r in comparison.rows if r.method == "pca")
    assert pca.result.options["reducer_y"]["n_components"] == 32
    gap = next(r for r in comparison.rows if r.method == "gap" and r.layer == "conv2")
    assert gap.result.options["reducer_y"]["output_dim"] == 32  # (32, 4, 4) pooled to 32 channels
    assert gap.result.options["reducer_x"]["output_dim"] == 64  # the image, flattened, for every method


def test_summary_is_the_mean_and_std_of_the_rows(run):
    comparison, _, _ = run
    summary = comparison.summary
    assert [(s.layer, s.method) for s in summary] == [
        ("conv2", "none"), ("conv2", "pca"), ("conv2", "cnn"), ("conv2", "gap"), ("fc1", "none"), ("fc1", "pca")]
    for s in summary:
        rows = comparison.rows_for(s.layer, s.method)
        values = np.array([r.mi for r in rows])
        assert s.n_seeds == 2
        assert s.mean == pytest.approx(values.mean(), abs=1e-12)
        assert s.std == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert s.mean_seconds == pytest.approx(np.mean([r.seconds for r in rows]))
        assert s.ceiling == pytest.approx(math.log(300))  # ln N for target="input"
        assert s.ceiling_heldout == pytest.approx(math.log(rows[0].result.n_test))
        assert s.label == METHOD_LABELS[s.method]
    table = comparison.summary_table()
    assert "GAP-MINE" in table and f"{summary[0].mean:.3f} ± {summary[0].std:.3f}" in table


def test_json_csv_round_trip(run):
    comparison, out, _ = run
    loaded = Comparison.load(out)
    assert json.dumps(loaded.to_dict()) == json.dumps(comparison.to_dict())
    assert [s.to_dict() for s in loaded.summary] == [s.to_dict() for s in comparison.summary]
    assert loaded.rows[0].history == comparison.rows[0].history
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + len(comparison.rows)
    assert lines[0].startswith("layer,method,label,seed,mi_nats")
    first = lines[1].split(",")
    assert float(first[4]) == comparison.rows[0].mi
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + len(comparison.summary)
    assert len(list((out / "rows").glob("*.json"))) == len(comparison.rows)
    assert not list(out.glob(".*tmp"))  # no temporary file left behind


def test_html_report_is_self_contained_with_one_trace_per_method(run):
    pytest.importorskip("plotly")
    from mitoolkit.report import convergence_figure, estimates_figure, seconds_figure

    comparison, out, _ = run
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script src=" not in page  # plotly.js embedded
    assert page.count('class="plotly-graph-div"') == 4  # convergence x2 layers, estimates, seconds
    fig = convergence_figure(comparison, "conv2")
    lines = [t.name for t in fig.data if not t.name.endswith(" band")]
    assert lines == ["baseline", "PCA-MINE", "CNN-MINE", "GAP-MINE"]
    assert any(abs(shape.y0 - math.log(300)) < 1e-9 for shape in fig.layout.shapes)  # the ceiling
    assert [t.name for t in estimates_figure(comparison).data] == lines
    assert [t.name for t in seconds_figure(comparison).data] == lines
    assert len(estimates_figure(comparison).data[0].y) == 4  # 2 layers x 2 seeds for the baseline


# ----------------------------------------------------------------------------- resuming


@pytest.mark.filterwarnings("ignore:skipping")
def test_a_rerun_with_the_same_arguments_reuses_the_rows_and_gives_the_same_numbers(run, model, monkeypatch, tmp_path):
    comparison, out, _ = run
    # Same folder: nothing is recomputed.
    def no_estimate(*args, **kwargs):
        raise AssertionError("recomputed a row that is on disk")

    with monkeypatch.context() as patch:
        patch.setattr(experiments, "estimate_mi", no_estimate)
        again = compare_reducers(["conv2", "fc1"], model=model, out=out, **SMALL)
    assert json.dumps(again.to_dict()) == json.dumps(comparison.to_dict())
    # A fresh folder, one of the rows: the same number, computed again.
    fresh = compare_reducers("conv2", model=model, out=tmp_path, methods="gap", report=False,
                             **{**SMALL, "seeds": [1]})
    row = comparison.rows_for("conv2", "gap")[1]
    assert fresh.rows[0].mi == row.mi and fresh.rows[0].history.heldout == row.history.heldout


def test_rows_from_other_arguments_are_refused_before_any_work(run, model, monkeypatch):
    _, out, _ = run
    monkeypatch.setattr(experiments, "collect_activations", lambda *a, **k: pytest.fail("worked"))
    with pytest.raises(ValueError, match=r"rows computed with other arguments.*max_steps \(was 80, now 90\)"):
        compare_reducers("conv2", model=model, out=out, **{**SMALL, "max_steps": 90})


class InterruptAtRow(Callback):
    """Raises ``error`` at the first step of the ``row``-th estimate (counting from 1)."""

    def __init__(self, row: int, error: type[BaseException]) -> None:
        self.row, self.error, self.started = row, error, 0

    def on_start(self, info):
        self.started += 1

    def on_step(self, step, train_bound):
        if self.started == self.row and step == 5:
            raise self.error("stop here")


@pytest.mark.filterwarnings("ignore:MINE run interrupted")
def test_an_interrupted_run_keeps_its_finished_rows_on_disk_and_resumes(model, tmp_path):
    settings = dict(model=model, out=tmp_path, methods="gap,pca", report=False, **SMALL)
    with pytest.warns(RuntimeWarning, match="interrupted after 2 of 4 rows"):
        partial = compare_reducers("conv2", callbacks=[InterruptAtRow(3, KeyboardInterrupt)], **settings)
    assert not partial.complete and len(partial.rows) == 2
    on_disk = Comparison.load(tmp_path)
    assert not on_disk.complete and [r.key for r in on_disk.rows] == [r.key for r in partial.rows]
    assert len(list((tmp_path / "rows").glob("*.json"))) == 2
    computed = []
    resumed = compare_reducers("conv2", on_row=computed.append, **settings)
    assert resumed.complete and len(resumed.rows) == 4 and len(computed) == 2
    assert resumed.rows[:2] == partial.rows  # the finished rows are reused as they were


def test_a_failing_row_leaves_the_finished_rows_readable(model, tmp_path):
    with pytest.raises(RuntimeError, match="stop here"):
        compare_reducers("conv2", model=model, out=tmp_path, methods="gap", report=False,
                         callbacks=[InterruptAtRow(2, RuntimeError)], **SMALL)
    on_disk = Comparison.load(tmp_path)
    assert len(on_disk.rows) == 1 and not on_disk.complete
    assert on_disk.rows[0].key == ("conv2", "gap", 0)


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset_layer_method_and_target_list_the_valid_ones(model):
    with pytest.raises(ValueError, match="dataset must be one of 'digits', 'cifar10', 'cifar100'"):
        compare_reducers("conv2", model=model, dataset="mnist")
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*valid layers.*conv2 \(32x4x4\)"):
        compare_reducers("conv9", model=model)
    with pytest.raises(ValueError, match=r"unknown method 'umap'.*none \(baseline\), pca \(PCA-MINE\)"):
        compare_reducers("conv2", model=model, methods=["pca", "umap"])
    with pytest.raises(ValueError, match="target must be one of 'input', 'label'"):
        compare_reducers("conv2", model=model, target="output")
    with pytest.raises(ValueError, match="estimator_options cannot set seed"):
        compare_reducers("conv2", model=model, estimator_options={"seed": 3})


def test_missing_cifar_names_the_archive_and_the_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"'cifar-100-python.tar.gz'.*in the folder {tmp_path}"):
        compare_reducers("conv2", dataset="cifar100", data_root=tmp_path)


def test_an_unwritable_out_folder_is_reported_before_any_work(model, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(experiments, "load_dataset", lambda *a, **k: pytest.fail("worked"))
    with pytest.raises(ValueError, match="out=.*a-file/results' cannot be written"):
        compare_reducers("conv2", model=model, out=blocker / "results")


def test_label_target_uses_ln_k_as_ceiling(model):
    comparison = compare_reducers("conv3", model=model, target="label", methods="gap",
                                  **{**SMALL, "seeds": 1})
    assert comparison.ceiling == pytest.approx(math.log(10))
    assert comparison.rows[0].result.options["reducer_x"]["input_shape"] == [10]  # the one-hot label
    assert "ln K" in comparison.summary_table()


def test_the_papers_three_findings_are_checked_from_the_summary():
    from mitoolkit.comparison import MethodSummary, check_findings

    def summary(method, mean, std, seconds):
        return MethodSummary("conv2", method, 5, mean, std, seconds, 8.5, 7.1)

    paper_like = [summary("none", 3.0, 0.50, 10.0), summary("pca", 2.8, 0.10, 4.0),
                  summary("cnn", 3.1, 0.30, 40.0), summary("gap", 2.2, 0.12, 3.0)]
    assert [f.holds for f in check_findings(paper_like)] == [True, True, True]
    unlike = [summary("none", 3.0, 0.20, 10.0), summary("pca", 2.8, 0.10, 4.0),
              summary("cnn", 3.1, 0.05, 40.0), summary("gap", 3.5, 0.30, 3.0)]
    stable, pca_gap, gap_lower = check_findings(unlike)
    assert not stable.holds and "not for GAP-MINE" in stable.detail
    assert not pca_gap.holds
    assert "more stable: PCA-MINE no, GAP-MINE no (std PCA-MINE 0.100, GAP-MINE 0.300, CNN-MINE 0.050)" in pca_gap.detail
    assert "faster: PCA-MINE yes, GAP-MINE yes" in pca_gap.detail
    assert not gap_lower.holds and str(gap_lower).startswith("GAP gives lower estimates than the others: does not hold")
    assert [f.holds for f in check_findings(paper_like[1:])] == [None, True, True]


def test_more_samples_than_the_split_holds_uses_all_with_a_warning(model, monkeypatch):
    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(experiments, "collect_activations", stop)
    with pytest.warns(UserWarning, match=r"n_samples=5000 exceeds the 1437 images of digits\[train\]: using all 1437"):
        with pytest.raises(Reached):
            compare_reducers("conv2", model=model, n_samples=5000, progress=False)
