"""The variational bound: VDM's formulas in the identity basis, independence of the prediction
kind, and for Gaussian data with the exact denoiser: the diffusion term's expectation is the
posterior-variance integral, the bound lies above the true NLL and tightens as T grows."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS
from helpers.gaussian import SHAPE, D, Truth
from lincorrupt.likelihood import diffusion_term, elbo, prior_term, reconstruction_term

f64 = torch.float64
LIMIT_MAX = math.atan(math.exp(-5.0))
LIMIT_MIN = math.atan(math.exp(5.0)) - LIMIT_MAX


def cosine_logsnr(t):
    return -2 * math.log(math.tan(LIMIT_MIN * t + LIMIT_MAX))


def cosine_dlogsnr_dt(t):
    return -4 * LIMIT_MIN / math.sin(2 * (LIMIT_MIN * t + LIMIT_MAX))


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def pixel_images(n, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).to(f64) / 127.5 - 1


def eps_network(z, t):
    return torch.sin(3 * z) * t.view(-1, *[1] * (z.ndim - 1)) + 0.2 * z


def test_identity_basis_terms_are_vdm_formulas():
    """Kingma et al. (2021): prior KL, the continuous (eq. 17) and T-step (eq. 13) diffusion
    terms in eps form, and the discretised decoder, written out for the cosine schedule."""
    c = lc.DDPM(SHAPE, schedule="cosine")
    x = pixel_images(3, SHAPE, 0)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=f64)
    t = 0.37
    a2_1, s2_1 = sigmoid(-10.0), sigmoid(10.0)
    prior = 0.5 * (s2_1 + a2_1 * x**2 - math.log(s2_1) - 1).flatten(1).sum(1)
    torch.testing.assert_close(prior_term(c, x), prior)

    a_t, s_t = math.sqrt(sigmoid(cosine_logsnr(t))), math.sqrt(sigmoid(-cosine_logsnr(t)))
    error2 = ((noise - eps_network(a_t * x + s_t * noise, torch.full((3,), t, dtype=f64))) ** 2).flatten(1).sum(1)
    tt = torch.full((3,), t, dtype=f64)
    torch.testing.assert_close(diffusion_term(eps_network, c, x, tt, noise, "eps"),
                               0.5 * -cosine_dlogsnr_dt(t) * error2)
    T = 7  # loss = T/2 expm1(g_t - g_s) ||eps - eps_hat||^2, g = -logsnr, s = t - 1/T
    torch.testing.assert_close(diffusion_term(eps_network, c, x, tt, noise, "eps", steps=T),
                               0.5 * T * math.expm1(cosine_logsnr(t - 1 / T) - cosine_logsnr(t)) * error2)

    a_0, s_0 = math.sqrt(sigmoid(10.0)), math.sqrt(sigmoid(-10.0))
    z_rescaled = (a_0 * x + s_0 * noise) / a_0
    values = torch.arange(256, dtype=f64) / 127.5 - 1
    logits = -0.5 * ((z_rescaled[..., None] - values) / (s_0 / a_0)) ** 2
    k = torch.round((x + 1) * 127.5).long()
    expected = -torch.log_softmax(logits, -1).gather(-1, k[..., None])[..., 0].flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_term(c, x, noise), expected)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("steps", [None, 10])
def test_the_bound_does_not_depend_on_what_the_model_predicts(name, steps):
    c = CORRUPTIONS[name]()
    x = pixel_images(4, c.shape, 2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=f64)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=f64)
    x_model = lambda z, t: torch.tanh(z) * (1 - t.view(-1, 1, 1, 1))
    kinds = ("x", "v") if name == "ihdm" and steps else ("x", "eps", "v")  # (*)
    values = {p: diffusion_term(lambda z, t, p=p: c.convert(x_model(z, t), z, t, "x", p), c, x, t, noise, p, steps)
              for p in kinds}
    for p in kinds:
        torch.testing.assert_close(values[p], values["x"], rtol=1e-6, atol=1e-8)
    # (*) IHDM's high frequencies lose e^1000 of SNR within one of 10 steps: the T-step weight on an
    # eps error is SNR_s / SNR_t - 1 = inf while the eps error (alpha_t / sigma_t) e_x is below float
    # resolution, so an eps output cannot express that bound (use prediction="x" with IHDM).


class GaussianTruth(Truth):
    """Truth of test_sampling, scaled to stay inside [-1, 1], with a per-datum-time denoiser."""

    def __init__(self, c):
        super().__init__(c)
        self.m, self.cov = 0.4 * self.m, 0.3 * self.cov
        self.mu, self.C = self.vt @ self.m, self.vt @ self.cov @ self.vt.T

    def model(self, z, t):
        """E[u_x | u_t] = mu + C a (a C a + s^2)^-1 (u_t - a mu), one time per datum."""
        alpha, sigma = self.c.alpha_sigma(t.double())
        a = alpha.expand(len(t), *SHAPE).reshape(-1, D).numpy()
        s = sigma.expand(len(t), *SHAPE).reshape(-1, D).numpy()
        u = z.reshape(-1, D).double().numpy() @ self.vt.T
        K = a[:, :, None] * self.C * a[:, None, :] + s[:, :, None] ** 2 * np.eye(D)
        u_x = self.mu + np.linalg.solve(K, (u - a * self.mu)[..., None])[..., 0] * a @ self.C
        return torch.from_numpy(u_x @ self.vt).reshape(z.shape).to(z.dtype)

    def posterior_var(self, t):
        a, s, G = self.gain(t)
        return np.diag(self.C - G @ np.diag(a) @ self.C)

    def data(self, n, seed):
        x = np.random.default_rng(seed).multivariate_normal(self.m, self.cov, size=n)
        x = np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1  # 8-bit images
        nll = -multivariate_normal(self.m, self.cov).logpdf(x) - D * math.log(2 / 255)  # -log P(pixel bins)
        return torch.from_numpy(x).reshape(n, *SHAPE), nll


@pytest.mark.parametrize("t", [0.02, 0.3, 0.8])
def test_diffusion_term_of_the_exact_denoiser_averages_to_the_posterior_variance_integrand(t):
    c = lc.BlurringDiffusion(SHAPE)
    truth = GaussianTruth(c)
    n = 4000
    x, _ = truth.data(n, 0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=f64)
    estimate = diffusion_term(truth.model, c, x, torch.full((n,), t, dtype=f64), noise, prediction="x").numpy()
    h = 1e-5  # -1/2 dSNR/dt by central differences of the schedule
    snr = lambda v: (lambda a, s: a**2 / s**2)(*truth.coefficients(v))
    expected = (-0.5 * (snr(t + h) - snr(t - h)) / (2 * h) * truth.posterior_var(t)).sum()
    assert abs(estimate.mean() - expected) < 4 * estimate.std() / math.sqrt(n) + 1e-3 * expected


def test_bound_of_the_exact_denoiser_lies_above_the_true_nll_and_tightens_as_T_grows():
    c = lc.BlurringDiffusion(SHAPE)
    truth = GaussianTruth(c)
    n = 400
    x, nll = truth.data(n, 1)
    gaps, bounds = {}, {}
    for steps in (10, 100, None):
        bounds[steps] = bound = elbo(truth.model, c, x, prediction="x", steps=steps, num_times=16,
                     generator=torch.Generator().manual_seed(5)).total.numpy()
        gap = bound - nll
        gaps[steps] = (gap.mean(), gap.std() / math.sqrt(n))
    for mean, se in gaps.values():
        assert mean > -3 * se, gaps
    (g10, se10), (g100, se100), (g_inf, se_inf) = gaps[10], gaps[100], gaps[None]
    assert g10 - 3 * se10 > g100 + 3 * se100 and g100 - 3 * se100 > g_inf + 3 * se_inf, gaps
    bits_per_dim = lc.bits_per_dim(truth.model, c, x, prediction="x", num_times=16,
                                   generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(bits_per_dim.numpy(), bounds[None] / (D * math.log(2)), rtol=1e-12)


def test_bad_input_is_refused():
    c = lc.BlurringDiffusion(SHAPE)
    x = pixel_images(2, SHAPE, 0)
    model = lambda z, t: z
    with pytest.raises(ValueError, match="8-bit"):
        lc.elbo(model, c, x + 1e-3)
    with pytest.raises(ValueError, match="steps"):
        lc.elbo(model, c, x, steps=0)
    with pytest.raises(ValueError, match="num_times"):
        lc.elbo(model, c, x, num_times=0)
    with pytest.raises(ValueError, match="t_min"):
        lc.elbo(model, c, x, t_min=1.0)


def test_an_empty_batch_is_refused_naming_it():
    c = lc.BlurringDiffusion(SHAPE)
    empty = torch.zeros(0, *SHAPE)
    for f in (lc.elbo, lc.bits_per_dim):
        with pytest.raises(ValueError, match=r"x is an empty batch \(shape \(0, "):
            f(lambda z, t: z, c, empty)
    with pytest.raises(ValueError, match=r"x is an empty batch .*the loss"):
        lc.diffusion_loss(lambda z, t: z, c, empty)  # the mean over no example was NaN


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_exact_8_bit_data_passes_the_check_in_every_float_dtype_and_off_grid_data_does_not(dtype):
    """All 256 values k / 127.5 - 1 rounded to the dtype: float16 misses them by up to 2.4e-4, more than a fixed
    1e-4, and far less than the 3.9e-3 that half a pixel step is."""
    c = lc.DDPM((1, 16, 16))
    k = torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16)
    x = (k / 127.5 - 1).to(dtype)
    assert dtype != torch.float16 or (x.double() - (k / 127.5 - 1)).abs().max() > 1e-4  # the case that failed
    terms = lc.elbo(lambda z, t: torch.zeros_like(z), c, x)
    assert terms.total.dtype == dtype and bool(torch.isfinite(terms.total).all())
    for offset in (0.5, 0.1):  # off the grid by half a step, and by a tenth of one
        with pytest.raises(ValueError, match="8-bit"):
            lc.elbo(lambda z, t: torch.zeros_like(z), c, ((k + offset).clamp(max=255) / 127.5 - 1).to(dtype))


def test_ddpm_with_a_noise_free_start_begins_the_bound_at_its_first_step():
    c = lc.DDPM(SHAPE, schedule="linear")
    x = pixel_images(2, SHAPE, 0)
    result = lc.elbo(lambda z, t: 0 * z, c, x, generator=torch.Generator().manual_seed(0))
    assert all(bool(torch.isfinite(term).all()) for term in result)
