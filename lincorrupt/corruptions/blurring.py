"""Blurring diffusion (Hoogeboom & Salimans, ICLR 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..basis import Basis, DCTBasis, require_frequencies_squared
from ..coefficients import Coefficients
from ..corruption import DiagonalizableCorruption, FastSampling
from ..priors import Prior
from ..schedules import blur_tau, cosine_log_rate, cosine_logsnr, vp_log_alpha_sigma

__all__ = ["BlurringDiffusion"]


class BlurringDiffusion(DiagonalizableCorruption):
    """Heat dissipation plus VP noise, diagonal in the orthonormal 2-D DCT (Hoogeboom & Salimans 2023, sec. 3-4).

    Per DCT frequency (k, l) with ``lambda[k, l] = (pi k / H)^2 + (pi l / W)^2`` (the basis's
    :attr:`~lincorrupt.Basis.frequencies_squared`):

        logsnr(t) = cosine log-SNR clipped to [logsnr_min, logsnr_max]
        a_t = sqrt(sigmoid(logsnr)),  sigma_t = sqrt(sigmoid(-logsnr))
        tau_t = sigma_blur(t)^2 / 2,  sigma_blur(t) = sigma_blur_max sin(t pi / 2)^2
        d_t = (1 - min_scale) exp(-lambda tau_t) + min_scale,  alpha_t = a_t d_t

    ``log d_t`` is computed in log space (:meth:`log_d`), so ``min_scale = 0`` (pure heat
    dissipation, whose high frequencies' ``d_t`` underflows) gives finite coefficients.

    ``sigma_t`` is the same for every coordinate; ``alpha_t`` is (B, 1, H, W), shared by the
    channels. With ``sigma_blur_max = 0`` this is the cosine-schedule DDPM.

    Args:
        shape: (C, H, W).
        sigma_blur_max: largest blur standard deviation in pixels (paper: 20 on CIFAR-10).
        min_scale: floor of the frequency scaling ``d_t`` (paper: 0.001); 0 is allowed.
        logsnr_min, logsnr_max: clipping of the noise schedule's log-SNR (paper: -10, 10).
        prior: default standard normal.
        basis: default ``DCTBasis(H, W)``; any basis with ``frequencies_squared`` broadcastable to ``shape``
            (the heat equation's decay rates in that basis) is accepted, any other refused.
    """

    #: DPM-Solver++(3M) on the data-weighted grid, which samples the low frequencies' window that the
    #: log-SNR grid leaves nearly unsampled (Benchmarks page, with its command).
    fast_sampling = FastSampling("dpm++3m", "data", 20)

    def __init__(self, shape: tuple[int, int, int], sigma_blur_max: float = 20.0, min_scale: float = 1e-3,
                 logsnr_min: float = -10.0, logsnr_max: float = 10.0, prior: Prior | None = None,
                 basis: Basis | None = None):
        if len(shape) != 3:
            raise ValueError(f"BlurringDiffusion needs shape (C, H, W), got {shape}")
        if sigma_blur_max < 0 or not 0 <= min_scale < 1 or not logsnr_min < logsnr_max:
            raise ValueError(f"need sigma_blur_max >= 0, 0 <= min_scale < 1 and logsnr_min < logsnr_max; got "
                             f"{sigma_blur_max}, {min_scale}, {logsnr_min}, {logsnr_max}")
        basis = basis if basis is not None else DCTBasis(shape[-2], shape[-1])
        require_frequencies_squared(basis, shape, type(self).__name__)
        super().__init__(shape, basis, prior)
        self.sigma_blur_max, self.min_scale = float(sigma_blur_max), float(min_scale)
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)

    def _log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.view(-1, 1, 1, 1)
        log_a, log_sigma = vp_log_alpha_sigma(cosine_logsnr(t, self.logsnr_min, self.logsnr_max))
        tau = blur_tau(t, self.sigma_blur_max)
        return log_a + self.log_d(t, tau), log_sigma

    def log_d(self, t: Tensor, tau: Tensor) -> Tensor:
        """``log d_t = log((1 - min_scale) exp(-lambda tau_t) + min_scale)``, (B, 1, H, W) (or (B, *lambda's shape)),
        the paper's frequency scaling (eq. 9 with the floor ``min_scale``), in log space:
        ``logaddexp(log1p(-min_scale) - lambda tau_t, log min_scale)``, which stays finite where
        ``exp(-lambda tau_t)`` underflows and is exactly ``-lambda tau_t`` for ``min_scale = 0``."""
        log_decay = math.log1p(-self.min_scale) - self.basis.frequencies_squared.to(t.dtype) * tau
        # a fill on the device, not torch.tensor(): a host-to-device copy would wait for the GPU every step
        log_floor = torch.full_like(log_decay, math.log(self.min_scale) if self.min_scale > 0 else -math.inf)
        return torch.logaddexp(log_decay, log_floor)

    def isotropic_schedule(self, logsnr: Tensor) -> tuple[Coefficients, Tensor]:
        """Without the blur: the VP cosine schedule with the same log-SNR range (``sigma_blur_max = 0``)."""
        return Coefficients(*vp_log_alpha_sigma(logsnr)), cosine_log_rate(logsnr, self.logsnr_min, self.logsnr_max)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, sigma_blur_max={self.sigma_blur_max}, min_scale={self.min_scale}"
