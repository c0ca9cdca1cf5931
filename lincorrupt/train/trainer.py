"""A corruption-agnostic training loop: ``Trainer(model, corruption, dataset, TrainConfig()).fit()``.

One step (DDPM, Ho et al. 2020, Algorithm 1, with the recipe of its CIFAR-10 run):

1. take this rank's slice of the global batch of step s (:class:`StepBatchSampler`), map to [-1, 1];
2. for each image of the slice, draw t ~ U(0, 1), eps ~ N(0, I) and the flip from a generator
   seeded by (seed, s, the image's index in the global batch): each rank draws only its own
   images, and any world size (and any ``grad_accum``) trains on the same draws;
3. ``loss = diffusion_loss(model, corruption, x, t=t, noise=eps)``, the network under autocast;
   with ``grad_accum`` > 1, steps 2-3 and the backward run per micro-batch, each loss divided
   by ``grad_accum`` (so the gradient is that of the mean over the batch; under DDP, gradients
   are all-reduced after the last micro-batch only);
4. backward (DDP averages the gradients), clip the global norm, optimiser step, warm-up
   schedule step, EMA update.

Because every random draw of step s is a function of (seed, s) and the RNG states, model, EMA,
optimiser, scheduler and grad scaler are checkpointed, a resumed run continues exactly as if
never stopped. SIGTERM/SIGINT finish the current step (under DDP: the steps up to the next log
step, where the ranks agree on stopping), save and return; DataLoader workers ignore both
signals, so a signal sent to the whole process group (as batch schedulers do) stops the run the
same way. Any other exception that escapes the loop first saves the state after the last
completed step, when it is finite. A state with a NaN or infinity is never written.

Arguments are validated on the first step only; after it a step reads nothing back to the host
(no ``.item()``, no data-dependent check), except at log steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lincorrupt.config import SpecError
from lincorrupt.data.images import to_model_range, to_unit_range
from lincorrupt.model import model_record
from lincorrupt.train.checkpoint import (
    check_compatible,
    load_checkpoint,
    remove_partial_saves,
    require_keys,
    save_checkpoint,
)
from lincorrupt.train.cli import Interval, OptionError, check_options, option
from lincorrupt.train.data_order import StepBatchSampler, derive_seed, sample_seeds
from lincorrupt.train.distributed import DistInfo, all_gather_objects, all_reduce_mean, is_distributed
from lincorrupt.train.ema import EMA
from lincorrupt.train.lock import RunLock
from lincorrupt.validation import is_validating, validate_args

__all__ = ["TrainConfig", "Trainer", "OPTIMIZERS", "PRECISIONS", "autocast_dtype", "make_optimizer", "default_workers",
           "allow_tf32", "NonFiniteStateError", "STATE_KEYS"]

#: The entries every checkpoint of :meth:`Trainer.state_dict` holds.
STATE_KEYS = ("corruption", "shape", "step", "model", "ema", "optimizer", "scheduler", "scaler", "rng", "world_size",
              "config", "extra")


class NonFiniteStateError(FloatingPointError):
    """The model, EMA or optimiser state holds NaN or infinity (and is therefore not saved)."""

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: Devices and parameter dtypes for which torch has fused Adam/AdamW kernels (one kernel per
#: step instead of one per tensor, and no host read of the step count).
FUSED_DEVICES = ("cuda", "cpu")
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# precision -> autocast dtype on CUDA (None: float32). CPU always trains in float32.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Bounds of the counts that must be positive and of the positive reals.
AT_LEAST_1, POSITIVE = Interval(1), Interval(0, low_open=True)


#: Upper bound of the default number of DataLoader workers per process.
MAX_WORKERS = 8


def default_workers() -> int:
    """DataLoader workers per process when ``num_workers`` is -1: the CPUs this process may use,
    shared among the processes of this machine (``LOCAL_WORLD_SIZE``), at most :data:`MAX_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


@contextlib.contextmanager
def allow_tf32(enabled: bool = True):
    """Within the block, CUDA float32 matmuls and cuDNN convolutions may (or may not) use TF32;
    the previous settings are restored after. No effect on CPU computations."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto", "fp32", "bf16", "fp16") on ``device``."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected 'auto' or one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision] if device.type == "cuda" else None


@dataclass
class TrainConfig:
    """The optimisation recipe and the run's bookkeeping; every field is also a flag of the CIFAR-10 example.

    The defaults are the recipe of DDPM's CIFAR-10 run (Ho et al. 2020): 800k steps of batch 128,
    Adam at lr 2e-4, EMA decay 0.9999, random horizontal flips (their appendix B), 5000 warm-up
    steps and gradient clipping at norm 1 (their released code), eps-prediction with the
    unweighted loss. The blurring-diffusion paper (Hoogeboom & Salimans 2023) reuses this recipe
    and DDPM's UNet for CIFAR-10; its own are the corruption's settings (the example's flags).
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
    optimizer: str = option("adam", "Adam (DDPM) or AdamW; AdamW only differs with weight_decay > 0.",
                            choices=sorted(OPTIMIZERS))
    weight_decay: float = option(0.0, "Weight decay of the optimiser (DDPM: none).", bounds=Interval(0))
    hflip: bool = option(True, "Random horizontal flips of the training images (DDPM's CIFAR-10).")
    prediction: str = option("eps", "What the network predicts: eps, x or v (eps with the unweighted loss: DDPM "
                             "and blurring diffusion).", choices=["eps", "x", "v"])
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
    out_dir: str = option("runs/blurring", "Folder of the checkpoints, metrics.jsonl and sample grids.")

    def __post_init__(self):
        if isinstance(self.num_workers, int) and self.num_workers < -1:
            raise OptionError("num_workers", f"num_workers must be >= 0 (or -1: one per CPU, at most {MAX_WORKERS}), "
                              f"got {self.num_workers}")
        check_options(self)
        import lincorrupt as lc
        if self.sampler not in lc.SAMPLERS:
            raise OptionError("sampler", f"sampler={self.sampler!r}: expected one of {sorted(lc.SAMPLERS)}")
        if self.batch_size % self.grad_accum:
            raise OptionError("batch_size", f"batch_size={self.batch_size} is not divisible by "
                              f"grad_accum={self.grad_accum}")


def kernel_options(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` where every parameter is a dense floating tensor on a device with fused
    Adam kernels (:data:`FUSED_DEVICES`, :data:`FUSED_DTYPES`), else ``{"foreach": True}``."""
    fused = all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES and not p.is_sparse for p in params)
    return {"fused": True, "foreach": False} if fused else {"fused": False, "foreach": True}


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured Adam/AdamW over ``model``'s parameters, fused where they allow it, else foreach."""
    params = list(model.parameters())
    return OPTIMIZERS[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay,
                                        **kernel_options(params))


def _keep_kernel_options(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` (whose saved groups carry the writer's kernel options): this
    run's options again, with each step count on its parameter's device where the kernel is fused."""
    for group in optimizer.param_groups:
        group.update(kernel_options(group["params"]))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                if group["fused"]:
                    state["step"] = state["step"].to(p.device, torch.float32)


class Warmup:
    """Learning-rate factor ``min(1, (step + 1) / warmup_steps)`` (a class so it checkpoints)."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0


class _Autocast(nn.Module):
    """Runs only the network under autocast and returns float32, so the corruption stays exact."""

    def __init__(self, net: nn.Module, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.net, self.dtype, self.channels_last = net, dtype, channels_last

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            z_t = z_t.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.net(z_t, t)
        with torch.autocast(z_t.device.type, dtype=self.dtype):
            return self.net(z_t, t).float()


class _TF32(nn.Module):
    """Runs ``net``'s forward with TF32 allowed (CUDA fp32 runs); the corruption around it stays fp32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with allow_tf32(True):
            return self.net(z_t, t)


def _default_loss(model, corruption, x, **kw):
    import lincorrupt as lc
    return lc.diffusion_loss(model, corruption, x, **kw)


def _default_sample(model, corruption, n, **kw):
    import lincorrupt as lc
    return lc.sample(model, corruption, n, **kw)


class Trainer:
    """Trains ``model`` to denoise ``corruption`` on ``dataset`` (uint8 images of ``corruption.shape``).

    Args:
        model: network ``model(z_t, t) -> prediction`` (e.g. :class:`lincorrupt.nn.UNet`).
        corruption: a ``DiagonalizableCorruption`` (moved to the device here).
        dataset: Dataset of uint8 (C, H, W) tensors (see :mod:`lincorrupt.data`).
        config: the recipe.
        dist: process placement from :func:`init_distributed` (single CPU process by default).
        extra: plain data stored in every checkpoint (e.g. the network's constructor arguments).
        loss_fn, sample_fn: default to ``lincorrupt.diffusion_loss`` / ``lincorrupt.sample``.
        evaluator: called as ``evaluator(trainer) -> dict`` every ``config.eval_every`` steps (and at
            the end) on every process, e.g. a :class:`lincorrupt.train.evaluation.QualityEvaluator`;
            its record goes to ``metrics.jsonl``, and its FID/KID/precision/recall to ``quality.png``.
    """

    def __init__(self, model: nn.Module, corruption: nn.Module, dataset: Dataset, config: TrainConfig,
                 dist: DistInfo | None = None, extra: dict[str, Any] | None = None,
                 loss_fn: Callable = _default_loss, sample_fn: Callable = _default_sample,
                 evaluator: Callable[[Trainer], dict[str, Any]] | None = None):
        self.cfg, self.dist = config, dist or DistInfo()
        self.device = self.dist.device
        self.corruption = corruption.to(self.device)
        self.shape = tuple(corruption.shape)
        self.dataset, self.extra = dataset, dict(extra or {})
        if config.batch_size % (self.dist.world_size * config.grad_accum):
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of processes "
                             f"({self.dist.world_size}) times grad_accum ({config.grad_accum})")
        self.loss_fn, self.sample_fn, self.evaluator = loss_fn, sample_fn, evaluator
        self.out_dir = Path(config.out_dir)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        if config.checkpoint_activations:
            if not hasattr(self.model, "checkpoint_activations"):
                raise ValueError(f"checkpoint_activations=True: {type(model).__name__} has no checkpoint_activations "
                                 "attribute (lincorrupt.nn.UNet has)")
            self.model.checkpoint_activations = True
        self.ema = EMA(self.model, config.ema_decay)
        self.dtype = autocast_dtype(config.precision, self.device)
        # TF32 for fp32 runs on CUDA, in the network's forward and the backward only
        self.tf32 = config.tf32 and self.device.type == "cuda" and self.dtype is None
        net, self.ddp = self.model, None
        if self.dist.world_size > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            net = self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.net = _Autocast(net, self.dtype, config.channels_last)
        if config.compile:  # compiles a wrapper: self.model, the EMA and the saved state keep their plain names
            self.net = torch.compile(self.net)
        if self.tf32:  # outside the compiled graph
            self.net = _TF32(self.net)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, Warmup(config.warmup_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        self.losses: list[float] = []  # per-step losses of this process's run (flushed at log steps)
        self._pending: list[torch.Tensor] = []
        self._stop = False
        self.stop_signal: int | None = None  # the signal that stopped fit (None: none, or another rank's)
        self._updating = False  # inside the optimiser/EMA update of a step: the state is not consistent
        self._fit_start = 0  # the step fit started from (a failure before any new step saves nothing)
        self._validated = False
        self._gen = torch.Generator(self.device)

    # ----------------------------------------------------------------- state
    def _rng_state(self) -> dict[str, torch.Tensor]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _set_rng_state(self, rng: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(rng["cpu"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)

    def state_dict(self, collective: bool = True) -> dict[str, Any]:
        """Everything a resumed run needs. ``collective`` (distributed runs): gather every rank's RNG
        (every rank must call it); else only this rank's (dropout streams then restart on resume)."""
        rng = self._rng_state()
        return {
            **_model_record(self.model, self.corruption, self.cfg.prediction),
            "corruption": type(self.corruption).__name__, "shape": list(self.shape), "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": all_gather_objects(rng) if collective else [rng],
            "world_size": self.dist.world_size, "config": asdict(self.cfg), "extra": self.extra,
        }

    def load_state_dict(self, state: dict[str, Any], path: str = "") -> None:
        """Restore a checkpoint's state (refused if it lacks an entry, or was written for another corruption
        or shape)."""
        require_keys(state, STATE_KEYS, path)
        check_compatible(state, type(self.corruption).__name__, self.shape, path)
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        _keep_kernel_options(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:  # else: dropout streams restart (all other draws are step-seeded)
            self._set_rng_state(rngs[self.dist.rank])

    def save(self, path: str | Path | None = None, collective: bool = True) -> Path:
        """Write a checkpoint (rank 0 writes; with ``collective``, every rank must call this).

        Raises:
            NonFiniteStateError: the model, EMA or optimiser state holds NaN or infinity; nothing
                is written, so the files on disk stay as they were.
        """
        path = Path(path or self.out_dir / "checkpoint.pt")
        state = self.state_dict(collective)
        check_finite(state, self.step, path)
        if self.dist.is_main:
            save_checkpoint(state, path)
        return path

    def resume(self, path: str | Path) -> None:
        """Restore from a checkpoint written by :meth:`save`."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device), str(path))

    # ----------------------------------------------------------------- step
    def batches(self):
        """Infinite iterator over this rank's uint8 batches, starting at ``self.step``. Its workers
        ignore SIGTERM and SIGINT (they stop with this process), so a signal to the whole process
        group reaches the training loop instead of killing the data loading under it."""
        sampler = StepBatchSampler(len(self.dataset), self.cfg.batch_size, self.dist.rank, self.dist.world_size,
                                   seed=self.cfg.seed, start_step=self.step)
        workers = default_workers() if self.cfg.num_workers == -1 else self.cfg.num_workers
        # the sampler fixes the order: workers only load its batches ahead, and DataLoader yields them in order
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                            prefetch_factor=self.cfg.prefetch_factor if workers > 0 else None,
                            worker_init_fn=_ignore_stop_signals if workers > 0 else None,
                            # its own generator: creating the iterator must not consume the global RNG (dropout)
                            generator=torch.Generator().manual_seed(
                                derive_seed(self.cfg.seed, self.step, self.dist.rank)))
        return iter(loader)

    def draw(self, step: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """t (n,), noise (n, *shape), flip (n,) for the images ``start .. start + n - 1`` of the
        global batch of ``step``: image i's draws come from a generator seeded by (seed, step, i),
        so they do not depend on which process draws them, nor on the micro-batch."""
        g, ts, noises, flips = self._gen, [], [], []
        for s in sample_seeds(self.cfg.seed, step, start, n):
            g.manual_seed(s)
            u = torch.rand(2, generator=g, device=self.device)
            ts.append(u[:1])
            flips.append(u[1:] < 0.5)
            noises.append(torch.randn(self.shape, generator=g, device=self.device))
        return torch.cat(ts), torch.stack(noises), torch.cat(flips)

    def loss(self, x_uint8: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Steps 1-3: the mean loss of this rank's uint8 images at ``self.step``; ``start`` is the
        first one's index in this rank's slice (a micro-batch's offset)."""
        x = to_model_range(x_uint8.to(self.device, non_blocking=True))
        first = self.dist.rank * (self.cfg.batch_size // self.dist.world_size) + start
        t, noise, flip = self.draw(self.step, first, x.shape[0])
        if self.cfg.hflip:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return self.loss_fn(self.net, self.corruption, x, prediction=self.cfg.prediction, t=t, noise=noise)

    def train_step(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """One optimisation step on this rank's uint8 batch; returns the (detached) local loss.

        With ``grad_accum`` = k, the batch runs as k equal micro-batches (forward and backward
        each), every loss divided by k; under DDP, all but the last skip the gradient all-reduce.

        Arguments are validated (:func:`lincorrupt.set_validate_args`) on this Trainer's first
        step only: the later steps read nothing back to the host.
        """
        k = self.cfg.grad_accum
        micro = x_uint8.shape[0] // k
        if micro * k != x_uint8.shape[0]:
            raise ValueError(f"a batch of {x_uint8.shape[0]} images cannot be split into grad_accum={k} micro-batches")
        losses = []
        with validate_args(is_validating() and not self._validated):
            for j in range(k):
                sync = self.ddp is None or j == k - 1
                with contextlib.nullcontext() if sync else self.ddp.no_sync():
                    loss = self.loss(x_uint8[j * micro:(j + 1) * micro], start=j * micro)
                    with allow_tf32(True) if self.tf32 else contextlib.nullcontext():
                        self.scaler.scale(loss / k if k > 1 else loss).backward()
                losses.append(loss.detach())
        self._validated = True
        self._updating = True  # from here to the step count, a failure leaves a half-updated state
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        self._updating = False
        self.last_grad_norm = grad_norm
        return losses[0] if k == 1 else torch.stack(losses).mean()

    # ----------------------------------------------------------------- loop
    def fit(self) -> str:
        """Train until ``config.steps``; returns ``"done"`` or ``"interrupted"`` (SIGTERM/SIGINT, checkpoint
        saved; :attr:`stop_signal` names the signal).

        Rank 0 holds the run folder's lock (:class:`lincorrupt.train.lock.RunLock`) meanwhile. An
        exception that escapes the loop first saves the state after the last completed step, if
        it is finite (under DDP, rank 0's state; the peers may be gone), then propagates.

        Raises:
            ValueError: ``self.step`` (a resumed checkpoint's) is beyond ``config.steps``.
            lincorrupt.train.lock.RunLockedError: another live process trains into ``out_dir``.
            NonFiniteStateError: the state became non-finite by a checkpoint step (not written).
        """
        cfg, main = self.cfg, self.dist.is_main
        if self.step > cfg.steps:
            raise ValueError(f"the checkpoint is at step {self.step}, beyond steps={cfg.steps}; "
                             f"pass steps >= {self.step} to continue training it")
        with RunLock(self.out_dir) if main else contextlib.nullcontext():
            if main:
                for tmp in remove_partial_saves(self.out_dir):
                    print(f"removed {tmp}, left by a save that was killed", file=sys.stderr)
            return self._fit(cfg, main)

    def _fit(self, cfg: TrainConfig, main: bool) -> str:
        if self.step == cfg.steps:  # nothing to train: the files on disk (and .prev) stay as they are
            return "done"
        self._fit_start = self.step
        self.model.train()
        logger = _Logger(self.out_dir, enabled=main)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress), dynamic_ncols=True)
        status, tick, tick_step = "done", time.perf_counter(), self.step
        try:
            batches = self.batches()
            with _stop_on_signals(self):
                while self.step < cfg.steps:
                    rng = self._rng_state()  # the state after the last step, restored if this step fails
                    try:
                        self._pending.append(self.train_step(next(batches)))
                    except BaseException:
                        if not self._updating:
                            self._set_rng_state(rng)
                        raise
                    step = self.step
                    log_step = step % cfg.log_every == 0 or step == cfg.steps
                    stop = self._agree_stop(log_step)
                    if log_step or stop:
                        now = time.perf_counter()
                        ips = (step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
                        loss = self._flush()
                        logger.log({"step": step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                                    "grad_norm": float(self.last_grad_norm), "images_per_s": ips,
                                    **_unreadable_record(self.dataset)})
                        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}")
                        tick, tick_step = now, step
                    bar.update(1)
                    if cfg.sample_every and step % cfg.sample_every == 0 and main:
                        self.sample_grid(self.out_dir / f"samples_{step:07d}.png")
                    if self.evaluator and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                        self.evaluate(logger)
                    if stop:
                        status = "interrupted"
                        break
                    if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != cfg.steps:
                        self.save()
            self.save()
        except BaseException as error:
            self._keep_pending()  # the losses of the completed steps (no collective: the peers may be gone)
            self._save_after_failure(error)
            raise
        finally:
            bar.close()
            logger.close()
        self._flush()
        return status

    def _save_after_failure(self, error: BaseException) -> None:
        """Save the state after the last completed step on the way out of a failed loop, when it is
        consistent (the failure was not inside an optimiser update) and finite; never masks ``error``."""
        if self.step == self._fit_start:  # nothing new: the files on disk (and .prev) stay as they are
            return
        if isinstance(error, FloatingPointError) or self._updating:
            why = "it is not finite" if isinstance(error, FloatingPointError) else "the failure interrupted an update"
            print(f"not saving step {self.step} after {type(error).__name__}: {why}", file=sys.stderr)
            return
        try:
            # under DDP the peers may be gone or stuck: no collective, rank 0 writes its own state
            path = self.save(collective=not is_distributed())
        except Exception as e:
            print(f"could not save step {self.step} after {type(error).__name__}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return
        if self.dist.is_main:
            print(f"training failed at step {self.step + 1} ({type(error).__name__}); saved step {self.step} "
                  f"to {path}", file=sys.stderr)

    def evaluate(self, logger: _Logger | None = None) -> dict[str, Any]:
        """Run the evaluator on the EMA model now; log its record and redraw ``quality.png``."""
        from lincorrupt.train.evaluation import plot_quality
        record = {"step": self.step, **self.evaluator(self)}
        if logger is not None and self.dist.is_main:
            logger.log(record)
            plot_quality(self.out_dir / "metrics.jsonl", self.out_dir / "quality.png")
        return record

    def _agree_stop(self, log_step: bool) -> bool:
        """Whether to stop now: this process's flag, or under DDP every rank's, agreed on (a host
        sync) at log steps only, so a signal stops a distributed run at the next log step."""
        if not is_distributed():
            return self._stop
        if not log_step:
            return False
        flag = torch.tensor([float(self._stop)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _keep_pending(self) -> torch.Tensor | None:
        """Move pending losses to ``self.losses``; return them stacked (None if there were none)."""
        if not self._pending:
            return None
        stacked = torch.stack(self._pending).float()
        self._pending = []
        self.losses += stacked.cpu().tolist()
        return stacked

    def _flush(self) -> float:
        """Move pending losses to ``self.losses``; return their mean over steps and ranks."""
        stacked = self._keep_pending()
        if stacked is None:
            return float("nan")
        loss = float(all_reduce_mean(stacked.mean()))
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} by step {self.step}; the last checkpoint in "
                                     f"{self.out_dir} predates it: resume from it with a lower lr or more warm-up")
        return loss

    def sampling_model(self) -> nn.Module:
        """The EMA network, under the training precision's autocast, for sampling."""
        net = _Autocast(self.ema.module, self.dtype, self.cfg.channels_last)
        return _TF32(net) if self.tf32 else net

    @torch.no_grad()
    def sample_grid(self, path: str | Path, n: int | None = None, steps: int | None = None,
                    seed: int = 0) -> torch.Tensor:
        """Sample ``n`` images with the EMA model and save them as a grid; returns them unclipped
        (only the PNG is clamped)."""
        from torchvision.utils import save_image
        n, steps = n or self.cfg.grid_size, steps or self.cfg.sample_steps
        g = torch.Generator(self.device).manual_seed(seed)
        x = self.sample_fn(self.sampling_model(), self.corruption, n, steps=steps, prediction=self.cfg.prediction,
                           method=self.cfg.sampler, generator=g, device=self.device, progress=False)
        save_image(to_unit_range(x.float().cpu()), path, nrow=int(math.ceil(math.sqrt(n))))
        return x


def _model_record(network: nn.Module, corruption: nn.Module, prediction: str) -> dict[str, Any]:
    """``{"diffusion_model": ...}`` (what :func:`lincorrupt.load` rebuilds the model from) when the
    network and the corruption record their constructor arguments, else ``{}``."""
    try:
        return {"diffusion_model": model_record(network, corruption, prediction)}
    except SpecError:
        return {}


def check_finite(state: dict[str, Any], step: int, path: str | Path = "") -> None:
    """Refuse a state whose model, EMA or optimiser tensors hold NaN or infinity (one host sync).

    Raises:
        NonFiniteStateError: naming the step and the first non-finite tensors.
    """
    tensors = {f"{part}.{name}": t for part in ("model", "ema") for name, t in state[part].items()}
    for i, s in state["optimizer"]["state"].items():
        tensors.update({f"optimizer.state.{i}.{k}": t for k, t in s.items() if isinstance(t, torch.Tensor)})
    tensors = {k: t for k, t in tensors.items() if t.is_floating_point() or t.is_complex()}
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if bool(finite.all()):
        return
    bad = [k for k, ok in zip(tensors, finite.tolist()) if not ok]
    raise NonFiniteStateError(f"the training state at step {step} holds NaN or infinity (in {', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); not saved, so {path or 'the checkpoint'} still "
                              f"holds an earlier, finite step: resume from it with a lower lr or more warm-up")


def _unreadable_record(dataset) -> dict[str, int]:
    """``{"unreadable_images": n}`` for a dataset that skips and counts unreadable images, else ``{}``."""
    count = getattr(dataset, "unreadable_count", None)
    return {"unreadable_images": count()} if callable(count) else {}


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM/SIGINT to the process group are for the training loop;
    the worker exits when the main process does (torch's worker watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Logger:
    """JSONL metrics (``metrics.jsonl``), mirrored to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled, self.file, self.tb = enabled, None, None
        if not enabled:
            return
        self.file = open(out_dir / "metrics.jsonl", "a")
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({**record, "time": time.time()}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and returns (main thread only)."""
    def handler(signum, frame):
        trainer._stop = True
        trainer.stop_signal = signum

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not in the main thread: no handlers
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
