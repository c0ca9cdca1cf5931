"""The variational bound on -log p(x) for any corruption, in nats and bits per dimension.

VDM's bound (Kingma et al. 2021, eq. 11-17) holds coordinate by coordinate in the basis:

    -log p(x) <= KL(q(u_1 | x) || p(u_1))                                   prior
               + E_t,eps [ w_t sum_i (u_x - u_x_hat)_i^2 ]                    diffusion
               + E_eps [ -log p(x | z_{t_min}) ]                             reconstruction

with the diffusion weight, per coordinate i,
    continuous time   -1/2 d/dt SNR_i(t),                 t ~ U(t_min, 1)      (VDM eq. 17)
    T steps           T/2 (SNR_i(s) - SNR_i(t)),          s = t - (1 - t_min)/T  (VDM eq. 13)

and VDM's decoder: each pixel is one of the 256 values ``k / 127.5 - 1`` with probabilities
``softmax_k(-(x_k - y)^2 / (2 s^2))``, ``y = V (u_{t_min} / alpha_{t_min})`` and ``s^2`` the
pixel's variance of ``V (sigma / alpha) eps``. Data must lie on that grid: lincorrupt's
``[-1, 1]`` scaling of 8-bit images. Times are drawn low-discrepancy (VDM appendix: one
uniform offset, all times of a batch equally spaced), which leaves the estimate unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .coefficients import T_EPS
from .corruption import DiagonalizableCorruption
from .predictions import get_prediction
from .validation import check_model_output, check_nonempty, is_validating, validate_args

__all__ = ["ELBO", "elbo", "bits_per_dim", "prior_term", "diffusion_term", "reconstruction_term",
           "low_discrepancy_times", "default_t_min", "NUM_PIXEL_VALUES"]

NUM_PIXEL_VALUES = 256


class ELBO(NamedTuple):
    """The three terms of the bound, each (B,) in nats; :attr:`total` is their sum."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor

    @property
    def total(self) -> Tensor:
        return self.prior + self.diffusion + self.reconstruction


def default_t_min(corruption: DiagonalizableCorruption) -> float:
    """0 if every coordinate has ``sigma_0 > 0``, else :data:`~lincorrupt.coefficients.T_EPS` (the decoder
    needs noise to be a density)."""
    c = corruption.coefficients(torch.zeros(1, dtype=torch.float64))
    return 0.0 if bool(torch.isfinite(c.log_sigma).all()) else T_EPS


def low_discrepancy_times(batch_size: int, num_times: int = 1, generator: torch.Generator | None = None,
                          device=None) -> Tensor:
    """(num_times, batch_size) points in [0, 1): all equally spaced, with one uniform offset
    (VDM's low-discrepancy sampler); each datum's ``num_times`` points are 1/num_times apart."""
    n = batch_size * num_times
    offset = torch.rand((), generator=generator, device=device, dtype=torch.float64)
    return torch.remainder(offset + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0).view(num_times,
                                                                                                       batch_size)


def prior_term(corruption: DiagonalizableCorruption, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``KL(q(u_1 | x) || p(u_1))`` in nats, (B,): the corruption's prior's :meth:`~lincorrupt.priors.Prior.kl`."""
    corruption.check_data(x)
    c_1 = corruption.coefficients(torch.ones(1, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32)))
    return corruption.prior.kl(c_1, corruption.basis.to_basis(x), generator=generator)


def diffusion_term(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, x: Tensor,
                   t: Tensor, noise: Tensor, prediction: str = "v", steps: int | None = None,
                   t_min: float = 0.0) -> Tensor:
    """One-sample estimate of the diffusion term, (B,) nats, at times ``t`` with noise ``noise``.

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape.
        corruption: the forward process.
        x: (B, *shape) data.
        t: (B,) times in (t_min, 1]; with ``steps`` = T, grid times ``t_min + (1 - t_min) i / T``.
        noise: (B, *shape) standard normal, data space.
        prediction: what the model outputs ("eps", "x" or "v").
        steps: None for continuous time (weight ``-1/2 SNR'``), or T for the T-step bound.
        t_min: where the diffusion stops and the decoder takes over.
    Returns:
        (B,) nats: ``(1 - t_min) w_t sum_i e_i^2`` (continuous) or ``T w_t sum_i e_i^2`` (T steps),
        ``e`` the prediction error and ``w`` its ELBO weight per coordinate.
    """
    pred = get_prediction(prediction)
    t = corruption.check_time(t, "t", x.shape[0], x.device)
    z_t, noise = corruption.diffuse(x, t, noise=noise)
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    basis = corruption.basis
    out = basis.to_basis(check_model_output(model(z_t, t.to(x.dtype)), z_t))
    error2 = (out - pred.target(c, basis.to_basis(x), basis.to_basis(noise))) ** 2
    log_x_scale2 = 2 * pred.log_x_scale(c)  # an error e in the output is an error (dx/dout) e in x
    if steps is None:  # -1/2 SNR' = -1/2 (d log SNR / dt) SNR
        with validate_args(False):
            minus_dlogsnr = (-0.5 * corruption.d_log_snr_dt(t)).clamp(min=0)
        log_weight = math.log(1 - t_min) + torch.log(minus_dlogsnr) + c.logsnr + log_x_scale2
    else:  # T/2 (SNR_s - SNR_t) = T/2 SNR_s (1 - exp(logsnr_t - logsnr_s))
        with validate_args(False):  # t checked, so t - dt clamped to 0 lies in [0, 1]
            c_s = corruption.coefficients((t - (1 - t_min) / steps).clamp(min=0))
        drop = (-torch.expm1(c.logsnr - c_s.logsnr)).clamp(min=0)
        log_weight = math.log(steps / 2) + c_s.logsnr + log_x_scale2 + torch.log(drop)
    # in log space: IHDM's high frequencies have SNR ratios beyond exp(709) times errors below exp(-709)
    return torch.exp(log_weight + torch.log(error2)).flatten(1).sum(1).to(x.dtype)


def _pixel_variance(corruption: DiagonalizableCorruption, var_u: Tensor, like: Tensor) -> Tensor:
    """Per-pixel variance of ``V n``, ``n ~ N(0, diag(var_u))``: ``sum_i V_ji^2 var_u[i]``.

    A scalar when ``var_u`` is the same for every coordinate (all shipped corruptions at
    ``t_min``); otherwise computed from the dense basis (one transform of the identity).
    """
    var_u = var_u.expand(1, *corruption.shape)
    if bool((var_u == var_u.flatten()[0]).all()):
        return var_u.flatten()[0]
    n = math.prod(corruption.shape)
    eye = torch.eye(n, dtype=like.dtype, device=like.device).view(n, *corruption.shape)
    vt_rows = corruption.basis.to_basis(eye)  # row j: V^T e_j, i.e. V[j, :]
    return (vt_rows**2 * var_u.to(like.dtype)).flatten(1).sum(1).view(corruption.shape)


def reconstruction_term(corruption: DiagonalizableCorruption, x: Tensor, noise: Tensor, t_min: float = 0.0) -> Tensor:
    """``-log p(x | z_{t_min})`` under VDM's discretised decoder (module docstring), (B,) nats.

    Args:
        x: (B, *shape) data on the 256-value grid ``k / 127.5 - 1``.
        noise: (B, *shape) standard normal, data space: ``z_{t_min} = V(alpha u_x + sigma V^T noise)``.
        t_min: time of the decoder.
    """
    corruption.check_data(x)
    x_wide = x.to(torch.promote_types(x.dtype, torch.float32))
    k = torch.round((x_wide + 1) * (NUM_PIXEL_VALUES - 1) / 2)
    # x holds k / 127.5 - 1 rounded to its dtype: off by at most half its spacing (eps / 2, relative) plus 1e-4
    grid = k * 2 / (NUM_PIXEL_VALUES - 1) - 1
    tolerance = 1e-4 + torch.finfo(x.dtype).eps / 2 * grid.abs()
    if is_validating() and (bool(((k < 0) | (k > NUM_PIXEL_VALUES - 1)).any()) or
                            not bool(((x_wide - grid).abs() <= tolerance).all())):
        raise ValueError("the likelihood needs 8-bit images scaled to [-1, 1] (values k / 127.5 - 1, k = 0..255)")
    t = torch.full((x.shape[0],), float(t_min), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    z, _ = corruption.diffuse(x, t, noise=noise)
    with validate_args(False):  # t checked by diffuse
        c = corruption.coefficients(t)
    basis = corruption.basis
    y = basis.from_basis(basis.to_basis(z) * torch.exp(-c.log_alpha))  # z / alpha, data space
    var = _pixel_variance(corruption, torch.exp(2 * (c.log_sigma - c.log_alpha))[:1], x)
    values = torch.arange(NUM_PIXEL_VALUES, dtype=x.dtype, device=x.device) * 2 / (NUM_PIXEL_VALUES - 1) - 1
    inv_var = 1 / torch.as_tensor(var, dtype=x.dtype, device=x.device)[..., None]
    chunk = max(1, 2**24 // (y[0].numel() * NUM_PIXEL_VALUES))  # logits of at most 16M entries at a time
    nll = []
    for y_b, k_b in zip(y.split(chunk), k.long().split(chunk)):
        logits = -0.5 * (y_b[..., None] - values) ** 2 * inv_var
        nll.append(-torch.log_softmax(logits, -1).gather(-1, k_b[..., None])[..., 0].flatten(1).sum(1))
    return torch.cat(nll)


@torch.no_grad()
def elbo(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, x: Tensor,
         prediction: str = "v", steps: int | None = None, num_times: int = 1, t_min: float | None = None,
         generator: torch.Generator | None = None) -> ELBO:
    """The variational bound on ``-log p(x)`` per datum, in nats (module docstring).

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape (eval mode).
        corruption: the forward process; its prior gives the prior term.
        x: (B, *shape) 8-bit images scaled to [-1, 1].
        prediction: what the model outputs: "eps", "x" or "v".
        steps: None for the continuous-time bound, or the number of steps T of the discrete one.
        num_times: diffusion-term time samples per datum (network evaluations: ``num_times`` per datum).
        t_min: start of the diffusion; default :func:`default_t_min`.
        generator: random generator for times and noise.
    Returns:
        :class:`ELBO` with ``prior``, ``diffusion``, ``reconstruction`` and ``total``, each (B,).
    """
    corruption.check_data(x)
    check_nonempty(x, "x", "the bound (per datum, and bits_per_dim)")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be None (continuous time) or a positive int, got {steps!r}")
    if not isinstance(num_times, int) or num_times < 1:
        raise ValueError(f"num_times must be a positive int, got {num_times!r}")
    t_min = default_t_min(corruption) if t_min is None else float(t_min)
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    positions = low_discrepancy_times(x.shape[0], num_times, generator, x.device)
    if steps is not None:  # grid index i in 1..T
        positions = (torch.floor(positions * steps) + 1) / steps
    times = t_min + (1 - t_min) * positions
    times = times.clamp(min=t_min + 1e-12 if steps is None else 0.0)
    diffusion = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for t in times:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        diffusion += diffusion_term(model, corruption, x, t, noise, prediction, steps, t_min) / num_times
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return ELBO(prior_term(corruption, x, generator).to(x.dtype), diffusion,
                reconstruction_term(corruption, x, noise, t_min).to(x.dtype))


def bits_per_dim(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, x: Tensor,
                 **options) -> Tensor:
    """The bound of :func:`elbo` in bits per dimension, (B,): ``total / (D ln 2)``, D = pixels x channels.

    Options are those of :func:`elbo` (``prediction``, ``steps``, ``num_times``, ``t_min``, ``generator``).
    """
    return elbo(model, corruption, x, **options).total / (math.prod(corruption.shape) * math.log(2))
