"""Noise and blur schedules: pure functions of the diffusion time t in [0, 1].

Everything is computed in log space where the naive form loses precision (VDM, Kingma et
al. 2021): a variance-preserving schedule is given by its log-SNR ``l(t)``, and then
``log alpha_t^2 = log sigmoid(l)`` and ``log sigma_t^2 = log sigmoid(-l)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "cosine_logsnr",
    "cosine_log_rate",
    "vp_log_alpha_sigma",
    "linear_beta_log_alphabar",
    "interpolate_log_alphabar",
    "blur_tau",
    "log_spaced_blur_tau",
]


def cosine_logsnr(t: Tensor, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> Tensor:
    """Log-SNR of the clipped cosine schedule (Hoogeboom & Salimans 2023, appendix A).

    ``limit_max = arctan(exp(-logsnr_max / 2))``, ``limit_min = arctan(exp(-logsnr_min / 2))
    - limit_max`` and ``l(t) = -2 log tan(limit_min * t + limit_max)``, so ``l(0) =
    logsnr_max`` and ``l(1) = logsnr_min``. Without clipping, ``alpha_t^2 = cos^2(pi t / 2)``.
    """
    limit_max = math.atan(math.exp(-0.5 * logsnr_max))
    limit_min = math.atan(math.exp(-0.5 * logsnr_min)) - limit_max
    return -2.0 * torch.log(torch.tan(limit_min * t + limit_max))


def cosine_log_rate(logsnr: Tensor, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> Tensor:
    """``log |d l / dt|`` of :func:`cosine_logsnr` as a function of its log-SNR ``l`` (any shape).

    With ``theta = limit_min * t + limit_max`` and ``tan(theta) = exp(-l / 2)``,
    ``d l / dt = -4 limit_min / sin(2 theta) = -4 limit_min cosh(l / 2)``, so
    ``log |d l / dt| = log(2 limit_min) + |l| / 2 + log(1 + exp(-|l|))``: finite for every finite ``l``,
    also outside ``[logsnr_min, logsnr_max]`` (the unclipped cosine's rate there).
    """
    limit_max = math.atan(math.exp(-0.5 * logsnr_max))
    limit_min = math.atan(math.exp(-0.5 * logsnr_min)) - limit_max
    magnitude = logsnr.abs()
    return math.log(2 * limit_min) + 0.5 * magnitude + torch.log1p(torch.exp(-magnitude))


def vp_log_alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """``(log alpha, log sigma)`` of the variance-preserving process with log-SNR ``logsnr``.

    ``alpha^2 = sigmoid(l)`` and ``sigma^2 = sigmoid(-l)``; finite for ``l = +-inf``. Written as
    ``log sigmoid(+-l) = min(+-l, 0) - log(1 + exp(-|l|))``, which shares the one softplus
    between the two (twice as fast as two ``logsigmoid`` calls, and as accurate); the branches
    are split at ``l >= 0`` so that the derivative at ``l = 0`` is the true one.
    """
    negative = logsnr < 0
    softplus = torch.log1p(torch.exp(torch.where(negative, logsnr, -logsnr)))  # log(1 + exp(-|l|))
    log_alpha2 = torch.where(negative, logsnr, 0.0) - softplus
    log_sigma2 = torch.where(negative, 0.0, -logsnr) - softplus
    return log_alpha2.mul_(0.5), log_sigma2.mul_(0.5)


def linear_beta_log_alphabar(num_steps: int = 1000, beta_start: float = 1e-4,
                             beta_end: float = 0.02) -> Tensor:
    """``log alphabar_i = sum_{j <= i} log(1 - beta_j)`` for i = 0..T, shape (T + 1,), float64.

    The discrete linear schedule of Ho et al. (2020): ``beta_j`` linear from ``beta_start`` to
    ``beta_end`` for j = 1..T; entry 0 is ``log 1 = 0`` (no noise).
    """
    if num_steps < 1 or not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need num_steps >= 1 and 0 < beta_start <= beta_end < 1, got "
                         f"num_steps={num_steps}, beta_start={beta_start}, beta_end={beta_end}")
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return F.pad(torch.cumsum(torch.log1p(-betas), 0), (1, 0))


def interpolate_log_alphabar(t: Tensor, table: Tensor) -> Tensor:
    """``log alphabar(t)``, piecewise linear in ``t * T`` through ``table`` (shape (T + 1,)).

    Exact at ``t = i / T``, where it equals ``table[i]``; monotone between grid points, so the
    continuous-time process stays Markov.
    """
    num_steps = table.numel() - 1
    x = t * num_steps
    lo = x.floor().clamp(0, num_steps - 1)
    frac = x - lo
    lo = lo.long()
    table = table.to(t.dtype)
    return torch.lerp(table[lo], table[lo + 1], frac)


def blur_tau(t: Tensor, sigma_blur_max: float) -> Tensor:
    """Dissipation time of blurring diffusion: ``tau_t = sigma_blur(t)^2 / 2`` with
    ``sigma_blur(t) = sigma_blur_max * sin(t * pi / 2)^2`` (Hoogeboom & Salimans 2023)."""
    sigma_blur = sigma_blur_max * torch.sin(t * (math.pi / 2)) ** 2
    return 0.5 * sigma_blur**2


def log_spaced_blur_tau(t: Tensor, sigma_blur_min: float, sigma_blur_max: float,
                        num_steps: int) -> Tensor:
    """Dissipation time of IHDM (Rissanen et al. 2022): ``tau = sigma_B^2 / 2``.

    At level ``k = t * K`` (K = ``num_steps``), ``sigma_B`` is log-spaced from
    ``sigma_blur_min`` (k = 1) to ``sigma_blur_max`` (k = K); level 0 is the clean image and
    ``sigma_B`` rises linearly from 0 to ``sigma_blur_min`` on ``k in [0, 1]``. Exact at the
    paper's levels, continuous and non-decreasing in between.
    """
    k = t * num_steps
    if num_steps > 1:
        ratio = math.log(sigma_blur_max / sigma_blur_min) / (num_steps - 1)
        log_spaced = sigma_blur_min * torch.exp((k - 1).clamp(min=0) * ratio)
    else:
        log_spaced = torch.full_like(k, sigma_blur_max)
    sigma_b = torch.where(k < 1, sigma_blur_min * k, log_spaced)
    return 0.5 * sigma_b**2
