"""CUDAGraphModel: the network replayed from a CUDA graph gives the samples of the network itself;
off CUDA it is the network; it refuses what a graph cannot replay (gradients, no warm-up)."""

import pytest
import torch

import lincorrupt as lc
from lincorrupt.nn import UNet

SHAPE = (3, 8, 8)


def tiny_unet(device):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=4)
    for p in net.parameters():  # the zero-initialised last layers would make every output 0
        torch.nn.init.normal_(p, std=0.2)
    return net.to(device).eval()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["ancestral", "dpm++2m", "dpm++3m"])
def test_graphed_sampling_gives_the_samples_of_the_network_itself(device, method):
    c, net = lc.BlurringDiffusion(SHAPE).to(device), tiny_unet(device)
    graphed = lc.CUDAGraphModel(net)

    def draw(model, n=4):
        g = torch.Generator(device).manual_seed(1)
        return lc.sample(model, c, n, steps=5, prediction="v", method=method, generator=g, device=device)

    eager, first, again = draw(net), draw(graphed), draw(graphed)  # again: replays the captured graph
    assert eager.abs().max() > 0
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-5)
    assert torch.equal(again, first)
    torch.testing.assert_close(draw(graphed, n=3), draw(net, n=3), rtol=1e-4, atol=1e-5)  # a new batch: a new graph
    assert len(graphed._graphs) == (2 if device == "cuda" else 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_outputs_are_copies_and_gradients_are_refused():
    net = tiny_unet("cuda")
    graphed = lc.CUDAGraphModel(net)
    z, t = torch.randn(2, *SHAPE, device="cuda"), torch.full((2,), 0.5, device="cuda")
    with torch.no_grad():
        a = graphed(z, t)
        b = graphed(z * 2, t)  # the second replay must not overwrite the first result
        torch.testing.assert_close(a, net(z, t), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b, net(z * 2, t), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="inference only"):
        graphed(z, t)


def test_off_cuda_it_is_the_model_and_warmup_must_be_positive():
    net = tiny_unet("cpu")
    z, t = torch.randn(2, *SHAPE), torch.full((2,), 0.5)
    assert torch.equal(lc.CUDAGraphModel(net)(z, t), net(z, t))  # gradients too: nothing is captured on the CPU
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        lc.CUDAGraphModel(net, warmup=0)
