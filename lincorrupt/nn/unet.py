"""The DDPM UNet (Ho et al. 2020, ``diffusion_tf/models/unet.py``), time-conditioned on t in [0, 1]
and, with ``num_classes``, class-conditioned.

Defaults are the CIFAR-10 model of the paper (35.7M parameters): channels 128, multipliers
1-2-2-2, two residual blocks per level, self-attention at 16x16, dropout 0.1. Every size is a
constructor argument, so tests and the demo build tiny ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from lincorrupt.config import Configurable
from lincorrupt.validation import check_labels

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of Vaswani et al. as used by DDPM.

    Args:
        t: (B,) float times (already scaled, e.g. to [0, 1000]).
        dim: embedding size (even).

    Returns:
        (B, dim) embedding, ``[sin(t w), cos(t w)]`` with w log-spaced in [1/max_period, 1].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch (DDPM's ``init_scale=0``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` in its input's dtype and memory layout, also under autocast.

    CUDA autocast runs ``group_norm`` in float32: each bf16/fp16 activation would be copied to
    float32 before the norm (and the gradient back after it), and the next convolution would copy
    the float32 output to bf16 again. Here only the (C,) weight and bias are cast; the kernel still
    accumulates the mean and variance in float32. Same parameters and state dict as ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x``, copied only when its last dimension is strided (what the fused attention kernels need)."""
    return x if x.stride(-1) == 1 else x.contiguous()


class ResBlock(nn.Module):
    """GroupNorm-swish-conv, plus the time embedding, GroupNorm-swish-dropout-conv, skip."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, c_out)
        self.norm2 = GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions (single-head in DDPM), residual.

    q, k and v are (B, heads, HW, C / heads) views with a unit last stride, the layout for which
    ``scaled_dot_product_attention`` takes its fused kernels (flash / memory-efficient on CUDA,
    flash on CPU) instead of the unfused math path: on a channels_last input they are views of the
    qkv convolution's output (no copy), and the attention's output viewed back is channels_last;
    on a contiguous (NCHW) input each is copied once.
    """

    def __init__(self, channels: int, groups: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttnBlock: heads={heads} must divide channels={channels}")
        self.heads = heads
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        qkv = rearrange(self.qkv(self.norm(x)), "b (three heads c) h w -> three b heads (h w) c", three=3,
                        heads=self.heads)
        q, k, v = (last_dim_contiguous(y) for y in qkv.unbind(0))  # each (B, heads, HW, C / heads)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C / heads)) v
        return x + self.proj(rearrange(h, "b heads (h w) c -> b (heads c) h w", h=H, w=W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(Configurable):
    """DDPM UNet: ``eps_hat = UNet(...)(z_t, t)``.

    Args:
        image_size: H = W of the inputs (must be divisible by ``2 ** (len(ch_mult) - 1)``).
        in_channels: C of z_t.
        out_channels: C of the output (defaults to ``in_channels``).
        ch: base width (128 in DDPM).
        ch_mult: width multiplier per resolution level (1, 2, 2, 2 for 32x32 in DDPM).
        num_res_blocks: residual blocks per level (2 in DDPM).
        attn_resolutions: resolutions with self-attention (16 in DDPM).
        dropout: dropout inside residual blocks (0.1 for CIFAR-10 in DDPM).
        groups: GroupNorm groups (32 in DDPM; must divide every width).
        time_scale: t in [0, 1] is multiplied by this before the sinusoidal embedding, so the
            embedding sees DDPM's integer range [0, 1000].
        num_classes: K for a class-conditional network ``UNet(...)(z_t, t, y)``: a learned embedding
            of y in -1 .. K-1 (K + 1 rows; -1 is the null label of classifier-free guidance) is
            added to the time embedding (as in guided-diffusion). None: unconditional, ``(z_t, t)``.
        checkpoint_activations: recompute each block's activations in the backward pass instead
            of storing them (``torch.utils.checkpoint``, non-reentrant): less memory for about
            one more forward pass per step. Outputs and gradients are unchanged (dropout masks
            included: the RNG state is replayed). Only when gradients are enabled; also settable
            later as the attribute of the same name. Not part of the architecture.

    The arguments are recorded in ``self.config``, so ``UNet(**unet.config)`` rebuilds it.

    Shapes:
        z_t: (B, in_channels, image_size, image_size); t: (B,) float in [0, 1] (or a scalar);
        y: (B,) integer labels (conditional networks only);
        output: (B, out_channels, image_size, image_size).
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        groups: int = 32,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        ch_mult = tuple(ch_mult)
        levels = len(ch_mult)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(f"UNet: image_size={image_size} must be divisible by "
                             f"2**(len(ch_mult)-1)={2 ** (levels - 1)} (ch_mult={ch_mult}); "
                             "pad the images or use fewer levels")
        widths = {ch} | {ch * m for m in ch_mult}
        if any(w % groups for w in widths):
            raise ValueError(f"UNet: groups={groups} must divide every width {sorted(widths)}; "
                             "choose ch as a multiple of groups")
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = out_channels or in_channels
        self.ch, self.time_scale = ch, time_scale
        self.checkpoint_activations = checkpoint_activations
        temb_dim = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"UNet: num_classes must be a positive int (or None: unconditional), got {num_classes!r}")
        self.num_classes = num_classes
        self.label_emb = nn.Embedding(num_classes + 1, temb_dim) if num_classes else None  # row 0: the null label
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, c, res = [ch], ch, image_size
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(c, ch * m, temb_dim, dropout, groups))
                c = ch * m
                if res in attn_resolutions:
                    self.down.append(AttnBlock(c, groups))
                skips.append(c)
            if i != levels - 1:
                self.down.append(Downsample(c))
                res //= 2
                skips.append(c)

        self.mid = nn.ModuleList([ResBlock(c, c, temb_dim, dropout, groups), AttnBlock(c, groups),
                                  ResBlock(c, c, temb_dim, dropout, groups)])

        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), ch * m, temb_dim, dropout, groups))
                c = ch * m
                if res in attn_resolutions:
                    self.up.append(AttnBlock(c, groups))
            if i != 0:
                self.up.append(Upsample(c))
                res *= 2

        self.norm_out = GroupNorm(groups, c)
        self.conv_out = _zero(nn.Conv2d(c, self.out_channels, 3, padding=1))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if z_t.ndim != 4 or tuple(z_t.shape[1:]) != expected:
            raise ValueError(f"UNet: z_t has shape {tuple(z_t.shape)}, expected (B, {', '.join(map(str, expected))})")
        t = torch.as_tensor(t, device=z_t.device)
        if t.ndim == 0:
            t = t.expand(z_t.shape[0])
        if t.shape != (z_t.shape[0],):
            raise ValueError(f"UNet: t has shape {tuple(t.shape)}, expected ({z_t.shape[0]},) or a scalar")
        temb = self.temb(timestep_embedding(t * self.time_scale, self.ch).to(z_t.dtype))
        if (y is None) != (self.label_emb is None):
            raise TypeError("this UNet is unconditional (num_classes=None): call it as unet(z_t, t), or build it "
                            "with num_classes=K to give it labels" if y is not None else
                            f"UNet(num_classes={self.num_classes}) is conditional: call it as unet(z_t, t, y) with "
                            f"y (B,) class indices, -1 for unconditional")
        if y is not None:
            temb = temb + self.label_emb(check_labels(y, z_t.shape[0], self.num_classes, "y") + 1).to(temb.dtype)

        block = self._block
        h = self.conv_in(z_t)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, ResBlock):
                h = block(layer, h, temb)
            else:
                h = block(layer, h)
            if not isinstance(layer, AttnBlock):
                hs.append(h)
            else:
                hs[-1] = h
        for layer in self.mid:
            h = block(layer, h, temb) if isinstance(layer, ResBlock) else block(layer, h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = block(layer, torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = block(layer, h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _block(self, layer: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """``layer(*args)``, its activations recomputed in backward under ``checkpoint_activations``."""
        if self.checkpoint_activations and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)
