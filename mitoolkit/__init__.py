"""mitoolkit: mutual information inside trained neural networks (MINE + dimensionality reducers)."""
from mitoolkit.devices import resolve_device

__version__ = "0.1.0"
__all__ = ["resolve_device", "__version__"]
