"""``TrainConfig``: the optimisation recipe and the run's bookkeeping, every field a flag with its reason."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lincorrupt.sampling import SAMPLERS
from lincorrupt.train.cli import Interval, OptionError, check_options, option
from lincorrupt.train.ema import MAX_SIGMA_REL
from lincorrupt.train.optim import OPTIMIZERS
from lincorrupt.train.precision import PRECISIONS
from lincorrupt.weightings import TIME_SAMPLINGS, WEIGHTINGS, get_weighting

__all__ = ["TrainConfig", "default_workers", "MAX_WORKERS"]

#: Upper bound of the default number of DataLoader workers per process.
MAX_WORKERS = 8


def default_workers() -> int:
    """DataLoader workers per process when ``num_workers`` is -1: the CPUs this process may use,
    shared among the processes of this machine (``LOCAL_WORLD_SIZE``), at most :data:`MAX_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


#: Bounds of the counts that must be positive and of the positive reals.
AT_LEAST_1, POSITIVE = Interval(1), Interval(0, low_open=True)


@dataclass
class TrainConfig:
    """The optimisation recipe and the run's bookkeeping; every field is also a flag of the CIFAR-10 example.

    The defaults are the recipe of DDPM's CIFAR-10 run (Ho et al. 2020): 800k steps of batch 128,
    Adam at lr 2e-4, EMA decay 0.9999, random horizontal flips (their appendix B), 5000 warm-up
    steps and gradient clipping at norm 1 (their released code) and the unweighted loss. The one
    departure is the prediction: v (Salimans & Ho 2022), the library's default everywhere, where
    DDPM and the blurring-diffusion paper predict eps. The blurring-diffusion paper (Hoogeboom &
    Salimans 2023) reuses this recipe and DDPM's UNet for CIFAR-10; its own are the corruption's
    settings (the example's flags).
    Each field's help text is its ``--help`` line and its entry below.
    """

    steps: int = option(800_000, "Optimisation steps in all (DDPM's CIFAR-10 run: 800k).", bounds=AT_LEAST_1)
    batch_size: int = option(128, "Global batch, split over the processes (DDPM: 128).", bounds=AT_LEAST_1)
    lr: float = option(2e-4, "Peak learning rate of Adam/AdamW (DDPM's CIFAR-10: 2e-4).", bounds=POSITIVE)
    warmup_steps: int = option(5000, "Steps of linear learning-rate warm-up from 0 (DDPM's code: 5000; 0: none).",
                               bounds=Interval(0))
    grad_clip: float = option(1.0, "Clip the gradient's global norm to this value (DDPM's code: 1).", bounds=POSITIVE)
    ema_decay: float = option(0.9999, "Decay of the exponential moving average of the weights used for sampling, "
                              "in [0, 1) (DDPM: 0.9999; 0: the raw weights).", bounds=Interval(0, 1, high_open=True))
    ema_warmup_power: float = option(0.0, "EMA warm-up: update n uses decay min(ema_decay, 1 - (1 + n)^-power), "
                                     "so short runs forget the initial weights (k-diffusion: 2/3 up to ~100k steps, "
                                     "3/4 beyond; 0: off, DDPM's constant decay).", bounds=Interval(0, 1))
    optimizer: str = option("adam", "Adam (DDPM) or AdamW; AdamW only differs with weight_decay > 0.",
                            choices=sorted(OPTIMIZERS))
    weight_decay: float = option(0.0, "Weight decay of the optimiser (DDPM: none).", bounds=Interval(0))
    hflip: bool = option(True, "Random horizontal flips of the training images (DDPM's CIFAR-10; turn it off for "
                         "data whose orientation matters, e.g. Fashion-MNIST's shoes all face left).")
    prediction: str = option("v", "What the network predicts: eps, x or v (v: the library's default everywhere; "
                             "DDPM and blurring diffusion predicted eps).", choices=["eps", "x", "v"])
    weighting: str = option("none", "Loss weighting, a name of lincorrupt.weightings.WEIGHTINGS, each a function of "
                            "every coordinate's own log-SNR (none: the plain MSE of the prediction, DDPM's).",
                            choices=sorted(WEIGHTINGS))
    weighting_options: dict[str, float] | None = option(None, "Options of the weighting, as name=number pairs "
                                                        "(sigmoid: b; min-snr: gamma; none: the defaults).")
    time_sampling: str = option("uniform", "How t is drawn: uniform (DDPM), or importance (a proposal that follows "
                                "the weighting's mean over coordinates, its density divided out of the loss).",
                                choices=sorted(TIME_SAMPLINGS))
    posthoc_ema: tuple[float, ...] = option((), "Post-hoc EMA (EDM2): the lengths sigma_rel of the power-function "
                                            "EMA profiles kept besides the EMA, snapshotted every snapshot_every "
                                            "steps (EDM2: 0.05,0.1; empty: off).",
                                            bounds=Interval(0, MAX_SIGMA_REL, low_open=True))
    snapshot_every: int = option(0, "Steps between snapshots of the post-hoc EMA profiles (and at the end), from "
                                 "which lincorrupt.train.posthoc_ema rebuilds an EMA of any length.",
                                 bounds=Interval(0))
    label_dropout: float = option(0.1, "Class-conditional models: the share of training labels replaced by the null "
                                  "label -1, so one network learns the unconditional model for classifier-free "
                                  "guidance too (Ho & Salimans 2022: 0.1 to 0.2); unconditional models have no labels "
                                  "to drop.", bounds=Interval(0, 1, high_open=True))
    guidance: float = option(1.0, "Class-conditional models: the classifier-free guidance scale of the sample grids "
                             "and evaluations (1: the conditional model; 0: the unconditional one).",
                             bounds=Interval(0))
    precision: str = option("auto", "Autocast of the network on CUDA: auto (bf16 where supported, else fp16), "
                            "fp32, bf16 or fp16; the CPU always trains in fp32.", choices=["auto", *PRECISIONS])
    channels_last: bool = option(False, "NHWC convolutions: faster on recent GPUs with autocast.")
    compile: bool = option(False, "torch.compile the network (under its autocast) for training; the EMA and the "
                           "checkpoints stay eager.")
    seed: int = option(0, "Seed of every random draw: the data order, t, the noise, the flips, dropout and the "
                       "initial weights.", bounds=Interval(0))
    grad_accum: int = option(1, "Micro-batches per step and process (the global batch stays batch_size).",
                             bounds=AT_LEAST_1)
    checkpoint_activations: bool = option(False, "Recompute the network's blocks in the backward pass: less "
                                          "memory for about one more forward pass.")
    tf32: bool = option(True, "fp32 runs on CUDA: TF32 matrix products and convolutions in the network (the "
                        "corruption stays fp32).")
    num_workers: int = option(-1, "DataLoader workers per process (-1: the CPUs per process, at most 8).",
                              bounds=Interval(-1))
    prefetch_factor: int = option(4, "Batches each DataLoader worker loads ahead (with workers only).",
                                  bounds=AT_LEAST_1)
    log_every: int = option(100, "Steps between records of metrics.jsonl and progress-bar updates.",
                            bounds=AT_LEAST_1)
    sample_every: int = option(10_000, "Steps between sample grids (0: never).", bounds=Interval(0))
    ckpt_every: int = option(5_000, "Steps between checkpoints (0: only the one written at the end).",
                             bounds=Interval(0))
    sample_steps: int = option(250, "Sampler steps of the preview grids (a cheap preview, not the FID protocol).",
                               bounds=AT_LEAST_1)
    sampler: str = option("ancestral", "Sampler of the preview grids, a key of lincorrupt.SAMPLERS (ancestral: "
                          "the papers' sampler).")
    eval_every: int = option(0, "Steps between quality evaluations by the Trainer's evaluator (0: never).",
                             bounds=Interval(0))
    grid_size: int = option(64, "Images in a preview grid.", bounds=AT_LEAST_1)
    progress: bool = option(True, "Show a progress bar.")
    out_dir: str = option("run", "Folder of the checkpoints, metrics.jsonl and sample grids.")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field (at construction, and again in :meth:`Trainer.fit`, so that a field changed since is
        checked too).

        Raises:
            OptionError: naming the field and what it must be.
        """
        if isinstance(self.num_workers, int) and self.num_workers < -1:
            raise OptionError("num_workers", f"num_workers must be >= 0 (or -1: one per CPU, at most {MAX_WORKERS}), "
                              f"got {self.num_workers}")
        check_options(self)
        if self.sampler not in SAMPLERS:
            raise OptionError("sampler", f"sampler={self.sampler!r}: expected one of {sorted(SAMPLERS)}")
        if self.posthoc_ema and not self.snapshot_every:
            raise OptionError("snapshot_every", f"posthoc_ema={self.posthoc_ema} needs snapshot_every > 0")
        try:
            get_weighting(self.weighting, self.weighting_options)
        except ValueError as e:
            raise OptionError("weighting_options", str(e)) from None
        if self.batch_size % self.grad_accum:
            raise OptionError("batch_size", f"batch_size={self.batch_size} is not divisible by "
                              f"grad_accum={self.grad_accum}")
