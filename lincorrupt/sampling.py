"""Samplers: free functions of (denoiser, corruption, u_1, times) with one shared signature.

:func:`sample` is the entry point: it draws ``u_1`` from the corruption's prior, builds the
time grid and a :class:`Denoiser` from the model, runs the chosen sampler in basis
coordinates and returns images in data space. Each sampler runs from ``times[0]`` to
``times[-1] = 0``, evaluates the model once per interval (``steps`` network evaluations)
and returns the last denoised estimate ``x_hat``: the last step adds no noise.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .corruption import Coefficients, DiagonalizableCorruption, posterior_coefficients
from .losses import check_model_output
from .predictions import get_prediction
from .samplers_fast import dpmpp_2m, dpmpp_3m, logsnr_grid, info_grid, ode
from .validation import is_validating

__all__ = ["sample", "Denoiser", "StepInfo", "clip_x_hat", "dynamic_threshold", "ddim_coefficients", "ancestral", "ddim", "dpmpp_2m", "dpmpp_3m", "ode", "uniform_grid", "logsnr_grid",
           "info_grid", "SAMPLERS", "GRIDS"]


class StepInfo(NamedTuple):
    """What a sampler's ``callback`` receives after each network evaluation, all in data space.

    Attributes:
        step: index of the evaluation, 0 to ``steps - 1``.
        t: (B,) the time the model was evaluated at.
        z_t: (B, *shape) the model's input.
        x_hat: (B, *shape) the denoised estimate, after ``clip`` or ``dynamic_threshold``.
    """

    step: int
    t: Tensor
    z_t: Tensor
    x_hat: Tensor


def clip_x_hat(x_hat: Tensor) -> Tensor:
    """``x_hat`` clamped to the data range [-1, 1] (Ho et al. 2020's clipped x_0 prediction), (B, *shape)."""
    return x_hat.clamp(-1.0, 1.0)


def dynamic_threshold(x_hat: Tensor, percentile: float = 0.995, max_value: float | None = None) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, sec. 2.3), per sample of ``x_hat`` (B, *shape).

    ``s = max(quantile_p(|x_hat|), 1)`` over each sample's values, capped at ``max_value`` if
    given (diffusers' ``sample_max_value``), then ``x_hat = clamp(x_hat, -s, s) / s``: a sample
    within [-1, 1] is unchanged, one with outliers is clamped and scaled back into [-1, 1].
    The quantile is computed in float32 or wider.
    """
    flat = x_hat.flatten(1)
    s = torch.quantile(flat.abs().to(torch.promote_types(flat.dtype, torch.float32)), percentile, dim=1)
    s = s.clamp(min=1.0, max=max_value).to(x_hat.dtype).view(-1, *[1] * (x_hat.ndim - 1))
    return torch.maximum(torch.minimum(x_hat, s), -s) / s


class Denoiser:
    """Wraps ``model(z_t, t)`` into ``(u_t, t, c) -> u_x_hat`` (and ``u_eps_hat``) in basis coordinates.

    :meth:`x_hat` gives the data prediction alone, which is all that most samplers use; calling
    the denoiser gives ``(u_x_hat, u_eps_hat)`` for samplers that need the noise prediction too
    (DDIM). Neither converts to a form it does not return. Every sampler evaluates the model
    only through a denoiser, so its options act on all samplers alike:

    ``x_transform`` maps the data-space ``x_hat`` (B, *shape) to the one the sampler uses
    (:func:`clip_x_hat`, :func:`dynamic_threshold`); the noise prediction is then the one
    implied by it, ``u_eps_hat = (u_t - alpha_t u_x_hat) / sigma_t``. ``callback(StepInfo)`` is
    called once per network evaluation.

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape.
        corruption: gives the basis.
        prediction: what the model outputs: "eps", "x" or "v".
        x_transform: optional data-space map of ``x_hat``, applied after each evaluation.
        callback: optional ``callback(StepInfo)``, called after each evaluation.
    """

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption,
                 prediction: str = "eps", x_transform: Callable[[Tensor], Tensor] | None = None,
                 callback: Callable[[StepInfo], None] | None = None):
        self.model, self.corruption, self.prediction = model, corruption, get_prediction(prediction)
        self.x_transform, self.callback, self.evaluations = x_transform, callback, 0

    def _evaluate(self, u_t: Tensor, t: Tensor, c: Coefficients) -> tuple[Tensor, Tensor, bool]:
        """``(model output, u_x_hat, transformed)`` at ``u_t`` (B, *shape), time ``t`` (1,), in basis
        coordinates; applies ``x_transform`` and calls ``callback``."""
        basis = self.corruption.basis
        z_t = basis.from_basis(u_t)
        t_batch = t.expand(u_t.shape[0]).to(u_t.dtype)
        out = basis.to_basis(check_model_output(self.model(z_t, t_batch), z_t))
        u_x = self.prediction.to_x(c, u_t, out)
        x_hat = None
        if self.x_transform is not None:
            x_hat = self.x_transform(basis.from_basis(u_x))
            u_x = basis.to_basis(x_hat)
        if self.callback is not None:
            self.callback(StepInfo(self.evaluations, t_batch, z_t, basis.from_basis(u_x) if x_hat is None else x_hat))
        self.evaluations += 1
        return out, u_x, x_hat is not None

    def x_hat(self, u_t: Tensor, t: Tensor, c: Coefficients) -> Tensor:
        """``u_x_hat`` at ``u_t`` (B, *shape), time ``t`` (1,) with coefficients ``c``."""
        return self._evaluate(u_t, t, c)[1]

    def __call__(self, u_t: Tensor, t: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        """``(u_x_hat, u_eps_hat)`` at ``u_t`` (B, *shape), time ``t`` (1,) with coefficients ``c``."""
        out, u_x, transformed = self._evaluate(u_t, t, c)
        if transformed:
            return u_x, get_prediction("x").to_eps(c, u_t, u_x)  # the eps that the new x_hat implies
        return u_x, self.prediction.to_eps(c, u_t, out)


def _intervals(corruption, times: Tensor, progress: bool):
    """Yield ``(t, s, c_t, c_s)`` for consecutive times; coefficients computed once per time."""
    c_next = Coefficients(*corruption._log_alpha_sigma(times[:1]))
    for k in tqdm(range(len(times) - 1), disable=not progress, desc="sampling"):
        c_t, c_next = c_next, Coefficients(*corruption._log_alpha_sigma(times[k + 1:k + 2]))
        yield times[k:k + 1], times[k + 1:k + 2], c_t, c_next


def ancestral(denoise: Denoiser, corruption: DiagonalizableCorruption, u: Tensor, times: Tensor,
              generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Ancestral sampling from ``p(u_s | u_t) = q(u_s | u_t, x = x_hat)`` per coordinate
    (Ho et al. 2020, Algorithm 2; Hoogeboom & Salimans 2023, sec. 3.3)."""
    for k, (t, s, c_t, c_s) in enumerate(_intervals(corruption, times, progress)):
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
    for k, (t, s, c_t, c_s) in enumerate(_intervals(corruption, times, progress)):
        u_x, u_eps = denoise(u, t, c_t)
        if k == len(times) - 2:
            return u_x
        c_eps, std = ddim_coefficients(c_s, c_t, eta)
        u = c_s.alpha * u_x + c_eps * u_eps
        if eta > 0:
            u = u + std * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    return u


def uniform_grid(corruption: DiagonalizableCorruption, steps: int, device=None) -> Tensor:
    """``steps + 1`` times equally spaced from 1 to 0, float64."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)


#: name -> sampler; every sampler has the signature of :func:`ancestral` plus its own options.
#: "dpm++2m", "dpm++3m" and "ode" are the deterministic few-step samplers of :mod:`lincorrupt.samplers_fast`.
SAMPLERS: dict[str, Callable[..., Tensor]] = {"ancestral": ancestral, "ddim": ddim, "dpm++2m": dpmpp_2m,
                                              "dpm++3m": dpmpp_3m, "ode": ode}
#: name -> ``grid(corruption, steps, device) -> times``, decreasing from 1 to 0: "uniform" in t,
#: "logsnr" equally spaced in the mean log-SNR (:func:`~lincorrupt.samplers_fast.logsnr_grid`),
#: "info" in the largest per-coordinate information change (:func:`~lincorrupt.samplers_fast.info_grid`).
GRIDS: dict[str, Callable[..., Tensor]] = {"uniform": uniform_grid, "logsnr": logsnr_grid,
                                           "info": info_grid}


def _check_times(times: Tensor) -> Tensor:
    """A grid for :func:`sample`: strictly decreasing from exactly 1, where the prior draws
    ``u_1``, to exactly 0 (values checked while validation is on)."""
    if not isinstance(times, Tensor) or times.ndim != 1 or times.numel() < 2 or not times.is_floating_point():
        raise ValueError("a time grid must be a 1-D floating tensor of at least 2 decreasing times from 1 to 0")
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


@torch.no_grad()
def sample(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, num_samples: int,
           steps: int = 1000, prediction: str = "eps", method: str = "ancestral", grid: str | Tensor = "uniform",
           generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32,
           progress: bool = False, callback: Callable[[StepInfo], None] | None = None, clip: bool = False,
           threshold: float | None = None, threshold_max: float | None = None, **options) -> Tensor:
    """Draw ``num_samples`` images by running ``method`` over a time grid from 1 to 0.

    The result is the last denoised estimate ``x_hat``, which nothing bounds: a model's
    samples can leave the data range [-1, 1]. ``clip`` or ``threshold`` bound every ``x_hat``
    the sampler uses, and so the result, to [-1, 1].

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape (put it in eval mode yourself).
        corruption: the forward process; its ``prior`` gives ``u_1``.
        num_samples: N.
        steps: network evaluations = number of grid intervals (ignored if ``grid`` is a tensor).
        prediction: what the model outputs: "eps", "x" or "v".
        method: a key of :data:`SAMPLERS`: "ancestral", "ddim" (option ``eta``), "dpm++2m",
            "dpm++3m" or "ode".
        grid: a key of :data:`GRIDS` ("uniform" in t, "logsnr" in log-SNR, "info" in
            per-coordinate information), or a decreasing tensor of times from 1 to 0.
        generator: random generator for the prior and the sampler's noise.
        device, dtype: where and in which precision to sample; device defaults to the
            corruption's.
        progress: show a tqdm progress bar.
        callback: ``callback(info)`` after each of the ``steps`` network evaluations, with a
            :class:`StepInfo` ``(step, t, z_t, x_hat)`` in data space (progress bars, videos of
            the reverse process, debugging).
        clip: clamp each ``x_hat`` to [-1, 1] (:func:`clip_x_hat`) before the sampler uses it.
        threshold: dynamic thresholding of each ``x_hat`` at this percentile of ``|x_hat|``,
            e.g. 0.995 (:func:`dynamic_threshold`, Saharia et al. 2022); not with ``clip``.
        threshold_max: the cap on dynamic thresholding's scale ``s`` (diffusers'
            ``sample_max_value``); default none.
        **options: sampler options, e.g. ``eta`` for "ddim".
    Returns:
        (N, *corruption.shape) samples in data space.

    Choosing: with an exact denoiser (benchmarks/bench_samplers.py, Gaussian data fitted to
    CIFAR-10 patches) ``method="dpm++3m"`` is the most accurate per network evaluation, on
    ``grid="logsnr"`` for DDPM and blurring diffusion and on ``grid="info"`` for IHDM: it matches
    the error of 1000-step ancestral sampling on the uniform grid with 15 (DDPM), 22 (blurring)
    and 28 (IHDM) evaluations. The defaults (ancestral, uniform) are the papers' samplers and
    keep results comparable with them.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SAMPLERS)}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if device is None:
        device = next((b.device for b in corruption.buffers()), torch.device("cpu"))
    if isinstance(grid, Tensor):
        times = grid
    elif grid in GRIDS:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        times = GRIDS[grid](corruption, steps, device)
    else:
        raise ValueError(f"unknown grid {grid!r}; expected one of {sorted(GRIDS)} or a tensor of times")
    times = _check_times(times).to(device=device, dtype=torch.promote_types(dtype, torch.float32))
    denoise = Denoiser(model, corruption, prediction, _x_transform(clip, threshold, threshold_max), callback)
    u = corruption.prior.sample(corruption, num_samples, generator=generator, device=device, dtype=dtype)
    u_x = SAMPLERS[method](denoise, corruption, u, times, generator=generator, progress=progress, **options)
    x = corruption.basis.from_basis(u_x.to(dtype))
    if is_validating() and not bool(torch.isfinite(x).all()):
        hint = _NON_FINITE_HINTS.get(denoise.prediction.name, _NON_FINITE_HINT)
        raise FloatingPointError(f"sampling produced non-finite values. {hint}")
    return x


#: Why a sample can come out non-finite: in general, and for a prediction kind with its own cause.
_NON_FINITE_HINT = "The model returned non-finite values, or a sampler step overflowed in this dtype"
_NON_FINITE_HINTS = {
    "eps": "With prediction='eps', x_hat = (z_t - sigma_t eps_hat) / alpha_t overflows where alpha_t ~ 0 "
           "(e.g. IHDM at strong blur): use prediction='x' or 'v' for such corruptions",
}


def _x_transform(clip: bool, threshold: float | None, threshold_max: float | None) -> Callable[[Tensor], Tensor] | None:
    """The data-space map of ``x_hat`` that :func:`sample`'s ``clip`` / ``threshold`` options ask for, or None."""
    if not isinstance(clip, bool):
        raise TypeError(f"clip must be a bool, got {type(clip).__name__}")
    if threshold is None:
        if threshold_max is not None:
            raise ValueError("threshold_max caps dynamic thresholding; it needs threshold=<percentile>, e.g. 0.995")
        return clip_x_hat if clip else None
    if clip:
        raise ValueError("clip=True and threshold= both bound x_hat; choose one")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a percentile of |x_hat| in (0, 1], e.g. 0.995; got {threshold}")
    if threshold_max is not None and not threshold_max >= 1:
        raise ValueError(f"threshold_max must be at least 1 (the scale s is never below 1), got {threshold_max}")
    return functools.partial(dynamic_threshold, percentile=threshold, max_value=threshold_max)
