"""Classifier-free guidance (Ho & Salimans 2022) as a model ``(z_t, t) -> out`` that every sampler can use.

A conditional model is ``model(z_t, t, y)`` with ``y`` (B,) class indices, -1 the null label (the
unconditional output). Guidance at scale ``s`` samples with

    out = out(z_t, t, -1) + s (out(z_t, t, y) - out(z_t, t, -1)),

so s = 1 is the conditional model and s = 0 the unconditional one. For fixed ``(z_t, t)`` every
prediction kind is an affine function of the others with weights that sum to one
(:mod:`lincorrupt.predictions`), so mixing eps, x, v or residual outputs gives the same ``x_hat``: the
combination may be taken in whatever the model predicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..validation import NULL_LABEL

__all__ = ["guided"]


def guided(model: Callable[[Tensor, Tensor, Tensor], Tensor], labels: Tensor,
           guidance: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """``model(z_t, t, y)`` with ``labels`` (N,) and guidance scale ``guidance`` as a model ``(z_t, t) -> out``.

    For s not in {0, 1} both outputs come from one network call on a batch of 2N (the labels, then
    N null labels); s = 1 calls the model with ``labels`` alone and s = 0 with null labels alone.
    ``labels`` are checked by the caller (:func:`lincorrupt.validation.check_labels`).

    Shapes: z_t (N, *shape), t (N,); the output (N, *shape).
    """
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance):
        raise TypeError(f"guidance must be a finite real number (1: the conditional model), got {guidance!r}")
    null = torch.full_like(labels, NULL_LABEL)

    def out(z_t: Tensor, t: Tensor) -> Tensor:
        if z_t.shape[0] != labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for a batch of {z_t.shape[0]} images")
        y = labels.to(z_t.device)
        if guidance == 1:
            return model(z_t, t, y)
        if guidance == 0:
            return model(z_t, t, null.to(z_t.device))
        both = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([y, null.to(z_t.device)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    return out
