"""Standard Gaussian diffusion (Ho et al. 2020) in the identity basis."""

from __future__ import annotations

import torch
from torch import Tensor

from ..basis import IdentityBasis
from ..coefficients import Coefficients
from ..corruption import DiagonalizableCorruption
from ..priors import Prior
from ..schedules import (
    cosine_log_rate,
    cosine_logsnr,
    interpolate_log_alphabar,
    linear_beta_log_alphabar,
    vp_log_alpha_sigma,
)

__all__ = ["DDPM"]


class DDPM(DiagonalizableCorruption):
    """Isotropic variance-preserving diffusion: ``alpha_t = sqrt(alphabar(t))``, ``sigma_t =
    sqrt(1 - alphabar(t))``, the same for every coordinate, basis V = I.

    Schedules:
        ``"linear"``: Ho et al.'s discrete betas, linear from ``beta_start`` to ``beta_end``
        over ``num_steps`` = T steps; exact at ``t = i / T``, where ``alphabar = prod_{j <= i}
        (1 - beta_j)``, and log-linear in between.
        ``"cosine"``: the clipped log-SNR cosine schedule (Hoogeboom & Salimans 2023), the
        schedule blurring diffusion reduces to at ``sigma_blur_max = 0``.

    Args:
        shape: event shape, e.g. (3, 32, 32).
        schedule: "linear" or "cosine".
        num_steps, beta_start, beta_end: the linear schedule's T and beta range.
        logsnr_min, logsnr_max: the cosine schedule's log-SNR at t = 1 and t = 0.
        prior: default standard normal.
    """

    def __init__(self, shape: tuple[int, ...], schedule: str = "linear", num_steps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02, logsnr_min: float = -10.0,
                 logsnr_max: float = 10.0, prior: Prior | None = None):
        super().__init__(shape, IdentityBasis(), prior)
        if schedule not in _SCHEDULES:
            raise ValueError(f"unknown DDPM schedule {schedule!r}; expected one of {sorted(_SCHEDULES)}")
        self.schedule = schedule
        self.num_steps, self.logsnr_min, self.logsnr_max = num_steps, logsnr_min, logsnr_max
        self.register_buffer("log_alphabar", linear_beta_log_alphabar(num_steps, beta_start, beta_end))

    def _log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha, log_sigma = _SCHEDULES[self.schedule](self, t)
        view = (-1,) + (1,) * len(self.shape)
        return log_alpha.view(view), log_sigma.view(view)

    def _linear(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alphabar = interpolate_log_alphabar(t, self.log_alphabar)
        return 0.5 * log_alphabar, 0.5 * (-log_alphabar.expm1()).log()  # sigma^2 = 1 - alphabar

    def _cosine(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return vp_log_alpha_sigma(cosine_logsnr(t, self.logsnr_min, self.logsnr_max))

    def isotropic_schedule(self, logsnr: Tensor) -> tuple[Coefficients, Tensor]:
        """DDPM has no basis-dependent part: its own schedule, as a function of its log-SNR."""
        return Coefficients(*vp_log_alpha_sigma(logsnr)), _LOG_RATES[self.schedule](self, logsnr)

    def _linear_log_rate(self, logsnr: Tensor) -> Tensor:
        # on the table segment holding log alphabar = log sigmoid(l): d l / dt = (d log alphabar / dt) / sigma^2
        log_alpha, log_sigma = vp_log_alpha_sigma(logsnr)
        table = self.log_alphabar.to(logsnr.dtype)
        i = (torch.searchsorted(-table, -2 * log_alpha, right=True) - 1).clamp(0, self.num_steps - 1)
        return torch.log(self.num_steps * (table[i] - table[i + 1])) - 2 * log_sigma

    def _cosine_log_rate(self, logsnr: Tensor) -> Tensor:
        return cosine_log_rate(logsnr, self.logsnr_min, self.logsnr_max)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, schedule={self.schedule!r}"


_SCHEDULES = {"linear": DDPM._linear, "cosine": DDPM._cosine}
_LOG_RATES = {"linear": DDPM._linear_log_rate, "cosine": DDPM._cosine_log_rate}
