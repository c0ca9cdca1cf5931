"""Soft Diffusion's momentum sampler beside ancestral sampling and DPM-Solver++(2M), at 28x28, exactly.

    .venv/bin/python benchmarks/bench_momentum.py            # NFE 5 ... 100 (857 s on a shared 2-core machine)
    .venv/bin/python benchmarks/bench_momentum.py --quick    # NFE 5 ... 50 (about half that)

Data: a Gaussian N(m, S) fitted to 10,000 Fashion-MNIST training images (28x28, D = 784, scaled to
[-1, 1], a 1e-4 ridge on S so that every direction has some variance), read with
lincorrupt.data.load_fashion_mnist from Debian's dataset-fashion-mnist package. For Gaussian data
the denoiser E[x | z_t] is affine and known in closed form, so every sampler is an affine map of
its start plus independent Gaussian noise, and the mean and covariance of what it generates are
computed exactly (no Monte Carlo) by lc.GaussianData.sample_kl: a sampler that draws no noise
(dpm++2m) is run by lincorrupt on the start's mean and the mean plus each column of a root of its
covariance; ancestral, momentum and naive steps are rules u_s = k_u u_t + k_x x_hat + sqrt(v) n per
basis coordinate, whose mean and covariance it propagates with the sampler's own (k_u, k_x, v).

Every sampler starts from the exact q(u_1) (the full-covariance Gaussian), so the prior adds no error;
with Soft Diffusion's noise floor sigma_0 = 0.01 every sampler returns a posterior mean E[x | z_0], whose
own KL to the data (about 0.93 nats at 28x28) is part of every number. The error is KL(generated || data)
in nats per image.
Corruptions: SoftDiffusion with 32 blur levels chosen by SoftDiffusion.fit (W2 levels in
[0.01, 23] px, noise 0.01 to 0.1), IHDM and blurring diffusion with their defaults.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the machines are shared
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402
from lincorrupt.data import load_fashion_mnist  # noqa: E402

f64 = torch.float64
SHAPE = (1, 28, 28)


def fashion_mnist(num_images: int) -> torch.Tensor:
    images, _ = load_fashion_mnist(train=True)
    return images[:num_images].to(f64) / 127.5 - 1


def corruptions(x: torch.Tensor) -> dict:
    return {"soft": lc.SoftDiffusion.fit(x, num_levels=32, sigma_blur_max=23.0), "ihdm": lc.IHDM(SHAPE),
            "blurring": lc.BlurringDiffusion(SHAPE)}


RUNS = (("ancestral", "uniform"), ("naive", "uniform"), ("momentum", "uniform"), ("momentum", "logsnr"),
        ("dpm++2m", "uniform"), ("dpm++2m", "logsnr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="NFE 5 ... 50 only")
    parser.add_argument("--images", type=int, default=10000, help="Fashion-MNIST images to fit the Gaussian to")
    args = parser.parse_args()
    torch.set_num_threads(1)
    nfes = [5, 10, 20, 50] if args.quick else [5, 10, 20, 50, 100]
    start = time.perf_counter()
    x = fashion_mnist(args.images)
    print(f"# bench_momentum: KL(generated || data) in nats per 28x28 image (D=784), exact moments from the exact "
          f"q(u_1); data: a Gaussian fitted to {len(x)} Fashion-MNIST training images")
    header = f"| {'corruption':10} | {'sampler':9} | {'grid':7} | " + " | ".join(f"{n:>7}" for n in nfes) + " |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    data = lc.GaussianData.fit(x, ridge=1e-4)
    for name, c in corruptions(x).items():
        for method, grid in RUNS:
            errors = [float(data.sample_kl(c, method, n, grid, exact_prior=True)) for n in nfes]
            cells = ["inf" if not math.isfinite(e) else f"{e:.3g}" for e in errors]
            print(f"| {name:10} | {method:9} | {grid:7} | " + " | ".join(f"{v:>7}" for v in cells) + " |", flush=True)
    print(f"\n(total time {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
