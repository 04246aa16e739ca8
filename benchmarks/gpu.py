"""The paper's comparison at paper scale, one estimate at a time and vectorized over seeds.

Paper scale (default): 5,000 CIFAR-shaped images (3x32x32; a synthetic stand-in whose labels
show in the images, since the benchmark must run where CIFAR is absent) through the untrained
ReferenceCNN (image_size=32, width 16), layer conv2 (32x16x16 = 8,192 features); I(T; Y) with
Y the one-hot label, for the methods none / pca / gap / cnn x 10 seeds, with estimate_mi's
default options (early stopping on). First every (method, seed) one by one with estimate_mi, then
each method's seeds in one estimate_mi_seeds pass (cnn, a trainable reducer, still runs seed by
seed). Prints seconds, critic steps per second and peak memory (GPU: max_memory_allocated; CPU:
the peak resident set size during each mode's comparison, above the process after its imports, so
that it counts the activations themselves; against their raw size; the peak is reset before each
mode, so that making the stand-in activations does not count).

Goal: the full comparison in under 60 s on one H200. ``--small`` runs a tiny version on the CPU
(8x8 images, 3 seeds, 60 steps) so that the script is tested without a GPU.

Usage: python benchmarks/gpu.py [--small] [--device auto] [--seeds 10] [--max-steps N]
       [--mode both|one-by-one|vectorized] [--methods none,pca,gap,cnn] [--preprocess auto]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import time
from typing import Any

import torch

from mitoolkit import estimate_mi, estimate_mi_seeds
from mitoolkit.devices import resolve_device
from mitoolkit.layers import collect_activations
from mitoolkit.models import ReferenceCNN
from mitoolkit.reducers import make_reducer

PAPER = dict(n=5000, image_size=32, seeds=10, options={})
SMALL = dict(n=600, image_size=8, seeds=3,
             options=dict(max_steps=60, eval_every=20, batch_size=64, width=32, eval_marginals=16))


def stand_in_images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped images (n, 3, size, size) whose class shows as a faint per-class pattern."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    patterns = torch.randn(10, 3, size, size, generator=generator)
    images = patterns[labels] + torch.randn(n, 3, size, size, generator=generator)
    return images, labels


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (or the start), in MiB."""
    return _status_mb("VmHWM")


def reset_peak_rss() -> None:
    """Start a new peak: Linux resets VmHWM to the current RSS when 5 is written to clear_refs."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def release_freed_memory() -> None:
    """Hand memory that was freed but kept by the C allocator back to the system (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: peak so far


def reducer_for(method: str, dim: int) -> Any:
    if method == "pca":
        return make_reducer("pca", n_components=min(32, dim), seed=0)
    if method == "cnn":
        return make_reducer("cnn")
    return make_reducer(method)


def run_mode(mode: str, t: torch.Tensor, y: torch.Tensor, methods: list[str], seeds: list[int],
             options: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Every (method, seed) once; returns seconds, critic steps and mean MI per method."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    dim = int(t[0].numel())
    total_steps, started = 0, time.perf_counter()
    for method in methods:
        method_started = time.perf_counter()
        common = dict(reducer_x=reducer_for(method, dim), device=device, progress=False, **options)
        if mode == "vectorized":
            results = estimate_mi_seeds(t, y, seeds=seeds, **common)
        else:
            results = [estimate_mi(t, y, seed=s, **dict(common, reducer_x=reducer_for(method, dim)))
                       for s in seeds]
        steps = sum(len(r.history) for r in results)
        seconds = time.perf_counter() - method_started
        total_steps += steps
        mean_mi = sum(r.mi for r in results) / len(results)
        print(f"{mode} method={method} seconds={seconds:.2f} steps_per_s={steps / seconds:.0f} "
              f"mean_mi={mean_mi:.3f}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": total_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny scale, for the CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--mode", choices=["both", "one-by-one", "vectorized"], default="both")
    parser.add_argument("--methods", default="none,pca,gap,cnn")
    parser.add_argument("--preprocess", default=None, help="estimate_mi's preprocess (default auto)")
    args = parser.parse_args()
    scale = SMALL if args.small else PAPER
    device = resolve_device(args.device)
    seeds = list(range(args.seeds or scale["seeds"]))
    options = dict(scale["options"])
    if args.max_steps is not None:
        options["max_steps"] = args.max_steps
    if args.preprocess is not None:
        options["preprocess"] = args.preprocess
    if device.type == "cpu":
        torch.set_num_threads(1)
    methods = args.methods.split(",")

    baseline_mb = rss_mb()
    images, labels = stand_in_images(scale["n"], scale["image_size"])
    model = ReferenceCNN(in_channels=3, image_size=scale["image_size"], width=16)
    t = collect_activations(model, (images, labels), "conv2", device=device)["conv2"]
    y = torch.nn.functional.one_hot(labels, 10).float()
    del images, model
    gc.collect()
    raw_mb = t.numel() * t.element_size() / 2**20
    shape = "x".join(str(s) for s in t.shape[1:])
    print(f"device={device} N={len(t)} layer=conv2 ({shape}) methods={','.join(methods)} "
          f"seeds={len(seeds)} raw_activations_mb={raw_mb:.1f}", flush=True)

    modes = ["one-by-one", "vectorized"] if args.mode == "both" else [args.mode]
    totals = {}
    for mode in modes:
        gc.collect()
        release_freed_memory()
        before_mb = rss_mb()
        if device.type == "cpu":
            reset_peak_rss()
        totals[mode] = run_mode(mode, t, y, methods, seeds, options, device)
        if device.type == "cuda":
            peak = f"peak_gpu_mb={torch.cuda.max_memory_allocated(device) / 2**20:.0f}"
        else:
            extra = peak_rss_mb() - baseline_mb
            peak = (f"peak_rss_above_start_mb={extra:.0f} ratio_to_activations={extra / raw_mb:.2f} "
                    f"held_before_mb={before_mb - baseline_mb:.0f}")
        print(f"{mode} total seconds={totals[mode]['seconds']:.2f} "
              f"steps_per_s={totals[mode]['steps'] / totals[mode]['seconds']:.0f} {peak}", flush=True)
    if len(totals) == 2:
        print(f"speedup={totals['one-by-one']['seconds'] / totals['vectorized']['seconds']:.2f}")


if __name__ == "__main__":
    main()
