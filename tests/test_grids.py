"""Time grids: the log-SNR grid against the cosine schedule's closed-form inverse, equal steps of
the mean log-SNR for every corruption, and the information grid's bounded steps."""

import math

import numpy as np
import pytest
import torch

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS
from helpers.gaussian import SHAPE

f64 = torch.float64


def test_logsnr_grid_is_the_inverse_of_the_cosine_schedule():
    c = lc.DDPM(SHAPE, schedule="cosine")
    steps = 12
    times = lc.GRIDS["logsnr"](c, steps).numpy()
    limit_max = math.atan(math.exp(-5.0))
    limit_min = math.atan(math.exp(5.0)) - limit_max
    logsnr = np.linspace(-10.0, 10.0, steps + 1)
    expected = (np.arctan(np.exp(-logsnr / 2)) - limit_max) / limit_min
    np.testing.assert_allclose(times, expected, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_logsnr_grid_decreases_from_one_to_zero_in_equal_log_snr_steps(name):
    from lincorrupt.sampling.grids import mean_log_snr

    c = CORRUPTIONS[name]()
    times = lc.GRIDS["logsnr"](c, 16)
    assert times[0] == 1 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    level = mean_log_snr(c, times[:-1])
    gaps = level[1:] - level[:-1]
    torch.testing.assert_close(gaps, gaps[:1].expand_as(gaps), rtol=1e-6, atol=1e-8)


def information_moves(c, times):
    """Largest change of softplus(log SNR) over coordinates, per interval of ``times``."""
    info = torch.nn.functional.softplus(c.coefficients(times).logsnr).flatten(1)
    return (info[1:] - info[:-1]).abs().amax(1)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_info_grid_bounds_every_coordinates_information_step(name):
    c = CORRUPTIONS[name]()
    steps = 24
    times = lc.GRIDS["info"](c, steps)
    assert times[0] == 1 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    dense = torch.linspace(1, 0, 200_001, dtype=f64)
    if not bool(torch.isfinite(c.coefficients(dense[-1:]).logsnr).all()):  # noise-free start: the grid ends at T_EPS
        dense = torch.linspace(1, lc.sampling.grids.T_EPS, 200_001, dtype=f64)
    total = float(information_moves(c, dense).sum())  # ell(1), on a grid independent of the sampler's
    moves = information_moves(c, times[:-1])
    assert float(moves.max()) <= 1.01 * total / steps, (moves, total / steps)
    assert float(moves.sum()) > 0.5 * total  # the steps are not wasted where nothing moves


def test_info_grid_of_a_scalar_schedule_is_equal_information_steps():
    c = lc.DDPM(SHAPE, schedule="cosine")
    moves = information_moves(c, lc.GRIDS["info"](c, 12))
    torch.testing.assert_close(moves, moves[:1].expand_as(moves), rtol=1e-3, atol=0)
