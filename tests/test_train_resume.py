"""The training loop: a resumed run continues exactly as if never stopped; SIGTERM saves and stops."""

import json
import signal
import threading

import pytest
import torch

import lincorrupt as lc
from helpers.training import SHAPE, assert_same_state, make_trainer
from lincorrupt.train import CheckpointError, TrainConfig


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", 7)
    assert full.fit() == "done"
    first = make_trainer(tmp_path / "part", 3)  # a run stopped at step 3 ...
    first.fit()
    second = make_trainer(tmp_path / "part", 7)  # ... and a fresh process resuming it (epoch boundary at 5 crossed)
    second.resume(tmp_path / "part" / "checkpoint.pt")
    second.fit()
    assert len(full.losses) == 7
    assert first.losses + second.losses == full.losses  # bit-for-bit on CPU
    assert_same_state(full, second)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7] and all(r["loss"] > 0 for r in records)


def test_sigterm_saves_and_the_run_resumes_exactly(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    full = make_trainer(tmp_path / "full", 5)
    full.fit()
    run = make_trainer(tmp_path / "run", 5)
    loss_fn = run.loss

    def loss_then_sigterm(*args, **kw):
        if run.step == 2:
            signal.raise_signal(signal.SIGTERM)  # arrives mid-step; the step completes, then save and stop
        return loss_fn(*args, **kw)

    run.loss = loss_then_sigterm
    assert run.fit() == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again
    resumed = make_trainer(tmp_path / "run", 5)
    resumed.resume(tmp_path / "run" / "checkpoint.pt")
    assert resumed.step == 3
    resumed.fit()
    assert run.losses + resumed.losses == full.losses
    assert_same_state(full, resumed)


def test_checkpoint_of_another_corruption_or_shape_is_refused(tmp_path):
    make_trainer(tmp_path, 1).fit()
    other = make_trainer(tmp_path / "x", 1, corruption=lc.DDPM(SHAPE))
    with pytest.raises(CheckpointError, match="trained with corruption BlurringDiffusion.*this run uses DDPM"):
        other.resume(tmp_path / "checkpoint.pt")


def test_sample_grid_with_the_ema_model(tmp_path):
    t = make_trainer(tmp_path, 1, grid_size=4, sample_steps=3)
    x = t.sample_grid(tmp_path / "grid.png")
    assert x.shape == (4, *SHAPE) and torch.isfinite(x).all() and (tmp_path / "grid.png").stat().st_size > 0


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="precision='fp8'"):
        TrainConfig(precision="fp8")


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    t = make_trainer(tmp_path, 4, ckpt_every=1, log_every=1)
    loss_fn = t.loss
    t.loss = lambda *a, **kw: loss_fn(*a, **kw) * (float("nan") if t.step == 2 else 1.0)
    with pytest.raises(FloatingPointError, match="loss became nan by step 3"):
        t.fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
