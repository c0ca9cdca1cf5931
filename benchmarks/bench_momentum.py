"""Soft Diffusion's momentum sampler beside ancestral sampling and DPM-Solver++(2M), at 28x28, exactly.

    .venv/bin/python benchmarks/bench_momentum.py            # NFE 5 ... 100 (857 s on a shared 2-core machine)
    .venv/bin/python benchmarks/bench_momentum.py --quick    # NFE 5 ... 50 (about half that)

Data: a Gaussian N(m, S) fitted to 10,000 Fashion-MNIST training images (28x28, D = 784, scaled to
[-1, 1], a 1e-4 ridge on S so that every direction has some variance), read with
lincorrupt.data.load_fashion_mnist from Debian's dataset-fashion-mnist package. For Gaussian data
the denoiser E[x | z_t] is affine and known in closed form, so every sampler is an affine map of
its start plus independent Gaussian noise, and the mean and covariance of what it generates are
computed exactly (no Monte Carlo):

- dpm++2m (deterministic) runs lincorrupt's own code on the start's mean and the mean plus each
  column of a square root of its covariance; the differences are the output covariance's root;
- ancestral, momentum and naive steps are all u_s = k_u u_t + k_x x_hat + sqrt(v) n per basis
  coordinate; mean and covariance are propagated step by step, with ancestral's (k_u, k_x, v) from
  lincorrupt's posterior coefficients and momentum's r = sigma_s^2 / sigma_t^2,
  (k_u, k_x, v) = (r, alpha_s - r alpha_t, max(sigma_t^2 - sigma_s^2, 0)) (the step of
  lincorrupt.sampling.momentum, whose code tests/test_momentum_sampler.py checks against it).

Every sampler starts from the exact q(u_1) (the full-covariance Gaussian), so the error is the
sampler's alone, not the prior's. The error is KL(generated || data) in nats per image.
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

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402
from lincorrupt.coefficients import Coefficients, posterior_coefficients  # noqa: E402
from lincorrupt.data import load_fashion_mnist  # noqa: E402

f64 = torch.float64
SHAPE = (1, 28, 28)


def fashion_mnist(num_images: int) -> torch.Tensor:
    images, _ = load_fashion_mnist(train=True)
    return images[:num_images].to(f64) / 127.5 - 1


class Oracle:
    """Gaussian data N(m, S) through a corruption, in its basis coordinates u = x A (A: V as a matrix)."""

    def __init__(self, corruption, x: torch.Tensor):
        self.c, self.shape, self.D = corruption, corruption.shape, math.prod(corruption.shape)
        flat = x.reshape(len(x), self.D).numpy()
        self.m, self.cov = flat.mean(0), np.cov(flat.T) + 1e-4 * np.eye(self.D)
        eye = torch.eye(self.D, dtype=f64).view(self.D, *self.shape)
        self.A = corruption.basis.to_basis(eye).reshape(self.D, -1).numpy()  # row j: V^T e_j
        self.mu, self.C = self.m @ self.A, self.A.T @ self.cov @ self.A
        self.gains = {}  # t -> (G, b): every sampler on a grid evaluates the same times

    def coefficients(self, t: float) -> Coefficients:
        log_a, log_s = self.c.log_alpha_sigma(torch.tensor([t], dtype=f64))
        return Coefficients(log_a.expand(1, *self.shape).reshape(self.D), log_s.expand(1, *self.shape).reshape(self.D))

    def denoiser(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """E[u_x | u_t] = G u_t + b with G = C a (a C a + s^2)^-1 (Gaussian conditioning)."""
        if t not in self.gains:
            if len(self.gains) >= 128:  # D x D each: keep the newest (one grid's times), not every time seen
                self.gains.pop(next(iter(self.gains)))
            self.gains[t] = self._gain(t)
        return self.gains[t]

    def _gain(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        c = self.coefficients(t)
        a, s = c.alpha.numpy(), c.sigma.numpy()
        K = a[:, None] * self.C * a[None] + np.diag(s**2)
        G = scipy.linalg.cho_solve(scipy.linalg.cho_factor(K), a[:, None] * self.C).T  # K SPD: G = (K^-1 a C)^T
        return G, self.mu - G @ (a * self.mu)

    def model(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        G, b = self.denoiser(float(t[0]))  # the basis's own (fast) transforms, not the dense D x D matrix A
        u = self.c.basis.to_basis(z.double()).reshape(len(z), self.D).numpy()
        return self.c.basis.from_basis(torch.from_numpy(u @ G.T + b).reshape(z.shape)).to(z.dtype)

    def prior_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact q(u_1) = N(a_1 mu, a_1 C a_1 + s_1^2)."""
        c = self.coefficients(1.0)
        a, s = c.alpha.numpy(), c.sigma.numpy()
        return a * self.mu, a[:, None] * self.C * a[None] + np.diag(s**2)

    def kl(self, mean_u: np.ndarray, cov_u: np.ndarray) -> float:
        """KL(N(mean, cov) || data) in nats, from basis-coordinate moments."""
        mean, cov = mean_u @ self.A.T, self.A @ cov_u @ self.A.T
        sign, logdet = np.linalg.slogdet(cov)
        if sign <= 0:
            return math.inf
        inv, diff = np.linalg.inv(self.cov), self.m - mean
        return 0.5 * (np.trace(inv @ cov) + diff @ inv @ diff - self.D + np.linalg.slogdet(self.cov)[1] - logdet)


def ancestral_step(c_t: Coefficients, c_s: Coefficients):
    return posterior_coefficients(c_s, c_t)


def momentum_step(c_t: Coefficients, c_s: Coefficients):
    r = torch.exp(2 * (c_s.log_sigma - c_t.log_sigma))
    return r, c_s.alpha - r * c_t.alpha, torch.clamp(c_t.sigma**2 - c_s.sigma**2, min=0)


def naive_step(c_t: Coefficients, c_s: Coefficients):
    return torch.zeros_like(c_s.alpha), c_s.alpha, c_s.sigma**2


STOCHASTIC = {"ancestral": ancestral_step, "momentum": momentum_step, "naive": naive_step}


def output_moments(oracle: Oracle, method: str, times: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance (basis coordinates) of the sampler's output from the exact q(u_1)."""
    mean, P = oracle.prior_moments()
    if method not in STOCHASTIC:  # deterministic: run lincorrupt's sampler on probe rows
        rows = np.vstack([mean, mean + np.linalg.cholesky(P).T])
        u = torch.from_numpy(rows).reshape(len(rows), *oracle.shape)
        y = lc.SAMPLERS[method](lc.Denoiser(oracle.model, oracle.c, "x"), oracle.c, u, times)
        y = y.reshape(len(rows), oracle.D).numpy()
        return y[0], (y[1:] - y[0]).T @ (y[1:] - y[0])
    ts = times.tolist()
    for t, s in zip(ts[:-1], ts[1:]):
        G, b = oracle.denoiser(t)
        if s == 0:
            return G @ mean + b, G @ P @ G.T
        k_u, k_x, var = (v.numpy() for v in STOCHASTIC[method](oracle.coefficients(t), oracle.coefficients(s)))
        M = np.diag(k_u) + k_x[:, None] * G
        mean, P = M @ mean + k_x * b, M @ P @ M.T + np.diag(var)
    raise ValueError("a time grid ends at 0")


def corruptions(x: torch.Tensor) -> dict:
    return {"soft": lc.SoftDiffusion.fit(x, num_levels=32), "ihdm": lc.IHDM(SHAPE),
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
    for name, c in corruptions(x).items():
        oracle = Oracle(c, x)
        for method, grid in RUNS:
            errors = [oracle.kl(*output_moments(oracle, method, lc.GRIDS[grid](c, n))) for n in nfes]
            cells = ["inf" if not math.isfinite(e) else f"{e:.3g}" for e in errors]
            print(f"| {name:10} | {method:9} | {grid:7} | " + " | ".join(f"{v:>7}" for v in cells) + " |", flush=True)
    print(f"\n(total time {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
