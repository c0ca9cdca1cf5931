"""Fast samplers and time grids: the published step formulas written out, second-order
convergence measured with exact moment propagation (Gaussian data, exact denoiser), the
log-SNR grid against the cosine schedule's closed-form inverse, and clear errors."""

import math

import numpy as np
import pytest
import torch
from conftest import CORRUPTIONS
from test_sampling import D, SHAPE, make

import lincorrupt as lc

f64 = torch.float64


def exact_output_moments(name, method, steps, grid="uniform"):
    """Mean and covariance (data space) of a deterministic sampler's output for Gaussian data.

    With the exact denoiser the sampler is an affine map u_1 -> x, so running it on the prior
    mean and on the mean plus each column of a square root of the prior covariance gives the
    output moments exactly: no Monte Carlo error.
    """
    c, truth = make(name)
    mean0, cov0 = truth.prior_moments()
    rows = np.vstack([mean0, mean0 + np.linalg.cholesky(cov0).T])
    u = torch.from_numpy(rows).reshape(D + 1, *SHAPE)
    times = lc.GRIDS[grid](c, steps)
    y = lc.SAMPLERS[method](lc.Denoiser(truth.model, c, "x"), c, u, times).reshape(D + 1, D).numpy() @ truth.vt
    factor = (y[1:] - y[0]).T
    return y[0], factor @ factor.T, truth


def moment_error(name, method, steps):
    mean, cov, truth = exact_output_moments(name, method, steps)
    return np.linalg.norm(cov - truth.cov) / np.linalg.norm(truth.cov) + np.linalg.norm(mean - truth.m)


@pytest.mark.parametrize("name", ["ddpm", "blurring"])
def test_dpmpp_2m_and_ode_are_second_order_and_ddim_first_order(name):
    """Doubling the steps divides the error by ~4 for a second-order method, ~2 for DDIM."""
    ratios = {m: moment_error(name, m, 40) / moment_error(name, m, 80) for m in ("ddim", "dpm++2m", "ode")}
    assert 1.6 < ratios["ddim"] < 2.2, ratios
    assert ratios["dpm++2m"] > 2.5 and ratios["ode"] > 2.5, ratios
    assert moment_error(name, "dpm++2m", 80) < 0.02


def cosine_coefficients(t):
    """alpha, sigma of the clipped cosine schedule (logsnr in [-10, 10]), written out."""
    limit_max = math.atan(math.exp(-5.0))
    limit_min = math.atan(math.exp(5.0)) - limit_max
    logsnr = -2 * math.log(math.tan(limit_min * t + limit_max))
    return math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))


def capture_inputs(c, method, times, model_x):
    start = torch.randn(2, *c.shape, generator=torch.Generator().manual_seed(1), dtype=f64)

    class Start(lc.Prior):
        def sample(self, corruption, n, generator=None, device=None, dtype=None):
            return start

    inputs = []
    c.prior = Start()
    out = lc.sample(lambda z, t: (inputs.append(z.clone()), model_x(z, t))[1], c, 2, grid=times, method=method,
                    prediction="x", dtype=f64)
    return start, inputs, out


def x_model(z, t):
    return torch.tanh(1.3 * z) * (1 - t.view(-1, 1, 1, 1)) + 0.1 * t.view(-1, 1, 1, 1)


def test_ode_pair_is_dpm_solver_2s_in_the_identity_basis():
    """One pair (t, m, s), from Lu et al. (2022b) Algorithm 1 with the scalar cosine schedule."""
    c = lc.DDPM(SHAPE, schedule="cosine")
    t, m, s = 0.7, 0.45, 0.3
    z, inputs, _ = capture_inputs(c, "ode", torch.tensor([t, m, s, 0.0], dtype=f64), x_model)
    (a_t, s_t), (a_m, s_m), (a_s, s_s) = (cosine_coefficients(v) for v in (t, m, s))
    lam = lambda a, sig: math.log(a / sig)
    h = lam(a_s, s_s) - lam(a_t, s_t)
    r = (lam(a_m, s_m) - lam(a_t, s_t)) / h
    x_t = x_model(z, torch.tensor([t], dtype=f64))
    z_m = s_m / s_t * z - a_m * math.expm1(-r * h) * x_t
    x_m = x_model(z_m, torch.tensor([m], dtype=f64))
    d = (1 - 1 / (2 * r)) * x_t + 1 / (2 * r) * x_m
    z_s = s_s / s_t * z - a_s * math.expm1(-h) * d
    assert len(inputs) == 3
    torch.testing.assert_close(inputs[1], z_m, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inputs[2], z_s, rtol=1e-10, atol=1e-10)


def test_first_dpmpp_2m_step_is_ddim_and_the_second_uses_two_outputs():
    c = lc.BlurringDiffusion(SHAPE)
    times = torch.tensor([0.9, 0.6, 0.35, 0.0], dtype=f64)
    _, ours, _ = capture_inputs(c, "dpm++2m", times, x_model)
    _, ddim, _ = capture_inputs(c, "ddim", times, x_model)
    torch.testing.assert_close(ours[1], ddim[1], rtol=1e-12, atol=1e-12)
    assert (ours[2] - ddim[2]).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("method", ["dpm++2m", "ode"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_every_corruption_and_grid_ends_at_the_denoised_estimate(name, method, steps):
    c = CORRUPTIONS[name]()
    target = torch.randn(1, *c.shape, generator=torch.Generator().manual_seed(0))
    for grid in lc.GRIDS:
        calls = []
        model = lambda z, t: (calls.append(t), target.expand_as(z))[1]
        x = lc.sample(model, c, 3, steps=steps, method=method, grid=grid, prediction="x",
                      generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(x, target.expand(3, *c.shape))
        assert len(calls) == steps  # steps counts network evaluations


def test_logsnr_grid_is_the_inverse_of_the_cosine_schedule():
    c = lc.DDPM(SHAPE, schedule="cosine")
    steps = 12
    times = lc.GRIDS["logsnr"](c, steps).numpy()
    limit_max = math.atan(math.exp(-5.0))
    limit_min = math.atan(math.exp(5.0)) - limit_max
    logsnr = np.linspace(-10.0, 10.0, steps + 1)
    expected = (np.arctan(np.exp(-logsnr / 2)) - limit_max) / limit_min
    np.testing.assert_allclose(times, expected, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_logsnr_grid_decreases_from_one_to_zero_in_equal_log_snr_steps(name):
    from lincorrupt.samplers_fast import mean_log_snr

    c = CORRUPTIONS[name]()
    times = lc.GRIDS["logsnr"](c, 16)
    assert times[0] == 1 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    level = mean_log_snr(c, times[:-1])
    gaps = level[1:] - level[:-1]
    torch.testing.assert_close(gaps, gaps[:1].expand_as(gaps), rtol=1e-6, atol=1e-8)


def test_bad_input_is_refused_where_it_enters():
    c = lc.BlurringDiffusion(SHAPE)
    model = lambda z, t: z
    with pytest.raises(ValueError, match=r"dpm\+\+2m.*dpm\+\+3m.*ode"):
        lc.sample(model, c, 2, method="unipc")
    with pytest.raises(ValueError, match="logsnr"):
        lc.sample(model, c, 2, grid="karras")
    with pytest.raises(ValueError, match="decrease"):
        lc.sample(model, c, 2, grid=torch.tensor([0.0, 0.5, 1.0]), method="dpm++2m")
    with pytest.raises(ValueError, match="eta"):
        lc.sample(model, c, 2, steps=3, method="ddim", eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        lc.sample(model, c, 2, steps=0, grid="logsnr")
    with pytest.raises(TypeError):
        lc.sample(model, c, 2, steps=3, method="dpm++2m", eta=0.5)
