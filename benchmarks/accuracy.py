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

Writes a Markdown table (stdout, and ``--out``) and a CSV of every run (``--csv``).
"""
from __future__ import annotations

import argparse
import csv
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
    """torch-mist's MINE, when the package is installed (optional environment)."""
    try:
        from torch_mist import estimate_mi as mist_estimate
    except ImportError:
        return None
    torch.manual_seed(seed)
    value = mist_estimate(x.reshape(len(x), -1), y.reshape(len(y), -1), estimator="mine",
                          max_iterations=5000, verbose=False)
    return float(value[0] if isinstance(value, tuple) else value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bounds", default="mine,nwj,smile,infonce")
    parser.add_argument("--infonce-batch", type=int, default=128,
                        help="InfoNCE's batch size (B^2 critic calls per step)")
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--tasks", default="", help="comma-separated substrings of task names")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--csv", help="write every run here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.n, args.seeds, args.max_steps = 1000, 1, 100
    bounds = args.bounds.split(",")
    wanted = [t for t in args.tasks.split(",") if t]
    chosen = [t for t in tasks() if not wanted or any(w in t.name for w in wanted)]
    rows, lines = [], []
    header = ("| task | truth | estimator | mean | std | error | seconds |\n"
              "|---|---:|---|---:|---:|---:|---:|")
    print(header, flush=True)
    lines.append(header)
    for task in chosen:
        estimators: dict[str, list[float]] = {}
        seconds: dict[str, list[float]] = {}
        truth = None
        for seed in range(args.seeds):
            x, y, truth = task.make(args.n, seed)
            task_bounds = ["mine"] if task.reducer else bounds
            for bound in task_bounds:
                options = dict(bound=bound, seed=seed, max_steps=args.max_steps, progress=False,
                               reducer_x=task.reducer)
                if bound == "infonce":
                    options["batch_size"] = args.infonce_batch
                start = time.perf_counter()
                result = estimate_mi(x, y, **options)
                name = f"mitoolkit {bound}" + (f" ({task.reducer})" if task.reducer else "")
                estimators.setdefault(name, []).append(result.mi)
                seconds.setdefault(name, []).append(time.perf_counter() - start)
            for name, estimate in (("sklearn KSG", knn_estimate), ("torch-mist MINE", torch_mist_estimate)):
                start = time.perf_counter()
                value = estimate(x, y, seed)
                if value is not None:
                    estimators.setdefault(name, []).append(value)
                    seconds.setdefault(name, []).append(time.perf_counter() - start)
        for name, values in estimators.items():
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else float("nan")
            line = (f"| {task.name} | {truth:.3f} | {name} | {mean:.3f} | {std:.3f} | "
                    f"{mean - truth:+.3f} | {statistics.fmean(seconds[name]):.1f} |")
            print(line, flush=True)
            lines.append(line)
            rows.extend({"task": task.name, "truth": truth, "estimator": name, "seed": i,
                         "estimate": v, "seconds": seconds[name][i]} for i, v in enumerate(values))
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
