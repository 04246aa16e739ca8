"""Accuracy of every estimator in the toolkit against the truth, on known-MI tasks.

For each task and bound: mean and spread of the estimate over seeds at N = 5,000, and the error
against the true MI. Beside them, in the same run, other libraries where they are installed (an
optional environment: `pip install -r benchmarks/requirements-compare.txt`; the toolkit itself
does not depend on them): scikit-learn's k-nearest-neighbour estimator (KSG) for one-dimensional
x and y, and torch-mist's MINE.

Usage::

    python benchmarks/accuracy.py                      # the full run (long: hours on 2 cores)
    python benchmarks/accuracy.py --seeds 2 --bounds mine,nwj,smile --out BENCH.md
    python benchmarks/accuracy.py --quick              # smoke run: tiny N and steps

Writes a Markdown table (stdout, and ``--out``) and a CSV of every run (``--csv``, appended as
each run finishes, so a stopped run keeps what it did); ``--summarize a.csv b.csv`` prints the
table of earlier runs (for instance two halves run in parallel).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mitoolkit import estimate_mi, synthetic


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[[int, int], tuple]  # (n, seed) -> (x, y, true_mi)
    reducer: str | None = None  # reducer of x (image tasks)


def tasks() -> list[Task]:
    image = lambda n, s: synthetic.dense_image(n, d=2, rho=0.8, seed=s)  # noqa: E731
    listed = [
        Task("gaussian d=1 rho=0.9", lambda n, s: synthetic.correlated_gaussian(n, d=1, rho=0.9, seed=s)),
        Task("gaussian d=5 rho=0.8", lambda n, s: synthetic.correlated_gaussian(n, d=5, rho=0.8, seed=s)),
        Task("gaussian d=20 rho=0.5", lambda n, s: synthetic.correlated_gaussian(n, d=20, rho=0.5, seed=s)),
        Task("gaussian d=50 rho=0.3", lambda n, s: synthetic.correlated_gaussian(n, d=50, rho=0.3, seed=s)),
        Task("sparse 2 of 25", lambda n, s: synthetic.sparse_gaussian(n, d=25, informative=2, seed=s)),
        Task("student-t df=3 d=2", lambda n, s: synthetic.student_t(n, d=2, rho=0.5, df=3, seed=s)),
        Task("cubic y^3 d=3", lambda n, s: synthetic.cubic_gaussian(n, d=3, rho=0.8, seed=s)),
        Task("uniform channel eps=0.3", lambda n, s: synthetic.uniform_noise_channel(n, d=1, eps=0.3, seed=s)),
        Task("independent d=10", lambda n, s: synthetic.independent(n, d=10, seed=s)),
    ]
    listed += [Task(f"dense image, {r}", image, reducer=r) for r in ("none", "pca", "gap", "cnn")]
    listed += [
        Task(f"staircase {mi} nats", (lambda m: lambda n, s: synthetic.gaussian_with_mi(n, mi=m, d=5, seed=s))(mi))
        for mi in (2, 4, 6, 8)
    ]
    return listed


def knn_estimate(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """scikit-learn's KSG estimate, for one-dimensional x and y only."""
    if x.reshape(len(x), -1).shape[1] != 1 or y.reshape(len(y), -1).shape[1] != 1:
        return None
    from sklearn.feature_selection import mutual_info_regression

    return float(mutual_info_regression(x.reshape(-1, 1), y.reshape(-1), n_neighbors=3,
                                        random_state=seed)[0])


def torch_mist_estimate(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """torch-mist's MINE, when the package is installed (optional environment).

    Held out as mitoolkit does: trained on a random half (torch-mist takes 10 % of it for its own
    early stopping), evaluated on the other half; the same critic size (two hidden layers of 128)
    and batch (256); otherwise torch-mist's defaults (raw inputs, its 5,000-iteration budget).
    """
    if importlib.util.find_spec("torch_mist") is None:
        return None
    from torch_mist import estimate_mi as mist_estimate  # installed but broken: say so, loudly
    x2 = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y2 = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
    order = np.random.default_rng(seed).permutation(len(x2))
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    torch.manual_seed(seed)
    value = mist_estimate(data=(x2[train], y2[train]), test_data=(x2[test], y2[test]),
                          estimator="mine", hidden_dims=[128, 128], batch_size=256,
                          max_iterations=5000, verbose=False)
    return float(value[0] if isinstance(value, tuple) else value)


LIBRARIES = {"ksg": ("sklearn KSG", knn_estimate), "torch-mist": ("torch-mist MINE", torch_mist_estimate)}
CSV_FIELDS = ["task", "truth", "estimator", "seed", "estimate", "seconds"]


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per (task, estimator), tasks in the order first seen."""
    groups: dict[tuple[str, str], list[dict]] = {}
    seen: set[tuple[str, str, int]] = set()
    for row in rows:
        key = (row["task"], row["estimator"], int(row["seed"]))
        if key in seen:  # the same run in two merged files counts once
            continue
        seen.add(key)
        groups.setdefault((row["task"], row["estimator"]), []).append(row)
    lines = ["| task | truth | estimator | seeds | mean | std | error | seconds |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    task_order = {task: i for i, task in enumerate(dict.fromkeys(task for task, _ in groups))}
    order = {key: i for i, key in enumerate(groups)}
    # Per task: the toolkit's bounds first, then the other libraries (files may come in any order).
    ranked = sorted(groups, key=lambda key: (task_order[key[0]], not key[1].startswith("mitoolkit"),
                                             order[key]))
    for task, name in ranked:
        runs = groups[(task, name)]
        values = [float(r["estimate"]) for r in runs]
        truth = float(runs[0]["truth"])
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {task} | {truth:.3f} | {name} | {len(values)} | {mean:.3f} | {std:.3f} | "
                     f"{mean - truth:+.3f} | {statistics.fmean(float(r['seconds']) for r in runs):.1f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bounds", default="mine,nwj,smile,infonce",
                        help="the toolkit's bounds (empty: other libraries only)")
    parser.add_argument("--infonce-batch", type=int, default=128,
                        help="InfoNCE's batch size (B^2 critic calls per step)")
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--tasks", default="", help="comma-separated substrings of task names")
    parser.add_argument("--libraries", default="ksg,torch-mist",
                        help="other estimators run beside the toolkit's, where installed "
                             "(comma-separated, from: " + ", ".join(LIBRARIES) + "; empty: none)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start at this seed (to run later seeds in another process)")
    parser.add_argument("--library-seeds", type=int, default=None,
                        help="seeds for the other libraries (default: --seeds)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--csv", help="append every run here as it finishes; an existing file is "
                        "resumed: its runs are kept and not run again")
    parser.add_argument("--summarize", nargs="+", metavar="CSV",
                        help="print the table of earlier runs' CSV files and exit")
    args = parser.parse_args()
    if args.summarize:
        rows = []
        for path in args.summarize:
            with open(path, newline="") as handle:
                rows.extend(csv.DictReader(handle))
        print("\n".join(table(rows)))
        return 0
    libraries = [name for name in args.libraries.split(",") if name]
    unknown = sorted(set(libraries) - set(LIBRARIES))
    if unknown:
        parser.error(f"--libraries: unknown {', '.join(unknown)}; choose from {', '.join(LIBRARIES)}")
    torch.set_num_threads(1)
    if args.quick:
        args.n, args.seeds, args.max_steps = 1000, 1, 100
    bounds = [b for b in args.bounds.split(",") if b]
    wanted = [t for t in args.tasks.split(",") if t]
    chosen = [t for t in tasks() if not wanted or any(w in t.name for w in wanted)]
    rows: list[dict] = []
    done: set[tuple[str, str, int]] = set()
    sink = None
    if args.csv:
        if os.path.exists(args.csv) and os.path.getsize(args.csv) > 0:
            with open(args.csv, newline="") as handle:  # resume: keep and skip what is recorded
                rows.extend(csv.DictReader(handle))
            done = {(r["task"], r["estimator"], int(r["seed"])) for r in rows}
        sink = open(args.csv, "a", newline="")
        writer = csv.DictWriter(sink, fieldnames=CSV_FIELDS)
        if not done:
            writer.writeheader()

    def record(task: Task, truth: float, name: str, seed: int, value: float, seconds: float) -> None:
        row = {"task": task.name, "truth": truth, "estimator": name, "seed": seed,
               "estimate": value, "seconds": round(seconds, 2)}
        rows.append(row)
        print(f"  {task.name} seed {seed}: {name} = {value:.3f} ({seconds:.1f} s)", file=sys.stderr,
              flush=True)
        if sink is not None:
            writer.writerow(row)
            sink.flush()

    library_seeds = args.seeds if args.library_seeds is None else args.library_seeds
    try:
        # Seed-major: a run stopped early still covers every task with its first seeds.
        for seed in range(args.first_seed, max(args.seeds, library_seeds)):
            for task in chosen:
                x = y = truth = None
                runs = []
                if seed < args.seeds and bounds:
                    for bound in ["mine"] if task.reducer else bounds:
                        name = f"mitoolkit {bound}" + (f" ({task.reducer})" if task.reducer else "")
                        runs.append((name, bound, None))
                if seed < library_seeds and task.reducer in (None, "none"):
                    # the image tasks share their data: other libraries run once, on "none"
                    runs.extend((LIBRARIES[lib][0], None, LIBRARIES[lib][1]) for lib in libraries)
                for name, bound, library in runs:
                    if (task.name, name, seed) in done:
                        continue
                    if x is None:
                        x, y, truth = task.make(args.n, seed)
                    start = time.perf_counter()
                    if library is None:
                        options = dict(bound=bound, seed=seed, max_steps=args.max_steps,
                                       progress=False, reducer_x=task.reducer)
                        if bound == "infonce":
                            options["batch_size"] = args.infonce_batch
                        value = estimate_mi(x, y, **options).mi
                    else:
                        value = library(x, y, seed)
                    if value is not None:
                        record(task, truth, name, seed, value, time.perf_counter() - start)
    finally:
        if sink is not None:
            sink.close()
    lines = table(rows)
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
