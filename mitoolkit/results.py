"""What an estimate returns: :class:`MIResult` and its training :class:`History`.

Both are frozen dataclasses holding plain Python values, so a result can be saved as JSON and loaded
back unchanged (``MIResult.from_dict(json.loads(json.dumps(result.to_dict())))``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

__all__ = ["History", "MIResult", "FLAG_NAMES", "NATS_PER_BIT"]

NATS_PER_BIT = math.log(2.0)

#: Every flag an :class:`MIResult` carries, with what it means when it is ``True``.
FLAG_NAMES: dict[str, str] = {
    "still_rising": "the run ended at max_steps while its held-out estimate was still improving: "
    "more steps may give a higher value",
    "early_stopped": "training stopped because the held-out estimate stopped improving (patience)",
    "above_log_n": "the estimate exceeds ln(n_test), the most a DV-type bound can certify from "
    "n_test samples: treat it as a lower bound of at least ln(n_test), not a measurement",
    "stopped": "a stop was requested (callback, threading.Event or KeyboardInterrupt) before the "
    "run finished",
    "non_finite": "the training loss became NaN or infinite; training stopped there",
    "near_log_batch": "an InfoNCE estimate is close to ln(batch_size), its hard ceiling",
}


@dataclass(frozen=True)
class History:
    """Training history of one estimate.

    Attributes
    ----------
    step : tuple of int
        Training steps, 1-based, one per optimizer step.
    train_bound : tuple of float
        The bound on the training minibatch at each step (nats).
    eval_step : tuple of int
        Steps at which the held-out (validation) estimate was computed.
    heldout : tuple of float
        Held-out estimate at each ``eval_step`` (nats), on the validation part of the held-out
        samples; training never sees these samples.
    """

    step: tuple[int, ...] = ()
    train_bound: tuple[float, ...] = ()
    eval_step: tuple[int, ...] = ()
    heldout: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.step)

    @property
    def last_step(self) -> int:
        """The last training step recorded (0 when no step ran)."""
        return self.step[-1] if self.step else 0

    def to_dict(self) -> dict[str, list]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "History":
        return cls(
            step=tuple(int(s) for s in data.get("step", ())),
            train_bound=tuple(float(v) for v in data.get("train_bound", ())),
            eval_step=tuple(int(s) for s in data.get("eval_step", ())),
            heldout=tuple(float(v) for v in data.get("heldout", ())),
        )


@dataclass(frozen=True)
class MIResult:
    """A mutual-information estimate with its uncertainty and how it was obtained.

    Attributes
    ----------
    mi : float
        The estimate in nats: the bound evaluated on held-out test samples with the critic chosen by
        early stopping on separate validation samples. ``nan`` when no finite estimate exists.
    stderr : float
        Standard error of ``mi`` (nats), from the spread of the bound over batches of test samples.
    ci95 : tuple of float
        95 % interval ``(mi - 1.96 stderr, mi + 1.96 stderr)`` in nats.
    history : History
        Training bound per step and held-out estimate per evaluation.
    flags : dict of str to bool
        See :data:`FLAG_NAMES`.
    n_train, n_valid, n_test : int
        Samples used to train the critic, to choose when to stop, and to report ``mi``.
    seconds : float
        Wall time of the estimate, reducer fitting included.
    options : dict
        The options the estimate ran with (bound, critic size, steps, seed, device, reducers...).
    """

    mi: float
    stderr: float
    ci95: tuple[float, float]
    history: History
    flags: dict[str, bool]
    n_train: int
    n_valid: int
    n_test: int
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def mi_bits(self) -> float:
        """The estimate in bits."""
        return self.mi / NATS_PER_BIT

    @property
    def log_n(self) -> float:
        """ln(n_test), the ceiling a DV-type estimate from ``n_test`` samples can certify (nats)."""
        return math.log(self.n_test) if self.n_test > 0 else float("nan")

    @property
    def warnings(self) -> list[str]:
        """Plain-language explanations of the flags that are set."""
        return [FLAG_NAMES[name] for name, on in self.flags.items() if on and name in FLAG_NAMES]

    def __str__(self) -> str:
        set_flags = ", ".join(name for name, on in self.flags.items() if on) or "none"
        return (
            f"MI = {self.mi:.3f} nats ({self.mi_bits:.3f} bits), 95% CI [{self.ci95[0]:.3f}, "
            f"{self.ci95[1]:.3f}], {self.history.last_step} steps, {self.seconds:.1f} s, "
            f"flags: {set_flags}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats are kept as floats; ``json`` writes them as NaN)."""
        data = asdict(self)
        data["ci95"] = list(self.ci95)
        data["history"] = self.history.to_dict()
        data["mi_bits"] = self.mi_bits
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MIResult":
        """Rebuild a result written by :meth:`to_dict` (extra keys such as ``mi_bits`` are ignored)."""
        return cls(
            mi=float(data["mi"]),
            stderr=float(data["stderr"]),
            ci95=(float(data["ci95"][0]), float(data["ci95"][1])),
            history=History.from_dict(data["history"]),
            flags={str(k): bool(v) for k, v in data["flags"].items()},
            n_train=int(data["n_train"]),
            n_valid=int(data["n_valid"]),
            n_test=int(data["n_test"]),
            seconds=float(data["seconds"]),
            options=dict(data.get("options", {})),
        )
