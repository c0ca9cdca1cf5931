"""The samplers: free functions of (denoiser, corruption, u_1, times) with one shared signature.

    sampler(denoise, corruption, u, times, generator=None, progress=False, **options) -> u_x_hat

Each runs from ``times[0]`` to ``times[-1] = 0`` in basis coordinates, evaluates the model once
per interval (``len(times) - 1`` network evaluations) and returns the last denoised estimate
``x_hat``: the last step adds no noise. :func:`ancestral` and :func:`ddim` follow the papers'
posterior steps; :func:`momentum` and :func:`naive` are Soft Diffusion's samplers; the others are
exponential integrators of the probability-flow ODE.

In the basis every coordinate i is a scalar diffusion with its own half log-SNR
``lambda_t[i] = log(alpha_t[i] / sigma_t[i])``. The probability-flow ODE of coordinate i,
written with the data prediction ``x_hat``, has the exact solution (Lu et al. 2022b, eq. 9)

    u_s = (sigma_s / sigma_t) u_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x_hat(lambda) dlambda

and the DPM-Solver++ samplers integrate it with per-coordinate step sizes ``h = lambda_s - lambda_t``:
the first-order rule is DDIM (``u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) x_hat``),
the second- and third-order rules use two and three denoiser outputs. A coordinate whose log-SNR does not move
(``h = 0``, e.g. IHDM's mean colour) stays where it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..coefficients import Coefficients, posterior_coefficients
from ..corruption import DiagonalizableCorruption
from .denoiser import Denoiser

__all__ = ["ancestral", "ddim", "ddim_coefficients", "dpmpp_2m", "dpmpp_2s", "dpmpp_3m", "momentum", "naive",
           "SAMPLERS", "SAMPLER_ORDERS"]


def _intervals(corruption, times: Tensor, progress: bool):
    """Yield ``(t, s, c_t, c_s)`` for consecutive times; coefficients computed once per time."""
    c_next = corruption.coefficients(times[:1])
    for k in tqdm(range(len(times) - 1), disable=not progress, desc="sampling"):
        c_t, c_next = c_next, corruption.coefficients(times[k + 1:k + 2])
        yield times[k:k + 1], times[k + 1:k + 2], c_t, c_next


def ancestral(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
              generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Ancestral sampling from ``p(u_s | u_t) = q(u_s | u_t, x = x_hat)`` per coordinate
    (Ho et al. 2020, Algorithm 2; Hoogeboom & Salimans 2023, sec. 3.3)."""
    for k, (t, _, c_t, c_s) in enumerate(_intervals(corruption, times, progress)):
        u_x = denoise.x_hat(u, t, c_t)
        if k == len(times) - 2:
            return u_x
        coef_t, coef_x, var = posterior_coefficients(c_s, c_t)
        noise = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
        u = coef_t * u + coef_x * u_x + var.sqrt() * noise  # u_s ~ N(mu_{t->s}, sigma2_{t->s})
    return u


def ddim_coefficients(c_s: Coefficients, c_t: Coefficients, eta: float) -> tuple[Tensor, Tensor]:
    """DDIM's weight of ``u_eps_hat`` and standard deviation of the fresh noise (Song et al. 2021, eq. 12).

    With ``r = sigma2_{t->s} / sigma_s^2 = -expm1(logsnr_t - logsnr_s)`` the posterior variance
    is ``r sigma_s^2``, so ``v = eta^2 r sigma_s^2`` and

        sqrt(sigma_s^2 - v) = sigma_s sqrt((1 - eta^2) + eta^2 SNR_t / SNR_s),    sqrt(v) = eta sigma_s sqrt(r)

    (``1 - eta^2 r = 1 - eta^2 + eta^2 (1 - r)`` and ``1 - r = exp(logsnr_t - logsnr_s)``): a sum of
    non-negative terms, exact where ``sigma_s^2 - v`` cancels (``SNR_t << SNR_s``, ``eta`` near 1).
    Returns two tensors broadcastable to (B, *shape).
    """
    dlogsnr = c_t.logsnr - c_s.logsnr
    c_eps = c_s.sigma * torch.sqrt((1 - eta**2) + eta**2 * torch.exp(dlogsnr))
    return c_eps, eta * c_s.sigma * torch.sqrt(-torch.expm1(dlogsnr))


def ddim(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
         generator: torch.Generator | None = None, progress: bool = False, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) per coordinate; ``eta = 0`` is deterministic and
    ``eta = 1`` is ancestral sampling:

        u_s = alpha_s u_x_hat + sqrt(sigma_s^2 - v) u_eps_hat + sqrt(v) noise,  v = eta^2 sigma2_{t->s}

    with both square roots in the cancellation-free form of :func:`ddim_coefficients`.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim needs 0 <= eta <= 1, got {eta}")
    for k, (t, _, c_t, c_s) in enumerate(_intervals(corruption, times, progress)):
        u_x, u_eps = denoise(u, t, c_t)
        if k == len(times) - 2:
            return u_x
        c_eps, std = ddim_coefficients(c_s, c_t, eta)
        u = c_s.alpha * u_x + c_eps * u_eps
        if eta > 0:
            u = u + std * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    return u


def _grid_coefficients(corruption: DiagonalizableCorruption, times: Tensor) -> tuple[Coefficients, Tensor]:
    """Coefficients at every grid time at once (computed once, indexed per step) and the half
    log-SNR ``lambda = log alpha - log sigma``; each of shape (N + 1, ...) broadcastable to (1, *shape)."""
    c = corruption.coefficients(times)
    return c, c.log_alpha - c.log_sigma


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
        u_x = denoise.x_hat(u, times[k:k + 1], c_t)
        if k == steps - 1:
            return u_x
        h = lam[k + 1:k + 2] - lam[k:k + 1]
        d = u_x if u_x_prev is None else u_x + _ratio(h, 2 * h_last) * (u_x - u_x_prev)
        u = _first_order(u, d, c_t, _at(c, k + 1), h)
        u_x_prev, h_last = u_x, h
    return u


#: Below this many steps the last solver step drops to second order, as DPM-Solver++ recommends
#: for few steps (Lu et al. 2022b, sec. 5: "lower-order final steps"); diffusers' ``lower_order_final``.
LOWER_ORDER_FINAL_BELOW = 15
#: Where ``|h|`` is below this the exponential integrals of :func:`_exp_integrals` are summed as
#: Taylor series: their closed forms cancel catastrophically for small steps.
_SERIES_BELOW = 0.5


def _exp_integrals(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``c_n(h) = integral_0^h e^(tau - h) tau^n / n! dtau`` for n = 0, 1, 2 (Lu et al. 2022b, eq. 9 expanded).

    Closed forms ``c_0 = -expm1(-h)``, ``c_n = h^n / n! - c_(n-1)``; for ``|h| < _SERIES_BELOW``
    the series ``c_n = sum_(k > n) (-1)^(k - n - 1) h^k / k!`` (20 terms: exact to float64 there),
    as the closed forms cancel to a relative error of ``eps / h^2`` for small ``h``. ``c_n(0) = 0``,
    so a frozen coordinate (``h = 0``) does not move.
    """
    small = h.abs() < _SERIES_BELOW
    hs = torch.where(small, h, 0.0)
    terms = [hs]
    for k in range(2, 21):
        terms.append(terms[-1] * hs / k)  # terms[j] = h^(j+1) / (j+1)!
    series = [sum((-1) ** (j - n) * terms[j] for j in range(n, len(terms))) for n in range(3)]
    c0 = -torch.expm1(-h)
    c1 = h + torch.expm1(-h)
    c2 = h * h / 2 - c1
    return tuple(torch.where(small, a, b) for a, b in zip(series, (c0, c1, c2)))


def _third_order_step(u: Tensor, history: list[Tensor], lams: list[Tensor], c_t: Coefficients,
                      c_s: Coefficients, h: Tensor) -> Tensor:
    """One DPM-Solver++(3M) step from ``x_hat`` at the last three grid points (newest last).

    The quadratic through ``(lambda_j, x_hat_j)`` gives, with divided differences
    ``d1 = (m0 - m1) / h0``, ``d1' = (m1 - m2) / h1``, ``dd2 = (d1 - d1') / (h0 + h1)``, the
    derivatives ``x_hat' = d1 + h0 dd2`` and ``x_hat'' = 2 dd2`` at ``lambda_t``; the exact
    solution with ``x_hat`` replaced by its Taylor polynomial is then

        u_s = (sigma_s / sigma_t) u_t + alpha_s (c_0(h) x_hat + c_1(h) x_hat' + c_2(h) x_hat'')

    A ratio whose step ``h0``, ``h1`` or ``h0 + h1`` is zero is 0 (that coordinate drops an order).
    """
    m2, m1, m0 = history
    h1, h0 = lams[1] - lams[0], lams[2] - lams[1]
    d1, d1_last = _ratio(m0 - m1, h0), _ratio(m1 - m2, h1)
    dd2 = _ratio(d1 - d1_last, h0 + h1)
    _, c1, c2 = _exp_integrals(h)
    return _first_order(u, m0, c_t, c_s, h) + c_s.alpha * (c1 * (d1 + h0 * dd2) + 2 * c2 * dd2)


def dpmpp_3m(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
             generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022b, multistep third order), per coordinate with its own log-SNR steps.

    With ``h = lambda_s - lambda_t`` per coordinate and ``x_hat`` of the last three evaluations:

        1. x_hat_t = denoiser(u_t)                                       (one network evaluation)
        2. first step: DDIM, u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) x_hat_t
        3. second step: the DPM-Solver++(2M) step of :func:`dpmpp_2m`
        4. then: the third-order multistep step of :func:`_third_order_step`,
           u_s = (sigma_s / sigma_t) u_t + alpha_s (c_0 x_hat + c_1 x_hat' + c_2 x_hat'')
        5. with fewer than ``LOWER_ORDER_FINAL_BELOW`` steps the last step is second order.

    In the identity basis with a scalar schedule, steps 2, 3 and 5 are diffusers'
    DPMSolverMultistepScheduler (``algorithm_type="dpmsolver++"``, ``solver_order=3``). Its
    third-order step weights ``x_hat''`` by ``c_2 / 2``, which leaves a local error of order
    ``h^3`` (a second-order method); step 4 uses the Taylor weight ``c_2`` and is third order.
    The last evaluation's ``x_hat`` is returned. Shapes as in :func:`dpmpp_2m`.
    """
    c, lam = _grid_coefficients(corruption, times)
    steps = len(times) - 1
    history, lams = [], []  # x_hat and lambda of the last three evaluations, newest last
    for k in tqdm(range(steps), disable=not progress, desc="dpm++3m"):
        c_t, c_s = _at(c, k), _at(c, k + 1)
        u_x = denoise.x_hat(u, times[k:k + 1], c_t)
        if k == steps - 1:
            return u_x
        history, lams = [*history, u_x][-3:], [*lams, lam[k:k + 1]][-3:]
        h = lam[k + 1:k + 2] - lam[k:k + 1]
        order = min(len(history), 2 if k == steps - 2 and steps < LOWER_ORDER_FINAL_BELOW else 3)
        if order == 3:
            u = _third_order_step(u, history, lams, c_t, c_s, h)
        else:
            d = u_x if order == 1 else u_x + _ratio(h, 2 * (lams[-1] - lams[-2])) * (u_x - history[-2])
            u = _first_order(u, d, c_t, c_s, h)
    return u


def dpmpp_2s(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
             generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): the probability-flow ODE by the second-order
    singlestep (midpoint) exponential integrator with data prediction, per coordinate.

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
    bar = tqdm(total=steps, disable=not progress, desc="dpm++2s")
    if steps % 2 == 0:  # one first-order step so that the rest pairs up and ends with one evaluation
        c_t = _at(c, 0)
        u_x = denoise.x_hat(u, times[:1], c_t)
        u = _first_order(u, u_x, c_t, _at(c, 1), lam[1:2] - lam[:1])
        k, _ = 1, bar.update()
    while k < steps - 1:
        c_t, c_m, c_s = _at(c, k), _at(c, k + 1), _at(c, k + 2)
        h_m, h = lam[k + 1:k + 2] - lam[k:k + 1], lam[k + 2:k + 3] - lam[k:k + 1]
        u_x = denoise.x_hat(u, times[k:k + 1], c_t)
        u_m = _first_order(u, u_x, c_t, c_m, h_m)
        u_x_m = denoise.x_hat(u_m, times[k + 1:k + 2], c_m)
        d = u_x + _ratio(h, 2 * h_m) * (u_x_m - u_x)
        u = _first_order(u, d, c_t, c_s, h)
        k += 2
        bar.update(2)
    u_x = denoise.x_hat(u, times[k:k + 1], _at(c, k))
    bar.update()
    bar.close()
    return u_x


def momentum(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
             generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """The Momentum Sampler of Soft Diffusion (Daras et al. 2022): denoise at fixed blur, then deblur.

    Per coordinate and step t -> s, with ``r = sigma_s^2 / sigma_t^2`` and n standard normal:

        1. x_hat = denoiser(u_t)                                             (one network evaluation)
        2. u' = u_t + (1 - r) (alpha_t x_hat - u_t) + sqrt(max(sigma_t^2 - sigma_s^2, 0)) n   (noise t -> s)
        3. u_s = u' + (alpha_s - alpha_t) x_hat                               (corruption t -> s)

    Step 2 moves the noise level from ``sigma_t`` to ``sigma_s`` at the blur of time t (the ports'
    ``z_t - (s_s^2 / s_t^2 - 1) eps_hat + noise`` with ``eps_hat = C_t x_hat - z_t``); step 3 swaps the
    blurred estimate ``C_t x_hat`` for ``C_s x_hat``. With a constant ``sigma_t`` (IHDM) step 2 does
    nothing and step 3 is Cold Diffusion's improved sampler, ``x_s = x_t - D(x_hat, t) + D(x_hat, s)``
    (Bansal et al. 2022, Algorithm 2). The variance is ``-sigma_t^2 expm1(2 log(sigma_s / sigma_t))``,
    exact where ``sigma_s ~ sigma_t``. Returns the last evaluation's ``x_hat``; shapes as in :func:`dpmpp_2m`.
    """
    for k, (t, _, c_t, c_s) in enumerate(_intervals(corruption, times, progress)):
        u_x = denoise.x_hat(u, t, c_t)
        if k == len(times) - 2:
            return u_x
        r = torch.exp(2 * (c_s.log_sigma - c_t.log_sigma))
        var = (-torch.expm1(2 * (c_s.log_sigma - c_t.log_sigma)) * c_t.sigma**2).clamp(min=0)
        noise = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
        u = u + (1 - r) * (c_t.alpha * u_x - u) + var.sqrt() * noise + (c_s.alpha - c_t.alpha) * u_x
    return u


def naive(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
          generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Soft Diffusion's Naive Sampler (Daras et al. 2022): re-corrupt ``x_hat`` to the next time,
    ``u_s = alpha_s x_hat + sigma_s n`` per coordinate (n standard normal). Returns the last ``x_hat``."""
    for k, (t, _, c_t, c_s) in enumerate(_intervals(corruption, times, progress)):
        u_x = denoise.x_hat(u, t, c_t)
        if k == len(times) - 2:
            return u_x
        u = c_s.alpha * u_x + c_s.sigma * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    return u


#: name -> sampler; every sampler has the signature of :func:`ancestral` plus its own options.
SAMPLERS: dict[str, Callable[..., Tensor]] = {"ancestral": ancestral, "ddim": ddim, "dpm++2m": dpmpp_2m,
                                              "dpm++2s": dpmpp_2s, "dpm++3m": dpmpp_3m, "momentum": momentum,
                                              "naive": naive}
#: name -> the order of convergence of a deterministic sampler (with its default options) in the
#: step size, or None for a stochastic one; every sampler of :data:`SAMPLERS` declares one, and
#: the tests check each declared order.
SAMPLER_ORDERS: dict[str, int | None] = {"ancestral": None, "ddim": 1, "dpm++2m": 2, "dpm++2s": 2, "dpm++3m": 3,
                                         "momentum": None, "naive": None}
