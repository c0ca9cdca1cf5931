"""A corruption-agnostic training loop: ``Trainer(model, corruption, dataset, TrainConfig()).fit()``.

One step (DDPM, Ho et al. 2020, Algorithm 1, with the recipe of its CIFAR-10 run):

1. take this rank's slice of the global batch of step s (:class:`StepBatchSampler`), map to [-1, 1];
2. draw t ~ U(0, 1), eps ~ N(0, I) and the flip for the whole global batch at once from a
   generator seeded by (seed, s) (:func:`~lincorrupt.train.data_order.step_draws`, three kernel
   launches) and keep this rank's rows: any world size (and any ``grad_accum``) trains on the
   same draws;
3. ``loss = diffusion_loss(model, corruption, x, t=t, noise=eps)``, the network under autocast
   (a class-conditional network, one with ``num_classes``, gets the batch's labels, a
   ``label_dropout`` share of them replaced by the null label -1, drawn after eps);
   with ``grad_accum`` > 1, steps 2-3 and the backward run per micro-batch, each loss divided
   by ``grad_accum`` (so the gradient is that of the mean over the batch; under DDP, gradients
   are all-reduced after the last micro-batch only);
4. backward (DDP averages the gradients), clip the global norm, optimiser step, warm-up
   schedule step, EMA update.

Because every random draw of step s is a function of (seed, s) and the RNG states, model, EMA,
optimiser, scheduler and grad scaler are checkpointed, a resumed run continues exactly as if
never stopped. SIGTERM/SIGINT finish the current step (under DDP: the steps up to the next log
step, where the ranks agree on stopping), save and return; one that arrives during a save lets
the save finish, then the run returns. DataLoader workers ignore both signals, so a signal sent to
the whole process group (as batch schedulers do) stops the run the same way. Any other exception
that escapes the loop first saves the state after the last completed step, when it is finite.
A state with a NaN or infinity is never written.

Arguments are validated on the first step only; after it a step reads nothing back to the host
(no ``.item()``, no data-dependent check), except at log steps.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lincorrupt.data.images import first_images, to_model_range, to_unit_range
from lincorrupt.losses import diffusion_loss
from lincorrupt.model import model_entry
from lincorrupt.sampling import sample
from lincorrupt.train.checkpoint import (
    CheckpointError,
    check_compatible,
    load_latest,
    newer_checkpoint,
    recorded_step,
    remove_partial_saves,
    require_keys,
    run_checkpoints,
    save_checkpoint,
)
from lincorrupt.train.config import TrainConfig, default_workers
from lincorrupt.train.data_order import StepBatchSampler, derive_seed, step_draws
from lincorrupt.train.distributed import DistInfo, all_gather_objects, all_reduce_mean, any_rank, is_distributed
from lincorrupt.train.ema import EMA, PowerEMA
from lincorrupt.train.finite import NonFiniteStateError, check_finite
from lincorrupt.train.labels import resolve_label_dropout
from lincorrupt.train.lock import RunLock
from lincorrupt.train.metrics_log import MetricsLog, drop_records_after, unreadable_record
from lincorrupt.train.optim import Warmup, keep_kernel_options, make_optimizer
from lincorrupt.train.precision import TF32, Autocast, allow_tf32, autocast_dtype
from lincorrupt.train.signals import ignore_stop_signals, stop_on_signals
from lincorrupt.validation import NULL_LABEL, is_validating, validate_args
from lincorrupt.weightings import time_proposal

__all__ = ["Trainer", "NonFiniteStateError", "STATE_KEYS", "check_finite"]

#: The entries every checkpoint of :meth:`Trainer.state_dict` holds.
STATE_KEYS = ("corruption", "shape", "step", "model", "ema", "optimizer", "scheduler", "scaler", "rng", "world_size",
              "config", "extra")


#: Training images whose per-coordinate variance the Trainer records on a corruption that has none
#: (:meth:`~lincorrupt.DiagonalizableCorruption.fit_data_statistics`, read by the "data" time grid).
DATA_STATISTICS_IMAGES = 2048


class Trainer:
    """Trains ``model`` to denoise ``corruption`` on ``dataset`` (uint8 images of ``corruption.shape``).

    Args:
        model: network ``model(z_t, t) -> prediction`` (e.g. :class:`lincorrupt.nn.UNet`), or a class-conditional
            ``model(z_t, t, y)`` with a ``num_classes`` attribute (``UNet(num_classes=K)``).
        corruption: a ``DiagonalizableCorruption`` (moved to the device here).
        dataset: Dataset of uint8 (C, H, W) tensors, or of ``(image, label)`` pairs (see :mod:`lincorrupt.data`);
            a conditional model needs the pairs, an unconditional one ignores the labels.
        config: the recipe.
        dist: process placement from :func:`init_distributed` (single CPU process by default).
        extra: plain data stored in every checkpoint (e.g. the network's constructor arguments).
        evaluator: called as ``evaluator(trainer) -> dict`` every ``config.eval_every`` steps (and at
            the end) on every process, e.g. a :class:`lincorrupt.train.evaluation.QualityEvaluator`;
            its record goes to ``metrics.jsonl``, and its FID/KID/precision/recall to ``quality.png``.
    """

    def __init__(self, model: nn.Module, corruption: nn.Module, dataset: Dataset, config: TrainConfig,
                 dist: DistInfo | None = None, extra: dict[str, Any] | None = None,
                 evaluator: Callable[[Trainer], dict[str, Any]] | None = None):
        self.cfg, self.dist = config, dist or DistInfo()
        self.device = self.dist.device
        self.corruption = corruption.to(self.device)
        self.shape = tuple(corruption.shape)
        self.dataset, self.extra = dataset, dict(extra or {})
        if corruption.data_var is None and len(dataset) >= 2:  # for grid="data", here and after lc.load
            corruption.fit_data_statistics(first_images(dataset, DATA_STATISTICS_IMAGES).to(self.device))
        if config.batch_size % (self.dist.world_size * config.grad_accum):
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of processes "
                             f"({self.dist.world_size}) times grad_accum ({config.grad_accum})")
        self.num_classes = getattr(model, "num_classes", None)
        self.label_dropout = resolve_label_dropout(config.label_dropout, self.num_classes, dataset)
        self.evaluator = evaluator
        self.out_dir = Path(config.out_dir)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        if config.checkpoint_activations:
            if not hasattr(self.model, "checkpoint_activations"):
                raise ValueError(f"checkpoint_activations=True: {type(model).__name__} has no checkpoint_activations "
                                 "attribute (lincorrupt.nn.UNet has)")
            self.model.checkpoint_activations = True
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup_power)
        self.posthoc = PowerEMA(self.model, config.posthoc_ema) if config.posthoc_ema else None  # EDM2's profiles
        self.proposal = time_proposal(config.time_sampling, self.corruption, config.weighting, config.prediction,
                                      config.weighting_options)  # None: uniform t
        self.dtype = autocast_dtype(config.precision, self.device)
        # TF32 for fp32 runs on CUDA, in the network's forward and the backward only
        self.tf32 = config.tf32 and self.device.type == "cuda" and self.dtype is None
        net, self.ddp = self.model, None
        if self.dist.world_size > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            net = self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.net = Autocast(net, self.dtype, config.channels_last)
        if config.compile:  # compiles a wrapper: self.model, the EMA and the saved state keep their plain names
            self.net = torch.compile(self.net)
        if self.tf32:  # outside the compiled graph
            self.net = TF32(self.net)
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
        self._restored = False  # whether load_state_dict ran: a run from step 0 that did not resume starts afresh
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
            **model_entry(self.model, self.corruption, self.cfg.prediction),
            "corruption": type(self.corruption).__name__, "shape": list(self.shape), "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": all_gather_objects(rng) if collective else [rng],
            "world_size": self.dist.world_size, "config": asdict(self.cfg), "extra": self.extra,
            **({"posthoc_ema": self.posthoc.state_dict()} if self.posthoc is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any], path: str = "") -> None:
        """Restore a checkpoint's state (refused if it lacks an entry, or was written for another corruption
        or shape)."""
        require_keys(state, STATE_KEYS, path)
        check_compatible(state, type(self.corruption).__name__, self.shape, path)
        if self.posthoc is not None and "posthoc_ema" not in state:
            raise CheckpointError(f"{path or 'the checkpoint'} holds no post-hoc EMA profiles (its run trained "
                                  f"without posthoc_ema): resume it without posthoc_ema")
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        if self.posthoc is not None:
            self.posthoc.load_state_dict(state["posthoc_ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        keep_kernel_options(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self._restored = int(state["step"]), True
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
        """Restore from a checkpoint written by :meth:`save`: ``path`` is the file or the run folder holding
        ``checkpoint.pt``; where that file is missing or damaged, ``checkpoint.pt.prev``
        (:func:`~lincorrupt.train.checkpoint.load_latest`)."""
        path, state = load_latest(path, map_location=self.device)
        self.load_state_dict(state, str(path))

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
                            worker_init_fn=ignore_stop_signals if workers > 0 else None,
                            # its own generator: creating the iterator must not consume the global RNG (dropout)
                            generator=torch.Generator().manual_seed(
                                derive_seed(self.cfg.seed, self.step, self.dist.rank)))
        return iter(loader)

    def draw(self, step: int, start: int, n: int) -> tuple[torch.Tensor, ...]:
        """t (n,), noise (n, *shape), flip (n,) and drop (n,) for the images ``start .. start + n - 1`` of the
        global batch of ``step``: rows of :func:`step_draws`, the same whichever process or micro-batch asks."""
        draws = step_draws(self.cfg.seed, step, self.cfg.batch_size, self.shape, self._gen, self.device,
                           self.label_dropout)
        return tuple(d[start:start + n] for d in draws)

    def loss(self, x_uint8: torch.Tensor, start: int = 0, draws: tuple[torch.Tensor, ...] | None = None,
             labels: torch.Tensor | None = None) -> torch.Tensor:
        """Steps 1-3: the mean loss of this rank's uint8 images at ``self.step``; ``start`` is the
        first one's index in this rank's slice (a micro-batch's offset); ``draws`` their
        (t, noise, flip, drop), by default :meth:`draw`'s; ``labels`` (B,) theirs (conditional models)."""
        x = to_model_range(x_uint8.to(self.device, non_blocking=True))
        first = self.dist.rank * (self.cfg.batch_size // self.dist.world_size) + start
        t, noise, flip, drop = self.draw(self.step, first, x.shape[0]) if draws is None else draws
        if self.cfg.hflip:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = None
        if self.num_classes is not None:
            y = torch.where(drop, NULL_LABEL, labels.to(self.device, non_blocking=True).long())
        if self.proposal is not None:  # the uniform draw mapped through the proposal's inverse CDF
            t = self.proposal.sample(t)
        return diffusion_loss(self.net, self.corruption, x, prediction=self.cfg.prediction, t=t, noise=noise, y=y,
                              weighting=self.cfg.weighting, weighting_options=self.cfg.weighting_options,
                              proposal=self.proposal)

    def train_step(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One optimisation step on this rank's uint8 batch (or ``(images, labels)``); returns the (detached)
        local loss.

        With ``grad_accum`` = k, the batch runs as k equal micro-batches (forward and backward
        each), every loss divided by k; under DDP, all but the last skip the gradient all-reduce.

        Arguments are validated (:func:`lincorrupt.set_validate_args`) on this Trainer's first
        step only: the later steps read nothing back to the host.
        """
        x_uint8, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if self.num_classes is not None and labels is None:
            raise ValueError(f"the model is class-conditional (num_classes={self.num_classes}) but the batch holds "
                             f"no labels: give the Trainer a dataset of (image, label) pairs")
        k = self.cfg.grad_accum
        micro = x_uint8.shape[0] // k
        if micro * k != x_uint8.shape[0]:
            raise ValueError(f"a batch of {x_uint8.shape[0]} images cannot be split into grad_accum={k} micro-batches")
        losses, first = [], self.dist.rank * (self.cfg.batch_size // self.dist.world_size)
        draws = self.draw(self.step, first, x_uint8.shape[0])  # once per step, sliced per micro-batch
        with validate_args(is_validating() and not self._validated):
            for j in range(k):
                sync = self.ddp is None or j == k - 1
                part = slice(j * micro, (j + 1) * micro)
                with contextlib.nullcontext() if sync else self.ddp.no_sync():
                    loss = self.loss(x_uint8[part], start=j * micro, draws=tuple(d[part] for d in draws),
                                     labels=None if labels is None else labels[part])
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
        self.ema.update(self.model, self.step)
        if self.posthoc is not None:
            self.posthoc.update(self.model, self.step)
        self.step += 1
        self._updating = False
        self.last_grad_norm = grad_norm
        return losses[0] if k == 1 else torch.stack(losses).mean()

    # ----------------------------------------------------------------- loop
    def fit(self) -> str:
        """Train until ``config.steps``; returns ``"done"``, or ``"interrupted"`` when SIGTERM/SIGINT arrived
        (checkpoint saved, also when the signal came during the last save; :attr:`stop_signal` names it).

        The config is checked again first (a field changed since the Trainer was built). Rank 0 holds
        the run folder's lock (:class:`lincorrupt.train.lock.RunLock`) meanwhile. Under it, a run from
        step 0 that did not :meth:`resume` refuses a folder holding a checkpoint (another run's, perhaps
        one that finished a moment ago), and any run refuses a folder whose checkpoint is beyond its
        starting step (another process trained there since this one read it), so that it overwrites
        nothing; the records of ``metrics.jsonl`` beyond the starting step are removed (they are
        logged again). An exception that escapes the loop first saves the state after the last
        completed step, if it is finite (under DDP, rank 0's state; the peers may be gone), then
        propagates.

        Raises:
            lincorrupt.train.cli.OptionError: a config field is out of its bounds.
            ValueError: ``self.step`` (a resumed checkpoint's) is beyond ``config.steps``.
            lincorrupt.train.lock.RunLockedError: another live process trains into ``out_dir``.
            lincorrupt.train.CheckpointError: a fresh run's ``out_dir`` already holds a checkpoint, or
                ``out_dir`` holds a checkpoint beyond the starting step.
            NonFiniteStateError: the state became non-finite by a checkpoint step (not written).
        """
        cfg, main = self.cfg, self.dist.is_main
        cfg.validate()
        if self.step > cfg.steps:
            raise ValueError(f"the checkpoint is at step {self.step}, beyond steps={cfg.steps}; "
                             f"pass steps >= {self.step} to continue training it")
        with RunLock(self.out_dir) if main else contextlib.nullcontext():
            if main:
                if self.step == 0 and not self._restored and (existing := run_checkpoints(self.out_dir)):
                    raise CheckpointError(f"{self.out_dir} already holds {' and '.join(existing)} of another run; a "
                                          f"fresh run would overwrite it: resume it (Trainer.resume before fit) or "
                                          f"train into another out_dir")
                if newer := newer_checkpoint(self.out_dir, self.step):
                    raise CheckpointError(f"{newer[0]} is at step {newer[1]}, beyond step {self.step} where this run "
                                          f"starts: another run trained in {self.out_dir} since this one read its "
                                          f"checkpoint; resume again (Trainer.resume before fit), or move "
                                          f"{newer[0].name} away to go back to step {self.step} on purpose")
                if self.step < cfg.steps:  # they are logged again
                    drop_records_after(self.out_dir / "metrics.jsonl", self.step)
                for tmp in remove_partial_saves(self.out_dir):
                    print(f"removed {tmp}, left by a save that was killed", file=sys.stderr)
            return self._fit(cfg, main)

    def _fit(self, cfg: TrainConfig, main: bool) -> str:
        if self.step == cfg.steps:  # nothing to train: the files on disk (and .prev) stay as they are
            return "done"
        self._fit_start, self._stop, self.stop_signal = self.step, False, None
        self.model.train()
        logger = MetricsLog(self.out_dir, enabled=main)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress), dynamic_ncols=True)
        status, tick, tick_step, batches = "done", time.perf_counter(), self.step, None
        try:
            batches = self.batches()
            with stop_on_signals(self._on_signal):  # the saves included: a signal lets a save finish
                while self.step < cfg.steps:
                    # -- one optimisation step (module docstring, steps 1-4)
                    rng = self._rng_state()  # the state after the last step, restored if this step fails
                    try:
                        self._pending.append(self.train_step(next(batches)))
                    except BaseException:
                        if not self._updating:
                            self._set_rng_state(rng)
                        raise
                    # -- logging: the only host sync of a step, at log steps (and where the ranks agree to stop)
                    step = self.step
                    log_step = step % cfg.log_every == 0 or step == cfg.steps
                    stop = any_rank(self._stop, log_step, self.device)
                    if log_step or stop:
                        now = time.perf_counter()
                        ips = (step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
                        loss = self._flush()
                        logger.log({"step": step, "loss": loss, "loss_steps": step - tick_step,
                                    "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(self.last_grad_norm),
                                    "images_per_s": ips, **unreadable_record(self.dataset)})
                        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}")
                        tick, tick_step = now, step
                    bar.update(1)
                    # -- sample grids and quality evaluations of the EMA weights
                    if cfg.sample_every and step % cfg.sample_every == 0 and main:
                        self.sample_grid(self.out_dir / f"samples_{step:07d}.png")
                    if self.posthoc is not None and main and (step % cfg.snapshot_every == 0 or step == cfg.steps):
                        self.posthoc.snapshot(self.out_dir, step)
                    if self.evaluator and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                        self.evaluate(logger)
                    # -- stop on a signal (saved below), else checkpoint every ckpt_every steps
                    if stop:
                        status = "interrupted"
                        break
                    if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != cfg.steps:
                        self.save()
                self.save()
        except BaseException as error:
            self._keep_pending()  # the losses of the completed steps (no collective: the peers may be gone)
            with stop_on_signals(self._on_signal):
                self._save_after_failure(error)
            raise
        finally:
            # the loader's workers stop now, also when a traceback keeps the iterator: they ignore SIGTERM, so one
            # left running would block the exit of the process (multiprocessing terminates, then joins)
            getattr(batches, "_shutdown_workers", lambda: None)()  # what the iterator's __del__ calls
            bar.close()
            logger.close()
        self._flush()
        return "interrupted" if self._stop else status  # a signal during the last save: the caller stops too

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

    def evaluate(self, logger: MetricsLog | None = None) -> dict[str, Any]:
        """Run the evaluator on the EMA model now; log its record and redraw ``quality.png``."""
        from lincorrupt.train.evaluation import plot_quality
        record = {"step": self.step, **self.evaluator(self)}
        if logger is not None and self.dist.is_main:
            logger.log(record)
            plot_quality(self.out_dir / "metrics.jsonl", self.out_dir / "quality.png")
        return record

    def _on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT: finish the current step, save and return."""
        self._stop, self.stop_signal = True, signum

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
            raise FloatingPointError(f"the training loss became {loss} by step {self.step}; {self._restart_hint()}")
        return loss

    def _restart_hint(self) -> str:
        """Where a run that diverged can start again: the newest checkpoint in ``out_dir``, if there is one."""
        for name in run_checkpoints(self.out_dir):
            if (step := recorded_step(self.out_dir / name)) is not None:
                return (f"{self.out_dir / name} (step {step}) predates it: resume from it with a lower lr or "
                        f"more warm-up")
        return (f"no checkpoint was written before it (ckpt_every={self.cfg.ckpt_every}): start again with a lower "
                f"lr or more warm-up")

    def sampling_model(self) -> nn.Module:
        """The EMA network, under the training precision's autocast, for sampling."""
        net = Autocast(self.ema.module, self.dtype, self.cfg.channels_last)
        return TF32(net) if self.tf32 else net

    @torch.no_grad()
    def sample_grid(self, path: str | Path, n: int | None = None, steps: int | None = None,
                    seed: int = 0) -> torch.Tensor:
        """Sample ``n`` images with the EMA model and save them as a grid; returns them unclipped
        (only the PNG is clamped)."""
        from torchvision.utils import save_image
        n, steps = n or self.cfg.grid_size, steps or self.cfg.sample_steps
        g = torch.Generator(self.device).manual_seed(seed)
        labels = None if self.num_classes is None else torch.arange(n) % self.num_classes  # row by row
        x = self.sample(n, labels, steps=steps, method=self.cfg.sampler, generator=g, progress=False)
        save_image(to_unit_range(x.float().cpu()), path, nrow=int(math.ceil(math.sqrt(n))))
        return x

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, **options) -> torch.Tensor:
        """:func:`lincorrupt.sample` of ``n`` images with the EMA model; a conditional model samples ``labels`` (n,)
        (default: uniform over the classes, from ``options["generator"]``) at guidance ``config.guidance``."""
        if self.num_classes is not None:
            if labels is None:
                labels = torch.randint(self.num_classes, (n,), generator=options.get("generator"),
                                       device=self.device)
            options = {"labels": labels, "guidance": self.cfg.guidance, **options}
        return sample(self.sampling_model(), self.corruption, n, prediction=self.cfg.prediction, device=self.device,
                      **options)

