"""The `mitoolkit` command: layers, compare (files, table, exit codes) and its messages on bad input."""
from __future__ import annotations

import json

import pytest
import torch

import mitoolkit.experiments as experiments
from mitoolkit.cli import main
from mitoolkit.comparison import Comparison
from mitoolkit.models import ReferenceCNN

SMALL = ["--n-samples", "300", "--seeds", "2", "--max-steps", "60", "--batch-size", "64",
         "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ReferenceCNN(1, 10, 8)
    path = tmp_path_factory.mktemp("model") / "digits-cnn.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MITOOLKIT_CACHE", str(cache))
    return cache


def test_layers_lists_names_with_shapes(capsys, empty_cache):
    assert main(["layers", "--dataset", "digits"]) == 0
    out = capsys.readouterr().out
    assert "conv2       ConvBlock    32x4x4" in out and "fc1         DenseBlock   64" in out
    assert not empty_cache.exists()  # listing needs no training


def test_compare_writes_results_and_report_and_prints_the_summary(tmp_path, model_file, capsys):
    out = tmp_path / "run"
    code = main(["compare", "--model", str(model_file), "--layer", "conv2", "--methods", "gap,pca",
                 "--out", str(out), *SMALL])
    printed = capsys.readouterr().out
    assert code == 0
    assert {"results.json", "results.csv", "summary.csv", "report.html"} <= {p.name for p in out.iterdir()}
    comparison = Comparison.load(out / "results.json")
    assert len(comparison.rows) == 4 and comparison.complete
    assert comparison.config["model"] == {"kind": "file", "class": "ReferenceCNN", "path": str(model_file)}
    for s in comparison.summary:
        assert f"{s.label}  2      {s.mean:.3f} ± {s.std:.3f}" in printed
    assert "ln N" in printed and str(out / "report.html") in printed
    # The same command again: every row is on disk, nothing is recomputed, the same table.
    assert main(["compare", "--model", str(model_file), "--layer", "conv2", "--methods", "gap,pca",
                 "--out", str(out), *SMALL]) == 0
    assert capsys.readouterr().out == printed


def test_compare_with_the_reference_model_trains_it_once(tmp_path, empty_cache, capsys):
    out = tmp_path / "ref"
    assert main(["compare", "--layer", "conv3", "--methods", "gap", "--out", str(out), "--no-report",
                 *SMALL, "--seeds", "1"]) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["model"]["kind"] == "reference" and config["model"]["test_accuracy"] > 0.9
    assert len(list(empty_cache.glob("digits-*.pt"))) == 1
    assert not (out / "report.html").exists()


def test_compare_vectorize_seeds_trains_each_methods_seeds_in_one_pass(tmp_path, model_file,
                                                                       monkeypatch, capsys):
    from mitoolkit import experiments

    passes = []
    real = experiments.estimate_mi_seeds

    def counting(x, y, *, seeds, **options):
        passes.append(list(seeds))
        return real(x, y, seeds=seeds, **options)

    monkeypatch.setattr(experiments, "estimate_mi_seeds", counting)
    out = tmp_path / "vec"
    assert main(["compare", "--model", str(model_file), "--layer", "conv2", "--methods", "gap,pca",
                 "--out", str(out), "--no-report", "--vectorize-seeds", *SMALL]) == 0
    assert passes == [[0, 1], [0, 1]]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == [("gap", 0), ("gap", 1),
                                                              ("pca", 0), ("pca", 1)]


def test_bad_method_layer_and_dataset_list_the_valid_ones(tmp_path, model_file, capsys):
    base = ["compare", "--model", str(model_file), "--out", str(tmp_path / "o")]
    assert main([*base, "--layer", "conv2", "--methods", "pca,tsne"]) == 2
    assert "unknown method 'tsne'" in capsys.readouterr().err
    assert main([*base, "--layer", "conv2.cnv"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'conv2.cnv'" in err and "conv2.conv (32x8x8)" in err and "fc1 (64)" in err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--layer", "conv2", "--dataset", "mnist"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'mnist' (choose from 'digits', 'cifar10', 'cifar100')" in capsys.readouterr().err


def test_missing_cifar_says_which_archive_to_place_where(tmp_path, capsys, empty_cache):
    code = main(["compare", "--dataset", "cifar10", "--data-root", str(tmp_path), "--layer", "conv2",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "place the archive 'cifar-10-python.tar.gz'" in err and f"in the folder {tmp_path}" in err
    assert not empty_cache.exists()


def test_an_unwritable_out_is_reported_before_any_work(tmp_path, capsys, empty_cache):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["compare", "--layer", "conv2", "--out", str(blocker / "out")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert not empty_cache.exists()  # the reference model was not even trained


def test_ctrl_c_keeps_the_finished_rows_and_exits_130(tmp_path, model_file, capsys, monkeypatch):
    real, calls = experiments.estimate_mi, []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiments, "estimate_mi", interrupted_on_the_third)
    out = tmp_path / "run"
    code = main(["compare", "--model", str(model_file), "--layer", "conv2", "--methods", "gap,none",
                 "--out", str(out), "--no-report", *SMALL])
    assert code == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    kept = Comparison.load(out)
    assert len(kept.rows) == 2 and not kept.complete
