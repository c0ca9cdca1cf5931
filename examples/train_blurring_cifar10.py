"""Train blurring diffusion (Hoogeboom & Salimans, ICLR 2023) on CIFAR-10; DDPM and IHDM with the same recipe.

Defaults are the paper's CIFAR-10 setup: sigma_blur_max = 20, min_scale = 0.001, log-SNR in
[-10, 10], eps-prediction with the unweighted loss, the DDPM UNet (35.7M), and DDPM's CIFAR-10
optimisation recipe (batch 128, lr 2e-4, EMA 0.9999, ...), which the paper reuses.

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
    # class-conditional (10 classes; a folder: one per class subfolder), sampled with classifier-free guidance
    python examples/train_blurring_cifar10.py --data-root data/cifar10-jpeg --class-conditional --guidance 2
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
samples.png, fid.json, summary.json (--sample-only: sample_summary.json, so that the training's
summary stays).

The checkpoint carries its model, as every Trainer checkpoint does (``lc.load(out_dir)``
rebuilds it: the UNet and the corruption with their constructor arguments, the corruption's
buffers, IHDM's empirical prior included, so sampling IHDM needs no data, and the prediction),
plus this script's ``model_args`` (the --corruption name and its settings). --resume and
--sample-only rebuild everything from it and continue with its recorded config; of the flags given on the
command line, only those in RESUMABLE (steps, logging, checkpoint and sampling frequencies,
sampler and FID/evaluation options, data location, device and throughput settings) may change
it; any other flag must repeat the checkpoint's value, else the run is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import lincorrupt as lc
from lincorrupt.data import load_images, to_model_range
from lincorrupt.metrics import FIDStats, dataset_stats, fid, inception_weights_path, load_inception, sample_stats
from lincorrupt.model import from_checkpoint
from lincorrupt.nn import UNet
from lincorrupt.train import CheckpointError, TrainConfig, Trainer, init_distributed
from lincorrupt.train.checkpoint import load_latest, require_keys, run_checkpoints
from lincorrupt.train.cli import Interval, OptionError, given_options, option, parse_config, resumed_config
from lincorrupt.train.data_order import derive_seed
from lincorrupt.train.distributed import DEFAULT_TIMEOUT
from lincorrupt.train.evaluation import QualityEvaluator, feature_space
from lincorrupt.train.lock import RunLockedError
from lincorrupt.train.trainer import STATE_KEYS


@dataclass(frozen=True)
class Recipe:
    """Everything the script knows about one corruption.

    Attributes:
        corruption: its class, built as ``corruption(shape, **settings)``.
        settings: constructor argument -> the Config field that sets it.
        prediction: what the network predicts when ``--prediction auto``.
        prior: a prior fitted to training images (``prior.fit(corruption, images)``), or None
            for the corruption's default prior.
    """

    corruption: type[lc.DiagonalizableCorruption]
    settings: dict[str, str]
    prediction: str
    prior: type[lc.Prior] | None = None


RECIPES: dict[str, Recipe] = {
    "blurring": Recipe(lc.BlurringDiffusion, {"sigma_blur_max": "sigma_blur_max", "min_scale": "min_scale",
                                              "logsnr_min": "logsnr_min", "logsnr_max": "logsnr_max"}, "eps"),
    "ddpm": Recipe(lc.DDPM, {"schedule": "ddpm_schedule", "num_steps": "ddpm_steps"}, "eps"),
    # IHDM's alpha_t underflows to 0 at strong blur, where eps-prediction cannot recover x: predict x.
    # Its prior at t = 1 is the paper's: fully blurred training images plus noise.
    "ihdm": Recipe(lc.IHDM, {"sigma": "ihdm_sigma", "sigma_blur_max": "ihdm_blur_max", "num_steps": "ihdm_steps"},
                   "x", prior=lc.EmpiricalPrior),
}

#: Flags that --resume / --sample-only may change: how long, how often, where, on what and how
#: fast to run, and how to sample and evaluate. Every other flag (the model, the corruption, the
#: optimisation recipe, the seed, the precision) must repeat the checkpoint's value.
RESUMABLE = frozenset({
    "steps", "log_every", "sample_every", "ckpt_every", "sample_steps", "sampler", "grid_size", "progress", "guidance",
    "eval_every", "eval_samples", "eval_steps", "eval_sampler", "eval_grid", "eval_features", "eval_data",
    "fid", "fid_samples", "fid_batch", "fid_steps", "fid_dims", "inception_weights", "fid_stats",
    "resume", "sample_only", "checkpoint", "out_dir", "data_root", "download", "skip_unreadable", "verify_data",
    "device", "dist_timeout",
    "num_workers", "prefetch_factor", "grad_accum", "checkpoint_activations", "compile", "channels_last", "tf32",
    "threads",
})

ANY_REAL, POSITIVE, AT_LEAST_1 = Interval(), Interval(0, low_open=True), Interval(1)


@dataclass
class Config(TrainConfig):
    """Every field is a flag (``--sigma-blur-max 20``); training fields come from :class:`TrainConfig`."""

    corruption: str = option("blurring", "Which corruption to train.", choices=sorted(RECIPES))
    data_root: str = option("data/cifar10", "A torchvision root or a folder of class subfolders.")
    download: str = option("", "Download this torchvision dataset into --data-root first (online only).",
                           choices=["", "cifar10", "fashion-mnist"])
    skip_unreadable: bool = option(False, "Replace images that cannot be decoded by the next readable one (each "
                                   "named on stderr, counted in metrics.jsonl) instead of stopping.")
    verify_data: bool = option(False, "Decode every image before training and list the unreadable ones.")
    image_size: int = option(32, "Image height and width (CIFAR-10: 32).", bounds=AT_LEAST_1)
    channels: int = option(3, "Image channels (CIFAR-10: 3).", bounds=AT_LEAST_1)
    sigma_blur_max: float = option(20.0, "Blurring diffusion: largest blur in pixels (the paper's CIFAR-10: 20).",
                                   bounds=Interval(0))
    min_scale: float = option(1e-3, "Blurring diffusion: smallest per-frequency scale of the blur (paper: 0.001).",
                              bounds=Interval(0, 1, high_open=True))
    logsnr_min: float = option(-10.0, "Blurring diffusion: log-SNR at t = 1 (paper: -10).", bounds=ANY_REAL)
    logsnr_max: float = option(10.0, "Blurring diffusion: log-SNR at t = 0 (paper: 10).", bounds=ANY_REAL)
    ddpm_schedule: str = option("linear", "DDPM: the noise schedule (Ho et al.: linear).", choices=["linear", "cosine"])
    ddpm_steps: int = option(1000, "DDPM: discrete steps T of the linear schedule (Ho et al.: 1000).",
                             bounds=AT_LEAST_1)
    ihdm_sigma: float = option(0.01, "IHDM: noise on the [0, 1] pixel scale (the official CIFAR-10 configuration: "
                               "0.01).", bounds=POSITIVE)
    ihdm_blur_max: float = option(24.0, "IHDM: largest blur in pixels (official CIFAR-10: 24).", bounds=POSITIVE)
    ihdm_steps: int = option(200, "IHDM: blur levels K (official CIFAR-10: 200).", bounds=AT_LEAST_1)
    prior_images: int = option(1000, "IHDM: training images in its empirical prior (blurred images plus noise).",
                               bounds=AT_LEAST_1)
    ch: int = option(128, "UNet base channels (the DDPM CIFAR-10 UNet, 35.7M parameters: 128).", bounds=AT_LEAST_1)
    ch_mult: tuple[int, ...] = option((1, 2, 2, 2), "UNet channel multiplier per resolution (DDPM: 1,2,2,2).",
                                      bounds=AT_LEAST_1)
    num_res_blocks: int = option(2, "UNet residual blocks per resolution (DDPM: 2).", bounds=AT_LEAST_1)
    attn_resolutions: tuple[int, ...] = option((16,), "UNet resolutions with self-attention (DDPM: 16).",
                                               bounds=AT_LEAST_1)
    dropout: float = option(0.1, "UNet dropout probability, in [0, 1) (DDPM's CIFAR-10: 0.1).",
                            bounds=Interval(0, 1, high_open=True))
    groups: int = option(32, "UNet GroupNorm groups (DDPM: 32).", bounds=AT_LEAST_1)
    class_conditional: bool = option(False, "Train a class-conditional UNet on the dataset's labels (CIFAR-10: "
                                     "10 classes; a folder: its class subfolders), --label-dropout of them replaced "
                                     "by the null label; grids, evaluations and FID sample at --guidance.")
    prediction: str = option("auto", "What the network predicts; auto: the corruption's recipe (eps for blurring "
                             "and DDPM, x for IHDM).", choices=["auto", "eps", "x", "v"])
    sampler: str = option("ancestral", "Sampler of the grids and the FID (ancestral: the papers' sampler).",
                          choices=sorted(lc.SAMPLERS))
    out_dir: str = option("runs/{corruption}", "Output folder; {corruption} is replaced by the corruption's name.")
    device: str = option("", "Device; empty: cuda when available, else cpu.")
    threads: int = option(1, "torch CPU threads of each process (1: on a shared machine more threads ran several "
                          "times slower; 0: torch's default, one per core).", bounds=Interval(0))
    dist_timeout: float = option(DEFAULT_TIMEOUT, "Seconds a torchrun process waits for its peers in a collective "
                                 "(or to join) before failing.", bounds=POSITIVE)
    resume: bool = option(False, "Continue from --checkpoint (default: out-dir/checkpoint.pt) with its model and "
                          "recipe; of the flags given, only these may differ from its run, the others must repeat its "
                          "values: " + ", ".join("--" + name.replace("_", "-") for name in sorted(RESUMABLE)) + ".")
    sample_only: bool = option(False, "No training: samples (and --fid) from the checkpoint's EMA weights, with its "
                               "model and recipe (the flags as for --resume).")
    checkpoint: str = option("", "Checkpoint for --resume / --sample-only (default: out-dir/checkpoint.pt); the run "
                              "still writes to --out-dir.")
    fid: bool = option(False, "FID of the EMA model against the training images.")
    fid_samples: int = option(50_000, "Samples for the FID (the papers' protocol: 50k).", bounds=AT_LEAST_1)
    fid_batch: int = option(500, "Batch size of FID sampling and feature extraction.", bounds=AT_LEAST_1)
    fid_steps: int = option(1000, "Sampler steps for the FID.", bounds=AT_LEAST_1)
    fid_dims: int = option(2048, "Inception features (2048: pool3, the standard FID).", choices=[64, 192, 768, 2048])
    inception_weights: str = option("", "Inception weights file; else $LINCORRUPT_INCEPTION_WEIGHTS, else torch "
                                    "hub's cache.")
    fid_stats: str = option("", "Cache of the reference statistics (.npz); default beside the run folder.")
    eval_samples: int = option(1000, "Quality during training (--eval-every): samples per evaluation (KID is "
                               "unbiased at this size; FID is not).", bounds=Interval(4))
    eval_steps: int = option(20, "Sampler steps per evaluation: the fast samplers need tens, not hundreds.",
                             bounds=AT_LEAST_1)
    eval_sampler: str = option("auto", "Sampler of the evaluations; auto: the corruption's fast_sampling (dpm++3m "
                               "for blurring, DDPM and IHDM).", choices=["auto", *sorted(lc.SAMPLERS)])
    eval_grid: str = option("auto", "Time grid of the evaluations; auto: the corruption's fast_sampling (data for "
                            "blurring, logsnr for DDPM, info for IHDM).", choices=["auto", *sorted(lc.GRIDS)])
    eval_features: str = option("auto", "Feature network of the evaluations; auto: the shipped classifier for the "
                                "image shape.", choices=["auto", "fashion-mnist", "cifar10", "inception"])
    eval_data: str = option("", "Held-out images for the reference features (default: --data-root's test split).")

    def __post_init__(self):
        super().__post_init__()
        if not self.ch_mult:
            raise OptionError("ch_mult", "ch_mult must hold at least one multiplier (one per resolution), got ()")
        if self.prediction == "auto":
            self.prediction = RECIPES[self.corruption].prediction
        self.out_dir = self.out_dir.replace("{corruption}", self.corruption)  # idempotent, other braces kept

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def unet_kwargs(self, num_classes: int | None = None) -> dict:
        return dict(image_size=self.image_size, in_channels=self.channels, ch=self.ch, ch_mult=list(self.ch_mult),
                    num_res_blocks=self.num_res_blocks, attn_resolutions=list(self.attn_resolutions),
                    dropout=self.dropout, groups=self.groups, num_classes=num_classes)


def model_args(cfg: Config, num_classes: int | None = None) -> dict[str, Any]:
    """What rebuilds the model without the command line: the corruption's name, its constructor
    settings and the data shape, the prediction, the UNet's constructor arguments (``num_classes``:
    those of a class-conditional model)."""
    recipe = RECIPES[cfg.corruption]
    return {"corruption": cfg.corruption, "shape": list(cfg.shape),
            "settings": {arg: getattr(cfg, name) for arg, name in recipe.settings.items()},
            "prediction": cfg.prediction, "unet": cfg.unet_kwargs(num_classes)}


def build_corruption(args: dict[str, Any]) -> lc.DiagonalizableCorruption:
    """The corruption of ``model_args`` as a new run builds it (a checkpoint's comes from lc.load's reader)."""
    return RECIPES[args["corruption"]].corruption(tuple(args["shape"]), **args["settings"])


def prior_images(data, n: int, seed: int) -> torch.Tensor:
    """A seeded random subset of n training images in [-1, 1], (n, C, H, W) (without labels)."""
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    items = [data[int(i)] for i in index]
    return torch.stack([x[0] if isinstance(x, tuple) else x for x in items]).float() / 127.5 - 1


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Config, argv, description=__doc__.split("\n")[0])
    if cfg.threads:  # this command's own flag, never a resumed checkpoint's
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    weights = check_fid_setup(cfg) if cfg.fid else None  # fail before any work
    ckpt_state, ckpt_path = None, None
    if cfg.resume or cfg.sample_only:
        ckpt_path, ckpt_state = load_latest(cfg.checkpoint or out)  # falls back to .prev if the file is damaged
        require_keys(ckpt_state, STATE_KEYS, ckpt_path)
        if "model_args" not in ckpt_state["extra"]:
            raise CheckpointError(f"{ckpt_path} holds no model_args: this script did not write it (another Trainer "
                                  f"run, e.g. examples/demo.py's, or an older version of this script); sample it with "
                                  f"`lincorrupt sample {ckpt_path}` or lc.load, or train a new run here")
        # the run writes where --out-dir says (its default included), never into the folder the checkpoint recorded
        cfg = resumed_config(Config, ckpt_state["config"], {**given_options(Config, argv), "out_dir": str(out)},
                             RESUMABLE, ckpt_path)
    elif existing := run_checkpoints(out):  # fail before loading data; Trainer.fit checks again under the lock
        raise CheckpointError(f"{out} already holds {' and '.join(existing)}: pass --resume to continue it, "
                              f"or another --out-dir")

    if cfg.guidance != 1 and not cfg.class_conditional:  # after --resume: the checkpoint's model decides
        raise ValueError(f"--guidance {cfg.guidance} needs a class-conditional model: train one with "
                         f"--class-conditional (an unconditional model has nothing to guide)")
    dist = init_distributed(cfg.device or None, timeout=cfg.dist_timeout)
    torch.manual_seed(derive_seed(cfg.seed, dist.rank))  # weight init (identical: DDP broadcasts rank 0's) and dropout
    recipe = RECIPES[cfg.corruption]
    fit_prior = recipe.prior is not None and ckpt_state is None
    need_data = not cfg.sample_only or cfg.fid or fit_prior
    shape = tuple(ckpt_state["extra"]["model_args"]["shape"]) if ckpt_state else cfg.shape
    data = (load_images(cfg.data_root, shape, download=cfg.download or None, skip_unreadable=cfg.skip_unreadable,
                        labels=cfg.class_conditional) if need_data else None)
    args = ckpt_state["extra"]["model_args"] if ckpt_state else model_args(cfg, data.num_classes)
    if data is not None and cfg.verify_data:
        verify_images(data, cfg.skip_unreadable, cfg.progress and dist.is_main)
    if cfg.fid:
        check_fid_cache(fid_cache_path(cfg, data, weights))
    if ckpt_state:  # the network and the corruption with its fitted prior, as lc.load rebuilds them
        model = from_checkpoint(ckpt_state, ckpt_path)
        net, corruption = model.network, model.corruption  # the weights: the Trainer's state, loaded below
    else:
        net, corruption = UNet(**args["unet"]), build_corruption(args)
    if fit_prior:
        corruption.prior = recipe.prior.fit(corruption, prior_images(data, min(cfg.prior_images, len(data)), cfg.seed))
    trainer = Trainer(net, corruption, data, cfg, dist, extra={"model_args": args})
    if cfg.eval_every:
        trainer.evaluator = quality_evaluator(cfg, shape, dist.device)
    if ckpt_state:
        trainer.load_state_dict(ckpt_state, str(ckpt_path))
        del ckpt_state

    summary = {"corruption": cfg.corruption, "prediction": cfg.prediction, "out_dir": str(out),
               "config": dataclasses.asdict(cfg)}
    start = time.perf_counter()
    if not cfg.sample_only:
        summary["status"] = trainer.fit()
        summary["train_seconds"] = time.perf_counter() - start
        if summary["status"] == "interrupted":
            summary["signal"] = trainer.stop_signal or signal.SIGTERM  # another rank's signal: a scheduler's SIGTERM
            print(f"interrupted at step {trainer.step}: checkpoint saved to {out / 'checkpoint.pt'}; "
                  "rerun with --resume")
            return {**summary, "step": trainer.step, "losses": trainer.losses}
    summary["step"] = trainer.step
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        trainer.sample_grid(out / "samples.png")
        summary["samples"] = str(out / "samples.png")
    if cfg.fid:
        summary["fid"] = evaluate_fid(cfg, trainer, data, weights)
    if dist.is_main:  # --sample-only keeps the training's summary.json
        name = "sample_summary.json" if cfg.sample_only else "summary.json"
        (out / name).write_text(json.dumps(summary, indent=2) + "\n")
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
        raise ValueError(f"--fid-samples {cfg.fid_samples}: FID needs at least 2 samples "
                         "(the paper protocol uses 50000)")
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
                            sampler=None if cfg.eval_sampler == "auto" else cfg.eval_sampler,
                            grid=None if cfg.eval_grid == "auto" else cfg.eval_grid, batch_size=cfg.fid_batch,
                            seed=cfg.seed)


def evaluate_fid(cfg: Config, trainer: Trainer, data, weights: Path) -> float:
    """FID of ``cfg.fid_samples`` EMA samples against the training images (reference statistics cached)."""
    dist, device = trainer.dist, trainer.device
    inception = load_inception(weights, dims=cfg.fid_dims, device=device)
    cache = fid_cache_path(cfg, data, weights)
    ref = (dataset_stats(data, inception, batch_size=cfg.fid_batch, cache=cache, progress=cfg.progress)
           if dist.is_main else None)

    def draw(n: int, g: torch.Generator) -> torch.Tensor:  # a conditional model: uniform classes at --guidance
        return trainer.sample(n, steps=cfg.fid_steps, method=cfg.sampler, generator=g)

    stats: FIDStats = sample_stats(draw, cfg.fid_samples, inception, batch_size=cfg.fid_batch, seed=cfg.seed,
                                   rank=dist.rank, world_size=dist.world_size, device=device,
                                   progress=cfg.progress and dist.is_main)
    value = fid(ref, stats) if dist.is_main else float("nan")
    if dist.is_main:
        record = {"fid": value, "num_samples": stats.n, "sampler": cfg.sampler, "sampler_steps": cfg.fid_steps,
                  "dims": cfg.fid_dims, "step": trainer.step, "reference": str(cache),
                  "inception_weights": str(weights), "guidance": cfg.guidance if cfg.class_conditional else None}
        (Path(cfg.out_dir) / "fid.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"FID ({stats.n} samples, {cfg.fid_steps} steps) = {value:.3f}")
    return value


if __name__ == "__main__":
    try:
        summary = main()
    except (OSError, ValueError, CheckpointError, RunLockedError, FloatingPointError) as e:  # OSError: the out-dir
        sys.exit(f"error: {e}")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if summary.get("status") == "interrupted":  # as shells report a process ended by a signal
        sys.exit(128 + int(summary["signal"]))
