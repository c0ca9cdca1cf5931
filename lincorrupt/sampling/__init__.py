"""Sampling: :func:`sample` runs a sampler of :data:`SAMPLERS` over a time grid of :data:`GRIDS`.

:func:`sample` draws ``u_1`` from the corruption's prior, builds the time grid and a
:class:`Denoiser` from the model, runs the chosen sampler in basis coordinates and returns
images in data space. The package holds the denoiser (:mod:`lincorrupt.sampling.denoiser`),
the samplers (:mod:`lincorrupt.sampling.samplers`) and the time grids
(:mod:`lincorrupt.sampling.grids`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ..corruption import DiagonalizableCorruption
from ..validation import check_labels, is_validating
from .denoiser import Denoiser, StepInfo, clip_x_hat, dynamic_threshold
from .graphs import CUDAGraphModel
from .grids import GRIDS, data_grid, info_grid, logsnr_grid, mean_log_snr, uniform_grid
from .guidance import guided
from .samplers import (
    SAMPLERS,
    Grid,
    MultistepSampler,
    Rule,
    RuleSampler,
    Sampler,
    Step,
    StepHook,
    ancestral,
    ddim,
    dpmpp_2m,
    dpmpp_2s,
    dpmpp_3m,
    momentum,
    multistep_sampler,
    naive,
    rule_sampler,
)

__all__ = ["sample", "CUDAGraphModel", "Denoiser", "StepInfo", "Step", "StepHook", "Grid", "Rule", "Sampler",
           "RuleSampler", "MultistepSampler", "rule_sampler", "multistep_sampler", "clip_x_hat", "dynamic_threshold",
           "ancestral", "ddim", "dpmpp_2m", "dpmpp_2s", "dpmpp_3m", "momentum", "naive", "uniform_grid",
           "logsnr_grid", "info_grid", "data_grid", "mean_log_snr", "guided", "SAMPLERS", "GRIDS"]

def _sampler(method: str) -> Sampler:
    """The sampler called ``method``."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[method]


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
           steps: int = 1000, prediction: str = "v", method: str = "ancestral", grid: str | Tensor = "uniform",
           generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32,
           progress: bool = False, callback: Callable[[StepInfo], None] | None = None, clip: bool = False,
           threshold: float | None = None, threshold_max: float | None = None, labels=None, guidance: float = 1.0,
           hook: StepHook | None = None, **options) -> Tensor:
    """Draw ``num_samples`` images by running ``method`` over a time grid from 1 to 0.

    The result is the last denoised estimate ``x_hat``, which nothing bounds: a model's
    samples can leave the data range [-1, 1]. ``clip`` or ``threshold`` bound every ``x_hat``
    the sampler uses, and so the result, to [-1, 1].

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape (put it in eval mode yourself), or a conditional
            ``model(z_t, t, y)`` with ``labels``.
        corruption: the forward process; its ``prior`` gives ``u_1``.
        num_samples: N, drawn in one batch: the N images and the sampler's state are held at once (memory grows
            with N and the network's activations), so draw many in calls of a few hundred with one
            ``generator``, or through :func:`lincorrupt.metrics.sample_features` (its ``batch_size``).
        steps: network evaluations = number of grid intervals (ignored if ``grid`` is a tensor).
        prediction: what the model outputs: "eps", "x" or "v".
        method: a key of :data:`SAMPLERS`: "ancestral", "ddim" (option ``eta``), "dpm++2m",
            "dpm++2s", "dpm++3m", "momentum" or "naive".
        grid: a key of :data:`GRIDS` ("uniform" in t, "logsnr" in log-SNR, "info" in
            per-coordinate information, "data" in the information of the data's own variance per
            coordinate, after ``corruption.fit_data_statistics(x)``), or a decreasing tensor of
            times from 1 to 0.
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
        labels: for a conditional model ``model(z_t, t, y)``: the class of each sample, (N,) integers or one int
            for all, -1 for unconditional samples (checked against the model's ``num_classes`` if it has one).
        guidance: classifier-free guidance scale s (:func:`~lincorrupt.sampling.guidance.guided`): the model's
            output becomes ``out(-1) + s (out(y) - out(-1))``, in one network call of 2N images; 1 (the
            default) is the conditional model alone, 0 the unconditional one.
        hook: a :class:`~lincorrupt.sampling.StepHook` that replaces ``x_hat`` (any sampler) or the state (rule
            samplers) at each step, e.g. for restoration.
        **options: sampler options, e.g. ``eta`` for "ddim".
    Returns:
        (N, *corruption.shape) samples in data space.

    The defaults (ancestral, uniform) are the papers' samplers and keep results comparable with
    them; for fewer network evaluations see the how-to guide on choosing a sampler and the
    Benchmarks page, which measures every sampler and grid.
    """
    sampler = _sampler(method)
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
    if labels is not None:
        model = guided(model, check_labels(labels, num_samples, getattr(model, "num_classes", None)).to(device),
                       guidance)
    elif guidance != 1:
        raise ValueError(f"guidance={guidance} needs labels: classifier-free guidance mixes the outputs for the "
                         f"labels and for the null label -1")
    denoise = Denoiser(model, corruption, prediction, _x_transform(clip, threshold, threshold_max), callback)
    c_1 = corruption.coefficients(torch.ones(1, device=device, dtype=torch.promote_types(dtype, torch.float32)))
    u = corruption.prior.sample(c_1, corruption.shape, num_samples, generator=generator, device=device, dtype=dtype)
    u_x = sampler(denoise, corruption, u, times, generator=generator, progress=progress, hook=hook, **options)
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

