"""Priors: the distribution the sampler starts from at t = 1, in basis coordinates.

A prior is a small module with :meth:`Prior.sample`; it is set on a corruption
(``corruption.prior = ...``) and moves with it under ``.to(device)``. The data-fitted priors
store statistics of ``u_x = V^T x`` and apply the corruption's ``alpha_1``, ``sigma_1`` when
sampling, so ``q(z_1) = N(alpha_1 u_x, sigma_1^2)`` is matched exactly for their data model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .corruption import DiagonalizableCorruption

__all__ = ["Prior", "StandardNormalPrior", "GaussianPrior", "EmpiricalPrior"]


def _endpoint(corruption: DiagonalizableCorruption, device, dtype):
    c = corruption.coefficients(torch.ones(1, device=device, dtype=torch.promote_types(dtype, torch.float32)))
    return c.alpha.to(dtype), c.sigma.to(dtype)


def _check_data(corruption: DiagonalizableCorruption, x: Tensor) -> Tensor:
    corruption.check_data(x)
    return corruption.basis.to_basis(x.to(torch.promote_types(x.dtype, torch.float32)))


class Prior(nn.Module):
    """Base class: ``sample(corruption, num_samples, ...) -> u_1`` of shape (N, *shape)."""

    def sample(self, corruption: DiagonalizableCorruption, num_samples: int,
               generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """``u_1 ~ N(0, I)``: the prior of variance-preserving diffusions (DDPM, blurring)."""

    def sample(self, corruption, num_samples, generator=None, device=None, dtype=torch.float32):
        return torch.randn((num_samples, *corruption.shape), generator=generator, device=device, dtype=dtype)


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
    def fit(cls, corruption: DiagonalizableCorruption, x: Tensor) -> GaussianPrior:
        """Fit to images ``x`` of shape (N, *corruption.shape) (N >= 2)."""
        u = _check_data(corruption, x)
        if u.shape[0] < 2:
            raise ValueError(f"GaussianPrior.fit needs at least 2 images, got {u.shape[0]}")
        return cls(u.mean(0), u.var(0))

    def sample(self, corruption, num_samples, generator=None, device=None, dtype=torch.float32):
        alpha, sigma = _endpoint(corruption, device, dtype)
        mean = 0.0 if self.mean is None else self.mean.to(device, dtype)
        var = 1.0 if self.var is None else self.var.to(device, dtype)
        noise = torch.randn((num_samples, *corruption.shape), generator=generator, device=device, dtype=dtype)
        return alpha * mean + torch.sqrt(alpha**2 * var + sigma**2) * noise


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
    def fit(cls, corruption: DiagonalizableCorruption, x: Tensor) -> EmpiricalPrior:
        """Store the basis coordinates of images ``x`` (N, *corruption.shape)."""
        u = _check_data(corruption, x)
        if u.shape[0] < 1:
            raise ValueError("EmpiricalPrior.fit needs at least one image")
        return cls(u)

    def sample(self, corruption, num_samples, generator=None, device=None, dtype=torch.float32):
        alpha, sigma = _endpoint(corruption, device, dtype)
        index = torch.randint(self.u_x.shape[0], (num_samples,), generator=generator, device=device)
        u_x = self.u_x.to(device, dtype)[index]
        noise = torch.randn((num_samples, *corruption.shape), generator=generator, device=device, dtype=dtype)
        return alpha * u_x + sigma * noise
