"""Gaussian data seen through a corruption: the exact denoiser and the exact moments of a sampler's
output, from scipy's DCT and textbook Gaussian conditioning (independent of lincorrupt's code)."""

import numpy as np
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
        u_s = M u_t + b + noise, with the textbook formulas (the posterior of Kingma et al. 2021, eq. 32-33;
        Song et al. eq. 12)."""
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
