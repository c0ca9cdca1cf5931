"""torch CPU threads: 1 against 2 (or more), on the machine as it is and with every core kept busy.

    .venv/bin/python benchmarks/bench_threads.py                  # 1 vs 2 threads, 3 rounds (a few minutes)
    .venv/bin/python benchmarks/bench_threads.py --threads 1 4 --rounds 5

Two jobs a user runs on a CPU: (a) sampling 16 images at 20 steps (DPM-Solver++(3M), ``"data"``
grid) from the demo's UNet (28x28, width 16, 0.69M parameters) with blurring diffusion, and (b)
building ``BlurringDiffusion((3, 256, 256))`` (its validity check evaluates the schedule on a fine
time grid). Each job runs once per thread count per round, the counts interleaved in alternating
order, in two conditions: the machine as it is (other people's work included: say what ran
beside it when reporting), then with one busy-loop process per core started by this script and
stopped by it. Shared machines are noisy, so what to read is the ratio of the median times of the
same job, measured side by side in the same run: "2 / 1" above 1 means the extra thread is slower.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time

import torch

import lincorrupt as lc
from lincorrupt.nn import UNet

UNET = dict(image_size=28, in_channels=1, ch=16, ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[7], groups=8,
            dropout=0.0)  # the demo's network (examples/demo.py)


def sample_job() -> float:
    """Seconds to draw 16 samples at 20 network evaluations from the untrained demo UNet."""
    torch.manual_seed(0)
    corruption = lc.BlurringDiffusion((1, 28, 28), sigma_blur_max=20.0)
    corruption.fit_data_statistics(torch.rand(64, 1, 28, 28) * 2 - 1)  # the "data" grid needs some statistics
    model = lc.DiffusionModel(UNet(**UNET).eval(), corruption, "v")
    start = time.perf_counter()
    with torch.no_grad():
        model.sample(16, steps=20, method="dpm++3m", grid="data", generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def build_job() -> float:
    """Seconds to build ``BlurringDiffusion((3, 256, 256))``."""
    start = time.perf_counter()
    lc.BlurringDiffusion((3, 256, 256))
    return time.perf_counter() - start


JOBS = {"sample 16 images, 20 steps, demo UNet": sample_job, "build BlurringDiffusion((3, 256, 256))": build_job}


def _busy() -> None:  # pragma: no cover - runs in a child process until terminated
    while True:
        pass


def measure(thread_counts: list[int], rounds: int) -> dict[tuple[str, int], list[float]]:
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        order = thread_counts if r % 2 == 0 else thread_counts[::-1]  # alternate: drifting load hits both
        for name, job in JOBS.items():
            for n in order:
                torch.set_num_threads(n)
                times.setdefault((name, n), []).append(job())
    return times


def report(title: str, times: dict, thread_counts: list[int]) -> None:
    base = thread_counts[0]
    print(f"\n## {title}")
    head = " | ".join(f"{n} thread{'s' if n > 1 else ''} (s)" for n in thread_counts)
    ratios = " | ".join(f"{n} / {base}" for n in thread_counts[1:])
    print(f"| job | {head} | {ratios} |")
    print("|---" * (2 * len(thread_counts)) + "|")  # job, one column per count, one ratio per count but the first
    for name in JOBS:
        med = {n: statistics.median(times[name, n]) for n in thread_counts}
        cells = " | ".join(f"{med[n]:.2f} ({min(times[name, n]):.2f}-{max(times[name, n]):.2f})" for n in thread_counts)
        print(f"| {name} | {cells} | " + " | ".join(f"{med[n] / med[base]:.2f}" for n in thread_counts[1:]) + " |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="times each job runs per thread count and condition")
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy-loop processes of the loaded "
                        "condition (default: one per core)")
    args = parser.parse_args()
    if min(args.threads) < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be positive")
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}; load average before the run {os.getloadavg()[0]:.2f}; "
          f"median (min-max) of {args.rounds} rounds")
    sample_job(), build_job()  # warm up: imports, first allocations
    report("the machine as it is", measure(args.threads, args.rounds), args.threads)
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        time.sleep(1)
        report(f"with {args.busy} busy-loop process(es) beside it", measure(args.threads, args.rounds), args.threads)
    finally:
        for p in busy:
            p.terminate()
        for p in busy:
            p.join()
    print(f"\n# load average after the run {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
