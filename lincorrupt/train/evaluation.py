"""Sample quality during training: FID, KID and precision/recall of the EMA model in a chosen feature space.

``Trainer(..., evaluator=QualityEvaluator(...))`` with ``TrainConfig(eval_every=N)`` draws
``num_samples`` images with a fast sampler every N steps, embeds them with ``features`` and
compares them with the reference features of held-out images; the numbers go to
``metrics.jsonl`` (records with an ``"eval"`` key) and a plot, ``quality.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from lincorrupt.data.images import to_unit_range
from lincorrupt.metrics import (
    FEATURE_NETS,
    activations,
    extract_features,
    frechet_distance,
    kid,
    load_feature_net,
    load_inception,
    precision_recall,
    sample_features,
)
from lincorrupt.train.metrics_log import read_records

__all__ = ["QualityEvaluator", "METRICS", "Metric", "fid_metric", "kid_metric", "precision_recall_metric",
           "feature_space", "quantize", "plot_quality"]

#: A metric of :class:`QualityEvaluator`: ``metric(reference, fake) -> record``, two (N, D) feature arrays to
#: a dict of named numbers.
Metric = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def fid_metric(reference: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """``{"fid": ...}``: :func:`~lincorrupt.metrics.frechet_distance` of the two feature sets."""
    return {"fid": frechet_distance(reference, fake)}


def kid_metric(reference: np.ndarray, fake: np.ndarray, subset_size: int = 1000,
               subsets: int = 50) -> dict[str, float]:
    """``{"kid": mean, "kid_std": std}``: :func:`~lincorrupt.metrics.kid` over ``subsets`` subsets of
    ``min(subset_size, len(reference), len(fake))`` rows; ``functools.partial(kid_metric, subset_size=...)``
    changes them."""
    mean, std = kid(reference, fake, subsets=subsets, subset_size=min(subset_size, len(reference), len(fake)))
    return {"kid": mean, "kid_std": std}


def precision_recall_metric(reference: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """``{"precision": ..., "recall": ...}``: :func:`~lincorrupt.metrics.precision_recall` against as many
    reference rows as there are samples (the two manifolds then have the same number of points)."""
    precision, recall = precision_recall(reference[:len(fake)], fake, k=k)
    return {"precision": precision, "recall": recall}


#: The metrics :class:`QualityEvaluator` computes by default: name -> :data:`Metric`.
METRICS: dict[str, Metric] = {"fid": fid_metric, "kid": kid_metric, "precision_recall": precision_recall_metric}


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] rounded to the 256 values of an 8-bit image, as saving them would (clipped first)."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1)


class QualityEvaluator:
    """Quality of the trainer's EMA samples against reference features.

    Args:
        features: maps images (B, C, H, W) in [-1, 1] to a (B, D) feature array, e.g.
            ``lambda x: extract_features(load_feature_net("fashion-mnist"), x)``.
        reference: (N, D) features of held-out real images, from the same ``features``.
        label: the feature space, named in the records (e.g. "Fashion-MNIST classifier").
        num_samples: generated images per evaluation (over all processes).
        steps, sampler, grid: how they are drawn (see :func:`lincorrupt.sample`); None: the corruption's
            :attr:`~lincorrupt.DiagonalizableCorruption.fast_sampling` (e.g. blurring diffusion's
            ``dpm++3m`` on the ``data`` grid with 20 steps).
        batch_size: images sampled at once per process.
        seed: the same samples' noise at every evaluation, so changes come from the weights.
        metrics: what to compute, name -> :data:`Metric` (default :data:`METRICS`, all three); e.g.
            ``{"fid": fid_metric}`` for FID alone, or ``{**METRICS, "kid": partial(kid_metric, subset_size=500)}``.
    """

    def __init__(self, features: Callable[[torch.Tensor], np.ndarray], reference: np.ndarray, label: str,
                 num_samples: int = 1000, steps: int | None = None, sampler: str | None = None,
                 grid: str | None = None,
                 batch_size: int = 250, seed: int = 0, metrics: Mapping[str, Metric] = METRICS):
        if num_samples < 4:
            raise ValueError(f"num_samples must be >= 4 for the metrics, got {num_samples}")
        if not isinstance(metrics, Mapping) or not metrics:
            raise TypeError(f"metrics must be a non-empty mapping of names to metric(reference, fake) -> dict, such "
                            f"as METRICS ({sorted(METRICS)}), got {metrics!r}")
        not_callable = sorted(str(name) for name, metric in metrics.items() if not callable(metric))
        if not_callable:
            raise TypeError(f"metrics {not_callable} are not callable: each must be metric(reference, fake) -> dict")
        self.metrics = dict(metrics)
        self.features, self.reference, self.label = features, np.asarray(reference), label
        self.num_samples, self.steps, self.sampler, self.grid = num_samples, steps, sampler, grid
        self.batch_size, self.seed = batch_size, seed

    def __call__(self, trainer) -> dict[str, float]:
        """Sample, embed and compare; returns the record (on every process)."""
        dist = trainer.dist
        fast = trainer.corruption.fast_sampling
        method, grid, steps = self.sampler or fast.method, self.grid or fast.grid, self.steps or fast.steps

        def draw(n: int, g: torch.Generator) -> torch.Tensor:  # a conditional model: classes drawn from g, guided
            return trainer.sample(n, steps=steps, method=method, grid=grid, generator=g)

        fake = sample_features(draw, self.num_samples, lambda x: self.features(quantize(x)), self.batch_size,
                               self.seed, dist.rank, dist.world_size, trainer.device)
        record = {"eval": self.label}
        for metric in self.metrics.values():
            record.update(metric(self.reference, fake))
        guidance = {"eval_guidance": trainer.cfg.guidance} if getattr(trainer, "num_classes", None) else {}
        return {**record, "eval_samples": len(fake), "eval_sampler": f"{method}/{grid}/{steps}",
                **guidance}


def plot_quality(metrics: str | Path, path: str | Path) -> None:
    """Plot FID, KID and precision/recall against the step from the ``"eval"`` records of ``metrics.jsonl``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = [r for r in read_records(metrics) if "eval" in r]
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(steps, [r.get("fid", math.nan) for r in records], "o-")
    axes[0].set_ylabel("FID")
    axes[1].errorbar(steps, [r.get("kid", math.nan) for r in records],
                     [r.get("kid_std", math.nan) for r in records], fmt="o-")
    axes[1].set_ylabel("KID")
    axes[2].plot(steps, [r.get("precision", math.nan) for r in records], "o-", label="precision")
    axes[2].plot(steps, [r.get("recall", math.nan) for r in records], "s-", label="recall")
    axes[2].set_ylim(0, 1.02)
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(f"quality in {records[-1]['eval']} features ({records[-1]['eval_samples']} samples, "
                 f"{records[-1]['eval_sampler']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def feature_space(name: str, shape: tuple[int, int, int], device: str | torch.device = "cpu",
                  inception_weights: str | None = None,
                  inception_dims: int = 2048) -> tuple[Callable[[torch.Tensor], np.ndarray], str]:
    """A feature map for :class:`QualityEvaluator` and its label.

    Args:
        name: a shipped classifier ("fashion-mnist", "cifar10"; see
            :func:`lincorrupt.metrics.load_feature_net`), "inception" (pytorch-fid's network,
            weights from a local file), or "auto": the shipped classifier whose input is ``shape``.
        shape: (C, H, W) of the images.
        inception_weights, inception_dims: for "inception" (see :func:`lincorrupt.metrics.load_inception`).
    """
    if name == "auto":
        matches = [n for n, spec in FEATURE_NETS.items() if spec.shape == tuple(shape)]
        if not matches:
            raise ValueError(f"no shipped feature net takes {tuple(shape)} images (they take "
                             f"{ {n: s.shape for n, s in FEATURE_NETS.items()} }): use inception")
        name = matches[0]
    if name == "inception":
        inception = load_inception(inception_weights, dims=inception_dims, device=device)
        return (lambda x: activations(to_unit_range(x), inception)), "Inception (pytorch-fid)"
    if name in FEATURE_NETS and FEATURE_NETS[name].shape != tuple(shape):
        raise ValueError(f"feature net {name!r} takes {FEATURE_NETS[name].shape} images, these are {tuple(shape)}")
    net = load_feature_net(name, device)
    label = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}.get(name, name)
    return (lambda x: extract_features(net, x)), f"{label} classifier"
