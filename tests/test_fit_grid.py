"""The last evaluation of a grid (``last=``) and fitted grids (``lc.fit_grid``) on the exact Gaussian oracle.

References: closed forms written out here (equal spacing in t, the cosine schedule's inverse), the oracle's
exact KL for "lower than its warm start", and the guard rails' definitions for the fitted grid's shape.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from lincorrupt.coefficients import T_EPS
from lincorrupt.grid_fit import grid_from_parameters
from lincorrupt.sampling.grids import T_LAST, earliest_time, grid_times

f64 = torch.float64
SHAPE = (1, 4, 6)


# ----------------------------------------------------------------------------- the last evaluation
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_registered_grids_are_unchanged_by_default(steps):
    c = lc.BlurringDiffusion(SHAPE)
    expected = torch.tensor([1 - k / steps for k in range(steps + 1)], dtype=f64)
    torch.testing.assert_close(grid_times(c, "uniform", steps, dtype=f64), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(grid_times(c, "logsnr", steps, dtype=f64), lc.GRIDS["logsnr"](c, steps), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["uniform", "logsnr", "info"])
@pytest.mark.parametrize("make", [lambda: lc.BlurringDiffusion(SHAPE), lambda: lc.DDPM(SHAPE), lambda: lc.IHDM(SHAPE)])
def test_last_puts_the_last_evaluation_there(name, make):
    c, steps = make(), 7
    for last in (earliest_time(c), 0.01, 0.2):
        times = grid_times(c, name, steps, dtype=f64, last=last)
        assert len(times) == steps + 1 and times[0] == 1 and times[-1] == 0
        assert float(times[-2]) == last
        assert bool((times[1:] < times[:-1]).all())


def test_last_on_the_uniform_grid_is_equal_steps_down_to_it():
    c, steps, last = lc.DDPM(SHAPE), 5, 0.1
    expected = [1 - k * (1 - last) / (steps - 1) for k in range(steps)] + [0.0]
    np.testing.assert_allclose(grid_times(c, "uniform", steps, dtype=f64, last=last).numpy(), expected, atol=1e-15)


def test_last_on_the_logsnr_grid_is_equal_log_snr_steps_down_to_it():
    c, steps, last = lc.DDPM(SHAPE, schedule="cosine"), 9, 0.03
    limit_max = math.atan(math.exp(-5.0))
    limit_min = math.atan(math.exp(5.0)) - limit_max
    logsnr_last = -2 * math.log(math.tan(limit_min * last + limit_max))  # the cosine schedule (clipped to +-10)
    logsnr = np.linspace(-10.0, logsnr_last, steps)
    expected = (np.arctan(np.exp(-logsnr / 2)) - limit_max) / limit_min
    times = grid_times(c, "logsnr", steps, dtype=f64, last=last).numpy()
    np.testing.assert_allclose(times[:-1], expected, atol=1e-9)


def test_earliest_time_follows_the_log_snr_at_zero():
    assert earliest_time(lc.DDPM(SHAPE)) == T_EPS  # discrete linear schedule: alpha_0 = 1, sigma_0 = 0
    assert earliest_time(lc.BlurringDiffusion(SHAPE)) == T_LAST  # log-SNR 10 at t = 0


def test_sample_evaluates_last_at_last():
    c, seen = lc.BlurringDiffusion(SHAPE), []
    data = lc.GaussianData.fit(torch.randn(50, *SHAPE, generator=torch.Generator().manual_seed(0)))
    lc.sample(data.model(c, "x"), c, 2, steps=4, prediction="x", method="dpm++2m", grid="logsnr", last=0.004,
              callback=lambda info: seen.append(float(info.t.reshape(-1)[0])))
    assert len(seen) == 4 and seen[-1] == pytest.approx(0.004, rel=1e-6)


def test_bad_last_is_named():
    c = lc.BlurringDiffusion(SHAPE)
    with pytest.raises(ValueError, match="tensor grid"):
        grid_times(c, torch.linspace(1, 0, 5, dtype=f64), last=0.01)
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="last evaluation"):
            grid_times(c, "uniform", 5, last=bad)
    with pytest.raises(ValueError, match="steps >= 2"):
        grid_times(c, "uniform", 1, last=0.01)


# ----------------------------------------------------------------------------- fitted grids
def _smooth_data(n=400, seed=0):
    """Correlated images (neighbouring pixels share noise) with a non-zero mean: a full covariance in any basis."""
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=f64)
    return lc.GaussianData.fit((x + x.roll(1, -1) + x.roll(1, -2)) / 2 + 0.3)


@given(a=st.lists(st.floats(-30, 30), min_size=0, max_size=6), b=st.floats(-10, 10),
       t_min=st.sampled_from([1e-5, 1e-3, 0.1]), max_ratio=st.floats(1.05, 10))
def test_the_parametrisation_keeps_the_guard_rails(a, b, t_min, max_ratio):
    times = grid_from_parameters(torch.tensor(a, dtype=f64), torch.tensor([b], dtype=f64), t_min, max_ratio)
    assert len(times) == len(a) + 3 and times[0] == 1 and times[-1] == 0
    d = (times[:-2] - times[1:-1]).numpy()
    assert (d > 0).all() and float(times[-2]) >= t_min * (1 - 1e-12)
    assert (np.maximum(d[1:] / d[:-1], d[:-1] / d[1:]) <= max_ratio * (1 + 1e-6)).all()  # float64 rounding


@pytest.mark.parametrize("make", [lambda: lc.BlurringDiffusion(SHAPE, sigma_blur_max=2.5), lambda: lc.DDPM(SHAPE)])
def test_fitted_grid_beats_its_warm_start_on_the_oracle(make):
    c, data, steps = make(), _smooth_data(), 6
    warm = lc.fit_grid(c, data, steps, max_iter=0)
    fitted = lc.fit_grid(c, data, steps)
    assert fitted.dtype == f64 and len(fitted) == steps + 1 and fitted[0] == 1 and fitted[-1] == 0
    assert bool((fitted[1:] < fitted[:-1]).all())
    kl_fitted, kl_warm = (float(data.sample_kl(c, "dpm++2m", grid=t)) for t in (fitted, warm))
    kl_registered = min(float(data.sample_kl(c, "dpm++2m", steps, grid=g)) for g in ("uniform", "logsnr", "info"))
    assert kl_fitted < kl_warm and kl_fitted < kl_registered
    x = lc.sample(data.model(c, "x"), c, 3, prediction="x", method="dpm++2m", grid=fitted)  # usable as a grid
    assert x.shape == (3, *SHAPE) and bool(torch.isfinite(x).all())


def test_guard_rails_hold_where_they_bind():
    c, data = lc.BlurringDiffusion(SHAPE, sigma_blur_max=2.5), _smooth_data()
    free = lc.fit_grid(c, data, 6, warm_iter=50, max_iter=0)
    assert float(free[-2]) < 0.05  # unconstrained, the last evaluation goes close to 0 ...
    times = lc.fit_grid(c, data, 6, t_last_min=0.05, max_ratio=1.5, warm_iter=50, max_iter=5)
    d = (times[:-2] - times[1:-1]).numpy()
    assert float(times[-2]) >= 0.05  # ... the floor holds it back
    assert (np.maximum(d[1:] / d[:-1], d[:-1] / d[1:]) <= 1.5 * (1 + 1e-9)).all()


def test_fit_grid_from_a_batch_of_images_equals_from_its_gaussian():
    c = lc.DDPM(SHAPE)
    x = torch.randn(100, *SHAPE, generator=torch.Generator().manual_seed(1))
    a = lc.fit_grid(c, x, 3, warm_iter=5, max_iter=0)
    b = lc.fit_grid(c, lc.GaussianData.fit(x), 3, warm_iter=5, max_iter=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_input_is_named():
    c, data = lc.DDPM(SHAPE), _smooth_data(50)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            lc.fit_grid(c, data, steps)
    with pytest.raises(ValueError, match="draws noise"):
        lc.fit_grid(c, data, 4, method="ancestral")
    with pytest.raises(ValueError, match="draws noise"):
        lc.fit_grid(c, data, 4, method="ddim", eta=0.5)
    with pytest.raises(ValueError, match="unknown sampling method"):
        lc.fit_grid(c, data, 4, method="euler")
    with pytest.raises(ValueError, match=r"\(N, 1, 4, 6\)"):
        lc.fit_grid(c, torch.randn(10, 1, 6, 4), 4)
    with pytest.raises(ValueError, match="shape"):
        lc.fit_grid(lc.DDPM((1, 6, 4)), data, 4)
    with pytest.raises(TypeError, match="GaussianData"):
        lc.fit_grid(c, [1.0, 2.0], 4)
    with pytest.raises(ValueError, match="max_ratio"):
        lc.fit_grid(c, data, 4, max_ratio=1.0)
    with pytest.raises(ValueError, match="t_last_min"):
        lc.fit_grid(c, data, 4, t_last_min=0.0)


# ----------------------------------------------------------------------------- a model keeps its grids
def _tiny_model():
    from lincorrupt.nn import UNet
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=4)
    return lc.DiffusionModel(net, lc.BlurringDiffusion((1, 8, 8), sigma_blur_max=2.0), prediction="v")


def test_a_saved_and_reloaded_model_samples_with_its_fitted_grid(tmp_path, caplog, capsys):
    import logging

    from lincorrupt.commands import main
    model = _tiny_model()
    x = torch.randn(80, 1, 8, 8, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    times = model.fit_grid(x, 3, "ddim", warm_iter=3, max_iter=1)
    assert model.fitted_grid("ddim", 3) is not None and model.fitted_grid("ddim", 4) is None
    path = model.save(tmp_path / "model.pt")
    loaded = lc.load(path)
    assert list(loaded.grids) == [("ddim", 3)]
    torch.testing.assert_close(loaded.grids["ddim", 3], times, rtol=0, atol=0)

    def draw(**options):
        return loaded.sample(2, steps=3, method="ddim", generator=torch.Generator().manual_seed(0), **options)

    with caplog.at_level(logging.INFO, logger="lincorrupt.model"):
        stored = draw()
    assert "grid fitted for ddim with 3 steps" in caplog.text
    torch.testing.assert_close(stored, draw(grid=times), rtol=0, atol=0)
    assert not torch.equal(stored, draw(grid="uniform"))  # the default grid would have given other samples
    assert main(["sample", str(path), "-n", "2", "-o", str(tmp_path / "a.png"), "--steps", "3", "--method", "ddim",
                 "--device", "cpu"]) == 0
    assert "using the grid fitted for ddim with 3 steps" in capsys.readouterr().out
