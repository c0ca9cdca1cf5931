"""The samplers: update rules run by one loop, and multistep solvers, registered in :data:`SAMPLERS`.

Every registered sampler is called alike,

    sampler(denoise, corruption, u, times, generator=None, progress=False, hook=None, **options) -> u_x_hat

runs from ``times[0]`` to ``times[-1] = 0`` in basis coordinates, evaluates the model once per
interval (``len(times) - 1`` network evaluations) and returns the last denoised estimate ``x_hat``:
the last evaluation adds no noise. It carries ``.order`` (the order of its step formula, None for a
stochastic sampler) and ``.stochastic`` (whether it draws noise with its default options).

A first-order sampler is a *rule* (:class:`RuleSampler`): per coordinate and step t -> s it gives
:class:`Rule` ``(k_u, k_x, var)`` from the coefficients at t and s, and the one loop of
:meth:`RuleSampler.__call__` steps

    u_s = k_u u_t + k_x x_hat(u_t) + sqrt(var) n,      n ~ N(0, I)

(no draw when ``var`` is None). :func:`ancestral` and :func:`ddim` are the papers' posterior steps;
:func:`momentum` and :func:`naive` are Soft Diffusion's samplers. Adding one is one function of
``(c_t, c_s, **options)`` decorated with :func:`rule_sampler`, and its entry in :data:`SAMPLERS`.

The multistep solvers (:class:`MultistepSampler`) integrate the probability-flow ODE with exponential
integrators. In the basis every coordinate i is a scalar diffusion with its own half log-SNR
``lambda_t[i] = log(alpha_t[i] / sigma_t[i])``; its probability-flow ODE, written with the data
prediction ``x_hat``, has the exact solution (Lu et al. 2022b, eq. 9)

    u_s = (sigma_s / sigma_t) u_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x_hat(lambda) dlambda

and the DPM-Solver++ samplers integrate it with per-coordinate step sizes ``h = lambda_s - lambda_t``:
the first-order rule is DDIM (``u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) x_hat``), the
second- and third-order rules use two and three denoiser outputs. A coordinate whose log-SNR does
not move (``h = 0``, e.g. IHDM's mean colour) stays where it is.

Both kinds evaluate the model through a :class:`Grid`, which applies a :class:`StepHook`: the hook may
replace ``x_hat`` at every evaluation (every sampler), or the state after each update (rules only).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..coefficients import Coefficients, posterior_coefficients
from ..corruption import DiagonalizableCorruption
from .denoiser import Denoiser

__all__ = ["Step", "StepHook", "Grid", "Rule", "Sampler", "RuleSampler", "MultistepSampler", "rule_sampler",
           "multistep_sampler", "ancestral", "ddim", "dpmpp_2m", "dpmpp_2s", "dpmpp_3m", "momentum", "naive",
           "SAMPLERS"]


# ----------------------------------------------------------------------------- the per-step hook
class Step(NamedTuple):
    """One network evaluation of a sampler, in basis coordinates, as a :class:`StepHook` sees it.

    Attributes:
        index: the evaluation, 0 to N - 1 (N = ``len(times) - 1``); also the index of ``t`` in the grid.
        t, s: (1,) the time of this evaluation and the next grid time (0 at the last evaluation).
        c_t, c_s: the :class:`~lincorrupt.coefficients.Coefficients` at ``t`` and ``s``.
        u_t: (B, *shape) the state at ``t``.
        u_x: (B, *shape) the denoiser's ``x_hat`` at ``t`` (after ``clip`` / ``threshold``).
    """

    index: int
    t: Tensor
    s: Tensor
    c_t: Coefficients
    c_s: Coefficients
    u_t: Tensor
    u_x: Tensor


class StepHook:
    """Changes a sampler per step: subclass it and override :meth:`x_hat`, :meth:`state` or both.

    The defaults change nothing. With ``needs_grad = True`` the denoiser is evaluated under
    :func:`torch.enable_grad` with ``step.u_t.requires_grad_()``, so ``step.u_x`` has a graph back to
    ``step.u_t`` inside both methods (e.g. for the gradient of a measurement loss); the sampler detaches
    what they return.
    """

    needs_grad: bool = False

    def x_hat(self, step: Step) -> Tensor:
        """The ``x_hat`` (B, *shape) the sampler uses at this evaluation, and returns after the last one.
        Applies to every sampler (multistep solvers keep it in their history)."""
        return step.u_x

    def state(self, step: Step, u_s: Tensor) -> Tensor:
        """The state (B, *shape) at ``step.s`` after the sampler's update ``u_s``; not called after the last
        evaluation. Only rule samplers (:class:`RuleSampler`) call it: multistep solvers refuse such a hook."""
        return u_s


def _overrides_state(hook: StepHook) -> bool:
    return type(hook).state is not StepHook.state


def _at(c: Coefficients, k: int) -> Coefficients:
    return Coefficients(c.log_alpha[k:k + 1], c.log_sigma[k:k + 1])


def _grid_coefficients(corruption: DiagonalizableCorruption, times: Tensor) -> tuple[Coefficients, Tensor]:
    """Coefficients at every grid time at once (computed once, indexed per step) and the half
    log-SNR ``lambda = log alpha - log sigma``; each of shape (N + 1, ...) broadcastable to (1, *shape)."""
    c = corruption.coefficients(times)
    return c, c.log_alpha - c.log_sigma


class Grid:
    """A time grid being sampled: its coefficients, and the denoiser evaluated on it through a hook.

    Args:
        denoise: the :class:`~lincorrupt.sampling.Denoiser`.
        corruption: the forward process.
        times: (N + 1,) decreasing times ending at 0 (checked by :func:`lincorrupt.sample`).
        hook: a :class:`StepHook`, or None for none.
        progress: show a tqdm bar of the N evaluations, called ``desc``.

    Attributes:
        times, steps: the grid and its number of network evaluations N.
        c, lam: :class:`~lincorrupt.coefficients.Coefficients` and half log-SNR ``lambda`` at every time,
            (N + 1, ...) broadcastable to (1, *shape).
    """

    def __init__(self, denoise: Denoiser, corruption: DiagonalizableCorruption, times: Tensor,
                 hook: StepHook | None = None, progress: bool = False, desc: str = "sampling"):
        if hook is not None and not isinstance(hook, StepHook):
            raise TypeError(f"hook must be a lincorrupt.sampling.StepHook, got {type(hook).__name__}")
        self.denoise, self.hook, self.times, self.steps = denoise, hook or StepHook(), times, len(times) - 1
        self.c, self.lam = _grid_coefficients(corruption, times)
        self._bar = tqdm(total=self.steps, disable=not progress, desc=desc)

    def at(self, k: int) -> Coefficients:
        """The coefficients at ``times[k]``, (1, ...)."""
        return _at(self.c, k)

    def h(self, k: int, j: int) -> Tensor:
        """``lambda(times[j]) - lambda(times[k])`` per coordinate, (1, ...)."""
        return self.lam[j:j + 1] - self.lam[k:k + 1]

    def _grad(self):
        return torch.enable_grad() if self.hook.needs_grad else contextlib.nullcontext()

    def evaluate(self, u: Tensor, k: int) -> tuple[Step, Tensor]:
        """Evaluate the denoiser at ``u = u_{times[k]}`` (B, *shape): the :class:`Step` and the ``x_hat``
        the sampler uses (the hook's)."""
        t, s = self.times[k:k + 1], self.times[k + 1:k + 2]
        steps = []

        def replace(u_x: Tensor) -> Tensor:
            steps.append(Step(k, t, s, self.at(k), self.at(k + 1), u_t, u_x))
            return self.hook.x_hat(steps[0])

        with self._grad():
            u_t = u.detach().requires_grad_() if self.hook.needs_grad else u
            x = self.denoise.x_hat(u_t, t, self.at(k), replace)
        self._bar.update()
        if k == self.steps - 1:
            self._bar.close()
        return steps[0], x.detach() if self.hook.needs_grad else x

    def x_hat(self, u: Tensor, k: int) -> Tensor:
        """The ``x_hat`` (B, *shape) the sampler uses at ``u = u_{times[k]}``."""
        return self.evaluate(u, k)[1]

    def state(self, step: Step, u_s: Tensor) -> Tensor:
        """The hook's state after the update ``u_s`` from ``step``."""
        with self._grad():
            u_s = self.hook.state(step, u_s)
        return u_s.detach() if self.hook.needs_grad else u_s


# ----------------------------------------------------------------------------- registered samplers
class Sampler:
    """A registered sampler: ``sampler(denoise, corruption, u, times, generator=None, progress=False,
    hook=None, **options) -> u_x_hat`` (B, *shape), basis coordinates, from ``u = u_{times[0]}``.

    Attributes:
        name: its key in :data:`SAMPLERS`.
        order: the order p of its step formula with its default options (the error falls as ``steps^-p``
            once the start-up steps are short enough), or None for a stochastic sampler.
        stochastic: whether it draws noise with its default options.
    """

    order: int | None
    stochastic: bool

    def __init__(self, fn: Callable, name: str, order: int | None, stochastic: bool):
        functools.update_wrapper(self, fn)
        self.name, self.order, self.stochastic = name, order, stochastic

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} order={self.order} stochastic={self.stochastic}>"


class Rule(NamedTuple):
    """A first-order step ``u_s = k_u u_t + k_x x_hat + sqrt(var) n`` per coordinate; each broadcastable to
    (K, *shape) for K steps at once; ``var`` None for a deterministic step (no noise drawn)."""

    k_u: Tensor
    k_x: Tensor
    var: Tensor | None


class RuleSampler(Sampler):
    """A sampler given by its :class:`Rule` ``rule(c_t, c_s, **options)``, run by the one loop of
    :meth:`__call__`; ``c_t``, ``c_s`` are :class:`~lincorrupt.coefficients.Coefficients` of K steps at once."""

    def __init__(self, rule: Callable[..., Rule], name: str, order: int | None, stochastic: bool):
        super().__init__(rule, name, order, stochastic)
        self.rule = rule

    def rules(self, c: Coefficients, **options) -> Rule:
        """The rule of every step but the last of a grid with coefficients ``c`` (N + 1, ...): (N - 1, ...)."""
        inspect.signature(self.rule).bind(c, c, **options)  # a TypeError naming an unknown option
        return self.rule(Coefficients(c.log_alpha[:-2], c.log_sigma[:-2]),
                         Coefficients(c.log_alpha[1:-1], c.log_sigma[1:-1]), **options)

    def __call__(self, denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
                 generator: torch.Generator | None = None, progress: bool = False, hook: StepHook | None = None,
                 **options) -> Tensor:
        grid = Grid(denoise, corruption, times, hook, progress, self.name)
        k_u, k_x, var = self.rules(grid.c, **options)
        for k in range(grid.steps):
            step, u_x = grid.evaluate(u, k)
            if k == grid.steps - 1:
                return u_x
            u_s = k_u[k:k + 1] * u + k_x[k:k + 1] * u_x
            if var is not None:
                noise = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
                u_s = u_s + var[k:k + 1].sqrt() * noise
            u = grid.state(step, u_s)
        return u


class MultistepSampler(Sampler):
    """A deterministic solver ``solver(grid, u, **options) -> u_x_hat`` with its own loop over a
    :class:`Grid` (``grid.x_hat(u, k)`` evaluates the model at ``times[k]``). A hook may replace its
    ``x_hat`` but not its state (refused: its history would no longer match its states)."""

    def __init__(self, solver: Callable[..., Tensor], name: str, order: int):
        super().__init__(solver, name, order, False)
        self.solver = solver

    def __call__(self, denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
                 generator: torch.Generator | None = None, progress: bool = False, hook: StepHook | None = None,
                 **options) -> Tensor:
        if hook is not None and _overrides_state(hook):
            raise TypeError(f"the multistep sampler {self.name!r} cannot take a hook that changes the state "
                            f"({type(hook).__name__}.state): use a rule sampler such as 'ancestral' or 'ddim', or "
                            f"change x_hat only")
        return self.solver(Grid(denoise, corruption, times, hook, progress, self.name), u, **options)


def rule_sampler(name: str, *, order: int | None, stochastic: bool) -> Callable[[Callable[..., Rule]], RuleSampler]:
    """Decorator: the rule ``rule(c_t, c_s, **options) -> Rule`` as the :class:`RuleSampler` called ``name``."""
    return lambda rule: RuleSampler(rule, name, order, stochastic)


def multistep_sampler(name: str, *, order: int) -> Callable[[Callable[..., Tensor]], MultistepSampler]:
    """Decorator: the solver ``solver(grid, u, **options) -> u_x_hat`` as the :class:`MultistepSampler` called
    ``name``."""
    return lambda solver: MultistepSampler(solver, name, order)


# ----------------------------------------------------------------------------- first-order rules
@rule_sampler("ancestral", order=None, stochastic=True)
def ancestral(c_t: Coefficients, c_s: Coefficients) -> Rule:
    """Ancestral sampling from ``p(u_s | u_t) = q(u_s | u_t, x = x_hat)`` per coordinate
    (Ho et al. 2020, Algorithm 2; Hoogeboom & Salimans 2023, sec. 3.3): the posterior's
    ``(c_t, c_x, var)`` of :func:`~lincorrupt.coefficients.posterior_coefficients`."""
    return Rule(*posterior_coefficients(c_s, c_t))


@rule_sampler("ddim", order=1, stochastic=False)
def ddim(c_t: Coefficients, c_s: Coefficients, eta: float = 0.0) -> Rule:
    """DDIM (Song et al. 2021, eq. 12) per coordinate; ``eta = 0`` is deterministic and ``eta = 1`` is
    ancestral sampling:

        u_s = alpha_s x_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) n,   v = eta^2 sigma2_{t->s}

    with the noise ``eps_hat = (u_t - alpha_t x_hat) / sigma_t`` implied by ``x_hat``. With
    ``d = logsnr_t - logsnr_s = -2 h``, ``h = lambda_s - lambda_t``, and ``r = sigma2_{t->s} / sigma_s^2 = -expm1(d)``:

        k_u = (sigma_s / sigma_t) sqrt(1 - eta^2 + eta^2 e^d),    var = eta^2 sigma_s^2 r,
        k_x = alpha_s - alpha_t k_u = -alpha_s expm1(-h + log1p(eta^2 expm1(-2 h)) / 2)

    sums and log-space forms that stay exact where ``sigma_s^2 - v`` cancels (``SNR_t << SNR_s``,
    ``eta`` near 1), where ``alpha_t`` underflows and for small steps.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim needs 0 <= eta <= 1, got {eta}")
    d = c_t.logsnr - c_s.logsnr
    k_u = torch.exp(c_s.log_sigma - c_t.log_sigma) * torch.sqrt((1 - eta**2) + eta**2 * torch.exp(d))
    k_x = -c_s.alpha * torch.expm1(d / 2 + 0.5 * torch.log1p(eta**2 * torch.expm1(d)))
    return Rule(k_u, k_x, eta**2 * c_s.sigma**2 * -torch.expm1(d) if eta > 0 else None)


@rule_sampler("momentum", order=None, stochastic=True)
def momentum(c_t: Coefficients, c_s: Coefficients) -> Rule:
    """The Momentum Sampler of Soft Diffusion (Daras et al. 2022): denoise at fixed blur, then deblur.

    Per coordinate and step t -> s, with ``r = sigma_s^2 / sigma_t^2`` and n standard normal:

        1. x_hat = denoiser(u_t)                                             (one network evaluation)
        2. u' = u_t + (1 - r) (alpha_t x_hat - u_t) + sqrt(max(sigma_t^2 - sigma_s^2, 0)) n   (noise t -> s)
        3. u_s = u' + (alpha_s - alpha_t) x_hat                               (corruption t -> s)

    that is ``(k_u, k_x, var) = (r, alpha_s - r alpha_t, max(sigma_t^2 - sigma_s^2, 0))``. Step 2 moves the
    noise level from ``sigma_t`` to ``sigma_s`` at the blur of time t (the ports'
    ``z_t - (s_s^2 / s_t^2 - 1) eps_hat + noise`` with ``eps_hat = C_t x_hat - z_t``); step 3 swaps the
    blurred estimate ``C_t x_hat`` for ``C_s x_hat``. With a constant ``sigma_t`` (IHDM) step 2 does
    nothing and step 3 is Cold Diffusion's improved sampler, ``x_s = x_t - D(x_hat, t) + D(x_hat, s)``
    (Bansal et al. 2022, Algorithm 2). The variance is ``-sigma_t^2 expm1(2 log(sigma_s / sigma_t))``,
    exact where ``sigma_s ~ sigma_t``.
    """
    r = torch.exp(2 * (c_s.log_sigma - c_t.log_sigma))
    var = (-torch.expm1(2 * (c_s.log_sigma - c_t.log_sigma)) * c_t.sigma**2).clamp(min=0)
    return Rule(r, c_s.alpha - r * c_t.alpha, var)


@rule_sampler("naive", order=None, stochastic=True)
def naive(c_t: Coefficients, c_s: Coefficients) -> Rule:
    """Soft Diffusion's Naive Sampler (Daras et al. 2022): re-corrupt ``x_hat`` to the next time,
    ``u_s = alpha_s x_hat + sigma_s n`` per coordinate (n standard normal)."""
    return Rule(torch.zeros_like(c_s.alpha), c_s.alpha, c_s.sigma**2)


# ----------------------------------------------------------------------------- multistep solvers
def _first_order(u: Tensor, u_x: Tensor, c_t: Coefficients, c_s: Coefficients, h: Tensor) -> Tensor:
    """DDIM / DPM-Solver++(1): ``u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) x_hat``."""
    return torch.exp(c_s.log_sigma - c_t.log_sigma) * u - c_s.alpha * torch.expm1(-h) * u_x


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where the denominator is positive, else 0 (a frozen coordinate)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


@multistep_sampler("dpm++2m", order=2)
def dpmpp_2m(grid: Grid, u: Tensor) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), per coordinate with its own log-SNR steps.

    With ``h = lambda_s - lambda_t`` and ``h_last = lambda_t - lambda_prev`` per coordinate:

        1. x_hat_t = denoiser(u_t)                                      (one network evaluation)
        2. D = x_hat_t + h / (2 h_last) (x_hat_t - x_hat_prev)           (D = x_hat_t at the first step)
        3. u_s = (sigma_s / sigma_t) u_t - alpha_s expm1(-h) D           (exponential integrator)

    In the identity basis with a scalar schedule this is diffusers' DPMSolverMultistepScheduler
    (``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``). The last
    evaluation's ``x_hat`` is returned (diffusers' first-order step to ``sigma = 0``). Its first step
    is DDIM, whose local error ``O(h^2)`` leaves the global order 2.

    Args:
        grid: the :class:`Grid` of (N + 1,) decreasing times ending at 0; N network evaluations.
        u: (B, *shape) start ``u_{times[0]}`` in basis coordinates.
    Returns:
        (B, *shape) ``x_hat`` in basis coordinates.
    """
    u_x_prev = h_last = None
    for k in range(grid.steps):
        u_x = grid.x_hat(u, k)
        if k == grid.steps - 1:
            return u_x
        h = grid.h(k, k + 1)
        d = u_x if u_x_prev is None else u_x + _ratio(h, 2 * h_last) * (u_x - u_x_prev)
        u = _first_order(u, d, grid.at(k), grid.at(k + 1), h)
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


@multistep_sampler("dpm++3m", order=3)
def dpmpp_3m(grid: Grid, u: Tensor) -> Tensor:
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

    ``order`` is 3, the order of the multistep formula of step 4. The start-up steps are first and second
    order: the first one's local error ``O(h^2)`` makes the global error ``O(h^2)`` on grids of equal
    intervals (the library's grids), where doubling the steps divides the error by about 4; the third
    order shows only where the start-up intervals are much shorter than the rest.
    """
    history, lams = [], []  # x_hat and lambda of the last three evaluations, newest last
    for k in range(grid.steps):
        c_t, c_s = grid.at(k), grid.at(k + 1)
        u_x = grid.x_hat(u, k)
        if k == grid.steps - 1:
            return u_x
        history, lams = [*history, u_x][-3:], [*lams, grid.lam[k:k + 1]][-3:]
        h = grid.h(k, k + 1)
        order = min(len(history), 2 if k == grid.steps - 2 and grid.steps < LOWER_ORDER_FINAL_BELOW else 3)
        if order == 3:
            u = _third_order_step(u, history, lams, c_t, c_s, h)
        else:
            d = u_x if order == 1 else u_x + _ratio(h, 2 * (lams[-1] - lams[-2])) * (u_x - history[-2])
            u = _first_order(u, d, c_t, c_s, h)
    return u


@multistep_sampler("dpm++2s", order=2)
def dpmpp_2s(grid: Grid, u: Tensor) -> Tensor:
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
    k = 0
    if grid.steps % 2 == 0:  # one first-order step so that the rest pairs up and ends with one evaluation
        u = _first_order(u, grid.x_hat(u, 0), grid.at(0), grid.at(1), grid.h(0, 1))
        k = 1
    while k < grid.steps - 1:
        c_t, c_m, c_s = grid.at(k), grid.at(k + 1), grid.at(k + 2)
        h_m, h = grid.h(k, k + 1), grid.h(k, k + 2)
        u_x = grid.x_hat(u, k)
        u_m = _first_order(u, u_x, c_t, c_m, h_m)
        u_x_m = grid.x_hat(u_m, k + 1)
        d = u_x + _ratio(h, 2 * h_m) * (u_x_m - u_x)
        u = _first_order(u, d, c_t, c_s, h)
        k += 2
    return grid.x_hat(u, k)


#: name -> registered sampler (:class:`Sampler`, with ``.order`` and ``.stochastic``); each takes
#: ``(denoise, corruption, u, times, generator=None, progress=False, hook=None, **options)``.
SAMPLERS: dict[str, Sampler] = {s.name: s for s in (ancestral, ddim, dpmpp_2m, dpmpp_2s, dpmpp_3m, momentum, naive)}
