"""SoftDiffusion: its schedule against the closed form written out here, the W2 distance against
scipy's matrix square root, blur-level selection against scipy's shortest path, the fit, the Soft
Score Matching weightings against a data-space loss computed with scipy's DCT, and clear errors."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import scipy.sparse.csgraph
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from helpers.dct import blur
from lincorrupt.corruptions.soft import blur_w2_distances, select_blur_levels

f64 = torch.float64
SHAPE = (2, 4, 6)


def lam(h, w):
    k_h, k_w = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (np.pi * k_h / h) ** 2 + (np.pi * k_w / w) ** 2


@given(t=st.floats(0.0, 1.0))
def test_schedule_is_gaussian_blur_at_interpolated_levels_plus_geometric_noise(t):
    levels = [0.0, 0.5, 0.7, 2.0, 3.5]
    c = lc.SoftDiffusion(SHAPE, blur_levels=torch.tensor(levels, dtype=f64), noise_min=0.02, noise_max=0.3)
    alpha, sigma = c.alpha_sigma(torch.tensor([t], dtype=f64))
    sigma_b = np.interp(t, np.linspace(0, 1, len(levels)), levels)
    np.testing.assert_allclose(alpha.expand(1, *SHAPE)[0, 1].numpy(), np.exp(-lam(4, 6) * sigma_b**2 / 2),
                               rtol=1e-12, atol=1e-300)
    assert alpha.expand(1, *SHAPE)[0, :, 0, 0].eq(1).all()  # the DC coordinate keeps its signal
    np.testing.assert_allclose(sigma.expand(1, *SHAPE).numpy(), 0.02 * (0.3 / 0.02) ** t, rtol=1e-12)


def test_defaults_are_equally_spaced_levels_of_the_papers_celeba_range_scaled_and_valid_at_28x28():
    c = lc.SoftDiffusion((1, 28, 28))
    np.testing.assert_allclose(c.blur_levels.numpy(), np.linspace(0.01, 23.0 * 28 / 64, 32))
    # scaled, the coarsest non-constant frequency ends as blurred as in the paper's 64x64 images
    alpha_1 = c.alpha_sigma(torch.ones(1, dtype=f64))[0].expand(1, 1, 28, 28)[0, 0, 0, 1]
    assert float(alpha_1) == pytest.approx(math.exp(-(math.pi / 64) ** 2 * 23.0**2 / 2), rel=1e-9)
    np.testing.assert_allclose(lc.SoftDiffusion((1, 16, 40)).blur_levels[-1].item(), 23.0 * 40 / 64)
    np.testing.assert_allclose(lc.SoftDiffusion((1, 28, 28), sigma_blur_max=23.0).blur_levels[-1].item(), 23.0)
    assert isinstance(c.prior, lc.GaussianPrior)
    log_alpha, log_sigma = c.log_alpha_sigma(torch.linspace(0, 1, 11, dtype=f64))
    assert torch.isfinite(log_alpha).all()  # alpha itself underflows at strong blur; its log does not
    np.testing.assert_allclose(log_sigma.flatten()[[0, -1]].exp().numpy(), [0.01, 0.1])


def diagonal_w2_scipy(m1, v1, m2, v2):
    """W2 between N(m1, diag v1) and N(m2, diag v2) from the general Gaussian formula with scipy's sqrtm."""
    s1, s2 = np.diag(v1), np.diag(v2)
    root2 = scipy.linalg.sqrtm(s2)
    cross = scipy.linalg.sqrtm(root2 @ s1 @ root2)
    return math.sqrt(max(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * cross).real, 0.0))  # 0 up to rounding


@given(seed=st.integers(0, 1000))
def test_w2_closed_form_is_the_gaussian_w2_of_the_blurred_data(seed):
    rng = np.random.default_rng(seed)
    mean, var = rng.normal(size=SHAPE), rng.uniform(0.01, 2, size=SHAPE)
    sigmas = np.array([0.0, 0.3, 1.2])
    w2 = blur_w2_distances(torch.tensor(sigmas), torch.tensor(sigmas[::-1].copy()), torch.tensor(lam(4, 6)),
                           torch.tensor(mean), torch.tensor(var)).numpy()
    for i, a in enumerate(sigmas):
        for j, b in enumerate(sigmas[::-1]):
            da, db = (np.exp(-lam(4, 6) * s**2 / 2)[None].repeat(2, 0).ravel() for s in (a, b))  # C_s, diagonal
            ref = diagonal_w2_scipy(da * mean.ravel(), da**2 * var.ravel(), db * mean.ravel(), db**2 * var.ravel())
            assert w2[i, j] == pytest.approx(ref, rel=1e-6, abs=1e-6)  # sqrtm's own error ~1e-8


@given(seed=st.integers(0, 1000))
def test_noise_aware_w2_is_the_gaussian_w2_of_the_noisy_marginals(seed):
    """With noise the marginals are N(a m, diag(a^2 v + s^2)): scipy's general Gaussian W2 of them."""
    rng = np.random.default_rng(seed)
    mean, var = rng.normal(size=SHAPE), rng.uniform(0.01, 2, size=SHAPE)
    sigmas, noise = np.array([0.0, 0.3, 1.2]), np.array([0.01, 0.3, 1.5])
    w2 = blur_w2_distances(torch.tensor(sigmas), torch.tensor(sigmas[::-1].copy()), torch.tensor(lam(4, 6)),
                           torch.tensor(mean), torch.tensor(var), torch.tensor(noise),
                           torch.tensor(noise[:2].tolist() + [0.0])).numpy()
    for i, (a, s_a) in enumerate(zip(sigmas, noise)):
        for j, (b, s_b) in enumerate(zip(sigmas[::-1], noise[:2].tolist() + [0.0])):
            da, db = (np.exp(-lam(4, 6) * s**2 / 2)[None].repeat(2, 0).ravel() for s in (a, b))
            ref = diagonal_w2_scipy(da * mean.ravel(), da**2 * var.ravel() + s_a**2,
                                    db * mean.ravel(), db**2 * var.ravel() + s_b**2)
            assert w2[i, j] == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_noise_aware_w2_without_noise_is_the_papers_and_needs_both_noises():
    rng = np.random.default_rng(0)
    mean, var = torch.tensor(rng.normal(size=SHAPE)), torch.tensor(rng.uniform(0.01, 2, size=SHAPE))
    levels, lam46 = torch.tensor([0.0, 0.4, 2.5], dtype=f64), torch.tensor(lam(4, 6))
    zero = torch.zeros(3, dtype=f64)
    torch.testing.assert_close(blur_w2_distances(levels, levels, lam46, mean, var, zero, zero),
                               blur_w2_distances(levels, levels, lam46, mean, var))
    with pytest.raises(ValueError, match="noise_a and noise_b"):
        blur_w2_distances(levels, levels, lam46, mean, var, noise_a=zero)


@pytest.mark.parametrize("num_levels", [2, 5, 9])
def test_noise_aware_levels_are_a_shortest_path_of_the_layered_w2_graph(num_levels):
    """Level k carries noise[k]: every step of the returned path is within epsilon, and no path with
    fewer levels reaches the last candidate at that epsilon (brute force over the layered graph)."""
    rng = np.random.default_rng(num_levels)
    mean, var = torch.tensor(rng.normal(size=SHAPE)), torch.tensor(rng.uniform(0.01, 2, size=SHAPE) / (1 + lam(4, 6)))
    candidates = torch.linspace(0.0, 3.0, 60, dtype=f64)
    noise = torch.tensor(0.05 * 4.0 ** np.linspace(0, 1, num_levels))
    levels = select_blur_levels(candidates, torch.tensor(lam(4, 6)), mean, var, num_levels, noise=noise)
    assert len(levels) == num_levels and levels[0] == candidates[0] and levels[-1] == candidates[-1]
    assert (levels[1:] > levels[:-1]).all()
    index = [int((candidates == v).nonzero()) for v in levels]
    step = lambda k: blur_w2_distances(candidates, candidates, torch.tensor(lam(4, 6)), mean, var,  # noqa: E731
                                       noise[k].expand(60), noise[k + 1].expand(60)).numpy()
    epsilon = max(step(k)[i, j] for k, (i, j) in enumerate(zip(index[:-1], index[1:])))
    reached = {0}  # candidates reachable as the k-th level, forward and monotone
    for k in range(num_levels - 2):
        edges = step(k) <= epsilon
        reached = {j for i in reached for j in range(i + 1, 60) if edges[i, j]}
        assert 59 not in reached, f"the last candidate is reachable with {k + 2} levels"
    assert not select_blur_levels(candidates, torch.tensor(lam(4, 6)), mean, var, num_levels).equal(levels) \
        or num_levels == 2  # the noise changes the choice


def test_fit_noise_aware_uses_each_levels_noise_and_keeps_the_constructor_arguments():
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.randn(200, *SHAPE, generator=g, dtype=f64).cumsum(-1) / 2)
    c = lc.SoftDiffusion.fit(x, num_levels=6, sigma_blur_min=0.0, sigma_blur_max=3.0, num_candidates=100,
                             noise_aware=True, noise_max=0.3)
    u = torch.tensor(scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho"))
    noise = torch.tensor(0.01 * 30.0 ** np.linspace(0, 1, 6))
    expected = select_blur_levels(torch.linspace(0, 3, 100, dtype=f64), torch.tensor(lam(4, 6)), u.mean(0),
                                  u.var(0), 6, noise=noise)
    torch.testing.assert_close(c.blur_levels, expected)
    assert c.noise_max == 0.3 and "noise_aware" not in c.config  # a checkpoint records the levels, not how
    sigma = c.alpha_sigma(torch.linspace(0, 1, 6, dtype=f64))[1].flatten()
    torch.testing.assert_close(sigma, noise)  # the noise fit assumed is the process's at t = k / (K - 1)


@pytest.mark.parametrize("num_levels", [2, 5, 16])
def test_levels_are_a_shortest_path_of_the_w2_graph_from_first_to_last_candidate(num_levels):
    rng = np.random.default_rng(num_levels)
    mean, var = torch.tensor(rng.normal(size=SHAPE)), torch.tensor(rng.uniform(0.01, 2, size=SHAPE) / (1 + lam(4, 6)))
    candidates = torch.linspace(0.0, 3.0, 120, dtype=f64)
    levels = select_blur_levels(candidates, torch.tensor(lam(4, 6)), mean, var, num_levels)
    assert len(levels) == num_levels and levels[0] == candidates[0] and levels[-1] == candidates[-1]
    assert (levels[1:] > levels[:-1]).all() and all(bool((candidates == v).any()) for v in levels)
    distances = blur_w2_distances(candidates, candidates, torch.tensor(lam(4, 6)), mean, var).numpy()
    index = [int((candidates == v).nonzero()) for v in levels]
    epsilon = max(distances[i, j] for i, j in zip(index[:-1], index[1:]))  # every step of the path is an edge
    graph = (distances <= epsilon).astype(float)
    hops = scipy.sparse.csgraph.shortest_path(graph, unweighted=True, indices=0)[-1]
    assert hops == num_levels - 1  # no path with fewer levels at that epsilon


def test_fit_chooses_levels_from_the_data_and_the_moment_matched_prior():
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.randn(200, *SHAPE, generator=g, dtype=f64).cumsum(-1) / 2)  # smooth-ish rows
    c = lc.SoftDiffusion.fit(x, num_levels=8, sigma_blur_min=0.0, sigma_blur_max=3.0, num_candidates=200,
                             noise_max=0.2)
    assert len(c.blur_levels) == 8 and c.blur_levels[0] == 0 and c.blur_levels[-1] == 3 and c.noise_max == 0.2
    u = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(c.prior.mean.numpy(), u.mean(0), atol=1e-6)
    np.testing.assert_allclose(c.prior.var.numpy(), u.var(0, ddof=1), rtol=1e-5)
    mean, var = torch.tensor(u.mean(0)), torch.tensor(u.var(0, ddof=1))
    expected = select_blur_levels(torch.linspace(0, 3, 200, dtype=f64), torch.tensor(lam(4, 6)), mean, var, 8)
    torch.testing.assert_close(c.blur_levels, expected)


@pytest.mark.parametrize("prediction", ["x", "eps", "v"])
def test_soft_score_weighting_is_the_blurred_x_error_and_snr_weighting_divides_it_by_s_t2(prediction):
    """||C_t (x_hat - x)||^2 (and / s_t^2) in data space, with x_hat from the model's output."""
    c = lc.SoftDiffusion(SHAPE, sigma_blur_max=2.0)
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(2, 3, *SHAPE, generator=g, dtype=f64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=f64)
    model = lambda z, tt: torch.sin(z) * tt.view(-1, 1, 1, 1)
    z_t, _ = c.diffuse(x, t, noise=noise)
    x_hat = c.convert(model(z_t, t), z_t, t, prediction, "x").numpy()
    alpha, sigma = c.alpha_sigma(t)
    alpha = alpha.expand(3, *SHAPE).numpy()
    blurred = (blur(x_hat - x.numpy(), alpha) ** 2).reshape(3, -1).sum(1)
    divided = blurred / sigma.flatten().numpy() ** 2
    for weighting, expected in ((lc.soft_score_weighting, blurred), (lc.snr_weighting, divided)):
        loss = lc.diffusion_loss(model, c, x, prediction=prediction, weighting=weighting, t=t, noise=noise,
                                 reduction="sum")
        assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-9)


def test_snr_weighting_of_an_x_model_is_the_unweighted_eps_loss_of_its_implied_eps():
    c = lc.SoftDiffusion(SHAPE)
    g = torch.Generator().manual_seed(2)
    x, noise = torch.randn(2, 4, *SHAPE, generator=g, dtype=f64)
    t = torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=f64)
    x_model = lambda z, tt: torch.tanh(z)
    eps_model = lambda z, tt: c.convert(x_model(z, tt), z, tt, "x", "eps")
    a = lc.diffusion_loss(x_model, c, x, prediction="x", weighting=lc.snr_weighting, t=t, noise=noise)
    b = lc.diffusion_loss(eps_model, c, x, prediction="eps", t=t, noise=noise)
    assert a.item() == pytest.approx(b.item(), rel=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(blur_levels=torch.tensor([1.0, 0.5])), "non-decreasing"),
    (dict(blur_levels=torch.tensor([1.0])), "at least 2"),
    (dict(blur_levels=torch.tensor([-1.0, 0.5])), "non-negative"),
    (dict(noise_min=0.2, noise_max=0.1), "noise_min <= noise_max"),
    (dict(noise_min=0.0), "noise_min <= noise_max"),
    (dict(num_levels=1), "num_levels >= 2"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lc.SoftDiffusion(SHAPE, **kwargs)


def test_bad_fit_input_is_refused():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with N >= 2"):
        lc.SoftDiffusion.fit(torch.zeros(1, *SHAPE))
    with pytest.raises(ValueError, match=r"num_levels must be an int in \[2, 10\]"):
        lc.SoftDiffusion.fit(torch.randn(5, *SHAPE), num_levels=11, num_candidates=10)
    with pytest.raises(ValueError, match="shape"):
        lc.SoftDiffusion((4, 6))


def test_residual_prediction_is_x_minus_z_t_and_its_loss_is_the_x_loss():
    """prediction="residual": x_hat = z_t + out, so the target is x - z_t and the x error equals the output error."""
    c = lc.SoftDiffusion(SHAPE, sigma_blur_max=2.0)
    g = torch.Generator().manual_seed(3)
    x, noise, out = torch.randn(3, 2, *SHAPE, generator=g, dtype=f64)
    t = torch.tensor([0.3, 0.8], dtype=f64)
    z_t, _ = c.diffuse(x, t, noise=noise)
    torch.testing.assert_close(c.convert(out, z_t, t, "residual", "x"), z_t + out)
    torch.testing.assert_close(c.convert(x - z_t, z_t, t, "residual", "eps"), noise)
    net = lambda z, tt: torch.sin(z)
    residual = lc.diffusion_loss(net, c, x, prediction="residual", weighting=lc.soft_score_weighting, t=t, noise=noise)
    direct = lc.diffusion_loss(lambda z, tt: z + net(z, tt), c, x, prediction="x", weighting=lc.soft_score_weighting,
                               t=t, noise=noise)
    assert residual.item() == pytest.approx(direct.item(), rel=1e-9)
