"""Restoration: solve ``y = A x + noise_std * n`` with a diffusion model of any corruption as the prior.

:func:`restore` runs the one sampling loop (:func:`lincorrupt.sample`) with a per-step hook
(:class:`lincorrupt.sampling.StepHook`) that changes the denoised estimate ``x_hat`` or the next
state; :data:`METHODS` maps each method's name to its hook. The corrections are free functions
of one step's quantities, all in the corruption's basis coordinates ``u = V^T x``:

- :func:`pigdm_x_hat`: ΠGDM (Song et al. 2023, "Pseudoinverse-guided diffusion models for inverse
  problems", eq. 7-8) with the denoiser's uncertainty taken **per basis coordinate** from the data's
  variance ``Var_k`` (``corruption.data_var``): ``r_t^2 = (1 / Var_k + alpha_k^2 / sigma_k^2)^-1``, and the
  Kalman update ``x_hat + R A^T (A R A^T + sigma_y^2 I)^-1 (y - A x_hat)``, ``R = V diag(r_t^2) V^T``.
  For Gaussian data whose covariance is diagonal in the corruption's basis this is exactly
  ``E[x | z_t, y]``. Closed form when ``A`` is diagonal in the basis
  (:meth:`Operator.singular_values_in <lincorrupt.operators.Operator.singular_values_in>`), batched
  conjugate gradients otherwise (:func:`conjugate_gradient`).
- :func:`ddnm_x_hat`: DDNM's range-null-space decomposition (Wang et al. 2023, "Zero-shot image
  restoration using denoising diffusion null-space model", eq. 13) with DDNM+'s scaling for noisy y (eq. 19).
- :func:`dps_state`: diffusion posterior sampling (Chung et al. 2023, "Diffusion posterior sampling for
  general noisy inverse problems", Algorithm 1), a gradient step on the next state.
- :func:`wiener`: the linear MMSE (Wiener) restoration from a Gaussian fit of the data, a baseline.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .basis import Basis
from .coefficients import Coefficients, posterior_coefficients
from .corruption import DiagonalizableCorruption
from .operators import Operator
from .sampling import Step, StepHook, sample
from .validation import check_finite

__all__ = ["restore", "METHODS", "Restoration", "PiGDM", "DDNM", "DPS", "denoiser_variance", "kalman_update",
           "pigdm_x_hat", "ddnm_x_hat", "dps_state", "conjugate_gradient", "wiener", "check_measurement"]

#: Conjugate gradients' defaults: at most this many iterations per solve ...
CG_ITERATIONS = 50
#: ... and each row stops once its residual norm falls below this fraction of its right-hand side's.
CG_TOL = 1e-6


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, iterations: int = CG_ITERATIONS,
                       tol: float = CG_TOL) -> Tensor:
    """Solve ``M v = b`` for each row of ``b`` (B, ...) by conjugate gradients (Hestenes & Stiefel 1952).

    ``apply(v)`` computes ``M v`` row by row, M symmetric positive semi-definite; ``b`` in M's range.
    Runs exactly ``iterations`` iterations with no host synchronisation: a row whose residual norm
    is below ``tol * |b|`` is frozen (its step is zero) while the others go on. Exact after at most
    ``dim`` iterations in exact arithmetic.
    """
    def dot(a: Tensor, c: Tensor) -> Tensor:
        return (a * c).flatten(1).sum(1).view(-1, *[1] * (b.ndim - 1))

    v, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), dot(r, r)
    floor = tol**2 * rr
    for _ in range(iterations):
        active = rr > floor
        m_p = apply(p)
        p_mp = dot(p, m_p)
        step = torch.where(active & (p_mp > 0), rr / torch.where(p_mp > 0, p_mp, 1.0), 0.0)
        v, r = v + step * p, r - step * m_p
        rr_next = dot(r, r)
        beta = torch.where(active & (rr > 0), rr_next / torch.where(rr > 0, rr, 1.0), 0.0)
        p, rr = r + beta * p, torch.where(active, rr_next, rr)
    return v


def denoiser_variance(data_var: Tensor, c_t: Coefficients) -> Tensor:
    """``r_t^2 = (1 / Var_k + alpha_k^2 / sigma_k^2)^-1 = Var_k / (1 + Var_k SNR_k)`` per basis coordinate:
    the variance of ``u_x`` given ``u_t`` for Gaussian data of variance ``Var_k`` (data_var (*shape))."""
    var = data_var.to(device=c_t.log_alpha.device)
    return var / (1 + var * torch.exp(c_t.logsnr.to(var.dtype)))


def kalman_update(u_x: Tensor, r2: Tensor, y: Tensor, operator: Operator, noise_std: float, basis: Basis,
                  cg_iterations: int = CG_ITERATIONS, cg_tol: float = CG_TOL) -> Tensor:
    """``u_x + V^T R A^T (A R A^T + noise_std^2 I)^-1 (y - A x)``, ``x = V u_x``, ``R = V diag(r2) V^T``.

    The mean of ``x`` given ``y = A x + noise_std n`` when ``x ~ N(V u_x, R)``. Where ``A = V diag(h) V^T``
    in ``basis`` it is ``u_x + r2 h / (h^2 r2 + noise_std^2) (V^T y - h u_x)`` per coordinate (0 where the
    denominator is 0: an unobserved coordinate keeps ``u_x``); otherwise the inner solve is
    :func:`conjugate_gradient`. Computed in float64 for the closed form, in ``u_x``'s dtype (at least
    float32) for CG.

    Args:
        u_x: (B, *shape) the prior mean, basis coordinates.
        r2: per-coordinate prior variance, broadcastable to (B, *shape).
        y: (B, *y_shape) measurements.
    """
    h = operator.singular_values_in(basis)
    if h is not None:
        h, r2 = h.to(device=u_x.device, dtype=torch.float64), r2.to(torch.float64)
        denominator = h**2 * r2 + noise_std**2
        gain = torch.where(denominator > 0, r2 * h / torch.where(denominator > 0, denominator, 1.0), 0.0)
        u_y = basis.to_basis(y.to(torch.float64))
        return (u_x + gain * (u_y - h * u_x)).to(u_x.dtype)
    dtype = torch.promote_types(u_x.dtype, torch.float32)
    r2 = r2.to(dtype)

    def cov(x: Tensor) -> Tensor:  # R x
        return basis.from_basis(r2 * basis.to_basis(x))

    x = basis.from_basis(u_x.to(dtype))
    residual = y.to(dtype) - operator(x)
    v = conjugate_gradient(lambda w: operator(cov(operator.adjoint(w))) + noise_std**2 * w, residual,
                           cg_iterations, cg_tol)
    return (u_x + r2 * basis.to_basis(operator.adjoint(v))).to(u_x.dtype)


def pigdm_x_hat(u_x: Tensor, c_t: Coefficients, y: Tensor, operator: Operator, noise_std: float,
                corruption: DiagonalizableCorruption, cg_iterations: int = CG_ITERATIONS,
                cg_tol: float = CG_TOL) -> Tensor:
    """ΠGDM's conditional ``x_hat`` with the per-coordinate uncertainty ``r_t^2`` of :func:`denoiser_variance`
    (Song et al. 2023, eq. 7-8, whose isotropic ``r_t^2 = sigma_t^2 / (1 + sigma_t^2)`` is the case
    ``Var_k = 1`` under DDPM): :func:`kalman_update` of ``u_x`` (B, *shape) with ``R = V diag(r_t^2) V^T``.
    """
    r2 = denoiser_variance(_data_var(corruption, "pigdm"), c_t)
    return kalman_update(u_x, r2, y, operator, noise_std, corruption.basis, cg_iterations, cg_tol)


def ddnm_x_hat(u_x: Tensor, c_t: Coefficients, c_s: Coefficients, y: Tensor, operator: Operator,
               noise_std: float, basis: Basis) -> Tensor:
    """DDNM's ``x_hat - A^+ (A x_hat - y)`` (Wang et al. 2023, eq. 13), per basis coordinate scaled by DDNM+'s
    ``lambda_t`` (eq. 19) when ``noise_std > 0``: ``u_x - lambda_t V^T A^+ (A x_hat - y)`` with

        lambda_t = min(1, h sigma_{t->s} / (c_x noise_std))

    where ``c_x`` and ``sigma_{t->s}^2`` are the weight of ``x_hat`` in the ancestral step to ``s`` and its
    variance (:func:`~lincorrupt.coefficients.posterior_coefficients`), and ``h`` the operator's singular value
    of the coordinate where it is diagonal in ``basis`` (1 elsewhere, exact for a mask): the measurement's noise,
    amplified by ``A^+`` to ``noise_std / h``, carried into ``u_s`` never exceeds the noise that step adds.
    (DDNM+ also lowers the step's fresh noise by the same amount, and restarts ("time travel"); neither is
    done here.) With ``noise_std = 0``, ``lambda_t = 1`` and ``A x = y`` holds exactly for the returned ``x``.
    """
    x = basis.from_basis(u_x)
    correction = basis.to_basis(operator.pinv(operator(x) - y.to(x.dtype)))
    if noise_std == 0:
        return u_x - correction
    _, c_x, var = posterior_coefficients(c_s, c_t)
    h = operator.singular_values_in(basis)
    h = 1.0 if h is None else h.to(device=u_x.device)
    scale = (h * var.sqrt() / (c_x * noise_std)).clamp(max=1.0).nan_to_num(1.0)
    return u_x - scale.to(u_x.dtype) * correction


def dps_state(u_s: Tensor, u_t: Tensor, u_x: Tensor, y: Tensor, operator: Operator, zeta: float,
              basis: Basis) -> Tensor:
    """DPS's step (Chung et al. 2023, Algorithm 1, lines 7-8): ``u_s - zeta_i grad_{u_t} |y - A x_hat|^2``
    with ``zeta_i = zeta / |y - A x_hat|`` per image (the paper's normalisation by the residual's norm, not
    by ``sigma_y^2``; so ``zeta`` is dimensionless, 1.0 in the paper's FFHQ super-resolution and inpainting).

    Args:
        u_s: (B, *shape) the sampler's next state.
        u_t: (B, *shape) the state at t, with ``requires_grad``; ``u_x`` (B, *shape) has a graph to it.
    """
    with torch.enable_grad():
        residual = (y.to(u_x.dtype) - operator(basis.from_basis(u_x))).flatten(1)
        norm2 = residual.square().sum(1)
        (grad,) = torch.autograd.grad(norm2.sum(), u_t)
    zeta_i = zeta / norm2.detach().sqrt().clamp(min=torch.finfo(norm2.dtype).tiny)
    return u_s - zeta_i.view(-1, *[1] * (u_s.ndim - 1)) * grad.detach()


def wiener(y: Tensor, operator: Operator, mean: Tensor, data_var: Tensor, basis: Basis, noise_std: float = 0.0,
           cg_iterations: int = 200, cg_tol: float = CG_TOL) -> Tensor:
    """The linear MMSE (Wiener) restoration for data ``x ~ N(mean, V diag(data_var) V^T)``:
    ``mean + R A^T (A R A^T + noise_std^2 I)^-1 (y - A mean)`` (:func:`kalman_update` at ``r2 = data_var``).

    Args:
        y: (B, *y_shape) measurements.
        mean: (*shape) or (B, *shape) the data's mean, data space.
        data_var: (*shape) the data's variance per coordinate of ``basis`` (``corruption.data_var``).
    Returns:
        (B, *shape) restorations, data space.
    """
    u_mean = basis.to_basis(mean.to(y.dtype)).expand(y.shape[0], *operator.shape)
    return basis.from_basis(kalman_update(u_mean, data_var, y, operator, noise_std, basis, cg_iterations, cg_tol))


def _data_var(corruption: DiagonalizableCorruption, method: str) -> Tensor:
    if corruption.data_var is None:
        raise ValueError(f"method {method!r} takes the denoiser's uncertainty from the data's variance per basis "
                         f"coordinate, but {type(corruption).__name__}.data_var is None: call "
                         f"corruption.fit_data_statistics(x) with a few thousand training images first")
    return corruption.data_var


def check_measurement(corruption: DiagonalizableCorruption, y: Tensor, operator: Operator, noise_std: float) -> None:
    """``ValueError``/``TypeError`` unless ``operator`` is built for the corruption's image shape, ``y`` is a
    (B, *operator.y_shape) floating tensor (finite, while validation is on) and ``noise_std`` a finite number
    >= 0."""
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a lincorrupt.operators.Operator, got {type(operator).__name__}")
    if tuple(operator.shape) != tuple(corruption.shape):
        raise ValueError(f"{type(operator).__name__} was built for images of shape {operator.shape}, but "
                         f"{type(corruption).__name__} has shape {corruption.shape}")
    if not isinstance(y, Tensor) or y.ndim != len(operator.y_shape) + 1 or tuple(y.shape[1:]) != operator.y_shape:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must have shape (B, {', '.join(map(str, operator.y_shape))}), the measurements of "
                         f"{type(operator).__name__}, got {got}")
    if not y.is_floating_point():
        raise TypeError(f"y must be floating point, got dtype {y.dtype}")
    check_finite(y, "y")
    if not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std is the measurement noise's standard deviation, a finite number >= 0, "
                         f"got {noise_std!r}")


# ----------------------------------------------------------------------------- the methods as step hooks
class Restoration(StepHook):
    """A restoration method: a :class:`~lincorrupt.sampling.StepHook` built from the measurement.

    Args:
        corruption: the forward process of the prior (its basis; ``data_var`` for "pigdm").
        y: (B, *operator.y_shape) measurements.
        operator: the :class:`~lincorrupt.operators.Operator` A.
        noise_std: sigma_y, the standard deviation of the measurement noise (>= 0).
    """

    def __init__(self, corruption: DiagonalizableCorruption, y: Tensor, operator: Operator, noise_std: float):
        self.corruption, self.basis, self.y, self.operator = corruption, corruption.basis, y, operator
        self.noise_std = float(noise_std)


class PiGDM(Restoration):
    """ΠGDM with the per-coordinate uncertainty (:func:`pigdm_x_hat`); any sampler.

    Args:
        cg_iterations, cg_tol: conjugate gradients' iterations and relative tolerance where the
            operator is not diagonal in the corruption's basis (:func:`conjugate_gradient`).
    """

    def __init__(self, corruption, y, operator, noise_std, cg_iterations: int = CG_ITERATIONS,
                 cg_tol: float = CG_TOL):
        super().__init__(corruption, y, operator, noise_std)
        _data_var(corruption, "pigdm")
        if not isinstance(cg_iterations, int) or cg_iterations < 1:
            raise ValueError(f"cg_iterations must be a positive int, got {cg_iterations!r}")
        self.cg_iterations, self.cg_tol = cg_iterations, float(cg_tol)

    def x_hat(self, step: Step) -> Tensor:
        return pigdm_x_hat(step.u_x, step.c_t, self.y, self.operator, self.noise_std, self.corruption,
                           self.cg_iterations, self.cg_tol)


class DDNM(Restoration):
    """DDNM / DDNM+ (:func:`ddnm_x_hat`); any sampler (the scaling for noisy y reads the ancestral step's
    variance)."""

    def x_hat(self, step: Step) -> Tensor:
        return ddnm_x_hat(step.u_x, step.c_t, step.c_s, self.y, self.operator, self.noise_std, self.basis)


class DPS(Restoration):
    """DPS (:func:`dps_state`): a gradient step on each next state; rule samplers only ("ancestral", "ddim").

    Args:
        zeta: the step size ``zeta'`` of the paper, divided by the residual's norm at each step.
    """

    needs_grad = True

    def __init__(self, corruption, y, operator, noise_std, zeta: float = 1.0):
        super().__init__(corruption, y, operator, noise_std)
        if not isinstance(zeta, (int, float)) or not math.isfinite(zeta) or zeta < 0:
            raise ValueError(f"zeta must be a finite number >= 0, got {zeta!r}")
        self.zeta = float(zeta)

    def state(self, step: Step, u_s: Tensor) -> Tensor:
        return dps_state(u_s, step.u_t, step.u_x, self.y, self.operator, self.zeta, self.basis)


#: Restoration methods by name: ``lc.restore(..., method=name)``; each a :class:`Restoration` hook class.
METHODS: dict[str, type[Restoration]] = {"pigdm": PiGDM, "ddnm": DDNM, "dps": DPS}


def restore(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, y: Tensor,
            operator: Operator, noise_std: float = 0.0, method: str = "pigdm", steps: int = 100,
            sampler: str = "ancestral", prediction: str | None = None, generator: torch.Generator | None = None,
            progress: bool = False, **options) -> Tensor:
    """Restore images from measurements ``y = A x + noise_std * n``, one restoration per row of ``y``.

    Runs :func:`lincorrupt.sample` with the hook of ``method`` (:data:`METHODS`) from the corruption's prior:
    a draw from (an approximation of) the posterior ``p(x | y)`` under the model's prior.

    Args:
        model: ``model(z_t, t)`` trained on ``corruption`` (a :class:`~lincorrupt.DiffusionModel` or a network).
        corruption: its forward process; for "pigdm", ``corruption.fit_data_statistics(x)`` must have been called.
        y: (B, *operator.y_shape) measurements, in the data's scale ([-1, 1] for images).
        operator: the measurement operator A (:mod:`lincorrupt.operators`), built for ``corruption.shape``.
        noise_std: sigma_y, the standard deviation of the measurement noise in the same scale (0: exact
            measurements; for 8-bit images, quantisation alone is about ``2 / 255 / sqrt(12) = 0.0023``).
        method: "pigdm" (default), "ddnm" or "dps".
        steps: network evaluations.
        sampler: a key of :data:`lincorrupt.SAMPLERS`; "dps" needs a rule sampler ("ancestral", "ddim").
        prediction: what the model outputs; default the model's own ``prediction`` attribute, else "v".
        generator: random generator of the prior and the sampler's noise.
        progress: show a progress bar.
        **options: the method's options (``cg_iterations``, ``cg_tol`` for "pigdm"; ``zeta`` for "dps"), then
            :func:`lincorrupt.sample`'s (``grid``, ``eta``, ``clip`` ...).
    Returns:
        (B, *corruption.shape) restorations, data space, in ``y``'s dtype (at least float32).
    """
    if method not in METHODS:
        raise ValueError(f"unknown restoration method {method!r}; expected one of {sorted(METHODS)}")
    check_measurement(corruption, y, operator, noise_std)
    if prediction is None:
        prediction = getattr(model, "prediction", "v")
    names = set(inspect.signature(METHODS[method]).parameters)
    hook = METHODS[method](corruption, y, operator, noise_std, **{k: v for k, v in options.items() if k in names})
    sample_options = {k: v for k, v in options.items() if k not in names}
    return sample(model, corruption, y.shape[0], steps=steps, prediction=prediction, method=sampler,
                  generator=generator, device=y.device, dtype=torch.promote_types(y.dtype, torch.float32),
                  progress=progress, hook=hook, **sample_options)
