"""Dimensionality reducers applied to one side of a pair before MINE (the seed paper's methods).

=============  ==========================================  =====================================
name           class                                       what happens to (N, C, H, W)
=============  ==========================================  =====================================
``"none"``     :class:`Flatten` (the baseline)             flattened to (N, C*H*W)
``"pca"``      :class:`PCA`                                first k principal components (N, k)
``"gap"``      :class:`GlobalAvgPool`                      mean over H and W, (N, C)
``"cnn"``      :class:`ConvEncoder`                        a small CNN trained with the critic
=============  ==========================================  =====================================

Fixed reducers (Flatten, PCA, GAP) follow scikit-learn's habits: the constructor stores its
arguments, :meth:`Reducer.fit` learns from the *training split only*, learned state ends in ``_``,
and :meth:`Reducer.transform` maps any samples. They are fit and applied once, before training.
The trainable :class:`ConvEncoder` instead builds a module (:meth:`ConvEncoder.build`) whose
parameters join the critic's optimizer (CNN-MINE).
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from mitoolkit.chunks import chunk_length

_EMPTY_VARIANCE_RTOL = 1e-10  # a component with less variance than this share of the top one is empty
_FLOAT64_MAX_ELEMENTS = 2**22  # larger inputs are fit in float32 (a float64 copy would exceed 32 MiB)
_TRANSFORM_BLOCK_ELEMENTS = 2**22  # larger inputs are centred and projected a block of rows at a time
_SKLEARN_MAX_ELEMENTS = 2**24  # backend="auto" fits larger inputs with torch (scikit-learn's copies
# took 2.2x the training samples at 2,500 x 8,192; torch takes one centred copy)

__all__ = [
    "Reducer",
    "Flatten",
    "PCA",
    "GlobalAvgPool",
    "ConvEncoder",
    "make_reducer",
    "REDUCER_NAMES",
]


class Reducer:
    """Common interface. Subclasses set ``name`` and, when trained jointly, ``trainable = True``."""

    name: str = "reducer"
    trainable: bool = False

    def fit(self, x: torch.Tensor | np.ndarray) -> "Reducer":
        """Learn from training samples ``x`` of shape (N, ...); returns ``self``."""
        x = self._validated(x)
        self.input_shape_ = tuple(x.shape[1:])
        return self

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Map samples (N, ...) to features (N, D)."""
        if self.trainable:
            raise NotImplementedError(
                f"{type(self).__name__} is trained jointly with the critic and has no fixed "
                "transform: pass it to estimate_mi(reducer=...), or use .fit(x).build(seed)."
            )
        raise NotImplementedError(f"{type(self).__name__} must implement transform().")

    def fit_transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``fit(x)`` then ``transform(x)``: (N, ...) -> (N, D)."""
        return self.fit(x).transform(x)

    def get_params(self) -> dict[str, Any]:
        """The constructor's options, as given."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Name, options and what fitting learned that a user may want to see (JSON-ready)."""
        return {"name": self.name, **self.get_params()}

    def _validated(self, x: Any) -> torch.Tensor:
        """``x`` as a tensor (arrays become float32 CPU tensors), checked by :meth:`_check_input`."""
        if isinstance(x, np.ndarray):
            x = torch.as_tensor(x, dtype=torch.float32)
        self._check_input(x)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(
                f"reducer {self.name!r} needs samples of shape (N, ...) as an array or tensor; "
                f"received {shape}. Add the sample dimension, e.g. x[:, None] for one feature."
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "input_shape_"):
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet: call .fit(x_train) before "
                ".transform(x), or pass it to estimate_mi(reducer=...), which fits it on the "
                "training split."
            )

    def _check_same_shape(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"{type(self).__name__} was fitted on samples of shape {self.input_shape_}; "
                f"received samples of shape {tuple(x.shape[1:])}. Transform samples of the "
                "fitted shape, or fit again on these."
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Flatten(Reducer):
    """The baseline: (N, C, H, W) or any (N, ...) flattened to (N, prod(...)). No parameters."""

    name = "none"

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, ...) -> (N, prod(...))."""
        self._check_fitted()
        x = self._validated(x)
        self._check_same_shape(x)
        return x.reshape(x.shape[0], -1)


class GlobalAvgPool(Reducer):
    """GAP-MINE: the mean over H and W, (N, C, H, W) -> (N, C). No parameters."""

    name = "gap"

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        if x.ndim != 4:
            raise ValueError(
                f"reducer 'gap' (global average pooling) needs feature maps of shape (N, C, H, W); "
                f"received shape {tuple(x.shape)}. Use reducer='pca' or 'none' for flat (N, D) "
                "features, or pick a convolutional layer."
            )

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, C, H, W) -> (N, C), the mean of each channel's map."""
        self._check_fitted()
        x = self._validated(x)
        self._check_same_shape(x)
        return x.mean(dim=(2, 3))


class PCA(Reducer):
    """PCA-MINE: projection on the first ``n_components`` principal components of the train split.

    Parameters
    ----------
    n_components : int
        Number of components k; at most min(n_train, D).
    backend : {"auto", "sklearn", "torch"}
        ``"sklearn"`` uses :class:`sklearn.decomposition.PCA` with its ``svd_solver="auto"``
        policy (covariance eigendecomposition when N >> D, randomized SVD where the data is
        large, exact SVD otherwise), in float64 up to 2^22 values and float32 above; ``"torch"``
        uses :func:`torch.pca_lowrank` on the tensor's device; ``"auto"`` picks torch for CUDA
        tensors and for training samples of more than 2^24 values (less memory), scikit-learn
        otherwise.
    seed : int
        Seed of the randomized solvers.

    Attributes
    ----------
    components_ : Tensor (k, D)
    mean_ : Tensor (D,)
    explained_variance_ratio_ : ndarray (k,)
        Share of the train split's total variance each component carries (0 when it has none).
    n_informative_ : int
        Components that carry variance. When the training samples have rank below k (or are
        constant) the others are set to zero, with a warning, so that they give constant features
        instead of amplified rounding noise.
    backend_ : {"sklearn", "torch"}
        The backend that ran.
    svd_solver_ : str
        The solver scikit-learn chose (``"covariance_eigh"``, ``"randomized"``, ``"full"``...), or
        ``"torch.pca_lowrank"``.

    Notes
    -----
    The torch backend (:func:`torch.pca_lowrank`, 6 power iterations, k + 10 oversampling) agrees
    with scikit-learn on the explained variance and on the subspace wherever the spectrum has a gap
    after component k; components are signed as scikit-learn signs them.
    """

    name = "pca"

    def __init__(self, n_components: int = 32, *, backend: str = "auto", seed: int = 0) -> None:
        self.n_components = n_components
        self.backend = backend
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "backend": self.backend, "seed": self.seed}

    def fit(self, x: torch.Tensor | np.ndarray) -> "PCA":
        """Learn the mean and the first k components from training samples (N, ...)."""
        x = self._validated(x)
        flat = x.reshape(x.shape[0], -1)
        n, dim = flat.shape
        limit = min(n, dim)
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= limit:
            raise ValueError(
                f"n_components must be an integer from 1 to {limit} = min(n_train={n}, D={dim}) for "
                f"these samples; received {k!r}. Choose n_components <= {limit}."
            )
        if self.backend not in ("auto", "sklearn", "torch"):
            raise ValueError(
                f"backend must be 'auto', 'sklearn' or 'torch'; received {self.backend!r}."
            )
        use_torch = self.backend == "torch" or (
            self.backend == "auto" and (flat.is_cuda or flat.numel() > _SKLEARN_MAX_ELEMENTS))
        self.input_shape_ = tuple(x.shape[1:])
        if use_torch:
            self._fit_torch(flat, int(k))
        else:
            self._fit_sklearn(flat, int(k))
        self.backend_ = "torch" if use_torch else "sklearn"
        self._drop_empty_components()
        return self

    def _drop_empty_components(self) -> None:
        """Zero the components that carry no variance (rank below k, constant data).

        Their projections would be float rounding noise, which per-feature standardization would
        blow up to unit variance; zeroed, they stay exactly 0 (a constant feature).
        """
        ratio = np.asarray(self.explained_variance_ratio_, dtype=np.float64)
        top = ratio.max(initial=0.0)
        empty = ratio <= _EMPTY_VARIANCE_RTOL * top if top > 0 else np.ones(len(ratio), bool)
        self.n_informative_ = int((~empty).sum())
        if empty.any():
            keep = torch.as_tensor(~empty, device=self.components_.device)
            self.components_ = self.components_ * keep[:, None].to(self.components_.dtype)
            self.explained_variance_ratio_ = np.where(empty, 0.0, ratio)
            warnings.warn(
                f"PCA: only {self.n_informative_} of n_components={self.n_components} components "
                "carry variance in the training samples (the data has lower rank, or is constant); "
                "the others are set to 0. A smaller n_components gives the same information.",
                RuntimeWarning, stacklevel=3,
            )

    def _fit_sklearn(self, flat: torch.Tensor, k: int) -> None:
        from sklearn.decomposition import PCA as SkPCA

        # float64 for precision, except where a float64 copy would be large (sklearn then
        # computes in float32, ample for the top components).
        dtype = torch.float64 if flat.numel() <= _FLOAT64_MAX_ELEMENTS else torch.float32
        data = flat.detach().to("cpu", dtype).numpy()
        # scikit-learn's "auto" policy: "covariance_eigh" when N >> D (D <= 1000), "randomized"
        # when the data is larger than 500 x 500 and k < 80 % of min(N, D), else "full".
        pca = SkPCA(n_components=k, svd_solver="auto", random_state=self.seed)
        with warnings.catch_warnings():
            # All-constant data gives 0/0 in explained_variance_ratio_; handled below.
            warnings.simplefilter("ignore", RuntimeWarning)
            pca.fit(data)
        self.svd_solver_ = str(getattr(pca, "_fit_svd_solver", "auto"))
        self.components_ = torch.as_tensor(pca.components_, dtype=flat.dtype, device=flat.device)
        self.mean_ = torch.as_tensor(pca.mean_, dtype=flat.dtype, device=flat.device)
        self.explained_variance_ratio_ = np.nan_to_num(pca.explained_variance_ratio_, nan=0.0)

    def _fit_torch(self, flat: torch.Tensor, k: int) -> None:
        data = flat.detach().float()
        mean = data.mean(dim=0)
        centered = data - mean
        # pca_lowrank draws from the global generators: seed them inside a fork, restored after.
        with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
            torch.manual_seed(self.seed)
            q = min(k + 10, *centered.shape)
            _, singular, v = torch.pca_lowrank(centered, q=q, center=False, niter=6)
        total = torch.linalg.vector_norm(centered).pow(2)  # no squared copy
        components = v[:, :k].T
        # scikit-learn's sign convention (svd_flip on V): the largest |loading| is positive.
        signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
        signs[signs == 0] = 1.0
        self.components_ = (components * signs).contiguous().to(flat.dtype)
        self.mean_ = mean.to(flat.dtype)
        ratio = singular[:k].pow(2) / total if total > 0 else torch.zeros(k)
        self.explained_variance_ratio_ = ratio.cpu().double().numpy()
        self.svd_solver_ = "torch.pca_lowrank"

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Project (N, ...) on the fitted components: (N, k), centred by the training mean."""
        self._check_fitted()
        x = self._validated(x)
        self._check_same_shape(x)
        flat = x.reshape(x.shape[0], -1)
        comps = self.components_.to(flat.device, flat.dtype)
        mean = self.mean_.to(flat.device, flat.dtype)
        if flat.numel() <= _TRANSFORM_BLOCK_ELEMENTS:
            return (flat - mean) @ comps.T
        # Large input: centre and project a block of rows at a time, never a centred copy of all.
        rows = chunk_length(_TRANSFORM_BLOCK_ELEMENTS, flat.shape[1])
        return torch.cat([(flat[i:i + rows] - mean) @ comps.T for i in range(0, len(flat), rows)])

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if hasattr(self, "explained_variance_ratio_"):
            info["explained_variance"] = float(np.sum(self.explained_variance_ratio_))
            info["explained_variance_ratio"] = [float(r) for r in self.explained_variance_ratio_]
            info["n_informative"] = self.n_informative_
            info["backend_used"] = self.backend_
            info["svd_solver"] = self.svd_solver_
        return info


class ConvEncoder(Reducer):
    """CNN-MINE: a small convolutional encoder trained jointly with the MINE critic.

    Architecture: ``Conv(3x3) - ReLU - Conv(3x3, stride 2) - ReLU - AdaptiveAvgPool(<= 4x4) -
    Linear(out_features)``. Unlike the fixed reducers it is not applied once: :meth:`build`
    returns a module that :func:`~mitoolkit.estimate_mi` runs on every batch and whose parameters
    it adds to the critic's optimizer.

    Parameters
    ----------
    channels : tuple of two int
        Output channels of the two convolutions.
    out_features : int
        Size of the encoding passed to the critic.

    Attributes
    ----------
    input_shape_ : tuple (C, H, W)
        Shape of the samples seen by :meth:`fit`.
    encoder_ : nn.Module
        The module returned by the last :meth:`build`; after ``estimate_mi(..., reducer=enc)`` it
        holds the trained weights (those of the critic chosen by early stopping).
    build_seed_ : int
        The seed of that :meth:`build`: ``build(seed=build_seed_)`` on a fitted copy gives the
        initial weights again.
    """

    name = "cnn"
    trainable = True

    def __init__(self, *, channels: tuple[int, int] = (16, 32), out_features: int = 16) -> None:
        self.channels = channels
        self.out_features = out_features

    def get_params(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "out_features": self.out_features}

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        if x.ndim != 4:
            raise ValueError(
                f"reducer 'cnn' needs feature maps of shape (N, C, H, W); received shape "
                f"{tuple(x.shape)}. Use reducer='pca' or 'none' for flat (N, D) features."
            )

    def _check_params(self) -> None:
        channels = self.channels
        if (
            not isinstance(channels, (tuple, list)) or len(channels) != 2
            or not all(_is_positive_int(c) for c in channels)
        ):
            raise ValueError(
                f"channels must be two positive integers, e.g. (16, 32); received {channels!r}."
            )
        if not _is_positive_int(self.out_features):
            raise ValueError(
                f"out_features must be a positive integer; received {self.out_features!r}."
            )

    def fit(self, x: torch.Tensor | np.ndarray) -> "ConvEncoder":
        """Check the options and record the sample shape (C, H, W) of ``x`` (N, C, H, W)."""
        self._check_params()
        return super().fit(x)  # type: ignore[return-value]

    def build(self, seed: int = 0) -> nn.Module:
        """A freshly initialised encoder for the fitted input shape: (B, C, H, W) -> (B, out_features).

        The initialisation uses ``seed`` without touching the caller's global random state. The
        module is also kept as ``encoder_``.
        """
        self._check_fitted()
        c_in, height, width = self.input_shape_
        c1, c2 = (int(c) for c in self.channels)
        pooled = (min(4, math.ceil(height / 2)), min(4, math.ceil(width / 2)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = nn.Sequential(
                nn.Conv2d(c_in, c1, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c1, c2, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(pooled),
                nn.Flatten(),
                nn.Linear(c2 * pooled[0] * pooled[1], int(self.out_features)),
            )
        self.encoder_ = encoder
        self.build_seed_ = int(seed)
        return encoder

    def n_parameters(self) -> int:
        """Number of trainable parameters of the built module (0 before :meth:`build`)."""
        if not hasattr(self, "encoder_"):
            return 0
        return sum(p.numel() for p in self.encoder_.parameters())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if hasattr(self, "encoder_"):
            info["n_parameters"] = self.n_parameters()
        return info


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


_REDUCERS: dict[str, type[Reducer]] = {
    "none": Flatten,
    "pca": PCA,
    "gap": GlobalAvgPool,
    "cnn": ConvEncoder,
}
REDUCER_NAMES: tuple[str, ...] = tuple(_REDUCERS)


def make_reducer(name: str | Reducer | None = "none", **options: Any) -> Reducer:
    """Build a reducer by name.

    Parameters
    ----------
    name : {"none", "pca", "gap", "cnn"} or Reducer or None
        ``"none"`` (or None, or ``"flatten"``) is the baseline flatten. A :class:`Reducer` instance
        is returned as is (options are not allowed with it).
    **options
        Passed to the reducer's constructor (e.g. ``n_components=32`` for PCA).

    Returns
    -------
    Reducer
    """
    if isinstance(name, Reducer):
        if options:
            raise ValueError(
                f"options {sorted(options)} cannot be applied to an existing reducer {name!r}; "
                "pass a name instead, e.g. make_reducer('pca', n_components=16)."
            )
        return name
    key = "none" if name is None or name == "flatten" else name
    if not isinstance(key, str) or key not in _REDUCERS:
        raise ValueError(
            f"reducer must be one of {list(REDUCER_NAMES)} (or a Reducer instance); received "
            f"{name!r}."
        )
    cls = _REDUCERS[key]
    allowed = [] if cls.__init__ is object.__init__ else [
        p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"the options {allowed}" if allowed else "no options"
        raise ValueError(f"reducer {key!r} takes {takes}; received unknown options {unknown}.")
    return cls(**options)
