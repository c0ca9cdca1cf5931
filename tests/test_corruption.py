"""The generic process: every formula against an independent reference.

References are written out here in their textbook form (VDM, Ho et al. 2020), or computed
from the joint Gaussian, in float64, never taken from lincorrupt's own output.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS, SHAPE

f64 = torch.float64
times = st.floats(0.0, 1.0, allow_nan=False)


def sorted_times(*values, gap=1e-3):
    values = sorted(values)
    for a, b in zip(values, values[1:]):
        if b - a < gap:
            return None
    return [torch.tensor([v], dtype=f64) for v in values]


def posterior_case(name, s, t, seed, gap=1e-3):
    """A corruption, ordered times s < t, a clean x, an arbitrary z_t and (alpha, sigma) at s and t."""
    pair = sorted_times(s, t, gap=gap)
    assume(pair is not None)
    s, t = pair
    c = CORRUPTIONS[name]()
    g = torch.Generator().manual_seed(seed)
    x, z_t = torch.randn(1, *SHAPE, generator=g, dtype=f64), torch.randn(1, *SHAPE, generator=g, dtype=f64)
    return c, s, t, x, z_t, full(c, s), full(c, t)


def full(c, t):
    alpha, sigma = c.alpha_sigma(t)
    return alpha.expand(t.shape[0], *SHAPE), sigma.expand(t.shape[0], *SHAPE)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@given(s=times, t=times, seed=st.integers(0, 1000))
def test_transition_and_posterior_equal_the_vdm_closed_forms(name, s, t, seed):
    c, s, t, x, z_t, (a_s, s_s), (a_t, s_t) = posterior_case(name, s, t, seed)
    # the textbook closed forms (Kingma et al. 2021, eq. 32-33), naive form
    alpha_ts = a_t / a_s
    var_ts = s_t**2 - alpha_ts**2 * s_s**2
    post_var = 1 / (1 / s_s**2 + alpha_ts**2 / var_ts)
    u_t, u_x = c.basis.to_basis(z_t), c.basis.to_basis(x)
    post_mean = post_var * (alpha_ts / var_ts * u_t + a_s / s_s**2 * u_x)

    tr = c.transition(s, t)
    post = c.posterior(z_t, x, s, t)
    # where the naive form is usable: no underflow, no cancellation
    ok = torch.isfinite(post_mean) & (a_t > 1e-150) & (var_ts > 1e-12 * s_t**2)
    torch.testing.assert_close(tr.alpha.expand_as(alpha_ts)[ok], alpha_ts[ok], rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(tr.var.expand_as(var_ts)[ok], var_ts[ok], rtol=1e-7, atol=1e-14)
    torch.testing.assert_close(post.var[ok], post_var[ok], rtol=1e-7, atol=1e-14)
    torch.testing.assert_close(post.mean[ok], post_mean[ok], rtol=1e-7, atol=1e-9)


def test_identity_basis_scalar_schedule_equals_vdm():
    """DDPM-cosine in VDM's variance-preserving parameterisation: alpha^2 = sigmoid(-gamma)."""
    c = lc.DDPM(SHAPE, schedule="cosine")
    t = torch.tensor([0.2, 0.5, 0.9], dtype=f64)
    limit_max = math.atan(math.exp(-5.0))
    limit_min = math.atan(math.exp(5.0)) - limit_max
    logsnr = -2 * np.log(np.tan(limit_min * t.numpy() + limit_max))
    alpha, sigma = c.alpha_sigma(t)
    np.testing.assert_allclose(alpha.flatten().numpy() ** 2, 1 / (1 + np.exp(-logsnr)), rtol=1e-12)
    np.testing.assert_allclose(sigma.flatten().numpy() ** 2, 1 / (1 + np.exp(logsnr)), rtol=1e-12)


def test_ddpm_linear_is_exact_on_the_discrete_grid_and_gives_ho_posterior():
    T = 1000
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    betas = np.linspace(1e-4, 0.02, T)
    alphabar = np.cumprod(1 - betas)  # alphabar[i - 1] is Ho's alphabar_i
    i = np.array([1, 2, 10, 500, 999, 1000])
    alpha, sigma = c.alpha_sigma(torch.tensor(i / T, dtype=f64))
    np.testing.assert_allclose(alpha.flatten().numpy() ** 2, alphabar[i - 1], rtol=1e-10)
    np.testing.assert_allclose(sigma.flatten().numpy() ** 2, 1 - alphabar[i - 1], rtol=1e-10)

    g = torch.Generator().manual_seed(0)
    for step in [1, 2, 37, 500, 1000]:
        x0 = torch.randn(1, *SHAPE, generator=g, dtype=f64)
        xt = torch.randn(1, *SHAPE, generator=g, dtype=f64)
        post = c.posterior(xt, x0, torch.tensor([(step - 1) / T], dtype=f64), torch.tensor([step / T], dtype=f64))
        ab_t = alphabar[step - 1]
        ab_prev = alphabar[step - 2] if step > 1 else 1.0
        beta = betas[step - 1]
        # Ho et al. (2020), eq. 7
        mean = (np.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 + (np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * xt
        beta_tilde = (1 - ab_prev) / (1 - ab_t) * beta
        torch.testing.assert_close(post.mean, mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(post.var, torch.full_like(post.var, beta_tilde), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@given(r=times, s=times, t=times)
def test_chapman_kolmogorov(name, r, s, t):
    triple = sorted_times(r, s, t)
    assume(triple is not None)
    r, s, t = triple
    c = CORRUPTIONS[name]()
    sr, ts, tr = c.transition(r, s), c.transition(s, t), c.transition(r, t)
    torch.testing.assert_close(ts.alpha * sr.alpha, tr.alpha, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(ts.alpha**2 * sr.var + ts.var, tr.var, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@given(s=times, t=times, seed=st.integers(0, 1000))
def test_posterior_is_the_conditional_of_the_joint_gaussian(name, s, t, seed):
    c, s, t, x, z_t, (a_s, s_s), (a_t, s_t) = posterior_case(name, s, t, seed, gap=1e-2)
    # Joint of (u_s, u_t) given x, per coordinate: u_t = alpha_{t|s} u_s + noise, so
    # Cov(u_s, u_t) = (alpha_t / alpha_s) sigma_s^2. Condition with the block formula.
    u_x, u_t = c.basis.to_basis(x), c.basis.to_basis(z_t)
    post = c.posterior(z_t, x, s, t)
    for idx in np.ndindex(*SHAPE):
        i = (0, *idx)
        if a_s[i] < 1e-150:
            continue
        cov = np.array([[s_s[i] ** 2, a_t[i] / a_s[i] * s_s[i] ** 2],
                        [a_t[i] / a_s[i] * s_s[i] ** 2, s_t[i] ** 2]])
        mu = np.array([a_s[i] * u_x[i], a_t[i] * u_x[i]])
        gain = cov[0, 1] / cov[1, 1]
        np.testing.assert_allclose(post.mean[i].item(), mu[0] + gain * (u_t[i].item() - mu[1]), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(post.var[i].item(), cov[0, 0] - gain * cov[1, 0], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_diffuse_has_the_marginal_moments(name):
    c = CORRUPTIONS[name]()
    n = 20000
    x = torch.randn(1, *SHAPE, dtype=f64).expand(n, *SHAPE)
    t = torch.full((n,), 0.3, dtype=f64)
    z, noise = c.diffuse(x, t, generator=torch.Generator().manual_seed(1))
    u = c.basis.to_basis(z)
    alpha, sigma = full(c, t[:1])
    mean_err = (u.mean(0) - alpha[0] * c.basis.to_basis(x[:1])[0]).abs()
    assert (mean_err < 5 * sigma[0] / math.sqrt(n)).all()
    torch.testing.assert_close(u.std(0), sigma[0], rtol=0.05, atol=0)
    # with given noise it is deterministic: z = V(alpha V^T x + sigma V^T eps)
    z2, same = c.diffuse(x[:4], t[:4], noise=noise[:4])
    assert same is noise[:4] or torch.equal(same, noise[:4])
    torch.testing.assert_close(z2, z[:4])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@given(t=st.floats(0.01, 0.99))
def test_log_snr_derivative_matches_finite_differences(name, t):
    c = CORRUPTIONS[name]()
    if name == "ddpm-linear":  # piecewise linear: compare away from the kinks at i / T
        t = (math.floor(t * 1000) + 0.5) / 1000
    h = 1e-6
    tt = torch.tensor([t], dtype=f64)
    fd = (c.log_snr(tt + h) - c.log_snr(tt - h)) / (2 * h)
    torch.testing.assert_close(c.d_log_snr_dt(tt), fd, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the three instances
def test_blurring_without_blur_is_cosine_ddpm():
    t = torch.linspace(0, 1, 101, dtype=f64)
    blur = lc.BlurringDiffusion(SHAPE, sigma_blur_max=0.0)
    ddpm = lc.DDPM(SHAPE, schedule="cosine")
    for a, b in zip(blur.alpha_sigma(t), ddpm.alpha_sigma(t)):
        torch.testing.assert_close(a.expand(101, *SHAPE), b.expand(101, *SHAPE), rtol=1e-12, atol=1e-15)


def test_blurring_matches_the_paper_pseudocode():
    """Hoogeboom & Salimans (2023), the pseudo-code of appendix A, transcribed with numpy."""
    h, w, blur_max, min_scale = 4, 6, 20.0, 1e-3
    c = lc.BlurringDiffusion((2, h, w), sigma_blur_max=blur_max, min_scale=min_scale)
    for t in [0.0, 0.1, 0.5, 0.77, 1.0]:
        limit_max = np.arctan(np.exp(-0.5 * 10))
        limit_min = np.arctan(np.exp(-0.5 * -10)) - limit_max
        logsnr = -2 * np.log(np.tan(limit_min * t + limit_max))
        a, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
        sigma_blur = blur_max * np.sin(t * np.pi / 2) ** 2
        freqs = (np.pi * np.arange(h) / h)[:, None] ** 2 + (np.pi * np.arange(w) / w)[None, :] ** 2
        d = (1 - min_scale) * np.exp(-freqs * sigma_blur**2 / 2) + min_scale
        alpha, sig = c.alpha_sigma(torch.tensor([t], dtype=f64))
        np.testing.assert_allclose(alpha[0, 0].numpy(), a * d, rtol=1e-6)
        np.testing.assert_allclose(sig.flatten().numpy(), sigma, rtol=1e-10)


def test_blurring_alpha_is_non_increasing_in_t():
    c = lc.BlurringDiffusion(SHAPE)
    alpha, _ = c.alpha_sigma(torch.linspace(0, 1, 501, dtype=f64))
    assert (alpha[1:] <= alpha[:-1]).all()


def test_ihdm_levels_match_the_paper_configuration():
    K = 200
    c = lc.IHDM((3, 8, 8), sigma=0.01, sigma_blur_max=24.0, num_steps=K)
    sigma_b = np.exp(np.linspace(np.log(0.5), np.log(24.0), K))  # levels k = 1..K
    freqs = (np.pi * np.arange(8) / 8)[:, None] ** 2 + (np.pi * np.arange(8) / 8)[None, :] ** 2
    for k in [1, 2, 100, 200]:
        alpha, sigma = c.alpha_sigma(torch.tensor([k / K], dtype=f64))
        np.testing.assert_allclose(alpha[0, 0].numpy(), np.exp(-freqs * sigma_b[k - 1] ** 2 / 2),
                                   rtol=1e-5, atol=1e-300)
        np.testing.assert_allclose(sigma.flatten().numpy(), 0.02)  # 0.01 on [0, 1] = 0.02 on [-1, 1]
    alpha0, _ = c.alpha_sigma(torch.zeros(1, dtype=f64))
    assert torch.all(alpha0 == 1)  # level 0: the clean image


# ---------------------------------------------------------------- validity
@given(blur=st.floats(0, 60), min_scale=st.floats(0, 0.9), lo=st.floats(-20, 0), span=st.floats(0.5, 30))
def test_blurring_is_valid_over_its_parameter_space(blur, min_scale, lo, span):
    lc.BlurringDiffusion(SHAPE, sigma_blur_max=blur, min_scale=min_scale, logsnr_min=lo, logsnr_max=lo + span)


@given(sigma=st.floats(1e-4, 1.0), smin=st.floats(0.05, 5), ratio=st.floats(1, 100), k=st.integers(1, 1000))
def test_ihdm_is_valid_over_its_parameter_space(sigma, smin, ratio, k):
    lc.IHDM(SHAPE, sigma=sigma, sigma_blur_min=smin, sigma_blur_max=smin * ratio, num_steps=k)


@given(start=st.floats(1e-5, 1e-2), span=st.floats(0, 0.5), steps=st.integers(1, 2000))
def test_ddpm_is_valid_over_its_parameter_space(start, span, steps):
    lc.DDPM(SHAPE, schedule="linear", num_steps=steps, beta_start=start, beta_end=start + span)


class SharpeningDiffusion(lc.DiagonalizableCorruption):
    """Invalid on purpose: coordinate (0, 1, 2) regains signal after t = 1/2."""

    def __init__(self):
        super().__init__(SHAPE, lc.IdentityBasis())

    def _alpha_sigma(self, t):
        t = t.view(-1, 1, 1, 1)
        alpha = torch.cos(t * math.pi / 2).expand(-1, *SHAPE).clone()
        alpha[:, 0, 1, 2] = torch.where(t.flatten() > 0.5, 1.0 - t.flatten() / 2, alpha[:, 0, 1, 2])
        return alpha, torch.sin(t * math.pi / 2).clamp(min=1e-3).expand(-1, *SHAPE)


def test_an_invalid_corruption_is_refused_naming_coordinate_and_times():
    with pytest.raises(lc.InvalidCorruptionError, match=r"coordinate \(0, 1, 2\) between t=0\.5"):
        SharpeningDiffusion()


def test_a_corruption_without_a_schedule_is_refused():
    class NoSchedule(lc.DiagonalizableCorruption):
        def __init__(self):
            super().__init__(SHAPE, lc.IdentityBasis())

    with pytest.raises(TypeError, match=r"must implement the hook _alpha_sigma\(t\) or _log_alpha_sigma\(t\)"):
        NoSchedule()


@pytest.mark.parametrize("public", ["alpha_sigma", "log_alpha_sigma"])
def test_overriding_the_checked_public_schedule_is_refused_naming_the_hook(public):
    """The library calls the hook, so an override of the public method would be silently ignored by
    samplers and losses: it is refused when the corruption is built."""
    def schedule(self, t):
        t = t.view(-1, 1, 1, 1)
        return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)

    Overriding = type("Overriding", (RecordingTimes,), {public: schedule})
    with pytest.raises(TypeError, match=f"Overriding overrides {public}\\(t\\).*implement the hook _{public}"):
        Overriding()


class RecordingTimes(lc.DiagonalizableCorruption):
    """Records what its hook receives."""

    def __init__(self):
        super().__init__(SHAPE, lc.IdentityBasis())

    def _alpha_sigma(self, t):
        self.received = t
        t = t.view(-1, 1, 1, 1)
        return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2).clamp(min=1e-3)


@pytest.mark.parametrize("public", ["alpha_sigma", "log_alpha_sigma"])
def test_the_public_schedule_hands_its_hook_checked_times(public):
    """A scalar, a float16 or a double time reaches the hook as a (B,) tensor of at least float32, in
    its own dtype otherwise; the results are the hook's (exponentiated or logged as asked)."""
    c = RecordingTimes()
    for t, shape, dtype in ((0.25, (1,), torch.float32), (torch.tensor([0.5, 0.75], dtype=torch.float16), (2,),
                                                          torch.float32), (torch.tensor([0.3], dtype=f64), (1,), f64)):
        first, second = getattr(c, public)(t)
        assert (tuple(c.received.shape), c.received.dtype) == (shape, dtype)
        expected = (torch.cos(c.received * math.pi / 2), torch.sin(c.received * math.pi / 2).clamp(min=1e-3))
        if public == "log_alpha_sigma":
            expected = tuple(e.log() for e in expected)
        torch.testing.assert_close(first.flatten(), expected[0])
        torch.testing.assert_close(second.flatten(), expected[1])


# ---------------------------------------------------------------- predictions and loss
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@given(t=st.floats(0.02, 0.98), seed=st.integers(0, 1000))
def test_prediction_conversions_recover_x_and_eps_and_are_mutual_inverses(name, t, seed):
    c = CORRUPTIONS[name]()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *SHAPE, generator=g, dtype=f64)
    tt = torch.full((3,), t, dtype=f64)
    if name == "ihdm":
        tt = tt * 0.1  # eps -> x divides by alpha_t, which underflows at strong blur
    z, eps = c.diffuse(x, tt, generator=g)
    torch.testing.assert_close(c.convert(eps, z, tt, "eps", "x"), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c.convert(x, z, tt, "x", "eps"), eps, rtol=1e-6, atol=1e-6)
    v = c.convert(eps, z, tt, "eps", "v")
    for kind, value in (("x", x), ("eps", eps)):
        torch.testing.assert_close(c.convert(v, z, tt, "v", kind), value, rtol=1e-6, atol=1e-6)


def test_v_is_salimans_ho_velocity_for_variance_preserving_ddpm():
    c = lc.DDPM(SHAPE, schedule="cosine")
    x, eps = torch.randn(2, *SHAPE, dtype=f64), torch.randn(2, *SHAPE, dtype=f64)
    t = torch.tensor([0.3, 0.8], dtype=f64)
    z, _ = c.diffuse(x, t, noise=eps)
    alpha, sigma = c.alpha_sigma(t)
    torch.testing.assert_close(c.convert(eps, z, t, "eps", "v"), alpha * eps - sigma * x)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
def test_oracle_model_has_zero_loss(name, prediction):
    c = CORRUPTIONS[name]()
    x = torch.randn(4, *SHAPE, dtype=f64)
    noise = torch.randn(4, *SHAPE, dtype=f64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=f64) * (0.1 if name == "ihdm" else 1)
    alpha, sigma = c.alpha_sigma(t)

    def oracle(z, tt):  # knows x and noise; written from the definitions, not from lincorrupt
        u_x, u_eps = c.basis.to_basis(x), c.basis.to_basis(noise)
        u = {"eps": u_eps, "x": u_x,
             "v": (alpha * u_eps - sigma * u_x) / torch.sqrt(alpha**2 + sigma**2)}[prediction]
        return c.basis.from_basis(u)

    loss = lc.diffusion_loss(oracle, c, x, prediction=prediction, t=t, noise=noise)
    assert loss.item() < 1e-20
    wrong = lc.diffusion_loss(lambda z, tt: oracle(z, tt) + 0.1, c, x, prediction=prediction, t=t, noise=noise)
    assert wrong.item() == pytest.approx(0.01, rel=1e-6)


def test_elbo_weighting_is_minus_half_snr_derivative_in_x_units():
    c = lc.DDPM(SHAPE, schedule="cosine")
    t = torch.tensor([0.25, 0.5], dtype=f64)
    h = 1e-6

    def snr(tt):
        a, s = c.alpha_sigma(tt)
        return (a / s) ** 2

    d_snr = (snr(t + h) - snr(t - h)) / (2 * h)
    w_x = lc.elbo_weighting(c, t, lc.PREDICTIONS["x"])
    torch.testing.assert_close(w_x, -0.5 * d_snr, rtol=1e-5, atol=0)
    # eps error e is an x error (sigma / alpha) e
    w_eps = lc.elbo_weighting(c, t, lc.PREDICTIONS["eps"])
    torch.testing.assert_close(w_eps, -0.5 * d_snr / snr(t), rtol=1e-5, atol=0)
    # the weighted loss of a model off by delta in x is the ELBO integrand -1/2 SNR' delta^2 (summed)
    x = torch.randn(2, *SHAPE, dtype=f64)
    loss = lc.diffusion_loss(lambda z, tt: c.convert(torch.zeros_like(z), z, tt, "eps", "x") * 0 + x + 0.1, c, x,
                             prediction="x", weighting=lc.elbo_weighting, t=t, reduction="none")
    torch.testing.assert_close(loss, (-0.5 * d_snr * 0.01).flatten(), rtol=1e-5, atol=0)


# ---------------------------------------------------------------- validity against a reference
def reference_refusal(c, num_times=1001, chunk=64):
    """The Markov validity check written out naively: every coordinate expanded over channels,
    64 times at a time, alpha and sigma exponentiated in full. Returns the error message or None."""
    times = torch.linspace(0, 1, num_times, dtype=f64)
    previous = None
    for start in range(0, num_times, chunk):
        t = times[start:start + chunk]
        log_alpha, log_sigma = c.log_alpha_sigma(t)
        for name, value in (("alpha", log_alpha.exp()), ("sigma", log_sigma.exp())):
            bad = ~torch.isfinite(value) | (value < 0)
            if bad.any():
                k, *coord = (int(i) for i in bad.nonzero()[0])
                return (f"{name}_t is not a finite non-negative number; at t={t[k].item():.6g}, "
                        f"basis coordinate {tuple(coord)} the value is {value.expand(bad.shape)[(k, *coord)].item()}")
        zero = (log_sigma == -math.inf) & (t > 0).view(-1, 1, 1, 1)
        if zero.any():
            return "sigma_t = 0 at t > 0"
        if ((log_alpha == -math.inf) & (t < 1).view(-1, 1, 1, 1)).any():  # log-SNR -inf before the end
            return "alpha_t = 0 at t < 1"
        logsnr = (2.0 * (log_alpha - log_sigma)).expand(t.shape[0], *c.shape)
        if previous is not None:
            logsnr, t = torch.cat([previous, logsnr]), torch.cat([times[start - 1:start], t])
        rising = logsnr[1:] > logsnr[:-1] + 1e-9 * (1 + logsnr[:-1].abs().nan_to_num(0, 0, 0))
        if rising.any():
            k, *coord = (int(i) for i in rising.nonzero()[0])
            return f"coordinate {tuple(coord)} between t={t[k].item():.6g} and t={t[k + 1].item():.6g}"
        previous = logsnr[-1:]
    return None


class TabulatedCorruption(lc.DiagonalizableCorruption):
    """(log alpha, log sigma) looked up on the 1001 times of the validity check."""

    def __init__(self, log_alpha, log_sigma):
        super().__init__(SHAPE, lc.IdentityBasis())
        self.register_buffer("table_alpha", log_alpha)
        self.register_buffer("table_sigma", log_sigma)

    def _log_alpha_sigma(self, t):
        k = torch.round(t * (len(self.table_alpha) - 1)).long()
        return self.table_alpha[k], self.table_sigma[k]


FAULTS = {  # a fault at time index k, coordinate i of the flattened coefficient, of size `size`
    "rise": lambda la, ls, k, i, size: la[k].view(-1).__setitem__(  # half log-SNR rises by `size`
        i, (la[k - 1] - ls[k - 1] + ls[k]).expand_as(la[k]).reshape(-1)[i] + size),
    "nan": lambda la, ls, k, i, size: la[k].view(-1).__setitem__(i, math.nan),
    "alpha-overflow": lambda la, ls, k, i, size: la[k].view(-1).__setitem__(i, 700 + 20 * size),
    "sigma-zero": lambda la, ls, k, i, size: ls[k].view(-1).__setitem__(i % ls[k].numel(), -math.inf),
    # allowed at t = 1 only
    "alpha-zero": lambda la, ls, k, i, size: la[k:].view(len(la) - k, -1)[:, i].fill_(-math.inf),
    "none": lambda la, ls, k, i, size: None,
}


@settings(max_examples=100)
@given(fault=st.sampled_from(sorted(FAULTS)), k=st.integers(0, 1000), i=st.integers(0, 47),
       size=st.sampled_from([0.0, 1e-12, 1e-9, 3e-9, 1e-8, 1e-3, 1.0, 10.0]), per_channel=st.booleans(),
       chunk=st.sampled_from([3, 7, 64, 1001]))
def test_validity_check_refuses_exactly_what_the_naive_check_refuses(fault, k, i, size, per_channel, chunk):
    """A decreasing log-SNR with one fault: refused (with the same message when the chunks match)
    iff the naive check refuses it, whatever the chunking and whether channels share coefficients."""
    from lincorrupt import corruption as module
    t = torch.linspace(0, 1, 1001, dtype=f64).view(-1, 1, 1, 1)
    coef = (1, *SHAPE[1:]) if not per_channel else SHAPE
    slope = torch.linspace(1, 3, math.prod(coef), dtype=f64).view(1, *coef)
    logsnr = 8 - 16 * t * slope
    log_alpha, log_sigma = [v.clone() for v in lc.schedules.vp_log_alpha_sigma(logsnr)]
    log_sigma = log_sigma[..., :1, :1].clone() if not per_channel else log_sigma  # (N, 1, 1, 1) or full
    log_alpha[0] = 0.0
    log_sigma[0] = -math.inf  # a noise-free start
    k = max(k, 1) if fault == "rise" else k
    FAULTS[fault](log_alpha, log_sigma, k, i % log_alpha[0].numel(), size)
    expected = reference_refusal(_Table(log_alpha, log_sigma))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "VALIDITY_CHUNK_ELEMENTS", chunk * math.prod(SHAPE))
        if expected is None:
            TabulatedCorruption(log_alpha, log_sigma)
            return
        with pytest.raises(lc.InvalidCorruptionError) as refused:
            TabulatedCorruption(log_alpha, log_sigma)
    if chunk == 64:
        assert expected in str(refused.value)


class _Table:
    """The same table without the base class (and so without its check), for the reference."""

    def __init__(self, log_alpha, log_sigma):
        self.shape, self.log_alpha, self.log_sigma = SHAPE, log_alpha, log_sigma

    def log_alpha_sigma(self, t):
        k = torch.round(t * (len(self.log_alpha) - 1)).long()
        return self.log_alpha[k], self.log_sigma[k]


def test_vp_log_alpha_sigma_is_half_log_sigmoid_with_its_derivative():
    """log alpha^2 = log sigmoid(l), log sigma^2 = log sigmoid(-l), against numpy's logaddexp,
    over the whole range (underflowing tails and +-inf included), and d/dl = sigmoid(-+l) / 2 at l = 0."""
    logsnr = torch.tensor([-np.inf, -800, -40, -3, -1e-3, 0, 1e-3, 2, 40, 800, np.inf], dtype=f64)
    log_alpha, log_sigma = lc.schedules.vp_log_alpha_sigma(logsnr)
    np.testing.assert_allclose(2 * log_alpha.numpy(), -np.logaddexp(0, -logsnr.numpy()), rtol=1e-15, atol=0)
    np.testing.assert_allclose(2 * log_sigma.numpy(), -np.logaddexp(0, logsnr.numpy()), rtol=1e-15, atol=0)
    zero, one = torch.zeros(1, dtype=f64), torch.ones(1, dtype=f64)
    _, (d_alpha, d_sigma) = torch.func.jvp(lc.schedules.vp_log_alpha_sigma, (zero,), (one,))
    assert d_alpha.item() == 0.25 and d_sigma.item() == -0.25


# ---------------------------------------------------------------- log-space blur, any min_scale
@given(min_scale=st.sampled_from([0.0, 1e-300, 1e-12, 1e-3, 0.5]), t=times)
def test_blurring_log_d_equals_the_50_digit_formula_for_any_min_scale(min_scale, t):
    """log alpha_t = log a_t + log((1 - m) exp(-lambda tau_t) + m) against mpmath at 50 digits, also
    where exp(-lambda tau_t) underflows in float64 (t near 1) and for m = 0 (pure heat dissipation)."""
    import mpmath
    mpmath.mp.dps = 50
    c = lc.BlurringDiffusion(SHAPE, min_scale=min_scale)
    tt = torch.tensor([t], dtype=f64)
    log_alpha, _ = c.log_alpha_sigma(tt)
    log_a = 0.5 * -np.logaddexp(0, -lc.schedules.cosine_logsnr(tt).item())  # log sqrt(sigmoid(logsnr))
    tau = mpmath.mpf(20.0) ** 2 * mpmath.sin(mpmath.mpf(t) * mpmath.pi / 2) ** 4 / 2
    freqs = ((np.pi * np.arange(SHAPE[1]) / SHAPE[1])[:, None] ** 2
             + (np.pi * np.arange(SHAPE[2]) / SHAPE[2])[None, :] ** 2)
    m = mpmath.mpf(min_scale)
    expected = [[float(log_a + mpmath.log((1 - m) * mpmath.exp(-mpmath.mpf(f) * tau) + m)) for f in row]
                for row in freqs]
    np.testing.assert_allclose(log_alpha[0, 0].numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_blurring_without_a_floor_gives_finite_posteriors_and_samples(prediction):
    """min_scale = 0: high frequencies reach alpha_t ~ exp(-3900), far below float64's range, but the
    coefficients live in log space, so transitions, posteriors and x/v sampling stay finite."""
    c = lc.BlurringDiffusion(SHAPE, min_scale=0.0)
    x = torch.randn(2, *SHAPE, dtype=f64)
    z, _ = c.diffuse(x, 1.0)
    post, tr = c.posterior(z, x, 0.9, 1.0), c.transition(0.9, 1.0)
    for value in (*post, *tr):
        assert torch.isfinite(value).all()
    assert (post.var >= 0).all() and (tr.var >= 0).all()

    def oracle(z_t, t):  # the exact prediction of x = 0, the data's mean
        return c.convert(torch.zeros_like(z_t), z_t, t, source="x", target=prediction)

    assert torch.isfinite(lc.sample(oracle, c, 2, steps=20, prediction=prediction)).all()


class VanishingSignal(lc.DiagonalizableCorruption):
    """Invalid on purpose: alpha_t reaches exactly 0 at t = 0.8, before the end of the process."""

    def __init__(self, end=0.8):
        super().__init__(SHAPE, lc.IdentityBasis())
        self.end = end

    def _alpha_sigma(self, t):
        t = t.view(-1, 1, 1, 1)
        return torch.cos((t / self.end).clamp(max=1) * math.pi / 2) * (t < self.end), (0.01 + t).clamp(max=1)


def test_a_signal_lost_before_t_1_is_refused_but_at_t_1_accepted():
    with pytest.raises(lc.InvalidCorruptionError, match=r"alpha_t = 0 at t < 1 .* at t=0\.8"):
        VanishingSignal()
    VanishingSignal(end=1.0)  # alpha_1 = 0 exactly: the prior alone carries nothing of x


# ---------------------------------------------------------------- precision of the coefficients
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("cast", [torch.nn.Module.half, torch.nn.Module.bfloat16, torch.nn.Module.float])
def test_casting_the_module_keeps_its_coefficients_exact(name, cast):
    """.half(), .bfloat16() and .float() never narrow the schedule's tables: diffuse, posterior and the
    coefficients are what the uncast corruption gives (float64 times, float32 data alike)."""
    exact, cast_c = CORRUPTIONS[name](), cast(CORRUPTIONS[name]())
    for (n, a), (_, b) in zip(exact.named_buffers(), cast_c.named_buffers()):
        assert a.dtype == b.dtype, n
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=f64)
    for a, b in zip(exact.log_alpha_sigma(t), cast_c.log_alpha_sigma(t)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x, noise = torch.randn(4, *SHAPE), torch.randn(4, *SHAPE)
    torch.testing.assert_close(cast_c.diffuse(x, t.float(), noise=noise)[0],
                               exact.diffuse(x, t.float(), noise=noise)[0], rtol=0, atol=0)


def test_casting_up_widens_and_moving_moves():
    c = lc.IHDM(SHAPE, prior=lc.GaussianPrior(torch.zeros(SHAPE), torch.ones(SHAPE))).double()
    assert c.prior.mean.dtype == f64 and c.basis.frequencies_squared.dtype == f64
    c = c.to("meta")
    assert all(b.device.type == "meta" for b in c.buffers())


@pytest.mark.parametrize("name", ["ihdm", "blurring", "soft"])
def test_the_dct_frequencies_live_in_the_basis_and_older_files_still_load(name):
    """``lambda`` is the DCT basis's float64 buffer, the closed form ``(pi k / H)^2 + (pi l / W)^2``, derived
    from H and W and so not saved; a state dict written when each corruption saved its own copy still
    rebuilds the same schedule."""
    from lincorrupt.config import build_module, module_spec

    c = CORRUPTIONS[name]()
    h, w = SHAPE[-2:]
    k, j = torch.meshgrid(torch.arange(h, dtype=f64), torch.arange(w, dtype=f64), indexing="ij")
    torch.testing.assert_close(c.basis.frequencies_squared, (math.pi * k / h) ** 2 + (math.pi * j / w) ** 2,
                               rtol=1e-15, atol=0)
    assert not any("frequencies_squared" in key for key in c.state_dict())
    older = {**c.state_dict(), "frequencies_squared": c.basis.frequencies_squared.clone()}
    rebuilt = build_module(module_spec(c, older), older)
    t = torch.linspace(0, 1, 9, dtype=f64)
    for a, b in zip(rebuilt.log_alpha_sigma(t), c.log_alpha_sigma(t)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
