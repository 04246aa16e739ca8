"""Callbacks: how a user interface follows and steers an estimate without the estimator knowing it.

The training loop calls, on every callback it was given:

``on_start(info)`` once, ``on_step(step, train_bound)`` after each optimizer step,
``on_eval(step, heldout)`` after each held-out evaluation, and ``on_end(result)`` once at the end,
also when the run was stopped or failed. ``on_step`` and ``on_eval`` may return ``True`` to ask the
run to stop; it then ends cleanly, keeps its history and is flagged ``stopped``.

All hooks are no-ops here (the skorch habit), so a callback overrides only what it needs. The loop
only converts the per-step training bound to a Python float when some callback overrides
``on_step``, so callbacks that only need evaluations cost nothing on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mitoolkit.results import MIResult

__all__ = ["Callback", "RunInfo", "ProgressBar", "StopAfter", "overrides"]


@dataclass(frozen=True)
class RunInfo:
    """What a run knows before its first step, passed to ``Callback.on_start``.

    Attributes
    ----------
    max_steps : int
        Step budget.
    eval_every : int
        Steps between held-out evaluations.
    n_train, n_valid, n_test : int
        Sizes of the three splits.
    log_n : float
        ln(n_test), the ceiling of a DV-type estimate (nats).
    bound : str
        Name of the bound being trained.
    label : str
        Free text naming the run (for plots with several runs).
    options : dict
        All options of the run.
    """

    max_steps: int
    eval_every: int
    n_train: int
    n_valid: int
    n_test: int
    log_n: float
    bound: str
    label: str = ""
    options: dict[str, Any] | None = None


class Callback:
    """Base class with no-op hooks. Override the ones you need."""

    def on_start(self, info: RunInfo) -> None:
        """Called once before the first step."""

    def on_step(self, step: int, train_bound: float) -> bool | None:
        """Called after each optimizer step; return ``True`` to stop the run."""

    def on_eval(self, step: int, heldout: float) -> bool | None:
        """Called after each held-out evaluation (nats); return ``True`` to stop the run."""

    def on_end(self, result: "MIResult") -> None:
        """Called once with the final result, also after a stop or a non-finite loss."""


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` defines its own ``hook`` (rather than the no-op of :class:`Callback`)."""
    base = getattr(Callback, hook, None)
    return getattr(type(callback), hook, None) is not base


class ProgressBar(Callback):
    """A tqdm progress bar (the notebook widget form under Jupyter) showing the held-out estimate."""

    def __init__(self, *, desc: str = "MINE", leave: bool = True) -> None:
        self.desc = desc
        self.leave = leave
        self._bar = None
        self._shown = 0

    def on_start(self, info: RunInfo) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=info.max_steps, desc=self.desc, unit="step", leave=self.leave)
        self._shown = 0

    def on_eval(self, step: int, heldout: float) -> None:
        if self._bar is None:
            return None
        self._bar.update(step - self._shown)
        self._shown = step
        self._bar.set_postfix(heldout=f"{heldout:.3f} nats", refresh=False)
        return None

    def on_end(self, result: "MIResult") -> None:
        if self._bar is None:
            return
        self._bar.update(max(result.history.last_step - self._shown, 0))
        self._bar.set_postfix(mi=f"{result.mi:.3f} nats", refresh=False)
        self._bar.close()
        self._bar = None


class StopAfter(Callback):
    """Ask the run to stop after a given step (useful for tests and quick looks)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, step: int, train_bound: float) -> bool:
        return step >= self.step
