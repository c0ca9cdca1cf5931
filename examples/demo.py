"""The README's main job: blurring diffusion trained on real data on a CPU, offline, in a few minutes.

    make demo                                  # = .venv/bin/python examples/demo.py --out out/demo (--resume
                                               #   once out/demo holds a run: a second make demo remakes the pictures)
    .venv/bin/python examples/demo.py --out out/demo --steps 2000 --resume   # continue it: better samples
    .venv/bin/python examples/demo.py --out out/demo2 --steps 2000           # a new run beside it

The demo never deletes a run: into an --out whose run/ holds one, it starts only with --resume.
SIGTERM/Ctrl-C save a checkpoint and exit with 128 + the signal (continue with --resume).

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist),
installed with apt-get when it is missing and apt-get may run; else torchvision's download when
online. Training calls the library directly: the corruption, a tiny UNet and the Trainer with
the CIFAR-10 example's recipe scaled down (see RECIPE).

Writes to --out: forward_process.png (a clean image and z_t at several t for blurring diffusion,
DDPM and IHDM side by side), samples.png (64 samples of the EMA model, 100 ancestral steps, each pixel
drawn 2x2), loss.png (training loss),
summary.md (its paths relative to --out, or to the repository), and the run itself in run/
(checkpoint.pt, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402
from lincorrupt.commands import positive_int  # noqa: E402
from lincorrupt.data import DEBIAN_DIR, TensorImages, load_fashion_mnist, load_images, to_model_range  # noqa: E402
from lincorrupt.data.images import to_unit_range  # noqa: E402
from lincorrupt.nn import UNet  # noqa: E402
from lincorrupt.train import CheckpointError, TrainConfig, Trainer  # noqa: E402
from lincorrupt.train.checkpoint import load_latest, run_checkpoints  # noqa: E402
from lincorrupt.train.lock import RunLockedError  # noqa: E402
from lincorrupt.train.metrics_log import read_records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)
DEFAULT_STEPS = 600
# A tiny UNet: 28 -> 14 -> 7 with attention at 7x7 (0.7M parameters, ~0.4 s per step of 32 on one busy core).
UNET = dict(image_size=28, in_channels=1, ch=16, ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[7], groups=8,
            dropout=0.0)
# The paper's corruption (sigma_blur_max = 20, min_scale = 0.001, log-SNR in [-10, 10]).
CORRUPTION = dict(sigma_blur_max=20.0, min_scale=1e-3, logsnr_min=-10.0, logsnr_max=10.0)
RECIPE = dict(
    batch_size=32,        # small batches: more updates in a few CPU minutes
    lr=1e-3,              # a small network and a short run tolerate (and need) a larger step
    warmup_steps=50,
    ema_decay=0.995,      # 0.9999 would average over far more steps than the run has
    hflip=False,          # Fashion-MNIST's shoes all face left: a flipped image is not a training image
    # x-prediction: eps-prediction recovers x_hat = (u_t - sigma_t eps_hat) / alpha_t, which multiplies the
    # network's error by 1/alpha_t (~1e5 at the highest frequencies near t = 1); a few CPU minutes of training
    # do not make eps_hat that precise, and its samples diverge. The CIFAR-10 script keeps the paper's eps.
    prediction="x",
    num_workers=0,        # the dataset is an in-memory tensor
    log_every=10, sample_every=0, ckpt_every=200, grid_size=64,
)


def shown(path: Path, *bases: Path) -> str:
    """``path`` as the summary shows it: relative to the first of ``bases`` that holds it, else as given."""
    for base in bases:
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


def install_debian_fashion_mnist() -> None:
    """``apt-get install dataset-fashion-mnist`` when it is missing and apt-get may run (as root or by sudo -n)."""
    if DEBIAN_DIR.is_dir() or not shutil.which("apt-get"):
        return
    cmd = ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd] if shutil.which("sudo") else None
    if cmd:
        print(f"installing Debian's Fashion-MNIST: {' '.join(cmd)}")
        subprocess.run(cmd, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def fashion_mnist(root: Path | None, download_root: Path) -> tuple[torch.utils.data.Dataset, Path]:
    """The Fashion-MNIST training images and where they came from: ``root`` (a folder of its idx
    files, or torchvision's layout), else Debian's package, else torchvision's download (online)."""
    if root is None:
        install_debian_fashion_mnist()
        root = DEBIAN_DIR if DEBIAN_DIR.is_dir() else None
    if root is not None:
        images, _ = load_fashion_mnist(train=True, root=root)
        return TensorImages(images, SHAPE, str(root)), root
    print("Debian's dataset-fashion-mnist is not available: trying torchvision's download (needs network)")
    try:
        return load_images(download_root, SHAPE, download="fashion-mnist"), download_root
    except Exception as e:
        raise SystemExit(f"error: no Fashion-MNIST: install Debian's package (apt-get install dataset-fashion-mnist) "
                         f"or run once with network ({type(e).__name__}: {e})") from None


def forward_process(data, path: Path, times=(0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)) -> None:
    """One clean image and z_t at several t, one row per corruption, the same noise for all."""
    corruptions = {"blurring diffusion": lc.BlurringDiffusion(SHAPE), "DDPM (linear)": lc.DDPM(SHAPE),
                   "IHDM": lc.IHDM(SHAPE)}
    x = to_model_range(data[1])[None].expand(len(times), *SHAPE)  # an image of a shirt-like item
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(times)
    fig, axes = plt.subplots(len(corruptions), len(times), figsize=(1.6 * len(times), 1.8 * len(corruptions)))
    for row, (name, c) in zip(axes, corruptions.items()):
        z, _ = c.diffuse(x, t, noise=noise)
        for ax, zi, ti in zip(row, z, times):
            ax.imshow(zi[0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"t = {ti:g}", fontsize=9)
        row[0].set_ylabel(name, fontsize=9)
    fig.suptitle("forward process q(z_t | x): same image, same noise", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def loss_curve(metrics: Path, path: Path) -> list[dict]:
    """Plot the logged training loss; returns the records of metrics.jsonl."""
    records = read_records(metrics)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step"), ax.set_ylabel("loss (mean of 10 steps)")
    ax.set_yscale("log")
    ax.set_title("blurring diffusion on Fashion-MNIST", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return records


def check_fresh(run: Path) -> None:
    """A run without --resume must not touch another run's files: refuse a run folder that holds them (the
    Trainer checks the checkpoint again under its lock, for a run that finishes meanwhile)."""
    if existing := run_checkpoints(run):
        raise CheckpointError(f"{run} already holds a run ({' and '.join(existing)}): continue it with --resume "
                              f"(and a larger --steps; `make demo` passes --resume by itself), or pass another "
                              f"--out; the demo deletes no run")
    if (run / "metrics.jsonl").exists():
        raise CheckpointError(f"{run} holds metrics.jsonl of a run without a checkpoint yet (one still in its first "
                              f"{RECIPE['ckpt_every']} steps, or stopped before them): wait for it, or remove {run} "
                              f"once no process uses it, or pass another --out")


class DemoError(Exception):
    """Arguments that contradict the run in --out (reported in one line, before any work)."""


def target_steps(run: Path, steps: int | None, resume: bool) -> int:
    """The step to train to: ``--steps``, or without it DEFAULT_STEPS, or a resumed run's own step beyond that
    (``make demo`` a second time only makes the pictures again).

    Raises:
        DemoError: ``--steps`` below the step of the run resumed (training does not go back).
        CheckpointError: ``--resume`` without a run to resume.
    """
    if not resume:
        return steps or DEFAULT_STEPS
    _, state = load_latest(run)
    done = int(state["step"])
    if steps is None:
        return max(DEFAULT_STEPS, done)
    if steps < done:
        raise DemoError(f"{run} is at step {done}, beyond --steps {steps}: pass --steps {done} or more to continue "
                        f"it (e.g. --steps {2 * done}), or another --out for a new run")
    return steps


def sample_grid(trainer: Trainer, path: Path, steps: int, n: int = 64, scale: int = 2) -> None:
    """``n`` samples of the EMA model (ancestral sampling, ``steps`` steps, seed 0) as a square grid, each pixel
    drawn ``scale`` x ``scale`` (nearest neighbour: 64 images of 28x28 make a 484-pixel picture, not 242)."""
    from torchvision.utils import make_grid, save_image
    x = trainer.sample(n, method="ancestral", grid="uniform", steps=steps, generator=torch.Generator().manual_seed(0))
    grid = make_grid(to_unit_range(x.float().cpu()), nrow=math.ceil(math.sqrt(n)), padding=2)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0], path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/demo")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's package, else a download "
                                                "into OUT/data)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"training steps (default {DEFAULT_STEPS}, ~3-12 min on 2 cores; with --resume: {DEFAULT_STEPS}"
                        f" or the run's own step if beyond)")
    p.add_argument("--sample-steps", type=positive_int, default=100,
                   help="ancestral sampler steps for samples.png (default 100: the Results page found ancestral "
                        "sampling with 50 to 100 steps best for a trained blurring model)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/run up to --steps (without it, "
                                                         "an OUT/run that holds a run is refused)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads; the network is tiny, and on a shared 2-core machine 2 threads "
                        "measured 4-6x slower than 1 (OpenMP threads wait for each other)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    run = out / "run"
    if not args.resume:
        check_fresh(run)
    steps = target_steps(run, args.steps, args.resume)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, root = fashion_mnist(Path(args.data) if args.data else None, out / "data")
    forward_process(data, out / "forward_process.png")

    cfg = TrainConfig(steps=steps, sample_steps=args.sample_steps, out_dir=str(run), **RECIPE)
    torch.manual_seed(cfg.seed)  # the network's initial weights
    trainer = Trainer(UNet(**UNET), lc.BlurringDiffusion(SHAPE, **CORRUPTION), data, cfg)  # lc.load(run) rebuilds it
    if args.resume:
        trainer.resume(run / "checkpoint.pt")
    first_step, train_start = trainer.step, time.perf_counter()
    if trainer.fit() == "interrupted":
        print(f"interrupted at step {trainer.step}: checkpoint saved to {run / 'checkpoint.pt'}; continue with "
              f"--resume")
        return {"status": "interrupted", "signal": trainer.stop_signal or signal.SIGTERM, "steps": trainer.step}
    train_minutes = (time.perf_counter() - train_start) / 60
    this_run = f", the last {trainer.step - first_step}" if first_step else ""
    records = loss_curve(run / "metrics.jsonl", out / "loss.png")
    try:
        sample_grid(trainer, out / "samples.png", args.sample_steps)
        sampled = f"64 images, {args.sample_steps} ancestral steps, EMA weights"
    except KeyboardInterrupt:
        sampled = "interrupted (Ctrl-C): samples.png not written; make it with --resume"
    minutes = (time.perf_counter() - start) / 60
    params = sum(w.numel() for w in trainer.model.parameters())
    losses = f"loss {records[0]['loss']:.3f} (first 10 steps) -> {records[-1]['loss']:.3f} (last 10)"
    text = f"""# lincorrupt demo: blurring diffusion on Fashion-MNIST (CPU)

- data: {len(data)} Fashion-MNIST training images, 28x28 greyscale, from {shown(root, out, REPO)}
- corruption: BlurringDiffusion(sigma_blur_max=20, min_scale=0.001, log-SNR in [-10, 10]), {cfg.prediction}-prediction
- network: DDPM UNet, 16 channels, multipliers 1-2-4, {params / 1e6:.2f}M parameters
- training: {trainer.step} steps of batch {cfg.batch_size}{this_run} in {train_minutes:.1f} min; {losses}
- sampling: {sampled}
- total time: {minutes:.1f} min

Files: forward_process.png, samples.png, loss.png, run/ (checkpoint.pt, metrics.jsonl).
Continue training: .venv/bin/python examples/demo.py --out {shown(out, REPO)} --steps {2 * trainer.step} --resume
More samples: .venv/bin/lincorrupt sample {shown(run, REPO)} -n 64 -o more.png
"""
    (out / "summary.md").write_text(text)
    print(text)
    if sampled.startswith("interrupted"):
        return {"status": "interrupted", "signal": signal.SIGINT, "steps": trainer.step}
    return {"status": "done", "minutes": minutes, "steps": trainer.step,
            "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"]}


if __name__ == "__main__":
    try:
        result = main()
    except (CheckpointError, RunLockedError, DemoError, OSError) as e:  # OSError: an --out that cannot be written
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # outside training (which saves and returns "interrupted"): nothing to save
        sys.exit("interrupted")
    if result["status"] == "interrupted":  # as shells report a process ended by a signal
        sys.exit(128 + int(result["signal"]))
