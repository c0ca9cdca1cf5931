"""The EMA's warm-up: the decay schedule and the average it produces, written out here."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lincorrupt.train.ema import EMA, warmup_decay


@given(st.integers(0, 10**7), st.floats(0.0, 0.99999), st.sampled_from([0.0, 0.5, 2 / 3, 0.75, 1.0]))
def test_warmup_decay_is_the_capped_power_law(step, decay, power):
    expected = decay if power == 0 else min(decay, 1 - (1 + step) ** -power)
    assert warmup_decay(step, decay, power) == pytest.approx(expected, rel=0, abs=1e-15)


def test_warmup_decay_rises_to_the_ceiling():
    values = [warmup_decay(n, 0.999, 2 / 3) for n in (0, 10, 1000, 31_622, 10**6)]
    assert values[0] == 0.0  # the first update copies the model
    assert values == sorted(values) and values[-1] == 0.999
    assert values[2] == pytest.approx(0.99, abs=1e-4)  # 1000^(-2/3) = 0.01


@pytest.mark.parametrize("power", [0.0, 2 / 3])
def test_ema_is_the_weighted_average_of_the_weight_sequence(power):
    """theta_ema after n updates = sum_j w_j theta_j with w_j = (1 - d_j) prod_{i > j} d_i, plus
    prod_i d_i theta_init (the weights it started from)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup_power=power)
    init = [p.detach().clone() for p in model.parameters()]
    history, decays = [], []
    for n in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, n)
        history.append([p.detach().clone() for p in model.parameters()])
        decays.append(0.9 if power == 0 else min(0.9, 1 - (1 + n) ** -power))
    for k, p_ema in enumerate(ema.module.parameters()):
        expected = init[k] * torch.tensor(decays).prod()
        for j, weights in enumerate(history):
            expected = expected + (1 - decays[j]) * torch.tensor(decays[j + 1:]).prod() * weights[k]
        torch.testing.assert_close(p_ema, expected)


def test_ema_refuses_a_power_outside_0_1():
    with pytest.raises(ValueError, match="warm-up power"):
        EMA(torch.nn.Linear(1, 1), 0.9, warmup_power=1.5)
