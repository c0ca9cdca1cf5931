"""Bad input gets a clear error where it enters; endpoints give finite values."""

import math

import pytest
import torch

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS, SHAPE


def identity_model(z, t):
    return z


@pytest.fixture
def c():
    return lc.BlurringDiffusion(SHAPE)


@pytest.fixture
def x():
    return torch.randn(3, *SHAPE)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval(c, x, t):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        c.diffuse(x, torch.full((3,), t))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        c.log_snr(torch.tensor([t]))


def test_integer_or_wrongly_shaped_time(c, x):
    with pytest.raises(TypeError, match="floating-point"):
        c.diffuse(x, torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        c.diffuse(x, torch.rand(4))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        c.diffuse(x, torch.rand(3, 1))


def test_s_not_before_t(c, x):
    z, _ = c.diffuse(x, 0.5)
    with pytest.raises(ValueError, match="need s < t"):
        c.posterior(z, x, 0.5, 0.5)
    with pytest.raises(ValueError, match="need s < t"):
        c.transition(torch.tensor([0.2, 0.9]), torch.tensor([0.3, 0.4]))


@pytest.mark.parametrize("shape", [(3, 2, 6, 4), (3, 2, 4), (3, 1, 4, 6), (2, 4, 6)])
def test_data_of_the_wrong_shape(c, shape):
    with pytest.raises(ValueError, match=r"must have shape \(B, 2, 4, 6\)"):
        c.diffuse(torch.randn(shape), 0.5)
    with pytest.raises(ValueError, match=r"must have shape \(B, 2, 4, 6\)"):
        lc.diffusion_loss(identity_model, c, torch.randn(shape))


def test_integer_data(c):
    with pytest.raises(TypeError, match="floating point"):
        c.diffuse(torch.zeros(3, *SHAPE, dtype=torch.uint8), 0.5)


def test_mismatched_noise(c, x):
    with pytest.raises(ValueError, match="noise must have the shape of x"):
        c.diffuse(x, 0.5, noise=torch.randn(2, *SHAPE))
    with pytest.raises(TypeError, match="noise has dtype torch.float64 but x has torch.float32"):
        c.diffuse(x, 0.5, noise=torch.randn(3, *SHAPE, dtype=torch.float64))


def test_mismatched_devices(c):
    x = torch.randn(3, *SHAPE, device="meta")
    with pytest.raises(ValueError, match="x is on meta but BlurringDiffusion's buffers are on cpu"):
        c.diffuse(x, 0.5)
    with pytest.raises(ValueError, match="t is on cpu but the data are on meta"):
        lc.BlurringDiffusion(SHAPE).to("meta").diffuse(x, torch.rand(3))


def test_model_returning_the_wrong_shape(c, x):
    bad = lambda z, t: z[:, :1]
    with pytest.raises(ValueError,
                       match=r"the model returned shape \(3, 1, 4, 6\) for input z_t of shape \(3, 2, 4, 6\)"):
        lc.diffusion_loss(bad, c, x)
    with pytest.raises(ValueError, match="the model returned shape"):
        lc.sample(bad, c, 2, steps=3)
    with pytest.raises(TypeError, match="must return a Tensor"):
        lc.sample(lambda z, t: z.numpy(), c, 2, steps=3)


def test_unknown_names(c, x):
    known = r"\['eps', 'residual', 'v', 'x'\]"
    with pytest.raises(ValueError, match=r"unknown prediction 'noise'; expected one of " + known):
        lc.diffusion_loss(identity_model, c, x, prediction="noise")
    with pytest.raises(ValueError, match="unknown prediction"):
        lc.sample(identity_model, c, 2, steps=3, prediction="epsilon")
    with pytest.raises(ValueError, match="unknown sampling method 'euler'"):
        lc.sample(identity_model, c, 2, steps=3, method="euler")
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        lc.sample(identity_model, c, 2, steps=3, grid="karras")
    with pytest.raises(ValueError, match="unknown DDPM schedule 'quadratic'"):
        lc.DDPM(SHAPE, schedule="quadratic")
    with pytest.raises(ValueError, match="unknown reduction"):
        lc.diffusion_loss(identity_model, c, x, reduction="avg")


def test_bad_sampling_arguments(c):
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        lc.sample(identity_model, c, 0, steps=3)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        lc.sample(identity_model, c, 2, steps=0)
    with pytest.raises(ValueError, match="decrease strictly from 1 to exactly 0"):
        lc.sample(identity_model, c, 2, grid=torch.tensor([1.0, 0.5, 0.6, 0.0]))
    with pytest.raises(ValueError, match="decrease strictly from 1 to exactly 0"):
        lc.sample(identity_model, c, 2, grid=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="must start at t = 1, where the prior draws u_1, got 0.8"):
        lc.sample(identity_model, c, 2, grid=torch.tensor([0.8, 0.5, 0.0]))
    with pytest.raises(ValueError, match="0 <= eta <= 1"):
        lc.sample(identity_model, c, 2, steps=3, method="ddim", eta=2.0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"shape \(C, H, W\)"):
        lc.BlurringDiffusion((4, 6))
    with pytest.raises(ValueError, match="sigma_blur_max >= 0"):
        lc.BlurringDiffusion(SHAPE, sigma_blur_max=-1)
    with pytest.raises(ValueError, match="sigma > 0"):
        lc.IHDM(SHAPE, sigma=0)
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        lc.DDPM(SHAPE, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="cannot act on events"):
        class Bad(lc.DiagonalizableCorruption):
            def __init__(self):
                super().__init__((2, 4, 6), lc.DCTBasis(6, 4))

            def _alpha_sigma(self, t):
                raise AssertionError("not reached")

        Bad()


def test_a_schedule_with_the_wrong_shape_is_named():
    class WrongShape(lc.DiagonalizableCorruption):
        def __init__(self):
            super().__init__(SHAPE, lc.IdentityBasis())

        def _alpha_sigma(self, t):
            return torch.cos(t * math.pi / 2).view(-1, 1), torch.sin(t * math.pi / 2).view(-1, 1)

    with pytest.raises(ValueError, match=r"WrongShape.s schedule hook returned alpha of shape \(64, 1\)"):
        WrongShape()


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_endpoints_are_finite_in_float32(name):
    c = CORRUPTIONS[name]()
    t = torch.tensor([0.0, 1.0])
    for value in c.alpha_sigma(t):
        assert torch.isfinite(value).all()
    x = torch.randn(2, *SHAPE)
    z, _ = c.diffuse(x, t)
    assert torch.isfinite(z).all()
    post = c.posterior(z[1:], x[1:], 0.0, 1.0)
    assert torch.isfinite(post.mean).all() and torch.isfinite(post.var).all() and (post.var >= 0).all()
    tr = c.transition(0.0, 1.0)
    assert torch.isfinite(tr.alpha).all() and torch.isfinite(tr.var).all()
    for prediction in ("eps", "x", "v"):
        assert torch.isfinite(lc.diffusion_loss(identity_model, c, x, prediction=prediction, t=t))


class QuarterCircle(lc.DiagonalizableCorruption):
    """A user's corruption implementing alpha_sigma only (it would return NaN for t > 1 unchecked)."""

    def __init__(self):
        super().__init__(SHAPE, lc.IdentityBasis())

    def _alpha_sigma(self, t):
        t = t.view(-1, 1, 1, 1)
        return torch.sqrt(1 - t**2), t.clamp(min=1e-3)


@pytest.mark.parametrize("make", [lambda: lc.BlurringDiffusion(SHAPE), lambda: lc.DDPM(SHAPE), QuarterCircle])
@pytest.mark.parametrize("t", [-0.1, 1.1, float("nan"), float("inf")])
def test_the_public_schedule_checks_its_times(make, t):
    c = make()
    for method in (c.alpha_sigma, c.log_alpha_sigma):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got"):
            method(torch.tensor([0.5, t]))
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            method(t)
    with pytest.raises(TypeError, match="floating-point"):
        c.alpha_sigma(torch.tensor([1]))
    alpha, sigma = c.alpha_sigma(0.5)  # a scalar is one time
    assert alpha.shape[0] == sigma.shape[0] == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_data_are_refused_where_they_enter(c, x, bad):
    poisoned = x.clone()
    poisoned[1, 0, 2, 3] = bad
    z, noise = c.diffuse(x, 0.5)
    message = r"must be finite, but 1 of its 144 values are NaN or Inf \(the first, .*, at index \(1, 0, 2, 3\)\)"
    calls = {
        "x": [lambda: c.diffuse(poisoned, 0.5), lambda: lc.diffusion_loss(identity_model, c, poisoned),
              lambda: c.posterior(z, poisoned, 0.2, 0.5)],
        "z_t": [lambda: c.posterior(poisoned, x, 0.2, 0.5), lambda: c.convert(x, poisoned, 0.5)],
        "noise": [lambda: c.diffuse(x, 0.5, noise=poisoned),
                  lambda: lc.diffusion_loss(identity_model, c, x, noise=poisoned)],
    }
    for name, entries in calls.items():
        for call in entries:
            with pytest.raises(ValueError, match=f"{name} {message}"):
                call()
            with lc.validate_args(False):
                call()  # not checked: no host sync

