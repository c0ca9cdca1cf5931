"""Inverse heat dissipation (Rissanen et al., ICLR 2023) as a Gaussian diffusion."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..basis import Basis, DCTBasis, require_frequencies_squared
from ..corruption import DiagonalizableCorruption, FastSampling
from ..priors import GaussianPrior, Prior
from ..schedules import log_spaced_blur_tau

__all__ = ["IHDM"]


class IHDM(DiagonalizableCorruption):
    """Heat dissipation with constant noise, diagonal in the orthonormal 2-D DCT.

    Per DCT frequency (k, l) (``lambda`` = the basis's :attr:`~lincorrupt.Basis.frequencies_squared`, the
    Laplacian's eigenvalues): ``alpha_t = exp(-lambda[k, l] tau_t)`` and ``sigma_t = sigma *
    data_range``, with ``tau_t = sigma_B(t)^2 / 2`` and ``sigma_B`` log-spaced from
    ``sigma_blur_min`` to ``sigma_blur_max`` over the ``num_steps`` = K levels (level 0 is the
    clean image; :func:`~lincorrupt.schedules.log_spaced_blur_tau`). ``alpha`` is returned in
    log form because it underflows for high frequencies at strong blur; for the same reason
    prefer ``prediction="x"`` with IHDM (the paper's model predicts the less blurred image).

    The process does not forget the image's mean colour, so its t = 1 marginal is not N(0, I):
    the default prior is :class:`~lincorrupt.priors.GaussianPrior` (exact for white data); set
    ``corruption.prior = EmpiricalPrior.fit(corruption, train_images)`` for the paper's prior.

    Args:
        shape: (C, H, W).
        sigma: training noise standard deviation on the [0, 1] pixel scale (paper: 0.01).
        sigma_blur_max, sigma_blur_min: blur range in pixels (paper's CIFAR-10: 24 and 0.5).
        num_steps: number of blur levels K (paper: 200).
        data_range: width of the data interval; lincorrupt's data live in [-1, 1], so 2 (the
            process then uses ``sigma_t = 0.02``).
        prior: default moment-matched Gaussian with unit data variance.
        basis: default ``DCTBasis(H, W)``; any basis with ``frequencies_squared`` broadcastable to ``shape``
            is accepted, any other refused.
    """

    #: DPM-Solver++(3M) on the information grid (Benchmarks page, with its command and figures).
    fast_sampling = FastSampling("dpm++3m", "info", 20)

    def __init__(self, shape: tuple[int, int, int], sigma: float = 0.01, sigma_blur_max: float = 24.0,
                 num_steps: int = 200, sigma_blur_min: float = 0.5, data_range: float = 2.0,
                 prior: Prior | None = None, basis: Basis | None = None):
        if len(shape) != 3:
            raise ValueError(f"IHDM needs shape (C, H, W), got {shape}")
        if not (sigma > 0 and 0 < sigma_blur_min <= sigma_blur_max and num_steps >= 1 and data_range > 0):
            raise ValueError(f"need sigma > 0, 0 < sigma_blur_min <= sigma_blur_max, num_steps >= 1 and "
                             f"data_range > 0; got {sigma}, {sigma_blur_min}, {sigma_blur_max}, {num_steps}, "
                             f"{data_range}")
        basis = basis if basis is not None else DCTBasis(shape[-2], shape[-1])
        require_frequencies_squared(basis, shape, type(self).__name__)
        super().__init__(shape, basis, prior if prior is not None else GaussianPrior())
        self.sigma, self.data_range = float(sigma), float(data_range)
        self.sigma_blur_min, self.sigma_blur_max = float(sigma_blur_min), float(sigma_blur_max)
        self.num_steps = num_steps

    def _log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        tau = log_spaced_blur_tau(t.view(-1, 1, 1, 1), self.sigma_blur_min, self.sigma_blur_max, self.num_steps)
        log_alpha = -self.basis.frequencies_squared.to(t.dtype) * tau
        log_sigma = torch.full_like(tau, math.log(self.sigma * self.data_range))
        return log_alpha, log_sigma

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, sigma={self.sigma}, sigma_blur=[{self.sigma_blur_min}, "
                f"{self.sigma_blur_max}], num_steps={self.num_steps}")
