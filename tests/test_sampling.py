"""Samplers: reductions to the published algorithms and an end-to-end check with the exact
denoiser of Gaussian data, whose samples must reproduce the data's mean and covariance."""

import numpy as np
import pytest
import scipy.fft
import torch

import lincorrupt as lc

f64 = torch.float64
SHAPE = (1, 4, 6)
D = 24


def dense_vt(c):
    """V^T as a dense matrix from scipy (DCT) or the identity, independent of lincorrupt.basis."""
    eye = np.eye(D).reshape(D, *SHAPE)
    if isinstance(c.basis, lc.DCTBasis):
        return scipy.fft.dctn(eye, axes=(-2, -1), norm="ortho").reshape(D, D)  # rows: V^T e_j -> columns
    return eye.reshape(D, D)


def gaussian_data():
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    dist2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    cov = 0.25 * np.exp(-dist2 / (2 * 1.5**2)) + 0.01 * np.eye(D)
    mean = 0.3 * rng.standard_normal(D)
    return mean, cov


class Truth:
    """Gaussian data x ~ N(m, Sigma) seen through a corruption, in basis coordinates u = V^T x."""

    def __init__(self, c):
        self.c = c
        self.m, self.cov = gaussian_data()
        self.vt = dense_vt(c).T  # u = vt @ x, from scipy (not lincorrupt.basis)
        self.mu = self.vt @ self.m
        self.C = self.vt @ self.cov @ self.vt.T

    def coefficients(self, t):
        alpha, sigma = self.c.alpha_sigma(torch.tensor([float(t)], dtype=f64))
        return alpha.expand(1, *SHAPE).reshape(D).numpy(), sigma.expand(1, *SHAPE).reshape(D).numpy()

    def gain(self, t):
        """E[u_x | u_t] = mu + G (u_t - a mu), G = C a (a C a + s^2)^-1 (Gaussian conditioning)."""
        a, s = self.coefficients(t)
        return a, s, self.C @ np.diag(a) @ np.linalg.inv(np.diag(a) @ self.C @ np.diag(a) + np.diag(s**2))

    def model(self, z, t):
        """The exact denoiser E[x | z_t], as an x-predicting model in data space."""
        a, _, G = self.gain(t[0].item())
        u = z.reshape(z.shape[0], D).double().numpy() @ self.vt.T
        u_x = self.mu + (u - a * self.mu) @ G.T
        return torch.from_numpy(u_x @ self.vt).reshape(z.shape).to(z.dtype)

    def prior_moments(self):
        """q(u_1): N(a_1 mu, a_1 C a_1 + s_1^2)."""
        a, s = self.coefficients(1.0)
        return a * self.mu, np.diag(a) @ self.C @ np.diag(a) + np.diag(s**2)

    def sampler_moments(self, steps, method):
        """Exact mean and covariance of the sampler's output, propagated through its affine steps
        u_s = M u_t + b + noise, with the textbook formulas (the posterior of Kingma et al. 2021, eq. 32-33; Song et al. eq. 12)."""
        mean, P = self.prior_moments()
        times = np.linspace(1, 0, steps + 1)
        for t, s_ in zip(times[:-1], times[1:]):
            a_t, s_t, G = self.gain(t)
            x_M, x_b = G, self.mu - G @ (a_t * self.mu)  # u_x_hat = x_M u_t + x_b
            if s_ == 0:
                return self.vt.T @ (x_M @ mean + x_b), self.vt.T @ x_M @ P @ x_M.T @ self.vt
            a_s, s_s = self.coefficients(s_)
            if method == "ancestral":  # q(u_s | u_t, x_hat) by conditioning the joint Gaussian of (u_s, u_t)
                alpha_ts = np.divide(a_t, a_s, out=np.zeros(D), where=a_s > 0)  # 0 where no signal is left
                k = alpha_ts * s_s**2 / s_t**2  # Cov(u_s, u_t) / Var(u_t)
                M = np.diag(k) + np.diag(a_s - k * a_t) @ x_M
                b, noise = (a_s - k * a_t) * x_b, s_s**2 - k * alpha_ts * s_s**2
            else:  # DDIM, eta = 0: u_s = a_s x_hat + s_s (u_t - a_t x_hat) / s_t
                M = np.diag(a_s - s_s / s_t * a_t) @ x_M + np.diag(s_s / s_t)
                b, noise = (a_s - s_s / s_t * a_t) * x_b, np.zeros(D)
            mean, P = M @ mean + b, M @ P @ M.T + np.diag(noise)


def make(name):
    c = {"ddpm": lambda: lc.DDPM(SHAPE), "blurring": lambda: lc.BlurringDiffusion(SHAPE),
         "ihdm": lambda: lc.IHDM(SHAPE)}[name]()
    truth = Truth(c)
    if name == "ihdm":
        # IHDM keeps the mean colour: q(u_1) is diagonal here (only the DC coordinate keeps signal),
        # so the moment-matched prior with the true moments is exact.
        c.prior = lc.GaussianPrior(torch.tensor(truth.mu).reshape(SHAPE), torch.tensor(np.diag(truth.C)).reshape(SHAPE))
    return c, truth


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
@pytest.mark.parametrize("name", ["ddpm", "blurring", "ihdm"])
def test_exact_denoiser_samples_have_the_sampler_moments_and_these_converge_to_the_data(name, method):
    c, truth = make(name)
    n, steps = 4000, 100
    x = lc.sample(truth.model, c, n, steps=steps, prediction="x", method=method,
                  generator=torch.Generator().manual_seed(2), dtype=f64).reshape(n, D).numpy()
    # 1. the samples have the moments of the algorithm, within Monte Carlo error
    mean, cov = truth.sampler_moments(steps, method)
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(x.mean(0) - mean) / se_mean).max() < 4.5
    assert (np.abs(np.cov(x.T) - cov) / se_cov).max() < 4.5
    # 2. the algorithm reproduces the data as the grid is refined: the plug-in denoiser
    # under-disperses by O(1/steps), so the error shrinks with every refinement
    errors = []
    for k in (50, 200, 800):
        mean_k, cov_k = truth.sampler_moments(k, method)
        errors.append(np.linalg.norm(cov_k - truth.cov) / np.linalg.norm(truth.cov))
        np.testing.assert_allclose(mean_k, truth.m, atol=1e-6)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.03, errors


def test_ddim_with_eta_one_is_ancestral_sampling():
    c = lc.BlurringDiffusion(SHAPE)
    model = lambda z, t: torch.tanh(z) * t.view(-1, 1, 1, 1)  # any deterministic model
    a = lc.sample(model, c, 5, steps=20, method="ancestral", generator=torch.Generator().manual_seed(0), dtype=f64)
    b = lc.sample(model, c, 5, steps=20, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(0), dtype=f64)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_step_in_the_identity_basis_is_song_et_al_eq_12():
    """One DDIM step, written out from Song et al. (2021) eq. 12 with alphabar = alpha^2."""
    c = lc.DDPM(SHAPE, schedule="linear")
    g = torch.Generator().manual_seed(0)
    eps_hat = torch.randn(3, *SHAPE, generator=g, dtype=f64)
    z_t = torch.randn(3, *SHAPE, generator=g, dtype=f64)
    t, s = 0.6, 0.55
    eta = 0.7
    times = torch.tensor([t, s, 0.0], dtype=f64)
    captured = []

    def model(z, tt):
        captured.append(z.clone())
        return eps_hat

    class StartAt(lc.Prior):  # a prior that starts at z_t
        def sample(self, c_1, shape, n, generator=None, device=None, dtype=None):
            return z_t

    c.prior = StartAt()
    lc.sample(model, c, 3, grid=times, method="ddim", eta=eta, generator=torch.Generator().manual_seed(5), dtype=f64)
    ab_t = c.alpha_sigma(torch.tensor([t], dtype=f64))[0].item() ** 2
    ab_s = c.alpha_sigma(torch.tensor([s], dtype=f64))[0].item() ** 2
    sigma = eta * np.sqrt((1 - ab_s) / (1 - ab_t)) * np.sqrt(1 - ab_t / ab_s)
    x0 = (z_t - np.sqrt(1 - ab_t) * eps_hat) / np.sqrt(ab_t)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=f64)
    expected = np.sqrt(ab_s) * x0 + np.sqrt(1 - ab_s - sigma**2) * eps_hat + sigma * noise
    torch.testing.assert_close(captured[1], expected, rtol=1e-9, atol=1e-9)


def test_ancestral_step_in_the_identity_basis_is_ho_et_al_algorithm_2():
    T = 1000
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    g = torch.Generator().manual_seed(0)
    eps_hat = torch.randn(2, *SHAPE, generator=g, dtype=f64)
    captured = []
    model = lambda z, tt: (captured.append(z.clone()), eps_hat)[1]
    lc.sample(model, c, 2, grid=torch.tensor([500, 499, 0], dtype=f64) / T,
              generator=torch.Generator().manual_seed(3), dtype=f64)
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    i = 500
    prior_and_noise = torch.Generator().manual_seed(3)
    z_t = torch.randn(2, *SHAPE, generator=prior_and_noise, dtype=f64)
    noise = torch.randn(2, *SHAPE, generator=prior_and_noise, dtype=f64)
    beta, a = betas[i - 1], 1 - betas[i - 1]
    sigma = np.sqrt((1 - ab[i - 2]) / (1 - ab[i - 1]) * beta)  # beta_tilde
    expected = (z_t - beta / np.sqrt(1 - ab[i - 1]) * eps_hat) / np.sqrt(a) + sigma * noise
    torch.testing.assert_close(captured[1], expected, rtol=1e-9, atol=1e-9)


def test_last_step_returns_the_denoised_mean_without_noise():
    c = lc.BlurringDiffusion(SHAPE)
    target = torch.randn(1, *SHAPE)
    x = lc.sample(lambda z, t: target.expand_as(z), c, 4, steps=3, prediction="x",
                  generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, target.expand(4, *SHAPE))


def test_sampling_is_reproducible_with_a_generator():
    c = lc.DDPM(SHAPE)
    model = lambda z, t: 0.5 * z
    a = lc.sample(model, c, 3, steps=10, generator=torch.Generator().manual_seed(7))
    b = lc.sample(model, c, 3, steps=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
@pytest.mark.parametrize("prediction", ["x", "eps"])
def test_a_sampler_converts_the_model_output_only_to_the_forms_it_uses(method, prediction, monkeypatch):
    """Only DDIM steps with the noise prediction; the others use x_hat alone, so an x-model's
    output is never converted to eps. Each sampler still evaluates the model once per interval."""
    calls = {"to_x": 0, "to_eps": 0, "model": 0}
    kind = type(lc.PREDICTIONS[prediction])
    for name in ("to_x", "to_eps"):
        def counted(self, c, u_t, out, _name=name, _original=getattr(kind, name)):
            calls[_name] += 1
            return _original(self, c, u_t, out)
        monkeypatch.setattr(kind, name, counted)

    def model(z, t):
        calls["model"] += 1
        return 0.5 * z

    c, steps = lc.DDPM((2, 3, 4), schedule="cosine"), 6
    lc.sample(model, c, 2, steps=steps, prediction=prediction, method=method)
    assert calls["model"] == steps and calls["to_x"] == steps
    assert calls["to_eps"] == (steps if method == "ddim" else 0)
