"""Training at scale: gradient accumulation, activation checkpointing, TF32, DataLoader workers, per-image draws."""


import pytest
import torch

import lincorrupt as lc
from helpers.ops import OpCounter, step_copies
from lincorrupt.data import TensorImages
from lincorrupt.nn import UNet
from lincorrupt.nn.unet import AttnBlock
from lincorrupt.train import StepBatchSampler, TrainConfig, Trainer
from lincorrupt.train.config import MAX_WORKERS, default_workers
from lincorrupt.train.data_order import derive_seed
from lincorrupt.train.precision import Autocast, allow_tf32

SHAPE = (3, 8, 8)
IMAGES = torch.randint(0, 256, (24, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def make_trainer(tmp_path, model=None, **kw):
    torch.manual_seed(0)
    net = model or UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        groups=4, dropout=0.0)
    cfg = TrainConfig(**{**dict(steps=3, batch_size=8, warmup_steps=2, num_workers=0, log_every=3, sample_every=0,
                                ckpt_every=0, progress=False, out_dir=str(tmp_path)), **kw})
    return Trainer(net, lc.BlurringDiffusion(SHAPE), TensorImages(IMAGES, SHAPE), cfg)


def run_recording_grads(trainer):
    """fit(); returns the gradient the optimiser saw at each step."""
    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kw: grads.append(torch.cat([p.grad.flatten().clone() for p in trainer.model.parameters()])))
    assert trainer.fit() == "done"
    return grads


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_grad_accum_gives_the_gradients_and_parameters_of_the_whole_batch(tmp_path, grad_accum):
    whole = make_trainer(tmp_path / "whole")
    accum = make_trainer(tmp_path / "accum", grad_accum=grad_accum)
    g_whole, g_accum = run_recording_grads(whole), run_recording_grads(accum)
    assert len(g_whole) == len(g_accum) == 3 and g_whole[0].abs().max() > 0
    for a, b in zip(g_whole, g_accum):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    for (name, p), q in zip(whole.model.state_dict().items(), accum.model.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(torch.tensor(accum.losses), torch.tensor(whole.losses), rtol=1e-5, atol=1e-7)


def test_grad_accum_must_split_the_batch(tmp_path):
    with pytest.raises(ValueError, match="not divisible by grad_accum=3"):
        TrainConfig(batch_size=8, grad_accum=3)
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        TrainConfig(grad_accum=0)


def test_draws_of_an_image_depend_only_on_seed_step_and_its_global_index(tmp_path):
    trainer = make_trainer(tmp_path)
    B = trainer.cfg.batch_size
    t, noise, flip, _ = trainer.draw(5, 0, B)
    for start, n in [(0, 3), (3, 5), (4, 4), (7, 1)]:  # any rank's slice, any micro-batch
        ts, ns, fs, _ = trainer.draw(5, start, n)
        assert torch.equal(ts, t[start:start + n]) and torch.equal(ns, noise[start:start + n])
        assert torch.equal(fs, flip[start:start + n])
    # independently: one generator seeded by the SeedSequence of (seed, step) draws t, the flips, the noise
    g = torch.Generator().manual_seed(derive_seed(trainer.cfg.seed, 5))
    assert torch.equal(t, torch.rand(B, generator=g)) and torch.equal(flip, torch.rand(B, generator=g) < 0.5)
    assert torch.equal(noise, torch.randn(B, *SHAPE, generator=g))
    assert not torch.equal(trainer.draw(6, 0, B)[1], noise) and not torch.equal(noise[0], noise[1])
    assert t.min() >= 0 and t.max() < 1 and noise.shape == (B, *SHAPE) and flip.dtype == torch.bool
    trainer.fit()  # training does not move the draws of a step
    assert torch.equal(trainer.draw(5, 0, B)[1], noise)


def test_the_ops_of_a_training_step_do_not_grow_with_the_batch_size(tmp_path):
    """The random draws of a step are a fixed number of launches (not one per image): a step at
    batch 16 runs exactly the operators of a step at batch 4, random ones included."""
    counts = []
    for batch in (4, 16):
        trainer = make_trainer(tmp_path / str(batch), batch_size=batch)
        x = IMAGES[:batch]
        trainer.train_step(x)  # the first step validates its arguments
        with OpCounter() as ops:
            trainer.train_step(x)
        counts.append(ops.counts)
    assert counts[0] == counts[1]
    assert sum(n for op, n in counts[0].items() if op.startswith(("aten.normal", "aten.uniform"))) <= 3


def test_checkpoint_activations_trains_like_the_plain_network(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    ckpt = make_trainer(tmp_path / "ckpt", checkpoint_activations=True)
    assert ckpt.model.checkpoint_activations and not plain.model.checkpoint_activations
    plain.fit(), ckpt.fit()
    for (name, p), q in zip(plain.model.state_dict().items(), ckpt.model.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="has no checkpoint_activations"):
        make_trainer(tmp_path / "other", model=torch.nn.Conv2d(3, 3, 3, padding=1), checkpoint_activations=True)


def test_allow_tf32_sets_and_restores_both_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for enabled in (True, False):
        with allow_tf32(enabled):
            assert torch.backends.cuda.matmul.allow_tf32 is enabled and torch.backends.cudnn.allow_tf32 is enabled
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


class FlagRecorder(torch.nn.Module):
    """A network that records whether TF32 matmuls are allowed while it runs."""

    def __init__(self):
        super().__init__()
        self.conv, self.seen = torch.nn.Conv2d(3, 3, 3, padding=1), []

    def forward(self, z, t):
        self.seen.append(torch.backends.cuda.matmul.allow_tf32)
        return self.conv(z)


def recording_loss(trainer, seen):
    """``trainer.loss`` (the corruption, the network, the loss) recording the TF32 setting around the network."""
    loss = trainer.loss

    def recorded(*args, **kw):
        seen.append(torch.backends.cuda.matmul.allow_tf32)  # where the corruption runs
        return loss(*args, **kw)
    return recorded


def test_tf32_has_no_effect_on_cpu(tmp_path):
    trainer = make_trainer(tmp_path, model=FlagRecorder(), tf32=True)
    outside = []
    trainer.loss = recording_loss(trainer, outside)
    with allow_tf32(False):
        trainer.fit()
        assert not torch.backends.cuda.matmul.allow_tf32
    assert not trainer.tf32 and trainer.model.seen == outside == [False] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 is a CUDA setting")
@pytest.mark.parametrize("precision, tf32, inside",
                         [("fp32", True, True), ("fp32", False, False), ("bf16", True, False)])
def test_tf32_on_cuda_for_fp32_networks_only(tmp_path, precision, tf32, inside):
    from lincorrupt.train.distributed import DistInfo
    torch.manual_seed(0)
    cfg = TrainConfig(steps=2, batch_size=4, num_workers=0, log_every=2, sample_every=0, ckpt_every=0, progress=False,
                      out_dir=str(tmp_path), precision=precision, tf32=tf32)
    trainer = Trainer(FlagRecorder(), lc.BlurringDiffusion(SHAPE), TensorImages(IMAGES, SHAPE), cfg,
                      DistInfo(device=torch.device("cuda")))
    outside = []
    trainer.loss = recording_loss(trainer, outside)
    with allow_tf32(False):
        trainer.fit()
        assert not torch.backends.cuda.matmul.allow_tf32  # restored after each step
    assert trainer.model.seen == [inside] * 2 and outside == [False] * 2  # the corruption always runs in fp32


def test_default_workers_are_the_cpus_per_process_capped(monkeypatch):
    cpus = len(__import__("os").sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == max(1, min(MAX_WORKERS, cpus))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))
    assert default_workers() == 1
    assert TrainConfig().num_workers == -1
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        TrainConfig(num_workers=-2)


def test_workers_with_prefetch_keep_the_data_order(tmp_path):
    serial = make_trainer(tmp_path / "a", num_workers=0)
    workers = make_trainer(tmp_path / "b", num_workers=2, prefetch_factor=3)
    sampler = StepBatchSampler(len(IMAGES), 8, seed=0)
    for step, a, b in zip(range(7), serial.batches(), workers.batches()):  # 7 steps: past an epoch of 3
        assert torch.equal(a, b) and torch.equal(a, IMAGES[sampler.global_batch(step)])


def test_grad_accum_skips_the_all_reduce_for_all_but_the_last_micro_batch(tmp_path):
    import contextlib
    trainer = make_trainer(tmp_path, grad_accum=4)
    entered = []

    class StubDDP:  # stands in for DistributedDataParallel: counts the micro-batches run without sync
        @contextlib.contextmanager
        def no_sync(self):
            entered.append(trainer.step)
            yield

    trainer.ddp = StubDDP()
    trainer.fit()
    assert entered == [0] * 3 + [1] * 3 + [2] * 3


def test_a_bf16_channels_last_step_copies_no_activation_inside_the_network(tmp_path):
    """Under bf16 autocast with channels_last (the network's autocast as on CUDA, emulated on the
    CPU) the activation copies are: the uint8 batch to float32, z_t to channels_last and to bf16,
    the (B, ch) time embedding to bf16, the bf16 output to float32 and that output's gradient back,
    and one contiguous gradient per attention block in the backward. None at a GroupNorm (it
    casts its (C,) weights instead) nor before attention (strided q, k, v views). Parameters: at
    most one cast each way (forward and gradient) per parameter tensor, the floor with float32 weights."""
    trainer = make_trainer(tmp_path, batch_size=6, channels_last=True)  # 6: no layer of the net is 6 wide
    trainer.net = Autocast(trainer.model, torch.bfloat16, channels_last=True)
    activations, parameters = step_copies(trainer, IMAGES[:6])
    attention_blocks = sum(isinstance(m, AttnBlock) for m in trainer.model.modules())
    f32, bf16 = torch.float32, torch.bfloat16
    expected = [("_to_copy", torch.uint8, f32, False), ("clone", f32, f32, True), ("_to_copy", f32, bf16, True),
                ("_to_copy", f32, bf16, None), ("_to_copy", bf16, f32, True), ("_to_copy", f32, bf16, False),
                *[("clone", bf16, bf16, None)] * attention_blocks]
    assert attention_blocks == 4 and sorted(activations, key=str) == sorted(expected, key=str)
    n_params = len(list(trainer.model.parameters()))
    assert 0 < parameters <= 2 * n_params + 1  # + the corruption's (H, W) float64 frequencies cast to float32
