"""The Fashion-MNIST studies' shared set-up (``bench_quality.py``, ``bench_guidance.py``): the models, the
training recipe, the budgets, the reference data and the sample-quality metrics.

The metrics are the Trainer's evaluator's (:data:`lincorrupt.train.evaluation.METRICS`: FID, KID over its 50
subsets, precision and recall with k = 3 against as many test images as samples); the records keep KID
scaled by 1e3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

import lincorrupt as lc
from lincorrupt.data import load_fashion_mnist, to_model_range
from lincorrupt.metrics import GaussianFit, extract_features, load_feature_net
from lincorrupt.train import TrainConfig
from lincorrupt.train.evaluation import METRICS, kid_metric, quantize

SHAPE = (1, 28, 28)
SCALE = 28 / 32  # blur widths are in pixels: scale the 32x32 paper's values to keep each frequency's attenuation

#: How every model is sampled for its evaluations: (sampler, grid, NFE). DPM-Solver++(3M) on the "data" grid
#: (each coordinate's information steps bounded for the training data's own spectrum) at 20 NFE, between
#: 250-step and 1000-step ancestral sampling in KL for the exact denoiser of the data's Gaussian fit at a
#: fraction of the cost (the Results page has the figures and their command); the CPU study cannot afford more.
SAMPLER = ("dpm++3m", "data", 20)
#: The sampler sweep with trained networks (``--phase nfe``): the two headline models (seed 0) at their last
#: kept checkpoint, sampled with each (sampler, grid, NFE): ancestral sampling beside the solvers and grids.
NFE_SWEEP = (("ancestral", "uniform", 50), ("ancestral", "uniform", 100), ("dpm++3m", "data", 10),
             ("dpm++3m", "data", 20), ("dpm++3m", "data", 50), ("dpm++3m", "logsnr", 20), ("dpm++2m", "data", 20))


@dataclass(frozen=True)
class Model:
    """A corruption and the prediction its network is trained with."""

    build: Callable[[torch.Tensor], lc.DiagonalizableCorruption]  # from training images in [-1, 1]
    prediction: str
    also: tuple[tuple[str, str, int], ...] = ()  # further (sampler, grid, NFE) its EMA weights are evaluated with
    weighting: str = "none"  # the loss weighting (lincorrupt.weightings.WEIGHTINGS)
    weighting_options: tuple[tuple[str, float], ...] = ()  # its options as (name, value) pairs


def _blurring(width: float) -> Callable[[torch.Tensor], lc.DiagonalizableCorruption]:
    return lambda train: lc.BlurringDiffusion(SHAPE, sigma_blur_max=width, min_scale=1e-3)


def _soft(train: torch.Tensor) -> lc.DiagonalizableCorruption:
    """Soft Diffusion with 32 blur levels chosen by W2 on 10,000 training images (blur 0.01 to the
    paper's unscaled 23 px, as the Results page's model was trained; noise 0.01 to 0.1) and IHDM's
    empirical prior of 1,000 blurred images. With
    x-prediction the default loss weights the x error by alpha_t^2 / s_t^2 (Soft Score Matching's
    alpha_t^2 times 1/s_t^2, lincorrupt.snr_weighting): the unweighted eps loss, as for the others."""
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    c = lc.SoftDiffusion.fit(train[index[:10_000]], num_levels=32, sigma_blur_max=23.0)
    c.prior = lc.EmpiricalPrior.fit(c, train[index[:1000]])
    return c


MODELS: dict[str, Model] = {
    "blur17.5-v": Model(_blurring(20.0 * SCALE), "v"),
    "blur10-v": Model(_blurring(10.0), "v"),
    "blur5-v": Model(_blurring(5.0), "v"),
    "blur2-v": Model(_blurring(2.0), "v"),
    "noblur-v": Model(_blurring(0.0), "v"),
    "blur17.5-eps": Model(_blurring(20.0 * SCALE), "eps"),
    "noblur-eps": Model(_blurring(0.0), "eps"),
    # its own momentum sampler, and the sampler that was best for it with the exact denoiser at 20 NFE
    "soft-x": Model(_soft, "x", also=(("momentum", "uniform", 20), ("dpm++2m", "uniform", 20))),
}
HEADLINE = ("blur17.5-v", "noblur-v")
#: The weighting study: the headline pair retrained with each loss weighting of lincorrupt.weightings, in each
#: coordinate's own log-SNR, as (blur model, no-blur model) per weighting; "none" (the unweighted loss) is the
#: headline pair itself. "isotropic" without blur is "none" (the same weights up to rounding): its no-blur
#: model is noblur-v.
WEIGHTED: dict[str, tuple[str, str]] = {"none": HEADLINE}
for _label, _weighting, _options in (("isotropic", "isotropic", ()), ("min-snr5", "min-snr", (("gamma", 5.0),)),
                                     ("sigmoid0", "sigmoid", (("b", 0.0),))):
    for _model in HEADLINE[:1] if _weighting == "isotropic" else HEADLINE:
        MODELS[f"{_model}-{_label}"] = replace(MODELS[_model], weighting=_weighting, weighting_options=_options)
    WEIGHTED[_label] = tuple(f"{m}-{_label}" if f"{m}-{_label}" in MODELS else m for m in HEADLINE)


@dataclass(frozen=True)
class Run:
    """One training run: a model, a seed and its length in base budgets (evaluated after each)."""

    model: str
    seed: int = 0
    budgets: int = 1

    @property
    def name(self) -> str:
        return f"{self.model}-s{self.seed}"


@dataclass(frozen=True)
class Budget:
    """Everything that sets the study's size (the CPU study, the GPU mode, or the --tiny code check)."""

    unet: dict
    steps: int  # the base budget
    batch_size: int
    samples: int
    bpd_images: int
    kid_subset: int
    test_images: int
    wiener_images: int
    sampler: tuple[str, str, int] = SAMPLER
    jobs: int = 2
    train_images: int | None = None  # None: all 60,000
    nfe_samples: int = 500  # per sampler of the NFE sweep
    nfe_sweep: tuple[tuple[str, str, int], ...] = NFE_SWEEP
    first: int | None = None  # with --samples above the default: also score the first (default count) samples
    extra: dict = field(default_factory=dict)


UNET = dict(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0, groups=8)
FULL = Budget(unet=UNET, steps=500, batch_size=32, samples=1000, bpd_images=2000, kid_subset=1000,
              test_images=10_000, wiener_images=500)
GPU = Budget(unet=UNET, steps=500, batch_size=320, samples=5000, bpd_images=2000, kid_subset=1000,
             test_images=10_000, wiener_images=500, sampler=("dpm++3m", "data", 50), jobs=6)
TINY = Budget(unet=dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, groups=4),
              steps=2, batch_size=8, samples=24, bpd_images=8, kid_subset=8, test_images=200, wiener_images=16,
              sampler=("dpm++3m", "data", 3), jobs=2, train_images=512, nfe_samples=8,
              nfe_sweep=(("ancestral", "uniform", 3), ("dpm++3m", "data", 3)))


def config(run: Run, budget: Budget, steps: int, out: Path) -> TrainConfig:
    model = MODELS[run.model]
    return TrainConfig(steps=steps, batch_size=budget.batch_size, lr=1e-3, warmup_steps=min(200, steps),
                       ema_decay=0.999, ema_warmup_power=2 / 3, hflip=False, prediction=model.prediction,
                       weighting=model.weighting, weighting_options=dict(model.weighting_options) or None,
                       seed=run.seed, num_workers=0, log_every=50, sample_every=0, ckpt_every=250, progress=False,
                       out_dir=str(out / run.name / "run"))


def quality(real: np.ndarray, fake: np.ndarray, kid_subset: int) -> dict:
    """The Trainer's evaluator's metrics of ``fake`` against ``real`` (both (N, D) features), computed as it does
    (:class:`lincorrupt.train.QualityEvaluator` with :data:`~lincorrupt.train.evaluation.METRICS`, KID on
    subsets of ``kid_subset`` rows): FID, KID and its std x 1e3, precision, recall, and the sample count."""
    record = {}
    for metric in {**METRICS, "kid": partial(kid_metric, subset_size=kid_subset)}.values():
        record.update(metric(real, fake))
    return {"fid": record["fid"], "kid_x1e3": 1e3 * record["kid"], "kid_std_x1e3": 1e3 * record["kid_std"],
            "precision": record["precision"], "recall": record["recall"], "samples": len(fake)}


def draw(model: lc.DiffusionModel, n: int, sampler: tuple[str, str, int], seed: int, device: torch.device,
         batch: int = 500, **options) -> torch.Tensor:
    """``n`` samples of ``model`` with ``sampler`` = (method, grid, NFE), quantised to 8 bits (as saved images), on
    the CPU; batch k's noise is seeded ``seed * 1_000_003 + k``; ``options`` (e.g. ``labels``, ``guidance``) go
    to :meth:`~lincorrupt.DiffusionModel.sample`, a tensor of ``n`` per sample sliced per batch."""
    method, grid, nfe = sampler
    out = []
    for k, start in enumerate(range(0, n, batch)):
        size = min(batch, n - start)
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + k)
        per_batch = {key: v[start:start + size] if isinstance(v, torch.Tensor) else v for key, v in options.items()}
        x = model.sample(size, steps=nfe, method=method, grid=grid, generator=g, device=device, **per_batch)
        out.append(quantize(x).cpu())
    return torch.cat(out)


def load(path: Path, device: torch.device, train_x: torch.Tensor, ema: bool = True) -> lc.DiffusionModel:
    """The model of a kept checkpoint (:func:`lincorrupt.load`: network, corruption and prediction as trained), on
    ``device`` with its corruption's data statistics fitted to 10,000 training images (for the "data" grid)."""
    model = lc.load(path, map_location=device, ema=ema)
    model.corruption.fit_data_statistics(train_x[:10_000].double().to(device))
    return model.requires_grad_(False)


@dataclass
class Reference:
    """What every evaluation compares with: the feature net, test images and their features, the data's fit."""

    net: torch.nn.Module
    test_x: torch.Tensor  # (N, 1, 28, 28) in [-1, 1]
    train_x: torch.Tensor  # the training images in [-1, 1]
    real: np.ndarray
    spectral: GaussianFit  # the Gaussian fit of the training images

    @classmethod
    def build(cls, budget: Budget) -> Reference:
        net = load_feature_net("fashion-mnist")
        test_x = to_model_range(load_fashion_mnist(train=False)[0][:budget.test_images])
        train_x = to_model_range(load_fashion_mnist(train=True)[0][:budget.train_images])
        return cls(net, test_x, train_x, extract_features(net, test_x), GaussianFit.of(train_x))

