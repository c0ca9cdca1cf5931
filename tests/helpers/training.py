"""A tiny Trainer (0.02 s a step on one core) and a check that two Trainers hold the same state."""

import torch

import lincorrupt as lc
from lincorrupt.data import TensorImages
from lincorrupt.nn import UNet
from lincorrupt.train import TrainConfig, Trainer

SHAPE = (3, 8, 8)


def make_trainer(out_dir, steps, corruption=None, **kw):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               groups=4, dropout=0.2)  # dropout on: the global RNG must be restored too
    images = torch.randint(0, 256, (20, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=4, warmup_steps=3, ema_decay=0.9, num_workers=0, log_every=2,
                                sample_every=0, ckpt_every=0, progress=False, out_dir=str(out_dir)), **kw})
    return Trainer(net, corruption or lc.BlurringDiffusion(SHAPE), TensorImages(images, SHAPE), cfg)


def assert_same_state(a: Trainer, b: Trainer):
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    for p, q in zip(a.ema.module.state_dict().values(), b.ema.module.state_dict().values()):
        assert torch.equal(p, q)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr() and a.step == b.step
