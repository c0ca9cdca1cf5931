"""Training losses: the denoising loss of any corruption and any prediction kind."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .corruption import DiagonalizableCorruption
from .predictions import Prediction, get_prediction
from .validation import check_labels, check_model_output, check_nonempty, validate_args

__all__ = ["diffusion_loss", "elbo_weighting", "soft_score_weighting", "snr_weighting"]

#: ``weighting(corruption, t, prediction) -> w``: per-coordinate weights, broadcastable to
#: (B, *shape) in basis coordinates, on the squared error of the prediction.
Weighting = Callable[[DiagonalizableCorruption, Tensor, Prediction], Tensor]


def elbo_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """Weights that make the loss the continuous-time diffusion ELBO term (VDM eq. 17).

    Per coordinate the ELBO integrand is ``-1/2 SNR'_i(t) (u_x - u_x_hat)_i^2``; an error
    ``e`` in the prediction is an error ``(d x / d out) e`` in x, so the weight on ``e^2`` is
    ``-1/2 SNR'(t) (d x / d out)^2 = -1/2 (d log SNR / dt) exp(log SNR + 2 log |d x / d out|)``
    (``-1/2 d log SNR / dt`` for eps-prediction). Use with ``reduction="sum"`` for the bound
    in nats (without the prior and reconstruction terms).
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c, d_log_snr_dt = corruption.coefficients(t), corruption.d_log_snr_dt(t)
    return -0.5 * d_log_snr_dt * torch.exp(c.logsnr + 2 * prediction.log_x_scale(c))


def soft_score_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """Soft Score Matching (Daras et al. 2022): the loss ``||C_t (x_hat - x)||^2``.

    ``C_t = V diag(alpha_t) V^T``, so per basis coordinate the weight on the squared x error is
    ``alpha_t^2``, and on the error of ``prediction`` ``alpha_t^2 (d x / d out)^2``. Returns a
    tensor broadcastable to (B, *shape).
    """
    c = corruption.coefficients(t)
    return torch.exp(2 * (c.log_alpha + prediction.log_x_scale(c)))


def snr_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """Soft Score Matching divided by the noise variance: ``||C_t (x_hat - x)||^2 / sigma_t^2``.

    Per basis coordinate the weight on the squared x error is ``SNR_t = alpha_t^2 / sigma_t^2``,
    which makes the loss the unweighted eps loss ``||eps - eps_hat||^2`` of the implied
    ``eps_hat = (u_t - alpha_t x_hat) / sigma_t`` (no division by alpha_t). Shapes as in
    :func:`soft_score_weighting`.
    """
    c = corruption.coefficients(t)
    return torch.exp(c.logsnr + 2 * prediction.log_x_scale(c))


_REDUCTIONS = {
    "mean": lambda per_coordinate: per_coordinate.mean(),
    "sum": lambda per_coordinate: per_coordinate.flatten(1).sum(1).mean(),
    "none": lambda per_coordinate: per_coordinate.flatten(1).mean(1),
}


def diffusion_loss(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption, x: Tensor,
                   prediction: str = "v", weighting: Weighting | None = None, t: Tensor | None = None,
                   noise: Tensor | None = None, generator: torch.Generator | None = None,
                   reduction: str = "mean", y: Tensor | None = None) -> Tensor:
    """Denoising loss ``E_{t, eps} sum_i w_i(t) (target_i - model_i)^2`` in basis coordinates.

    With ``prediction="eps"`` and no weighting this is the unweighted eps loss
    ``E ||eps - eps_hat(z_t, t)||^2`` of Ho et al. (2020) and of blurring diffusion (the basis is
    orthogonal, so the norm is the same in data space); the default is v (Salimans & Ho 2022).
    The target is ``eps``, ``x`` or ``v`` (:mod:`lincorrupt.predictions`).

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape; t is (B,) in [0, 1].
        corruption: the forward process.
        x: (B, *shape) clean data in [-1, 1].
        prediction: what the model outputs: "eps", "x" or "v".
        weighting: optional ``weighting(corruption, t, prediction) -> w`` (:func:`elbo_weighting`,
            :func:`soft_score_weighting`, :func:`snr_weighting`).
        t: (B,) times; drawn from U(0, 1) if None.
        noise: (B, *shape) standard normal noise; drawn if None.
        generator: random generator for t and noise.
        reduction: "mean" (over batch and coordinates), "sum" (over coordinates, mean over
            the batch) or "none" (per-example mean over coordinates, shape (B,)).
        y: (B,) class labels of a conditional model, called as ``model(z_t, t, y)``; -1 is the null
            label (for classifier-free guidance, replace a share of them by -1: the Trainer's
            ``label_dropout``). None: ``model(z_t, t)``.
    Returns:
        The loss: a scalar, or (B,) for ``reduction="none"``.
    """
    pred = get_prediction(prediction)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {sorted(_REDUCTIONS)}")
    corruption.check_data(x)
    check_nonempty(x, "x", "the loss (a mean over the batch)")
    if t is None:
        t = torch.rand(x.shape[0], generator=generator, device=x.device)
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
    if weighting is not None:
        per_coordinate = per_coordinate * weighting(corruption, t, pred).to(per_coordinate.dtype)
        if per_coordinate.shape != x.shape:
            raise ValueError(f"weighting returned a shape that broadcasts the loss to {tuple(per_coordinate.shape)};"
                             f" expected weights broadcastable to {tuple(x.shape)}")
    return _REDUCTIONS[reduction](per_coordinate)
