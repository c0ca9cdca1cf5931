"""Loss weightings by name: each against its paper's formula in the identity basis (min-SNR against the weights
of diffusers' training scripts, written out here), the per-coordinate log-SNR invariance of Kingma & Gao for the
exact denoiser of Gaussian data (scipy quadrature over t against the closed-form integral over log-SNR),
"isotropic" = "none" without the basis-dependent part, the importance proposal for t (unbiased within a CLT
bound), and clear errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

import lincorrupt as lc
from lincorrupt.basis import IdentityBasis
from lincorrupt.corruption import DiagonalizableCorruption
from lincorrupt.weightings import WEIGHTINGS, TimeProposal, get_weighting

f64 = torch.float64
PRED = lc.PREDICTIONS


def cosine_reference(logsnr_min=-10.0, logsnr_max=10.0):
    """l(t) = -2 log tan(a t + b) (Hoogeboom & Salimans 2023, appendix A) and its derivative, written out."""
    b = math.atan(math.exp(-logsnr_max / 2))
    a = math.atan(math.exp(-logsnr_min / 2)) - b
    logsnr = lambda t: -2 * np.log(np.tan(a * t + b))  # noqa: E731
    rate = lambda t: -2 * a / (np.sin(a * t + b) * np.cos(a * t + b))  # noqa: E731
    return a, logsnr, rate


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------- the papers' formulas in the identity basis
@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
def test_weightings_in_the_identity_basis_are_their_papers_formulas(prediction):
    c = lc.DDPM((3,), schedule="cosine")
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97], dtype=f64)
    _, logsnr, rate = cosine_reference()
    lam, d_lam = logsnr(t.numpy())[:, None], rate(t.numpy())[:, None]
    snr, alpha2 = np.exp(lam), sigmoid(lam)
    # an eps-error weight W is W on eps, W SNR on x and W alpha^2 on v (VP: v = (eps - sigma z) / alpha)
    to_output = {"eps": 1.0, "x": snr, "v": alpha2}[prediction]
    expected = {
        "elbo": 0.5 * -d_lam,  # VDM eq. 17: -1/2 SNR' on the x error = -1/2 l' on the eps error
        # Kingma & Gao: 1/2 w(l) (-dl/dt) on the eps error, w = sigmoid(b - l), b = 1.5
        "sigmoid": 0.5 * sigmoid(1.5 - lam) * -d_lam,
        "min-snr": np.minimum(snr, 4.0) / snr,  # Hang et al.: min(SNR, gamma) / SNR on the eps error, gamma = 4
    }
    options = {"sigmoid": {"b": 1.5}, "min-snr": {"gamma": 4.0}}
    for name, w_eps in expected.items():
        w = get_weighting(name, options.get(name))(c, t, PRED[prediction])
        np.testing.assert_allclose(w.expand(5, 3).numpy(), np.broadcast_to(w_eps * to_output, (5, 3)), rtol=1e-9)
    soft = get_weighting("soft-score")(c, t, PRED[prediction])  # Daras et al.: alpha^2 on the x error
    np.testing.assert_allclose(soft.expand(5, 3).numpy(), np.broadcast_to(alpha2 * to_output / snr, (5, 3)),
                               rtol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v", "x"])
def test_min_snr_matches_diffusers_training_script_weights(prediction):
    """diffusers' train_text_to_image.py: snr = alphas_cumprod / (1 - alphas_cumprod) (compute_snr), then
    mse_loss_weights = min(snr, gamma) / snr for epsilon and / (snr + 1) for v_prediction; Hang et al.'s
    x-loss weight is min(snr, gamma). DDPMScheduler's linear betas, timestep k is lincorrupt's t = (k + 1) / T."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alphas_cumprod = np.cumprod(1 - betas)
    timesteps = np.array([0, 10, 99, 500, 900, 999])
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    gamma = 5.0
    mse_loss_weights = np.minimum(snr, gamma)
    mse_loss_weights = {"eps": mse_loss_weights / snr, "v": mse_loss_weights / (snr + 1),
                        "x": mse_loss_weights}[prediction]
    c = lc.DDPM((2,), schedule="linear")
    t = torch.tensor((timesteps + 1) / 1000, dtype=f64)
    w = lc.weightings.min_snr_weighting(c, t, PRED[prediction], gamma=gamma)
    np.testing.assert_allclose(w[:, 0].numpy(), mse_loss_weights, rtol=1e-6)


def test_none_is_bit_identical_to_the_unweighted_loss():
    c = lc.BlurringDiffusion((1, 4, 4), sigma_blur_max=3.0)
    g = torch.Generator().manual_seed(0)
    x, noise, t = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g), torch.rand(6, generator=g)
    net = lambda z, tt: 0.5 * z + tt.view(-1, 1, 1, 1)  # noqa: E731
    before = lc.diffusion_loss(net, c, x, t=t, noise=noise, reduction="none")
    for weighting in ("none", None):
        assert torch.equal(lc.diffusion_loss(net, c, x, weighting=weighting, t=t, noise=noise, reduction="none"),
                           before)


@pytest.mark.parametrize("prediction", ["eps", "x", "v", "residual"])
@pytest.mark.parametrize("corruption", [lambda: lc.BlurringDiffusion((2, 4, 4), sigma_blur_max=0.0),
                                        lambda: lc.DDPM((3,), schedule="cosine"),
                                        lambda: lc.DDPM((3,), schedule="linear")], ids=["blur0", "cosine", "linear"])
def test_isotropic_is_none_without_the_basis_dependent_part(corruption, prediction):
    c = corruption()
    t = torch.tensor([0.0134, 0.2137, 0.5051, 0.7719, 0.9993], dtype=f64)  # off the linear table's knots
    w = lc.weightings.isotropic_weighting(c, t, PRED[prediction])
    np.testing.assert_allclose(w.numpy(), 1.0, rtol=1e-9)
    x = torch.randn(5, *c.shape)
    loss = lc.diffusion_loss(lambda z, tt: 0.3 * z, c, x, prediction=prediction, weighting="isotropic",
                             t=t.float(), reduction="none", generator=torch.Generator().manual_seed(1))
    plain = lc.diffusion_loss(lambda z, tt: 0.3 * z, c, x, prediction=prediction, t=t.float(), reduction="none",
                              generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=0)


@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
@pytest.mark.parametrize("corruption", [lambda: lc.BlurringDiffusion((1, 4, 4), sigma_blur_max=2.0),
                                        lambda: lc.DDPM((3,), schedule="cosine")], ids=["blur", "ddpm"])
def test_elbo_weighting_summed_is_the_likelihoods_diffusion_term(corruption, prediction):
    """The "elbo" loss summed over coordinates is the continuous-time diffusion term of the bound in nats
    (lincorrupt.likelihood, VDM eq. 17) at the same t and noise."""
    from lincorrupt.likelihood import diffusion_term

    c = corruption()
    g = torch.Generator().manual_seed(4)
    x, noise = torch.randn(5, *c.shape, generator=g, dtype=f64), torch.randn(5, *c.shape, generator=g, dtype=f64)
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95], dtype=f64)
    net = lambda z, tt: 0.7 * z - 0.1  # noqa: E731
    loss = lc.diffusion_loss(net, c, x, prediction=prediction, weighting="elbo", t=t, noise=noise, reduction="none")
    nats = diffusion_term(net, c, x, t, noise, prediction=prediction)
    torch.testing.assert_close(loss * math.prod(c.shape), nats, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["elbo", "sigmoid", "min-snr"])
def test_eps_relative_weightings_convert_between_predictions(name):
    """Each of these weights the eps-error whatever the prediction; on x it is times SNR, on v times
    alpha^2 / (alpha^2 + sigma^2) (v = (alpha eps - sigma x) / scale), written out from alpha, sigma.
    ("isotropic" depends on the prediction: it is the reference schedule's unweighted loss of that prediction.)"""
    c = lc.BlurringDiffusion((1, 4, 4), sigma_blur_max=2.0)
    t = torch.tensor([0.1, 0.6, 0.9], dtype=f64)
    alpha, sigma = c.alpha_sigma(t)
    w = {p: get_weighting(name)(c, t, PRED[p]) for p in ("eps", "x", "v")}
    torch.testing.assert_close(w["x"], w["eps"] * alpha**2 / sigma**2, rtol=1e-9, atol=0)
    torch.testing.assert_close(w["v"], w["eps"] * alpha**2 / (alpha**2 + sigma**2), rtol=1e-9, atol=0)


# ---------------------------------------------------------------- the invariance (Kingma & Gao, per coordinate)
class WarpedVP(DiagonalizableCorruption):
    """A VP diffusion in the identity basis whose coordinate k has log-SNR l_k(t) = hi + (lo_k - hi) phi_k(t),
    phi_k(t) = expm1(s_k t) / expm1(s_k): every coordinate its own clock, the end points hi and lo_k fixed."""

    def __init__(self, lo, s, hi=6.0):
        super().__init__((len(lo),), IdentityBasis())
        self.lo, self.s, self.hi = torch.tensor(lo, dtype=f64), torch.tensor(s, dtype=f64), hi

    def _log_alpha_sigma(self, t):
        phi = torch.expm1(self.s * t[:, None]) / torch.expm1(self.s)
        logsnr = self.hi + (self.lo - self.hi) * phi
        return 0.5 * torch.nn.functional.logsigmoid(logsnr), 0.5 * torch.nn.functional.logsigmoid(-logsnr)


def mmse_eps(logsnr, var):
    """E (eps - eps_hat)^2 of the exact denoiser for u_x ~ N(0, var): alpha^2 var / (alpha^2 var + sigma^2)
    = var SNR / (var SNR + 1) (numbers, arrays or tensors)."""
    snr_var = var * (logsnr.exp() if isinstance(logsnr, torch.Tensor) else np.exp(logsnr))
    return snr_var / (snr_var + 1)


def expected_loss_over_t(c, weighting, var, options=None, prediction="eps"):
    """Per coordinate: integral over t in [0, 1] of the library's weight, as a weight on the eps-error (an
    output weight divided by SNR on x, by alpha^2 / (alpha^2 + sigma^2) on v), times the exact MMSE."""
    w = get_weighting(weighting, options)

    def integrand(t):
        tt = torch.tensor([t], dtype=f64)
        alpha, sigma = (v.expand(1, *c.shape).flatten().numpy() for v in c.alpha_sigma(tt))
        to_output = {"eps": 1.0, "x": alpha**2 / sigma**2, "v": alpha**2 / (alpha**2 + sigma**2)}[prediction]
        weight = w(c, tt, PRED[prediction]).expand(1, *c.shape).flatten().numpy() / to_output
        return weight * mmse_eps(c.log_snr(tt).expand(1, *c.shape).flatten().numpy(), var)

    return integrate.quad_vec(integrand, 0, 1, epsabs=1e-13, epsrel=1e-10, limit=400)[0]


@pytest.mark.parametrize("weighting, w", [("elbo", lambda lam: 1.0), ("sigmoid", lambda lam: sigmoid(-1.0 - lam))])
def test_weighted_loss_is_an_integral_over_each_coordinates_log_snr(weighting, w):
    """Two schedules with the same end points per coordinate but different clocks give the same expected
    weighted loss of the exact denoiser, equal to 1/2 int_{lo}^{hi} w(l) mmse(l) dl."""
    lo, var = [-5.0, -8.0, -3.0], np.array([0.3, 1.0, 2.5])
    options = {"b": -1.0} if weighting == "sigmoid" else None
    a = expected_loss_over_t(WarpedVP(lo, s=[0.5, -2.0, 3.0]), weighting, var, options)
    b = expected_loss_over_t(WarpedVP(lo, s=[2.5, 1.0, -1.5]), weighting, var, options)
    reference = [0.5 * integrate.quad(lambda lam, v: w(lam) * mmse_eps(lam, v), low, 6.0, args=(v,), epsabs=1e-12)[0]
                 for low, v in zip(lo, var)]
    np.testing.assert_allclose(a, reference, rtol=1e-7)
    np.testing.assert_allclose(b, reference, rtol=1e-7)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_isotropic_gives_every_blurred_coordinate_the_no_blur_weighting_in_its_own_log_snr(prediction):
    """Blurring diffusion: under the no-blur cosine schedule the unweighted loss weighs the eps-error at
    log-SNR l by g(l) / |dl/dt| = g(l) / (4 a cosh(l / 2)), g = 1 for eps and 1 + exp(-l) for v (the v-error is
    the eps-error over alpha); with "isotropic" each blurred coordinate's expected loss is the integral of that
    weight times its MMSE between its own end points l_k(1) and l_k(0)."""
    c = lc.BlurringDiffusion((1, 3, 3), sigma_blur_max=1.5, min_scale=0.01)
    var = np.linspace(0.2, 2.0, 9)
    ends = c.log_snr(torch.tensor([1.0, 0.0], dtype=f64)).flatten(1).numpy()  # (2, 9)
    a = cosine_reference()[0]
    got = expected_loss_over_t(c, "isotropic", var, prediction=prediction)
    g = {"eps": lambda lam: 1.0, "v": lambda lam: 1 + np.exp(-lam)}[prediction]
    per_log_snr = lambda lam, v: g(lam) * mmse_eps(lam, v) / (4 * a * np.cosh(lam / 2))  # noqa: E731
    reference = [integrate.quad(per_log_snr, low, high, args=(v,), epsabs=1e-12)[0]
                 for low, high, v in zip(ends[0], ends[1], var)]
    np.testing.assert_allclose(got, reference, rtol=1e-6)
    assert ends[0, -1] < ends[0, 0] - 1  # the finest coordinate ends far below the DC one: a real test


def test_cosine_log_rate_is_the_derivative_of_the_cosine_schedule():
    t = torch.tensor([0.01, 0.3, 0.7, 0.99], dtype=f64)
    _, logsnr, rate = cosine_reference(-8.0, 7.0)
    got = lc.schedules.cosine_log_rate(torch.tensor(logsnr(t.numpy())), -8.0, 7.0)
    np.testing.assert_allclose(got.numpy(), np.log(-rate(t.numpy())), rtol=1e-10)


# ---------------------------------------------------------------- the importance proposal for t
def test_importance_sampled_loss_is_unbiased_and_less_variable():
    """The exact eps denoiser of Gaussian data on blurring diffusion under "isotropic": the mean of the
    proposal-weighted per-example loss over many draws equals the uniform-t expectation (scipy quadrature of
    the closed-form MMSE) within 4 standard errors of the sample; and its variance is below uniform t's."""
    c = lc.BlurringDiffusion((1, 4, 4), sigma_blur_max=3.0)
    var_u = torch.linspace(0.05, 1.5, 16, dtype=torch.float32).view(1, 4, 4)

    def denoiser(z, t):  # eps_hat = sigma u_t / (alpha^2 var + sigma^2) per DCT coordinate
        alpha, sigma = c.alpha_sigma(t)
        return c.basis.from_basis(sigma * c.basis.to_basis(z) / (alpha**2 * var_u + sigma**2))

    proposal = TimeProposal.fit(c, "isotropic", "eps")
    assert proposal.density_values.max() > 2 * proposal.density_values.min()  # a proposal, not uniform
    n = 40_000
    g = torch.Generator().manual_seed(0)
    x = c.basis.from_basis(torch.randn(n, 1, 4, 4, generator=g) * var_u.sqrt())
    losses = {}
    for name, p in (("importance", proposal), ("uniform", None)):
        losses[name] = lc.diffusion_loss(denoiser, c, x, prediction="eps", weighting="isotropic", proposal=p,
                                         generator=g, reduction="none").double()
    weight = get_weighting("isotropic")

    def expected(t):  # the mean over coordinates of the weight times the exact MMSE at time t
        tt = torch.tensor([t], dtype=f64)
        return (weight(c, tt, PRED["eps"]) * mmse_eps(c.log_snr(tt), var_u.double())).mean().item()

    truth = integrate.quad(expected, 0, 1, epsabs=1e-12, limit=200)[0]
    for name, values in losses.items():
        standard_error = values.std().item() / math.sqrt(n)
        assert abs(values.mean().item() - truth) < 4 * standard_error, (name, values.mean().item(), truth)
    assert losses["importance"].var() < losses["uniform"].var()


def test_a_proposal_without_weighting_divides_each_example_by_its_density():
    c = lc.BlurringDiffusion((1, 4, 4), sigma_blur_max=2.0)
    g = torch.Generator().manual_seed(5)
    x, noise, t = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g), torch.rand(3, generator=g)
    proposal = TimeProposal(torch.tensor([0.5, 1.5]))
    net = lambda z, tt: 0.5 * z  # noqa: E731
    plain = lc.diffusion_loss(net, c, x, t=t, noise=noise, reduction="none")
    weighted = lc.diffusion_loss(net, c, x, t=t, noise=noise, reduction="none", proposal=proposal)
    torch.testing.assert_close(weighted, plain / torch.where(t < 0.5, 0.5, 1.5))


@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=40), st.floats(0.0, 1.0))
def test_proposal_sample_is_the_inverse_of_its_cdf(masses, u):
    """F(sample(u)) = u, with F the piecewise-linear CDF of the density written out here."""
    density = torch.tensor(masses, dtype=f64)
    density = density / density.mean()
    t = TimeProposal(density).sample(torch.tensor([u], dtype=f64)).item()
    k = len(masses)
    cell = min(int(t * k), k - 1)
    cdf = density[:cell].sum().item() / k + density[cell].item() * (t - cell / k)
    assert cdf == pytest.approx(u, abs=1e-12)


def test_proposal_samples_its_own_density():
    """Inverse-CDF draws of a known piecewise-constant density: the share in each cell matches its mass."""
    density = torch.tensor([0.2, 2.5, 0.8, 0.5], dtype=f64)
    p = TimeProposal(density)
    t = p.sample(torch.rand(200_000, generator=torch.Generator().manual_seed(3), dtype=f64))
    share = torch.bincount((t * 4).floor().long().clamp(max=3), minlength=4) / len(t)
    np.testing.assert_allclose(share.numpy(), density.numpy() / 4, atol=4 * math.sqrt(0.25 * 0.75 / len(t)))
    torch.testing.assert_close(p.density(t[:5]), density[(t[:5] * 4).floor().long()])
    with pytest.raises(ValueError, match="integrate to 1"):
        TimeProposal(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="uniform_share"):
        TimeProposal.fit(lc.DDPM((2,)), "elbo", uniform_share=0.0)


# ---------------------------------------------------------------- errors
def test_bad_weightings_are_refused_where_they_enter():
    c, x = lc.DDPM((2,)), torch.randn(3, 2)
    net = lambda z, t: z  # noqa: E731
    with pytest.raises(ValueError, match="unknown weighting 'snr'.*min-snr"):
        lc.diffusion_loss(net, c, x, weighting="snr")
    with pytest.raises(ValueError, match=r"takes the options \['gamma'\], got 'b'"):
        lc.diffusion_loss(net, c, x, weighting="min-snr", weighting_options={"b": 1.0})
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="gamma=.* must be a finite positive number"):
            get_weighting("min-snr", {"gamma": bad})
    with pytest.raises(ValueError, match="b=inf must be a finite number"):
        get_weighting("sigmoid", {"b": math.inf})
    with pytest.raises(ValueError, match="apply to a weighting given by name"):
        get_weighting(lc.elbo_weighting, {"b": 1.0})
    with pytest.raises(ValueError, match="IHDM declares no schedule without its basis-dependent part"):
        lc.diffusion_loss(net, lc.IHDM((1, 4, 4)), torch.randn(2, 1, 4, 4), weighting="isotropic")
    with pytest.raises(ValueError, match="noise_min = noise_max"):
        get_weighting("isotropic")(lc.SoftDiffusion((1, 4, 4), noise_min=0.1, noise_max=0.1), torch.rand(2), PRED["x"])


def test_registry_names_are_the_documented_ones():
    assert sorted(WEIGHTINGS) == sorted(["none", "elbo", "sigmoid", "min-snr", "soft-score", "isotropic"])


# ---------------------------------------------------------------- in the Trainer
def test_trainer_loss_is_the_weighted_loss_of_its_draws(tmp_path):
    """TrainConfig(weighting="min-snr", time_sampling="importance"): the Trainer's loss of a batch is the eps
    error weighted by min(SNR, gamma) / SNR (Hang et al.) and by 1 / p(t) at t = the proposal's inverse CDF of
    the step's uniform draws, computed here from alpha, sigma in the identity basis."""
    from helpers.training import make_trainer

    c = lc.DDPM((3, 8, 8), schedule="cosine")
    trainer = make_trainer(tmp_path, steps=1, corruption=c, prediction="eps", weighting="min-snr",
                           weighting_options={"gamma": 2.0}, time_sampling="importance", hflip=False)
    trainer.model.eval()  # no dropout: the two forward passes below agree
    x_uint8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    u, noise, _, _ = trainer.draw(0, 0, 4)
    t = trainer.proposal.sample(u)
    assert not torch.equal(t, u)
    x = x_uint8.float() / 127.5 - 1
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in c.alpha_sigma(t))
    with torch.no_grad():
        out = trainer.net(alpha * x + sigma * noise, t)
        snr = (alpha / sigma) ** 2
        weight = torch.minimum(snr, torch.tensor(2.0)) / snr / trainer.proposal.density(t).view(-1, 1, 1, 1)
        expected = (weight * (out - noise) ** 2).mean()
        torch.testing.assert_close(trainer.loss(x_uint8), expected, rtol=1e-5, atol=0)


def test_train_config_refuses_bad_weightings_and_parses_them_as_flags():
    from lincorrupt.train import TrainConfig
    from lincorrupt.train.cli import OptionError, parse_config

    with pytest.raises(OptionError, match="gamma=-1 must be a finite positive number") as info:
        TrainConfig(weighting="min-snr", weighting_options={"gamma": -1})
    assert info.value.name == "weighting_options"
    with pytest.raises(OptionError, match="weighting=.*expected one of"):
        TrainConfig(weighting="min_snr")
    with pytest.raises(OptionError, match="needs snapshot_every > 0"):
        TrainConfig(posthoc_ema=(0.05, 0.1))
    config = parse_config(TrainConfig, ["--weighting", "sigmoid", "--weighting-options", "b=-2",
                                        "--time-sampling", "importance", "--posthoc-ema", "0.05,0.1",
                                        "--snapshot-every", "100"])
    assert (config.weighting, config.weighting_options, config.time_sampling, config.posthoc_ema,
            config.snapshot_every) == ("sigmoid", {"b": -2.0}, "importance", (0.05, 0.1), 100)
