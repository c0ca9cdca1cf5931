"""lc.GaussianData, the exact oracle: its denoiser against Gaussian conditioning written in numpy, its KL
against the numpy/scipy moments of tests/helpers/gaussian.py for every sampler, the limit of many steps, the
priors it accepts, and its gradient in the time grid."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lincorrupt as lc
from helpers.gaussian import SHAPE, D, make

f64 = torch.float64
NAMES = ["ddpm", "blurring", "ihdm"]


def oracle(truth):
    return lc.GaussianData(torch.from_numpy(truth.m).reshape(SHAPE), torch.from_numpy(truth.cov))


@settings(max_examples=20)
@given(name=st.sampled_from(NAMES), t=st.floats(0.01, 1.0), prediction=st.sampled_from(sorted(lc.PREDICTIONS)))
def test_the_exact_denoiser_is_gaussian_conditioning(name, t, prediction):
    c, truth = make(name)
    z = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=f64)
    tt = torch.full((5,), t, dtype=f64)
    expected_x = truth.model(z, tt)
    got = oracle(truth).model(c, prediction)(z, tt)
    expected = c.convert(expected_x, z, tt, source="x", target=prediction)  # (eps -> x divides by alpha_t ~ 0)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_the_denoiser_takes_one_time_per_row():
    c, truth = make("blurring")
    z = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=f64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=f64)
    got = oracle(truth).model(c)(z, t)
    for i in range(3):
        torch.testing.assert_close(got[i:i + 1], truth.model(z[i:i + 1], t[i:i + 1]), rtol=1e-9, atol=1e-11)


def test_fit_is_the_sample_mean_and_covariance_plus_the_ridge():
    x = torch.randn(50, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=f64)
    data = lc.GaussianData.fit(x, ridge=1e-3)
    flat = x.reshape(50, D).numpy()
    np.testing.assert_allclose(data.mean.reshape(D).numpy(), flat.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(data.cov.numpy(), np.cov(flat.T) + 1e-3 * np.eye(D), rtol=1e-10, atol=1e-14)
    assert data.shape == SHAPE and data.dim == D


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
def test_sample_kl_is_the_kl_of_the_reference_moments(name, method):
    """Rules: moments propagated in numpy through the rule's (k_u, k_x, var); deterministic samplers: the
    sampler run on probes with the numpy denoiser; the KL with scipy. The oracle's KL must agree."""
    c, truth = make(name)
    sampler = lc.SAMPLERS[method]
    for steps, grid in ((6, "uniform"), (9, "logsnr")):
        times = lc.GRIDS[grid](c, steps)
        if isinstance(sampler, lc.sampling.RuleSampler):
            mean, cov = truth.sampler_moments(steps, method, times.numpy())
        else:
            mean, cov = truth.probe_moments(method, times)
        expected = truth.kl(mean, cov)
        got = oracle(truth).sample_kl(c, method, steps, grid, exact_prior=True)
        assert got.dtype == f64 and got.ndim == 0
        np.testing.assert_allclose(got.item(), expected, rtol=1e-7, err_msg=f"{method} {grid}")


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_sample_kl_passes_the_options_on(eta):
    c, truth = make("blurring")
    expected = truth.kl(*truth.sampler_moments(8, "ddim", eta=eta))
    got = oracle(truth).sample_kl(c, "ddim", 8, exact_prior=True, eta=eta)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-7)
    if eta == 1.0:  # DDIM with eta = 1 is ancestral sampling
        np.testing.assert_allclose(got.item(), oracle(truth).sample_kl(c, "ancestral", 8, exact_prior=True).item(),
                                   rtol=1e-9)


def last_x_hat_kl(truth, t_end):
    """KL of E[x | z_{t_end}] with z_{t_end} ~ q to the data, in closed form (numpy): N(m, V^T G K G^T V)."""
    a, s, G = truth.gain(t_end)
    K = np.diag(a) @ truth.C @ np.diag(a) + np.diag(s**2)
    return truth.kl(truth.m, truth.vt.T @ G @ K @ G.T @ truth.vt)


@pytest.mark.parametrize("name", ["ddpm", "blurring"])
@pytest.mark.parametrize("method", ["ancestral", "ddim", "dpm++2m"])
def test_with_many_steps_the_kl_tends_to_that_of_the_last_x_hat(name, method):
    """A sampler returns x_hat at its last evaluation t_end; with exact steps from the exact q(u_1) that is
    E[x | z_{t_end}], z_{t_end} ~ q. Refining the grid before t_end brings the KL there, at least at first
    order (16 times the steps: the gap at least 8 times smaller)."""
    c, truth = make(name)
    t_end = 0.05
    limit = last_x_hat_kl(truth, t_end)
    data = oracle(truth)
    errors = []
    for n in (10, 40, 160):
        times = torch.cat([torch.linspace(1, t_end, n, dtype=f64), torch.zeros(1, dtype=f64)])
        errors.append(abs(data.sample_kl(c, method, grid=times, exact_prior=True).item() - limit))
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < errors[0] / 8, (errors, limit)


def test_the_start_is_the_corruptions_prior_unless_exact():
    c, truth = make("blurring")
    data = oracle(truth)
    mean, cov = data.prior_moments(c)
    torch.testing.assert_close(mean, torch.zeros(D, dtype=f64))
    torch.testing.assert_close(cov, torch.eye(D, dtype=f64))
    exact_mean, exact_cov = (torch.from_numpy(v) for v in truth.prior_moments())
    mean, cov = data.prior_moments(c, exact=True)
    torch.testing.assert_close(mean, exact_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov, exact_cov, rtol=1e-10, atol=1e-12)
    ihdm, ihdm_truth = make("ihdm")  # a GaussianPrior with the data's diagonal moments: N(a m, a^2 v + s^2)
    a, s = ihdm_truth.coefficients(1.0)
    mean, cov = oracle(ihdm_truth).prior_moments(ihdm)
    np.testing.assert_allclose(mean.numpy(), a * ihdm_truth.mu, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cov.numpy(), np.diag(a**2 * np.diag(ihdm_truth.C) + s**2), rtol=1e-6, atol=1e-9)


def test_an_empirical_prior_is_refused_unless_the_start_is_exact():
    c, truth = make("blurring")
    x = torch.randn(20, *SHAPE, generator=torch.Generator().manual_seed(3))
    c.prior = lc.EmpiricalPrior.fit(c, x)
    data = oracle(truth)
    with pytest.raises(ValueError, match="EmpiricalPrior.*not Gaussian.*exact_prior=True"):
        data.sample_kl(c, "dpm++2m", 5)
    assert np.isfinite(data.sample_kl(c, "dpm++2m", 5, exact_prior=True).item())


def test_the_kl_is_differentiable_in_the_grid():
    """d KL / d t_k of a deterministic sampler against a central difference."""
    c, truth = make("blurring")
    data = oracle(truth)
    times = lc.GRIDS["uniform"](c, 6).requires_grad_()
    kl = data.sample_kl(c, "dpm++2m", grid=times, exact_prior=True)
    (grad,) = torch.autograd.grad(kl, times)
    h = 1e-5
    for k in (2, 4):
        shifted = [times.detach().clone() for _ in range(2)]
        shifted[0][k] += h
        shifted[1][k] -= h
        with torch.no_grad():
            plus, minus = (data.sample_kl(c, "dpm++2m", grid=g, exact_prior=True).item() for g in shifted)
        np.testing.assert_allclose(grad[k].item(), (plus - minus) / (2 * h), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_model_samples_alike_in_every_prediction(prediction):
    c, truth = make("blurring")
    data = oracle(truth)
    kw = dict(steps=8, method="ancestral", dtype=f64)
    a = lc.sample(data.model(c, prediction), c, 4, prediction=prediction, generator=torch.Generator().manual_seed(0),
                  **kw)
    b = lc.sample(data.model(c), c, 4, prediction="x", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_bad_input_is_refused_by_name():
    c, truth = make("blurring")
    data = oracle(truth)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 6\).*\(1, 8, 8\)"):
        data.model(lc.BlurringDiffusion((1, 8, 8)))
    with pytest.raises(ValueError, match="positive definite"):
        lc.GaussianData(torch.zeros(SHAPE), torch.zeros(D, D))
    with pytest.raises(ValueError, match=r"covariance \(D, D\)"):
        lc.GaussianData(torch.zeros(SHAPE), torch.eye(D - 1))
    with pytest.raises(ValueError, match="N >= 2"):
        lc.GaussianData.fit(torch.zeros(1, *SHAPE))
    with pytest.raises(ValueError, match="unknown sampling method 'ode'"):
        data.sample_kl(c, "ode", 5)
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        data.sample_kl(c, "ddim", 5, "karras")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        data.sample_kl(c, "ddim")
    with pytest.raises(ValueError, match="decrease strictly"):
        data.sample_kl(c, "ddim", grid=torch.tensor([1.0, 0.5, 0.6, 0.0]))
    with pytest.raises(ValueError, match="unknown prediction|expected one of"):
        data.model(c, "score")
