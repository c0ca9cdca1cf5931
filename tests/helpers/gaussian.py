"""Gaussian data seen through a corruption: the exact denoiser and the exact moments of a sampler's
output, from scipy's DCT and textbook Gaussian conditioning (independent of lincorrupt's code)."""

import numpy as np
import scipy.fft
import scipy.linalg
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

    def sampler_moments(self, steps, method, times=None, **options):
        """Exact mean and covariance (data space) of a rule sampler's output from q(u_1), on the uniform grid
        (or ``times``): every step is u_s = k_u u_t + k_x x_hat(u_t) + sqrt(var) n per coordinate, affine in u_t
        plus independent noise, so mean and covariance propagate exactly. The rule's (k_u, k_x, var) come from
        lincorrupt's rule of that sampler, fed the same corruption coefficients (each rule is checked against
        its paper's step elsewhere); the denoiser and the propagation are numpy's."""
        mean, P = self.prior_moments()
        times = np.linspace(1, 0, steps + 1) if times is None else np.asarray(times, dtype=np.float64)
        rule = lc.SAMPLERS[method].rule
        for t, s_ in zip(times[:-1], times[1:]):
            a_t, s_t, G = self.gain(t)
            x_M, x_b = G, self.mu - G @ (a_t * self.mu)  # u_x_hat = x_M u_t + x_b
            if s_ == 0:
                return self.vt.T @ (x_M @ mean + x_b), self.vt.T @ x_M @ P @ x_M.T @ self.vt
            c_t, c_s = (self.c.coefficients(torch.tensor([v], dtype=f64)) for v in (t, s_))
            k_u, k_x, var = (np.zeros(D) if v is None else v.expand(1, *SHAPE).reshape(D).numpy()
                             for v in rule(c_t, c_s, **options))
            M = np.diag(k_u) + np.diag(k_x) @ x_M
            mean, P = M @ mean + k_x * x_b, M @ P @ M.T + np.diag(var)

    def probe_moments(self, method, times, **options):
        """Exact mean and covariance (data space) of a deterministic sampler's output from q(u_1), with the
        exact denoiser :meth:`model`: the sampler is affine in u_1, so running it on the prior mean and on the
        mean plus each column of a square root of the prior covariance gives them, with no Monte Carlo error."""
        mean0, cov0 = self.prior_moments()
        u = torch.from_numpy(np.vstack([mean0, mean0 + np.linalg.cholesky(cov0).T])).reshape(D + 1, *SHAPE)
        y = lc.SAMPLERS[method](lc.Denoiser(self.model, self.c, "x"), self.c, u, torch.as_tensor(times, dtype=f64),
                                **options)
        y = y.reshape(D + 1, D).numpy() @ self.vt
        factor = (y[1:] - y[0]).T
        return y[0], factor @ factor.T

    def kl(self, mean, cov):
        """KL(N(mean, cov) || N(m, Sigma)) in nats, data space, with scipy's Cholesky and log-determinants."""
        inv = scipy.linalg.cho_solve(scipy.linalg.cho_factor(self.cov), np.eye(D))
        diff = self.m - mean
        return 0.5 * (np.trace(inv @ cov) + diff @ inv @ diff - D + np.linalg.slogdet(self.cov)[1]
                      - np.linalg.slogdet(cov)[1])


def make(name):
    c = {"ddpm": lambda: lc.DDPM(SHAPE), "blurring": lambda: lc.BlurringDiffusion(SHAPE),
         "ihdm": lambda: lc.IHDM(SHAPE)}[name]()
    truth = Truth(c)
    if name == "ihdm":
        # IHDM keeps the mean colour: q(u_1) is diagonal here (only the DC coordinate keeps signal),
        # so the moment-matched prior with the true moments is exact.
        c.prior = lc.GaussianPrior(torch.tensor(truth.mu).reshape(SHAPE), torch.tensor(np.diag(truth.C)).reshape(SHAPE))
    return c, truth
