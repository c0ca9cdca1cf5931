"""Samplers: the published step formulas written out, each deterministic sampler's declared
order of convergence measured with exact moment propagation (Gaussian data, exact denoiser),
and clear errors. The time grids are tested in test_grids.py."""

import math

import numpy as np
import pytest
import torch

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS
from helpers.gaussian import SHAPE, D, make

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
def test_dpmpp_2m_and_2s_are_second_order_and_ddim_first_order(name):
    """Doubling the steps divides the error by ~4 for a second-order method, ~2 for DDIM."""
    ratios = {m: moment_error(name, m, 40) / moment_error(name, m, 80) for m in ("ddim", "dpm++2m", "dpm++2s")}
    assert 1.6 < ratios["ddim"] < 2.2, ratios
    assert ratios["dpm++2m"] > 2.5 and ratios["dpm++2s"] > 2.5, ratios
    assert moment_error(name, "dpm++2m", 80) < 0.02


def fixed_end_times(steps, t_end=0.05, start=1e-4):
    """``steps`` evaluations from t = 1 to ``t_end``, then 0: the output is x_hat at ``t_end`` for
    every ``steps``, so successive refinements converge to one limit. Two short intervals of
    ``start`` come first, uniform ones after: the multistep methods' lower-order start-up steps
    are then exact enough that the global error shows the order of the multistep formula."""
    return torch.cat([torch.tensor([1.0, 1.0 - start], dtype=f64), torch.linspace(1.0 - 2 * start, t_end, steps - 2,
                                                                                 dtype=f64), torch.zeros(1, dtype=f64)])


def self_convergence_ratio(name, method, steps):
    """|y(N) - y(2N)| / |y(2N) - y(4N)| for the output moments y: 2^p for a method of order p."""
    c, truth = make(name)
    mean0, cov0 = truth.prior_moments()
    u = torch.from_numpy(np.vstack([mean0, mean0 + np.linalg.cholesky(cov0).T])).reshape(D + 1, *SHAPE)
    outputs = []
    for n in (steps, 2 * steps, 4 * steps):
        y = lc.SAMPLERS[method](lc.Denoiser(truth.model, c, "x"), c, u, fixed_end_times(n)).reshape(D + 1, D).numpy()
        outputs.append(np.concatenate([y[0], ((y[1:] - y[0]).T @ (y[1:] - y[0])).ravel()]))
    return np.linalg.norm(outputs[0] - outputs[1]) / np.linalg.norm(outputs[1] - outputs[2])


def test_every_sampler_declares_its_order_and_whether_it_is_stochastic():
    for name, sampler in lc.SAMPLERS.items():
        assert isinstance(sampler, lc.sampling.Sampler), name
        assert isinstance(sampler.stochastic, bool), name
        assert (sampler.order is None) == sampler.stochastic, name  # an order is declared for deterministic ones
        assert sampler.order is None or (isinstance(sampler.order, int) and sampler.order >= 1), name


def deterministic_samplers():
    return [(m, s.order) for m, s in lc.SAMPLERS.items() if not s.stochastic]


@pytest.mark.parametrize("name", ["ddpm", "blurring"])
@pytest.mark.parametrize("method, order", deterministic_samplers())
def test_every_deterministic_sampler_converges_at_its_declared_order(name, method, order):
    """Doubling the steps divides the self-convergence error by 2^order: between 0.8 and 1.4
    times it, which no method of order p - 1 or p + 1 reaches."""
    ratio = self_convergence_ratio(name, method, 40)
    assert 0.8 * 2**order < ratio < 1.4 * 2**order, (method, ratio)


def cosine_coefficients(t):
    """alpha, sigma of the clipped cosine schedule (logsnr in [-10, 10]), written out."""
    limit_max = math.atan(math.exp(-5.0))
    limit_min = math.atan(math.exp(5.0)) - limit_max
    logsnr = -2 * math.log(math.tan(limit_min * t + limit_max))
    return math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))


def capture_inputs(c, method, times, model_x):
    """Run the sampler function from a given start at times[0] (which may be below 1); returns the
    start, every model input and the result, in data space."""
    start = torch.randn(2, *c.shape, generator=torch.Generator().manual_seed(1), dtype=f64)
    inputs = []
    denoise = lc.Denoiser(lambda z, t: (inputs.append(z.clone()), model_x(z, t))[1], c, "x")
    out = lc.SAMPLERS[method](denoise, c, c.basis.to_basis(start), times)
    return start, inputs, c.basis.from_basis(out)


def x_model(z, t):
    return torch.tanh(1.3 * z) * (1 - t.view(-1, 1, 1, 1)) + 0.1 * t.view(-1, 1, 1, 1)


def test_dpmpp_2s_pair_is_lu_et_al_algorithm_1_in_the_identity_basis():
    """One pair (t, m, s), from Lu et al. (2022b) Algorithm 1 with the scalar cosine schedule."""
    c = lc.DDPM(SHAPE, schedule="cosine")
    t, m, s = 0.7, 0.45, 0.3
    z, inputs, _ = capture_inputs(c, "dpm++2s", torch.tensor([t, m, s, 0.0], dtype=f64), x_model)
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


def test_an_unknown_method_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown sampling method 'ode'; expected one of \['ancestral'"):
        lc.sample(x_model, lc.DDPM(SHAPE), 2, steps=3, method="ode")


def test_first_dpmpp_2m_step_is_ddim_and_the_second_uses_two_outputs():
    c = lc.BlurringDiffusion(SHAPE)
    times = torch.tensor([0.9, 0.6, 0.35, 0.0], dtype=f64)
    _, ours, _ = capture_inputs(c, "dpm++2m", times, x_model)
    _, ddim, _ = capture_inputs(c, "ddim", times, x_model)
    torch.testing.assert_close(ours[1], ddim[1], rtol=1e-12, atol=1e-12)
    assert (ours[2] - ddim[2]).abs().max() > 1e-4


def test_dpmpp_3m_starts_as_dpmpp_2m_then_uses_three_outputs():
    c = lc.BlurringDiffusion(SHAPE)
    times = torch.tensor([0.9, 0.7, 0.5, 0.35, 0.2, 0.0], dtype=f64)
    _, ours, _ = capture_inputs(c, "dpm++3m", times, x_model)
    _, two, _ = capture_inputs(c, "dpm++2m", times, x_model)
    assert len(ours) == 5
    torch.testing.assert_close(ours[:3], two[:3], rtol=1e-12, atol=1e-12)  # DDIM, then the 2M step
    assert (ours[3] - two[3]).abs().max() > 1e-4
    # with fewer than 15 steps the last solver step is second order again: the same 2M formula
    # from the same history gives the same input to the last evaluation
    from lincorrupt.sampling.samplers import _at, _first_order, _grid_coefficients, _ratio
    coef, lam = _grid_coefficients(c, times)
    u = [c.basis.to_basis(z) for z in ours]
    x2, x3 = (lc.Denoiser(x_model, c, "x").x_hat(u[k], times[k:k + 1], _at(coef, k)) for k in (2, 3))
    h, h_last = lam[4:5] - lam[3:4], lam[3:4] - lam[2:3]
    expected = _first_order(u[3], x3 + _ratio(h, 2 * h_last) * (x3 - x2), _at(coef, 3), _at(coef, 4), h)
    torch.testing.assert_close(ours[4], c.basis.from_basis(expected), rtol=1e-10, atol=1e-10)


def test_exponential_integrals_are_exact_for_small_and_zero_steps():
    from lincorrupt.sampling.samplers import _SERIES_BELOW, _exp_integrals

    h = torch.tensor([0.0, 1e-12, 1e-6, 0.9 * _SERIES_BELOW, 1.1 * _SERIES_BELOW, 0.7, 5.0], dtype=f64)
    exact = [[float(v) for v in row] for row in _mpmath_exp_integrals(h.tolist())]
    for n, c in enumerate(_exp_integrals(h)):
        np.testing.assert_allclose(c.numpy(), exact[n], rtol=1e-12, atol=0)
    for n, c in enumerate(_exp_integrals(h.float())):
        np.testing.assert_allclose(c.numpy(), exact[n], rtol=2e-6, atol=0)


def _mpmath_exp_integrals(hs):
    """c_n(h) = integral_0^h e^(tau - h) tau^n / n! dtau in 50-digit arithmetic."""
    import mpmath

    mpmath.mp.dps = 50
    rows = [[], [], []]
    for h in hs:
        h = mpmath.mpf(h)
        for n in range(3):
            integrand = lambda tau, h=h, n=n: mpmath.exp(tau - h) * tau**n / mpmath.factorial(n)
            rows[n].append(mpmath.quad(integrand, [0, h]))
    return rows


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("method", ["dpm++2m", "dpm++2s", "dpm++3m"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_every_corruption_and_grid_ends_at_the_denoised_estimate(name, method, steps):
    c = CORRUPTIONS[name]()
    c.fit_data_statistics(torch.randn(16, *c.shape, generator=torch.Generator().manual_seed(1)))  # for grid="data"
    target = torch.randn(1, *c.shape, generator=torch.Generator().manual_seed(0))
    for grid in lc.GRIDS:
        calls = []
        model = lambda z, t, calls=calls: (calls.append(t), target.expand_as(z))[1]
        x = lc.sample(model, c, 3, steps=steps, method=method, grid=grid, prediction="x",
                      generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(x, target.expand(3, *c.shape))
        assert len(calls) == steps  # steps counts network evaluations


def test_bad_input_is_refused_where_it_enters():
    c = lc.BlurringDiffusion(SHAPE)
    model = lambda z, t: z
    with pytest.raises(ValueError, match=r"dpm\+\+2m.*dpm\+\+2s.*dpm\+\+3m"):
        lc.sample(model, c, 2, method="unipc")
    with pytest.raises(ValueError, match="logsnr"):
        lc.sample(model, c, 2, grid="karras")
    with pytest.raises(ValueError, match="decrease"):
        lc.sample(model, c, 2, grid=torch.tensor([0.0, 0.5, 1.0]), method="dpm++2m")
    with pytest.raises(ValueError, match="eta"):
        lc.sample(model, c, 2, steps=3, method="ddim", eta=1.5)
    for grid in lc.GRIDS:
        with pytest.raises(ValueError, match="steps"):
            lc.sample(model, c, 2, steps=0, grid=grid, method="dpm++3m")
    with pytest.raises(ValueError, match="steps"):
        lc.GRIDS["info"](c, 2.5)
    with pytest.raises(ValueError, match="decrease"):
        lc.sample(model, c, 2, grid=torch.tensor([1.0, 0.5, 0.5, 0.0]), method="dpm++3m")
    with pytest.raises(TypeError):
        lc.sample(model, c, 2, steps=3, method="dpm++2m", eta=0.5)
