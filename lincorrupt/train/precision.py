"""The precision of a training step: autocast of the network only (the corruption stays float32) and TF32."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["PRECISIONS", "allow_tf32", "autocast_dtype", "Autocast", "TF32"]

# precision -> autocast dtype on CUDA (None: float32). CPU always trains in float32.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def allow_tf32(enabled: bool = True):
    """Within the block, CUDA float32 matmuls and cuDNN convolutions may (or may not) use TF32;
    the previous settings are restored after. No effect on CPU computations."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto", "fp32", "bf16", "fp16") on ``device``."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected 'auto' or one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision] if device.type == "cuda" else None


class Autocast(nn.Module):
    """Runs only the network under autocast and returns float32, so the corruption stays exact."""

    def __init__(self, net: nn.Module, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.net, self.dtype, self.channels_last = net, dtype, channels_last

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        """``net(z_t, t)``, or ``net(z_t, t, y)`` for a conditional network."""
        if self.channels_last:
            z_t = z_t.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.net(z_t, t, *y)
        with torch.autocast(z_t.device.type, dtype=self.dtype):
            return self.net(z_t, t, *y).float()


class TF32(nn.Module):
    """Runs ``net``'s forward with TF32 allowed (CUDA fp32 runs); the corruption around it stays fp32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        with allow_tf32(True):
            return self.net(z_t, t, *y)
