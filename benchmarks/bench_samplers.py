"""Sampler error with an exact denoiser: no training, and no Monte Carlo floor.

    .venv/bin/python benchmarks/bench_samplers.py               # NFE 5 ... 1000, 8x8 patches (~1 min)
    .venv/bin/python benchmarks/bench_samplers.py --quick       # NFE 5 ... 100
    .venv/bin/python benchmarks/bench_samplers.py --size 16     # 16x16 patches (slower)
    .venv/bin/python benchmarks/bench_samplers.py --plot samplers.png   # also draw KL vs NFE
    .venv/bin/python benchmarks/bench_samplers.py --data fashion-mnist --max-nfe 50   # whole 28x28 images
    .venv/bin/python benchmarks/bench_samplers.py --data cifar10 --root PATH          # whole 32x32 grey images

Data (--data): a Gaussian N(m, S) fitted to grey-scale 8x8 patches of the images under --root
(an image folder or a zip of one, read in place; a smooth synthetic covariance without --root), or
to whole images: --data fashion-mnist (28x28, lincorrupt's reader, Debian's package by default) or
--data cifar10 --root PATH (32x32 grey; colour 3x32x32, D = 3072, does not fit in minutes here).
For Gaussian data the denoiser E[x | z_t] is affine and known in closed form, so every sampler
is an affine map of the prior draw plus independent noise, and the mean and covariance of what
it generates are computed *exactly*:

- deterministic samplers (DDIM eta=0, dpm++2m, dpm++2s, dpm++3m; diffusers' DDIM and DPM-Solver++) are run
  on the prior mean and the mean plus each column of a square root of the prior covariance:
  the differences are the columns of the output covariance's square root;
- ancestral sampling (lincorrupt, diffusers' DDPMScheduler) propagates mean and covariance step
  by step, its affine part from the same probe and its noise variance added.

The error is KL(generated || data) in nats for the whole patch (D = size^2 dimensions).
Corruptions: DDPM (linear betas, identity basis, side by side with diffusers' schedulers on the
same timesteps), blurring diffusion and IHDM, with sigma_blur_max scaled by size / 32 so a patch
is blurred as much as the paper's 32x32 image. Grids: "uniform" in t, "logsnr" (equal steps in
mean log-SNR), "info" (equal largest per-coordinate information steps) and "diffusers" (the
scheduler's own timesteps, identity case only).

The last table is the NFE at which each deterministic sampler and grid first reaches the error of
ancestral sampling with 250 and 1000 steps on the uniform grid (bisection over NFE).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the machines are shared
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402
from lincorrupt.coefficients import Coefficients, posterior_coefficients  # noqa: E402

f64 = torch.float64
T = 1000


# ------------------------------------------------------------------------------- data
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_images(root: Path, num_images: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Grey-scale images in [-1, 1] (float64, (H, W)) from an image folder or a zip of one, read in place.

    The training images are those under a ``train/`` folder if there is one (CIFAR-10's JPEG
    layout, ``train/<class>/*.jpg``), else every .jpg / .jpeg / .png; ``num_images`` of them
    drawn without replacement (all if None), in a fixed order.
    """
    from PIL import Image

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"--root {root} does not exist: give an image folder or a zip of one")
    if root.is_file():
        with zipfile.ZipFile(root) as z:
            names = [n for n in z.namelist() if n.lower().endswith(IMAGE_SUFFIXES)]
            read = lambda n, z=z: io.BytesIO(z.read(n))  # noqa: E731
            return _decode_grey(names, read, num_images, seed, Image, f"the zip {root}")
    names = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return _decode_grey(names, lambda n: root / n, num_images, seed, Image, f"the folder {root}")


def _decode_grey(names, read, num_images, seed, Image, where) -> list[np.ndarray]:
    train = [n for n in names if n.startswith("train/")]
    names = sorted(train or names)
    if not names:
        raise FileNotFoundError(f"{where} holds no .jpg / .jpeg / .png images")
    if num_images is not None and num_images < len(names):
        names = list(np.random.default_rng(seed).choice(names, num_images, replace=False))
    return [np.asarray(Image.open(read(n)).convert("L"), dtype=np.float64) / 127.5 - 1 for n in names]


def patches(size: int, num_images: int = 3000, seed: int = 0, root: Path | None = None) -> tuple[np.ndarray, str]:
    """(N, size^2) grey-scale patches in [-1, 1], four per image of ``root``; synthetic without a root."""
    rng = np.random.default_rng(seed)
    if root is None:
        yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        pos = np.stack([yy.ravel(), xx.ravel()], 1)
        cov = 0.2 * np.exp(-((pos[:, None] - pos[None]) ** 2).sum(-1) / 8.0)
        x = rng.multivariate_normal(np.zeros(size * size), cov, 4 * num_images)
        x += rng.choice([-0.5, 0.0, 0.5], len(x))[:, None]  # three brightness modes
        return x, "synthetic smooth Gaussian patches (no --root given)"
    out = []
    for img in read_images(root, num_images, seed):
        for _ in range(4):
            i, j = rng.integers(0, img.shape[0] - size + 1, 2)
            out.append(img[i:i + size, j:j + size].ravel())
    return np.stack(out), f"{len(out)} grey {size}x{size} patches of the images under {root}"


def fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance with a 1e-4 ridge (a floor on every direction's variance, so KL stays finite)."""
    return x.mean(0), np.cov(x.T) + 1e-4 * np.eye(x.shape[1])


def fit_mixture(x: np.ndarray, k: int = 3):
    """k Gaussians, one per brightness tercile of the patches: weights (k,), means (k, D), covs (k, D, D)."""
    edges = np.quantile(x.mean(1), np.linspace(0, 1, k + 1))
    groups = [x[(x.mean(1) >= lo) & (x.mean(1) <= hi)] for lo, hi in zip(edges[:-1], edges[1:])]
    fits = [fit_gaussian(g) for g in groups]
    weights = np.array([len(g) for g in groups], dtype=np.float64)
    return weights / weights.sum(), np.stack([f[0] for f in fits]), np.stack([f[1] for f in fits])


class Oracle:
    """Gaussian data seen through a corruption, in its basis coordinates (u = x A, x = u A^T)."""

    def __init__(self, corruption, mean, cov):
        self.c, self.shape, self.D = corruption, corruption.shape, mean.size
        eye = torch.eye(self.D, dtype=f64).view(self.D, *self.shape)
        self.A = corruption.basis.to_basis(eye).reshape(self.D, self.D).numpy()  # row j: V^T e_j
        self.m, self.cov = mean, cov
        self.mu, self.C = mean @ self.A, self.A.T @ cov @ self.A

    def coefficients(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        a, s = self.c.alpha_sigma(torch.tensor([t], dtype=f64))
        return a.expand(1, *self.shape).reshape(self.D).numpy(), s.expand(1, *self.shape).reshape(self.D).numpy()

    def denoiser(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """E[u_x | u_t] = G u_t + b with G = C a (a C a + s^2)^-1 (Gaussian conditioning)."""
        a, s = self.coefficients(t)
        K = a[:, None] * self.C * a[None] + np.diag(s**2)
        G = np.linalg.solve(K, a[:, None] * self.C).T  # K symmetric: G = (K^-1 a C)^T
        return G, self.mu - G @ (a * self.mu)

    def model(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact x-prediction in data space (one time per call, as samplers call it)."""
        G, b = self.denoiser(float(t[0]))
        u = z.reshape(len(z), self.D).double().numpy() @ self.A
        return torch.from_numpy((u @ G.T + b) @ self.A.T).reshape(z.shape).to(z.dtype)

    def prior_moments(self) -> tuple[np.ndarray, np.ndarray]:
        prior = self.c.prior
        if isinstance(prior, lc.GaussianPrior):
            a, s = self.coefficients(1.0)
            mean = 0 if prior.mean is None else prior.mean.double().reshape(self.D).numpy()
            var = 1 if prior.var is None else prior.var.double().reshape(self.D).numpy()
            return a * mean * np.ones(self.D), np.diag(a**2 * var + s**2)
        return np.zeros(self.D), np.eye(self.D)  # standard normal

    def kl(self, mean_u: np.ndarray, cov_u: np.ndarray) -> float:
        """KL(N(mean, cov) || data) in nats, from basis-coordinate moments."""
        mean, cov = mean_u @ self.A.T, self.A @ cov_u @ self.A.T
        sign, logdet = np.linalg.slogdet(cov)
        if sign <= 0:
            return math.inf
        diff = self.m - mean
        inv = np.linalg.inv(self.cov)
        return 0.5 * (np.trace(inv @ cov) + diff @ inv @ diff - self.D + np.linalg.slogdet(self.cov)[1] - logdet)


def _probe_rows(mean, cov):
    root = np.linalg.cholesky(cov + 1e-300 * np.eye(len(mean)))
    return np.vstack([mean, mean + root.T])


def _rows_moments(y):
    f = y[1:] - y[0]
    return y[0], f.T @ f


# ------------------------------------------------------------------------------- lincorrupt
def lincorrupt_moments(oracle: Oracle, method: str, times: torch.Tensor):
    if method == "ancestral":
        return ancestral_moments(oracle, times)
    D = oracle.D
    u = torch.from_numpy(_probe_rows(*oracle.prior_moments())).reshape(D + 1, *oracle.shape)
    y = lc.SAMPLERS[method](lc.Denoiser(oracle.model, oracle.c, "x"), oracle.c, u, times)
    return _rows_moments(y.reshape(D + 1, D).numpy())


def ancestral_moments(oracle: Oracle, times: torch.Tensor):
    """u_s = c_t u_t + c_x x_hat(u_t) + sqrt(var) n with lincorrupt's posterior coefficients."""
    mean, P = oracle.prior_moments()
    c = Coefficients(*oracle.c.log_alpha_sigma(times))
    shape = (oracle.D,)
    for k in range(len(times) - 1):
        G, b = oracle.denoiser(float(times[k]))
        if k == len(times) - 2:
            return G @ mean + b, G @ P @ G.T
        c_t = Coefficients(c.log_alpha[k:k + 1], c.log_sigma[k:k + 1])
        c_s = Coefficients(c.log_alpha[k + 1:k + 2], c.log_sigma[k + 1:k + 2])
        ct, cx, var = (v.expand(1, *oracle.shape).reshape(shape).numpy() for v in posterior_coefficients(c_s, c_t))
        M = np.diag(ct) + cx[:, None] * G
        mean, P = M @ mean + cx * b, M @ P @ M.T + np.diag(var)


# ------------------------------------------------------------------------------- diffusers
def diffusers_schedulers():
    import diffusers

    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type="sample")
    return {
        "ancestral": lambda: diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small", **common),
        "ddim": lambda: diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common),
        "dpm++2m": lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                                 final_sigmas_type="zero", **common),
        "dpm++3m": lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3,
                                                                 final_sigmas_type="zero", **common),
    }


def diffusers_moments(oracle: Oracle, sched):
    """Run the scheduler's loop on the probe rows. Deterministic schedulers (DDIM, DPM-Solver++,
    which keeps a history of outputs) carry the rows through; for DDPM the rows are re-drawn from
    the propagated moments every step, its noise regenerated and taken out of the step so that its
    variance is added exactly."""
    mean, P = oracle.prior_moments()
    rows = torch.from_numpy(_probe_rows(mean, P))
    stochastic = type(sched).__name__ == "DDPMScheduler"
    for k in sched.timesteps:
        G, b = oracle.denoiser((int(k) + 1) / T)  # diffusers' timestep k is lincorrupt's t = (k + 1) / T
        out = torch.from_numpy(rows.numpy() @ G.T + b)
        g = torch.Generator().manual_seed(0)
        state = g.get_state()
        rows = sched.step(out, k, rows, generator=g).prev_sample
        if stochastic:
            var = float(sched._get_variance(k)) if k > 0 else 0.0
            rows = rows - var**0.5 * torch.randn(rows.shape, generator=torch.Generator().set_state(state), dtype=f64)
            mean, P = _rows_moments(rows.numpy())
            rows = torch.from_numpy(_probe_rows(mean, P + var * np.eye(oracle.D)))
    return _rows_moments(rows.numpy())


# ------------------------------------------------------------------------------- mixture
class MixtureOracle:
    """A Gaussian mixture through a corruption: E[u_x | u_t] = sum_k p(k | u_t) E_k[u_x | u_t]."""

    def __init__(self, corruption, weights, means, covs):
        self.c, self.shape, self.D = corruption, corruption.shape, means.shape[1]
        self.parts = [Oracle(corruption, m, c) for m, c in zip(means, covs)]
        self.log_w = np.log(weights)
        self.weights, self.means, self.covs = weights, means, covs

    def model(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.parts[0].coefficients(float(t[0]))
        A = self.parts[0].A
        u = z.reshape(len(z), self.D).double().numpy() @ A
        log_p, expectations = [], []
        for log_w, part in zip(self.log_w, self.parts):
            K = a[:, None] * part.C * a[None] + np.diag(s**2)
            L = np.linalg.cholesky(K)
            r = u - a * part.mu
            w = np.linalg.solve(L, r.T)  # L^-1 r
            sol = np.linalg.solve(L.T, w)  # K^-1 r
            log_p.append(log_w - 0.5 * (w**2).sum(0) - np.log(np.diag(L)).sum())
            expectations.append(part.mu + (part.C @ (a[:, None] * sol)).T)
        log_p = np.stack(log_p)
        resp = np.exp(log_p - log_p.max(0))
        resp /= resp.sum(0)
        u_x = np.einsum("kb,kbd->bd", resp, np.stack(expectations))
        return torch.from_numpy(u_x @ A.T).reshape(z.shape).to(z.dtype)


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, projections: np.ndarray) -> float:
    """SW_2 between two equal-size samples: sqrt of the mean over unit directions of W_2^2 in 1-D."""
    px, py = np.sort(x @ projections, 0), np.sort(y @ projections, 0)
    return float(np.sqrt(((px - py) ** 2).mean()))


def mixture_table(size: int, x_patches: np.ndarray, nfes: list[int], n: int = 2000) -> None:
    weights, means, covs = fit_mixture(x_patches)
    rng = np.random.default_rng(1)
    projections = rng.standard_normal((size * size, 256))
    projections /= np.linalg.norm(projections, axis=0)
    floor = sliced_wasserstein(_mixture_samples(weights, means, covs, n, rng),
                               _mixture_samples(weights, means, covs, n, rng), projections)
    reference = _mixture_samples(weights, means, covs, n, rng)
    print(f"\n# mixture of {len(weights)} Gaussians (brightness terciles of the patches): sliced Wasserstein-2 "
          f"(256 directions) between {n} samples and {n} data draws; Monte Carlo floor (data vs data) {floor:.3g}")
    header = f"| {'corruption':10} | {'sampler':9} | {'grid':9} | " + " | ".join(f"{k:>7}" for k in nfes) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, c in corruptions(size, *fit_gaussian(x_patches)).items():
        oracle = MixtureOracle(c, weights, means, covs)
        if name == "ihdm":  # its t = 1 marginal keeps the mean colour, which is multimodal here
            c.prior = lc.EmpiricalPrior.fit(c, torch.from_numpy(_mixture_samples(weights, means, covs, 5000, rng))
                                            .reshape(5000, *c.shape))
        for method in SAMPLERS:
            for grid in GRIDS:
                errs = []
                for k in nfes:
                    x = lc.sample(oracle.model, c, n, steps=k, prediction="x", method=method, grid=grid,
                                  generator=torch.Generator().manual_seed(k), dtype=f64)
                    errs.append(sliced_wasserstein(x.reshape(n, -1).numpy(), reference, projections))
                print(f"| {name:10} | {method:9} | {grid:9} | " + " | ".join(f"{fmt(e):>7}" for e in errs) + " |")


def _mixture_samples(weights, means, covs, n, rng):
    k = rng.choice(len(weights), n, p=weights)
    out = np.empty((n, means.shape[1]))
    for j in range(len(weights)):
        out[k == j] = rng.multivariate_normal(means[j], covs[j], int((k == j).sum()))
    return out


# ------------------------------------------------------------------------------- the run
SAMPLERS = ("ancestral", "ddim", "dpm++2m", "dpm++2s", "dpm++3m")
GRIDS = ("uniform", "logsnr", "info")
DETERMINISTIC = ("ddim", "dpm++2m", "dpm++2s", "dpm++3m")


def corruptions(size: int, mean: np.ndarray, cov: np.ndarray) -> dict:
    shape = (1, size, size)
    ihdm = lc.IHDM(shape, sigma_blur_max=24.0 * size / 32)
    u_var = np.diag(Oracle(ihdm, mean, cov).C).copy()
    ihdm.prior = lc.GaussianPrior(torch.from_numpy(mean @ Oracle(ihdm, mean, cov).A).reshape(shape),
                                  torch.from_numpy(u_var).reshape(shape))  # q(u_1) is ~diagonal: only the DC survives
    return {"ddpm": lc.DDPM(shape, schedule="linear", num_steps=T),
            "blurring": lc.BlurringDiffusion(shape, sigma_blur_max=20.0 * size / 32),
            "ihdm": ihdm}


def fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.3g}"


def nfe_to_reach(error_of, target: float, hi: int = 1000) -> int | None:
    """Smallest NFE in [1, hi] whose error is <= target (bisection; errors decrease with NFE)."""
    if error_of(hi) > target:
        return None
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if error_of(mid) <= target else (mid + 1, hi)
    return lo


def plot(results: dict, nfes: list[int], path: Path) -> None:
    """KL against NFE, one panel per corruption; diffusers dashed in the identity panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k[0] for k in results}, key=["ddpm", "blurring", "ihdm"].index)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True)
    colours = {"ancestral": "C0", "ddim": "C1", "dpm++2m": "C2", "dpm++2s": "C3", "dpm++3m": "C4"}
    styles = {"uniform": ":", "logsnr": "-", "info": "-.", "diffusers": "--"}
    for ax, name in zip(axes, names):
        for (cname, impl, method, grid), errs in results.items():
            if cname != name or impl == "ratio" or (grid == "diffusers" and impl == "lincorrupt"):
                continue
            label = f"diffusers {method}" if impl == "diffusers" else f"{method} / {grid}"
            ax.plot(nfes, errs, styles[grid], color=colours[method], marker="o", ms=3, label=label)
        ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", title=name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("KL(generated || data), nats per patch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------- real sizes
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_momentum import STOCHASTIC, output_moments  # noqa: E402
from bench_momentum import Oracle as FullOracle  # noqa: E402


def real_images(data: str, root: Path | None, num_images: int | None) -> tuple[torch.Tensor, str]:
    """(N, 1, H, W) float64 training images in [-1, 1] and a description: Fashion-MNIST (28x28, read
    with lincorrupt's reader from ``root``, default Debian's package) or grey CIFAR-10 (32x32, from
    the image folder or zip ``root``)."""
    if data == "fashion-mnist":
        from lincorrupt.data import DEBIAN_DIR, load_fashion_mnist

        images = load_fashion_mnist(train=True, root=root or DEBIAN_DIR)[0][:num_images].to(f64) / 127.5 - 1
        return images, f"{len(images)} Fashion-MNIST training images under {root or DEBIAN_DIR}"
    grey = read_images(root, num_images)
    shapes = {g.shape for g in grey}
    if len(shapes) != 1:
        raise ValueError(f"the images under {root} have several sizes {sorted(shapes)}; expected one (32x32)")
    images = torch.from_numpy(np.stack(grey))[:, None]
    return images, f"{len(images)} grey {images.shape[-2]}x{images.shape[-1]} training images under {root}"


def real_corruptions(size: int) -> dict:
    """The issue's four processes at H = W = ``size``, blur widths scaled by size / 32."""
    shape = (1, size, size)
    return {"blurring": lc.BlurringDiffusion(shape, sigma_blur_max=20.0 * size / 32),
            "no-blur": lc.BlurringDiffusion(shape, sigma_blur_max=0.0),
            "ddpm": lc.DDPM(shape, schedule="linear", num_steps=T),
            "ihdm": lc.IHDM(shape, sigma_blur_max=24.0 * size / 32)}


def is_isotropic(corruption) -> bool:
    """Whether alpha_t and sigma_t are the same in every coordinate (checked on 65 times)."""
    t = torch.linspace(0.0, 1.0, 65, dtype=f64)
    return all(bool((v.expand(65, *corruption.shape).flatten(1) == v.expand(65, *corruption.shape).flatten(1)[:, :1])
                    .all()) for v in corruption.log_alpha_sigma(t))


class IsotropicOracle:
    """Gaussian data N(m, S) through a schedule that is the same in every coordinate (DDPM, blurring
    without blur): every sampler then commutes with rotations, so it runs in the eigenbasis of S,
    where the exact denoiser is diagonal, g = lam a / (a^2 lam + s^2), and mean and variance are
    exact per eigen-coordinate at O(D) per step (the same numbers as :class:`FullOracle`, faster)."""

    def __init__(self, corruption, x: torch.Tensor):
        self.c, self.shape, self.D = corruption, corruption.shape, math.prod(corruption.shape)
        flat = x.reshape(len(x), self.D).numpy()
        self.lam, V = np.linalg.eigh(np.cov(flat.T) + 1e-4 * np.eye(self.D))
        self.mu = flat.mean(0) @ V

    def coefficients(self, t: float) -> Coefficients:
        return Coefficients(*(v.reshape(-1)[:1] for v in self.c.log_alpha_sigma(torch.tensor([t], dtype=f64))))

    def denoiser(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        c = self.coefficients(t)
        a, s = float(c.alpha), float(c.sigma)
        g = self.lam * a / (a**2 * self.lam + s**2)
        return g, self.mu - g * a * self.mu

    def model(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_hat with the sampler's basis coordinates read as eigen-coordinates (one scalar schedule)."""
        g, b = self.denoiser(float(t[0]))
        u = self.c.basis.to_basis(z.double()).reshape(len(z), self.D).numpy()
        return self.c.basis.from_basis(torch.from_numpy(u * g + b).reshape(z.shape)).to(z.dtype)

    def kl(self, mean: np.ndarray, var: np.ndarray) -> float:
        """KL(N(mean, diag var) || N(mu, diag lam)) in nats, eigen-coordinates."""
        if not (var > 0).all():
            return math.inf
        return 0.5 * float((var / self.lam + (self.mu - mean) ** 2 / self.lam - 1 + np.log(self.lam / var)).sum())


def isotropic_moments(oracle: IsotropicOracle, method: str, times: torch.Tensor):
    """Exact per-eigen-coordinate mean and variance of a sampler's output from the exact q(u_1)."""
    c = oracle.coefficients(1.0)
    mean, var = float(c.alpha) * oracle.mu, float(c.alpha) ** 2 * oracle.lam + float(c.sigma) ** 2
    if method not in STOCHASTIC:  # deterministic: the mean and the mean plus one standard deviation
        u = torch.from_numpy(np.stack([mean, mean + np.sqrt(var)])).reshape(2, *oracle.shape)
        y = lc.SAMPLERS[method](lc.Denoiser(oracle.model, oracle.c, "x"), oracle.c, u, times).reshape(2, -1).numpy()
        return y[0], (y[1] - y[0]) ** 2
    ts = times.tolist()
    for t, s in zip(ts[:-1], ts[1:]):
        g, b = oracle.denoiser(t)
        if s == 0:
            return g * mean + b, g**2 * var
        k_u, k_x, v = (float(w.reshape(-1)[0]) for w in STOCHASTIC[method](oracle.coefficients(t),
                                                                          oracle.coefficients(s)))
        mean, var = (k_u + k_x * g) * mean + k_x * b, (k_u + k_x * g) ** 2 * var + v
    raise ValueError("a time grid ends at 0")


def smallest_nfe(kl_at, target: float, points: tuple[int, ...] = (10, 20, 50), cap: int = 100) -> int | None:
    """Smallest NFE <= cap with KL <= target: ``points`` (the table's NFEs) and then doubling until one
    reaches the target, then bisection below it (assumes the KL falls with NFE there); None if not
    reached at ``cap``."""
    failed, points = 0, list(points)
    while True:
        n = min(points.pop(0) if points else 2 * failed, cap)
        if kl_at(n) <= target:
            break
        if n >= cap:
            return None
        failed = n
    lo, hi = failed + 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if kl_at(mid) <= target else (mid + 1, hi)
    return hi


def real_size_run(args) -> None:
    """Every sampler x grid at the data's own size, exact denoiser of the full-covariance Gaussian."""
    for method, sampler in lc.SAMPLERS.items():
        if sampler.stochastic and method not in STOCHASTIC:
            raise SystemExit(f"sampler {method!r} is stochastic and has no exact step rule in "
                             f"bench_momentum.STOCHASTIC")
    start = time.perf_counter()
    x, source = real_images(args.data, args.root, args.images)
    size = x.shape[-1]
    samplers, grids = args.samplers or list(lc.SAMPLERS), args.grids or list(lc.GRIDS)
    nfes = (10, 20, 50)
    print(f"# bench_samplers --data {args.data}: KL(generated || data) in nats per {size}x{size} image (D={size**2}), "
          f"exact moments from the exact q(u_1); data: a Gaussian (1e-4 ridge) fitted to {source}")
    print(f"# NFE columns: smallest NFE <= {args.max_nfe} whose KL is at most that of ancestral sampling on the "
          f"uniform grid with 250 / 1000 steps (doubling from 10, then bisection); >{args.max_nfe}: not reached")
    header = (f"| {'corruption':10} | {'sampler':9} | {'grid':7} | " + " | ".join(f"{n:>7}" for n in nfes)
              + " | NFE@250 | NFE@1000 |")
    for name, c in real_corruptions(size).items():
        c.fit_data_statistics(x)
        oracle = IsotropicOracle(c, x) if is_isotropic(c) else FullOracle(c, x)
        moments = isotropic_moments if isinstance(oracle, IsotropicOracle) else output_moments
        cache = {}

        def kl(method, grid, n, oracle=oracle, c=c, moments=moments, cache=cache):
            if (method, grid, n) not in cache:
                cache[method, grid, n] = oracle.kl(*moments(oracle, method, lc.GRIDS[grid](c, n)))
            return cache[method, grid, n]

        refs = {}
        for steps in (250, 1000):  # the (G, b) cache is cleared after each group of runs: D x D per time
            refs[steps] = kl("ancestral", "uniform", steps)
            oracle.gains = {}
        for grid in grids:
            for n in nfes:  # every sampler on one grid evaluates the same times: one cache for them
                for method in samplers:
                    kl(method, grid, n)
                oracle.gains = {}
        print(f"\n## {name} ({type(oracle).__name__}): ancestral / uniform KL {fmt(refs[250])} at 250 steps, "
              f"{fmt(refs[1000])} at 1000 ({time.perf_counter() - start:.0f} s)")
        print(header)
        print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
        for method in samplers:
            for grid in grids:
                hits = [smallest_nfe(lambda n, m=method, g=grid: kl(m, g, n), refs[s], nfes, args.max_nfe)
                        for s in (250, 1000)]
                oracle.gains = {}
                cells = [f"{h}" if h else f">{args.max_nfe}" for h in hits]
                print(f"| {name:10} | {method:9} | {grid:7} | "
                      + " | ".join(f"{fmt(kl(method, grid, n)):>7}" for n in nfes)
                      + f" | {cells[0]:>7} | {cells[1]:>8} |", flush=True)
    print(f"\n(total time {time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="NFE 5 ... 100 only")
    parser.add_argument("--size", type=int, default=8, help="patch size (D = size^2)")
    parser.add_argument("--data", choices=("patches", "fashion-mnist", "cifar10"), default="patches",
                        help="8x8 (--size) grey patches, or whole 28x28 Fashion-MNIST / 32x32 grey CIFAR-10 images")
    parser.add_argument("--root", type=Path, help="the data: an image folder or a zip of one (cifar10, patches; "
                        "patches without it are synthetic), or Fashion-MNIST's idx files (default Debian's package)")
    parser.add_argument("--images", type=int, help="images to fit the Gaussian to (default 3000 for patches, "
                        "all for the whole images)")
    parser.add_argument("--samplers", nargs="+", choices=sorted(lc.SAMPLERS), help="whole images: only these")
    parser.add_argument("--grids", nargs="+", choices=sorted(lc.GRIDS), help="whole images: only these grids")
    parser.add_argument("--max-nfe", type=int, default=200, help="whole images: the NFE search's upper end")
    parser.add_argument("--no-mixture", action="store_true", help="skip the mixture / sliced-Wasserstein table")
    parser.add_argument("--plot", type=Path, help="write a PNG of KL against NFE per corruption")
    args = parser.parse_args()
    if args.data == "cifar10" and args.root is None:
        parser.error("--data cifar10 needs --root: a folder of CIFAR-10 images (train/<class>/*.jpg or *.png) "
                     "or a zip of one")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # diffusers' and numpy's deprecation chatter
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, one thread")
    if args.data != "patches":
        return real_size_run(args)
    nfes = [5, 10, 20, 50, 100] if args.quick else [5, 10, 20, 50, 100, 250, 1000]
    start = time.perf_counter()
    x_patches, source = patches(args.size, args.images or 3000, root=args.root)
    mean, cov = fit_gaussian(x_patches)
    print(f"# bench_samplers: KL(generated || data) in nats per {args.size}x{args.size} patch "
          f"(D={args.size**2}), exact moments; data: {source}")
    header = (f"| {'corruption':10} | {'impl':10} | {'sampler':9} | {'grid':9} | "
              + " | ".join(f"{n:>7}" for n in nfes) + " |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    results, notes = {}, set()
    for name, c in corruptions(args.size, mean, cov).items():
        oracle = Oracle(c, mean, cov)
        for method in SAMPLERS:
            for grid in GRIDS:
                results[name, "lincorrupt", method, grid] = [
                    oracle.kl(*lincorrupt_moments(oracle, method, lc.GRIDS[grid](c, n))) for n in nfes]
        if name == "ddpm":  # side by side with diffusers on the scheduler's own timesteps
            for method, make in diffusers_schedulers().items():
                ours, theirs = [], []
                for n in nfes:
                    sched = make()
                    sched.set_timesteps(n)
                    times = torch.cat([(sched.timesteps.to(f64) + 1) / T, torch.zeros(1, dtype=f64)])
                    ours.append(oracle.kl(*lincorrupt_moments(oracle, method, times)))
                    theirs.append(oracle.kl(*diffusers_moments(oracle, sched)))
                    if len(set(sched.timesteps.tolist())) < n:
                        notes.add(f"diffusers' {type(sched).__name__} at {n} steps repeats a timestep "
                                  f"(linspace spacing rounded to integers); a zero log-SNR step divides by h = 0 "
                                  f"there, lincorrupt's per-coordinate guard treats it as a first-order step")
                results[name, "lincorrupt", method, "diffusers"] = ours
                results[name, "diffusers", method, "diffusers"] = theirs
                results[name, "ratio", method, "diffusers"] = [a / b for a, b in zip(ours, theirs)]
        for (cname, impl, method, grid), errs in results.items():
            if cname == name:
                cells = [fmt(e) if impl != "ratio" else f"{e:.4f}" if math.isfinite(e) and e > 0 else "n/a"
                         for e in errs]
                print(f"| {name:10} | {impl:10} | {method:9} | {grid:9} | "
                      + " | ".join(f"{v:>7}" for v in cells) + " |")
    for note in sorted(notes):
        print(f"note: {note}")
    if args.plot:
        plot(results, nfes, args.plot)
    print()
    # Targets: the NFE each deterministic sampler/grid needs to match ancestral sampling at 250 and 1000 steps.
    pairs = [(m, g) for m in DETERMINISTIC for g in GRIDS]
    print("NFE at which each sampler/grid matches ancestral sampling on the uniform grid with 250 / 1000 steps "
          "(KL of that ancestral run in the header; >N: not reached within N)")
    header = (f"| {'sampler/grid':17} | "
              + " | ".join(f"{name} 250 / 1000" for name in ("blurring", "ddpm", "ihdm")) + " |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    cells, targets = {}, {}
    for name in ("blurring", "ddpm", "ihdm"):
        c = corruptions(args.size, mean, cov)[name]
        oracle = Oracle(c, mean, cov)
        err = lambda method, grid, n, oracle=oracle, c=c: oracle.kl(
            *lincorrupt_moments(oracle, method, lc.GRIDS[grid](c, n)))
        for steps in (250, 1000):
            targets[name, steps] = target = err("ancestral", "uniform", steps)
            for m, g in pairs:
                cells[m, g, name, steps] = nfe_to_reach(lambda n, m=m, g=g, err=err: err(m, g, n), target, hi=steps)
    print(f"| {'(ancestral KL)':17} | " + " | ".join(
        f"{fmt(targets[name, 250]):>7} / {fmt(targets[name, 1000]):<7}".center(len(f'{name} 250 / 1000'))
        for name in ("blurring", "ddpm", "ihdm")) + " |")
    for m, g in pairs:
        row = []
        for name in ("blurring", "ddpm", "ihdm"):
            a, b = (cells[m, g, name, s] for s in (250, 1000))
            row.append(f"{a if a else '>250':>4} / {b if b else '>1000':<5}".center(len(f"{name} 250 / 1000")))
        print(f"| {m + '/' + g:17} | " + " | ".join(row) + " |")
    for name in ("blurring", "ddpm", "ihdm"):
        best = {s: min((cells[m, g, name, s] or math.inf, f"{m}/{g}") for m, g in pairs) for s in (250, 1000)}
        print(f"{name}: best {best[250][1]} ({best[250][0]}) at the 250-step level, "
              f"{best[1000][1]} ({best[1000][0]}) at the 1000-step level")
    if not args.no_mixture:
        mixture_table(args.size, x_patches, [5, 10, 20, 50, 100])
    print(f"\n(total time {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
