"""Training losses: the denoising loss of any corruption and any prediction kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .corruption import DiagonalizableCorruption
from .predictions import get_prediction, resolve_prediction
from .validation import check_labels, check_model_output, check_nonempty, validate_args
from .weightings import (  # noqa: F401
    TimeProposal,
    Weighting,
    elbo_weighting,
    get_weighting,
    snr_weighting,
    soft_score_weighting,
)

# the weightings live in lincorrupt.weightings; importing them here keeps ``lincorrupt.losses.elbo_weighting`` working
__all__ = ["diffusion_loss"]

_REDUCTIONS = {
    "mean": lambda per_coordinate: per_coordinate.mean(),
    "sum": lambda per_coordinate: per_coordinate.flatten(1).sum(1).mean(),
    "none": lambda per_coordinate: per_coordinate.flatten(1).mean(1),
}


def diffusion_loss(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, x: Tensor,
                   prediction: str | None = None, weighting: str | Weighting | None = None, t: Tensor | None = None,
                   noise: Tensor | None = None, generator: torch.Generator | None = None,
                   reduction: str = "mean", y: Tensor | None = None,
                   weighting_options: Mapping[str, float] | None = None,
                   proposal: TimeProposal | None = None) -> Tensor:
    """Denoising loss ``E_{t, eps} sum_i w_i(t) (target_i - model_i)^2`` in basis coordinates.

    With ``prediction="eps"`` and no weighting this is the unweighted eps loss
    ``E ||eps - eps_hat(z_t, t)||^2`` of Ho et al. (2020) and of blurring diffusion (the basis is
    orthogonal, so the norm is the same in data space); the default is v (Salimans & Ho 2022).
    The target is ``eps``, ``x`` or ``v`` (:mod:`lincorrupt.predictions`).

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape; t is (B,) in [0, 1].
        corruption: the forward process.
        x: (B, *shape) clean data in [-1, 1].
        prediction: what the model outputs: "eps", "x", "v" or "residual"; None (the default): the model's own
            kind where it has one (a :class:`~lincorrupt.DiffusionModel`'s ``.prediction``, which a different
            value contradicts: ``ValueError``), else "v".
        weighting: a name of :data:`lincorrupt.weightings.WEIGHTINGS` ("none", "elbo", "sigmoid", "min-snr",
            "soft-score", "isotropic"), or a callable ``weighting(corruption, t, prediction) -> w``
            (:func:`elbo_weighting`, :func:`soft_score_weighting`, :func:`snr_weighting`); None is "none".
        t: (B,) times; drawn from U(0, 1) (or from ``proposal``) if None.
        noise: (B, *shape) standard normal noise; drawn if None.
        generator: random generator for t and noise.
        reduction: "mean" (over batch and coordinates), "sum" (over coordinates, mean over
            the batch) or "none" (per-example mean over coordinates, shape (B,)).
        y: (B,) class labels of a conditional model, called as ``model(z_t, t, y)``; -1 is the null
            label (for classifier-free guidance, replace a share of them by -1: the Trainer's
            ``label_dropout``). None: ``model(z_t, t)``.
        weighting_options: keyword options of a weighting given by name (``{"b": -2.0}`` for "sigmoid",
            ``{"gamma": 5.0}`` for "min-snr").
        proposal: a :class:`~lincorrupt.weightings.TimeProposal` that ``t`` is drawn from (here, if ``t`` is
            None): each example's weights are divided by its density ``p(t)``, so the loss estimates the
            uniform-t loss with lower variance.
    Returns:
        The loss: a scalar, or (B,) for ``reduction="none"``.
    """
    pred = get_prediction(resolve_prediction(model, prediction))
    weighting = get_weighting(weighting, weighting_options)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {sorted(_REDUCTIONS)}")
    corruption.check_data(x)
    check_nonempty(x, "x", "the loss (a mean over the batch)")
    if t is None:
        t = torch.rand(x.shape[0], generator=generator, device=x.device)
        t = t if proposal is None else proposal.sample(t)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        corruption.check_like(noise, x, "noise")
    t = corruption.check_time(t, "t", x.shape[0], x.device)
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    basis = corruption.basis
    u_x, u_eps = basis.to_basis(x), basis.to_basis(noise)
    z_t = basis.from_basis(c.alpha * u_x + c.sigma * u_eps).to(x.dtype)  # the diffuse step, sharing u_x, u_eps
    if y is None:
        output = check_model_output(model(z_t, t), z_t)
    else:
        output = check_model_output(model(z_t, t, check_labels(y, x.shape[0], name="y").to(x.device)), z_t)
    target = pred.target(c, u_x, u_eps)
    per_coordinate = (basis.to_basis(output) - target.to(output.dtype)) ** 2
    if weighting is not None or proposal is not None:
        w = weighting(corruption, t, pred) if weighting is not None else 1.0
        if proposal is not None:  # (B, 1, ...): one density per example
            w = w / proposal.density(t).view(-1, *[1] * len(corruption.shape))
        per_coordinate = per_coordinate * w.to(per_coordinate.dtype)
        if per_coordinate.shape != x.shape:
            raise ValueError(f"weighting returned a shape that broadcasts the loss to {tuple(per_coordinate.shape)};"
                             f" expected weights broadcastable to {tuple(x.shape)}")
    return _REDUCTIONS[reduction](per_coordinate)
