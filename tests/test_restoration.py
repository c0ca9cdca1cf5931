"""Restoration against the exact posterior of Gaussian data, written out here with numpy and scipy.

Data ``x ~ N(m, Sigma)`` with ``Sigma = V diag(var) V^T`` diagonal in the corruption's basis (V from scipy's
DCT, or the identity), seen through the corruption (``z_t = M x + noise``, ``M = V diag(alpha_t) V^T``) and a
measurement ``y = A x + noise_std n``. Everything is jointly Gaussian, so ``E[x | z_t, y]`` and ``p(x | y)`` are
textbook Gaussian conditioning of dense matrices. The model is the exact denoiser ``E[x | z_t]``, dense too.
"""

import runpy
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch

import lincorrupt as lc
import lincorrupt.weights
from lincorrupt import operators as ops
from lincorrupt import restoration

f64 = torch.float64
SHAPE = (3, 4, 6)
D = 72


def _vt(c) -> np.ndarray:
    """V^T as a dense (D, D) matrix: scipy's orthonormal DCT-II, or the identity (not lincorrupt.basis)."""
    eye = np.eye(D).reshape(D, *SHAPE)
    if isinstance(c.basis, lc.DCTBasis):
        return scipy.fft.dctn(eye, axes=(-2, -1), norm="ortho").reshape(D, D).T
    return np.eye(D)


class GaussianWorld:
    """Gaussian data whose covariance is diagonal in ``c``'s basis; the exact denoiser; exact conditionals."""

    def __init__(self, c, seed=0):
        rng = np.random.default_rng(seed)
        self.c, self.vt = c, _vt(c)
        k = np.arange(D) % 24
        self.var = 0.3 * np.exp(-k / 6.0) + 0.02 * rng.uniform(size=D)  # decaying spectrum, per coordinate
        self.m = 0.2 * rng.standard_normal(D)
        self.cov = self.vt.T @ np.diag(self.var) @ self.vt
        c.data_var = torch.tensor(self.var).reshape(SHAPE)

    def coefficients(self, t: float):
        alpha, sigma = self.c.alpha_sigma(torch.tensor([t], dtype=f64))
        return (alpha.expand(1, *SHAPE).reshape(D).numpy(), sigma.expand(1, *SHAPE).reshape(D).numpy())

    def corruption_matrices(self, t: float):
        a, s = self.coefficients(t)
        return self.vt.T @ np.diag(a) @ self.vt, self.vt.T @ np.diag(s**2) @ self.vt

    def model(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x | z_t] in data space (an "x" prediction)."""
        M, N = self.corruption_matrices(float(t[0]))
        gain = self.cov @ M.T @ np.linalg.inv(M @ self.cov @ M.T + N)
        offset = torch.from_numpy(self.m - gain @ M @ self.m)  # differentiable in z, for DPS
        return (offset + z.reshape(z.shape[0], D).double() @ torch.from_numpy(gain).T).reshape(z.shape).to(z.dtype)

    def sample(self, n, seed=1):
        rng = np.random.default_rng(seed)
        return self.m + rng.standard_normal((n, D)) @ np.linalg.cholesky(self.cov).T

    @staticmethod
    def condition(mean, cov, obs_matrix, obs_noise, obs):
        """x ~ N(mean, cov), obs = B x + noise(obs_noise): E[x | obs] and Cov[x | obs] (pseudo-inverse for a
        singular observation covariance, e.g. unobserved pixels without noise)."""
        s = obs_matrix @ cov @ obs_matrix.T + obs_noise
        gain = cov @ obs_matrix.T @ np.linalg.pinv(s, rcond=1e-12, hermitian=True)
        return mean + (obs - obs_matrix @ mean) @ gain.T, cov - gain @ obs_matrix @ cov


def _dense(op) -> np.ndarray:
    return op.matrix().numpy()


def _noise_cov(op, noise_std) -> np.ndarray:
    """The measurement noise's covariance: white, or on the observed pixels only for a Mask."""
    if isinstance(op, ops.Mask):
        return noise_std**2 * np.diag(op.mask.reshape(-1).double().numpy())
    return noise_std**2 * np.eye(op.num_measurements)


CORRUPTIONS = {"ddpm": lambda: lc.DDPM(SHAPE), "blurring": lambda: lc.BlurringDiffusion(SHAPE, sigma_blur_max=3.0)}


def _mask():
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) < 0.5


OPERATORS = {"blur": lambda: ops.Blur(SHAPE, 1.0), "mask": lambda: ops.Mask(_mask()),
             "downsample": lambda: ops.Downsample(SHAPE, 2), "grey": lambda: ops.Grey(SHAPE),
             "matrix": lambda: ops.Matrix(torch.randn(30, D, generator=torch.Generator().manual_seed(6),
                                                      dtype=f64), SHAPE)}


def _measure(world, op, noise_std, n, seed=2):
    x = torch.from_numpy(world.sample(n, seed)).reshape(n, *SHAPE)
    return x, op.measure(x, noise_std, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- one step, exact
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("operator, noise_std", [("blur", 0.05), ("mask", 0.0), ("mask", 0.05), ("downsample", 0.1),
                                                 ("grey", 0.05), ("matrix", 0.1)])
@pytest.mark.parametrize("t", [0.2, 0.6, 0.95])
def test_pigdm_x_hat_is_the_exact_conditional_mean(corruption, operator, noise_std, t):
    """ΠGDM's x_hat with the per-coordinate r_t^2 is E[x | z_t, y] for Gaussian data diagonal in the basis,
    whether the operator takes the closed form (diagonal in the basis) or conjugate gradients."""
    c, op = CORRUPTIONS[corruption](), OPERATORS[operator]()
    world = GaussianWorld(c)
    x, y = _measure(world, op, noise_std, 3)
    z_t, _ = c.diffuse(x, torch.tensor(t, dtype=f64), generator=torch.Generator().manual_seed(3))
    u_x = c.basis.to_basis(world.model(z_t, torch.full((3,), t, dtype=f64)))
    c_t = c.coefficients(torch.tensor([t], dtype=f64))
    got = c.basis.from_basis(restoration.pigdm_x_hat(u_x, c_t, y, op, noise_std, c, D, 1e-12))

    M, N = world.corruption_matrices(t)
    A = _dense(op)
    obs_matrix = np.vstack([M, A])
    obs_noise = np.block([[N, np.zeros((D, A.shape[0]))], [np.zeros((A.shape[0], D)), _noise_cov(op, noise_std)]])
    obs = np.hstack([z_t.reshape(3, D).numpy(), y.reshape(3, -1).numpy()])
    expected, _ = world.condition(world.m, world.cov, obs_matrix, obs_noise, obs)
    np.testing.assert_allclose(got.reshape(3, D).numpy(), expected, atol=1e-7)


# (not a noiseless blur: its posterior mean divides by singular values down to 1e-9)
@pytest.mark.parametrize("operator, noise_std", [(name, 0.1) for name in sorted(OPERATORS)] + [
    (name, 0.0) for name in sorted(OPERATORS) if name != "blur"])
def test_wiener_is_the_exact_posterior_mean(operator, noise_std):
    c, op = lc.BlurringDiffusion(SHAPE, sigma_blur_max=3.0), OPERATORS[operator]()
    world = GaussianWorld(c)
    _, y = _measure(world, op, noise_std, 4)
    got = restoration.wiener(y, op, torch.from_numpy(world.m).reshape(SHAPE), c.data_var, c.basis, noise_std,
                             cg_tol=1e-12)
    expected, _ = world.condition(world.m, world.cov, _dense(op), _noise_cov(op, noise_std), y.reshape(4, -1).numpy())
    np.testing.assert_allclose(got.reshape(4, D).numpy(), expected, atol=1e-7)


def test_conjugate_gradient_solves_spd_systems():
    rng = np.random.default_rng(0)
    mats = [(lambda q: q @ np.diag(rng.uniform(0.1, 3, 20)) @ q.T)(np.linalg.qr(rng.standard_normal((20, 20)))[0])
            for _ in range(3)]
    m = torch.from_numpy(np.stack(mats))
    b = torch.from_numpy(rng.standard_normal((3, 20)))
    got = restoration.conjugate_gradient(lambda v: (m @ v[..., None])[..., 0], b, iterations=40, tol=1e-12)
    np.testing.assert_allclose(got.numpy(), np.linalg.solve(np.stack(mats), b.numpy()[..., None])[..., 0], atol=1e-9)


def test_dps_step_is_the_normalised_gradient():
    """For a linear denoiser u_x = K u_t the gradient of |y - A V u_x|^2 is 2 K^T V^T A^T (A V K u_t - y)."""
    rng = np.random.default_rng(1)
    op, basis = OPERATORS["downsample"](), lc.DCTBasis(4, 6)
    vt = _vt(lc.BlurringDiffusion(SHAPE))
    K = torch.from_numpy(rng.standard_normal((D, D)) / 8)
    u_t = torch.from_numpy(rng.standard_normal((2, D))).reshape(2, *SHAPE).requires_grad_()
    with torch.enable_grad():
        u_x = (u_t.reshape(2, D) @ K.T).reshape(2, *SHAPE)
    y = torch.from_numpy(rng.standard_normal((2, *op.y_shape)))
    u_s = torch.zeros(2, *SHAPE, dtype=f64)
    got = restoration.dps_state(u_s, u_t, u_x, y, op, 0.7, basis)
    A = _dense(op)
    r = (A @ vt.T @ K.numpy() @ u_t.detach().reshape(2, D).numpy().T).T - y.reshape(2, -1).numpy()
    grad = 2 * r @ A @ vt.T @ K.numpy()
    expected = -0.7 * grad / np.linalg.norm(r, axis=1, keepdims=True)
    np.testing.assert_allclose(got.reshape(2, D).detach().numpy(), expected, atol=1e-10)


# ----------------------------------------------------------------------------- whole restorations
def _posterior(world, op, noise_std, y):
    """p(x | y): mean (B, D) and covariance (D, D)."""
    return world.condition(world.m, world.cov, _dense(op), _noise_cov(op, noise_std), y.reshape(y.shape[0], -1).numpy())


def _ancestral_moments(world, op, noise_std, y, steps):
    """Exact mean and covariance of ancestral sampling (Ho et al. 2020, Algorithm 2; Kingma et al. 2021,
    eq. 32-33, per basis coordinate) from u_1 ~ N(0, I) on a uniform grid, when x_hat is E[x | z_t, y]: an affine
    map of u_t from Gaussian conditioning, so the moments propagate through the affine steps in closed form."""
    vt, A = world.vt, _dense(op)
    obs = y.reshape(-1).numpy()
    mean, P = np.zeros(D), np.eye(D)
    times = np.linspace(1, 0, steps + 1)
    for t, s_ in zip(times[:-1], times[1:]):
        a_t, s_t = world.coefficients(t)
        M, N = world.corruption_matrices(t)
        B = np.vstack([M, A])
        noise = np.block([[N, np.zeros((D, len(obs)))], [np.zeros((len(obs), D)), _noise_cov(op, noise_std)]])
        gain = world.cov @ B.T @ np.linalg.pinv(B @ world.cov @ B.T + noise, rcond=1e-12, hermitian=True)
        # u_x = vt x_hat, x_hat = m + Gz (vt^T u_t - M m) + Gy (y - A m) = x_M u_t + x_b
        x_M = vt @ gain[:, :D] @ vt.T
        x_b = vt @ (world.m - gain[:, :D] @ M @ world.m + gain[:, D:] @ (obs - A @ world.m))
        if s_ == 0:
            return vt.T @ (x_M @ mean + x_b), vt.T @ x_M @ P @ x_M.T @ vt
        a_s, s_s = world.coefficients(s_)
        alpha_ts = a_t / a_s
        k = alpha_ts * s_s**2 / s_t**2  # Cov(u_s, u_t) / Var(u_t)
        step = np.diag(k) + np.diag(a_s - k * a_t) @ x_M
        mean = step @ mean + (a_s - k * a_t) * x_b
        P = step @ P @ step.T + np.diag(s_s**2 - k * alpha_ts * s_s**2)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("operator", ["blur", "mask"])
def test_pigdm_samples_the_posterior(corruption, operator):
    """Many restorations of one measurement by ancestral sampling: their mean and per-pixel variance are the
    sampler's exact moments (within 5 standard errors), and those approach p(x | y) as steps grow: the mean is
    the posterior mean at any step count (up to the prior's mean, 0 instead of alpha_1 E[x | y]), the variance's
    error falls as 1 / steps."""
    c, op = CORRUPTIONS[corruption](), OPERATORS[operator]()
    world = GaussianWorld(c)
    n, noise_std, steps = 2000, 0.05, 40
    _, y = _measure(world, op, noise_std, 1)
    x = lc.restore(world.model, c, y.expand(n, *op.y_shape), op, noise_std, method="pigdm", steps=steps,
                   prediction="x", generator=torch.Generator().manual_seed(0), cg_iterations=D, cg_tol=1e-10)
    samples = x.reshape(n, D).numpy()
    mean, cov = _ancestral_moments(world, op, noise_std, y, steps)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(samples.mean(0) - mean) <= 5 * sd / np.sqrt(n) + 1e-9)
    np.testing.assert_allclose(samples.var(0), sd**2, rtol=5 * np.sqrt(2 / n))

    post_mean, post_cov = _posterior(world, op, noise_std, y)
    np.testing.assert_allclose(mean, post_mean[0], atol=1e-3 * np.sqrt(np.diag(post_cov)).max())
    deficit = {k: np.abs(1 - np.diag(_ancestral_moments(world, op, noise_std, y, k)[1]) / np.diag(post_cov)).max()
               for k in (250, 1000)}
    assert deficit[1000] <= deficit[250] / 2 and deficit[1000] < 0.2, deficit  # first order: 1 / steps would be / 4


ALL_CORRUPTIONS = {**CORRUPTIONS, "ihdm": lambda: lc.IHDM(SHAPE), "soft": lambda: lc.SoftDiffusion(SHAPE)}


@pytest.mark.parametrize("corruption", sorted(ALL_CORRUPTIONS))
@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_noiseless_ddnm_is_consistent(corruption, operator):
    """DDNM's last x_hat is projected onto {x : A x = y}, whatever the prior."""
    c, op = ALL_CORRUPTIONS[corruption](), OPERATORS[operator]()
    world = GaussianWorld(c)
    _, y = _measure(world, op, 0.0, 3)
    x = lc.restore(world.model, c, y, op, method="ddnm", steps=8, prediction="x",
                   generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, *SHAPE) and x.dtype == f64
    torch.testing.assert_close(op(x), y, rtol=0, atol=1e-10)


def test_dps_moves_toward_the_measurement():
    c, op = CORRUPTIONS["blurring"](), OPERATORS["downsample"]()
    world = GaussianWorld(c)
    _, y = _measure(world, op, 0.05, 64)

    def residual(zeta):
        x = lc.restore(world.model, c, y, op, 0.05, method="dps", steps=30, prediction="x", zeta=zeta,
                       generator=torch.Generator().manual_seed(0))
        return (op(x) - y).flatten(1).norm(dim=1).mean().item()

    assert residual(0.5) < 0.5 * residual(0.0)


def test_bad_input_named():
    c = CORRUPTIONS["blurring"]()
    world = GaussianWorld(c)
    op = ops.Blur(SHAPE, 1.0)
    y = torch.zeros(2, *SHAPE, dtype=f64)
    with pytest.raises(ValueError, match=r"y must have shape \(B, 3, 2, 3\).*got \(2, 3, 4, 6\)"):
        lc.restore(world.model, c, y, ops.Downsample(SHAPE, 2), prediction="x")
    with pytest.raises(ValueError, match=r"built for images of shape \(3, 8, 8\).*has shape \(3, 4, 6\)"):
        lc.restore(world.model, c, torch.zeros(2, 3, 8, 8), ops.Blur((3, 8, 8), 1.0), prediction="x")
    with pytest.raises(ValueError, match="y .*NaN"):
        lc.restore(world.model, c, torch.full_like(y, float("nan")), op, prediction="x")
    with pytest.raises(ValueError, match="noise_std.*>= 0, got -0.1"):
        lc.restore(world.model, c, y, op, -0.1, prediction="x")
    with pytest.raises(ValueError, match="unknown restoration method 'ddrm'"):
        lc.restore(world.model, c, y, op, method="ddrm", prediction="x")
    with pytest.raises(TypeError, match="multistep sampler"):
        lc.restore(world.model, c, y, op, method="dps", sampler="dpm++2m", steps=4, prediction="x")
    c.data_var = None
    with pytest.raises(ValueError, match=r"'pigdm'.*data_var is None: call corruption.fit_data_statistics\(x\)"):
        lc.restore(world.model, c, y, op, method="pigdm", prediction="x")


# ----------------------------------------------------------------------------- a loaded model, the command line
def _tiny_model(path):
    from lincorrupt.nn import UNet
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], groups=4,
               dropout=0.0)
    c = lc.BlurringDiffusion((3, 8, 8)).fit_data_statistics(torch.rand(16, 3, 8, 8) * 2 - 1)
    lc.DiffusionModel(net, c, "v").save(path)
    return lc.load(path)


def test_model_restore_and_command_line(tmp_path, capsys):
    from PIL import Image

    from lincorrupt.commands import main
    model = _tiny_model(tmp_path / "m.pt")
    op = ops.Downsample((3, 8, 8), 2)
    y = op(torch.rand(2, 3, 8, 8) * 2 - 1)
    x = model.restore(y, op, method="ddnm", steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op(x), y, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="prediction is fixed"):
        model.restore(y, op, prediction="eps")

    Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "restored.png"
    assert main(["restore", str(tmp_path / "m.pt"), "--task", "sr", "--input", str(tmp_path / "small.png"), "-o",
                 str(out), "--steps", "3", "-n", "2", "--device", "cpu"]) == 0
    assert Image.open(out).size == (3 * 8 + 4 * 2, 8 + 2 * 2)  # pseudo-inverse and 2 restorations, padding 2
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "clean.png")
    for task in ("deblur", "inpaint", "grey"):
        assert main(["restore", str(tmp_path / "m.pt"), "--task", task, "--degrade", "--input",
                     str(tmp_path / "clean.png"), "-o", str(out), "--steps", "2", "--device", "cpu"]) == 0
    assert main(["restore", str(tmp_path / "m.pt"), "--task", "sr", "--input", str(tmp_path / "clean.png"),
                 "--device", "cpu", "-o", str(out)]) == 1
    assert "clean.png is 8x8 but this task's measurement is 4x4" in capsys.readouterr().err


# ----------------------------------------------------------------------------- shipped priors, the how-to
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(lc.weights.PRIORS))
def test_shipped_priors_load(name):
    path = lc.weights.prior(name)
    assert path.stat().st_size <= 2_000_000
    model = lc.load(path)
    assert model.corruption.shape == (1, 28, 28) and model.corruption.data_var is not None
    assert next(model.network.parameters()).dtype == torch.float32  # float16 on disk, float32 loaded
    assert all(p.dtype == torch.float16 for p in torch.load(path, weights_only=False)["model"].values()
               if p.is_floating_point())
    with pytest.raises(ValueError, match="no shipped prior 'cifar10'"):
        lc.weights.prior("cifar10")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_how_to_code_runs(capsys):
    runpy.run_path(str(ROOT / "docs" / "tutorial_code" / "restore.py"))
    assert capsys.readouterr().out.startswith("PSNR  blurred")


def test_ddnm_plus_scales_each_coordinate_by_its_singular_value():
    """DDNM+ (Wang et al. 2023, eq. 19), written out for a blur diagonal in the DCT basis: lambda = min(1,
    h sigma_{t->s} / (c_x sigma_y)) with the ancestral step's c_x = alpha_s (1 - SNR_t / SNR_s) and
    sigma_{t->s}^2 = (1 - SNR_t / SNR_s) sigma_s^2 (Kingma et al. 2021, eq. 32-33)."""
    c, op = CORRUPTIONS["blurring"](), OPERATORS["blur"]()
    rng = np.random.default_rng(0)
    u_x = torch.from_numpy(rng.standard_normal((2, *SHAPE)))
    y = torch.from_numpy(rng.standard_normal((2, *SHAPE)))
    t, s, noise_std = 0.5, 0.45, 0.05
    c_t, c_s = (c.coefficients(torch.tensor([v], dtype=f64)) for v in (t, s))
    got = restoration.ddnm_x_hat(u_x, c_t, c_s, y, op, noise_std, c.basis)
    (a_t, s_t), (a_s, s_s) = (c.alpha_sigma(torch.tensor([v], dtype=f64)) for v in (t, s))
    drop = 1 - (a_t / s_t) ** 2 / (a_s / s_s) ** 2
    h = torch.exp(-torch.from_numpy(np.add.outer((np.pi * np.arange(4) / 4) ** 2, (np.pi * np.arange(6) / 6) ** 2)) / 2)
    u_y = c.basis.to_basis(y)
    lam = torch.clamp(h * torch.sqrt(drop * s_s**2) / (a_s * drop * noise_std), max=1.0)
    torch.testing.assert_close(got, u_x - lam * (h * u_x - u_y) / h)
