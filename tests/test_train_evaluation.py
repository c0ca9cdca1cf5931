"""Quality during training: the Trainer's evaluator hook, its records and plot, and the 8-bit quantisation."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from lincorrupt.data import TensorImages
from lincorrupt.nn import UNet
from lincorrupt.train import TrainConfig, Trainer
from lincorrupt.train.distributed import DistInfo
from lincorrupt.train.evaluation import (
    METRICS,
    QualityEvaluator,
    feature_space,
    fid_metric,
    kid_metric,
    precision_recall_metric,
    quantize,
)

SHAPE = (1, 8, 8)
PROJECTION = torch.randn(64, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def project(x: torch.Tensor) -> np.ndarray:
    """A fixed random linear feature map, (B, 1, 8, 8) -> (B, 5): any feature network will do for the hook."""
    return (x.double().flatten(1) @ PROJECTION).numpy()


@given(st.lists(st.floats(-3, 3), min_size=1, max_size=20))
def test_quantize_is_8_bit_rounding_of_the_clipped_image(values):
    x = torch.tensor(values, dtype=torch.float64)
    expected = np.round((np.clip(values, -1, 1) + 1) * 127.5) / 127.5 - 1  # numpy's round half to even, as torch
    np.testing.assert_allclose(quantize(x).numpy(), expected, atol=1e-12)


def test_trainer_logs_quality_every_eval_every_steps(tmp_path):
    images = torch.randint(0, 256, (16, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    reference = project(images.float() / 127.5 - 1)
    evaluator = QualityEvaluator(project, reference, "random projection", num_samples=6, steps=2, batch_size=4,
                                 metrics={**METRICS, "kid": partial(kid_metric, subset_size=5)})
    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, num_workers=0, log_every=2, sample_every=0, ckpt_every=0,
                      prediction="v", progress=False, out_dir=str(tmp_path), eval_every=2)
    net = UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4)
    trainer = Trainer(net, lc.BlurringDiffusion(SHAPE), TensorImages(images, SHAPE), cfg, evaluator=evaluator)
    assert trainer.fit() == "done"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["eval"] == "random projection" and r["eval_samples"] == 6 and r["eval_sampler"] == "dpm++3m/data/2"
        assert r["fid"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and np.isfinite(r["kid"])
    assert (tmp_path / "quality.png").stat().st_size > 0
    assert all("loss" in r for r in records if "eval" not in r)  # training records keep their form


@pytest.mark.parametrize("corruption, expected", [
    (lc.BlurringDiffusion(SHAPE), "dpm++3m/data/20"), (lc.DDPM(SHAPE), "dpm++3m/logsnr/20"),
    (lc.IHDM(SHAPE), "dpm++3m/info/20"), (lc.SoftDiffusion(SHAPE), "dpm++3m/info/20")])
def test_the_evaluator_samples_each_corruption_with_its_fast_sampling_unless_told(corruption, expected,
                                                                                  monkeypatch):
    """The defaults are the corruption's (measured per corruption on the Benchmarks page); given values win."""
    assert corruption.fast_sampling.method in lc.SAMPLERS and corruption.fast_sampling.grid in lc.GRIDS
    seen = []

    class Recorder:
        dist, device, num_classes = DistInfo(), torch.device("cpu"), None

        def sample(self, n, **options):
            seen.append("{method}/{grid}/{steps}".format(**options))
            return torch.zeros(n, *SHAPE)

    Recorder.corruption = corruption
    reference = np.random.default_rng(0).normal(size=(8, 5))
    QualityEvaluator(project, reference, "p", num_samples=4, batch_size=4, metrics={"fid": METRICS["fid"]})(Recorder())
    QualityEvaluator(project, reference, "p", num_samples=4, batch_size=4, metrics={"fid": METRICS["fid"]},
                     sampler="ddim", grid="uniform", steps=7)(Recorder())
    assert seen == [expected, "ddim/uniform/7"]


def test_evaluator_needs_enough_samples():
    with pytest.raises(ValueError, match="num_samples must be >= 4"):
        QualityEvaluator(project, np.zeros((8, 5)), "x", num_samples=3)


def test_eval_every_must_not_be_negative():
    with pytest.raises(ValueError, match="eval_every must be >= 0"):
        TrainConfig(eval_every=-1)


def test_feature_space_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="no shipped feature net takes"):
        feature_space("auto", (3, 64, 64))
    with pytest.raises(ValueError, match="takes \\(1, 28, 28\\) images"):
        feature_space("fashion-mnist", (3, 32, 32))


def test_evaluator_computes_only_the_metrics_it_is_given(tmp_path):
    images = torch.randint(0, 256, (16, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    reference = project(images.float() / 127.5 - 1)
    cfg = TrainConfig(steps=1, batch_size=4, warmup_steps=1, num_workers=0, log_every=1, sample_every=0,
                      ckpt_every=0, prediction="v", progress=False, out_dir=str(tmp_path))
    net = UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4)
    trainer = Trainer(net, lc.BlurringDiffusion(SHAPE), TensorImages(images, SHAPE), cfg)
    only_fid = QualityEvaluator(project, reference, "p", num_samples=5, steps=2, batch_size=2,
                                metrics={"fid": fid_metric})
    record = only_fid(trainer)
    assert {k for k in record if k not in ("eval", "eval_samples", "eval_sampler")} == {"fid"}
    # the same samples (the seed fixes them) with every metric: the same FID, and the other metrics besides
    every = {**METRICS, "kid": partial(kid_metric, subset_size=4)}
    full = QualityEvaluator(project, reference, "p", num_samples=5, steps=2, batch_size=2, metrics=every)(trainer)
    assert full["fid"] == record["fid"] and {"kid", "kid_std", "precision", "recall"} <= set(full)
    # a metric of one's own: it sees the reference and the 5 samples' features
    seen = QualityEvaluator(project, reference, "p", num_samples=5, steps=2, batch_size=2,
                            metrics={"sizes": lambda real, fake: {"n_real": len(real), "n_fake": len(fake)}})(trainer)
    assert (seen["n_real"], seen["n_fake"]) == (len(reference), 5)
    for bad in (("fid",), {}):
        with pytest.raises(TypeError, match="metrics must be a non-empty mapping of names to metric"):
            QualityEvaluator(project, reference, "p", metrics=bad)
    with pytest.raises(TypeError, match=r"metrics \['fid'\] are not callable"):
        QualityEvaluator(project, reference, "p", metrics={"fid": "fid"})


def test_the_default_metrics_are_the_library_formulas_on_the_same_features():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(40, 3)), rng.normal(0.5, 1.0, size=(20, 3))
    from lincorrupt.metrics import frechet_distance, kid, precision_recall
    assert fid_metric(real, fake) == {"fid": frechet_distance(real, fake)}
    mean, std = kid(real, fake, subsets=50, subset_size=20)  # subset size capped by the 20 samples
    assert kid_metric(real, fake) == {"kid": mean, "kid_std": std}
    precision, recall = precision_recall(real[:20], fake, k=3)
    assert precision_recall_metric(real, fake) == {"precision": precision, "recall": recall}


def test_sample_features_draws_the_share_in_batches_with_a_seeded_generator():
    from lincorrupt.metrics import sample_features
    sizes = []

    def draw(n, g):
        sizes.append(n)
        return torch.randn(n, 3, generator=g, dtype=torch.float64)

    a = sample_features(draw, 7, lambda x: x.numpy() * 2, batch_size=3, seed=5)
    assert sizes == [3, 3, 1] and a.shape == (7, 3) and a.dtype == np.float32  # features see float32 images
    g = torch.Generator().manual_seed(5 * 1_000_003)
    expected = np.concatenate([torch.randn(n, 3, generator=g, dtype=torch.float64).float().numpy() * 2
                               for n in (3, 3, 1)])
    np.testing.assert_array_equal(a, expected)
