"""Steps per second of estimate_mi against a bare hand-written PyTorch MINE loop.

Both train the same critic (concatenated pair, 2 hidden ELU layers of 128) with the same batch size
and the same bias-corrected DV loss, in the same process, on the same data. estimate_mi's time
includes what a real run does besides the bare steps: the held-out evaluations every 50 steps.
Reported as a ratio of CPU-time rates (goal: at least 0.9); one thread, so CPU time is busy time. Usage: python benchmarks/bench_mine.py [--steps 2000]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from mitoolkit import Callback, estimate_mi, synthetic
from mitoolkit.devices import resolve_device


class StepClock(Callback):
    """CPU time of this process from the first step to the last one (steadier than wall time on a shared machine)."""

    def on_start(self, info):
        self.start = time.process_time()
        self.steps = 0

    def on_step(self, step, train_bound):
        self.steps = step
        self.end = time.process_time()


def bare_loop(x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, device: torch.device) -> float:
    """A plain MINE loop: returns steps per second."""
    torch.manual_seed(0)
    critic = nn.Sequential(
        nn.Linear(x.shape[1] + y.shape[1], 128), nn.ELU(), nn.Linear(128, 128), nn.ELU(),
        nn.Linear(128, 1),
    ).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=5e-4)
    x, y = x.to(device), y.to(device)
    n = x.shape[0]
    log_ema = None
    start = time.process_time()
    for _ in range(steps):
        idx = torch.randint(n, (batch,), device=device)
        xb, yb = x[idx], y[idx]
        t_joint = critic(torch.cat([xb, yb], dim=1)).squeeze(1)
        t_marg = critic(torch.cat([xb, yb.roll(1, 0)], dim=1)).squeeze(1)
        lme = torch.logsumexp(t_marg, 0) - math.log(batch)
        log_ema = lme.detach() if log_ema is None else torch.logaddexp(
            log_ema + math.log(0.99), lme.detach() + math.log(0.01))
        loss = -(t_joint.mean() - torch.exp(lme - log_ema))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.process_time() - start)


def toolkit_rate(x, y, steps: int, batch: int, device: torch.device) -> float:
    clock = StepClock()
    estimate_mi(x, y, max_steps=steps, patience=10**6, batch_size=batch, device=device,
                callbacks=[clock], progress=False)
    return clock.steps / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    x, y, _ = synthetic.correlated_gaussian(5000, d=args.dim, rho=0.8)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    x_t, y_t = (x_t - x_t.mean(0)) / x_t.std(0), (y_t - y_t.mean(0)) / y_t.std(0)
    bare_loop(x_t, y_t, 100, args.batch_size, device)  # warm-up
    ratios = []
    for repeat in range(args.repeats):  # interleaved, so machine load hits both alike
        bare = bare_loop(x_t, y_t, args.steps, args.batch_size, device)
        ours = toolkit_rate(x, y, args.steps, args.batch_size, device)
        ratios.append(ours / bare)
        print(f"repeat {repeat}: bare {bare:.0f} steps/s, estimate_mi {ours:.0f} steps/s, "
              f"ratio {ours / bare:.3f}")
    ratios.sort()
    print(f"device={device} d={args.dim} batch={args.batch_size} steps={args.steps} "
          f"threads={args.threads}")
    print(f"median_ratio={ratios[len(ratios) // 2]:.3f}")


if __name__ == "__main__":
    main()
