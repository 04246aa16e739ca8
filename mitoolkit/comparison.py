"""What the paper's comparison returns: one row per (layer, method, seed) and a summary per (layer, method).

:class:`Comparison` is built by :func:`mitoolkit.experiments.compare_reducers`. It holds plain
values (each row keeps its full :class:`~mitoolkit.results.MIResult`, history included), saves as
JSON and CSV, and loads back unchanged::

    comparison.save("results/demo")             # results.json, results.csv, summary.csv
    again = Comparison.load("results/demo")     # the same rows, the same summary

The summary is computed from the rows, never stored separately: its ``mean`` and ``std`` are the
mean and the sample standard deviation (``ddof=1``) of the rows' estimates across seeds; ``std`` is
the paper's "stability" (lower is more stable).

Rows are also written one file each, atomically, while a comparison runs (:class:`RowStore`), so
that an interrupted run keeps what it finished.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mitoolkit.atomic import write_atomic
from mitoolkit.results import MIResult

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "Comparison",
    "ComparisonRow",
    "Finding",
    "MethodSummary",
    "check_findings",
    "RowStore",
    "write_atomic",
]

#: The four methods of the seed paper, in its order: what happens to the layer's activation.
METHODS: tuple[str, ...] = ("none", "pca", "cnn", "gap")
#: How each method is named in tables and plots.
METHOD_LABELS: dict[str, str] = {
    "none": "baseline",
    "pca": "PCA-MINE",
    "cnn": "CNN-MINE",
    "gap": "GAP-MINE",
}
FORMAT = "mitoolkit.comparison/1"
ROW_FORMAT = "mitoolkit.comparison-row/1"


# --------------------------------------------------------------------------------------------
# Rows and summaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One estimate: a layer, a method, a seed and the :class:`MIResult` it gave.

    The shortcuts ``mi``, ``stderr``, ``ci95``, ``flags``, ``seconds`` and ``history`` read the result.
    """

    layer: str
    method: str
    seed: int
    result: MIResult

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.layer, self.method, self.seed)

    @property
    def label(self) -> str:
        """The method's display name (``"PCA-MINE"``...)."""
        return METHOD_LABELS.get(self.method, self.method)

    mi = property(lambda self: self.result.mi, doc="The estimate (nats).")
    stderr = property(lambda self: self.result.stderr, doc="Its standard error (nats).")
    ci95 = property(lambda self: self.result.ci95, doc="Its 95 % interval (nats).")
    flags = property(lambda self: self.result.flags, doc="The estimate's flags.")
    seconds = property(lambda self: self.result.seconds, doc="Wall time of the estimate (s).")
    history = property(lambda self: self.result.history, doc="Its training history.")

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "seed": self.seed,
                "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ComparisonRow":
        return cls(str(data["layer"]), str(data["method"]), int(data["seed"]),
                   MIResult.from_dict(data["result"]))


@dataclass(frozen=True)
class MethodSummary:
    """The rows of one (layer, method) across seeds.

    Attributes
    ----------
    layer, method : str
    n_seeds : int
        Rows with a finite estimate (the statistics use only those).
    mean, std : float
        Mean and sample standard deviation (``ddof=1``; ``nan`` with one seed) of the estimates
        across seeds, in nats. ``std`` is the paper's stability.
    mean_seconds : float
        Mean wall time of one estimate (seconds).
    ceiling : float
        The most the quantity can be: ln N for ``target="input"`` (N images), ln K for
        ``target="label"`` (K classes), in nats.
    ceiling_heldout : float
        ln(n_test): the most a held-out DV-type estimate can certify from its test samples.
    n_flagged : dict of str to int
        How many rows carry each flag that is set in at least one row.
    """

    layer: str
    method: str
    n_seeds: int
    mean: float
    std: float
    mean_seconds: float
    ceiling: float
    ceiling_heldout: float
    n_flagged: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "label": self.label,
                "n_seeds": self.n_seeds, "mean": self.mean, "std": self.std,
                "mean_seconds": self.mean_seconds, "ceiling": self.ceiling,
                "ceiling_heldout": self.ceiling_heldout, "n_flagged": dict(self.n_flagged)}


def summarize(rows: Sequence[ComparisonRow], layer: str, method: str, ceiling: float) -> MethodSummary:
    """The :class:`MethodSummary` of the rows of one (layer, method)."""
    mine = [r for r in rows if r.layer == layer and r.method == method]
    values = np.array([r.mi for r in mine if math.isfinite(r.mi)], dtype=float)
    seconds = np.array([r.seconds for r in mine], dtype=float)
    flagged: dict[str, int] = {}
    for row in mine:
        for name, on in row.flags.items():
            if on:
                flagged[name] = flagged.get(name, 0) + 1
    n_test = [r.result.n_test for r in mine if r.result.n_test > 0]
    return MethodSummary(
        layer=layer,
        method=method,
        n_seeds=len(values),
        mean=float(values.mean()) if len(values) else math.nan,
        std=float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        mean_seconds=float(seconds.mean()) if len(seconds) else math.nan,
        ceiling=float(ceiling),
        ceiling_heldout=math.log(min(n_test)) if n_test else math.nan,
        n_flagged=flagged,
    )


@dataclass(frozen=True)
class Finding:
    """One of the seed paper's findings, checked on one layer of a comparison.

    Attributes
    ----------
    claim : str
        The paper's claim, in words.
    holds : bool or None
        Whether the numbers agree; None when the methods it needs were not run (or lack 2 seeds).
    detail : str
        The numbers compared.
    """

    claim: str
    holds: bool | None
    detail: str

    def __str__(self) -> str:
        verdict = {True: "holds", False: "does not hold", None: "not tested"}[self.holds]
        return f"{self.claim}: {verdict} ({self.detail})"


def check_findings(summaries: Sequence[MethodSummary]) -> list[Finding]:
    """The seed paper's three findings, checked on the summaries of one layer.

    1. Reduction is more stable than the baseline: each reduction's std below the baseline's.
    2. PCA and GAP are more stable and faster than the CNN: their std and seconds below CNN's.
    3. GAP gives lower estimates than the others: its mean below every other method's.

    With a handful of seeds a standard deviation is itself uncertain (about +-35 % with 5 seeds),
    so a verdict on stability is a reading of this run, not a test.
    """
    by = {s.method: s for s in summaries}

    def std_text(*methods: str) -> str:
        return ", ".join(f"{METHOD_LABELS[m]} {by[m].std:.3f}" for m in methods)

    def sec_text(*methods: str) -> str:
        return ", ".join(f"{METHOD_LABELS[m]} {by[m].mean_seconds:.1f}s" for m in methods)

    def have(*methods: str) -> bool:
        return all(m in by and math.isfinite(by[m].std) for m in methods)

    out = []
    claim = "reduction is more stable than the baseline (lower std)"
    reduced = [m for m in ("pca", "cnn", "gap") if m in by and math.isfinite(by[m].std)]
    if have("none") and reduced:
        worse = [m for m in reduced if not by[m].std < by["none"].std]
        detail = "std " + std_text("none", *reduced)
        if worse and len(worse) < len(reduced):
            detail += f"; not for {', '.join(METHOD_LABELS[m] for m in worse)}"
        out.append(Finding(claim, not worse, detail))
    else:
        out.append(Finding(claim, None, "needs the baseline and a reduction, with 2 seeds or more"))
    claim = "PCA and GAP are more stable and faster than CNN"
    pair = [m for m in ("pca", "gap") if have(m)]
    if have("cnn") and pair:
        stabler = {m: by[m].std < by["cnn"].std for m in pair}
        faster = {m: by[m].mean_seconds < by["cnn"].mean_seconds for m in pair}

        def verdicts(result: dict[str, bool]) -> str:
            return ", ".join(f"{METHOD_LABELS[m]} {'yes' if ok else 'no'}" for m, ok in result.items())

        out.append(Finding(claim, all(stabler.values()) and all(faster.values()),
                           f"more stable: {verdicts(stabler)} (std {std_text(*pair, 'cnn')}); "
                           f"faster: {verdicts(faster)} ({sec_text(*pair, 'cnn')})"))
    else:
        out.append(Finding(claim, None, "needs CNN and PCA or GAP, with 2 seeds or more"))
    claim = "GAP gives lower estimates than the others"
    others = [m for m in ("none", "pca", "cnn") if m in by]
    if "gap" in by and others:
        holds = all(by["gap"].mean < by[m].mean for m in others)
        means = ", ".join(f"{METHOD_LABELS[m]} {by[m].mean:.3f}" for m in ("gap", *others))
        out.append(Finding(claim, holds, f"mean {means}"))
    else:
        out.append(Finding(claim, None, "needs GAP and another method"))
    return out


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`mitoolkit.experiments.compare_reducers`.

    Attributes
    ----------
    config : dict
        Everything the rows depend on (dataset, samples, model, target, transformations, estimator
        options...) plus ``layers``, ``methods`` and ``seeds`` as requested. JSON-ready.
    rows : tuple of ComparisonRow
        One per (layer, method, seed) that finished, in the order they were run.
    complete : bool
        False when the run was interrupted (or failed) before every row finished.
    skipped : tuple of dict
        (layer, method) pairs that cannot apply, with the reason (e.g. GAP on a flat layer).
    """

    config: dict[str, Any]
    rows: tuple[ComparisonRow, ...]
    complete: bool = True
    skipped: tuple[dict[str, str], ...] = ()

    # -- views ----------------------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        return list(self.config.get("layers", dict.fromkeys(r.layer for r in self.rows)))

    @property
    def methods(self) -> list[str]:
        return list(self.config.get("methods", dict.fromkeys(r.method for r in self.rows)))

    @property
    def target(self) -> str:
        return str(self.config.get("target", "input"))

    @property
    def ceiling(self) -> float:
        """ln N (``target="input"``) or ln K (``target="label"``), nats."""
        return float(self.config["ceiling"])

    def rows_for(self, layer: str, method: str) -> list[ComparisonRow]:
        """The rows of one (layer, method), in seed order."""
        return sorted((r for r in self.rows if r.layer == layer and r.method == method),
                      key=lambda r: r.seed)

    @property
    def summary(self) -> list[MethodSummary]:
        """One :class:`MethodSummary` per (layer, method) that has rows, layers then methods."""
        out = []
        for layer in self.layers:
            for method in self.methods:
                if any(r.layer == layer and r.method == method for r in self.rows):
                    out.append(summarize(self.rows, layer, method, self.ceiling))
        return out

    def summary_table(self) -> str:
        """The summary as a plain-text table (nats and seconds)."""
        quantity = "I(X; T)" if self.target == "input" else "I(T; Y)"
        ceiling_name = "ln N" if self.target == "input" else "ln K"
        header = ["layer", "method", "seeds", f"{quantity} mean ± std (nats)", "seconds",
                  ceiling_name, "ln n_test", "flags"]
        lines = [header]
        for s in self.summary:
            flags = ", ".join(f"{k} {v}/{s.n_seeds}" for k, v in s.n_flagged.items()
                              if k != "early_stopped")
            lines.append([
                s.layer, s.label, str(s.n_seeds), f"{s.mean:.3f} ± {s.std:.3f}",
                f"{s.mean_seconds:.1f}", f"{s.ceiling:.2f}", f"{s.ceiling_heldout:.2f}", flags,
            ])
        widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        if not self.complete:
            expected = len(self.layers) * len(self.methods) * len(self.config.get("seeds", []))
            text.append(f"(incomplete: {len(self.rows)} of {expected - self._n_skipped_rows()} rows)")
        return "\n".join(text)

    def findings(self, layer: str) -> list[Finding]:
        """The seed paper's three findings checked on ``layer`` (see :func:`check_findings`)."""
        return check_findings([s for s in self.summary if s.layer == layer])

    def _n_skipped_rows(self) -> int:
        return len(self.skipped) * len(self.config.get("seeds", []))

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.config,
            "complete": self.complete,
            "skipped": [dict(s) for s in self.skipped],
            "summary": [s.to_dict() for s in self.summary],
            "rows": [r.to_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Comparison":
        """Rebuild from :meth:`to_dict` (the stored summary is ignored: it is recomputed)."""
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a mitoolkit comparison: expected format {FORMAT!r}, received "
                f"{data.get('format')!r}."
            )
        return cls(
            config=dict(data["config"]),
            rows=tuple(ComparisonRow.from_dict(r) for r in data["rows"]),
            complete=bool(data.get("complete", True)),
            skipped=tuple(dict(s) for s in data.get("skipped", ())),
        )

    def to_csv(self) -> str:
        """One line per row: layer, method, seed, estimate, interval, seconds, steps, flags."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["layer", "method", "label", "seed", "mi_nats", "stderr", "ci95_low",
                         "ci95_high", "seconds", "steps", "n_train", "n_valid", "n_test", "flags"])
        for r in self.rows:
            writer.writerow([
                r.layer, r.method, r.label, r.seed, _num(r.mi), _num(r.stderr), _num(r.ci95[0]),
                _num(r.ci95[1]), _num(r.seconds), r.history.last_step, r.result.n_train,
                r.result.n_valid, r.result.n_test,
                ";".join(k for k, v in r.flags.items() if v),
            ])
        return buffer.getvalue()

    def summary_csv(self) -> str:
        """One line per (layer, method): mean, std, seconds, ceilings."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["layer", "method", "label", "n_seeds", "mean_nats", "std_nats",
                         "mean_seconds", "ceiling_nats", "ceiling_heldout_nats"])
        for s in self.summary:
            writer.writerow([s.layer, s.method, s.label, s.n_seeds, _num(s.mean), _num(s.std),
                             _num(s.mean_seconds), _num(s.ceiling), _num(s.ceiling_heldout)])
        return buffer.getvalue()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``results.json``, ``results.csv`` and ``summary.csv`` into ``folder``, atomically.

        Returns the path of ``results.json``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "results.json"
        write_atomic(path, json.dumps(self.to_dict(), indent=1))
        write_atomic(folder / "results.csv", self.to_csv())
        write_atomic(folder / "summary.csv", self.summary_csv())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Comparison":
        """Read a ``results.json`` (or the folder holding one) written by :meth:`save`."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no comparison at {path}: expected the results.json that compare_reducers(out=...) "
                "or `mitoolkit compare --out DIR` writes."
            )
        return cls.from_dict(json.loads(path.read_text()))


def _num(value: float) -> str:
    return "nan" if not math.isfinite(value) else repr(float(value))


# --------------------------------------------------------------------------------------------
# Writing files while a comparison runs
# --------------------------------------------------------------------------------------------


class RowStore:
    """Rows on disk, one JSON file each under ``folder/rows``, tagged with the arguments' fingerprint.

    A row is read back only when its fingerprint matches, so a re-run with the same arguments
    resumes where the last one stopped, and a run with other arguments never mixes in stale rows.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str) -> None:
        self.folder = Path(folder) / "rows"
        self.fingerprint = fingerprint

    def path(self, key: tuple[str, str, int]) -> Path:
        layer, method, seed = key
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", layer)
        return self.folder / f"{safe}--{method}--seed{seed}.json"

    def scan(self) -> tuple[dict[tuple[str, str, int], ComparisonRow], list[Path]]:
        """Rows on disk with this fingerprint (by key), and the files written with another one."""
        found: dict[tuple[str, str, int], ComparisonRow] = {}
        stale: list[Path] = []
        if not self.folder.is_dir():
            return found, stale
        for path in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                if data.get("format") != ROW_FORMAT:
                    raise ValueError("not a row file")
                row = ComparisonRow.from_dict(data["row"])
            except (ValueError, KeyError, TypeError, OSError):
                stale.append(path)  # unreadable: written by something else
                continue
            if data.get("fingerprint") == self.fingerprint:
                found[row.key] = row
            else:
                stale.append(path)
        return found, stale

    def write(self, row: ComparisonRow) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(row.key)
        payload = {"format": ROW_FORMAT, "fingerprint": self.fingerprint, "row": row.to_dict()}
        write_atomic(path, json.dumps(payload))
        return path
