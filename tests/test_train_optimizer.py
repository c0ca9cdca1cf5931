"""The Trainer's optimiser: fused kernels where the parameters allow them, foreach otherwise."""

import torch
from torch import nn

from lincorrupt.train import TrainConfig
from lincorrupt.train.optim import keep_kernel_options, kernel_options, make_optimizer


def test_fused_where_the_parameters_allow_it_foreach_otherwise():
    assert kernel_options([torch.zeros(3), torch.zeros(2, dtype=torch.float64)])["fused"]
    assert kernel_options([torch.zeros(3), torch.zeros(2, dtype=torch.complex64)]) == {"fused": False, "foreach": True}
    assert kernel_options([torch.zeros(3, device="meta")])["foreach"]


def test_a_fused_step_is_adams_step():
    """Five steps of the fused AdamW against torch's per-tensor loop (the reference), same data."""
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    reference = nn.Linear(5, 3)
    reference.load_state_dict(net.state_dict())
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.1)
    opt = make_optimizer(cfg, net)
    assert opt.param_groups[0]["fused"]
    ref = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(5):
        x = torch.randn(4, 5)
        for model, o in ((net, opt), (reference, ref)):
            model(x).square().sum().backward()
            o.step()
            o.zero_grad()
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_of_an_unfused_optimizer_resumes_fused():
    net = nn.Linear(5, 3)
    old = torch.optim.Adam(net.parameters(), lr=1e-3)  # fused=None, foreach=None in its saved groups
    net(torch.randn(2, 5)).sum().backward()
    old.step()
    opt = make_optimizer(TrainConfig(), net)
    opt.load_state_dict(old.state_dict())
    keep_kernel_options(opt)
    assert opt.param_groups[0]["fused"] and not opt.param_groups[0]["foreach"]
    net(torch.randn(2, 5)).sum().backward()
    opt.step()  # the fused kernel accepts the restored state
    assert all(opt.state[p]["step"].item() == 2 for p in net.parameters())
