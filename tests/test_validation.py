"""One validation switch: value checks on by default, off by set_validate_args / validate_args,
each input checked once per call, and a Trainer whose hot loop reads nothing back to the host."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lincorrupt as lc
from helpers.corruptions import SHAPE
from helpers.training import make_trainer


class HostReads(TorchDispatchMode):
    """Records every ``aten._local_scalar_dense`` (``.item()``, ``bool(tensor)``, ...) in ``reads`` and
    every ``aten.lift_fresh`` (``torch.tensor(python data)``) in ``uploads``, each with a label of when
    it ran. On CUDA both make the host wait for the GPU: a read of a result, or a blocking copy of
    host memory to the device."""

    def __init__(self, label=lambda: None):
        super().__init__()
        self.label, self.reads, self.uploads = label, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(self.label())
        elif func is torch.ops.aten.lift_fresh.default:
            self.uploads.append(self.label())
        return func(*args, **(kwargs or {}))


def test_the_switch_and_the_context_manager():
    c = lc.DDPM(SHAPE)
    x, late = torch.zeros(1, *SHAPE), torch.tensor([1.5])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got 1.5"):
        c.diffuse(x, late)
    with lc.validate_args(False):
        c.diffuse(x, late)  # not checked
        with lc.validate_args(True), pytest.raises(ValueError, match="must lie in"):
            c.diffuse(x, late)
        c.diffuse(x, late)
    with pytest.raises(ValueError, match="must lie in"):  # restored on leaving the block
        c.diffuse(x, late)
    lc.set_validate_args(False)
    try:
        c.posterior(x, x, torch.tensor([0.5]), torch.tensor([0.2]))  # s > t: not checked
    finally:
        lc.set_validate_args(True)
    with pytest.raises(ValueError, match="need s < t"):
        c.posterior(x, x, torch.tensor([0.5]), torch.tensor([0.2]))
    with pytest.raises(TypeError, match="expects a bool"):
        lc.set_validate_args("no")
    with pytest.raises(ValueError, match="shape"):  # shape checks cost nothing and always run
        with lc.validate_args(False):
            c.diffuse(torch.zeros(1, 3, 4, 6), torch.tensor([0.5]))


@pytest.mark.parametrize("call, reads", [
    (lambda c, x, t: c.diffuse(x, t), 2),  # x finite, t in [0, 1]
    (lambda c, x, t: c.diffuse(x, t, noise=x), 3),  # and the noise finite
    (lambda c, x, t: lc.diffusion_loss(lambda z, tt: z, c, x, t=t), 2),
    (lambda c, x, t: c.convert(x, x, t), 3),  # z_t, output, t
    (lambda c, x, t: c.posterior(x, x, t / 2, t), 5),  # x, z_t, s, t and s < t
    (lambda c, x, t: c.alpha_sigma(t), 1),
    (lambda c, x, t: c.log_alpha_sigma(t), 1),
])
def test_each_input_is_checked_once_per_call_and_not_at_all_when_off(call, reads):
    c, x, t = lc.BlurringDiffusion(SHAPE), torch.randn(2, *SHAPE), torch.tensor([0.3, 0.7])
    with HostReads() as on:
        call(c, x, t)
    with lc.validate_args(False), HostReads() as off:
        call(c, x, t)
    assert (len(on.reads), len(off.reads)) == (reads, 0)


def test_trainer_steps_between_log_steps_read_nothing_back_to_the_host(tmp_path):
    trainer = make_trainer(tmp_path, 7, log_every=3)
    step = trainer.train_step
    inside = []

    def labelled_step(batch):
        inside.append(True)
        try:
            return step(batch)
        finally:
            inside.pop()

    trainer.train_step = labelled_step
    with HostReads(lambda: (trainer.step, bool(inside))) as mode:
        trainer.fit()
    assert trainer.step == 7
    in_steps = {s for s, in_step in mode.reads if in_step}
    between = {s for s, in_step in mode.reads if not in_step}
    assert in_steps <= {0}, "only the first step validates its arguments"
    uploads = {s for s, in_step in mode.uploads if in_step}
    assert uploads <= {0}, "no step after the first makes a tensor from host data (a blocking copy on CUDA)"
    assert between <= {0, 3, 6, 7}, "only the set-up (the data loader's seed), log steps and the end read values"
    assert lc.validation.is_validating()  # the Trainer leaves the global switch as it was
