"""Images to measure with, and the "minor random transformations" that act as the channel's noise.

Three datasets are known to :func:`load_dataset`:

``"digits"``
    scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes). It ships inside
    an installed package, so it works offline; it is the default everywhere in the toolkit. Its
    train/test split is fixed: a stratified 80/20 split with seed :data:`DIGITS_SPLIT_SEED`
    (1,437 train images, 360 test images, never overlapping).
``"cifar10"`` / ``"cifar100"``
    The CIFAR python releases, read from ``root`` (default ``$MITOOLKIT_DATA``, else
    ``~/.cache/mitoolkit/data``). Nothing is downloaded unless ``download=True``.

Every loader returns an :class:`ImageDataset`: float32 images in [0, 1], shape (N, C, H, W).

:func:`minor_transforms` builds the paper's "minor random transformations" (small shifts by padding
and cropping, horizontal flips, optional Gaussian noise) from torchvision's transforms v2. A
deterministic network has infinite I(X; T) on continuous inputs; these transformations are the
noise of the channel X -> T, and ln N is the ceiling of I(X; T) for N images.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = [
    "DATASETS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "DatasetNotFoundError",
    "ImageDataset",
    "MinorTransforms",
    "balanced_indices",
    "default_data_root",
    "load_dataset",
    "minor_transforms",
]

DATASETS = ("digits", "cifar10", "cifar100")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DATA_ENV_VAR = "MITOOLKIT_DATA"

_CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk (and ``download=False``)."""


# --------------------------------------------------------------------------------------------
# The dataset container
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ImageDataset:
    """Images with their labels, held in memory.

    Attributes
    ----------
    images : torch.Tensor
        float32, shape (N, C, H, W), values in [0, 1].
    labels : torch.Tensor
        int64, shape (N,), class indices into ``classes``.
    classes : tuple of str
        Class names, ``classes[k]`` is the name of label ``k``.
    name : str
        A short description, e.g. ``"digits[train]"``.

    It can be indexed like a torch ``Dataset``: ``dataset[i]`` is ``(image, label)``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(
                f"images must have shape (N, C, H, W); received shape {tuple(self.images.shape)}."
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape (N,) = ({self.images.shape[0]},); "
                f"received shape {tuple(self.labels.shape)}."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageDataset({self.name!r}, {len(self)} images of {c}x{h}x{w}, "
            f"{len(self.classes)} classes)"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> "ImageDataset":
        """The images at ``indices``, in that order."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name)


# --------------------------------------------------------------------------------------------
# Subsampling
# --------------------------------------------------------------------------------------------


def balanced_indices(labels: Sequence[int] | torch.Tensor | np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Choose ``n`` indices with the classes as equally represented as possible.

    Each class contributes ``n // K`` or ``n // K + 1`` samples (K classes); a class that holds
    fewer gives all it has and the others make up the difference. Reproducible by ``seed``.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
    n : int
        Number of indices wanted, ``0 <= n <= N``.
    seed : int

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        Sorted indices into ``labels``.
    """
    labels = np.asarray(labels).reshape(-1)
    total = labels.shape[0]
    if not 0 <= n <= total:
        raise ValueError(f"n must be between 0 and {total} (the number of labels); received n={n}.")
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    # Shuffle, then give each sample its rank within its class; taking samples in order of
    # (rank, random class order) deals them out one per class per round.
    perm = rng.permutation(total)
    class_pos = rng.permutation(len(classes))[inverse[perm]]
    shuffled_class = inverse[perm]
    order = np.argsort(shuffled_class, kind="stable")  # grouped by class, shuffled within
    rank = np.empty(total, dtype=np.int64)
    counts = np.bincount(shuffled_class, minlength=len(classes))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(total) - np.repeat(starts, counts)
    key = rank * len(classes) + class_pos
    chosen = perm[np.argsort(key, kind="stable")[:n]]
    return np.sort(chosen).astype(np.int64)


def _subsample(dataset: ImageDataset, n_samples: int | None, seed: int, what: str) -> ImageDataset:
    if n_samples is None:
        return dataset
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer or None; received {n_samples!r}.")
    if n_samples > len(dataset):
        raise ValueError(
            f"n_samples={n_samples} exceeds the {len(dataset)} images of {what}; "
            f"use n_samples<={len(dataset)}, or n_samples=None for all of them."
        )
    if n_samples == len(dataset):
        return dataset
    return dataset.subset(balanced_indices(dataset.labels.numpy(), int(n_samples), seed=seed))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """``$MITOOLKIT_DATA`` when set, else ``~/.cache/mitoolkit/data``."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mitoolkit" / "data"


def load_dataset(
    name: str = "digits",
    *,
    root: str | os.PathLike | None = None,
    train: bool = True,
    n_samples: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> ImageDataset:
    """Load a dataset as float32 images in [0, 1].

    Parameters
    ----------
    name : {"digits", "cifar10", "cifar100"}
        ``"digits"`` is bundled with scikit-learn and needs no files. The CIFAR sets are read from
        ``root``.
    root : path, optional
        Folder holding ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` or their extracted
        folders ``cifar-10-batches-py`` / ``cifar-100-python``. Default: :func:`default_data_root`
        (``$MITOOLKIT_DATA``, else ``~/.cache/mitoolkit/data``). Ignored for ``"digits"``.
    train : bool
        The training split (True) or the test split (False). For digits, the fixed stratified
        80/20 split described in the module docstring.
    n_samples : int, optional
        Keep this many images, class-balanced, chosen reproducibly by ``seed``. Default: all.
    seed : int
        Seed of the subsampling.
    download : bool
        For CIFAR only: download the official archive (md5-checked by torchvision) when missing.

    Returns
    -------
    ImageDataset
        ``images`` (N, C, H, W): (N, 1, 8, 8) for digits, (N, 3, 32, 32) for CIFAR.

    Raises
    ------
    DatasetNotFoundError
        (a ``FileNotFoundError``) when CIFAR files are missing and ``download=False``; the message
        names the archive, the folder to place it in, and where to obtain it.
    ValueError
        For an unknown name, or ``n_samples`` larger than the split.
    """
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(map(repr, DATASETS))}; received {name!r}.")
    name = name.lower()
    split = "train" if train else "test"
    if name == "digits":
        dataset = _load_digits(train)
    else:
        dataset = _load_cifar(name, root, train, download)
    return _subsample(dataset, n_samples, seed, f"the {name} {split} split")


def _load_digits(train: bool) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # pixel values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    idx = np.sort(train_idx if train else test_idx)
    return ImageDataset(
        images=torch.from_numpy(images[idx]).unsqueeze(1).contiguous(),
        labels=torch.from_numpy(labels[idx]),
        classes=tuple(str(k) for k in range(10)),
        name=f"digits[{'train' if train else 'test'}]",
    )


@dataclass(frozen=True)
class _CifarSpec:
    title: str
    archive: str
    folder: str
    train_files: tuple[tuple[str, str], ...]
    test_files: tuple[tuple[str, str], ...]
    meta_file: tuple[str, str]
    meta_key: str
    label_key: str
    torchvision_class: str


# File names and md5 sums of the official releases (the same as torchvision.datasets.CIFAR10/100).
_CIFAR = {
    "cifar10": _CifarSpec(
        title="CIFAR-10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        meta_key="label_names",
        label_key="labels",
        torchvision_class="CIFAR10",
    ),
    "cifar100": _CifarSpec(
        title="CIFAR-100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
        meta_key="fine_label_names",
        label_key="fine_labels",
        torchvision_class="CIFAR100",
    ),
}


def _load_cifar(name: str, root: str | os.PathLike | None, train: bool, download: bool) -> ImageDataset:
    spec = _CIFAR[name]
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    folder = root_path / spec.folder
    archive = root_path / spec.archive
    if not folder.is_dir():
        if archive.is_file():
            _extract(archive, root_path, spec.folder)
        elif download:
            import torchvision.datasets

            # torchvision downloads the archive, checks its md5 and extracts it into root.
            getattr(torchvision.datasets, spec.torchvision_class)(str(root_path), train=train, download=True)
        else:
            raise DatasetNotFoundError(
                f"{spec.title} was not found in {root_path}: place the archive '{spec.archive}' "
                f"(the 'python version' from {_CIFAR_PAGE}) in the folder {root_path}, or its "
                f"extracted folder '{spec.folder}' there. Alternatively pass root=<folder holding "
                f"it>, set the environment variable {DATA_ENV_VAR}, or use download=True "
                f"(needs internet)."
            )
    files = spec.train_files if train else spec.test_files
    missing = [f for f, _ in (*files, spec.meta_file) if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{spec.title} folder {folder} is incomplete: missing {', '.join(missing)}. Delete the "
            f"folder and place the archive '{spec.archive}' (from {_CIFAR_PAGE}) in {root_path}."
        )
    _warn_if_not_official(spec, folder, [*files, spec.meta_file])
    blocks, labels = [], []
    for fname, _ in files:
        entry = _read_pickle(folder / fname)
        data = np.asarray(entry["data"], dtype=np.uint8)
        blocks.append(data.reshape(-1, 3, 32, 32))  # rows: 1024 red, 1024 green, 1024 blue, row-major
        labels.extend(entry[spec.label_key])
    classes = tuple(str(c) for c in _read_pickle(folder / spec.meta_file[0])[spec.meta_key])
    images = torch.from_numpy(np.concatenate(blocks)).to(torch.float32).div_(255.0)
    return ImageDataset(
        images=images,
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=classes,
        name=f"{name}[{'train' if train else 'test'}]",
    )


def _read_pickle(path: Path) -> dict:
    # The official python releases are pickles of dicts written by Python 2, hence latin1, as in
    # torchvision. Like any pickle, only read files from the official source.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _warn_if_not_official(spec: _CifarSpec, folder: Path, files: Sequence[tuple[str, str]]) -> None:
    # torchvision refuses files whose md5 differs from the official release. We read any file in
    # the official format (so that tests can write tiny ones), but say so when it is not official.
    differing = [fname for fname, md5 in files if _md5(folder / fname) != md5]
    if differing:
        warnings.warn(
            f"{spec.title} files {', '.join(differing)} in {folder} differ from the official "
            f"release (md5 mismatch); reading them anyway as {spec.title}-format pickles.",
            UserWarning,
            stacklevel=4,
        )


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Extract ``archive`` into ``root`` so that ``root/folder`` appears at once or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            try:
                tar.extractall(tmp, filter="data")
            except TypeError:  # Python without tarfile extraction filters
                tar.extractall(tmp)
        if not (tmp / folder).is_dir():
            raise DatasetNotFoundError(
                f"the archive {archive} does not contain the folder '{folder}'; it is not the "
                f"official python release ({_CIFAR_PAGE}). Replace it."
            )
        try:
            os.replace(tmp / folder, root / folder)
        except OSError:
            if not (root / folder).is_dir():  # another process may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Minor random transformations
# --------------------------------------------------------------------------------------------


class _AddGaussianNoise(torch.nn.Module):
    """Fallback for torchvision versions without ``v2.GaussianNoise`` (added in 0.20)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp_(0.0, 1.0)


class MinorTransforms:
    """Small random shifts, horizontal flips and optional Gaussian noise for (C, H, W) images.

    Build it with :func:`minor_transforms`. Calling it on one image draws from torch's global
    generator, like any torchvision transform; :meth:`apply` transforms a batch image by image,
    reproducibly by seed, without touching the global generator. :func:`mitoolkit.layers.
    collect_activations` does the same with any transform it is given.
    """

    def __init__(
        self,
        *,
        strength: float = 1.0,
        flip: bool = True,
        noise: bool = False,
        max_shift: int | None = None,
        noise_std: float | None = None,
    ) -> None:
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength < 0:
            raise ValueError(f"strength must be a number >= 0; received {strength!r}.")
        if max_shift is not None and (not isinstance(max_shift, int) or max_shift < 0):
            raise ValueError(f"max_shift must be a non-negative int (pixels) or None; received {max_shift!r}.")
        if noise_std is not None and (not isinstance(noise_std, (int, float)) or noise_std < 0):
            raise ValueError(f"noise_std must be a number >= 0 or None; received {noise_std!r}.")
        self.strength = float(strength)
        self.flip = bool(flip)
        self.noise = bool(noise)
        self.max_shift = max_shift
        self.noise_std = noise_std
        self._pipelines: dict[tuple[int, int], Callable[[torch.Tensor], torch.Tensor]] = {}

    def shift_for(self, height: int, width: int) -> int:
        """Largest shift in pixels for an image of this size: ``max_shift``, else
        ``round(strength * min(H, W) / 8)`` and at least 1 when ``strength > 0`` (4 pixels on
        32x32 CIFAR, 1 pixel on 8x8 digits, at strength 1)."""
        if self.max_shift is not None:
            return self.max_shift
        if self.strength == 0:
            return 0
        return max(1, round(self.strength * min(height, width) / 8))

    @property
    def sigma(self) -> float:
        """Standard deviation of the added noise, in units of the [0, 1] pixel range (0 if off)."""
        if not self.noise:
            return 0.0
        return float(self.noise_std) if self.noise_std is not None else 0.03 * self.strength

    def _pipeline(self, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (height, width)
        if key not in self._pipelines:
            steps: list[Callable] = []
            shift = self.shift_for(height, width)
            if shift > 0:
                steps.append(v2.RandomCrop((height, width), padding=shift, fill=0, padding_mode="constant"))
            if self.flip:
                steps.append(v2.RandomHorizontalFlip(p=0.5))
            if self.sigma > 0:
                noise_cls = getattr(v2, "GaussianNoise", None)
                steps.append(noise_cls(sigma=self.sigma, clip=True) if noise_cls else _AddGaussianNoise(self.sigma))
            self._pipelines[key] = v2.Compose(steps) if steps else (lambda x: x)
        return self._pipelines[key]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Transform one image, (C, H, W) float in [0, 1], drawing from torch's global generator."""
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"MinorTransforms takes one image of shape (C, H, W); received {shape}. "
                "For a batch (N, C, H, W) use .apply(images, seed=...)."
            )
        return self._pipeline(int(image.shape[-2]), int(image.shape[-1]))(image)

    def apply(self, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Transform each image of a batch independently, reproducibly.

        Parameters
        ----------
        images : torch.Tensor, shape (N, C, H, W), float in [0, 1]
        seed : int
            The same seed gives the same draws; the caller's global generator is left as it was.

        Returns
        -------
        torch.Tensor, shape (N, C, H, W)
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor of shape (N, C, H, W); received {shape}.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self(img) for img in images.cpu()])

    def __repr__(self) -> str:
        parts = [f"strength={self.strength:g}", f"flip={self.flip}", f"noise={self.noise}"]
        if self.max_shift is not None:
            parts.append(f"max_shift={self.max_shift}")
        if self.noise_std is not None:
            parts.append(f"noise_std={self.noise_std:g}")
        return f"MinorTransforms({', '.join(parts)})"


def minor_transforms(
    *,
    strength: float = 1.0,
    flip: bool = True,
    noise: bool = False,
    max_shift: int | None = None,
    noise_std: float | None = None,
) -> MinorTransforms:
    """The paper's "minor random transformations", built from torchvision transforms v2.

    In order: a random shift of up to ``max_shift`` pixels in each direction (zero padding, then a
    random crop back to the original size), a horizontal flip with probability 1/2, and, when
    ``noise=True``, additive Gaussian noise clipped to [0, 1].

    Parameters
    ----------
    strength : float, default 1.0
        Scales the default shift (``round(strength * min(H, W) / 8)`` pixels, at least 1 when
        strength > 0: 4 on CIFAR, 1 on digits) and the default noise std (``0.03 * strength``).
        ``strength=0`` turns shifts and noise off; flips follow ``flip``.
    flip : bool, default True
        Random horizontal flips.
    noise : bool, default False
        Add Gaussian noise.
    max_shift : int, optional
        Largest shift in pixels, overriding ``strength``.
    noise_std : float, optional
        Noise standard deviation in units of the [0, 1] pixel range, overriding ``strength``.

    Returns
    -------
    MinorTransforms
        Callable on one (C, H, W) image; ``.apply(images, seed=...)`` on a batch. Pass it as
        ``transform=`` to :func:`mitoolkit.layers.collect_activations`, which seeds it.
    """
    return MinorTransforms(strength=strength, flip=flip, noise=noise, max_shift=max_shift, noise_std=noise_std)
