"""Train blurring diffusion (Hoogeboom & Salimans, ICLR 2023) on CIFAR-10; DDPM and IHDM with the same recipe.

Defaults are the paper's CIFAR-10 setup: sigma_blur_max = 20, min_scale = 0.001, log-SNR in
[-10, 10], eps-prediction with the unweighted loss, batch 128, lr 2e-4, the DDPM UNet (35.7M).

    # one GPU; torchvision's CIFAR-10 (--download fetches it once, when online)
    python examples/train_blurring_cifar10.py --data-root data/cifar10 --download cifar10
    # a folder of class subfolders, e.g. the JPEG copy (train/<class>/*.jpg, test/...)
    unzip cifar10-jpeg.zip -d data/cifar10-jpeg
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg
    # 8 GPUs on one machine (the global batch stays 128, split over the processes)
    torchrun --standalone --nproc_per_node 8 examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg
    # less memory: 4 micro-batches per step, activations recomputed in the backward pass
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --grad-accum 4 --checkpoint-activations
    # the baselines, same recipe
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --corruption ddpm
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --corruption ihdm
    # continue after an interruption (SIGTERM/Ctrl-C save a checkpoint first and exit with 128 + the signal)
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --resume
    # samples from the EMA weights; FID on 50k samples (Inception weights from a local file)
    python examples/train_blurring_cifar10.py --sample-only
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --sample-only --fid \\
        --inception-weights ~/pt_inception-2015-12-05-6726825d.pth
    # a CPU smoke run
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --device cpu --ch 32 \\
        --ch-mult 1,2 --num-res-blocks 1 --batch-size 16 --steps 200 --sample-every 100

Writes to --out-dir (runs/<corruption>): checkpoint.pt (+ .prev), metrics.jsonl, sample grids,
samples.png, fid.json, summary.json.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

import lincorrupt as lc
from lincorrupt.data import load_images, to_model_range
from lincorrupt.metrics import FIDStats, dataset_stats, fid, inception_weights_path, load_inception, sample_stats
from lincorrupt.nn import UNet
from lincorrupt.train import CheckpointError, TrainConfig, Trainer, init_distributed
from lincorrupt.train.checkpoint import load_latest, require_keys
from lincorrupt.train.lock import RunLockedError
from lincorrupt.train.trainer import STATE_KEYS
from lincorrupt.train.cli import parse_config
from lincorrupt.train.data_order import derive_seed
from lincorrupt.train.evaluation import QualityEvaluator, feature_space


@dataclass(frozen=True)
class Recipe:
    """How to build a corruption from the config, and the prediction it trains with."""

    build: Callable[["Config", tuple[int, int, int]], lc.DiagonalizableCorruption]
    prediction: str


CORRUPTIONS: dict[str, Recipe] = {
    "blurring": Recipe(lambda c, shape: lc.BlurringDiffusion(shape=shape, sigma_blur_max=c.sigma_blur_max,
                                                             min_scale=c.min_scale, logsnr_min=c.logsnr_min,
                                                             logsnr_max=c.logsnr_max), "eps"),
    "ddpm": Recipe(lambda c, shape: lc.DDPM(shape=shape, schedule=c.ddpm_schedule, num_steps=c.ddpm_steps), "eps"),
    # IHDM's alpha_t underflows to 0 at strong blur, where eps-prediction cannot recover x: predict x.
    "ihdm": Recipe(lambda c, shape: lc.IHDM(shape=shape, sigma=c.ihdm_sigma, sigma_blur_max=c.ihdm_blur_max,
                                            num_steps=c.ihdm_steps), "x"),
}


@dataclass
class Config(TrainConfig):
    """Every field is a flag (``--sigma-blur-max 20``); training fields come from :class:`TrainConfig`."""

    corruption: str = field(default="blurring", metadata={"choices": sorted(CORRUPTIONS)})
    data_root: str = "data/cifar10"      # torchvision root or folder of class subfolders
    download: str = field(default="", metadata={"choices": ["", "cifar10", "fashion-mnist"]})  # torchvision, online only
    image_size: int = 32                 # CIFAR-10
    channels: int = 3
    # blurring diffusion, the paper's CIFAR-10 values
    sigma_blur_max: float = 20.0
    min_scale: float = 1e-3
    logsnr_min: float = -10.0
    logsnr_max: float = 10.0
    # baselines: DDPM (Ho et al.) and IHDM (Rissanen et al., the official CIFAR-10 configuration)
    ddpm_schedule: str = field(default="linear", metadata={"choices": ["linear", "cosine"]})
    ddpm_steps: int = 1000
    ihdm_sigma: float = 0.01
    ihdm_blur_max: float = 24.0
    ihdm_steps: int = 200
    prior_images: int = 1000             # training images in IHDM's empirical prior (blurred images + noise)
    # the DDPM CIFAR-10 UNet (35.7M parameters)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    groups: int = 32
    prediction: str = field(default="auto", metadata={"choices": ["auto", "eps", "x", "v"]})  # auto: the recipe's
    sampler: str = field(default="ancestral", metadata={"choices": sorted(lc.SAMPLERS)})  # grids and FID
    out_dir: str = "runs/{corruption}"
    device: str = ""                     # "" = cuda when available, else cpu
    # modes
    resume: bool = False                 # continue from --checkpoint (default: out-dir/checkpoint.pt)
    sample_only: bool = False            # no training: samples (and --fid) from the checkpoint's EMA weights
    checkpoint: str = ""
    fid: bool = False                    # FID of the EMA model against the training images
    fid_samples: int = 50_000            # the paper protocol
    fid_batch: int = 500
    fid_steps: int = 1000                # sampler steps for FID
    fid_dims: int = 2048                 # Inception pool3 features (the standard FID)
    inception_weights: str = ""          # else $LINCORRUPT_INCEPTION_WEIGHTS, else torch hub's cache
    fid_stats: str = ""                  # reference statistics cache (.npz); default beside --data-root's run
    # quality during training (every --eval-every steps; 0: never): FID/KID/precision/recall in metrics.jsonl
    eval_samples: int = 1000             # samples per evaluation (KID is unbiased at this size; FID is not)
    eval_steps: int = 20                 # sampler NFE: dpm++2m on the log-SNR grid needs tens, not hundreds
    eval_sampler: str = field(default="dpm++2m", metadata={"choices": sorted(lc.SAMPLERS)})
    eval_grid: str = field(default="logsnr", metadata={"choices": sorted(lc.GRIDS)})
    eval_features: str = field(default="auto", metadata={"choices": ["auto", "fashion-mnist", "cifar10", "inception"]})
    eval_data: str = ""                  # held-out images for the reference features (default: --data-root's test split)

    def __post_init__(self):
        super().__post_init__()
        if self.prediction == "auto":
            self.prediction = CORRUPTIONS[self.corruption].prediction
        self.out_dir = self.out_dir.format(corruption=self.corruption)

    def unet_kwargs(self) -> dict:
        return dict(image_size=self.image_size, in_channels=self.channels, ch=self.ch, ch_mult=list(self.ch_mult),
                    num_res_blocks=self.num_res_blocks, attn_resolutions=list(self.attn_resolutions),
                    dropout=self.dropout, groups=self.groups)


def prior_images(data, n: int, seed: int) -> torch.Tensor:
    """A seeded random subset of n training images in [-1, 1], (n, C, H, W)."""
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([data[int(i)] for i in index]).float() / 127.5 - 1


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Config, argv, description=__doc__.split("\n")[0])
    out = Path(cfg.out_dir)
    weights = check_fid_setup(cfg) if cfg.fid else None  # fail before any work
    ckpt_state, ckpt_path = None, None
    if cfg.resume or cfg.sample_only:
        ckpt_path, ckpt_state = load_latest(cfg.checkpoint or out)  # falls back to .prev if the file is damaged
        require_keys(ckpt_state, STATE_KEYS, ckpt_path)
    elif existing := [n for n in ("checkpoint.pt", "checkpoint.pt.prev") if (out / n).exists()]:
        raise CheckpointError(f"{out} already holds {' and '.join(existing)}: pass --resume to continue it, "
                              f"or another --out-dir")

    dist = init_distributed(cfg.device or None, timeout=cfg.dist_timeout)
    torch.manual_seed(derive_seed(cfg.seed, dist.rank))  # weight init (identical: DDP broadcasts rank 0's) and dropout
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    need_data = not cfg.sample_only or cfg.fid or cfg.corruption == "ihdm"
    data = (load_images(cfg.data_root, shape, download=cfg.download or None, skip_unreadable=cfg.skip_unreadable)
            if need_data else None)
    if data is not None and cfg.verify_data:
        verify_images(data, cfg.skip_unreadable, cfg.progress and dist.is_main)
    if cfg.fid:
        check_fid_cache(fid_cache_path(cfg, data, weights))
    corruption = CORRUPTIONS[cfg.corruption].build(cfg, shape)
    if cfg.corruption == "ihdm":  # IHDM's prior: blurred training images plus noise
        corruption.prior = lc.EmpiricalPrior.fit(corruption, prior_images(data, min(cfg.prior_images, len(data)), cfg.seed))
    unet_kwargs = ckpt_state["extra"]["unet"] if ckpt_state else cfg.unet_kwargs()
    trainer = Trainer(UNet(**unet_kwargs), corruption, data, cfg, dist, extra={"unet": unet_kwargs})
    if cfg.eval_every:
        trainer.evaluator = quality_evaluator(cfg, shape, dist.device)
    if ckpt_state:
        trainer.load_state_dict(ckpt_state, str(ckpt_path))
        del ckpt_state

    summary = {"corruption": cfg.corruption, "prediction": cfg.prediction, "out_dir": str(out)}
    start = time.perf_counter()
    if not cfg.sample_only:
        summary["status"] = trainer.fit()
        summary["train_seconds"] = time.perf_counter() - start
        if summary["status"] == "interrupted":
            summary["signal"] = trainer.stop_signal or signal.SIGTERM  # another rank's signal: a scheduler's SIGTERM
            print(f"interrupted at step {trainer.step}: checkpoint saved to {out / 'checkpoint.pt'}; rerun with --resume")
            return {**summary, "step": trainer.step, "losses": trainer.losses}
    summary["step"] = trainer.step
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        trainer.sample_grid(out / "samples.png")
        summary["samples"] = str(out / "samples.png")
    if cfg.fid:
        summary["fid"] = evaluate_fid(cfg, trainer, data, weights)
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["losses"] = trainer.losses
    return summary


def verify_images(data, skip_unreadable: bool, progress: bool) -> None:
    """--verify-data: decode every image now; unreadable ones are an error naming them, or, with
    --skip-unreadable, a count on stderr (they are then skipped in training)."""
    if not hasattr(data, "verify"):  # torchvision's arrays: decoded already
        return
    bad = data.verify(progress=progress)
    if bad and not skip_unreadable:
        listed = "\n  ".join(map(str, bad[:20])) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ValueError(f"{len(bad)} of {len(data)} images cannot be decoded:\n  {listed}\n"
                         f"replace or delete them, or pass --skip-unreadable to train without them")
    if bad:
        print(f"--verify-data: {len(bad)} of {len(data)} images cannot be decoded and are skipped", file=sys.stderr)


def check_fid_setup(cfg: Config) -> Path:
    """--fid: everything FID needs that can be checked before training (the Inception weights file
    and its feature size, the sample count); returns the weights path."""
    if cfg.fid_samples < 2:
        raise ValueError(f"--fid-samples {cfg.fid_samples}: FID needs at least 2 samples (the paper protocol uses 50000)")
    weights = inception_weights_path(cfg.inception_weights or None)
    load_inception(weights, dims=cfg.fid_dims, device="cpu")  # raises on a damaged file or an unknown --fid-dims
    return weights


def fid_cache_path(cfg: Config, data, weights: Path) -> Path:
    """The reference statistics cache: --fid-stats, else a name that pins the data, the weights and the feature size."""
    key = hashlib.sha1(f"{Path(cfg.data_root).resolve()}|{len(data)}|{weights.resolve()}|{weights.stat().st_size}"
                       f"|{cfg.fid_dims}".encode()).hexdigest()[:12]
    return Path(cfg.fid_stats or Path(cfg.out_dir).parent / f"fid_ref_{Path(cfg.data_root).name}_{key}.npz")


def check_fid_cache(cache: Path) -> None:
    """A reference statistics cache that exists must be readable (checked before training)."""
    if cache.is_file():
        try:
            FIDStats.load(cache)
        except Exception as e:
            raise ValueError(f"FID reference statistics {cache} cannot be read ({type(e).__name__}: {e}); "
                             f"delete it to recompute them") from None


def quality_evaluator(cfg: Config, shape: tuple[int, int, int], device) -> QualityEvaluator:
    """The evaluator of ``--eval-every``: ``--eval-features`` of held-out images as the reference."""
    features, label = feature_space(cfg.eval_features, shape, device, cfg.inception_weights or None, cfg.fid_dims)
    held_out = load_images(cfg.eval_data or cfg.data_root, shape, train=False)  # the test split (or the folder)
    batches = DataLoader(held_out, batch_size=500, num_workers=0)
    reference = np.concatenate([features(to_model_range(x.to(device))) for x in batches])
    return QualityEvaluator(features, reference, label, num_samples=cfg.eval_samples, steps=cfg.eval_steps,
                            sampler=cfg.eval_sampler, grid=cfg.eval_grid, batch_size=cfg.fid_batch, seed=cfg.seed)


def evaluate_fid(cfg: Config, trainer: Trainer, data, weights: Path) -> float:
    """FID of ``cfg.fid_samples`` EMA samples against the training images (reference statistics cached)."""
    dist, device = trainer.dist, trainer.device
    inception = load_inception(weights, dims=cfg.fid_dims, device=device)
    cache = fid_cache_path(cfg, data, weights)
    ref = dataset_stats(data, inception, batch_size=cfg.fid_batch, cache=cache, progress=cfg.progress) if dist.is_main else None
    ema = trainer.sampling_model()

    def draw(n: int, g: torch.Generator) -> torch.Tensor:
        return lc.sample(ema, trainer.corruption, n, steps=cfg.fid_steps, prediction=cfg.prediction,
                         method=cfg.sampler, generator=g, device=device)

    stats: FIDStats = sample_stats(draw, cfg.fid_samples, inception, batch_size=cfg.fid_batch, seed=cfg.seed,
                                   rank=dist.rank, world_size=dist.world_size, device=device,
                                   progress=cfg.progress and dist.is_main)
    value = fid(ref, stats) if dist.is_main else float("nan")
    if dist.is_main:
        record = {"fid": value, "num_samples": stats.n, "sampler": cfg.sampler, "sampler_steps": cfg.fid_steps,
                  "dims": cfg.fid_dims, "step": trainer.step, "reference": str(cache), "inception_weights": str(weights)}
        (Path(cfg.out_dir) / "fid.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"FID ({stats.n} samples, {cfg.fid_steps} steps) = {value:.3f}")
    return value


if __name__ == "__main__":
    try:
        summary = main()
    except (FileNotFoundError, ValueError, CheckpointError, RunLockedError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if summary.get("status") == "interrupted":  # as shells report a process ended by a signal
        sys.exit(128 + int(summary["signal"]))
