"""The reference CNN, its training on digits and the weight cache."""
from __future__ import annotations

import time

import pytest
import torch

import mitoolkit.models as models
from mitoolkit.data import load_dataset
from mitoolkit.layers import collect_activations, list_layers
from mitoolkit.models import ReferenceCNN, evaluate_accuracy, train_reference_model

SHORT_EPOCHS = 3  # the test's budget: a few seconds on 2 cores


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    start = time.perf_counter()
    model = train_reference_model("digits", epochs=SHORT_EPOCHS, seed=0, device="cpu", cache_dir=cache, progress=False)
    seconds = time.perf_counter() - start
    assert torch.equal(torch.get_rng_state(), state)  # training seeds its own generator
    assert torch.get_num_threads() == threads  # the thread setting is restored
    return model, cache, seconds


def test_reference_cnn_layer_shapes_for_digits_and_cifar():
    small = {i.name: i.shape for i in list_layers(ReferenceCNN(1, 10, 8), torch.zeros(1, 1, 8, 8))}
    assert small["conv1"] == (16, 8, 8) and small["conv2"] == (32, 4, 4) and small["conv3"] == (64, 2, 2)
    assert small["fc1"] == (64,) and small["fc"] == (10,)
    big = {i.name: i.shape for i in list_layers(ReferenceCNN(3, 100, 32), torch.zeros(1, 3, 32, 32))}
    assert big["conv1"] == (16, 32, 32) and big["conv2"] == (32, 16, 16) and big["fc"] == (100,)
    with pytest.raises(ValueError, match="image_size must be a multiple of 4"):
        ReferenceCNN(1, 10, 6)


def test_trains_on_digits_above_90_percent(trained):
    model, _, seconds = trained
    assert isinstance(model, ReferenceCNN) and not model.training
    test = load_dataset("digits", train=False)
    accuracy = evaluate_accuracy(model, test, device="cpu")
    assert accuracy > 0.90, f"test accuracy {accuracy:.3f} after {SHORT_EPOCHS} epochs ({seconds:.1f} s)"
    assert model.metadata["test_accuracy"] == pytest.approx(accuracy)
    assert len(model.metadata["history"]) == SHORT_EPOCHS and not model.metadata["from_cache"]
    # Trained activations carry label information: classes differ in their mean fc1 activation.
    acts = collect_activations(model, test, "fc1", device="cpu")
    means = torch.stack([acts["fc1"][acts.labels == k].mean(0) for k in range(10)])
    assert torch.cdist(means, means).fill_diagonal_(float("inf")).min() > 0.1


def test_second_call_loads_the_cache_without_training(trained, monkeypatch):
    model, cache, _ = trained
    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"digits-{model.architecture}-e{SHORT_EPOCHS}-s0.pt"]  # no temporary file left

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(models, "_train", no_training)
    again = train_reference_model("digits", epochs=SHORT_EPOCHS, seed=0, device="cpu", cache_dir=cache, progress=False)
    assert again.metadata["from_cache"] and not again.training
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.metadata["test_accuracy"] == model.metadata["test_accuracy"]
    # Another key (seed) is another file: it would train.
    with pytest.raises(AssertionError, match="trained again"):
        train_reference_model("digits", epochs=SHORT_EPOCHS, seed=1, device="cpu", cache_dir=cache, progress=False)


def test_cache_dir_from_environment_and_damaged_file_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("MITOOLKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "DEFAULT_EPOCHS", {"digits": 1})
    fake_history = [{"epoch": 1, "train_loss": 2.3, "test_accuracy": 0.1}]
    monkeypatch.setattr(models, "_train", lambda *args, **kwargs: fake_history)  # no need to train
    path = tmp_path / f"digits-{ReferenceCNN().architecture}-e1-s5.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="ignoring the cached weights"):
        model = train_reference_model("digits", seed=5, device="cpu", progress=False)
    assert model.metadata["cache_path"] == str(path) and not model.metadata["from_cache"]
    payload = torch.load(path, weights_only=True)  # rewritten, loadable
    assert payload["config"] == model.config and payload["metadata"]["history"] == fake_history


def test_bad_arguments():
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_reference_model("digits", epochs=0, progress=False)
    with pytest.raises(ValueError, match="'mnist'"):
        train_reference_model("mnist", progress=False)
