"""Benchmark: what MINE gets through each reducer on images whose true MI is known, and at what cost.

For each task (``dense``: every pixel mixes the latents; ``spatial``: the latents set where a blob
sits) and each method (baseline flatten, PCA-MINE, GAP-MINE, CNN-MINE), MINE runs with several
seeds on the same images. The table gives the estimate (mean ± std over seeds) against the truth,
the wall and CPU seconds per run, the steps trained (early stopping ends runs at different steps)
and the time ratios CNN / PCA and CNN / GAP.

Usage::

    python benchmarks/bench_reducers.py                 # N = 5000, 5 seeds, both tasks
    python benchmarks/bench_reducers.py --quick         # a smoke run in well under a minute
    python benchmarks/bench_reducers.py --json out.json # also save every run

By default torch and BLAS use one thread each: the runs are small, and on a shared machine one
thread per process gives steadier, comparable timings (``--threads 0`` leaves the defaults).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from mitoolkit import estimate_mi, synthetic
from mitoolkit.reducers import make_reducer

TASKS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray, float]]] = {
    "dense": lambda n, seed: synthetic.dense_image(n, d=2, rho=0.8, shape=(4, 8, 8), noise=0.1,
                                                   seed=seed),
    "spatial": lambda n, seed: synthetic.spatial_image(n, d=2, rho=0.8, size=8, seed=seed),
}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {  # label -> (reducer name, options)
    "none": ("none", {}),
    "pca": ("pca", {"n_components": 8}),
    "gap": ("gap", {}),
    "cnn": ("cnn", {}),
}


@dataclass(frozen=True)
class Run:
    task: str
    method: str
    seed: int
    true_mi: float
    mi: float
    stderr: float
    wall_seconds: float
    cpu_seconds: float
    fit_seconds: float
    steps: int
    features: int


def run_one(task: str, method: str, seed: int, data: tuple, max_steps: int) -> Run:
    x, y, true_mi = data
    name, options = METHODS[method]
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # flags are in the result
        result = estimate_mi(x, y, reducer_x=make_reducer(name, **options), max_steps=max_steps,
                             seed=seed, progress=False)
    info = result.options["reducer_x"]
    return Run(task, method, seed, true_mi, result.mi, result.stderr,
               time.perf_counter() - wall, time.process_time() - cpu, info["fit_seconds"],
               result.history.last_step, info["output_dim"])


def warm_up() -> None:
    """Pay one-time costs (imports, first kernels) outside the timed runs."""
    x, y, _ = synthetic.dense_image(600, seed=0)
    for name, options in METHODS.values():
        estimate_mi(x, y, reducer_x=make_reducer(name, **options), max_steps=5, eval_every=5,
                    batch_size=64, progress=False)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def table(runs: list[Run]) -> str:
    lines = []
    for task in dict.fromkeys(r.task for r in runs):
        rows = [r for r in runs if r.task == task]
        truth = rows[0].true_mi
        lines += [
            f"\n### task `{task}`: true I(X;Y) = {truth:.3f} nats, {len({r.seed for r in rows})} seeds\n",
            "| method | features | estimate (nats) | estimate - truth | wall s / run | CPU s / run "
            "| fit s | steps | ms / step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        per_method = {}
        for method in dict.fromkeys(r.method for r in rows):
            sel = [r for r in rows if r.method == method]
            mi, mi_sd = mean_std([r.mi for r in sel])
            wall, wall_sd = mean_std([r.wall_seconds for r in sel])
            cpu, _ = mean_std([r.cpu_seconds for r in sel])
            fit, _ = mean_std([r.fit_seconds for r in sel])
            steps, _ = mean_std([r.steps for r in sel])
            per_step = 1e3 * statistics.fmean(r.cpu_seconds / max(r.steps, 1) for r in sel)
            per_method[method] = (wall, cpu, per_step)
            lines.append(
                f"| {method} | {sel[0].features} | {mi:.3f} ± {mi_sd:.3f} | {mi - truth:+.3f} | "
                f"{wall:.1f} ± {wall_sd:.1f} | {cpu:.1f} | {fit:.3f} | {steps:.0f} | {per_step:.2f} |"
            )
        if "cnn" in per_method:
            for other in ("pca", "gap"):
                if other in per_method:
                    w, c, s = (a / b for a, b in zip(per_method["cnn"], per_method[other]))
                    lines.append(f"\nCNN / {other.upper()}: wall time x{w:.1f}, CPU time x{c:.1f}, "
                                 f"CPU time per step x{s:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="samples per task (default 5000)")
    parser.add_argument("--seeds", type=int, default=5, help="MINE seeds per method (default 5)")
    parser.add_argument("--steps", type=int, default=3000, help="most MINE steps (default 3000)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (default 1; 0 keeps the library defaults)")
    parser.add_argument("--quick", action="store_true", help="N=1200, 2 seeds, 200 steps")
    parser.add_argument("--json", help="also write every run to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.seeds, args.steps = 1200, 2, 200
    if args.threads > 0:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    warm_up()
    runs = []
    for task in args.tasks:
        data = TASKS[task](args.n, 0)  # one image set per task; the seeds vary MINE
        for method in args.methods:
            for seed in range(args.seeds):
                run = run_one(task, method, seed, data, args.steps)
                runs.append(run)
                print(f"{task:8s} {method:5s} seed {seed}: {run.mi:.3f} (truth {run.true_mi:.3f}) "
                      f"{run.wall_seconds:.1f}s {run.steps} steps", file=sys.stderr, flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"N = {args.n}, at most {args.steps} steps, torch threads = {torch.get_num_threads()}, "
          f"device = {device}")
    print(table(runs))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in runs], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
