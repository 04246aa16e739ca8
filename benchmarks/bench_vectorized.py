"""K seeds in one vectorized pass (estimate_mi_seeds) against K separate estimate_mi runs, on the CPU.

Same process, same data, same options; a fixed number of steps (patience larger than the budget,
so every run does exactly ``--steps`` steps). Times are CPU time of this process on one thread
(steady on a shared machine) and wall time; both include the held-out evaluations and the final
test estimate. The last line is ``ratio_10_vs_1=<CPU time of 10 seeds vectorized / of 1 seed>``
(goal: at most 3).

Usage: python benchmarks/bench_vectorized.py [--steps 300] [--width 128] [--n 5000]
"""
from __future__ import annotations

import argparse
import time

import torch

from mitoolkit import estimate_mi, estimate_mi_seeds, synthetic


def timed(fn) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn()."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 10])
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, truth = synthetic.correlated_gaussian(args.n, d=5, rho=0.8)
    options = dict(max_steps=args.steps, patience=10**9, width=args.width, device="cpu",
                   cpu_threads=1, progress=False)
    estimate_mi_seeds(x, y, seeds=[0, 1], **dict(options, max_steps=20))  # warm-up
    print(f"N={args.n}, d=5 (true MI {truth:.3f} nats), {args.steps} steps, width {args.width}, "
          "1 thread")
    print(f"{'K':>3} {'vectorized cpu s':>17} {'separate cpu s':>15} {'speed-up':>9} "
          f"{'vectorized wall s':>18} {'separate wall s':>16}")
    vectorized: dict[int, float] = {}
    for k in args.ks:
        seeds = list(range(k))
        vec_cpu, vec_wall = timed(lambda: estimate_mi_seeds(x, y, seeds=seeds, **options))
        sep_cpu, sep_wall = timed(lambda: [estimate_mi(x, y, seed=s, **options) for s in seeds])
        vectorized[k] = vec_cpu
        print(f"{k:>3} {vec_cpu:>17.2f} {sep_cpu:>15.2f} {sep_cpu / vec_cpu:>8.2f}x "
              f"{vec_wall:>18.2f} {sep_wall:>16.2f}")
    if 1 in vectorized and 10 in vectorized:
        print(f"ratio_10_vs_1={vectorized[10] / vectorized[1]:.2f}")


if __name__ == "__main__":
    main()
