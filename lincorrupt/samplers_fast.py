"""Few-step samplers and the log-SNR time grid, per basis coordinate.

In the basis every coordinate i is a scalar diffusion with its own half log-SNR
``lambda_t[i] = log(alpha_t[i] / sigma_t[i])``. The probability-flow ODE of coordinate i,
written with the data prediction ``x_hat``, has the exact solution (Lu et al. 2022b, eq. 9)

    u_s = (sigma_s / sigma_t) u_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x_hat(lambda) dlambda

and the samplers here integrate it with per-coordinate step sizes ``h = lambda_s - lambda_t``:
the first-order rule is DDIM (``u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) x_hat``),
the second-order rules use two denoiser outputs. A coordinate whose log-SNR does not move
(``h = 0``, e.g. IHDM's mean colour) stays where it is. Every sampler shares the signature of
:func:`lincorrupt.sampling.ancestral`, evaluates the model ``len(times) - 1`` times and
returns the last ``x_hat``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .corruption import Coefficients

if TYPE_CHECKING:
    from .corruption import DiagonalizableCorruption
    from .sampling import Denoiser

__all__ = ["dpmpp_2m", "ode", "logsnr_grid", "mean_log_snr"]


def _grid_coefficients(corruption: DiagonalizableCorruption, times: Tensor) -> tuple[Coefficients, Tensor]:
    """Coefficients at every grid time at once (computed once, indexed per step) and the half
    log-SNR ``lambda = log alpha - log sigma``; each of shape (N + 1, ...) broadcastable to (1, *shape)."""
    log_alpha, log_sigma = corruption.log_alpha_sigma(times)
    c = Coefficients(log_alpha, log_sigma)
    return c, log_alpha - log_sigma


def _at(c: Coefficients, k: int) -> Coefficients:
    return Coefficients(c.log_alpha[k:k + 1], c.log_sigma[k:k + 1])


def _first_order(u: Tensor, u_x: Tensor, c_t: Coefficients, c_s: Coefficients, h: Tensor) -> Tensor:
    """DDIM / DPM-Solver++(1): ``u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) x_hat``."""
    return torch.exp(c_s.log_sigma - c_t.log_sigma) * u - c_s.alpha * torch.expm1(-h) * u_x


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where the denominator is positive, else 0 (a frozen coordinate)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


def dpmpp_2m(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
             generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), per coordinate with its own log-SNR steps.

    With ``h = lambda_s - lambda_t`` and ``h_last = lambda_t - lambda_prev`` per coordinate:

        1. x_hat_t = denoiser(u_t)                                      (one network evaluation)
        2. D = x_hat_t + h / (2 h_last) (x_hat_t - x_hat_prev)           (D = x_hat_t at the first step)
        3. u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) D           (exponential integrator)

    In the identity basis with a scalar schedule this is diffusers' DPMSolverMultistepScheduler
    (``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``). The last
    evaluation's ``x_hat`` is returned (diffusers' first-order step to ``sigma = 0``).

    Args:
        denoise: :class:`~lincorrupt.sampling.Denoiser`.
        corruption: the forward process.
        u: (B, *shape) start ``u_{times[0]}`` in basis coordinates.
        times: (N + 1,) decreasing times ending at 0; N network evaluations.
        generator, progress: unused randomness (deterministic sampler); tqdm bar.
    Returns:
        (B, *shape) ``x_hat`` in basis coordinates.
    """
    c, lam = _grid_coefficients(corruption, times)
    steps = len(times) - 1
    u_x_prev = h_last = None
    for k in tqdm(range(steps), disable=not progress, desc="dpm++2m"):
        c_t = _at(c, k)
        u_x, _ = denoise(u, times[k:k + 1], c_t)
        if k == steps - 1:
            return u_x
        h = lam[k + 1:k + 2] - lam[k:k + 1]
        d = u_x if u_x_prev is None else u_x + _ratio(h, 2 * h_last) * (u_x - u_x_prev)
        u = _first_order(u, d, c_t, _at(c, k + 1), h)
        u_x_prev, h_last = u_x, h
    return u


def ode(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
        generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Probability-flow ODE by the second-order midpoint exponential integrator, per coordinate:
    DPM-Solver-2 with data prediction (Lu et al. 2022b, Algorithm 1, "DPM-Solver++(2S)").

    Grid points are taken in pairs ``(t, m, s)``; ``m`` is the intermediate evaluation. Per
    coordinate, ``h = lambda_s - lambda_t`` and ``r = (lambda_m - lambda_t) / h``:

        1. x_hat_t = denoiser(u_t)
        2. u_m = (sigma_m / sigma_t) u_t - alpha_m expm1(-r h) x_hat_t          (DDIM to the midpoint)
        3. x_hat_m = denoiser(u_m)
        4. D = x_hat_t + (x_hat_m - x_hat_t) / (2 r)
        5. u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) D

    Two network evaluations per pair of grid intervals, so ``len(times) - 1`` in total; when
    that number is even the first interval is a DDIM step. Returns the last evaluation's
    ``x_hat``. Shapes as in :func:`dpmpp_2m`.
    """
    c, lam = _grid_coefficients(corruption, times)
    steps = len(times) - 1
    k = 0
    bar = tqdm(total=steps, disable=not progress, desc="ode")
    if steps % 2 == 0:  # one first-order step so that the rest pairs up and ends with one evaluation
        c_t = _at(c, 0)
        u_x, _ = denoise(u, times[:1], c_t)
        u = _first_order(u, u_x, c_t, _at(c, 1), lam[1:2] - lam[:1])
        k, _ = 1, bar.update()
    while k < steps - 1:
        c_t, c_m, c_s = _at(c, k), _at(c, k + 1), _at(c, k + 2)
        h_m, h = lam[k + 1:k + 2] - lam[k:k + 1], lam[k + 2:k + 3] - lam[k:k + 1]
        u_x, _ = denoise(u, times[k:k + 1], c_t)
        u_m = _first_order(u, u_x, c_t, c_m, h_m)
        u_x_m, _ = denoise(u_m, times[k + 1:k + 2], c_m)
        d = u_x + _ratio(h, 2 * h_m) * (u_x_m - u_x)
        u = _first_order(u, d, c_t, c_s, h)
        k += 2
        bar.update(2)
    u_x, _ = denoise(u, times[k:k + 1], _at(c, k))
    bar.update()
    bar.close()
    return u_x


# ---------------------------------------------------------------------------- time grids
#: Log-SNR below which a coordinate carries no information (SNR 2e-9); :func:`mean_log_snr`
#: clips there so that coordinates long destroyed (IHDM's high frequencies reach -10^4) do not
#: dominate the average.
LOGSNR_FLOOR = -20.0


def mean_log_snr(corruption: DiagonalizableCorruption, t: Tensor) -> Tensor:
    """The schedule's log-SNR summarised over coordinates: ``mean_i max(log SNR_t[i], LOGSNR_FLOOR)``, (B,).

    Non-increasing in t for every valid corruption; for a scalar schedule (DDPM) it is the
    log-SNR itself, for blurring diffusion the noise log-SNR plus the mean log-attenuation.
    """
    c = Coefficients(*corruption.log_alpha_sigma(t))
    return c.logsnr.clamp(min=LOGSNR_FLOOR).expand(t.shape[0], *corruption.shape).flatten(1).mean(1)


#: Where the log-SNR is infinite at t = 0 (a noise-free start, e.g. the discrete DDPM schedule)
#: the grid ends at this time instead, as DPM-Solver does for discrete-time models (Lu et al. 2022a, sec. 5).
T_EPS = 1e-3


def logsnr_grid(corruption: DiagonalizableCorruption, steps: int, device=None) -> Tensor:
    """``steps + 1`` times from 1 to 0, equally spaced in :func:`mean_log_snr` (float64).

    The points are equally spaced in log-SNR from ``t = 1`` to ``t = 0`` (to ``t = T_EPS`` if the
    log-SNR is infinite at 0, and the last point is then moved to 0: the sampler returns the
    denoised estimate of the previous point, so the last time is never evaluated). Times are
    found by bisection to float64 precision, so the grid follows the schedule exactly.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    ends = torch.tensor([1.0, 0.0], dtype=torch.float64, device=device)
    with torch.no_grad():
        level = mean_log_snr(corruption, ends)
        if not math.isfinite(float(level[1])):
            ends[1] = T_EPS
            level = mean_log_snr(corruption, ends)
        targets = torch.linspace(float(level[0]), float(level[1]), steps + 1, dtype=torch.float64, device=device)
        lo = torch.full_like(targets, float(ends[1]))  # mean_log_snr(lo) >= target >= mean_log_snr(hi)
        hi = torch.full_like(targets, 1.0)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = mean_log_snr(corruption, mid) >= targets
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    times = (lo + hi) / 2
    times[0], times[-1] = 1.0, 0.0
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"the log-SNR grid of {type(corruption).__name__} with {steps} steps is not strictly "
                         f"decreasing (the mean log-SNR is flat somewhere); use grid='uniform' or pass times")
    return times
