"""The DDPM UNet: size of the published CIFAR-10 model, wiring, time conditioning, input checks."""

import math

import numpy as np
import pytest
import torch

from lincorrupt.nn import UNet
from lincorrupt.nn.unet import GroupNorm, timestep_embedding

TINY = dict(image_size=16, in_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), groups=8)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace every parameter (including DDPM's zero-initialised ones) by random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_default_is_the_ddpm_cifar10_model():
    n = sum(p.numel() for p in UNet().parameters())
    assert round(n / 1e6, 1) == 35.7  # Ho et al. 2020, Table/appendix B: 35.7M parameters


def test_timestep_embedding_matches_ddpm_reference():
    # diffusion_tf/nn.py get_timestep_embedding, transcribed in NumPy
    t, dim = np.array([0.0, 1.0, 17.5, 999.0]), 32
    half = dim // 2
    w = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
    ref = np.concatenate([np.sin(t[:, None] * w), np.cos(t[:, None] * w)], axis=1)
    np.testing.assert_allclose(timestep_embedding(torch.tensor(t), dim).numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [TINY, dict(TINY, ch_mult=(1, 2, 2), num_res_blocks=2, in_channels=1, out_channels=2)])
def test_output_shape_and_every_parameter_is_used(kw):
    model = randomise(UNet(**kw))
    z = torch.randn(3, kw["in_channels"], 16, 16)
    out = model(z, torch.rand(3))
    assert out.shape == (3, kw.get("out_channels") or kw["in_channels"], 16, 16)
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused


def test_zero_initialised_output_then_time_conditioning():
    model = UNet(**TINY, dropout=0.0).eval()
    z = torch.randn(2, 3, 16, 16)
    assert torch.count_nonzero(model(z, torch.rand(2))) == 0  # DDPM's init_scale=0 on the last conv
    randomise(model)
    same_z = z[:1].expand(2, -1, -1, -1)
    out = model(same_z, torch.tensor([0.1, 0.9]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    torch.testing.assert_close(model(z, torch.tensor(0.3)), model(z, torch.full((2,), 0.3)))


def test_channels_last_gives_the_same_output():
    model = randomise(UNet(**TINY, dropout=0.0)).eval()
    z, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    ref = model(z, t)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(z.contiguous(memory_format=torch.channels_last), t), ref, rtol=1e-4, atol=1e-4)


def test_bad_input_is_named():
    model = UNet(**TINY)
    with pytest.raises(ValueError, match=r"z_t has shape \(2, 1, 16, 16\), expected \(B, 3, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match=r"t has shape \(3,\), expected \(2,\)"):
        model(torch.randn(2, 3, 16, 16), torch.rand(3))
    with pytest.raises(ValueError, match="image_size=28 must be divisible by"):
        UNet(**dict(TINY, image_size=28, ch_mult=(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="groups=32 must divide"):
        UNet(**dict(TINY, groups=32))


def previous_attention(block, x):
    """The attention as first written: strided q, k, v views of (B, HW, C), softmax written out."""
    B, C, H, W = x.shape
    q, k, v = block.qkv(block.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
    h = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C), dim=-1) @ v
    return x + block.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def test_attention_hands_contiguous_heads_to_sdpa_and_the_output_is_unchanged(monkeypatch):
    from lincorrupt.nn import unet
    model = randomise(UNet(**TINY, dropout=0.0)).eval()
    z, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    seen, sdpa = [], unet.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        seen.append((q, k, v))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(unet.F, "scaled_dot_product_attention", recording_sdpa)
    out = model(z, t)
    assert len(seen) == sum(isinstance(m, unet.AttnBlock) for m in model.modules()) > 0  # all at 8x8
    for q, k, v in seen:
        assert all(a.is_contiguous() and a.ndim == 4 and a.shape[1] == 1 and a.shape[2] == 8 * 8 for a in (q, k, v))
    monkeypatch.setattr(unet.AttnBlock, "forward", previous_attention)
    torch.testing.assert_close(out, model(z, t), rtol=1e-5, atol=1e-5)


def _saved_bytes(model, z, t):
    """Bytes of the tensors autograd keeps for backward during ``model(z, t)`` (parameters included)."""
    total = 0

    def pack(x):
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = model(z, t)
    return out, total


def test_checkpoint_activations_gives_the_same_outputs_and_gradients_with_less_saved():
    kw = dict(TINY, dropout=0.3)  # dropout on: the recomputation must replay the same masks
    plain, ckpt = randomise(UNet(**kw)), randomise(UNet(**kw, checkpoint_activations=True))
    z, t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.1, 0.5, 0.9])
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(7)
        out, saved = _saved_bytes(model, z, t)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}, saved))
    (out0, g0, saved0), (out1, g1, saved1) = results
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
    assert saved1 < saved0 / 2  # the blocks' inner activations are recomputed, not stored
    with torch.no_grad():  # nothing to recompute without gradients: the plain forward
        torch.testing.assert_close(ckpt.eval()(z, t), plain.eval()(z, t), rtol=1e-5, atol=1e-6)


def test_group_norm_keeps_its_inputs_dtype_and_layout_under_autocast():
    torch.manual_seed(0)
    ref = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(ref.weight), torch.nn.init.normal_(ref.bias)
    norm = GroupNorm(4, 8)
    norm.load_state_dict(ref.state_dict())  # the same parameters and state dict
    x = (torch.randn(3, 8, 5, 5) * 3 + 1).to(memory_format=torch.channels_last)
    torch.testing.assert_close(norm(x), ref(x), rtol=0, atol=0)  # no autocast: nn.GroupNorm itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    # the float32 norm of the same bf16 input, rounded to bf16 once (the kernel accumulates in float32)
    torch.testing.assert_close(y.float(), ref(x.bfloat16().float()), rtol=2e-2, atol=2e-2)
    norms = [m for m in UNet(image_size=8, ch=8, ch_mult=(1,), num_res_blocks=1, groups=4).modules()
             if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(type(m) is GroupNorm for m in norms)
