"""estimate_mi_seeds: K critics trained in one vectorized pass, each distributed as its own run.

Tolerance on known-MI tasks: max(0.1 nats, 10 % of the truth), as in the estimator tests.
"""
import threading

import numpy as np
import pytest
import torch

from mitoolkit import mine, synthetic
from mitoolkit.mine import estimate_mi, estimate_mi_seeds, split_indices
from mitoolkit.reducers import PCA

SEEDS = [0, 1, 2, 3]


def tolerance(true_mi: float) -> float:
    return max(0.1, 0.1 * true_mi)


@pytest.fixture(scope="module")
def gaussian():
    return synthetic.correlated_gaussian(3000, d=1, rho=0.9)


@pytest.fixture(scope="module")
def runs(gaussian):
    """Four seeds vectorized and the same four seeds run one by one (early stopping on)."""
    x, y, _ = gaussian
    options = dict(max_steps=1500, eval_every=25, patience=6, width=64, progress=False)
    vectorized = estimate_mi_seeds(x, y, seeds=SEEDS, **options)
    separate = [estimate_mi(x, y, seed=s, **options) for s in SEEDS]
    return vectorized, separate, options


def test_every_vectorized_estimate_is_within_tolerance(gaussian, runs):
    _, _, truth = gaussian
    vectorized, _, _ = runs
    assert [r.options["seed"] for r in vectorized] == SEEDS
    for result in vectorized:
        assert abs(result.mi - truth) <= tolerance(truth), str(result)


def test_vectorized_mean_matches_separate_runs(gaussian, runs):
    _, _, truth = gaussian
    vectorized, separate, _ = runs
    mean_vec = np.mean([r.mi for r in vectorized])
    mean_sep = np.mean([r.mi for r in separate])
    assert abs(mean_vec - mean_sep) <= tolerance(truth)
    # Same split, initialisation and batches per seed: in practice the same run up to rounding.
    for vec, sep in zip(vectorized, separate):
        assert vec.mi == pytest.approx(sep.mi, abs=0.05)


def test_each_seed_stops_on_its_own(runs):
    vectorized, _, options = runs
    stopped = [r for r in vectorized if r.flags["early_stopped"]]
    assert stopped, "patience=6 should stop at least one seed early"
    for result in stopped:
        assert len(result.history) < options["max_steps"]
        assert result.history.last_step == result.history.eval_step[-1]
        assert not result.flags["still_rising"]
    assert len({len(r.history) for r in vectorized}) > 1, "seeds stopped at the same step"


def test_per_seed_splits_equal_split_indices(gaussian, monkeypatch):
    x, y, _ = gaussian
    seen = {}
    original = mine._MineRun.__init__

    def spy(self, side_x, side_y, splits, *args, **kwargs):
        seen.update({name: idx.cpu() for name, idx in splits.items()})
        original(self, side_x, side_y, splits, *args, **kwargs)

    monkeypatch.setattr(mine._MineRun, "__init__", spy)
    estimate_mi_seeds(x, y, seeds=[3, 7], max_steps=2, eval_every=1, eval_marginals=2,
                      width=8, progress=False)
    for k, seed in enumerate([3, 7]):
        expected = split_indices(len(x), seed=seed)
        for name in ("train", "valid", "test"):
            assert torch.equal(seen[name][k], expected[name])


def test_single_seed_equals_estimate_mi(gaussian):
    x, y, _ = gaussian
    options = dict(max_steps=60, eval_every=20, width=16, eval_marginals=8, progress=False)
    [vectorized] = estimate_mi_seeds(x, y, seeds=[5], **options)
    single = estimate_mi(x, y, seed=5, **options)
    assert vectorized.mi == single.mi
    assert vectorized.history == single.history
    timeless = [{k: ({**v, "fit_seconds": 0} if k.startswith("reducer") else v)
                 for k, v in r.options.items()} for r in (vectorized, single)]
    assert timeless[0] == timeless[1]


def test_per_split_reducer_and_quantile_features():
    """PCA fit per split and gaussianized features: per-seed (K, N, d) features."""
    x, y, _ = synthetic.correlated_gaussian(1500, d=5, rho=0.8)
    options = dict(reducer_x=PCA(n_components=3), preprocess="quantile", max_steps=80,
                   eval_every=40, width=16, eval_marginals=8, progress=False)
    vectorized = estimate_mi_seeds(x, y, seeds=[0, 1], **options)
    for seed, result in zip([0, 1], vectorized):
        single = estimate_mi(x, y, seed=seed, **options)
        assert result.options["reducer_x"]["output_dim"] == 3
        assert result.mi == pytest.approx(single.mi, abs=1e-3)


def test_seeds_in_memory_sized_groups_give_the_same_results(gaussian, monkeypatch):
    """memory_mb caps how many critics train together; each seed's result does not change."""
    x, y, _ = gaussian
    options = dict(max_steps=60, eval_every=20, width=16, eval_marginals=8, progress=False)
    sizes = []
    original = mine._estimate
    monkeypatch.setattr(mine, "_estimate", lambda x, y, seeds, settings: (
        sizes.append(len(seeds)) or original(x, y, seeds, settings)))
    together = estimate_mi_seeds(x, y, seeds=[0, 1, 2], memory_mb=None, **options)
    # one critic of width 16 on 2 features, batch 256: 17,664 bytes; 0.04 MiB holds two
    grouped = estimate_mi_seeds(x, y, seeds=[0, 1, 2], memory_mb=0.04, **options)
    assert sizes == [3, 2, 1]
    assert [r.options["seed"] for r in grouped] == [0, 1, 2]
    for a, b in zip(together, grouped):
        assert a.mi == pytest.approx(b.mi, abs=1e-4)


def test_auto_memory_groups_wide_data_on_the_cpu():
    from mitoolkit.mine import _group_size

    settings = dict(width=128, depth=2, batch_size=256, device="cpu")
    wide = np.zeros((5000, 32, 16, 16), np.float32)  # 156 MiB: critics of ~46 MiB each
    assert _group_size(wide, np.zeros((5000, 10)), settings, "auto") == 3
    assert _group_size(wide[:, :1, :2, :2], np.zeros((5000, 10)), settings, "auto") > 10
    assert _group_size(wide, np.zeros((5000, 10)), settings, None) > 10


def test_stop_event_stops_every_seed(gaussian):
    x, y, _ = gaussian
    event = threading.Event()
    event.set()
    results = estimate_mi_seeds(x, y, seeds=[0, 1, 2], max_steps=100, width=8,
                                eval_marginals=4, stop_event=event, progress=False)
    assert all(r.flags["stopped"] and len(r.history) == 1 for r in results)


def test_estimate_mi_with_several_seeds_trains_them_together(gaussian):
    x, y, _ = gaussian
    options = dict(max_steps=60, eval_every=20, width=16, eval_marginals=8, progress=False)
    together = estimate_mi_seeds(x, y, seeds=[3, 4], **options)
    for seeds in ([3, 4], (3, 4), range(3, 5), np.array([3, 4])):
        results = estimate_mi(x, y, seed=seeds, **options)
        assert [r.mi for r in results] == [r.mi for r in together], type(seeds)
        assert [r.history for r in results] == [r.history for r in together]
    with pytest.raises(ValueError, match=r"seeds must be a non-empty sequence of integers; received \[\]"):
        estimate_mi(x, y, seed=[], **options)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seeds=[]), "seeds must be"),
        (dict(seeds=[0, 1.5]), "seeds must be"),
        (dict(seeds=[0], seed=1), "not seed"),
        (dict(seeds=[0], steps=10), "unknown option"),
        (dict(seeds=[0, 1], batch_size=1), "batch_size"),
        (dict(seeds=[0, 1], memory_mb=0), "memory_mb must be a positive number of MiB"),
        (dict(seeds=[0, 1], memory_mb="lots"), "memory_mb must be"),
    ],
)
def test_bad_options_are_reported(gaussian, kwargs, match):
    x, y, _ = gaussian
    with pytest.raises(ValueError, match=match):
        estimate_mi_seeds(x, y, progress=False, **kwargs)


def test_compare_reducers_vectorizes_the_seeds_of_a_method(tmp_path):
    from mitoolkit.experiments import compare_reducers
    from mitoolkit.models import ReferenceCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ReferenceCNN()
    settings = dict(model=model, methods="gap,pca", n_samples=300, seeds=2, max_steps=40,
                    estimator_options={"batch_size": 64, "eval_every": 20}, device="cpu",
                    progress=False, report=False)
    rows = compare_reducers("conv2", **settings).rows
    vectorized = compare_reducers("conv2", vectorize_seeds=True, out=tmp_path, **settings)
    assert vectorized.complete and [r.key for r in vectorized.rows] == [r.key for r in rows]
    for vec, one in zip(vectorized.rows, rows):
        assert vec.mi == pytest.approx(one.mi, abs=1e-3)
    assert len(list((tmp_path / "rows").glob("*.json"))) == 4
