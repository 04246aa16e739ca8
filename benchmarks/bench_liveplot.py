"""How much does drawing a run live with LivePlot slow MINE training?

The same estimate (same data, seed and step count; early stopping off) is run in one process in
three arms, interleaved and repeated:

* ``plain``: no callback;
* ``noop``: a callback whose ``on_step`` does nothing (isolates the estimator's per-step hook cost,
  which on a GPU includes one device sync per step);
* ``liveplot``: :class:`mitoolkit.widgets.LivePlot` at its default rate.

Training speed is steps per second between ``on_start`` and ``on_end`` (setup and the final test
evaluation, identical in every arm, are left out), by the wall clock and by the CPU time of the
training thread (less disturbed by other processes on a shared machine). The ratio liveplot / plain
is the cost of the live plot; the median over repeats is reported. The time spent inside
LivePlot's own hooks, as a share of the training time, is measured directly as well: it does not
depend on how busy the machine is.

``--kernel`` runs the measurement inside a Jupyter kernel (started with jupyter_client), where the
FigureWidget has a comm and each update is really serialized and sent, as in a notebook.

Usage::

    .venv/bin/python benchmarks/bench_liveplot.py [--steps 800] [--repeats 3] [--threads 1] [--kernel]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

ARMS = ("plain", "noop", "liveplot")


def measure(steps: int, repeats: int, threads: int, device: str, n: int, dim: int) -> dict:
    """Run the three arms ``repeats`` times each, interleaved; return steps/s per arm and run."""
    import torch

    from mitoolkit import Callback, estimate_mi, synthetic
    from mitoolkit.widgets import LivePlot

    class Timer(Callback):
        def on_start(self, info):
            self.t0, self.c0 = time.perf_counter(), time.thread_time()

        def on_end(self, result):
            steps = result.history.last_step
            self.wall = time.perf_counter() - self.t0
            self.rate = steps / self.wall
            self.cpu_rate = steps / (time.thread_time() - self.c0)

    class TimedLivePlot(LivePlot):
        """LivePlot that adds up the wall time spent in its hooks."""

        inside = 0.0

        def on_step(self, step, train_bound):
            t0 = time.perf_counter()
            super().on_step(step, train_bound)
            self.inside += time.perf_counter() - t0

        def on_eval(self, step, heldout):
            t0 = time.perf_counter()
            super().on_eval(step, heldout)
            self.inside += time.perf_counter() - t0

        def on_end(self, result):
            t0 = time.perf_counter()
            super().on_end(result)
            self.inside += time.perf_counter() - t0

    class NoOp(Callback):
        def on_step(self, step, train_bound):
            return None

    if threads:
        torch.set_num_threads(threads)
    x, y, _ = synthetic.correlated_gaussian(n, d=dim, rho=0.8, seed=0)
    options = dict(max_steps=steps, patience=10**9, progress=False, device=device, seed=0)
    estimate_mi(x, y, **{**options, "max_steps": 20})  # warm-up: allocations, lazy imports
    LivePlot()  # the first FigureWidget pays a one-off import/setup cost
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu_rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    flushes: list[int] = []
    hook_share: list[float] = []
    for _ in range(repeats):
        for arm in ARMS:
            timer = Timer()
            extra = {"plain": [], "noop": [NoOp()], "liveplot": [TimedLivePlot()]}[arm]
            estimate_mi(x, y, callbacks=[timer, *extra], **options)
            rates[arm].append(timer.rate)
            cpu_rates[arm].append(timer.cpu_rate)
            if arm == "liveplot":
                flushes.append(extra[0].flushes)
                hook_share.append(extra[0].inside / timer.wall)
    return {"rates": rates, "cpu_rates": cpu_rates, "flushes": flushes, "hook_share": hook_share,
            "threads": torch.get_num_threads(), "device": str(device), "steps": steps, "n": n,
            "dim": dim}


def report(data: dict) -> str:
    lines = [
        f"MINE, N={data['n']}, d={data['dim']}, {data['steps']} steps per run, device {data['device']}, "
        f"{data['threads']} torch thread(s), {len(data['rates']['plain'])} interleaved repeats",
    ]
    for key, clock in (("rates", "wall"), ("cpu_rates", "CPU")):
        rates = data[key]
        for arm in ARMS:
            values = ", ".join(f"{r:.1f}" for r in rates[arm])
            lines.append(f"  {arm:9s} steps/s ({clock:4s}): median {statistics.median(rates[arm]):7.1f}   ({values})")
        for arm in ("noop", "liveplot"):
            ratios = [a / b for a, b in zip(rates[arm], rates["plain"])]
            lines.append(
                f"  {arm}/plain speed ratio ({clock}): median {statistics.median(ratios):.3f} "
                f"(per repeat {', '.join(f'{r:.3f}' for r in ratios)})"
            )
    shares = data["hook_share"]
    lines.append(
        f"  time inside LivePlot hooks: median {statistics.median(shares):.2%} of training "
        f"(per repeat {', '.join(f'{s:.2%}' for s in shares)})"
    )
    lines.append(f"  figure updates per liveplot run: {data['flushes']}")
    return "\n".join(lines)


def run_in_kernel(args: argparse.Namespace) -> dict:
    """Execute :func:`measure` inside a fresh IPython kernel and bring its numbers back."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    outputs: list[str] = []

    def collect(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            outputs.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            outputs.append("\n".join(msg["content"]["traceback"]))

    code = (
        f"import sys, json; sys.path.insert(0, {sys.path[0]!r})\n"
        "from bench_liveplot import measure\n"
        f"print('RESULT' + json.dumps(measure({args.steps}, {args.repeats}, {args.threads}, "
        f"{args.device!r}, {args.n}, {args.dim})))\n"
    )
    try:
        kc.execute_interactive(code, output_hook=collect, timeout=3600)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(outputs)
    for line in text.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"the kernel run gave no result:\n{text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--kernel", action="store_true", help="measure inside a Jupyter kernel")
    args = parser.parse_args(argv)
    if args.kernel:
        data = run_in_kernel(args)
        print("(inside a Jupyter kernel: widget updates go out as comm messages)")
    else:
        data = measure(args.steps, args.repeats, args.threads, args.device, args.n, args.dim)
        print("(plain Python process: no kernel, widget updates are not sent anywhere)")
    print(report(data))


if __name__ == "__main__":
    main()
