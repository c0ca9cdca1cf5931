"""The "data" time grid and the statistic it reads: each property against a direct computation
written out here (scipy's DCT for the variance, log1p for the information), and one real-size
convergence check of every sampler on it with an exact denoiser."""

import math

import numpy as np
import pytest
import scipy.fft
import torch

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS

f64 = torch.float64
SHAPE = (1, 8, 8)


def spectrum_std(shape):
    """DCT-coefficient standard deviations from 4 down to ~0.03: a power law as natural images have, above
    the noise floor of the schedules at t = 0 (blurring's sigma_0 = e^-5), as 8-bit data is."""
    _, h, w = shape
    k = torch.arange(h, dtype=f64)[:, None] ** 2 + torch.arange(w, dtype=f64)[None] ** 2
    return ((1 + k).pow(-1.25) * 4 + 0.03).expand(shape)


def spiky_data(shape, n=400, seed=0):
    """Gaussian images with the spectrum of :func:`spectrum_std`."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, *shape, generator=g, dtype=f64) * spectrum_std(shape)
    return lc.DCTBasis(*shape[1:]).from_basis(u)


def test_fit_data_statistics_is_the_variance_of_each_dct_coefficient():
    x = spiky_data(SHAPE)
    c = lc.BlurringDiffusion(SHAPE).fit_data_statistics(x)
    coefficients = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(c.data_var.numpy(), coefficients.var(0, ddof=1), rtol=1e-10)
    assert c.data_var.shape == SHAPE and c.data_var.dtype == f64
    assert c.to(torch.float32).data_var is not None  # a buffer: it moves with the corruption


def test_fit_data_statistics_refuses_bad_batches():
    c = lc.BlurringDiffusion(SHAPE)
    with pytest.raises(ValueError, match="at least 2"):
        c.fit_data_statistics(torch.zeros(1, *SHAPE))
    with pytest.raises(ValueError, match="shape"):
        c.fit_data_statistics(torch.zeros(5, 1, 4, 4))


def information(c, times):
    """I_i(t) = 1/2 log(1 + alpha_t[i]^2 Var_i / sigma_t[i]^2), (T, D), written with log1p (not softplus)."""
    coef = c.coefficients(times)
    snr_var = (coef.alpha**2 / coef.sigma**2 * c.data_var).expand(len(times), *c.shape)
    return 0.5 * torch.log1p(snr_var).flatten(1)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_data_grid_bounds_every_coordinates_information_step(name):
    c = CORRUPTIONS[name]()
    c.fit_data_statistics(spiky_data(c.shape).to(torch.float32))
    steps = 24
    times = lc.GRIDS["data"](c, steps)
    assert times[0] == 1 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    end = 0.0 if bool(torch.isfinite(c.coefficients(torch.zeros(1, dtype=f64)).logsnr).all()) else \
        lc.sampling.grids.T_EPS
    dense = torch.linspace(1, end, 200_001, dtype=f64)
    info = information(c, dense)
    total = float((info[1:] - info[:-1]).abs().amax(1).sum())  # ell(1), on a grid independent of the sampler's
    at = information(c, times[:-1])
    moves = (at[1:] - at[:-1]).abs().amax(1)
    assert float(moves.max()) <= 1.01 * total / steps, (moves, total / steps)
    assert float(moves.sum()) > 0.5 * total  # the steps are not wasted where nothing moves


def test_data_grid_with_unit_variance_is_the_info_grid():
    c = lc.BlurringDiffusion(SHAPE)
    c.data_var = torch.ones(SHAPE, dtype=f64)
    torch.testing.assert_close(lc.GRIDS["data"](c, 17), lc.GRIDS["info"](c, 17), rtol=0, atol=0)


def test_data_grid_moves_steps_to_where_the_large_coordinates_are_generated():
    """The DC of data with a strong DC is generated late (near t = 1): the data grid puts more
    points there than the unit-variance info grid does."""
    c = lc.BlurringDiffusion(SHAPE).fit_data_statistics(spiky_data(SHAPE))
    late = lambda times: int((times > 0.5).sum())
    assert late(lc.GRIDS["data"](c, 20)) > late(lc.GRIDS["info"](c, 20))


def test_data_grid_without_statistics_names_the_fix():
    c = lc.BlurringDiffusion(SHAPE)
    with pytest.raises(ValueError, match=r"fit_data_statistics\(x\)"):
        lc.sample(lambda z, t: z, c, 2, steps=4, grid="data", method="dpm++2m")


# ----------------------------------------------------------------- real size, exact denoiser
def kl_of_affine_output(c, var, method, steps):
    """KL of the sampler's output to zero-mean Gaussian data with covariance diag(var) in the basis, from the
    exact q(u_1), on the "data" grid: lc.GaussianData.diagonal (every coordinate a scalar problem)."""
    data = lc.GaussianData.diagonal(torch.zeros_like(var), var)
    return data.sample_kl(c, method, steps, "data", exact_prior=True).item()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(m for m, sampler in lc.SAMPLERS.items() if not sampler.stochastic))
def test_every_deterministic_sampler_converges_at_28x28_on_the_data_grid(method):
    shape = (1, 28, 28)
    c = lc.BlurringDiffusion(shape, sigma_blur_max=17.5)
    var = spectrum_std(shape) ** 2
    c.data_var = var
    errors = [kl_of_affine_output(c, var, method, n) for n in (10, 40, 160)]
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < 0.1 * errors[0] and math.isfinite(errors[2]), errors


# ----------------------------------------------------------------- the Trainer records it
def test_the_trainer_records_the_data_statistics_and_lc_load_restores_them(tmp_path):
    from helpers.training import make_trainer

    trainer = make_trainer(tmp_path / "run", steps=1)
    images = torch.stack([trainer.dataset[i] for i in range(len(trainer.dataset))]).double() / 127.5 - 1
    expected = scipy.fft.dctn(images.numpy(), axes=(-2, -1), norm="ortho").var(0, ddof=1)
    np.testing.assert_allclose(trainer.corruption.data_var.numpy(), expected, rtol=1e-10)
    trainer.fit()
    model = lc.load(tmp_path / "run")
    torch.testing.assert_close(model.corruption.data_var, trainer.corruption.data_var)
    x = model.sample(2, steps=3, method="dpm++2m", grid="data", generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, *trainer.shape) and bool(torch.isfinite(x).all())


def test_the_trainer_keeps_statistics_the_user_fitted(tmp_path):
    from helpers.training import SHAPE, make_trainer

    c = lc.BlurringDiffusion(SHAPE)
    c.data_var = torch.full(SHAPE, 0.5, dtype=f64)
    assert bool((make_trainer(tmp_path / "run", steps=1, corruption=c).corruption.data_var == 0.5).all())
