"""Samplers: reductions to the published algorithms and an end-to-end check with the exact
denoiser of Gaussian data, whose samples must reproduce the data's mean and covariance."""

import numpy as np
import pytest
import torch

import lincorrupt as lc
from helpers.gaussian import SHAPE, D, make
from lincorrupt.sampling import ancestral, ddim

f64 = torch.float64


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
@pytest.mark.parametrize("name", ["ddpm", "blurring", "ihdm"])
def test_exact_denoiser_samples_have_the_sampler_moments_and_these_converge_to_the_data(name, method):
    c, truth = make(name)
    n, steps = 4000, 100
    x = lc.sample(truth.model, c, n, steps=steps, prediction="x", method=method,
                  generator=torch.Generator().manual_seed(2), dtype=f64).reshape(n, D).numpy()
    # 1. the samples have the moments of the algorithm, within Monte Carlo error
    mean, cov = truth.sampler_moments(steps, method)
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(x.mean(0) - mean) / se_mean).max() < 4.5
    assert (np.abs(np.cov(x.T) - cov) / se_cov).max() < 4.5
    # 2. the algorithm reproduces the data as the grid is refined: the plug-in denoiser
    # under-disperses by O(1/steps), so the error shrinks with every refinement
    errors = []
    for k in (50, 200, 800):
        mean_k, cov_k = truth.sampler_moments(k, method)
        errors.append(np.linalg.norm(cov_k - truth.cov) / np.linalg.norm(truth.cov))
        np.testing.assert_allclose(mean_k, truth.m, atol=1e-6)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.03, errors


def test_ddim_with_eta_one_is_ancestral_sampling():
    c = lc.BlurringDiffusion(SHAPE)
    model = lambda z, t: torch.tanh(z) * t.view(-1, 1, 1, 1)  # any deterministic model
    a = lc.sample(model, c, 5, steps=20, method="ancestral", generator=torch.Generator().manual_seed(0), dtype=f64)
    b = lc.sample(model, c, 5, steps=20, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(0), dtype=f64)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_step_in_the_identity_basis_is_song_et_al_eq_12():
    """One DDIM step, written out from Song et al. (2021) eq. 12 with alphabar = alpha^2."""
    c = lc.DDPM(SHAPE, schedule="linear")
    g = torch.Generator().manual_seed(0)
    eps_hat = torch.randn(3, *SHAPE, generator=g, dtype=f64)
    z_t = torch.randn(3, *SHAPE, generator=g, dtype=f64)
    t, s = 0.6, 0.55
    eta = 0.7
    times = torch.tensor([t, s, 0.0], dtype=f64)
    captured = []

    def model(z, tt):
        captured.append(z.clone())
        return eps_hat

    # a grid that starts at t < 1 from a given z_t: the sampler function itself (identity basis: u = z)
    ddim(lc.Denoiser(model, c, "eps"), c, z_t, times, generator=torch.Generator().manual_seed(5), eta=eta)
    ab_t = c.alpha_sigma(torch.tensor([t], dtype=f64))[0].item() ** 2
    ab_s = c.alpha_sigma(torch.tensor([s], dtype=f64))[0].item() ** 2
    sigma = eta * np.sqrt((1 - ab_s) / (1 - ab_t)) * np.sqrt(1 - ab_t / ab_s)
    x0 = (z_t - np.sqrt(1 - ab_t) * eps_hat) / np.sqrt(ab_t)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=f64)
    expected = np.sqrt(ab_s) * x0 + np.sqrt(1 - ab_s - sigma**2) * eps_hat + sigma * noise
    torch.testing.assert_close(captured[1], expected, rtol=1e-9, atol=1e-9)


def test_ancestral_step_in_the_identity_basis_is_ho_et_al_algorithm_2():
    T = 1000
    c = lc.DDPM(SHAPE, schedule="linear", num_steps=T)
    g = torch.Generator().manual_seed(0)
    eps_hat = torch.randn(2, *SHAPE, generator=g, dtype=f64)
    captured = []
    model = lambda z, tt: (captured.append(z.clone()), eps_hat)[1]
    start_and_noise = torch.Generator().manual_seed(3)
    z_t = torch.randn(2, *SHAPE, generator=start_and_noise, dtype=f64)
    times = torch.tensor([500, 499, 0], dtype=f64) / T
    ancestral(lc.Denoiser(model, c, "eps"), c, z_t, times, generator=start_and_noise)
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    i = 500
    replay = torch.Generator().manual_seed(3)
    assert torch.equal(torch.randn(2, *SHAPE, generator=replay, dtype=f64), z_t)
    noise = torch.randn(2, *SHAPE, generator=replay, dtype=f64)  # the sampler's draw after z_t
    beta, a = betas[i - 1], 1 - betas[i - 1]
    sigma = np.sqrt((1 - ab[i - 2]) / (1 - ab[i - 1]) * beta)  # beta_tilde
    expected = (z_t - beta / np.sqrt(1 - ab[i - 1]) * eps_hat) / np.sqrt(a) + sigma * noise
    torch.testing.assert_close(captured[1], expected, rtol=1e-9, atol=1e-9)


def test_last_step_returns_the_denoised_mean_without_noise():
    c = lc.BlurringDiffusion(SHAPE)
    target = torch.randn(1, *SHAPE)
    x = lc.sample(lambda z, t: target.expand_as(z), c, 4, steps=3, prediction="x",
                  generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, target.expand(4, *SHAPE))


def test_sampling_is_reproducible_with_a_generator():
    c = lc.DDPM(SHAPE)
    model = lambda z, t: 0.5 * z
    a = lc.sample(model, c, 3, steps=10, generator=torch.Generator().manual_seed(7))
    b = lc.sample(model, c, 3, steps=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
@pytest.mark.parametrize("prediction", ["x", "eps"])
def test_a_sampler_converts_the_model_output_only_to_the_forms_it_uses(method, prediction, monkeypatch):
    """Every sampler steps with x_hat alone (DDIM with the noise that x_hat implies), so a model's output is
    never converted to eps. Each sampler evaluates the model once per interval."""
    calls = {"to_x": 0, "to_eps": 0, "model": 0}
    kind = type(lc.PREDICTIONS[prediction])

    def counting(name):
        original = getattr(kind, name)

        def counted(self, c, u_t, out):
            calls[name] += 1
            return original(self, c, u_t, out)
        return counted

    for name in ("to_x", "to_eps"):
        monkeypatch.setattr(kind, name, counting(name))

    def model(z, t):
        calls["model"] += 1
        return 0.5 * z

    c, steps = lc.DDPM((2, 3, 4), schedule="cosine"), 6
    lc.sample(model, c, 2, steps=steps, prediction=prediction, method=method)
    assert calls["model"] == steps and calls["to_x"] == steps
    assert calls["to_eps"] == 0


# ---------------------------------------------------------------- DDIM numerics at extreme SNR ratios
def _mp_ddim(log_alpha_s, log_sigma_s, log_alpha_t, log_sigma_t, eta):
    """DDIM's step u_s = alpha_s x + c_eps eps + std n with eps = (u_t - alpha_t x) / sigma_t, as
    (k_u, k_x, var) = (c_eps / sigma_t, alpha_s - alpha_t c_eps / sigma_t, std^2), from the textbook forms
    (Kingma et al. 2021, eq. 32-33: sigma2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, sigma2_{t->s} = (1/sigma_s^2 +
    alpha_{t|s}^2 / sigma2_{t|s})^-1; c_eps = sqrt(sigma_s^2 - eta^2 sigma2_{t->s}), std = eta sqrt(sigma2_{t->s})),
    at 80 digits, where their cancellation does not matter."""
    import mpmath
    mpmath.mp.dps = 80
    a_s, s_s, a_t, s_t = (mpmath.exp(mpmath.mpf(v)) for v in (log_alpha_s, log_sigma_s, log_alpha_t, log_sigma_t))
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    post_var = 1 / (1 / s_s**2 + a_ts**2 / var_ts)
    eta = mpmath.mpf(eta)
    c_eps = mpmath.sqrt(s_s**2 - eta**2 * post_var)
    return c_eps / s_t, a_s - a_t * c_eps / s_t, eta**2 * post_var


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("eta", [0.0, 0.3, 0.999, 1.0])
def test_ddim_rule_is_exact_at_extreme_snr_ratios(dtype, eta):
    """SNR_t / SNR_s from 1 - 1e-7 down to e^-60: DDIM's rule (k_u, k_x, var) must keep its relative precision
    where sigma_s^2 - eta^2 sigma2_{t->s} cancels (eta = 1: k_u = (sigma_s / sigma_t) e^(dlogsnr/2)) and where
    k_x = alpha_s - alpha_t k_u cancels (small steps). The reference takes the inputs as stored; the tolerance
    allows for the rounding of log-SNR differences in the dtype (relative eps / |dlogsnr|), which no formula in
    (log alpha, log sigma) avoids."""
    eps = torch.finfo(dtype).eps
    for dlogsnr in [-1e-7, -1e-3, -0.5, -5.0, -20.0, -30.0, -60.0][dtype == torch.float32:]:
        c_s = lc.Coefficients(*torch.tensor([[-0.1], [-1.2]], dtype=dtype))
        c_t = lc.Coefficients(*torch.tensor([[-0.1 + dlogsnr / 4], [-1.2 - dlogsnr / 4]], dtype=dtype))
        k_u, k_x, var = lc.SAMPLERS["ddim"].rule(c_t, c_s, eta)
        assert (var is None) == (eta == 0)
        exact = _mp_ddim(*(v.double().item() for v in (*c_s, *c_t)), eta)
        for got, want in zip((k_u, k_x, var if var is not None else torch.zeros(())), exact):
            np.testing.assert_allclose(got.double().item(), float(want), rtol=100 * eps * (1 + 1 / abs(dlogsnr)),
                                       atol=0, err_msg=f"dlogsnr={dlogsnr}")


# ---------------------------------------------------------------- clip, dynamic thresholding, callback
def saharia_threshold(x, p, max_value=None):
    """Saharia et al. (2022) dynamic thresholding, per sample, written with numpy."""
    out = np.empty_like(x)
    for i, xi in enumerate(x):
        s = max(np.quantile(np.abs(xi), p), 1.0)
        s = min(s, max_value) if max_value is not None else s
        out[i] = np.clip(xi, -s, s) / s
    return out


@pytest.mark.parametrize("p, max_value", [(0.995, None), (0.9, None), (0.5, 2.5), (1.0, None), (0.995, 1.0)])
def test_dynamic_threshold_is_saharias_formula(p, max_value):
    from lincorrupt.sampling import dynamic_threshold
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.2, 1.0, 2.0, 4.0, 10.0], dtype=f64).view(-1, 1, 1, 1)
    x = torch.randn(5, 2, 4, 6, generator=g, dtype=f64) * scales
    got = dynamic_threshold(x, p, max_value)
    np.testing.assert_allclose(got.numpy(), saharia_threshold(x.numpy(), p, max_value), rtol=1e-12, atol=1e-15)
    assert got.abs().max() <= 1


BOUNDS = {  # sample() option -> the same bound applied by hand to a data-space x_hat (numpy reference)
    "clip": ({"clip": True}, lambda x: np.clip(x, -1, 1)),
    "threshold": ({"threshold": 0.9}, lambda x: saharia_threshold(x, 0.9)),
    "threshold-max": ({"threshold": 0.9, "threshold_max": 1.5}, lambda x: saharia_threshold(x, 0.9, 1.5)),
}


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
@pytest.mark.parametrize("bound", sorted(BOUNDS))
@pytest.mark.parametrize("prediction", ["eps", "x"])
def test_every_sampler_bounds_x_hat_as_if_the_model_had(method, bound, prediction):
    """Sampling with clip / threshold equals sampling without, from a model whose x-prediction was bounded
    by hand: every sampler uses the bounded x_hat (and DDIM the eps that it implies), and nothing else."""
    c = lc.BlurringDiffusion(SHAPE)
    options, reference = BOUNDS[bound]
    net = lambda z, t: 3 * torch.tanh(2 * z) + t.view(-1, 1, 1, 1)  # x_hat well outside [-1, 1]

    def bounded_x_model(z, t):
        x_hat = c.convert(net(z, t), z, t, source=prediction, target="x") if prediction != "x" else net(z, t)
        return torch.from_numpy(reference(x_hat.numpy()))

    kw = dict(steps=6, method=method, dtype=f64)
    ours = lc.sample(net, c, 3, prediction=prediction, generator=torch.Generator().manual_seed(1), **kw, **options)
    by_hand = lc.sample(bounded_x_model, c, 3, prediction="x", generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(ours, by_hand, rtol=1e-9, atol=1e-9)
    assert ours.abs().max() <= 1 + 1e-12
    unbounded = lc.sample(net, c, 3, prediction=prediction, generator=torch.Generator().manual_seed(1), **kw)
    assert unbounded.abs().max() > 1.5  # so the bound did act


def two_point_denoiser(c, points):
    """The exact E[x | z_t] for data uniform on two images: a convex combination of them, so inside [-1, 1]."""
    u_points = c.basis.to_basis(points)  # (2, *shape)

    def model(z, t):
        alpha, sigma = c.alpha_sigma(t[:1])
        u = c.basis.to_basis(z)[:, None]  # (B, 1, *shape)
        log_lik = (-0.5 * ((u - alpha * u_points) / sigma) ** 2).flatten(2).sum(2)  # (B, 2)
        w = torch.softmax(log_lik, 1).view(-1, 2, *[1] * len(SHAPE))
        return (w * points).sum(1)

    return model


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
@pytest.mark.parametrize("options", [{"clip": True}, {"threshold": 0.995}, {"threshold": 0.5, "threshold_max": 3.0}])
def test_bounds_leave_an_exact_denoiser_of_data_inside_the_range_alone(method, options):
    c = lc.DDPM(SHAPE, schedule="cosine") if method == "ancestral" else lc.BlurringDiffusion(SHAPE)
    points = torch.stack([torch.linspace(-1, 1, D, dtype=f64),
                          torch.linspace(1, -0.5, D, dtype=f64) ** 3]).view(2, *SHAPE)
    model = two_point_denoiser(c, points)
    kw = dict(steps=8, method=method, prediction="x", dtype=f64)
    plain = lc.sample(model, c, 4, generator=torch.Generator().manual_seed(2), **kw)
    bounded = lc.sample(model, c, 4, generator=torch.Generator().manual_seed(2), **kw, **options)
    torch.testing.assert_close(bounded, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(lc.SAMPLERS))
def test_callback_sees_every_network_evaluation_in_data_space(method):
    """One call per network evaluation (steps in all), in order, with the model's own (z_t, t) and
    the x_hat the sampler uses; the last x_hat is the sample."""
    c = lc.BlurringDiffusion(SHAPE)
    seen, infos = [], []
    net = lambda z, t: (seen.append((z.clone(), t.clone())), torch.tanh(z) * (1 - t.view(-1, 1, 1, 1)))[1]
    x = lc.sample(net, c, 3, steps=7, method=method, prediction="x", dtype=f64, callback=infos.append,
                  generator=torch.Generator().manual_seed(0))
    assert [info.step for info in infos] == list(range(7)) and len(seen) == 7
    for info, (z, t) in zip(infos, seen):
        assert info.z_t.shape == info.x_hat.shape == (3, *SHAPE) and info.t.shape == (3,)
        torch.testing.assert_close(info.z_t, z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(info.t, t, rtol=0, atol=0)
        torch.testing.assert_close(info.x_hat, torch.tanh(z) * (1 - t.view(-1, 1, 1, 1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(infos[-1].x_hat, x, rtol=1e-12, atol=1e-12)
    clipped = []
    lc.sample(lambda z, t: 5 * z, c, 3, steps=7, method=method, prediction="x", dtype=f64, clip=True,
              callback=clipped.append)
    assert len(clipped) == 7 and all(info.x_hat.abs().max() <= 1 for info in clipped)


def test_bound_options_are_checked():
    c, model = lc.DDPM(SHAPE), lambda z, t: z
    with pytest.raises(ValueError, match="choose one"):
        lc.sample(model, c, 2, steps=2, clip=True, threshold=0.99)
    with pytest.raises(ValueError, match=r"percentile of \|x_hat\| in \(0, 1\]"):
        lc.sample(model, c, 2, steps=2, threshold=99.5)
    with pytest.raises(ValueError, match="needs threshold="):
        lc.sample(model, c, 2, steps=2, threshold_max=2.0)
    with pytest.raises(ValueError, match="threshold_max must be at least 1"):
        lc.sample(model, c, 2, steps=2, threshold=0.9, threshold_max=0.5)
    with pytest.raises(TypeError, match="clip must be a bool"):
        lc.sample(model, c, 2, steps=2, clip=1.0)
