"""Priors: the distribution the sampler starts from at t = 1, in basis coordinates.

A prior is a small module with :meth:`Prior.sample`; it is set on a corruption
(``corruption.prior = ...``) and moves with it under ``.to(device)``. The data-fitted priors
store statistics of ``u_x = V^T x`` and apply the corruption's ``alpha_1``, ``sigma_1`` when
sampling, so ``q(z_1) = N(alpha_1 u_x, sigma_1^2)`` is matched exactly for their data model.
Sampling and likelihoods give a prior what it needs rather than the corruption: the event
``shape`` and the corruption's :class:`~lincorrupt.coefficients.Coefficients` ``c_1`` at t = 1
(shape (1, ...), e.g. ``corruption.coefficients(torch.ones(1))``).

For likelihoods a prior also gives :meth:`Prior.log_prob` of ``u_1`` and :meth:`Prior.kl`, the
ELBO's prior term ``KL(q(u_1 | x) || p(u_1))`` per datum: in closed form for the Gaussian
priors, by Monte Carlo for the empirical mixture.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

from .coefficients import Coefficients
from .config import Configurable

__all__ = ["Prior", "StandardNormalPrior", "GaussianPrior", "EmpiricalPrior"]


def _endpoint(c_1: Coefficients, device, dtype) -> tuple[Tensor, Tensor]:
    """``alpha_1``, ``sigma_1`` on ``device`` in ``dtype``."""
    return c_1.alpha.to(device, dtype), c_1.sigma.to(device, dtype)


def _gaussian_log_prob(u: Tensor, mean, var) -> Tensor:
    """Sum over coordinates of ``log N(u | mean, var)``: (N, *shape) -> (N,)."""
    per_coordinate = -0.5 * ((u - mean) ** 2 / var + torch.log(var * 2 * math.pi))
    return per_coordinate.flatten(1).sum(1)


def _gaussian_kl(q_mean: Tensor, q_var: Tensor, p_mean, p_var) -> Tensor:
    """``KL(N(q_mean, q_var) || N(p_mean, p_var))`` summed over coordinates: (B, *shape) -> (B,)."""
    p_var = torch.as_tensor(p_var, dtype=q_mean.dtype, device=q_mean.device)
    kl = 0.5 * (torch.log(p_var / q_var) + (q_var + (q_mean - p_mean) ** 2) / p_var - 1)
    return kl.expand(q_mean.shape).flatten(1).sum(1)


def _check_data(corruption, x: Tensor) -> Tensor:
    """``u_x = V^T x`` (at least float32) after the corruption checked ``x``'s shape."""
    corruption.check_data(x)
    return corruption.basis.to_basis(x.to(torch.promote_types(x.dtype, torch.float32)))


class Prior(Configurable):
    """Base class: ``sample(c_1, shape, num_samples, ...) -> u_1`` of shape (N, *shape).

    For likelihoods, implement :meth:`log_prob`; :meth:`kl` then defaults to a one-draw
    Monte Carlo estimate (override it where the KL has a closed form). The constructor's
    arguments are recorded in ``config``, and fitted statistics are buffers, so a corruption's
    state dict carries its prior.
    """

    def sample(self, c_1: Coefficients, shape: tuple[int, ...], num_samples: int,
               generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw ``u_1``, the sampler's start in basis coordinates.

        Args:
            c_1: the corruption's coefficients at t = 1: ``alpha_1``, ``sigma_1``, shape (1, ...).
            shape: the event shape of one datum, e.g. (C, H, W).
            num_samples: N.
            generator, device, dtype: where and how to draw.
        Returns:
            (N, *shape) tensor.
        """
        raise NotImplementedError

    def log_prob(self, c_1: Coefficients, u_1: Tensor) -> Tensor:
        """``log p(u_1)`` in nats, summed over coordinates: (N, *shape) -> (N,); ``c_1`` as in :meth:`sample`."""
        raise NotImplementedError(f"{type(self).__name__} has no log_prob; likelihoods need one")

    def kl(self, c_1: Coefficients, u_x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``KL(q(u_1 | x) || p(u_1))`` in nats per datum, ``q(u_1 | x) = N(alpha_1 u_x, sigma_1^2)``.

        Args:
            c_1: the corruption's coefficients at t = 1, shape (1, ...).
            u_x: (B, *shape) basis coordinates of the data.
            generator: for the Monte Carlo estimate ``log q(u_1 | x) - log p(u_1)``, ``u_1 ~ q``.
        Returns:
            (B,) nats.
        """
        alpha, sigma = _endpoint(c_1, u_x.device, u_x.dtype)
        noise = torch.randn(u_x.shape, generator=generator, device=u_x.device, dtype=u_x.dtype)
        u_1 = alpha * u_x + sigma * noise
        return _gaussian_log_prob(u_1, alpha * u_x, (sigma**2).expand(u_x.shape)) - self.log_prob(c_1, u_1)


class StandardNormalPrior(Prior):
    """``u_1 ~ N(0, I)``: the prior of variance-preserving diffusions (DDPM, blurring)."""

    def sample(self, c_1, shape, num_samples, generator=None, device=None, dtype=torch.float32):
        return torch.randn((num_samples, *shape), generator=generator, device=device, dtype=dtype)

    def log_prob(self, c_1, u_1):
        return _gaussian_log_prob(u_1, 0.0, torch.ones((), dtype=u_1.dtype, device=u_1.device))

    def kl(self, c_1, u_x, generator=None):
        """Closed form (VDM eq. 14's prior term): ``1/2 sum (alpha_1^2 u_x^2 + sigma_1^2 - 1 - log sigma_1^2)``."""
        alpha, sigma = _endpoint(c_1, u_x.device, u_x.dtype)
        return _gaussian_kl(alpha * u_x, (sigma**2).expand(u_x.shape), 0.0, 1.0)


class GaussianPrior(Prior):
    """Moment-matched diagonal Gaussian: ``u_1 ~ N(alpha_1 m, alpha_1^2 v + sigma_1^2)``.

    ``m`` and ``v`` are the per-coordinate mean and variance of ``u_x = V^T x``; the default
    ``m = 0, v = 1`` is exact for white data. :meth:`fit` estimates them from images.

    Args:
        mean: (``*shape``) mean of ``u_x``, or None for 0.
        var: (``*shape``) variance of ``u_x``, or None for 1.
    """

    def __init__(self, mean: Tensor | None = None, var: Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", None if mean is None else torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("var", None if var is None else torch.as_tensor(var, dtype=torch.float32))

    @classmethod
    def fit(cls, corruption, x: Tensor) -> GaussianPrior:
        """Fit to images ``x`` of shape (N, *corruption.shape) (N >= 2); the corruption gives the basis."""
        u = _check_data(corruption, x)
        if u.shape[0] < 2:
            raise ValueError(f"GaussianPrior.fit needs at least 2 images, got {u.shape[0]}")
        return cls(u.mean(0), u.var(0))

    def sample(self, c_1, shape, num_samples, generator=None, device=None, dtype=torch.float32):
        alpha, sigma = _endpoint(c_1, device, dtype)
        mean = 0.0 if self.mean is None else self.mean.to(device, dtype)
        var = 1.0 if self.var is None else self.var.to(device, dtype)
        noise = torch.randn((num_samples, *shape), generator=generator, device=device, dtype=dtype)
        return alpha * mean + torch.sqrt(alpha**2 * var + sigma**2) * noise

    def _moments(self, c_1, device, dtype):
        alpha, sigma = _endpoint(c_1, device, dtype)
        mean = 0.0 if self.mean is None else self.mean.to(device, dtype)
        var = 1.0 if self.var is None else self.var.to(device, dtype)
        return alpha, sigma, alpha * mean, alpha**2 * var + sigma**2

    def log_prob(self, c_1, u_1):
        _, _, mean, var = self._moments(c_1, u_1.device, u_1.dtype)
        return _gaussian_log_prob(u_1, mean, torch.as_tensor(var, dtype=u_1.dtype, device=u_1.device))

    def kl(self, c_1, u_x, generator=None):
        """Closed form: KL between ``N(alpha_1 u_x, sigma_1^2)`` and ``N(alpha_1 m, alpha_1^2 v + sigma_1^2)``."""
        alpha, sigma, mean, var = self._moments(c_1, u_x.device, u_x.dtype)
        return _gaussian_kl(alpha * u_x, (sigma**2).expand(u_x.shape), mean, var)


class EmpiricalPrior(Prior):
    """``q(z_1)`` of the empirical data distribution: ``u_1 = alpha_1 u_x[j] + sigma_1 eps``.

    ``j`` is a uniformly drawn stored image. With IHDM this is the paper's prior: a fully
    blurred training image (its mean colour) plus noise (Rissanen et al. 2022, sec. 3).

    Args:
        u_x: (N, *shape) basis coordinates of the stored images; use :meth:`fit`.
    """

    def __init__(self, u_x: Tensor):
        super().__init__()
        self.register_buffer("u_x", torch.as_tensor(u_x, dtype=torch.float32))

    @classmethod
    def fit(cls, corruption, x: Tensor) -> EmpiricalPrior:
        """Store the basis coordinates of images ``x`` (N, *corruption.shape); the corruption gives the basis."""
        u = _check_data(corruption, x)
        if u.shape[0] < 1:
            raise ValueError("EmpiricalPrior.fit needs at least one image")
        return cls(u)

    def sample(self, c_1, shape, num_samples, generator=None, device=None, dtype=torch.float32):
        alpha, sigma = _endpoint(c_1, device, dtype)
        index = torch.randint(self.u_x.shape[0], (num_samples,), generator=generator, device=device)
        u_x = self.u_x.to(device, dtype)[index]
        noise = torch.randn((num_samples, *shape), generator=generator, device=device, dtype=dtype)
        return alpha * u_x + sigma * noise

    def log_prob(self, c_1, u_1):
        """``log (1/N) sum_j N(u_1 | alpha_1 u_x[j], sigma_1^2)``; memory O(N * batch * size)."""
        alpha, sigma = _endpoint(c_1, u_1.device, u_1.dtype)
        centres = alpha * self.u_x.to(u_1.device, u_1.dtype)  # (N, *shape)
        var = (sigma[0] ** 2).expand(centres.shape[1:]).flatten()
        diff = rearrange(u_1, "b ... -> b 1 (...)") - rearrange(centres, "n ... -> 1 n (...)")  # (B, N, D)
        log_n = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.logsumexp(log_n, 1) - math.log(centres.shape[0])
