"""The model as the samplers see it: ``(u_t, t, c) -> u_x_hat`` (and ``u_eps_hat``) in basis coordinates,
with the options that act on every sampler alike: a bound on ``x_hat`` (:func:`clip_x_hat`,
:func:`dynamic_threshold`) and a per-evaluation ``callback`` (:class:`StepInfo`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..coefficients import Coefficients
from ..corruption import DiagonalizableCorruption
from ..predictions import get_prediction
from ..validation import check_model_output

__all__ = ["Denoiser", "StepInfo", "clip_x_hat", "dynamic_threshold"]


class StepInfo(NamedTuple):
    """What a sampler's ``callback`` receives after each network evaluation, all in data space.

    Attributes:
        step: index of the evaluation by this denoiser, 0 to ``steps - 1`` in :func:`~lincorrupt.sample`.
        t: (B,) the time the model was evaluated at.
        z_t: (B, *shape) the model's input.
        x_hat: (B, *shape) the denoised estimate the sampler uses (bounded if ``clip`` or
            ``threshold`` is set).
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
                 prediction: str = "v", x_transform: Callable[[Tensor], Tensor] | None = None,
                 callback: Callable[[StepInfo], None] | None = None):
        self.model, self.corruption, self.prediction = model, corruption, get_prediction(prediction)
        self.x_transform, self.callback, self.evaluations = x_transform, callback, 0

    def _evaluate(self, u_t: Tensor, t: Tensor, c: Coefficients,
                  replace: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, bool]:
        """``(model output, u_x_hat, changed)`` at ``u_t`` (B, *shape), time ``t`` (1,), in basis
        coordinates; applies ``x_transform``, then ``replace`` (basis coordinates), then calls ``callback``
        with the ``x_hat`` that results. ``changed``: whether ``u_x_hat`` differs from the model's own."""
        basis = self.corruption.basis
        z_t = basis.from_basis(u_t)
        t_batch = t.expand(u_t.shape[0]).to(u_t.dtype)
        out = basis.to_basis(check_model_output(self.model(z_t, t_batch), z_t))
        u_x = self.prediction.to_x(c, u_t, out)
        x_hat = None
        if self.x_transform is not None:
            x_hat = self.x_transform(basis.from_basis(u_x))
            u_x = basis.to_basis(x_hat)
        if replace is not None:
            replaced = replace(u_x)
            if replaced is not u_x:
                u_x, x_hat = replaced, None
        if self.callback is not None:
            self.callback(StepInfo(self.evaluations, t_batch, z_t, basis.from_basis(u_x) if x_hat is None else x_hat))
        self.evaluations += 1
        return out, u_x, self.x_transform is not None or replace is not None

    def x_hat(self, u_t: Tensor, t: Tensor, c: Coefficients,
              replace: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``u_x_hat`` at ``u_t`` (B, *shape), time ``t`` (1,) with coefficients ``c``; ``replace`` maps
        the (bounded) ``u_x_hat`` to the one returned (a sampler's :class:`~lincorrupt.sampling.StepHook`)."""
        return self._evaluate(u_t, t, c, replace)[1]

    def __call__(self, u_t: Tensor, t: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        """``(u_x_hat, u_eps_hat)`` at ``u_t`` (B, *shape), time ``t`` (1,) with coefficients ``c``."""
        out, u_x, transformed = self._evaluate(u_t, t, c)
        if transformed:
            return u_x, get_prediction("x").to_eps(c, u_t, u_x)  # the eps that the new x_hat implies
        return u_x, self.prediction.to_eps(c, u_t, out)
