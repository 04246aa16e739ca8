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

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

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

    def fit(self, x: torch.Tensor) -> "Reducer":
        """Learn from training samples ``x`` of shape (N, ...); returns ``self``."""
        self._check_input(x)
        self.input_shape_ = tuple(x.shape[1:])
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map samples (N, ...) to features (N, D)."""
        raise NotImplementedError(f"{type(self).__name__} is trainable: use build() instead")

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.fit(x).transform(x)

    def get_params(self) -> dict[str, Any]:
        """The constructor's options, as given."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Name, options and what fitting learned that a user may want to see (JSON-ready)."""
        return {"name": self.name, **self.get_params()}

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(
                f"reducer {self.name!r} needs samples of shape (N, ...) as a tensor; received {shape}."
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
                f"received {tuple(x.shape[1:])}."
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Flatten(Reducer):
    """The baseline: (N, C, H, W) or any (N, ...) flattened to (N, prod(...)). No parameters."""

    name = "none"

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
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

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        self._check_input(x)
        self._check_same_shape(x)
        return x.mean(dim=(2, 3))


class PCA(Reducer):
    """PCA-MINE: projection on the first ``n_components`` principal components of the train split.

    Parameters
    ----------
    n_components : int
        Number of components k; at most min(n_train, D).
    backend : {"auto", "sklearn", "torch"}
        ``"sklearn"`` uses :class:`sklearn.decomposition.PCA` (randomized solver where the
        dimension is large); ``"torch"`` uses :func:`torch.pca_lowrank` on the tensor's device;
        ``"auto"`` picks torch for CUDA tensors, scikit-learn otherwise.
    seed : int
        Seed of the randomized solvers.

    Attributes
    ----------
    components_ : Tensor (k, D)
    mean_ : Tensor (D,)
    explained_variance_ratio_ : ndarray (k,)
        Share of the train split's total variance each component carries (0 when it has none).
    """

    name = "pca"

    def __init__(self, n_components: int = 32, *, backend: str = "auto", seed: int = 0) -> None:
        self.n_components = n_components
        self.backend = backend
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "backend": self.backend}

    def fit(self, x: torch.Tensor) -> "PCA":
        self._check_input(x)
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
        use_torch = self.backend == "torch" or (self.backend == "auto" and flat.is_cuda)
        self.input_shape_ = tuple(x.shape[1:])
        if use_torch:
            self._fit_torch(flat, int(k))
        else:
            self._fit_sklearn(flat, int(k))
        self.backend_ = "torch" if use_torch else "sklearn"
        return self

    def _fit_sklearn(self, flat: torch.Tensor, k: int) -> None:
        from sklearn.decomposition import PCA as SkPCA

        data = flat.detach().to("cpu", torch.float64).numpy()
        large = min(data.shape) > 500 and k < 0.8 * min(data.shape)
        pca = SkPCA(
            n_components=k, svd_solver="randomized" if large else "full", random_state=self.seed
        )
        with warnings.catch_warnings():
            # All-constant data gives 0/0 in explained_variance_ratio_; handled below.
            warnings.simplefilter("ignore", RuntimeWarning)
            pca.fit(data)
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
        total = centered.pow(2).sum()
        self.components_ = v[:, :k].T.contiguous().to(flat.dtype)
        self.mean_ = mean.to(flat.dtype)
        ratio = singular[:k].pow(2) / total if total > 0 else torch.zeros(k)
        self.explained_variance_ratio_ = ratio.cpu().double().numpy()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        self._check_same_shape(x)
        flat = x.reshape(x.shape[0], -1)
        comps = self.components_.to(flat.device, flat.dtype)
        return (flat - self.mean_.to(flat.device, flat.dtype)) @ comps.T

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if hasattr(self, "explained_variance_ratio_"):
            info["explained_variance"] = float(np.sum(self.explained_variance_ratio_))
            info["backend_used"] = self.backend_
        return info


class ConvEncoder(Reducer):
    """CNN-MINE: a small convolutional encoder trained jointly with the MINE critic.

    Architecture: ``Conv(3x3) - ReLU - Conv(3x3, stride 2) - ReLU - AdaptiveAvgPool(<= 4x4) -
    Linear(out_features)``. Its parameters are added to the critic's optimizer.

    Parameters
    ----------
    channels : tuple of int
        Output channels of the two convolutions.
    out_features : int
        Size of the encoding passed to the critic.
    """

    name = "cnn"
    trainable = True

    def __init__(self, channels: tuple[int, int] = (16, 32), out_features: int = 16) -> None:
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

    def build(self, seed: int = 0) -> nn.Module:
        """A freshly initialised encoder for the fitted input shape: (B, C, H, W) -> (B, out_features).

        The initialisation uses ``seed`` without touching the caller's global random state.
        """
        self._check_fitted()
        if len(self.channels) != 2 or any(int(c) < 1 for c in self.channels):
            raise ValueError(
                f"channels must be two positive integers; received {self.channels!r}."
            )
        if int(self.out_features) < 1:
            raise ValueError(f"out_features must be positive; received {self.out_features!r}.")
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
        return encoder


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
    try:
        return _REDUCERS[key](**options)
    except TypeError as err:
        raise ValueError(f"invalid options for reducer {key!r}: {err}") from None
