"""benchmarks/bench_gpu.py --tiny runs every comparison end to end (on the CPU here: no compile, no DDP)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_prints_every_table():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for name in ("fp32", "bf16", "bf16 + channels_last", "through our Trainer", "through diffusers' usual loop",
                 "ancestral", "ancestral + CUDA graph", "dpm++2m", "dpm++2m + CUDA graph",
                 "diffusers DDPMPipeline + DPMSolverMultistepScheduler"):
        assert name in rows, (name, proc.stdout)
        value = float(rows[name].split("|")[2])
        assert value > 0, rows[name]
