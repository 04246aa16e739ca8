"""benchmarks/gpu.py --small runs on the CPU and prints every figure the full run prints."""
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_small_comparison_runs_on_the_cpu_and_prints_its_figures():
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.strip().splitlines()
    assert re.match(r"device=cpu N=600 layer=conv2 \(32x4x4\) methods=none,pca,gap,cnn seeds=3 "
                    r"raw_activations_mb=[\d.]+$", lines[0]), lines[0]
    for mode in ("one-by-one", "vectorized"):
        for method in ("none", "pca", "gap", "cnn"):
            assert any(re.match(rf"{mode} method={method} seconds=[\d.]+ steps_per_s=\d+ "
                                rf"mean_mi=-?[\d.]+$", line) for line in lines), (mode, method)
        assert any(re.match(rf"{mode} total seconds=[\d.]+ steps_per_s=\d+ "
                            r"peak_rss_above_start_mb=\d+ ratio_to_activations=[\d.]+ "
                            r"held_before_mb=-?\d+$", line)
                   for line in lines), mode
    assert re.match(r"speedup=[\d.]+$", lines[-1]), lines[-1]
