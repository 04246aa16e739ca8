"""mitoolkit: mutual information inside trained neural networks (MINE + dimensionality reducers).

>>> from mitoolkit import estimate_mi, synthetic
>>> x, y, true_mi = synthetic.correlated_gaussian(5000, d=1, rho=0.9)
>>> result = estimate_mi(x, y)          # result.mi in nats, result.ci95, result.flags
"""
from mitoolkit import synthetic
from mitoolkit.callbacks import Callback, ProgressBar, RunInfo, StopAfter
from mitoolkit.devices import resolve_device
from mitoolkit.mine import estimate_mi, estimate_mi_seeds
from mitoolkit.reducers import make_reducer
from mitoolkit.results import History, MIResult

__version__ = "0.1.0"

# Imported on first use: they pull in torchvision, which `import mitoolkit` need not pay for.
_LAZY = {
    "load_dataset": "mitoolkit.data",
    "minor_transforms": "mitoolkit.data",
    "list_layers": "mitoolkit.layers",
    "collect_activations": "mitoolkit.layers",
    "train_reference_model": "mitoolkit.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mitoolkit' has no attribute {name!r}")

__all__ = [
    "estimate_mi",
    "estimate_mi_seeds",
    "load_dataset",
    "minor_transforms",
    "list_layers",
    "collect_activations",
    "train_reference_model",
    "MIResult",
    "History",
    "Callback",
    "ProgressBar",
    "RunInfo",
    "StopAfter",
    "make_reducer",
    "resolve_device",
    "synthetic",
    "__version__",
]
