"""The CUDA path: the same results as on the CPU, no host syncs in the training step, exact resume.

Skipped without CUDA. On a GPU machine: ``python -m pytest tests/test_cuda.py`` (about a minute,
most of it torch.compile).
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

import pytest  # noqa: E402
import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402
from lincorrupt.data import TensorImages  # noqa: E402
from lincorrupt.nn import UNet  # noqa: E402
from lincorrupt.train import TrainConfig, Trainer  # noqa: E402
from lincorrupt.train.distributed import DistInfo  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SHAPE = (3, 8, 8)
CUDA = torch.device("cuda")


def corruptions():
    return {"ddpm": lc.DDPM(SHAPE), "ihdm": lc.IHDM(SHAPE), "blurring": lc.BlurringDiffusion(SHAPE)}


@pytest.mark.parametrize("name", sorted(corruptions()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_process_and_posterior_match_the_cpu(name, dtype):
    g = torch.Generator().manual_seed(0)
    x, noise = torch.rand(5, *SHAPE, generator=g, dtype=dtype) * 2 - 1, torch.randn(5, *SHAPE, generator=g, dtype=dtype)
    t, s = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.0], dtype=dtype), torch.tensor([0.0, 0.1, 0.3, 0.6, 0.99], dtype=dtype)
    cpu, gpu = corruptions()[name].to(dtype=dtype), corruptions()[name].to(CUDA, dtype)
    z_cpu, _ = cpu.diffuse(x, t, noise)
    z_gpu, _ = gpu.diffuse(x.to(CUDA), t.to(CUDA), noise.to(CUDA))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert z_gpu.device.type == "cuda" and z_gpu.dtype == dtype
    torch.testing.assert_close(z_gpu.cpu(), z_cpu, **tol)
    p_cpu, p_gpu = cpu.posterior(z_cpu, x, s, t), gpu.posterior(z_cpu.to(CUDA), x.to(CUDA), s.to(CUDA), t.to(CUDA))
    torch.testing.assert_close(p_gpu.mean.cpu(), p_cpu.mean, **tol)
    torch.testing.assert_close(p_gpu.var.cpu(), p_cpu.var, **tol)


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
def test_every_sampler_runs_on_cuda_and_repeats_with_its_seed(method):
    c = lc.BlurringDiffusion(SHAPE).to(CUDA)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=4)
    net = net.to(CUDA).eval()

    def draw():
        g = torch.Generator(CUDA).manual_seed(3)
        with torch.no_grad():
            return lc.sample(net, c, 4, steps=6, prediction="v", method=method, grid="logsnr", generator=g)

    a, b = draw(), draw()
    assert a.device.type == "cuda" and a.shape == (4, *SHAPE) and torch.isfinite(a).all()
    assert torch.equal(a, b)


def make_trainer(out_dir, steps=4, device=CUDA, dropout=0.2, **kw):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               groups=4, dropout=dropout)
    images = torch.randint(0, 256, (32, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=8, warmup_steps=2, ema_decay=0.9, num_workers=0, log_every=2,
                                sample_every=0, ckpt_every=0, progress=False, prediction="v", out_dir=str(out_dir)),
                         **kw})
    return Trainer(net, lc.BlurringDiffusion(SHAPE), TensorImages(images, SHAPE), cfg, DistInfo(device=device))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_after_the_first_never_wait_for_the_gpu(tmp_path, precision, channels_last):
    trainer = make_trainer(tmp_path, precision=precision, channels_last=channels_last)
    x = torch.randint(0, 256, (8, *SHAPE), dtype=torch.uint8, device=CUDA)
    losses = [trainer.train_step(x)]  # the first step validates its arguments (host reads allowed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host wait now raises
    try:
        for _ in range(3):
            losses.append(trainer.train_step(x))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_on_cuda_continues_bit_exactly(tmp_path, deterministic):
    full = make_trainer(tmp_path / "full", steps=6, precision="bf16")
    assert full.fit() == "done"
    first = make_trainer(tmp_path / "part", steps=3, precision="bf16")
    assert first.fit() == "done"
    second = make_trainer(tmp_path / "part", steps=6, precision="bf16")
    second.resume(tmp_path / "part" / "checkpoint.pt")
    assert second.fit() == "done"
    for (name, p), q in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(full.ema.module.state_dict().values(), second.ema.module.state_dict().values()):
        assert torch.equal(p, q)


def test_a_cuda_checkpoint_loads_on_the_cpu(tmp_path):
    gpu = make_trainer(tmp_path, steps=2, precision="bf16")
    assert gpu.fit() == "done"
    cpu = make_trainer(tmp_path / "cpu", steps=2, device=torch.device("cpu"))
    cpu.resume(tmp_path / "checkpoint.pt")
    for p, q in zip(gpu.ema.module.state_dict().values(), cpu.ema.module.state_dict().values()):
        assert q.device.type == "cpu" and torch.equal(p.cpu(), q)
    assert cpu.step == 2


def test_compiled_training_matches_eager_on_cuda(tmp_path):
    # no dropout: compiled graphs draw their random numbers differently
    eager = make_trainer(tmp_path / "e", dropout=0.0, precision="fp32", tf32=False)
    compiled = make_trainer(tmp_path / "c", dropout=0.0, precision="fp32", tf32=False, compile=True)
    x = torch.randint(0, 256, (8, *SHAPE), dtype=torch.uint8, device=CUDA)
    for _ in range(2):
        a, b = eager.train_step(x), compiled.train_step(x)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def test_a_bf16_channels_last_step_copies_no_activation_inside_the_network(tmp_path):
    """CUDA autocast runs group_norm in float32: the UNet's GroupNorm must keep bf16 there too, so
    a step's activation copies are only those at the network's edges (and one gradient per
    attention block), as the CPU emulation in test_train_scale.py lists them."""
    from helpers.ops import step_copies
    from lincorrupt.nn.unet import AttnBlock
    trainer = make_trainer(tmp_path, batch_size=6, precision="bf16", channels_last=True)  # 6: no layer is 6 wide
    activations, parameters = step_copies(trainer, torch.randint(0, 256, (6, *SHAPE), dtype=torch.uint8, device=CUDA))
    attention_blocks = sum(isinstance(m, AttnBlock) for m in trainer.model.modules())
    assert len(activations) <= 6 + attention_blocks, activations
    assert parameters <= 2 * len(list(trainer.model.parameters())) + 1
