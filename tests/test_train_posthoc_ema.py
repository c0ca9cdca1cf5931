"""Post-hoc EMA (Karras et al. 2024, EDM2): the power-function EMA against its closed-form weights, and the
EMA of another length reconstructed from snapshots of two profiles against the one computed directly on a
scalar sequence, within the Cauchy-Schwarz bound of the least-squares fit; then through the Trainer."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import lincorrupt as lc
from helpers.training import make_trainer
from lincorrupt.train import CheckpointError
from lincorrupt.train.ema import (
    PowerEMA,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    posthoc_ema,
    profile_inner_product,
    sigma_rel_to_gamma,
)

STEPS = 3000
SEQUENCE = np.array([math.sin(k / 37) + 0.002 * k + 0.3 * math.cos(k / 5) for k in range(1, STEPS + 1)])


def direct_power_ema(values, gamma):
    """theta_k's weight in the EMA at t = len(values): (k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1)."""
    k = np.arange(1, len(values) + 1, dtype=np.float64)
    return float(np.sum((k ** (gamma + 1) - (k - 1) ** (gamma + 1)) * values) / len(values) ** (gamma + 1))


class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("sigma_rel", [0.03, 0.05, 0.1, 0.2])
def test_sigma_rel_and_gamma_are_inverse_and_the_profile_has_that_relative_width(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-12)
    # the profile (gamma + 1) s^gamma on [0, 1]: its standard deviation by quadrature
    mean = integrate.quad(lambda s: s * (gamma + 1) * s**gamma, 0, 1)[0]
    var = integrate.quad(lambda s: (s - mean) ** 2 * (gamma + 1) * s**gamma, 0, 1)[0]
    assert math.sqrt(var) == pytest.approx(sigma_rel, rel=1e-9)


@pytest.mark.parametrize("t_a, g_a, t_b, g_b", [(100.0, 6.9, 300.0, 16.9), (300.0, 16.9, 100.0, 3.0),
                                                (50.0, 2.0, 50.0, 9.0)])
def test_profile_inner_product_is_the_integral_of_the_two_profiles(t_a, g_a, t_b, g_b):
    def product(s):  # p_t(s) = (gamma + 1) s^gamma / t^(gamma + 1) on [0, t]
        return (g_a + 1) * s**g_a / t_a ** (g_a + 1) * (g_b + 1) * s**g_b / t_b ** (g_b + 1)

    expected = integrate.quad(product, 0, min(t_a, t_b), epsabs=0, epsrel=1e-12)[0]
    assert profile_inner_product(t_a, g_a, t_b, g_b) == pytest.approx(expected, rel=1e-9)


def test_power_ema_is_its_closed_form_and_snapshots_reconstruct_other_lengths(tmp_path):
    model, sigma_rels = Scalar(), (0.05, 0.10)
    ema = PowerEMA(model, sigma_rels)
    every = 100
    for step, value in enumerate(SEQUENCE):
        with torch.no_grad():
            model.theta.fill_(value)
        ema.update(model, step)
        if (step + 1) % every == 0:
            ema.snapshot(tmp_path, step + 1)
    for sigma_rel, average in zip(sigma_rels, ema.averages):
        assert average.theta.item() == pytest.approx(direct_power_ema(SEQUENCE, sigma_rel_to_gamma(sigma_rel)),
                                                     rel=1e-12)
    norm_theta = math.sqrt(np.sum(SEQUENCE**2))  # ||theta|| in L2(0, T), the weights piecewise constant per step
    steps = [s for s in range(every, STEPS + 1, every) for _ in sigma_rels]
    gammas = [sigma_rel_to_gamma(r) for _ in range(every, STEPS + 1, every) for r in sigma_rels]
    for sigma_rel in (0.04, 0.07, 0.15):
        direct = direct_power_ema(SEQUENCE, sigma_rel_to_gamma(sigma_rel))
        reconstructed = posthoc_ema(tmp_path, sigma_rel)["theta"].item()
        _, residual = posthoc_coefficients(steps, gammas, STEPS, sigma_rel_to_gamma(sigma_rel))
        bound = residual * norm_theta  # Cauchy-Schwarz: |int (p_fit - p_target) theta| <= residual ||theta||
        assert abs(reconstructed - direct) <= bound + 1e-12, (sigma_rel, reconstructed, direct, bound)
        assert bound < 0.02 * np.ptp(SEQUENCE), (sigma_rel, bound)  # 30 snapshots fit closely: a real test
    # an earlier step, from the snapshots up to it
    direct = direct_power_ema(SEQUENCE[:1500], sigma_rel_to_gamma(0.08))
    assert posthoc_ema(tmp_path, 0.08, step=1500)["theta"].item() == pytest.approx(direct, abs=0.02 * np.ptp(SEQUENCE))


def test_refusals():
    with pytest.raises(ValueError, match=r"sigma_rel must be a number in \(0, 0.2887\]"):
        sigma_rel_to_gamma(0.3)
    with pytest.raises(ValueError, match="sigma_rel must be"):
        sigma_rel_to_gamma(0.0)


def test_trainer_keeps_the_profiles_snapshots_and_resumes_them(tmp_path):
    trainer = make_trainer(tmp_path / "a", steps=6, posthoc_ema=(0.05, 0.1), snapshot_every=2)
    trainer.fit()
    assert sorted(p.name for p in (tmp_path / "a" / "posthoc").glob("*.pt")) == ["0000002.pt", "0000004.pt",
                                                                                  "0000006.pt"]
    # a profile that was tracked is reconstructed exactly (coefficient 1 on its last snapshot)
    tracked = trainer.posthoc.averages[1].state_dict()
    for name, value in posthoc_ema(tmp_path / "a", 0.1).items():
        torch.testing.assert_close(value, tracked[name], rtol=1e-5, atol=1e-6)
    lc.load(tmp_path / "a").network.load_state_dict(posthoc_ema(tmp_path / "a", 0.07))  # strict: every key
    # resumed from step 4 (its checkpoint carries the profiles), the run ends with the same profiles
    first = make_trainer(tmp_path / "b", steps=4, posthoc_ema=(0.05, 0.1), snapshot_every=2)
    first.fit()
    resumed = make_trainer(tmp_path / "b", steps=6, posthoc_ema=(0.05, 0.1), snapshot_every=2)
    resumed.resume(tmp_path / "b" / "checkpoint.pt")
    resumed.fit()
    for a, b in zip(trainer.posthoc.state_dict().values(), resumed.posthoc.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="no post-hoc EMA profiles"):
        make_trainer(tmp_path / "c", steps=6, posthoc_ema=(0.05, 0.1), snapshot_every=2).resume(
            _plain_checkpoint(tmp_path))


def _plain_checkpoint(tmp_path):
    plain = make_trainer(tmp_path / "plain", steps=1)
    plain.fit()
    return tmp_path / "plain" / "checkpoint.pt"
