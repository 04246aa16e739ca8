"""The torch quantile map (mitoolkit.quantiles) and its use per batch (features.QuantileMap)."""
import numpy as np
import pytest
import torch
from sklearn.preprocessing import QuantileTransformer

from mitoolkit import estimate_mi, estimate_mi_seeds, features, synthetic
from mitoolkit.quantiles import apply_quantiles, fit_quantiles, n_quantiles


@pytest.fixture(scope="module")
def mixed():
    """ReLU-like features (ties at 0), heavy tails, and discrete values with many ties."""
    rng = np.random.default_rng(0)
    n = 3000
    relu = np.maximum(rng.standard_normal((n, 4)), 0)
    heavy = rng.standard_t(2, (n, 3))
    discrete = np.round(rng.standard_normal((n, 2)) * 3)
    x = np.concatenate([relu, heavy, discrete], axis=1).astype(np.float32)
    return x, rng.permutation(n)[:1500]


@pytest.mark.parametrize("count", [1000, 128, 5])
def test_map_equals_scikit_learn_quantile_transformer(mixed, count):
    x, train = mixed
    reference = QuantileTransformer(n_quantiles=count, output_distribution="normal").fit(
        x[train].astype(np.float64))
    table = fit_quantiles(torch.as_tensor(x[train]), count)
    np.testing.assert_allclose(table.numpy().T, reference.quantiles_, rtol=0, atol=1e-9)
    mapped = apply_quantiles(torch.as_tensor(x), table).numpy()
    expected = reference.transform(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(mapped, expected, rtol=0, atol=1e-6)
    assert mapped.dtype == np.float32 and mapped.shape == x.shape


def test_map_of_k_critics_equals_each_critic_alone(mixed):
    x, train = mixed
    tables = torch.stack([fit_quantiles(torch.as_tensor(x[train[:700]]), 50),
                          fit_quantiles(torch.as_tensor(x[train[700:]]), 50)])
    batch = torch.as_tensor(x[:64])
    both = apply_quantiles(batch.expand(2, -1, -1), tables)
    for k in range(2):
        assert torch.equal(both[k], apply_quantiles(batch, tables[k]))


def test_wide_data_gets_fewer_quantiles():
    assert n_quantiles(2500, 3) == 1000
    assert n_quantiles(2500, 512) == 1000
    assert n_quantiles(2500, 8192) == 128
    assert n_quantiles(100, 3) == 100
    assert n_quantiles(2500, 10**7) == 64


def test_mapping_per_batch_gives_the_stored_features_result(monkeypatch):
    """Wide data is mapped per batch instead of stored per critic: same estimates."""
    x, y, _ = synthetic.cubic_gaussian(1200, d=3, rho=0.8, seed=0)
    options = dict(max_steps=60, eval_every=20, width=16, eval_marginals=8, progress=False)
    stored = estimate_mi_seeds(y, x, seeds=[0, 1], **options)
    single = estimate_mi(y, x, seed=1, **options)
    monkeypatch.setattr(features, "_MATERIALIZE_BYTES", 0)
    per_batch = estimate_mi_seeds(y, x, seeds=[0, 1], **options)
    assert stored[0].options["reducer_x"]["gaussianized_features"] == 3
    for a, b in zip(stored, per_batch):
        assert a.mi == pytest.approx(b.mi, abs=1e-4)
    assert single.mi == pytest.approx(per_batch[1].mi, abs=1e-4)


def test_critics_map_only_their_own_heavy_tailed_features(monkeypatch):
    """A feature heavy-tailed on one split only is mapped for that critic only."""
    rng = np.random.default_rng(1)
    n = 1000
    x = rng.standard_normal((n, 2)).astype(np.float32)
    splits = torch.stack([torch.arange(0, 500), torch.arange(500, 1000)])
    x[:500, 1] = rng.standard_t(1.5, 500)  # heavy-tailed in critic 0's training rows only
    side = features.prepare_sides("x", torch.as_tensor(x), None, splits, "auto", [0, 1])
    batch = side.features(torch.stack([torch.arange(100), torch.arange(100)]))
    assert side.info["gaussianized_features"] == 1
    # Critic 1 standardizes feature 1 (a linear map); critic 0 gaussianizes it (not linear).
    raw = torch.as_tensor(x[:100, 1])
    for k, linear in ((0, False), (1, True)):
        correlation = np.corrcoef(raw.numpy(), batch[k, :, 1].numpy())[0, 1]
        assert (correlation > 0.999999) == linear
