"""Choosing the torch device: ``"auto"`` means CUDA when present, else the CPU."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
        ``torch.device``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For an unknown name, or for CUDA when no CUDA device is available.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif not isinstance(device, str):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received {device!r} "
            f"(type {type(device).__name__})."
        )
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received {device!r}. "
                "Use device='auto' to pick CUDA when present, else the CPU."
            ) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received {device!r}. "
            "Use device='auto' to pick CUDA when present, else the CPU."
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but no CUDA device is available on this machine; "
            "use device='auto' or device='cpu'."
        )
    return resolved
