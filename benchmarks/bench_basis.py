"""How fast is DCTBasis? Forward + inverse against torch_dct and scipy's pocketfft, side by side.

    .venv/bin/python benchmarks/bench_basis.py            # full run, about a minute
    .venv/bin/python benchmarks/bench_basis.py --quick    # fewer repeats

Prints, for one and two threads:
  1. DCTBasis.to_basis + from_basis on 128x3x32x32 and 16x3x256x256 float32 against
     torch_dct (the FFT-based DCT the IHDM reference code vendors) and scipy.fft.dctn/idctn,
     as ratios (> 1: DCTBasis is faster), and the achieved fraction of this machine's
     measured float32 matmul FLOP rate;
  2. the crossover between the dense-matmul and pocketfft paths (which justifies
     lincorrupt.basis.CPU_FFT_MIN_PIXELS);
  3. one diffuse + one posterior step of BlurringDiffusion relative to the forward pass of a
     small conv net on the same batch.
Candidates are timed round-robin (best of N) so that machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import math
import time

import scipy.fft
import torch
import torch_dct
from torch import nn

import lincorrupt as lc
from lincorrupt import basis as basis_module


def best_times(fns: dict, repeats: int) -> dict:
    """Best wall time of each callable, timed round-robin."""
    for f in fns.values():
        f()  # warm up caches and lazily built matrices
    best = {k: math.inf for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def matmul_flop_rate(repeats: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = best_times({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * 1024**3 / t


def dct_flops(shape) -> float:
    """Flops of one forward + inverse transform by the path DCTBasis takes for this shape."""
    h, w = shape[-2:]
    n = math.prod(shape)
    if h * w >= basis_module.CPU_FFT_MIN_PIXELS:
        return 2 * 2.5 * n * math.log2(h * w)  # the usual FFT count, 2.5 N log2 N per real transform
    if h * w <= basis_module.KRON_MAX_PIXELS:
        return 2 * 2 * n * h * w
    return 2 * 2 * n * (h + w)


def compare_dct(shape, threads: int, repeats: int, peak: float) -> str:
    x = torch.randn(shape)
    basis = lc.DCTBasis(*shape[-2:])
    xn = x.numpy()
    times = best_times({
        "lincorrupt": lambda: basis.from_basis(basis.to_basis(x)),
        "torch_dct": lambda: torch_dct.idct_2d(torch_dct.dct_2d(x, norm="ortho"), norm="ortho"),
        "scipy": lambda: scipy.fft.idctn(scipy.fft.dctn(xn, axes=(-2, -1), norm="ortho", workers=threads),
                                         axes=(-2, -1), norm="ortho", workers=threads),
    }, repeats)
    ours = times["lincorrupt"]
    rate = dct_flops(shape) / ours
    return (f"| {'x'.join(map(str, shape))} | {threads} | {ours * 1e3:.2f} | {times['torch_dct'] * 1e3:.2f} | "
            f"{times['scipy'] * 1e3:.2f} | {times['torch_dct'] / ours:.1f}x | {times['scipy'] / ours:.2f}x | "
            f"{rate / peak:.0%} |")


def crossover(threads: int, repeats: int) -> list[str]:
    rows = []
    for n in (16, 32, 48, 64, 96, 128):
        x = torch.randn(max(1, 2**21 // (n * n)), n, n)
        d = basis_module.dct_matrix(n, torch.float32)
        times = best_times({
            "matmul": lambda d=d, x=x: torch.matmul(d, torch.matmul(x, d.mT)),
            "pocketfft": lambda x=x: scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho", workers=threads),
        }, repeats)
        rows.append(f"| {n}x{n} | {threads} | {times['matmul'] * 1e3:.2f} | {times['pocketfft'] * 1e3:.2f} | "
                    f"{times['pocketfft'] / times['matmul']:.2f} |")
    return rows


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions with 64 channels: a stand-in for the smallest useful denoiser."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1),
                                 nn.SiLU(), nn.Conv2d(64, 3, 3, padding=1))

    def forward(self, x):
        return self.net(x)


@torch.no_grad()
def step_cost(threads: int, repeats: int) -> str:
    c = lc.BlurringDiffusion((3, 32, 32))
    net = SmallConvNet()
    x = torch.randn(128, 3, 32, 32)
    t, s = torch.full((128,), 0.5), torch.full((128,), 0.49)
    z, _ = c.diffuse(x, t)
    times = best_times({
        "diffuse+posterior": lambda: (c.diffuse(x, t), c.posterior(z, x, s, t)),
        "conv net": lambda: net(x),
    }, repeats)
    return (f"| {threads} | {times['diffuse+posterior'] * 1e3:.2f} | {times['conv net'] * 1e3:.2f} | "
            f"{times['diffuse+posterior'] / times['conv net']:.1%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20
    print(f"torch {torch.__version__}, scipy {scipy.__version__}, CPU_FFT_MIN_PIXELS = "
          f"{basis_module.CPU_FFT_MIN_PIXELS}, KRON_MAX_PIXELS = {basis_module.KRON_MAX_PIXELS}\n")
    dct_rows, cross_rows, step_rows = [], [], []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peak = matmul_flop_rate(repeats)
        print(f"{threads} thread(s): float32 matmul 1024^3 runs at {peak / 1e9:.0f} GFLOP/s")
        dct_rows += [compare_dct(shape, threads, repeats, peak) for shape in ((128, 3, 32, 32), (16, 3, 256, 256))]
        cross_rows += crossover(threads, repeats)
        step_rows.append(step_cost(threads, repeats))
    print("\nDCT forward + inverse, float32 (ms; ratios > 1 mean DCTBasis is faster)\n")
    print("| shape | threads | DCTBasis | torch_dct | scipy | vs torch_dct | vs scipy | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(dct_rows))
    print("\nForward DCT by dense matmul vs pocketfft, 2M pixels per batch (ms; ratio > 1: matmul faster)\n")
    print("| image | threads | matmul | pocketfft | pocketfft / matmul |")
    print("|---|---|---|---|---|")
    print("\n".join(cross_rows))
    print("\nOne BlurringDiffusion diffuse + posterior vs a 3-layer 64-channel conv net forward, 128x3x32x32\n")
    print("| threads | diffuse + posterior (ms) | conv net (ms) | relative cost |")
    print("|---|---|---|---|")
    print("\n".join(step_rows))


if __name__ == "__main__":
    main()
