"""Choosing the torch device: ``"auto"`` means CUDA when present, else the CPU."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["resolve_device", "cpu_threads"]


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


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op CPU threads, restoring the setting afterwards.

    The networks trained here are small: on a few cores one thread is usually fastest, and
    several threads competing with other work can be many times slower.

    Parameters
    ----------
    n : int or None
        Threads to use inside the block; None leaves the setting unchanged.
    """
    before = torch.get_num_threads()
    if n is not None and n != before:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"cpu_threads must be a positive integer or None; received {n!r}.")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
