"""Exponential moving average of the weights (Polyak averaging, decay 0.9999 in DDPM), with an optional warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "warmup_decay"]


def warmup_decay(step: int, decay: float, power: float) -> float:
    """The decay of update ``step`` (0-based) under a warm-up: ``min(decay, 1 - (1 + step)^-power)``.

    The warm-up of k-diffusion's ``EMAWarmup`` with ``inv_gamma = 1`` (after Karras et al. 2022,
    whose EMA length grows with training): early averages forget the initial weights quickly
    (update 0 copies the model; at power 2/3 the decay is 0.99 after 1,000 updates, 0.999 after
    31,000), so short runs sample from trained weights. ``power = 0`` turns the warm-up off (the
    constant ``decay``). k-diffusion suggests 2/3 for runs of up to ~100k steps, 3/4 for longer ones.
    """
    if power == 0:
        return decay
    return min(decay, 1.0 - (1.0 + step) ** -power)


class EMA(nn.Module):
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimiser step.

    Holds a frozen copy of the model (``ema.module``) in float32; buffers are copied as they are.

    Args:
        model: the network being trained (unwrapped, not the DDP wrapper).
        decay: EMA decay in [0, 1): the decay of every update, or its ceiling under a warm-up.
        warmup_power: the warm-up's power (:func:`warmup_decay`); 0: no warm-up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_power: float = 0.0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not 0.0 <= warmup_power <= 1.0:
            raise ValueError(f"EMA warm-up power must be in [0, 1], got {warmup_power}")
        self.decay, self.warmup_power = decay, warmup_power
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """EMA update number ``step`` (0-based) towards ``model``'s current weights, at the decay
        :func:`warmup_decay` gives (fused foreach lerp: one kernel per dtype)."""
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - warmup_decay(step, self.decay, self.warmup_power))
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
