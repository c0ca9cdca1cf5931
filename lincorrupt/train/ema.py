"""Exponential moving average of the weights (Polyak averaging, decay 0.9999 in DDPM)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimiser step.

    Holds a frozen copy of the model (``ema.module``) in float32; buffers are copied as they are.

    Args:
        model: the network being trained (unwrapped, not the DDP wrapper).
        decay: EMA decay in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (fused foreach lerp: one kernel per dtype)."""
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
