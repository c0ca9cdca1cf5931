"""In the identity basis with Ho et al.'s linear schedule every lincorrupt sampler is its published
algorithm: run step by step against diffusers' DDPMScheduler, DDIMScheduler and
DPMSolverMultistepScheduler on identical inputs, timesteps, model outputs and noise (dpm++3m:
up to the one term of diffusers' third-order step that is not the Taylor term).

Time map: diffusers' timestep k (alphas_cumprod[k] = prod_{j <= k} (1 - beta_j), betas 0-indexed)
is lincorrupt's t = (k + 1) / T; diffusers' final "alpha_cumprod = 1" is t = 0.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc

diffusers = pytest.importorskip("diffusers")

f64 = torch.float64
T = 1000
SHAPE = (2, 3, 5)
PREDICTIONS = {"eps": "epsilon", "x": "sample", "v": "v_prediction"}


def network(z, k):
    """A fixed nonlinear 'network' of (z, diffusers timestep k), outputs of order one."""
    k = torch.as_tensor(k, dtype=f64).reshape(-1, *[1] * len(SHAPE))
    return torch.tanh(z) * torch.cos(k / 700.0) + 0.3 * torch.sin(2 * z + k / 300.0)


def make_scheduler(cls, c, prediction, **config):
    sched = cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type=PREDICTIONS[prediction], **config)
    ours = torch.exp(c.log_alphabar[1:])  # lincorrupt's alphabar at t = (k + 1) / T
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), ours.numpy(), rtol=2e-6)  # same schedule
    sched.alphas_cumprod = ours  # ... then compare the algorithms in float64
    return sched


def run_diffusers(sched, num_samples, seed, **step_kwargs):
    """diffusers' sampling loop; returns the latents before every step and the final sample."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((num_samples, *SHAPE), generator=g, dtype=f64)
    trajectory = []
    for k in sched.timesteps:
        trajectory.append(latents)
        latents = sched.step(network(latents, k), k, latents, generator=g, **step_kwargs).prev_sample
    return trajectory, latents


def run_lincorrupt(c, timesteps, num_samples, seed, method, prediction, x_transform=None, **options):
    """lincorrupt on the same times; returns the model inputs (one per step) and the sample."""
    trajectory = []

    def model(z, t):
        trajectory.append(z)
        return network(z, torch.round(t * T) - 1)

    times = torch.cat([(timesteps.to(f64) + 1) / T, torch.zeros(1, dtype=f64)])
    # diffusers starts from N(0, I) at its first timestep, which can be below t = 1 (one step: t = 1/T),
    # so run the sampler function from the same start instead of lc.sample, which starts at t = 1 only
    g = torch.Generator().manual_seed(seed)
    start = torch.randn((num_samples, *SHAPE), generator=g, dtype=f64)  # identity basis: u = z
    x = lc.SAMPLERS[method](lc.Denoiser(model, c, prediction, x_transform), c, start, times, generator=g, **options)
    return trajectory, x


def assert_same_path(ours, theirs, rtol, atol):
    (traj_a, x_a), (traj_b, x_b) = ours, theirs
    assert len(traj_a) == len(traj_b)
    for step, (a, b) in enumerate(zip(traj_a, traj_b)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, step=step: f"step {step}: {m}")
    torch.testing.assert_close(x_a, x_b, rtol=rtol, atol=atol)


steps_st = st.integers(min_value=1, max_value=40)
prediction_st = st.sampled_from(sorted(PREDICTIONS))
seed_st = st.integers(min_value=0, max_value=2**31 - 1)


@given(steps=steps_st, prediction=prediction_st, seed=seed_st)
def test_ancestral_is_ddpm_scheduler(steps, prediction, seed):
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    sched = make_scheduler(diffusers.DDPMScheduler, c, prediction, clip_sample=False, variance_type="fixed_small")
    sched.set_timesteps(steps)
    theirs = run_diffusers(sched, 3, seed)
    ours = run_lincorrupt(c, sched.timesteps, 3, seed, "ancestral", prediction)
    assert_same_path(ours, theirs, rtol=1e-9, atol=1e-9)


@given(steps=steps_st, prediction=prediction_st, seed=seed_st, eta=st.floats(0.0, 1.0))
def test_ddim_is_ddim_scheduler(steps, prediction, seed, eta):
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    sched = make_scheduler(diffusers.DDIMScheduler, c, prediction, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    theirs = run_diffusers(sched, 3, seed, eta=eta)
    ours = run_lincorrupt(c, sched.timesteps, 3, seed, "ddim", prediction, eta=eta)
    assert_same_path(ours, theirs, rtol=1e-8, atol=1e-8)


BOUNDS = {  # diffusers' config for bounding its x_0 prediction -> lincorrupt's data-space map of x_hat
    "clip": ({"clip_sample": True}, lc.sampling.clip_x_hat),
    "threshold": ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
                  lambda x: lc.sampling.dynamic_threshold(x, 0.9, 1.5)),
}


@given(steps=steps_st, prediction=prediction_st, seed=seed_st, bound=st.sampled_from(sorted(BOUNDS)))
def test_bounded_ancestral_is_ddpm_scheduler_with_clip_or_thresholding(steps, prediction, seed, bound):
    config, x_transform = BOUNDS[bound]
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    sched = make_scheduler(diffusers.DDPMScheduler, c, prediction, variance_type="fixed_small", **config)
    sched.set_timesteps(steps)
    theirs = run_diffusers(sched, 3, seed)
    ours = run_lincorrupt(c, sched.timesteps, 3, seed, "ancestral", prediction, x_transform)
    assert_same_path(ours, theirs, rtol=1e-9, atol=1e-9)


@given(steps=steps_st, prediction=prediction_st, seed=seed_st, eta=st.floats(0.0, 1.0),
       bound=st.sampled_from(sorted(BOUNDS)))
def test_bounded_ddim_is_ddim_scheduler_with_the_clipped_model_output(steps, prediction, seed, eta, bound):
    """lincorrupt's DDIM uses the eps implied by the bounded x_hat: diffusers' use_clipped_model_output."""
    config, x_transform = BOUNDS[bound]
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    sched = make_scheduler(diffusers.DDIMScheduler, c, prediction, set_alpha_to_one=True, **config)
    sched.set_timesteps(steps)
    theirs = run_diffusers(sched, 3, seed, eta=eta, use_clipped_model_output=True)
    ours = run_lincorrupt(c, sched.timesteps, 3, seed, "ddim", prediction, x_transform, eta=eta)
    assert_same_path(ours, theirs, rtol=1e-8, atol=1e-8)


@given(steps=steps_st, prediction=prediction_st, seed=seed_st)
def test_dpmpp_2m_is_dpm_solver_multistep_scheduler(steps, prediction, seed):
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    sched = make_scheduler(diffusers.DPMSolverMultistepScheduler, c, prediction, algorithm_type="dpmsolver++",
                           solver_order=2, solver_type="midpoint", final_sigmas_type="zero")
    sched.set_timesteps(steps)
    theirs = run_diffusers(sched, 3, seed)
    ours = run_lincorrupt(c, sched.timesteps, 3, seed, "dpm++2m", prediction)
    # diffusers stores its sigmas in float32 (set_timesteps), so agreement is to float32 precision
    assert_same_path(ours, theirs, rtol=2e-5, atol=2e-5)


def third_order_step(steps, prediction, seed):
    """lincorrupt's dpm++3m path, diffusers' first three steps (orders 1, 2, 3) from the same start,
    and the x_hat'' term by which the third-order steps differ, computed from diffusers' state."""
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    sched = make_scheduler(diffusers.DPMSolverMultistepScheduler, c, prediction, algorithm_type="dpmsolver++",
                           solver_order=3, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    ours, _ = run_lincorrupt(c, sched.timesteps, 3, seed, "dpm++3m", prediction)
    latents = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=f64)
    theirs = [latents]
    for k in sched.timesteps[:3]:
        latents = sched.step(network(latents, k), k, latents).prev_sample
        theirs.append(latents)
    lam = -sched.sigmas[:4].double().log()  # diffusers' sigma is sigma_t / alpha_t, so lambda = -log(sigma)
    m2, m1, m0 = (m.double() for m in sched.model_outputs)  # its x_hat at the three evaluations
    h1, h0, h = lam[1] - lam[0], lam[2] - lam[1], lam[3] - lam[2]
    dd2 = ((m0 - m1) / h0 - (m1 - m2) / h1) / (h0 + h1)  # second divided difference: x_hat'' / 2
    c2 = h**2 / 2 - h + 1 - torch.exp(-h)  # integral_0^h e^(tau - h) tau^2 / 2 dtau
    alpha_s = (1 + sched.sigmas[3].double() ** 2) ** -0.5
    return ours, theirs, alpha_s * c2 * dd2


@given(steps=st.integers(min_value=1, max_value=40), prediction=prediction_st, seed=seed_st)
def test_dpmpp_3m_is_dpm_solver_multistep_scheduler_of_order_3_with_the_taylor_weight(steps, prediction, seed):
    """Up to four steps (orders 1, 2, 2) the whole path is diffusers'; from five steps on the
    first third-order step is diffusers' step plus the half of the x_hat'' term it leaves out:
    its D2 = h^2 dd2 is weighted by c_2(h) / h^2, the Taylor term needs 2 c_2(h) dd2."""
    if steps <= 4:
        c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
        sched = make_scheduler(diffusers.DPMSolverMultistepScheduler, c, prediction, algorithm_type="dpmsolver++",
                               solver_order=3, final_sigmas_type="zero")
        sched.set_timesteps(steps)
        ours = run_lincorrupt(c, sched.timesteps, 3, seed, "dpm++3m", prediction)
        assert_same_path(ours, run_diffusers(sched, 3, seed), rtol=2e-5, atol=2e-5)
        return
    ours, theirs, term = third_order_step(steps, prediction, seed)
    for step in range(3):
        torch.testing.assert_close(ours[step], theirs[step], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ours[3], theirs[3] + term, rtol=2e-5, atol=2e-5)


def test_the_third_order_term_that_differs_from_diffusers_is_not_lost_in_the_tolerance():
    _, _, term = third_order_step(5, "eps", 0)
    assert float(term.abs().max()) > 0.1
