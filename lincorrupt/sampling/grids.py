"""Time grids: ``grid(corruption, steps, device) -> times``, ``steps + 1`` times decreasing from 1 to 0.

"uniform" is equally spaced in t; "logsnr" follows the corruption's mean log-SNR, "info" the
largest per-coordinate information change of unit-variance data and "data" that of the data's own
per-coordinate variance, so that few steps land where the schedule does not move. Where the
log-SNR is infinite at t = 0 the grids end at :data:`~lincorrupt.coefficients.T_EPS` and then put
their last point at 0.

The last evaluation. A sampler evaluates the model at ``times[:-1]`` and returns the denoised estimate
``x_hat`` of its last evaluation, at ``times[-2]``; the final 0 is never evaluated. So every grid of N
steps as registered ends with an evaluation one of its own steps above 0: "uniform" at ``t = 1 / N``,
"logsnr" one log-SNR step above its end, "info" and "data" one information step above it. That is the
papers' convention (Ho et al.'s last step denoises ``x_1`` at ``t = 1 / T``), harmless with hundreds of
steps; with tens of steps the estimate at ``times[-2]`` is still blurred or noisy and its error bounds
the sample's quality. ``grid_times(..., last=t)`` (``lc.sample(..., last=t)``) lays the grid's N
evaluations out by its own rule from 1 down to ``t`` instead, so that the last one is at ``t``;
:func:`earliest_time` is the smallest such time the schedule allows. The default (``last=None``)
keeps every registered grid as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..coefficients import T_EPS
from ..corruption import DiagonalizableCorruption
from ..validation import is_validating, validate_args

__all__ = ["uniform_grid", "logsnr_grid", "info_grid", "data_grid", "mean_log_snr", "grid_times", "earliest_time",
           "GRIDS", "LOGSNR_FLOOR", "T_LAST"]


def uniform_grid(corruption: DiagonalizableCorruption, steps: int, device=None, end: float | None = None) -> Tensor:
    """``steps + 1`` times equally spaced from 1 to ``end`` (default 0), then 0 as the last point; float64."""
    times = torch.linspace(1.0, end or 0.0, steps + 1, dtype=torch.float64, device=device)
    times[-1] = 0.0
    return times


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


def logsnr_grid(corruption: DiagonalizableCorruption, steps: int, device=None, end: float | None = None) -> Tensor:
    """``steps + 1`` times from 1 to 0, equally spaced in :func:`mean_log_snr` (float64).

    The points are equally spaced in log-SNR from ``t = 1`` to ``t = 0`` (to ``t = T_EPS`` if the
    log-SNR is infinite at 0, and the last point is then moved to 0: the sampler returns the
    denoised estimate of the previous point, so the last time is never evaluated). With ``end`` the
    spacing ends at ``t = end`` instead (the last point is still 0). Times are found by bisection to
    float64 precision, so the grid follows the schedule exactly.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    ends = torch.tensor([1.0, 0.0], dtype=torch.float64, device=device)
    with torch.no_grad():
        if end is not None:
            ends[1] = end
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
                            name: str, end: float | None = None) -> Tensor:
    """``steps + 1`` times from 1 to 0 equally spaced in ``ell(t) = integral max_i |dI_i/dt| dt`` with
    ``I_i(t) = 1/2 softplus(log SNR_t[i] + log_var[i])`` (float64), ``ell`` summed from ``end`` (default 0, or
    ``T_EPS`` where the log-SNR is infinite at 0); see :func:`info_grid`."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    with torch.no_grad(), validate_args(False):  # times of our own making, in [0, 1]
        zero = torch.zeros(1, dtype=torch.float64, device=device)
        t_end = 0.0 if bool(torch.isfinite(corruption.coefficients(zero).logsnr).all()) else T_EPS
        t_end = t_end if end is None else end
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


def info_grid(corruption: DiagonalizableCorruption, steps: int, device=None, end: float | None = None) -> Tensor:
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
    ``T_EPS`` where the log-SNR is infinite at 0, as :func:`logsnr_grid` does, or at ``end``. Deterministic.
    """
    return _equal_information_grid(corruption, steps, device, 0.0, "information", end)


def data_grid(corruption: DiagonalizableCorruption, steps: int, device=None, end: float | None = None) -> Tensor:
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
    return _equal_information_grid(corruption, steps, device, log_var, "data", end)


#: The last evaluation :func:`earliest_time` allows where every coordinate's log-SNR is finite at t = 0: the
#: coefficients there are those of t = 0 to about 1e-3 in log-SNR (a grid's last point, 0, is never evaluated).
T_LAST = 1e-5


def earliest_time(corruption: DiagonalizableCorruption) -> float:
    """The earliest time a sampler's last evaluation can have on this corruption's schedule: :data:`T_LAST` where
    every coordinate's log-SNR is finite at t = 0, else :data:`~lincorrupt.coefficients.T_EPS` (a noise-free
    start such as the discrete DDPM schedule, whose first step is at ``1 / T``; closer to 0 the log-SNR grows
    without bound and an evaluation there asks the model for a regime it never learnt)."""
    with torch.no_grad(), validate_args(False):
        zero = torch.zeros(1, dtype=torch.float64, device=next((b.device for b in corruption.buffers()), None))
        return T_LAST if bool(torch.isfinite(corruption.coefficients(zero).logsnr).all()) else T_EPS


def _ending_at(corruption: DiagonalizableCorruption, name: str, steps: int, last: float, device) -> Tensor:
    """The grid ``name`` whose ``steps`` evaluations run from 1 down to ``last`` by its own rule: its ``steps - 1``
    intervals from 1 to ``last``, then 0."""
    if not (isinstance(last, float | int) and not isinstance(last, bool) and 0 < last < 1):
        raise ValueError(f"last is the time of the last evaluation, a number in (0, 1), got {last!r}")
    if steps < 2:
        raise ValueError(f"last={last} needs steps >= 2: with one step the only evaluation is at t = 1")
    head = GRIDS[name](corruption, steps - 1, device, end=float(last))[:-1]
    return torch.cat([head, head.new_tensor([float(last), 0.0])])


def grid_times(corruption: DiagonalizableCorruption, grid: str | Tensor, steps: int | None = None, device=None,
               dtype: torch.dtype = torch.float32, last: float | None = None) -> Tensor:
    """The times of a sampling run, (steps + 1,): ``GRIDS[grid](corruption, steps)`` for a name, or the tensor
    ``grid`` itself, checked to decrease strictly from exactly 1 (where the prior draws ``u_1``) to exactly 0
    (values checked while validation is on), on ``device`` (default the corruption's) in ``dtype`` (at least
    float32).

    ``last`` (named grids only): the time of the last evaluation, in (0, 1), e.g. :func:`earliest_time`; the
    grid's ``steps`` evaluations then follow its own rule from 1 down to ``last`` (its ``steps - 1`` intervals
    from 1 to ``last``), then 0. None (the default) keeps the grid as registered, whose last evaluation is one
    of its steps above 0 (see the module's docstring). A tensor grid carries its own last evaluation,
    ``times[-2]``."""
    if device is None:
        device = next((b.device for b in corruption.buffers()), torch.device("cpu"))
    if isinstance(grid, Tensor):
        if last is not None:
            raise ValueError(f"last={last} applies to a named grid; a tensor grid's last evaluation is its own "
                             f"times[-2]")
        times = grid
    elif isinstance(grid, str) and grid in GRIDS:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        times = GRIDS[grid](corruption, steps, device) if last is None else _ending_at(corruption, grid, steps,
                                                                                         last, device)
    else:
        raise ValueError(f"unknown grid {grid!r}; expected one of {sorted(GRIDS)} or a tensor of times")
    if times.ndim != 1 or times.numel() < 2 or not times.is_floating_point():
        raise ValueError("a time grid must be a 1-D floating tensor of at least 2 decreasing times from 1 to 0")
    times = times.to(device=device, dtype=torch.promote_types(dtype, torch.float32))
    if not is_validating():
        return times
    cpu = times.detach().cpu().double()
    if not (cpu[-1] == 0 and bool((cpu[1:] < cpu[:-1]).all())):
        raise ValueError(f"a time grid must decrease strictly from 1 to exactly 0, got "
                         f"{cpu[:3].tolist()} ... {cpu[-3:].tolist()}")
    if cpu[0] != 1:
        raise ValueError(f"a time grid must start at t = 1, where the prior draws u_1, got {cpu[0].item():.6g}: "
                         f"u_1 is not a draw of the marginal at an earlier time. To start from your own u_t, "
                         f"call a sampler of lincorrupt.sampling with it (ancestral(denoiser, corruption, u_t, times))")
    return times


#: name -> ``grid(corruption, steps, device, end=None) -> times``, decreasing from 1 to 0 (``end``: where the
#: spacing ends, the last point still 0; see :func:`grid_times`'s ``last``): "uniform" in t,
#: "logsnr" equally spaced in the mean log-SNR (:func:`logsnr_grid`), "info" in the largest
#: per-coordinate information change of unit-variance data (:func:`info_grid`), "data" the same
#: for the data's own variance per coordinate (:func:`data_grid`; needs ``fit_data_statistics``).
GRIDS: dict[str, Callable[..., Tensor]] = {"uniform": uniform_grid, "logsnr": logsnr_grid, "info": info_grid,
                                           "data": data_grid}
