"""What :func:`mitoolkit.plane.information_plane` returns: rows, summaries over seeds, the DPI check.

One :class:`PlaneRow` per (epoch, layer, quantity, seed) holds its full :class:`MIResult` and the
quantity's ceiling (ln N for I(X; T), ln K for I(T; Y)); a row whose estimate exceeds its ceiling
carries the flag ``above_ceiling``. :class:`PlaneSummary` gathers the seeds of one (epoch, layer,
quantity); :class:`InformationPlane` holds them all, with the training history and the config, and
saves as JSON and CSV (``plane.json``, ``plane.csv``, ``plane_summary.csv``)::

    plane.save("results/plane")                    # the three files
    again = InformationPlane.load("results/plane")  # the same rows, the same summary

The summary is computed from the rows, never stored separately (the copy in ``plane.json`` is for
readers). :meth:`InformationPlane.check_dpi` compares I(X; T) of consecutive layers with the
data-processing inequality.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mitoolkit.comparison import write_atomic
from mitoolkit.results import FLAG_NAMES, MIResult

__all__ = [
    "ABOVE_CEILING",
    "FLAG_TEXT",
    "QUANTITIES",
    "QUANTITY_LABELS",
    "DPICheck",
    "InformationPlane",
    "PlaneRow",
    "PlaneSummary",
    "summarize_rows",
]

#: The two coordinates of the plane: information about the input, and about the label.
QUANTITIES: tuple[str, ...] = ("ixt", "ity")
QUANTITY_LABELS: dict[str, str] = {"ixt": "I(X; T)", "ity": "I(T; Y)"}
FORMAT = "mitoolkit.plane/1"
ROW_FORMAT = "mitoolkit.plane-row/1"
DEFAULT_REDUCER = "pca"
#: The flag a row carries when its estimate exceeds the quantity's ceiling (ln N or ln K).
ABOVE_CEILING = "above_ceiling"
#: Every flag a :class:`PlaneRow` can carry, with what it means.
FLAG_TEXT: dict[str, str] = {
    **FLAG_NAMES,
    ABOVE_CEILING: "the estimate exceeds the quantity's ceiling (ln N for I(X; T), ln K for "
                   "I(T; Y)): no true value can, so it is estimation error",
}


# --------------------------------------------------------------------------------------------
# Rows, summaries, the result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaneRow:
    """One estimate: an epoch, a layer, a quantity, a seed, and the :class:`MIResult` it gave.

    Attributes
    ----------
    epoch : int
        Training epochs done before the measurement (0: the untrained network).
    layer : str
    quantity : {"ixt", "ity"}
        I(X; T) or I(T; Y).
    seed : int
        Seeds the estimator (split, critic, batches).
    result : MIResult
    ceiling : float
        ln N (I(X; T)) or ln K (I(T; Y)), nats.
    reducer : str
        What happened to the activation before MINE (``"none"``, ``"pca"``, ``"cnn"``, ``"gap"``).
    """

    epoch: int
    layer: str
    quantity: str
    seed: int
    result: MIResult
    ceiling: float
    reducer: str = DEFAULT_REDUCER

    @property
    def key(self) -> tuple[int, str, str, int]:
        return (self.epoch, self.layer, self.quantity, self.seed)

    @property
    def label(self) -> str:
        """``"I(X; T)"`` or ``"I(T; Y)"``."""
        return QUANTITY_LABELS.get(self.quantity, self.quantity)

    mi = property(lambda self: self.result.mi, doc="The estimate (nats).")
    stderr = property(lambda self: self.result.stderr, doc="Its standard error (nats).")
    ci95 = property(lambda self: self.result.ci95, doc="Its 95 % interval (nats).")
    seconds = property(lambda self: self.result.seconds, doc="Wall time of the estimate (s).")

    @property
    def above_ceiling(self) -> bool:
        """The estimate exceeds the ceiling (ln N or ln K): impossible for the true value."""
        return bool(math.isfinite(self.mi) and self.mi > self.ceiling)

    @property
    def flags(self) -> dict[str, bool]:
        """The estimate's :class:`MIResult` flags plus ``above_ceiling``."""
        return {**self.result.flags, ABOVE_CEILING: self.above_ceiling}

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "layer": self.layer, "quantity": self.quantity,
                "seed": self.seed, "ceiling": self.ceiling, "reducer": self.reducer,
                ABOVE_CEILING: self.above_ceiling, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PlaneRow":
        return cls(int(data["epoch"]), str(data["layer"]), str(data["quantity"]), int(data["seed"]),
                   MIResult.from_dict(data["result"]), float(data["ceiling"]),
                   str(data.get("reducer", DEFAULT_REDUCER)))


@dataclass(frozen=True)
class PlaneSummary:
    """The rows of one (epoch, layer, quantity) across seeds.

    Attributes
    ----------
    epoch, layer, quantity
    n_seeds : int
        Rows with a finite estimate (the statistics use only those).
    mean, std : float
        Mean and sample standard deviation (``ddof=1``; ``nan`` with one seed), nats.
    low, high : float
        The interval drawn as error bars: from the lowest to the highest of the seeds' 95 %
        intervals, so it holds both the test-sample noise of each estimate and the spread over
        seeds (with one seed it is that seed's 95 % interval).
    ceiling : float
        ln N or ln K (nats).
    ceiling_heldout : float
        ln(n_test): the most a held-out DV-type estimate can certify.
    above_ceiling : bool
        The mean, or any seed's estimate, exceeds ``ceiling``.
    n_flagged : dict of str to int
        How many rows carry each flag that is set in at least one row.
    """

    epoch: int
    layer: str
    quantity: str
    n_seeds: int
    mean: float
    std: float
    low: float
    high: float
    ceiling: float
    ceiling_heldout: float
    above_ceiling: bool
    n_flagged: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return QUANTITY_LABELS.get(self.quantity, self.quantity)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "layer": self.layer, "quantity": self.quantity,
                "label": self.label, "n_seeds": self.n_seeds, "mean": self.mean, "std": self.std,
                "low": self.low, "high": self.high, "ceiling": self.ceiling,
                "ceiling_heldout": self.ceiling_heldout, ABOVE_CEILING: self.above_ceiling,
                "n_flagged": dict(self.n_flagged)}


def summarize_rows(rows: Sequence[PlaneRow]) -> list[PlaneSummary]:
    """One :class:`PlaneSummary` per (epoch, layer, quantity) present in ``rows``, in first-seen order."""
    groups: dict[tuple[int, str, str], list[PlaneRow]] = {}
    for row in rows:
        groups.setdefault((row.epoch, row.layer, row.quantity), []).append(row)
    out = []
    for (epoch, layer, quantity), mine in groups.items():
        finite = [r for r in mine if math.isfinite(r.mi)]
        values = np.array([r.mi for r in finite], dtype=float)
        lows = [r.ci95[0] for r in finite if math.isfinite(r.ci95[0])]
        highs = [r.ci95[1] for r in finite if math.isfinite(r.ci95[1])]
        flagged: dict[str, int] = {}
        for row in mine:
            for name, on in row.flags.items():
                if on:
                    flagged[name] = flagged.get(name, 0) + 1
        n_test = [r.result.n_test for r in mine if r.result.n_test > 0]
        mean = float(values.mean()) if len(values) else math.nan
        ceiling = mine[0].ceiling
        out.append(PlaneSummary(
            epoch=epoch, layer=layer, quantity=quantity, n_seeds=len(values), mean=mean,
            std=float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            low=min(lows) if lows else math.nan, high=max(highs) if highs else math.nan,
            ceiling=ceiling, ceiling_heldout=math.log(min(n_test)) if n_test else math.nan,
            above_ceiling=bool((math.isfinite(mean) and mean > ceiling)
                               or any(r.above_ceiling for r in mine)),
            n_flagged=flagged,
        ))
    return out


@dataclass(frozen=True)
class DPICheck:
    """One quantity of two consecutive layers at one epoch, checked against the data-processing
    inequality.

    With the transformation as the only noise, a deeper layer is a function of a shallower one
    (Y -> X -> T1 -> T2), so neither its I(X; T) nor its I(T; Y) can be larger. An estimate that
    rises beyond the error bars (the deeper layer's interval entirely above the shallower one's)
    is therefore the estimator's error: typically the reduction or the critic extracting less
    from the shallower, wider layer, where the information is harder to read.

    Attributes
    ----------
    epoch : int
    upstream, downstream : PlaneSummary
        The summaries of the shallower and the deeper layer (``quantity`` says which).
    """

    epoch: int
    upstream: PlaneSummary
    downstream: PlaneSummary

    @property
    def quantity(self) -> str:
        """``"ixt"`` or ``"ity"``."""
        return self.upstream.quantity

    @property
    def rises(self) -> bool:
        """The deeper layer's mean is higher."""
        return self.downstream.mean > self.upstream.mean

    @property
    def beyond_error_bars(self) -> bool:
        """The deeper layer's interval lies entirely above the shallower one's."""
        return self.downstream.low > self.upstream.high

    @property
    def holds(self) -> bool:
        """No rise beyond the error bars."""
        return not self.beyond_error_bars

    def __str__(self) -> str:
        u, d = self.upstream, self.downstream
        verdict = ("rises beyond the error bars (a DPI violation: estimation error)"
                   if self.beyond_error_bars else "rises, within the error bars" if self.rises
                   else "falls")
        return (f"epoch {self.epoch}: {u.label} {u.layer} {u.mean:.3f} [{u.low:.3f}, {u.high:.3f}] -> "
                f"{d.layer} {d.mean:.3f} [{d.low:.3f}, {d.high:.3f}]: {verdict}")


@dataclass(frozen=True)
class InformationPlane:
    """The result of :func:`information_plane`.

    Attributes
    ----------
    config : dict
        Everything the rows depend on, plus ``layers`` (in forward order: ``layer_order``),
        ``epochs_to_measure``, ``seeds``, the ceilings ``ceiling_ixt`` (ln N) and ``ceiling_ity``
        (ln K), and ``reducers`` (the reducer used on each layer). JSON-ready.
    rows : tuple of PlaneRow
        One per (epoch, layer, quantity, seed) that finished, in the order they were run.
    training : tuple of dict
        One per epoch trained (``epoch``, ``seconds``, and the training function's metrics, e.g.
        ``train_loss`` and ``test_accuracy`` for the reference network, which also has an epoch 0
        entry: the untrained network's test accuracy).
    complete : bool
        False after an interruption, before every row finished.
    """

    config: dict[str, Any]
    rows: tuple[PlaneRow, ...]
    training: tuple[dict[str, Any], ...] = ()
    complete: bool = True

    # -- views ----------------------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        """The layers, shallowest first."""
        order = self.config.get("layer_order") or self.config.get("layers")
        return list(order or dict.fromkeys(r.layer for r in self.rows))

    @property
    def epochs(self) -> list[int]:
        """The epochs measured (those with at least one row), in increasing order."""
        return sorted({r.epoch for r in self.rows})

    @property
    def ceilings(self) -> dict[str, float]:
        """``{"ixt": ln N, "ity": ln K}`` in nats."""
        return {"ixt": float(self.config["ceiling_ixt"]), "ity": float(self.config["ceiling_ity"])}

    @property
    def summary(self) -> list[PlaneSummary]:
        """One :class:`PlaneSummary` per (epoch, layer, quantity): epochs, then layers by depth."""
        rank = {layer: k for k, layer in enumerate(self.layers)}
        return sorted(summarize_rows(self.rows),
                      key=lambda s: (s.epoch, rank.get(s.layer, len(rank)), QUANTITIES.index(s.quantity)))

    def summary_for(self, epoch: int, layer: str, quantity: str) -> PlaneSummary | None:
        """The summary of one (epoch, layer, quantity), or None when it has no rows."""
        rows = [r for r in self.rows if (r.epoch, r.layer, r.quantity) == (epoch, layer, quantity)]
        return summarize_rows(rows)[0] if rows else None

    def path(self, layer: str) -> list[tuple[int, PlaneSummary, PlaneSummary]]:
        """The layer's path in the plane: (epoch, I(X; T) summary, I(T; Y) summary) by epoch,
        for the epochs where both quantities have rows."""
        out = []
        for epoch in self.epochs:
            ixt, ity = self.summary_for(epoch, layer, "ixt"), self.summary_for(epoch, layer, "ity")
            if ixt is not None and ity is not None:
                out.append((epoch, ixt, ity))
        return out

    def check_dpi(self, quantity: str = "ixt") -> list[DPICheck]:
        """``quantity`` of each pair of consecutive layers (by depth) at each epoch: see
        :class:`DPICheck`. ``"ixt"`` (default) for I(X; T), ``"ity"`` for I(T; Y).

        The data-processing inequality bounds the true values only. A lossy reduction (PCA, GAP)
        applied to both layers can lose more on one than on the other, and MINE underestimates
        more where the information is higher; so a check that holds is consistent with the DPI,
        and one that fails measures the estimator, not the network.
        """
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {', '.join(map(repr, QUANTITIES))}; received "
                             f"{quantity!r}.")
        out = []
        by_key = {(s.epoch, s.layer): s for s in self.summary if s.quantity == quantity}
        for epoch in self.epochs:
            present = [layer for layer in self.layers if (epoch, layer) in by_key]
            for up, down in zip(present, present[1:]):
                out.append(DPICheck(epoch, by_key[(epoch, up)], by_key[(epoch, down)]))
        return out

    def summary_table(self) -> str:
        """The summary as a plain-text table: one line per (epoch, layer), nats."""
        accuracy = {int(h["epoch"]): h.get("test_accuracy") for h in self.training}
        header = ["epoch", "layer", "I(X; T) mean ± std [interval]", "I(T; Y) mean ± std [interval]",
                  "test acc", "flags"]
        lines = [header]
        for epoch in self.epochs:
            for layer in self.layers:
                cells = []
                flags: dict[str, int] = {}
                found = False
                for quantity in QUANTITIES:
                    s = self.summary_for(epoch, layer, quantity)
                    if s is None:
                        cells.append("-")
                        continue
                    found = True
                    mark = " !" if s.above_ceiling else ""
                    cells.append(f"{s.mean:.3f} ± {s.std:.3f} [{s.low:.3f}, {s.high:.3f}]{mark}")
                    for k, v in s.n_flagged.items():
                        if k != "early_stopped":
                            flags[f"{QUANTITY_LABELS[quantity]} {k}"] = v
                if not found:
                    continue
                acc = accuracy.get(epoch)
                lines.append([str(epoch), layer, *cells,
                              f"{acc:.1%}" if isinstance(acc, (int, float)) and math.isfinite(acc) else "-",
                              ", ".join(f"{k} {v}" for k, v in flags.items())])
        widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        c = self.ceilings
        text.append(f"ceilings: I(X; T) <= ln N = {c['ixt']:.3f}, I(T; Y) <= ln K = {c['ity']:.3f} "
                    "nats; '!' marks an estimate above its ceiling (flag above_ceiling). Interval: "
                    "lowest to highest of the seeds' 95 % intervals.")
        if not self.complete:
            text.append(f"(incomplete: {len(self.rows)} of {self.expected_rows} rows)")
        return "\n".join(text)

    @property
    def expected_rows(self) -> int:
        cfg = self.config
        return (len(cfg.get("epochs_to_measure", [])) * len(cfg.get("layers", []))
                * len(QUANTITIES) * len(cfg.get("seeds", [])))

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.config,
            "complete": self.complete,
            "training": [dict(h) for h in self.training],
            "summary": [s.to_dict() for s in self.summary],
            "dpi": [{"quantity": q, "epoch": d.epoch, "upstream": d.upstream.layer,
                     "downstream": d.downstream.layer, "rises": d.rises,
                     "beyond_error_bars": d.beyond_error_bars}
                    for q in QUANTITIES for d in self.check_dpi(q)],
            "rows": [r.to_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InformationPlane":
        """Rebuild from :meth:`to_dict` (the stored summary is ignored: it is recomputed)."""
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a mitoolkit information plane: expected format {FORMAT!r}, received "
                f"{data.get('format')!r}."
            )
        return cls(config=dict(data["config"]),
                   rows=tuple(PlaneRow.from_dict(r) for r in data["rows"]),
                   training=tuple(dict(h) for h in data.get("training", ())),
                   complete=bool(data.get("complete", True)))

    def to_csv(self) -> str:
        """One line per row: epoch, layer, quantity, seed, estimate, interval, ceiling, flags."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["epoch", "layer", "quantity", "label", "seed", "reducer", "mi_nats",
                         "stderr", "ci95_low", "ci95_high", "ceiling_nats", "ln_n_test", "seconds",
                         "steps", "flags"])
        for r in self.rows:
            writer.writerow([r.epoch, r.layer, r.quantity, r.label, r.seed, r.reducer, _num(r.mi),
                             _num(r.stderr), _num(r.ci95[0]), _num(r.ci95[1]), _num(r.ceiling),
                             _num(r.result.log_n), _num(r.seconds), r.result.history.last_step,
                             ";".join(k for k, v in r.flags.items() if v)])
        return buffer.getvalue()

    def summary_csv(self) -> str:
        """One line per (epoch, layer, quantity): mean, std, interval, ceilings, flags."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["epoch", "layer", "quantity", "label", "n_seeds", "mean_nats", "std_nats",
                         "low_nats", "high_nats", "ceiling_nats", "ceiling_heldout_nats",
                         ABOVE_CEILING, "flags"])
        for s in self.summary:
            writer.writerow([s.epoch, s.layer, s.quantity, s.label, s.n_seeds, _num(s.mean),
                             _num(s.std), _num(s.low), _num(s.high), _num(s.ceiling),
                             _num(s.ceiling_heldout), int(s.above_ceiling),
                             ";".join(f"{k}={v}" for k, v in s.n_flagged.items())])
        return buffer.getvalue()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``plane.json``, ``plane.csv`` and ``plane_summary.csv`` into ``folder``, atomically.

        Returns the path of ``plane.json``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "plane.json"
        write_atomic(path, json.dumps(self.to_dict(), indent=1))
        write_atomic(folder / "plane.csv", self.to_csv())
        write_atomic(folder / "plane_summary.csv", self.summary_csv())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InformationPlane":
        """Read a ``plane.json`` (or the folder holding one) written by :meth:`save`."""
        path = Path(path)
        if path.is_dir():
            path = path / "plane.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no information plane at {path}: expected the plane.json that "
                "information_plane(out=...) or `mitoolkit plane --out DIR` writes."
            )
        return cls.from_dict(json.loads(path.read_text()))


def _num(value: float) -> str:
    return "nan" if not math.isfinite(value) else repr(float(value))
