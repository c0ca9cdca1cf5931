"""The per-step hook of every sampler (lincorrupt.sampling.StepHook): what it sees, what replacing x_hat or
the state does, gradients under needs_grad, and the multistep solvers' refusal of a state hook."""

import re

import pytest
import torch

import lincorrupt as lc
from lincorrupt.sampling import Step, StepHook

f64 = torch.float64
SHAPE = (1, 4, 6)
STEPS = 7


def net(z, t):
    """A deterministic nonlinear x-prediction."""
    return torch.tanh(1.3 * z) * (1 - t.view(-1, 1, 1, 1)) + 0.1 * t.view(-1, 1, 1, 1)


def run(method, hook=None, model=net, **options):
    c = lc.BlurringDiffusion(SHAPE)
    return lc.sample(model, c, 3, steps=STEPS, method=method, prediction="x", dtype=f64, hook=hook,
                     generator=torch.Generator().manual_seed(0), **options)


class Identity(StepHook):
    def x_hat(self, step):
        return step.u_x


class IdentityState(Identity):
    def state(self, step, u_s):
        return u_s


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
def test_a_hook_that_changes_nothing_leaves_every_sampler_alone(method):
    plain = run(method)
    torch.testing.assert_close(run(method, Identity()), plain, rtol=0, atol=0)
    torch.testing.assert_close(run(method, StepHook()), plain, rtol=0, atol=0)
    if lc.SAMPLERS[method].stochastic or method == "ddim":
        torch.testing.assert_close(run(method, IdentityState()), plain, rtol=0, atol=0)


class Constant(StepHook):
    def __init__(self, value):
        self.value = value

    def x_hat(self, step):
        return self.value.expand_as(step.u_x)


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
def test_replacing_x_hat_by_a_constant_makes_the_sample_that_constant(method):
    c = lc.BlurringDiffusion(SHAPE)
    target = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=f64)
    x = run(method, Constant(c.basis.to_basis(target)))
    torch.testing.assert_close(x, target.expand(3, *SHAPE), rtol=1e-12, atol=1e-12)


class Squash(StepHook):
    def x_hat(self, step):
        return torch.tanh(step.u_x)


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_replaced_x_hat_acts_as_if_the_model_had_predicted_it(method, prediction):
    """Every sampler steps with the hook's x_hat alone (DDIM with the noise it implies): the same as a model
    whose x-prediction is that x_hat."""
    c = lc.BlurringDiffusion(SHAPE)
    out = lambda z, t: c.convert(net(z, t), z, t, source="x", target=prediction)  # a model predicting `prediction`

    def squashed_x_model(z, t):
        return c.basis.from_basis(torch.tanh(c.basis.to_basis(net(z, t))))

    kw = dict(steps=STEPS, method=method, dtype=f64)
    ours = lc.sample(out, c, 3, prediction=prediction, hook=Squash(), generator=torch.Generator().manual_seed(1), **kw)
    by_hand = lc.sample(squashed_x_model, c, 3, prediction="x", generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(ours, by_hand, rtol=1e-9, atol=1e-9)


class Recorder(StepHook):
    def __init__(self):
        self.steps, self.states = [], []

    def x_hat(self, step):
        self.steps.append(step)
        return step.u_x

    def state(self, step, u_s):
        self.states.append((step.index, u_s.clone()))
        return 0.5 * u_s  # a change the next evaluation must see


@pytest.mark.parametrize("method", sorted(m for m, s in lc.SAMPLERS.items() if isinstance(s, lc.sampling.RuleSampler)))
def test_a_rule_sampler_shows_the_hook_each_step_and_continues_from_its_state(method):
    c = lc.BlurringDiffusion(SHAPE)
    inputs = []
    model = lambda z, t: (inputs.append((z.clone(), t.clone())), net(z, t))[1]
    hook = Recorder()
    times = lc.GRIDS["uniform"](c, STEPS).to(f64)
    run(method, hook, model)
    assert [s.index for s in hook.steps] == list(range(STEPS))
    assert [k for k, _ in hook.states] == list(range(STEPS - 1))  # not after the last evaluation
    for k, step in enumerate(hook.steps):
        assert isinstance(step, Step)
        z, t = inputs[k]
        assert step.t.shape == step.s.shape == (1,)
        assert step.t.item() == times[k].item() == t[0].item() and step.s.item() == times[k + 1].item()
        torch.testing.assert_close(step.c_t.log_alpha, c.coefficients(times[k:k + 1]).log_alpha)
        torch.testing.assert_close(step.c_s.log_sigma, c.coefficients(times[k + 1:k + 2]).log_sigma)
        torch.testing.assert_close(step.u_t, c.basis.to_basis(z), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(step.u_x, c.basis.to_basis(net(z, t)), rtol=1e-12, atol=1e-12)
        if k:  # the state the hook returned is where the sampler went on from
            torch.testing.assert_close(step.u_t, 0.5 * hook.states[k - 1][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(m for m, s in lc.SAMPLERS.items()
                                          if isinstance(s, lc.sampling.MultistepSampler)))
def test_a_multistep_sampler_refuses_a_state_hook_by_name(method):
    with pytest.raises(TypeError, match=f"multistep sampler '{re.escape(method)}'.*state"):
        run(method, Recorder())


def test_a_hook_must_be_a_step_hook():
    with pytest.raises(TypeError, match="StepHook"):
        run("ancestral", hook=lambda step: step.u_x)


class Gradient(StepHook):
    needs_grad = True

    def __init__(self):
        self.grads, self.state_grads = [], []

    def x_hat(self, step):
        assert torch.is_grad_enabled() and step.u_t.requires_grad
        self.grads.append(torch.autograd.grad(step.u_x.sum(), step.u_t, retain_graph=True)[0])
        return step.u_x

    def state(self, step, u_s):
        self.state_grads.append(torch.autograd.grad((step.u_x**2).sum(), step.u_t)[0])
        return u_s


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
def test_needs_grad_gives_x_hat_a_graph_to_the_state(method):
    """For the linear x-model x_hat = 0.5 z (an orthonormal basis: u_x = 0.5 u_t), d sum(u_x) / d u_t = 0.5 and
    d sum(u_x^2) / d u_t = 0.5 u_t, in both methods of the hook; the sample is unchanged and carries no graph."""
    c = lc.BlurringDiffusion(SHAPE)
    hook = Gradient()
    kw = dict(steps=4, method=method, prediction="x", dtype=f64)
    x = lc.sample(lambda z, t: 0.5 * z, c, 2, hook=hook, generator=torch.Generator().manual_seed(0), **kw)
    assert not x.requires_grad and x.grad_fn is None
    assert len(hook.grads) == 4 and len(hook.state_grads) == 3
    for g in hook.grads:
        torch.testing.assert_close(g, torch.full_like(g, 0.5))
    plain = lc.sample(lambda z, t: 0.5 * z, c, 2, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(x, plain, rtol=0, atol=0)
    recorded = Recorder()
    recorded.state = lambda step, u_s: u_s
    lc.sample(lambda z, t: 0.5 * z, c, 2, hook=recorded, generator=torch.Generator().manual_seed(0), **kw)
    for g, step in zip(hook.state_grads, recorded.steps):
        torch.testing.assert_close(g, 0.5 * step.u_t)


@pytest.mark.parametrize("method", sorted(m for m, s in lc.SAMPLERS.items()
                                          if isinstance(s, lc.sampling.MultistepSampler)))
def test_a_multistep_solver_with_needs_grad_gives_x_hat_a_graph(method):
    class XOnly(StepHook):
        needs_grad = True

        def __init__(self):
            self.grads = []

        def x_hat(self, step):
            self.grads.append(torch.autograd.grad(step.u_x.sum(), step.u_t)[0])
            return step.u_x

    hook = XOnly()
    x = run(method, hook, lambda z, t: 0.5 * z)
    assert len(hook.grads) == STEPS and x.grad_fn is None
    for g in hook.grads:
        torch.testing.assert_close(g, torch.full_like(g, 0.5))
