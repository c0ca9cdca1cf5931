"""Spectral diagnostics against independent references.

Bands against exact integer definitions; power spectra against scipy's orthonormal DCT-II; sampling properties
(two halves of one draw, added white noise) within standard errors computed here from per-image values; the
Wiener estimator against Gaussian conditioning of the joint covariance of (x, z_t) built in data space with numpy,
and against the scalar filter for a covariance diagonal in the basis; the MMSE property on data drawn from the fit.
"""

import math

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from helpers.corruptions import SHAPE, random_frequency_basis
from lincorrupt.metrics import (
    GaussianFit,
    band_error_ratio,
    denoising_band_errors,
    power_spectrum,
    radial_bands,
    spectrum_ratio,
    wiener_x_hat,
)

f64 = torch.float64
D = math.prod(SHAPE)


def scipy_band_power(x: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Per band, the mean over images, channels and the band's coordinates of scipy's orthonormal DCT-II squared."""
    u2 = scipy.fft.dctn(x, axes=(-2, -1), norm="ortho") ** 2
    return np.array([u2[..., bands == b].mean() for b in range(bands.max() + 1)])


def per_image_band_power(x: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """(N, num_bands): each image's own band power (mean over channels and the band's coordinates)."""
    u2 = scipy.fft.dctn(x, axes=(-2, -1), norm="ortho") ** 2
    return np.stack([u2[..., bands == b].mean(axis=(1, 2)) for b in range(bands.max() + 1)], 1)


def standard_error(values: np.ndarray) -> np.ndarray:
    return values.std(axis=0, ddof=1) / math.sqrt(len(values))


# Bands -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 5, 8, 28])
def test_default_bands_of_a_square_image_are_the_integer_radius(size):
    expected = [[math.isqrt(k * k + m * m) for m in range(size)] for k in range(size)]
    bands = radial_bands(size, size)
    assert bands.dtype == torch.int64 and bands.tolist() == expected
    assert (bands == 0).sum() == 1  # the DC alone


@given(h=st.integers(1, 12), w=st.integers(1, 12), n=st.integers(1, 12))
def test_num_bands_are_equal_width_bins_of_the_radial_frequency(h, w, n):
    # rho^2 = (k/h)^2 + (l/w)^2; band j is [j, j + 1) * rho_max / n, i.e. the largest j with (j rho_max / n)^2 <= rho^2
    r2 = [[(k * w) ** 2 + (m * h) ** 2 for m in range(w)] for k in range(h)]  # coordinate (k, l = m)
    r2_max = r2[-1][-1]
    expected = [[max(j for j in range(n) if j * j * r2_max <= n * n * v) for v in row] for row in r2]
    if len({b for row in expected for b in row}) < n:
        with pytest.raises(ValueError, match="empty"):
            radial_bands(h, w, n)
        return
    assert radial_bands(h, w, n).tolist() == expected


@given(h=st.integers(1, 20), w=st.integers(1, 20))
def test_default_bands_are_non_empty_radial_and_start_at_the_dc(h, w):
    bands = radial_bands(h, w)
    assert bands[0, 0] == 0 and (bands == 0).sum() == 1
    assert torch.bincount(bands.flatten()).min() > 0
    assert (bands.diff(dim=0) >= 0).all() and (bands.diff(dim=1) >= 0).all()


@pytest.mark.parametrize("args, error, match", [
    ((4, 4, 50), ValueError, "empty"), ((0, 4), ValueError, "height"), ((4, 4, 0), ValueError, "num_bands"),
    ((4.5, 4), TypeError, "height"),
])
def test_bad_band_arguments_are_refused(args, error, match):
    with pytest.raises(error, match=match):
        radial_bands(*args)


# Power spectrum ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, num_bands", [((5, 2, 4, 6), None), ((5, 2, 4, 6), 3), ((3, 1, 28, 28), 8),
                                              ((2, 3, 64, 64), 10)])  # 64x64 takes the CPU FFT path
def test_power_spectrum_is_the_band_mean_of_scipys_orthonormal_dct(shape, num_bands):
    x = np.random.default_rng(0).uniform(-1, 1, shape)
    bands = radial_bands(*shape[-2:], num_bands)
    expected = scipy_band_power(x, bands.numpy())
    got = power_spectrum(torch.from_numpy(x), bands)
    assert got.dtype == f64 and got.shape == (int(bands.max()) + 1,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(power_spectrum(torch.from_numpy(x).float(), bands).numpy(), expected, rtol=1e-5)


def test_power_spectrum_in_another_basis_is_the_band_mean_of_its_coordinates():
    """Any basis with per-pixel frequencies: a random orthogonal Q on each (H, W) image, u = Q^T vec(x)."""
    rng = np.random.default_rng(4)
    q = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    lam = rng.uniform(0, 10, (4, 6))
    basis = lc.MatrixBasis(torch.from_numpy(q), event_shape=(4, 6), frequencies_squared=torch.from_numpy(lam))
    x = rng.uniform(-1, 1, (5, 2, 4, 6))
    bands = radial_bands(4, 6, 3)
    u2 = ((x.reshape(5, 2, 24) @ q) ** 2).mean((0, 1)).reshape(4, 6)
    expected = [u2[bands.numpy() == b].mean() for b in range(3)]
    np.testing.assert_allclose(power_spectrum(torch.from_numpy(x), bands, basis).numpy(), expected, rtol=1e-12)


def test_a_basis_without_per_pixel_frequencies_is_refused_by_name():
    x, bands = torch.rand(3, 2, 4, 6, dtype=f64), radial_bands(4, 6)
    with pytest.raises(TypeError, match="power_spectrum needs a basis with frequencies_squared.*IdentityBasis"):
        power_spectrum(x, bands, lc.IdentityBasis())
    with pytest.raises(ValueError, match="spectrum_ratio needs frequencies_squared broadcastable to.*MatrixBasis"):
        spectrum_ratio(x, x, bands, random_frequency_basis())  # (C, H, W) frequencies: no per-pixel band
    with pytest.raises(ValueError, match="cannot act on events"):
        power_spectrum(x, bands, lc.DCTBasis(6, 4))


def test_two_halves_of_one_gaussian_draw_have_ratio_one_within_sampling_error():
    rng = np.random.default_rng(1)
    n, h, w = 4000, 8, 8
    k, m = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    std = 1 / (1 + k + m)  # a decaying spectrum, independent coordinates
    x = scipy.fft.idctn(std * rng.standard_normal((n, 1, h, w)), axes=(-2, -1), norm="ortho")
    bands = radial_bands(h, w)
    a, b = x[: n // 2], x[n // 2:]
    ratio = spectrum_ratio(torch.from_numpy(a), torch.from_numpy(b), bands).numpy()
    pa, pb = per_image_band_power(a, bands.numpy()), per_image_band_power(b, bands.numpy())
    rel_se = np.hypot(standard_error(pa) / pa.mean(0), standard_error(pb) / pb.mean(0))
    assert (np.abs(ratio - 1) < 5 * rel_se).all(), (ratio, rel_se)
    assert rel_se.max() < 0.15  # the check has teeth: 5 SE is below a factor of 2 in every band


def test_scaling_the_samples_by_c_scales_every_band_by_c_squared():
    x = torch.rand(6, 2, 4, 6, dtype=f64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ratio = spectrum_ratio(0.5 * x, x, radial_bands(4, 6))
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.25), rtol=1e-12, atol=0)


@pytest.mark.parametrize("v", [0.01, 0.25])
def test_white_noise_of_variance_v_adds_v_to_every_band_within_sampling_error(v):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (3000, 2, 6, 6)) ** 3
    noisy = x + math.sqrt(v) * rng.standard_normal(x.shape)
    bands = radial_bands(6, 6)
    added = (power_spectrum(torch.from_numpy(noisy), bands) - power_spectrum(torch.from_numpy(x), bands)).numpy()
    per_image = per_image_band_power(noisy, bands.numpy()) - per_image_band_power(x, bands.numpy())
    se = standard_error(per_image)
    assert (np.abs(added - v) < 5 * se).all(), (added, se)
    assert (5 * se < v / 2).all()


BANDS = radial_bands(4, 6)
GOOD = torch.zeros(3, 2, 4, 6)


@pytest.mark.parametrize("samples, reference, bands, error, match", [
    (GOOD[:, :1], GOOD + 1, BANDS, ValueError, "same"),  # channels differ
    (GOOD, GOOD + 1, radial_bands(6, 4), ValueError, r"\(H, W\)"),
    (GOOD[:0], GOOD + 1, BANDS, ValueError, "non-empty"),
    (GOOD[0], GOOD + 1, BANDS, ValueError, r"\(N, C, H, W\)"),
    (GOOD.clone().index_fill_(0, torch.tensor([1]), float("nan")), GOOD + 1, BANDS, ValueError, "non-finite"),
    (GOOD, torch.full((3, 2, 4, 6), float("inf")), BANDS, ValueError, "non-finite"),
    (GOOD.long(), GOOD + 1, BANDS, TypeError, "floating"),
    (GOOD, GOOD + 1, BANDS.double(), TypeError, "integer"),
    (GOOD, GOOD + 1, BANDS * 2, ValueError, "gaps"),
    (GOOD, GOOD + 1, BANDS - 1, ValueError, ">= 0"),
    (GOOD + 1, GOOD, BANDS, ValueError, "reference's power is 0 in band 0"),
])
def test_bad_spectrum_input_is_refused_by_name(samples, reference, bands, error, match):
    with pytest.raises(error, match=match):
        spectrum_ratio(samples, reference, bands)


# The Gaussian fit and the Wiener estimator -----------------------------------------------------------------------

def dense_vt(corruption) -> np.ndarray:
    """V^T as a (D, D) matrix, u = V^T x on flattened (C, H, W), from scipy or the given Q (not lincorrupt.basis)."""
    eye = np.eye(D).reshape(D, *SHAPE)
    if isinstance(corruption.basis, lc.DCTBasis):
        return scipy.fft.dctn(eye, axes=(-2, -1), norm="ortho").reshape(D, D).T
    if isinstance(corruption.basis, lc.MatrixBasis):  # the registry's random Q, given as input: V = Q
        return random_frequency_basis().q.numpy().T
    assert isinstance(corruption.basis, lc.IdentityBasis)
    return np.eye(D)


def random_gaussian(seed: int, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    return 0.3 * rng.standard_normal(d), a @ a.T / d + 0.05 * np.eye(d)


def as_fit(mean: np.ndarray, cov: np.ndarray, shape=SHAPE) -> GaussianFit:
    return GaussianFit(torch.from_numpy(mean).reshape(shape), torch.from_numpy(cov))


def per_coordinate(corruption, t: float) -> tuple[np.ndarray, np.ndarray]:
    alpha, sigma = corruption.alpha_sigma(torch.tensor([t], dtype=f64))
    return tuple(v.expand(1, *corruption.shape).reshape(-1).numpy() for v in (alpha, sigma))


def test_the_fit_is_numpys_mean_and_unbiased_covariance_plus_the_ridge():
    x = np.random.default_rng(4).uniform(-1, 1, (50, *SHAPE))
    fit = GaussianFit.of(torch.from_numpy(x).float(), ridge=1e-3)
    flat = x.astype(np.float32).astype(np.float64).reshape(50, D)
    assert fit.mean.shape == SHAPE and fit.cov.shape == (D, D) and fit.cov.dtype == f64
    np.testing.assert_allclose(fit.mean.reshape(-1).numpy(), flat.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fit.cov.numpy(), np.cov(flat, rowvar=False) + 1e-3 * np.eye(D), rtol=1e-10, atol=1e-14)


def test_in_basis_is_v_transpose_mean_and_v_transpose_s_v(corruption):
    mean, cov = random_gaussian(5)
    vt = dense_vt(corruption)
    mu, c = as_fit(mean, cov).in_basis(corruption.basis)
    np.testing.assert_allclose(mu.numpy(), vt @ mean, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), vt @ cov @ vt.T, atol=1e-12)


@pytest.mark.parametrize("times", [[0.1], [0.3], [0.7], [1.0], [0.15, 0.15, 0.6]])
def test_wiener_x_hat_is_gaussian_conditioning_of_the_joint_in_data_space(corruption, times):
    mean, cov = random_gaussian(6)
    vt = dense_vt(corruption)
    z = np.random.default_rng(7).standard_normal((len(times), D))
    expected = []
    for t, z_row in zip(times, z):
        a, s = per_coordinate(corruption, t)
        A = vt.T @ np.diag(a) @ vt  # z_t = A x + V diag(s) V^T eps
        cov_z = A @ cov @ A.T + vt.T @ np.diag(s**2) @ vt
        expected.append(mean + cov @ A.T @ np.linalg.solve(cov_z, z_row - A @ mean))
    got = wiener_x_hat(as_fit(mean, cov), corruption, torch.from_numpy(z).reshape(-1, *SHAPE),
                       torch.tensor(times, dtype=f64))
    assert got.shape == (len(times), *SHAPE) and got.dtype == f64
    np.testing.assert_allclose(got.reshape(len(times), D).numpy(), np.array(expected), rtol=1e-8, atol=1e-9)


def test_wiener_x_hat_for_a_covariance_diagonal_in_the_basis_is_the_scalar_filter(corruption):
    rng = np.random.default_rng(8)
    vt = dense_vt(corruption)
    mu, c = 0.3 * rng.standard_normal(D), rng.uniform(0.01, 1.0, D)
    fit = as_fit(vt.T @ mu, vt.T @ np.diag(c) @ vt)
    a, s = per_coordinate(corruption, 0.2)
    u_t = rng.standard_normal((3, D))
    u_x = mu + c * a / (a**2 * c + s**2) * (u_t - a * mu)  # per coordinate: E[u_x | u_t] of scalar Gaussians
    z_t = torch.from_numpy(u_t @ vt).reshape(3, *SHAPE).float()
    got = wiener_x_hat(fit, corruption, z_t, 0.2)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().reshape(3, D).numpy() @ vt.T, u_x, rtol=1e-4, atol=1e-5)


def test_wiener_and_fit_errors_are_clear():
    c = lc.DDPM(SHAPE)
    fit = as_fit(*random_gaussian(9))
    with pytest.raises(ValueError, match=r"corruption needs \(2, 4, 6\) and \(48, 48\)"):
        wiener_x_hat(as_fit(*random_gaussian(9, 24), shape=(1, 4, 6)), c, torch.zeros(2, *SHAPE), 0.5)
    with pytest.raises(ValueError, match="z_t must have shape"):
        wiener_x_hat(fit, c, torch.zeros(2, 1, 4, 6), 0.5)
    with pytest.raises(ValueError, match="covariance"):
        wiener_x_hat(GaussianFit(fit.mean, fit.cov[1:]), c, torch.zeros(2, *SHAPE), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wiener_x_hat(fit, c, torch.zeros(2, *SHAPE), 1.5)
    with pytest.raises(ValueError, match="positive definite"):  # a singular fit
        wiener_x_hat(GaussianFit(torch.zeros(SHAPE), torch.zeros(D, D, dtype=f64)), c, torch.zeros(1, *SHAPE), 0.0)
    with pytest.raises(ValueError, match="N >= 2"):
        GaussianFit.of(torch.zeros(1, *SHAPE))
    with pytest.raises(ValueError, match="ridge"):
        GaussianFit.of(torch.zeros(3, *SHAPE), ridge=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        GaussianFit.of(torch.full((3, *SHAPE), float("nan")))


# Band errors against the Wiener estimator ------------------------------------------------------------------------

SMALL = (1, 8, 8)


def smooth_gaussian() -> tuple[np.ndarray, np.ndarray]:
    """A smooth image covariance (squared-exponential in pixel distance) and a random mean, on 8x8."""
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    cov = 0.25 * np.exp(-((pos[:, None] - pos[None]) ** 2).sum(-1) / (2 * 1.5**2)) + 0.01 * np.eye(64)
    return 0.2 * np.random.default_rng(10).standard_normal(64), cov


def draw(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> torch.Tensor:
    x = np.random.default_rng(seed).multivariate_normal(mean, cov, n)
    return torch.from_numpy(x).reshape(n, *SMALL)


def test_band_error_ratio_is_one_for_the_wiener_estimate_and_zero_for_the_truth():
    x = draw(*smooth_gaussian(), 20, 11)
    w = x + 0.1 * torch.randn(x.shape, dtype=f64, generator=torch.Generator().manual_seed(0))
    bands = radial_bands(8, 8, 4)
    assert torch.equal(band_error_ratio(x, w, w, bands), torch.ones(4, dtype=f64))
    assert torch.equal(band_error_ratio(x, x, w, bands), torch.zeros(4, dtype=f64))
    with pytest.raises(ValueError, match="one estimate per image"):
        band_error_ratio(x, w[:5], w, bands)
    with pytest.raises(ValueError, match="Wiener estimator's error is 0"):
        band_error_ratio(x, w, x, bands)


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0])  # 0: the fit's mean; others: a Wiener filter of a wrong covariance
def test_no_estimator_beats_the_wiener_filter_on_data_from_the_fit(scale):
    mean, cov = smooth_gaussian()
    c, fit, bands = lc.BlurringDiffusion(SMALL), as_fit(mean, cov, SMALL), radial_bands(8, 8, 4)
    x = draw(mean, cov, 4000, 12)
    z_t, _ = c.diffuse(x, 0.2, generator=torch.Generator().manual_seed(1))
    wiener = wiener_x_hat(fit, c, z_t, 0.2)
    other = (wiener_x_hat(as_fit(mean, scale * cov, SMALL), c, z_t, 0.2) if scale
             else fit.mean.expand_as(x))
    ratio = band_error_ratio(x, other, wiener, bands).numpy()
    gap = per_image_band_power((other - x).numpy(), bands.numpy()) - per_image_band_power((wiener - x).numpy(),
                                                                                         bands.numpy())
    wiener_error = scipy_band_power((wiener - x).numpy(), bands.numpy())
    assert (ratio - 1 > -5 * standard_error(gap) / wiener_error).all(), ratio
    assert ratio.mean() > 1  # on average over bands strictly worse


def test_denoising_band_errors_of_the_wiener_model_the_oracle_and_the_mean():
    mean, cov = smooth_gaussian()
    c, fit, bands = lc.BlurringDiffusion(SMALL), as_fit(mean, cov, SMALL), radial_bands(8, 8, 4)
    x, times = draw(mean, cov, 256, 13), (0.1, 0.15, 0.2, 0.3)

    def run(model, prediction, **kw):
        return denoising_band_errors(model, c, fit, x, times, bands, prediction,
                                     generator=torch.Generator().manual_seed(2), **kw)

    def wiener_eps(z, t):
        return c.convert(wiener_x_hat(fit, c, z, t), z, t, source="x", target="eps")

    for model, prediction in ((lambda z, t: wiener_x_hat(fit, c, z, t), "x"), (wiener_eps, "eps")):
        ratios = run(model, prediction)
        assert list(ratios) == list(times)
        for r in ratios.values():
            torch.testing.assert_close(r, torch.ones(4, dtype=f64), rtol=1e-9, atol=0)
    torch.testing.assert_close(run(wiener_eps, "eps", batch_size=10), run(wiener_eps, "eps"), rtol=1e-12, atol=0)
    for r in run(lambda z, t: x, "x").values():  # an oracle that knows x
        assert (r < 1e-20).all()
    ratios, g = run(lambda z, t: fit.mean.expand_as(z), "x"), torch.Generator().manual_seed(2)
    for t in times:  # the fit's mean: no better than Wiener, which saw the same z_t (the same draws, in order)
        z_t, _ = c.diffuse(x, torch.tensor(t, dtype=f64), generator=g)  # float64 times, as for float64 x
        model_error, wiener_error = (fit.mean - x).numpy(), (wiener_x_hat(fit, c, z_t, t) - x).numpy()
        expected = scipy_band_power(model_error, bands.numpy()) / scipy_band_power(wiener_error, bands.numpy())
        np.testing.assert_allclose(ratios[t].numpy(), expected, rtol=1e-10)
        gap = per_image_band_power(model_error, bands.numpy()) - per_image_band_power(wiener_error, bands.numpy())
        assert (expected - 1 > -5 * standard_error(gap) / scipy_band_power(wiener_error, bands.numpy())).all()
        assert expected[0] > 1.2  # in the low band, where z_t still holds the signal, Wiener is far better


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_diagnostics_on_cuda_match_the_cpu():
    cuda, mean, cov = torch.device("cuda"), *smooth_gaussian()
    c, fit, bands = lc.BlurringDiffusion(SMALL), as_fit(mean, cov, SMALL), radial_bands(8, 8, 4)
    x = draw(mean, cov, 32, 14)
    z_t, _ = c.diffuse(x, torch.tensor(0.2, dtype=f64), generator=torch.Generator().manual_seed(3))
    c_gpu, fit_gpu = lc.BlurringDiffusion(SMALL).to(cuda), GaussianFit(fit.mean.to(cuda), fit.cov.to(cuda))
    wiener = wiener_x_hat(fit_gpu, c_gpu, z_t.to(cuda), 0.2)
    assert wiener.device.type == "cuda"
    torch.testing.assert_close(wiener.cpu(), wiener_x_hat(fit, c, z_t, 0.2), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(power_spectrum(x.to(cuda), bands).cpu(), power_spectrum(x, bands), rtol=1e-10, atol=0)
    ratios = denoising_band_errors(lambda z, t: wiener_x_hat(fit_gpu, c_gpu, z, t), c_gpu, fit_gpu, x.to(cuda),
                                   (0.1, 0.3), bands, "x", generator=torch.Generator(cuda).manual_seed(0))
    for r in ratios.values():
        assert r.device.type == "cuda"
        torch.testing.assert_close(r.cpu(), torch.ones(4, dtype=f64), rtol=1e-9, atol=0)
