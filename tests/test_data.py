"""Datasets (digits, CIFAR from a test-written archive) and the minor random transformations."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mitoolkit.data import (
    DatasetNotFoundError,
    ImageDataset,
    balanced_indices,
    load_dataset,
    minor_transforms,
)

# ----------------------------------------------------------------------------- digits


def test_digits_splits_are_fixed_disjoint_and_cover_the_set():
    train = load_dataset("digits", train=True)
    test = load_dataset("digits", train=False)
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert train.classes == tuple("0123456789")
    # The 1,797 digits are all distinct images, so disjoint splits share no row.
    rows_train = {tuple(r) for r in train.images.flatten(1).tolist()}
    rows_test = {tuple(r) for r in test.images.flatten(1).tolist()}
    assert not rows_train & rows_test
    assert len(rows_train | rows_test) == 1797
    # Stratified: every class is in the test split in proportion (~36 each).
    assert test.labels.bincount().min() >= 34
    again = load_dataset("digits", train=False)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_images_match_scikit_learn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = load_dataset("digits")
    # Find the first train image in sklearn's array and compare values and label.
    flat = torch.from_numpy(bunch.data.astype(np.float32) / 16.0)
    match = (flat == train.images[0].flatten()).all(dim=1).nonzero().flatten()
    assert match.numel() == 1
    assert int(bunch.target[int(match)]) == int(train.labels[0])


def test_subsampling_is_class_balanced_and_reproducible():
    a = load_dataset("digits", n_samples=103, seed=3)
    b = load_dataset("digits", n_samples=103, seed=3)
    c = load_dataset("digits", n_samples=103, seed=4)
    assert len(a) == 103
    counts = a.labels.bincount(minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_balanced_indices_when_a_class_is_short():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    idx = balanced_indices(labels, 21, seed=0)
    assert len(set(idx.tolist())) == 21 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [3, 9, 9]


def test_n_samples_above_the_split_says_how_many_there_are():
    with pytest.raises(ValueError, match=r"n_samples=5000 .*360 images"):
        load_dataset("digits", train=False, n_samples=5000)


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="'digits', 'cifar10', 'cifar100'.*'mnist'"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------- CIFAR


def _cifar_batch(rng: np.random.Generator, n: int, label_key: str, n_classes: int) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {"batch_label": "test batch", "data": data, "filenames": [f"img{i}.png" for i in range(n)]}
    batch[label_key] = rng.integers(0, n_classes, size=n).tolist()
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label // 5 for label in batch[label_key]]
    return batch


def _write_archive(root: Path, folder: str, files: dict[str, dict], archive: str) -> Path:
    """A tiny archive in CIFAR's official format: a tar.gz of a folder of pickled dicts."""
    src = root / "src" / folder
    src.mkdir(parents=True)
    for name, content in files.items():
        with open(src / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    path = root / archive
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=folder)
    return path


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    files = {f"data_batch_{k}": _cifar_batch(rng, 4, "labels", 10) for k in range(1, 6)}
    files["test_batch"] = _cifar_batch(rng, 3, "labels", 10)
    # A known pixel: image 0 of batch 1 has red=255 at row 0, column 1 and blue=7 at row 2, col 0.
    files["data_batch_1"]["data"][0, :] = 0
    files["data_batch_1"]["data"][0, 1] = 255
    files["data_batch_1"]["data"][0, 2048 + 2 * 32 + 0] = 7
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files["batches.meta"] = {"label_names": names, "num_cases_per_batch": 4, "num_vis": 3072}
    root = tmp_path / "data"
    _write_archive(root, "cifar-10-batches-py", files, "cifar-10-python.tar.gz")
    return root, files


def test_cifar10_reads_the_test_written_archive(cifar10_root):
    root, files = cifar10_root
    with pytest.warns(UserWarning, match="differ from the official release"):
        train = load_dataset("cifar10", root=root, train=True)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()  # extracted beside the archive
    assert isinstance(train, ImageDataset) and train.images.shape == (20, 3, 32, 32)
    expected = np.concatenate([files[f"data_batch_{k}"]["data"] for k in range(1, 6)])
    expected = torch.from_numpy(expected.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(train.images, expected)
    assert train.images[0, 0, 0, 1] == 1.0 and train.images[0, 2, 2, 0] == pytest.approx(7 / 255)
    assert float(train.images[0].sum()) == pytest.approx(1.0 + 7 / 255)
    labels = sum((files[f"data_batch_{k}"]["labels"] for k in range(1, 6)), [])
    assert train.labels.tolist() == labels
    assert train.classes[0] == "airplane" and len(train.classes) == 10

    with pytest.warns(UserWarning):
        test = load_dataset("cifar10", root=root, train=False)
    assert test.labels.tolist() == files["test_batch"]["labels"]
    assert torch.equal(test.images.flatten(1), torch.from_numpy(files["test_batch"]["data"]).float() / 255)


def test_cifar10_root_from_environment_variable(cifar10_root, monkeypatch):
    root, _ = cifar10_root
    monkeypatch.setenv("MITOOLKIT_DATA", str(root))
    with pytest.warns(UserWarning):
        data = load_dataset("cifar10", train=False, n_samples=2, seed=1)
    assert data.images.shape == (2, 3, 32, 32)


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    files = {"train": _cifar_batch(rng, 6, "fine_labels", 100), "test": _cifar_batch(rng, 2, "fine_labels", 100)}
    files["meta"] = {"fine_label_names": [f"class{k}" for k in range(100)], "coarse_label_names": ["c"] * 20}
    _write_archive(tmp_path, "cifar-100-python", files, "cifar-100-python.tar.gz")
    with pytest.warns(UserWarning):
        train = load_dataset("cifar100", root=tmp_path)
    assert train.labels.tolist() == files["train"]["fine_labels"]
    assert train.classes[99] == "class99" and train.n_classes == 100
    assert torch.equal(train.images.flatten(1), torch.from_numpy(files["train"]["data"]).float() / 255)


@pytest.mark.parametrize(
    "name, archive, folder",
    [("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"), ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python")],
)
def test_missing_cifar_names_the_archive_and_the_folder(tmp_path, monkeypatch, name, archive, folder):
    where = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=where)
    message = str(info.value)
    assert archive in message and folder in message and str(where) in message
    assert "MITOOLKIT_DATA" in message and "cs.toronto.edu" in message
    assert isinstance(info.value, FileNotFoundError)
    # The default root comes from the environment variable.
    monkeypatch.setenv("MITOOLKIT_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_dataset(name)


# ----------------------------------------------------------------------------- transformations


def test_minor_transforms_are_seeded_and_leave_the_global_generator_alone():
    images = load_dataset("digits", n_samples=40).images
    t = minor_transforms(noise=True)
    state = torch.get_rng_state()
    a = t.apply(images, seed=0)
    b = t.apply(images, seed=0)
    c = t.apply(images, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == images.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, images)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_shift_is_at_most_max_shift_and_strength_zero_is_identity():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 4, 4] = 1.0
    moved = minor_transforms(flip=False).apply(image.expand(200, 1, 8, 8), seed=0)
    rows, cols = (moved[:, 0] == 1.0).nonzero()[:, 1:].T
    assert moved.sum(dim=(1, 2, 3)).eq(1.0).all()  # one pixel, moved, never lost
    assert rows.sub(4).abs().max() == 1 and cols.sub(4).abs().max() == 1  # 1 pixel on 8x8 at strength 1
    assert minor_transforms().shift_for(32, 32) == 4
    same = minor_transforms(strength=0, flip=False).apply(image.expand(5, 1, 8, 8), seed=0)
    assert torch.equal(same, image.expand(5, 1, 8, 8))


def test_flips_mirror_the_image():
    image = torch.arange(16.0).reshape(1, 1, 4, 4) / 16
    out = minor_transforms(strength=0, flip=True).apply(image.expand(50, 1, 4, 4), seed=0)
    flipped = out.eq(image.flip(-1)).flatten(1).all(1)
    kept = out.eq(image).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 40


def test_noise_strength_is_an_option():
    image = torch.full((300, 1, 8, 8), 0.5)
    t = minor_transforms(strength=0, flip=False, noise=True, noise_std=0.05)
    noisy = t.apply(image, seed=0)
    assert float((noisy - 0.5).std()) == pytest.approx(0.05, rel=0.05)
    assert minor_transforms(noise=True, strength=2).sigma == pytest.approx(0.06)
    with pytest.raises(ValueError, match="strength"):
        minor_transforms(strength=-1)
