"""Every registered sampler and time grid for Soft Diffusion at 28x28, with the exact denoiser: the sweep
behind ``SoftDiffusion.fast_sampling``.

    .venv/bin/python benchmarks/bench_soft_samplers.py --nfes 20                 # every corruption below at 20 NFE
    .venv/bin/python benchmarks/bench_soft_samplers.py --nfes 10 20 50 --corruptions default

Data: a Gaussian (1e-4 ridge) fitted to 10,000 Fashion-MNIST training images, whose denoiser
E[x | z_t] is exact (bench_samplers.py's whole-image oracle: every sampler starts from the exact
q(u_1), and the mean and covariance of what it generates are computed exactly). The error is
KL(generated || data) in nats per 28x28 image. Corruptions (``--corruptions``): "default",
``SoftDiffusion((1, 28, 28))`` (equally spaced levels up to the scaled 10.06 px); "23px", the same
up to the paper's unscaled 23 px; "fit", ``SoftDiffusion.fit(images, num_levels=32)`` (W2 levels
up to 10.06 px); "fit-23px", the W2 levels up to 23 px of the Results page's model. Each has
``fit_data_statistics`` called on the images (the "data" grid needs it).

With the default noise_min = 0.01 every sampler ends on a posterior mean E[x | z_0] rather than a
sample of the data, so even an exact sampler keeps a floor: the KL of the exact marginal of
E[x | z_0] (printed as "floor" for each corruption). The KL above it is the sampler's error.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the machines are shared
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_samplers import FullOracle, fmt, output_moments, real_images  # noqa: E402


def posterior_mean_floor(oracle: FullOracle) -> float:
    """KL of the exact E[x | z_0] with z_0 ~ q(z_0): what a perfect sampler that returns the last
    denoised estimate generates (mean mu, covariance G (a C a + s^2) G^T at t = 0)."""
    c = oracle.coefficients(0.0)
    a, s = c.alpha.numpy(), c.sigma.numpy()
    G, _ = oracle._gain(0.0)
    K = a[:, None] * oracle.C * a[None] + np.diag(s**2)
    return oracle.kl(oracle.mu, G @ K @ G.T)


CORRUPTIONS = {"default": lambda x: lc.SoftDiffusion((1, 28, 28)),
               "23px": lambda x: lc.SoftDiffusion((1, 28, 28), sigma_blur_max=23.0),
               "fit": lambda x: lc.SoftDiffusion.fit(x, num_levels=32),
               "fit-23px": lambda x: lc.SoftDiffusion.fit(x, num_levels=32, sigma_blur_max=23.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nfes", type=int, nargs="+", default=[10, 20, 50], help="network evaluations per run")
    parser.add_argument("--images", type=int, default=10000, help="Fashion-MNIST images to fit the Gaussian to")
    parser.add_argument("--corruptions", nargs="+", choices=sorted(CORRUPTIONS), default=list(CORRUPTIONS),
                        help="which Soft Diffusion settings (default all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, numpy {np.__version__}, one thread")
    start = time.perf_counter()
    x, source = real_images("fashion-mnist", None, args.images)
    print(f"# KL(generated || data) in nats per 28x28 image (D=784), exact moments from the exact q(u_1); "
          f"data: a Gaussian (1e-4 ridge) fitted to {source}")
    corruptions = {name: CORRUPTIONS[name](x) for name in args.corruptions}
    header = (f"| {'corruption':10} | {'sampler':9} | {'grid':7} | " + " | ".join(f"{n:>7}" for n in args.nfes)
              + " |")
    for name, c in corruptions.items():
        c.fit_data_statistics(x)
        oracle = FullOracle(c, x)
        kl = {}
        for grid in lc.GRIDS:
            for n in args.nfes:  # every sampler on one grid evaluates the same times: one gain cache for them
                times = lc.GRIDS[grid](c, n)
                for method in lc.SAMPLERS:
                    kl[method, grid, n] = oracle.kl(*output_moments(oracle, method, times))
                oracle.gains = {}
            print(f"# {name}: {grid} grid done ({time.perf_counter() - start:.0f} s)", flush=True)
        print(f"\n## {name}: {c!r}; floor (exact E[x | z_0]) {fmt(posterior_mean_floor(oracle))} nats "
              f"({time.perf_counter() - start:.0f} s)")
        print(header)
        print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
        for method in lc.SAMPLERS:
            for grid in lc.GRIDS:
                print(f"| {name:10} | {method:9} | {grid:7} | "
                      + " | ".join(f"{fmt(kl[method, grid, n]):>7}" for n in args.nfes) + " |", flush=True)
        for n in args.nfes:
            best = sorted((v, f"{m}/{g}") for (m, g, k), v in kl.items() if k == n)[:3]
            print(f"{name}, {n} NFE: best " + ", ".join(f"{pair} {fmt(v)}" for v, pair in best))
    print(f"\n(total time {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
