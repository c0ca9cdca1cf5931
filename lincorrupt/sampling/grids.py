"""Time grids: ``grid(corruption, steps, device) -> times``, ``steps + 1`` times decreasing from 1 to 0.

"uniform" is equally spaced in t; "logsnr" follows the corruption's mean log-SNR, "info" the
largest per-coordinate information change of unit-variance data and "data" that of the data's own
per-coordinate variance, so that few steps land where the schedule does not move. Where the
log-SNR is infinite at t = 0 the grids end at :data:`~lincorrupt.coefficients.T_EPS` and then put
their last point at 0 (the sampler returns the denoised estimate of the point before it, so the
last time is never evaluated).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..coefficients import T_EPS
from ..corruption import DiagonalizableCorruption
from ..validation import validate_args

__all__ = ["uniform_grid", "logsnr_grid", "info_grid", "data_grid", "mean_log_snr", "GRIDS", "LOGSNR_FLOOR"]


def uniform_grid(corruption: DiagonalizableCorruption, steps: int, device=None) -> Tensor:
    """``steps + 1`` times equally spaced from 1 to 0, float64."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)


#: Log-SNR below which a coordinate carries no information (SNR 2e-9); :func:`mean_log_snr`
#: clips there so that coordinates long destroyed (IHDM's high frequencies reach -10^4) do not
#: dominate the average.
LOGSNR_FLOOR = -20.0


def mean_log_snr(corruption: DiagonalizableCorruption, t: Tensor) -> Tensor:
    """The schedule's log-SNR summarised over coordinates: ``mean_i max(log SNR_t[i], LOGSNR_FLOOR)``, (B,).

    Non-increasing in t for every valid corruption; for a scalar schedule (DDPM) it is the
    log-SNR itself, for blurring diffusion the noise log-SNR plus the mean log-attenuation.
    """
    c = corruption.coefficients(t)
    return c.logsnr.clamp(min=LOGSNR_FLOOR).expand(t.shape[0], *corruption.shape).flatten(1).mean(1)


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


#: Resolution of the fine time grid on which :func:`info_grid` measures each coordinate's
#: information: uniform points plus geometric ones that resolve the start (IHDM's first blur level).
_FINE_UNIFORM, _FINE_GEOMETRIC, _FINE_SMALLEST = 4096, 1024, 1e-7


def _fine_times(t_end: float, device=None) -> Tensor:
    """Increasing float64 times from ``t_end`` to 1, dense everywhere and geometric near ``t_end``."""
    unit = torch.cat([torch.linspace(0.0, 1.0, _FINE_UNIFORM + 1, dtype=torch.float64, device=device),
                      torch.logspace(math.log10(_FINE_SMALLEST), 0.0, _FINE_GEOMETRIC, dtype=torch.float64,
                                     device=device)])
    return t_end + (1.0 - t_end) * torch.unique(unit)


def _equal_information_grid(corruption: DiagonalizableCorruption, steps: int, device, log_var: Tensor | float,
                            name: str) -> Tensor:
    """``steps + 1`` times from 1 to 0 equally spaced in ``ell(t) = integral max_i |dI_i/dt| dt`` with
    ``I_i(t) = 1/2 softplus(log SNR_t[i] + log_var[i])`` (float64); see :func:`info_grid`."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    with torch.no_grad(), validate_args(False):  # times of our own making, in [0, 1]
        zero = torch.zeros(1, dtype=torch.float64, device=device)
        t_end = 0.0 if bool(torch.isfinite(corruption.coefficients(zero).logsnr).all()) else T_EPS
        fine = _fine_times(t_end, device)
        moves, last = [], None
        for chunk in fine.split(512):  # (len, coordinates) at a time
            logsnr = corruption.coefficients(chunk).logsnr + log_var
            info = torch.nn.functional.softplus(logsnr).flatten(1) / 2
            if last is not None:
                info = torch.cat([last, info])
            moves.append((info[1:] - info[:-1]).abs().amax(1))
            last = info[-1:]
        ell = torch.cat([zero, torch.cumsum(torch.cat(moves), 0)])
        ell = ell + 1e-9 * float(ell[-1]) * (fine - t_end)  # strictly increasing where no coordinate moves
        levels = torch.linspace(float(ell[-1]), 0.0, steps + 1, dtype=torch.float64, device=device)
        k = torch.searchsorted(ell, levels).clamp(1, len(ell) - 1)
        weight = (levels - ell[k - 1]) / (ell[k] - ell[k - 1])
        times = fine[k - 1] + weight * (fine[k] - fine[k - 1])
    times[0], times[-1] = 1.0, 0.0
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"the {name} grid of {type(corruption).__name__} with {steps} steps is not strictly "
                         f"decreasing (more steps than its fine grid resolves); use grid='logsnr' or pass times")
    return times


def info_grid(corruption: DiagonalizableCorruption, steps: int, device=None) -> Tensor:
    """``steps + 1`` times from 1 to 0 on which no coordinate gains more information than in another interval (float64).

    A unit-variance Gaussian datum seen through coordinate i at time t carries
    ``I_i(t) = 1/2 log(1 + SNR_t[i]) = 1/2 softplus(log SNR_t[i])`` nats about itself (Cover &
    Thomas, eq. 9.16). The grid is equally spaced in

        ell(t) = integral_0^t max_i |d I_i(t) / dt| dt

    so no coordinate's information changes by more than ``ell(1) / steps`` nats in any
    interval (``max_i`` of a sum is at most the sum of the ``max_i``). Unlike the log-SNR, the
    information stops moving once a coordinate is destroyed, so IHDM's high frequencies, whose
    log-SNR keeps falling to -10^4, get steps only while they still hold signal. ``ell`` is summed
    on a fine grid (:func:`_fine_times`) and inverted by linear interpolation; it ends at
    ``T_EPS`` where the log-SNR is infinite at 0, as :func:`logsnr_grid` does. Deterministic.
    """
    return _equal_information_grid(corruption, steps, device, 0.0, "information")


def data_grid(corruption: DiagonalizableCorruption, steps: int, device=None) -> Tensor:
    """:func:`info_grid` for the data at hand: equal steps in the largest change of any coordinate's
    information ``I_i(t) = 1/2 log(1 + SNR_t[i] Var_i)`` (float64).

    ``Var_i = corruption.data_var[i]`` is the data's variance in basis coordinate i
    (:meth:`~lincorrupt.DiagonalizableCorruption.fit_data_statistics`), so ``SNR_t[i] Var_i =
    alpha_t[i]^2 Var_i / sigma_t[i]^2`` is the coordinate's effective SNR and ``I_i`` the mutual
    information between it and its noisy observation for Gaussian data (Cover & Thomas, eq. 9.16).
    A coordinate is generated where its ``I_i`` moves, which depends on its variance: in the DCT
    basis of natural images the mean colour carries hundreds of times the variance of the
    highest frequencies, so it is generated late in t (near t = 1) and the highest frequencies
    early; the grid bounds every coordinate's information step by ``ell(1) / steps``, with ``ell``
    as in :func:`info_grid`. With ``data_var`` all ones it is :func:`info_grid`.

    Raises:
        ValueError: the corruption has no ``data_var`` (fit it on a batch of training data first).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if corruption.data_var is None:
        raise ValueError(f"grid='data' weights each coordinate by the data's variance, and this "
                         f"{type(corruption).__name__} has none: call corruption.fit_data_statistics(x) once with a "
                         f"batch of training data x of shape (N, {', '.join(map(str, corruption.shape))}), or use "
                         f"grid='info'")
    log_var = corruption.data_var.to(device=device, dtype=torch.float64).log()
    return _equal_information_grid(corruption, steps, device, log_var, "data")


#: name -> ``grid(corruption, steps, device) -> times``, decreasing from 1 to 0: "uniform" in t,
#: "logsnr" equally spaced in the mean log-SNR (:func:`logsnr_grid`), "info" in the largest
#: per-coordinate information change of unit-variance data (:func:`info_grid`), "data" the same
#: for the data's own variance per coordinate (:func:`data_grid`; needs ``fit_data_statistics``).
GRIDS: dict[str, Callable[..., Tensor]] = {"uniform": uniform_grid, "logsnr": logsnr_grid, "info": info_grid,
                                           "data": data_grid}
