"""Soft Diffusion's samplers: one momentum step's mean and variance against the formula written out
here, its reduction to Cold Diffusion's Algorithm 2 (written out with scipy's DCT), the naive sampler's
step, and convergence of the momentum sampler's exact output moments on Gaussian data."""

import numpy as np
import pytest
import torch

import lincorrupt as lc
from helpers.dct import blur
from helpers.gaussian import SHAPE, D, Truth, make

f64 = torch.float64
N = 20000  # draws for the one-step moments


def one_step(c, method, t, s, u0, x0):
    """N draws of u_s after one step t -> s from u_t = u0 with a model that predicts x0 (basis coordinates)."""
    seen = []

    def model(z, tt):
        seen.append(z.clone())
        return c.basis.from_basis(x0.expand(z.shape))

    times = torch.tensor([t, s, 0.0], dtype=f64)
    lc.SAMPLERS[method](lc.Denoiser(model, c, "x"), c, u0.expand(N, *SHAPE).clone(), times,
                        generator=torch.Generator().manual_seed(0))
    return c.basis.to_basis(seen[1])


def coefficients(c, t):
    alpha, sigma = c.alpha_sigma(torch.tensor([t], dtype=f64))
    return alpha.expand(1, *SHAPE)[0], sigma.expand(1, *SHAPE)[0]


def assert_moments(draws, mean, var):
    se = (var / N).sqrt().clamp(min=1e-12)
    assert ((draws.mean(0) - mean).abs() / se).max() < 5
    if bool((var > 0).all()):
        assert ((draws.var(0) / var - 1).abs()).max() < 5 * (2 / N) ** 0.5
    else:
        torch.testing.assert_close(draws, mean.expand_as(draws), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["blurring", "ihdm", "soft"])
def test_one_momentum_step_has_the_mean_and_variance_of_the_formula(name):
    """u_s = u + (1 - sigma_s^2 / sigma_t^2)(alpha_t x_hat - u) + (alpha_s - alpha_t) x_hat
    + sqrt(max(sigma_t^2 - sigma_s^2, 0)) n, per basis coordinate."""
    c = {"blurring": lambda: lc.BlurringDiffusion(SHAPE), "ihdm": lambda: lc.IHDM(SHAPE),
         "soft": lambda: lc.SoftDiffusion(SHAPE, sigma_blur_max=3.0)}[name]()
    g = torch.Generator().manual_seed(1)
    u0, x0 = torch.randn(2, *SHAPE, generator=g, dtype=f64)
    t, s = 0.6, 0.45
    (a_t, s_t), (a_s, s_s) = coefficients(c, t), coefficients(c, s)
    mean = u0 + (1 - s_s**2 / s_t**2) * (a_t * x0 - u0) + (a_s - a_t) * x0
    var = torch.clamp(s_t**2 - s_s**2, min=0).expand(SHAPE)
    assert_moments(one_step(c, "momentum", t, s, u0, x0), mean, var)


@pytest.mark.parametrize("name", ["blurring", "soft"])
def test_one_naive_step_recorrupts_x_hat(name):
    """u_s = alpha_s x_hat + sigma_s n."""
    c = {"blurring": lambda: lc.BlurringDiffusion(SHAPE), "soft": lambda: lc.SoftDiffusion(SHAPE)}[name]()
    g = torch.Generator().manual_seed(2)
    u0, x0 = torch.randn(2, *SHAPE, generator=g, dtype=f64)
    a_s, s_s = coefficients(c, 0.3)
    assert_moments(one_step(c, "naive", 0.5, 0.3, u0, x0), a_s * x0, (s_s**2).expand(SHAPE))


@pytest.mark.parametrize("make_corruption", [lambda: lc.IHDM(SHAPE, sigma_blur_max=4.0, num_steps=20),
                                             lambda: lc.SoftDiffusion(SHAPE, noise_min=0.05, noise_max=0.05)])
def test_with_constant_noise_momentum_is_cold_diffusions_algorithm_2(make_corruption):
    """Bansal et al. (2022), Algorithm 2: x_s = x_t - D(x0_hat, t) + D(x0_hat, s), D(x, t) = C_t x,
    written out in data space with scipy's DCT for a nonlinear model."""
    c = make_corruption()
    model = lambda z, t: torch.tanh(2 * z) + t.view(-1, 1, 1, 1) * z  # any deterministic x-prediction
    times = torch.linspace(1, 0, 9, dtype=f64)
    x_t = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=f64)
    out = c.basis.from_basis(lc.SAMPLERS["momentum"](lc.Denoiser(model, c, "x"), c, c.basis.to_basis(x_t), times,
                                                     generator=torch.Generator().manual_seed(4)))
    x = x_t.numpy()
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        x0_hat = model(torch.from_numpy(x), torch.full((3,), t, dtype=f64)).numpy()
        if s == 0:
            break
        a_t, a_s = (coefficients(c, v)[0].numpy() for v in (t, s))
        x = x - blur(x0_hat, a_t) + blur(x0_hat, a_s)
    np.testing.assert_allclose(out.numpy(), x0_hat, rtol=1e-9, atol=1e-9)


def soft_truth():
    """SoftDiffusion with Gaussian data: at t = 1 only the DC keeps signal, so the moment-matched
    prior with the true moments is exact (as for IHDM)."""
    c = lc.SoftDiffusion(SHAPE, sigma_blur_max=8.0)
    truth = Truth(c)
    c.prior = lc.GaussianPrior(torch.tensor(truth.mu).reshape(SHAPE), torch.tensor(np.diag(truth.C)).reshape(SHAPE))
    return c, truth


def momentum_moments(truth, steps):
    """Exact mean and covariance (data space) of the momentum sampler's output for Gaussian data:
    with x_hat = mu + G (u - a_t mu), the step is u_s = r u + (a_s - r a_t) x_hat + noise of
    variance max(s_t^2 - s_s^2, 0), r = s_s^2 / s_t^2: affine in u plus independent noise."""
    mean, P = truth.prior_moments()
    times = np.linspace(1, 0, steps + 1)
    for t, s_ in zip(times[:-1], times[1:]):
        a_t, s_t, G = truth.gain(t)
        x_M, x_b = G, truth.mu - G @ (a_t * truth.mu)
        if s_ == 0:
            return truth.vt.T @ (x_M @ mean + x_b), truth.vt.T @ x_M @ P @ x_M.T @ truth.vt
        a_s, s_s = truth.coefficients(s_)
        r = s_s**2 / s_t**2
        M = np.diag(r) + np.diag(a_s - r * a_t) @ x_M
        mean = M @ mean + (a_s - r * a_t) * x_b
        P = M @ P @ M.T + np.diag(np.maximum(s_t**2 - s_s**2, 0))


@pytest.mark.parametrize("name", ["blurring", "ihdm", "soft"])
def test_momentum_samples_have_the_exact_moments_and_these_converge_to_the_data(name):
    c, truth = soft_truth() if name == "soft" else make(name)
    n, steps = 4000, 20
    x = lc.sample(truth.model, c, n, steps=steps, prediction="x", method="momentum",
                  generator=torch.Generator().manual_seed(5), dtype=f64).reshape(n, D).numpy()
    mean, cov = momentum_moments(truth, steps)
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(x.mean(0) - mean) / se_mean).max() < 4.5
    assert (np.abs(np.cov(x.T) - cov) / se_cov).max() < 4.5
    errors = []
    for k in (25, 100, 400):
        mean_k, cov_k = momentum_moments(truth, k)
        errors.append(np.linalg.norm(cov_k - truth.cov) / np.linalg.norm(truth.cov))
        np.testing.assert_allclose(mean_k, truth.m, atol=1e-6)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05, errors
