"""Layer discovery and activation capture on hand-built models with known activations."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from mitoolkit.data import load_dataset, minor_transforms
from mitoolkit.layers import Activations, collect_activations, list_layers
from mitoolkit.models import ReferenceCNN


def tiny_model() -> nn.Sequential:
    """1x3x3 images -> conv 1x1 (2 channels, known weights) -> BN in eval = identity -> in-place
    ReLU -> flatten -> linear (known weights)."""
    conv = nn.Conv2d(1, 2, kernel_size=1)
    lin = nn.Linear(18, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.5]))
        lin.weight.copy_(torch.stack([torch.ones(18), torch.arange(18.0)]))
        lin.bias.copy_(torch.tensor([1.0, -1.0]))
    bn = nn.BatchNorm2d(2)  # running mean 0, var 1, eps: eval-mode output = x / sqrt(1 + eps)
    return nn.Sequential(
        OrderedDict(conv=conv, bn=bn, relu=nn.ReLU(inplace=True), flat=nn.Flatten(), lin=lin)
    )


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "_forward_hooks_with_kwargs", {})
        for m in model.modules()
    )


def test_captured_values_equal_the_known_activations():
    model = tiny_model()
    x = torch.linspace(-1, 1, 5 * 9).reshape(5, 1, 3, 3)
    acts = collect_activations(model, x, ["conv", "bn", "relu", "lin"], batch_size=2, device="cpu")
    conv = torch.cat([2 * x, -x + 0.5], dim=1)
    scale = 1 / (1 + 1e-5) ** 0.5
    assert torch.allclose(acts["conv"], conv)
    # The BN output is followed by an in-place ReLU: what was captured must keep its negatives.
    assert torch.allclose(acts["bn"], conv * scale) and bool((acts["bn"] < 0).any())
    relu = (conv * scale).clamp(min=0)
    assert torch.allclose(acts["relu"], relu)
    flat = relu.flatten(1)
    expected = torch.stack([flat.sum(1) + 1, (flat * torch.arange(18.0)).sum(1) - 1], dim=1)
    assert torch.allclose(acts["lin"], expected, atol=1e-5)
    assert torch.equal(acts.inputs, x) and acts.labels is None
    assert acts.indices.tolist() == [0, 1, 2, 3, 4]
    assert acts.names == ["conv", "bn", "relu", "lin"] and len(acts) == 5


def test_results_are_ordinary_tensors_usable_for_training():
    acts = collect_activations(tiny_model(), torch.rand(4, 1, 3, 3), "lin", device="cpu")
    assert isinstance(acts, Activations) and not acts["lin"].is_inference()
    critic = nn.Linear(2, 1)
    critic(acts["lin"]).sum().backward()  # would fail on inference tensors
    assert critic.weight.grad is not None


@pytest.mark.parametrize("training", [True, False])
def test_hooks_removed_and_mode_restored_on_success(training):
    model = tiny_model().train(training)
    collect_activations(model, torch.rand(6, 1, 3, 3), ["conv", "lin"], batch_size=4, device="cpu")
    assert no_hooks(model)
    assert all(m.training == training for m in model.modules())


class FailsOnCall(nn.Module):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyError("failure in the middle of the collection")
        return x


def test_hooks_removed_and_mode_restored_when_it_raises_midway():
    model = tiny_model()
    model.add_module("boom", FailsOnCall(fail_at=3))  # dry run, batch 1, then batch 2 fails
    model.train()
    bn = model.bn
    stats = bn.running_mean.clone(), bn.running_var.clone()
    with pytest.raises(KeyError, match="middle"):
        collect_activations(model, torch.rand(8, 1, 3, 3), ["conv", "boom"], batch_size=4, device="cpu")
    assert model.boom.calls == 3
    assert no_hooks(model)
    assert all(m.training for m in model.modules())
    # It ran in eval mode: batch norm statistics were not updated.
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_transformations_change_activations_and_the_seed_reproduces_them():
    model = ReferenceCNN(1, 10, 8)
    data = load_dataset("digits", n_samples=30)
    t = minor_transforms()
    state = torch.get_rng_state()
    a = collect_activations(model, data, "conv2", transform=t, seed=0, batch_size=8, device="cpu")
    b = collect_activations(model, data, "conv2", transform=t, seed=0, batch_size=30, device="cpu")
    c = collect_activations(model, data, "conv2", transform=t, seed=1, batch_size=8, device="cpu")
    plain = collect_activations(model, data, "conv2", device="cpu")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert torch.equal(a["conv2"], b["conv2"]) and torch.equal(a.inputs, b.inputs)  # batch size irrelevant
    assert not torch.equal(a["conv2"], c["conv2"])
    assert not torch.equal(a["conv2"], plain["conv2"])
    assert torch.equal(plain.inputs, data.images)
    assert a["conv2"].shape == (30, 32, 4, 4)
    # Inputs and activations belong together: re-running the model on the returned inputs agrees.
    ref = collect_activations(model, a.inputs, "conv2", device="cpu")
    assert torch.allclose(ref["conv2"], a["conv2"], atol=1e-6)


def test_subsampling_keeps_inputs_labels_and_indices_aligned():
    data = load_dataset("digits", train=False)
    acts = collect_activations(ReferenceCNN(), data, "fc", n_samples=50, seed=2, device="cpu")
    assert torch.equal(acts.inputs, data.images[acts.indices])
    assert torch.equal(acts.labels, data.labels[acts.indices])
    assert acts.labels.bincount().tolist() == [5] * 10
    # Same from an (images, labels) tuple and from a torch Dataset.
    pair = collect_activations(ReferenceCNN(), (data.images, data.labels), "fc", n_samples=50, seed=2, device="cpu")
    assert torch.equal(pair.indices, acts.indices)
    ds = torch.utils.data.TensorDataset(data.images, data.labels)
    from_ds = collect_activations(ReferenceCNN(), ds, "fc", n_samples=50, seed=2, device="cpu")
    assert torch.equal(from_ds.labels, acts.labels) and torch.equal(from_ds.inputs, acts.inputs)


def test_float16_option():
    acts = collect_activations(ReferenceCNN(), torch.rand(3, 1, 8, 8), ["conv1", "fc"], dtype=torch.float16, device="cpu")
    assert acts["conv1"].dtype == torch.float16 and acts.inputs.dtype == torch.float16


# ----------------------------------------------------------------------------- discovery


def test_list_layers_names_and_shapes_on_the_reference_network():
    model = ReferenceCNN(1, 10, 8).train()
    plain = list_layers(model)
    assert plain.names[:3] == ["conv1", "conv1.conv", "conv1.bn"] and plain[0].shape is None
    layers = list_layers(model, torch.zeros(2, 1, 8, 8))
    shapes = {info.name: info.shape for info in layers}
    assert shapes["conv1"] == (16, 8, 8) and shapes["conv2"] == (32, 4, 4) and shapes["fc"] == (10,)
    assert "conv2" in repr(layers) and "32x4x4" in repr(layers)
    assert model.training and no_hooks(model)


def test_list_layers_on_a_torchvision_resnet():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    layers = list_layers(model, torch.zeros(1, 3, 32, 32))
    info = {i.name: i for i in layers}
    assert info["layer1.0.conv1"].shape == (64, 8, 8) and info["fc"].shape == (10,)
    assert info["layer1.0.relu"].calls == 2  # a shared ReLU
    assert "runs 2x" in repr(layers)
    acts = collect_activations(model, torch.rand(2, 3, 32, 32), ["layer2", "avgpool"], device="cpu")
    assert acts["layer2"].shape == (2, 128, 4, 4) and acts["avgpool"].shape == (2, 512, 1, 1)
    with pytest.raises(ValueError, match="ran 2 times"):
        collect_activations(model, torch.rand(2, 3, 32, 32), "layer1.0.relu", device="cpu")
    assert no_hooks(model)


# ----------------------------------------------------------------------------- bad input


def test_unknown_layer_lists_the_closest_names_and_points_to_list_layers():
    with pytest.raises(ValueError) as info:
        collect_activations(ReferenceCNN(), torch.rand(2, 1, 8, 8), ["conv1", "conv_2"], device="cpu")
    message = str(info.value)
    assert "'conv_2'" in message and "'conv2'" in message and "list_layers(model)" in message


def test_wrong_input_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 1, 8, 8\).*\(N, 3, 32, 32\)"):
        collect_activations(ReferenceCNN(1, 10, 8), torch.rand(4, 3, 32, 32), "conv1", device="cpu")
    # Any model: the expectation is read from its first convolution.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*3 channels.*received inputs of shape \(N, 1, 8, 8\)"):
        collect_activations(model, torch.rand(4, 1, 8, 8), "0", device="cpu")
    with pytest.raises(ValueError, match=r"\(N, 18\)"):
        list_layers(nn.Sequential(nn.Linear(18, 2)), torch.rand(1, 5))
    assert no_hooks(model)


def test_n_samples_above_the_data_says_how_many_there_are():
    with pytest.raises(ValueError, match=r"n_samples=11 exceeds the 10 samples"):
        collect_activations(tiny_model(), torch.rand(10, 1, 3, 3), "conv", n_samples=11, device="cpu")


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.conv(x)


def test_memory_refusal_gives_the_figure_and_the_remedies():
    model = Counting()
    images = torch.zeros(1, 3, 32, 32).expand(5000, 3, 32, 32)  # a view: no memory used
    with pytest.raises(ValueError) as info:
        collect_activations(model, images, "conv", max_bytes=1e9, device="cpu")
    message = str(info.value)
    # 5000 x 64 x 32 x 32 x 4 bytes = 1.31 GB.
    assert "5000 samples" in message and "'conv' (64x32x32)" in message and "1.31 GB in float32" in message
    assert "max_bytes=1.00 GB" in message
    assert "n_samples" in message and "torch.float16" in message and "another layer" in message
    assert model.batches == 1  # only the one-sample dry run, nothing collected
    with pytest.raises(ValueError, match="0.66 GB in float16"):
        collect_activations(model, images, "conv", max_bytes=5e8, dtype=torch.float16, device="cpu")
    assert no_hooks(model)
