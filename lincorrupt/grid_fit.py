"""Fitted time grids: the grid of N network evaluations that minimises the exact KL of a sampler's output.

For Gaussian data the exact denoiser is known and every deterministic sampler is an affine map of its start,
so the KL between what the sampler generates and the data is exact and differentiable in the grid
(:meth:`lincorrupt.GaussianData.sample_kl`). :func:`fit_grid` minimises it over the grid's times, in the
spirit of Align Your Steps (Sabour et al. 2024), with L-BFGS (Nocedal & Wright, Algorithm 7.5; the objective
is smooth and has few parameters, N - 1 for N evaluations, so a quasi-Newton method with exact gradients by
autograd converges in tens of evaluations where a derivative-free search needs hundreds).

Parametrisation, with the guard rails built in. The N evaluations are at ``1 = t_0 > t_1 > ... > t_(N-1)``
and the grid ends at ``t_N = 0`` (never evaluated: the sampler returns ``x_hat`` at ``t_(N-1)``). With
``t_min`` the floor on the last evaluation, the N - 1 steps ``d_k = t_(k-1) - t_k`` and the rest
``r = t_(N-1) - t_min`` are ``(1 - t_min) softmax(l_1, ..., l_(N-1), l_r)``, and neighbouring logits differ by
``l_(k+1) - l_k = log(max_ratio) tanh(a_k)``. So by construction

- ``t_(N-1) >= t_min``: the last evaluation is never closer to 0 than the floor, and
- ``1 / max_ratio <= d_(k+1) / d_k <= max_ratio``: no step is more than ``max_ratio`` times its neighbour.

Both keep the grid honest for a trained network: on an exact denoiser the optimum otherwise evaluates the last
time where the log-SNR is far above anything the network learnt well (DDPM's discrete schedule grows without
bound towards t = 0) and reaches it in one huge step, which only an exact denoiser survives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .corruption import DiagonalizableCorruption
from .oracle import GaussianData
from .sampling import SAMPLERS, Denoiser, RuleSampler
from .sampling.grids import earliest_time, grid_times

__all__ = ["fit_grid", "grid_from_parameters", "DEFAULT_MAX_RATIO"]

f64 = torch.float64

#: Default cap on the ratio of neighbouring steps of a fitted grid: a step may be at most 4 times as long (or
#: short) as the one before, so a grid can still go from dense to sparse within a few steps.
DEFAULT_MAX_RATIO = 4.0


def grid_from_parameters(a: Tensor, b: Tensor, t_min: float, max_ratio: float) -> Tensor:
    """The grid (N + 1,) of the parameters ``a`` (N - 2,) and ``b`` (1,): see the module's docstring.

    ``a`` sets the log-ratio of neighbouring steps, ``log(d_(k+1) / d_k) = log(max_ratio) tanh(a_k)``, and
    ``b`` the logit of the rest ``t_(N-1) - t_min`` relative to the first step. Differentiable; float64.
    """
    steps = torch.cat([a.new_zeros(1), torch.cumsum(math.log(max_ratio) * torch.tanh(a), 0)])
    w = torch.softmax(torch.cat([steps, b.reshape(1)]), 0) * (1.0 - t_min)
    times = 1.0 - torch.cumsum(w[:-1], 0)  # t_1 ... t_(N-1); t_(N-1) = t_min + w[-1]
    return torch.cat([times.new_ones(1), times, times.new_zeros(1)])


def _parameters_of(times: Tensor, t_min: float, max_ratio: float) -> tuple[Tensor, Tensor]:
    """``(a, b)`` of :func:`grid_from_parameters` that give ``times`` (N + 1,) as nearly as the guard rails allow
    (neighbouring ratios clipped to ``max_ratio / 1.01``, the rest floored at a thousandth of a step)."""
    d = (times[:-2] - times[1:-1]).to(f64)
    rest = (times[-2] - t_min).to(f64).clamp(min=1e-3 * float(d.mean()))
    log_d = d.log()
    a = torch.atanh((log_d[1:] - log_d[:-1]).div(math.log(max_ratio)).clamp(-1 / 1.01, 1 / 1.01))
    return a, (rest.log() - log_d[0]).reshape(1)


def _diagonal(data: GaussianData, corruption: DiagonalizableCorruption) -> GaussianData:
    """The same data with the covariance replaced by its diagonal in the corruption's basis: ``V diag(C) V^T``."""
    _, C = data.in_basis(corruption)
    V = corruption.basis.matrix(data.shape, dtype=f64, device=C.device)
    cov = (V * C.diagonal()) @ V.T
    return GaussianData(data.mean, (cov + cov.T) / 2)


def _diagonal_kl(data: GaussianData, corruption: DiagonalizableCorruption, method: str, times: Tensor,
                 exact_prior: bool = False, **options) -> Tensor:
    """``data.sample_kl`` for data whose covariance is diagonal in the corruption's basis (:func:`_diagonal`),
    with 2 probes instead of D + 1: every sampler and this denoiser act on each basis coordinate alone, so the
    library's sampler run on the prior's mean and the mean plus its standard deviations gives each coordinate's
    output mean and standard deviation at once."""
    mean, P = data.prior_moments(corruption, exact_prior)
    probes = torch.stack([mean, mean + P.diagonal().sqrt()]).reshape(2, *data.shape)
    y = SAMPLERS[method](Denoiser(data.model(corruption), corruption, "x"), corruption, probes, times, **options)
    y = y.reshape(2, data.dim)
    return data.kl(corruption, y[0], torch.diag((y[1] - y[0]).square()))


def _lbfgs(objective, a: Tensor, b: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Minimise ``objective(a, b)`` from ``(a, b)`` by L-BFGS with a strong-Wolfe line search; the best point."""
    a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    best = [math.inf, a.detach().clone(), b.detach().clone()]
    opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective(a, b)
        if not bool(torch.isfinite(loss)):  # a singular output covariance: step back
            loss = torch.tensor(1e30, dtype=f64) + 0 * (a.sum() + b.sum())
        elif float(loss.detach()) < best[0]:
            best[:] = [float(loss.detach()), a.detach().clone(), b.detach().clone()]
        loss.backward()
        return loss

    opt.step(closure)
    return best[1], best[2]


def _check(corruption, data, steps, method, t_last_min, max_ratio, options) -> tuple[GaussianData, float]:
    """Every argument of :func:`fit_grid` checked where it enters; the data as :class:`GaussianData` and the floor."""
    if not isinstance(corruption, DiagonalizableCorruption):
        raise TypeError(f"corruption must be a DiagonalizableCorruption, got {type(corruption).__name__}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps (network evaluations) must be a positive int, got {steps!r}")
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SAMPLERS)}")
    sampler = SAMPLERS[method]
    noisy = sampler.stochastic
    if isinstance(sampler, RuleSampler):  # with these options (ddim with eta > 0 draws noise)
        probe = torch.tensor([1.0, 0.5, 0.0], dtype=f64, device=next((b.device for b in corruption.buffers()), None))
        noisy = sampler.rules(corruption.coefficients(probe), **options).var is not None
    if noisy:
        deterministic = sorted(k for k, s in SAMPLERS.items() if not s.stochastic)
        raise ValueError(f"fit_grid fits grids of samplers that draw no noise, and {method!r} with options {options} "
                         f"draws noise; use one of {deterministic} (ddim with eta=0)")
    if not (isinstance(max_ratio, float | int) and max_ratio > 1 and math.isfinite(max_ratio)):
        raise ValueError(f"max_ratio caps the ratio of neighbouring steps: a finite number > 1, got {max_ratio!r}")
    if isinstance(data, Tensor):
        if data.shape[1:] != corruption.shape:
            raise ValueError(f"data must be a batch of images (N, {', '.join(map(str, corruption.shape))}) for this "
                             f"{type(corruption).__name__}, got shape {tuple(data.shape)}")
        data = GaussianData.fit(data)
    elif not isinstance(data, GaussianData):
        raise TypeError(f"data must be a GaussianData or a batch of images (N, *shape), got {type(data).__name__}")
    if data.shape != tuple(corruption.shape):
        raise ValueError(f"the data have shape {data.shape} but {type(corruption).__name__} has "
                         f"{tuple(corruption.shape)}")
    floor = earliest_time(corruption) if t_last_min is None else t_last_min
    if not (isinstance(floor, float | int) and 0 < floor < 1):
        raise ValueError(f"t_last_min is the floor on the last evaluated time, a number in (0, 1), got {floor!r}")
    return data, float(floor)


def fit_grid(corruption: DiagonalizableCorruption, data: GaussianData | Tensor, steps: int, method: str = "dpm++2m",
             t_last_min: float | None = None, max_ratio: float = DEFAULT_MAX_RATIO, init: str | Tensor = "logsnr",
             max_iter: int = 50, warm_iter: int = 200, exact_prior: bool = False, **options) -> Tensor:
    """The grid of ``steps`` network evaluations on which ``method`` generates the data most faithfully.

    Minimises the exact ``KL(p_sampler || N(mean, cov))`` of :meth:`lincorrupt.GaussianData.sample_kl` over the
    grid with L-BFGS, under the guard rails of the module's docstring; warm-started by the same fit on the data
    with its covariance replaced by its diagonal in the corruption's basis (2 probes instead of D + 1 per KL).

    Args:
        corruption: the forward process (its prior must be Gaussian, as :meth:`~lincorrupt.GaussianData.sample_kl`
            needs, unless ``exact_prior``).
        data: a :class:`~lincorrupt.GaussianData`, or a batch of images (N, *corruption.shape) to fit one to
            (:meth:`~lincorrupt.GaussianData.fit`, which holds a (D, D) covariance, D = prod(shape)).
        steps: N, the network evaluations (``steps + 1`` times).
        method: a key of :data:`lincorrupt.SAMPLERS` that draws no noise ("dpm++2m", "dpm++3m", "dpm++2s",
            "ddim"); stochastic samplers are refused.
        t_last_min: the floor on the last evaluated time ``times[-2]``; default
            :func:`lincorrupt.sampling.earliest_time` (``T_EPS`` for a noise-free start such as DDPM's).
        max_ratio: the cap on the ratio of neighbouring steps (> 1).
        init: where the warm start starts: a key of :data:`lincorrupt.GRIDS` (laid out down to ``t_last_min``)
            or a grid tensor (N + 1,) from 1 to 0.
        max_iter, warm_iter: L-BFGS iterations on the full and on the diagonal problem (0 skips it:
            ``max_iter=0`` returns the warm start).
        exact_prior: start from the data's own ``q(u_1)`` instead of the corruption's prior.
        **options: the sampler's options.
    Returns:
        (steps + 1,) float64 times on the corruption's device, strictly decreasing from 1 to 0, with
        ``times[-2] >= t_last_min`` and neighbouring steps within ``max_ratio``: ``lc.sample(..., grid=times)``.
    Cost: each L-BFGS iteration evaluates the KL and its gradient a few times; one evaluation is O(N D^3)
    (D + 1 probes through the sampler, a Cholesky factorisation per time), several seconds at 28x28 with 20
    evaluations on one CPU core.
    """
    data, t_min = _check(corruption, data, steps, method, t_last_min, max_ratio, options)
    for name, value in (("max_iter", max_iter), ("warm_iter", warm_iter)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 (0 skips that fit), got {value!r}")
    device = data.mean.device
    if steps == 1:
        return torch.tensor([1.0, 0.0], dtype=f64, device=device)
    if isinstance(init, str):
        start = grid_times(corruption, init, steps, device, f64, last=t_min * 2 if t_min < 0.5 else None)
    else:
        start = grid_times(corruption, init, device=device, dtype=f64)
        if len(start) != steps + 1:
            raise ValueError(f"init has {len(start) - 1} steps, expected {steps}")
    a, b = _parameters_of(start, t_min, max_ratio)
    diagonal = _diagonal(data, corruption)

    def fitted(kl):
        return lambda a, b: kl(grid_from_parameters(a, b, t_min, max_ratio))

    if warm_iter > 0:
        a, b = _lbfgs(fitted(lambda t: _diagonal_kl(diagonal, corruption, method, t, exact_prior, **options)), a, b,
                      warm_iter)
    if max_iter > 0:
        a, b = _lbfgs(fitted(lambda t: data.sample_kl(corruption, method, grid=t, exact_prior=exact_prior,
                                                      **options)), a, b, max_iter)
    with torch.no_grad():
        times = grid_from_parameters(a, b, t_min, max_ratio)
    _check_guard_rails(times, t_min, max_ratio)
    return times


def _check_guard_rails(times: Tensor, t_min: float, max_ratio: float) -> None:
    """The construction's promises, checked on the float64 result (to its rounding: steps are differences of times)."""
    d = times[:-2] - times[1:-1]
    ratio = torch.maximum(d[1:] / d[:-1], d[:-1] / d[1:]) if len(d) > 1 else d.new_ones(1)
    if not (times[0] == 1 and times[-1] == 0 and bool((d > 0).all()) and float(times[-2]) >= t_min * (1 - 1e-12)
            and float(ratio.max()) <= max_ratio * (1 + 1e-6)):
        raise FloatingPointError(f"the fitted grid breaks its guard rails (last evaluation {float(times[-2]):.3g}, "
                                 f"floor {t_min:.3g}; largest step ratio {float(ratio.max()):.3g}, cap {max_ratio})")
