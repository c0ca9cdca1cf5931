"""Per-coordinate coefficients of a diagonal Gaussian diffusion, and the formulas built from them.

In basis coordinates ``u = V^T z`` every coordinate i is a scalar diffusion with its own
``alpha_t[i]``, ``sigma_t[i]`` (Kingma et al. 2021). :class:`Coefficients` holds them in log
space; :func:`transition` and :func:`posterior_coefficients` are the closed forms of
``q(u_t | u_s)`` and ``q(u_s | u_t, x)``. This module imports only torch, so the corruption,
the predictions, the priors and the samplers can all share it.

Shapes: every tensor broadcasts to (B, *shape), e.g. (B, 1, H, W) or (B, 1, 1, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Coefficients", "Transition", "transition", "posterior_coefficients", "T_EPS"]

#: Where the log-SNR is infinite at t = 0 (a noise-free start, e.g. the discrete DDPM schedule),
#: time grids end and the likelihood's bound starts at this time instead: DDPM's first step, as
#: DPM-Solver does for discrete-time models (Lu et al. 2022a, sec. 5; Ho et al.'s L_0 decodes x from x_1).
T_EPS = 1e-3


class Coefficients(NamedTuple):
    """``log alpha_t`` and ``log sigma_t`` per basis coordinate, broadcastable to (B, *shape)."""

    log_alpha: Tensor
    log_sigma: Tensor

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    @property
    def logsnr(self) -> Tensor:
        """``log SNR_t = log(alpha_t^2 / sigma_t^2)``."""
        return 2.0 * (self.log_alpha - self.log_sigma)

    @property
    def velocity_scale(self) -> Tensor:
        """``sqrt(alpha_t^2 + sigma_t^2)``, the scale of the velocity prediction (1 for VP processes)."""
        return torch.exp(torch.logaddexp(2 * self.log_alpha, 2 * self.log_sigma) / 2)


class Transition(NamedTuple):
    """``q(u_t | u_s) = N(alpha * u_s, var)``: ``alpha_{t|s}`` and ``sigma^2_{t|s}`` per coordinate."""

    alpha: Tensor
    var: Tensor


def transition(cs: Coefficients, ct: Coefficients) -> Transition:
    """``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``.

    The variance is computed as ``-sigma_t^2 expm1(logsnr_t - logsnr_s)`` (VDM appendix A),
    which is exact where the difference of squares cancels.
    """
    return Transition((ct.log_alpha - cs.log_alpha).exp(), -torch.expm1(ct.logsnr - cs.logsnr) * ct.sigma**2)


def posterior_coefficients(cs: Coefficients, ct: Coefficients) -> tuple[Tensor, Tensor, Tensor]:
    """``q(u_s | u_t, x) = N(c_t u_t + c_x u_x, var)``; returns ``(c_t, c_x, var)``.

    Algebraically equal to the textbook form (Kingma et al. 2021, eq. 32-33)
    ``sigma2_{t->s} = (1/sigma_s^2 + alpha_{t|s}^2 / sigma2_{t|s})^-1`` and
    ``mu = sigma2_{t->s} (alpha_{t|s} / sigma2_{t|s} u_t + alpha_s / sigma_s^2 u_x)``, written with
    the relative SNR drop ``snr_drop = 1 - SNR_t / SNR_s = sigma2_{t|s} / sigma_t^2 = -expm1(logsnr_t - logsnr_s)``
    so that ``sigma_s = 0`` (a noise-free start) and ``alpha_t -> 0`` stay finite:
    ``c_t = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_x = alpha_s snr_drop``, ``var = snr_drop sigma_s^2``.
    """
    snr_drop = -torch.expm1(ct.logsnr - cs.logsnr)
    c_t = torch.exp(ct.log_alpha - cs.log_alpha + 2 * (cs.log_sigma - ct.log_sigma))
    return c_t, cs.alpha * snr_drop, snr_drop * cs.sigma**2
