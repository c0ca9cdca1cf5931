"""Sample quality of trained models: blurring diffusion against its no-blur ablation, DDPM and IHDM on Fashion-MNIST.

    .venv/bin/python benchmarks/bench_quality.py                 # the full study (~1.5 h on a 2-core CPU)
    .venv/bin/python benchmarks/bench_quality.py --tiny --out /tmp/q --results /tmp/q   # seconds: tests the code

Every model gets the same UNet, optimiser, seed, batch and number of steps; only the corruption
(and, for IHDM, its own recipe) differs:

- ``blurring``: BlurringDiffusion at the paper's settings, sigma_B,max = 20 on 32x32 scaled to
  28x28 (17.5: the same attenuation of the lowest frequency), min_scale 0.001, log-SNR in [-10, 10];
- ``no-blur``: the paper's ablation, the same cosine schedule with ``sigma_blur_max=0``;
- ``ddpm``: DDPM with the linear beta schedule (Ho et al.);
- ``ihdm``: IHDM with its recipe: x-prediction, the empirical prior of blurred training images
  (sigma_B,max 24 on 32x32 scaled to 21).

The three Gaussian diffusions predict v (the velocity generalised to non-variance-preserving
processes): eps-prediction, the blurring paper's choice, divides by alpha_t ~ 1e-5 at high
frequencies near t = 1, which a network trained for minutes on a CPU cannot afford.

Each model is then evaluated on 5,000 samples (the sampler and grid the sampler guide recommends for
its corruption) against the 10,000 test images in the features of the shipped Fashion-MNIST
classifier (:func:`lincorrupt.metrics.load_feature_net`): FID, KID, precision and recall, plus
test-set bits per dimension. For blurring and no-blur, quality against NFE (dpm++2m, dpm++3m
and ancestral sampling, 1,000 samples per point). The floor is the same metrics for 5,000 training images. Models run as
``--jobs`` parallel processes of one thread each; a model whose ``result.json`` exists is not rerun.

Writes to --results: results.md, results.json, samples.png (a grid per model), nfe.png, and each
model's quality-during-training plot; --out holds the runs (checkpoints, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lincorrupt as lc
from lincorrupt.data import TensorImages, load_fashion_mnist, to_model_range
from lincorrupt.metrics import extract_features, frechet_distance, kid, load_feature_net, precision_recall
from lincorrupt.nn import UNet
from lincorrupt.train import TrainConfig, Trainer
from lincorrupt.train.evaluation import QualityEvaluator, quantize

SHAPE = (1, 28, 28)
SCALE = 28 / 32  # blur widths are in pixels: scale the 32x32 papers' values to keep each frequency's attenuation


@dataclass(frozen=True)
class Model:
    """A corruption built from the training images, the prediction it trains with, and how to sample it."""

    build: Callable[[torch.Tensor], lc.DiagonalizableCorruption]
    prediction: str
    sampler: str
    grid: str
    nfe: int


def _ihdm(train: torch.Tensor) -> lc.DiagonalizableCorruption:
    c = lc.IHDM(SHAPE, sigma_blur_max=24.0 * SCALE)
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:1000]
    c.prior = lc.EmpiricalPrior.fit(c, to_model_range(train[index]))
    return c


# Samplers: the sampler guide's recommendation per corruption, at the NFE where it matches 1000-step ancestral
# sampling with an exact denoiser (blurring 22, DDPM 15, IHDM 28); no-blur takes blurring's, so the two differ
# only in the corruption.
MODELS: dict[str, Model] = {
    "blurring": Model(lambda train: lc.BlurringDiffusion(SHAPE, sigma_blur_max=20.0 * SCALE, min_scale=1e-3), "v",
                      "dpm++3m", "logsnr", 22),
    "no-blur": Model(lambda train: lc.BlurringDiffusion(SHAPE, sigma_blur_max=0.0), "v", "dpm++3m", "logsnr", 22),
    "ddpm": Model(lambda train: lc.DDPM(SHAPE, schedule="linear"), "v", "dpm++3m", "logsnr", 15),
    "ihdm": Model(_ihdm, "x", "dpm++3m", "info", 28),
}
NFE_CURVES = ("blurring", "no-blur")  # models measured against NFE with each (sampler, grid) of CURVE_SAMPLERS
CURVE_SAMPLERS = (("dpm++2m", "logsnr"), ("dpm++3m", "logsnr"), ("ancestral", "uniform"))


@dataclass(frozen=True)
class Budget:
    """Everything that sets the study's size (the full study or the --tiny code check)."""

    unet: dict
    steps: int
    batch_size: int
    samples: int
    curve_samples: int
    curve_nfe: dict[str, tuple[int, ...]]  # sampler -> NFEs of the quality-against-NFE curves
    bpd_images: int
    eval_every: int
    eval_samples: int
    kid_subset: int
    test_images: int


FULL = Budget(unet=dict(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0, groups=8),
              steps=4000, batch_size=32, samples=5000, curve_samples=1000,
              curve_nfe={"dpm++2m": (10, 20, 50), "dpm++3m": (10, 22, 50), "ancestral": (50, 100, 250)},
              bpd_images=10_000, eval_every=1000, eval_samples=500, kid_subset=1000,
              test_images=10_000)
TINY = Budget(unet=dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, groups=4),
              steps=4, batch_size=8, samples=24, curve_samples=12,
              curve_nfe={"dpm++2m": (2, 3), "dpm++3m": (22,), "ancestral": (3,)},
              bpd_images=8, eval_every=2, eval_samples=12, kid_subset=8, test_images=200)


def sample_features(ema, corruption, prediction, net, n, steps, method, grid, seed,
                    batch=250) -> tuple[np.ndarray, torch.Tensor]:
    """Features of ``n`` samples (quantised to 8 bits, as saved images) and the first 64 samples."""
    feats, first = [], None
    for k, start in enumerate(range(0, n, batch)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        x = quantize(lc.sample(ema, corruption, min(batch, n - start), steps=steps, prediction=prediction,
                               method=method, grid=grid, generator=g))
        first = x[:64] if first is None else first
        feats.append(extract_features(net, x))
    return np.concatenate(feats), first


def quality(real: np.ndarray, fake: np.ndarray, kid_subset: int) -> dict:
    """FID, KID (x 1e3, mean and std over 100 subsets), precision and recall (k = 3, equal set sizes)."""
    k_mean, k_std = kid(real, fake, subsets=100, subset_size=min(kid_subset, len(fake)))
    precision, recall = precision_recall(real[:len(fake)], fake)
    return {"fid": frechet_distance(real, fake), "kid_x1e3": 1e3 * k_mean, "kid_std_x1e3": 1e3 * k_std,
            "precision": precision, "recall": recall, "samples": len(fake)}


def reference(budget: Budget) -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
    """The Fashion-MNIST feature net, the test images every model is compared with, and their features."""
    net, test_x = load_feature_net("fashion-mnist"), load_fashion_mnist(train=False)[0][:budget.test_images]
    return net, test_x, extract_features(net, test_x)


def run_model(name: str, budget: Budget, out: Path) -> dict:
    """Train one model, then evaluate it; writes and returns ``out/name/result.json``."""
    torch.manual_seed(0)
    spec, run = MODELS[name], out / name / "run"
    train_x, _ = load_fashion_mnist(train=True)
    net, test_x, real = reference(budget)
    corruption = spec.build(train_x)
    cfg = TrainConfig(steps=budget.steps, batch_size=budget.batch_size, lr=1e-3, warmup_steps=min(200, budget.steps),
                      ema_decay=0.999, prediction=spec.prediction, num_workers=0, log_every=50, sample_every=0,
                      ckpt_every=1000, sampler=spec.sampler, sample_steps=spec.nfe, progress=False, out_dir=str(run),
                      eval_every=budget.eval_every)
    evaluator = QualityEvaluator(lambda x: extract_features(net, x), real, "Fashion-MNIST classifier",
                                 num_samples=budget.eval_samples, steps=10, sampler=spec.sampler, grid=spec.grid,
                                 kid_subset_size=budget.kid_subset)
    unet = UNet(image_size=SHAPE[1], in_channels=SHAPE[0], **budget.unet)
    trainer = Trainer(unet, corruption, TensorImages(train_x, SHAPE), cfg, evaluator=evaluator)
    if (run / "checkpoint.pt").exists():
        trainer.resume(run / "checkpoint.pt")
    start = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - start
    ema = trainer.sampling_model()

    start = time.perf_counter()
    fake, grid = sample_features(ema, corruption, spec.prediction, net, budget.samples, spec.nfe, spec.sampler,
                                 spec.grid, seed=1)
    result = {"model": name, "prediction": spec.prediction, "sampler": f"{spec.sampler}/{spec.grid}/{spec.nfe}",
              "corruption": repr(corruption), "parameters": sum(p.numel() for p in unet.parameters()),
              "steps": trainer.step, "train_seconds": train_seconds,
              **quality(real, fake, budget.kid_subset)}
    torch.save(grid, out / name / "grid.pth")

    g = torch.Generator().manual_seed(2)
    bound = [lc.elbo(ema, corruption, to_model_range(test_x[i:i + 500]), prediction=spec.prediction, generator=g)
             for i in range(0, budget.bpd_images, 500)]
    per_dim = math.prod(SHAPE) * math.log(2)
    result["bpd"] = float(torch.cat([b.total for b in bound]).mean() / per_dim)
    result["bpd_reconstruction"] = float(torch.cat([b.reconstruction for b in bound]).mean() / per_dim)
    result["bpd_images"] = budget.bpd_images

    if name in NFE_CURVES:
        curve = []
        for method, grid_name in CURVE_SAMPLERS:
            for nfe in budget.curve_nfe[method]:
                if (method, grid_name, nfe) == (spec.sampler, spec.grid, spec.nfe):  # the main samples' first ones
                    f = fake[:budget.curve_samples]
                else:
                    f, _ = sample_features(ema, corruption, spec.prediction, net, budget.curve_samples, nfe, method,
                                           grid_name, seed=3)
                curve.append({"method": method, "grid": grid_name, "nfe": nfe,
                              **quality(real, f, budget.kid_subset // 2)})
                print(f"{name}: {method}/{grid_name} {nfe} NFE: FID {curve[-1]['fid']:.2f}", flush=True)
        result["nfe_curve"] = curve
    result["eval_seconds"] = time.perf_counter() - start
    (out / name / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'nfe_curve'})}", flush=True)
    return result


def floor(budget: Budget) -> dict:
    """The metrics of real training images against the test set: what a perfect model would score."""
    train_x, _ = load_fashion_mnist(train=True)
    net, _, real = reference(budget)
    index = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    out = {"full": quality(real, extract_features(net, train_x[index[:budget.samples]]), budget.kid_subset)}
    out["curve"] = quality(real, extract_features(net, train_x[index[:budget.curve_samples]]), budget.kid_subset // 2)
    return out


# ----------------------------------------------------------------------------------- report
def grids(results: dict, out: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid
    test_x, _ = load_fashion_mnist(train=False)
    panels = {"test images": to_model_range(test_x[:64])}
    panels.update({name: torch.load(out / name / "grid.pth") for name in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (name, x) in zip(np.atleast_1d(axes), panels.items()):
        ax.imshow(make_grid(x.add(1).div(2).clamp(0, 1), nrow=8, padding=1)[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name if name == "test images" else f"{name} ({results[name]['sampler'].split('/')[-1]} NFE)",
                     fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def nfe_plot(results: dict, base: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in (n for n in NFE_CURVES if n in results):
        for (method, grid_name), marker in zip(CURVE_SAMPLERS, "o^s"):
            points = [p for p in results[name]["nfe_curve"] if p["method"] == method]
            for ax, key in zip(axes, ("fid", "kid_x1e3")):
                ax.plot([p["nfe"] for p in points], [p[key] for p in points],
                        marker + ("-" if name == NFE_CURVES[0] else "--"),
                        label=f"{name}, {method}/{grid_name}")
    for ax, key, label in zip(axes, ("fid", "kid_x1e3"), ("FID", "KID x 1e3")):
        ax.axhline(base[key], color="grey", lw=0.8, ls=":", label="training images (floor)")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(f"{label}, Fashion-MNIST classifier features")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"quality against NFE ({base['samples']} samples per point)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict, base: dict) -> str:
    rows = ["| model | prediction | sampler (grid, NFE) | FID | KID x 1e3 | precision | recall | test bpd "
            "(decoder part) | training |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['prediction']} | {r['sampler']} | {r['fid']:.2f} | {r['kid_x1e3']:.2f} ± "
                    f"{r['kid_std_x1e3']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['bpd']:.3f} "
                    f"({r['bpd_reconstruction']:.3f}) | {r['steps']} steps, {r['train_seconds'] / 60:.0f} min |")
    rows.append(f"| training images (floor) | | | {base['fid']:.2f} | "
                f"{base['kid_x1e3']:.2f} ± {base['kid_std_x1e3']:.2f} "
                f"| {base['precision']:.3f} | {base['recall']:.3f} | | |")
    return "\n".join(rows)


def curve_table(results: dict, base: dict) -> str:
    rows = ["| model | sampler/grid | NFE | FID | KID x 1e3 | precision | recall |", "|---|---|---|---|---|---|---|"]
    for name in (n for n in NFE_CURVES if n in results):
        for p in results[name]["nfe_curve"]:
            rows.append(f"| {name} | {p['method']}/{p['grid']} | {p['nfe']} | {p['fid']:.2f} | {p['kid_x1e3']:.2f} ± "
                        f"{p['kid_std_x1e3']:.2f} | {p['precision']:.3f} | {p['recall']:.3f} |")
    rows.append(f"| training images (floor) | | | {base['fid']:.2f} | "
                f"{base['kid_x1e3']:.2f} ± {base['kid_std_x1e3']:.2f} "
                f"| {base['precision']:.3f} | {base['recall']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long run of the same code (tests it, not the numbers)")
    p.add_argument("--out", default="out/quality", help="runs: checkpoints and logs")
    p.add_argument("--results", default="docs/assets/quality", help="tables and figures")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--jobs", type=int, default=None,
                   help="models trained at once, one thread each (default 2; 1 --tiny)")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a worker process: one model
    args = p.parse_args(argv)
    budget = TINY if args.tiny else FULL
    out, results_dir = Path(args.out), Path(args.results)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; expected some of {sorted(MODELS)}")
    load_feature_net("fashion-mnist"), load_fashion_mnist(train=False)  # fail before any work
    # One thread per process: a small network gains little from a second, and on a shared machine OpenMP's
    # waiting threads cost more than they bring; parallelism comes from --jobs processes instead.
    torch.set_num_threads(1)
    if args.only:
        return run_model(args.only, budget, out)

    start = time.perf_counter()
    todo = [n for n in names if not (out / n / "result.json").exists()]
    jobs = args.jobs or (1 if args.tiny else 2)
    if jobs == 1:
        for name in todo:
            run_model(name, budget, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        pending, running = list(todo), []
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                cmd = [sys.executable, __file__, "--only", name, "--out", str(out)] + (["--tiny"] if args.tiny else [])
                with open(out / f"{name}.log", "a") as log:  # the child keeps its own copy of the handle
                    running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
            time.sleep(1)
            for name, proc in list(running):
                if proc.poll() is not None:
                    running.remove((name, proc))
                    if proc.returncode:
                        sys.exit(f"error: model {name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    results = {n: json.loads((out / n / "result.json").read_text()) for n in names}
    base = floor(budget)
    results_dir.mkdir(parents=True, exist_ok=True)
    grids(results, out, results_dir / "samples.png")
    if any(n in results for n in NFE_CURVES):
        nfe_plot(results, base["curve"], results_dir / "nfe.png")
    for name in names:
        quality_png = out / name / "run" / "quality.png"
        if quality_png.exists():
            (results_dir / f"training_{name}.png").write_bytes(quality_png.read_bytes())
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads ({platform.processor() or 'cpu'}), "
               f"torch {torch.__version__}")
    command = " ".join(["python benchmarks/bench_quality.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "machine": machine, "wall_seconds": time.perf_counter() - start,
              "budget": {k: v for k, v in budget.__dict__.items()}, "floor": base, "models": results}
    (results_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (f"Quality in Fashion-MNIST classifier features ({budget.samples} samples "
            f"against the 10,000 test images)\n\n"
            f"{table(results, base['full'])}\n\nQuality against NFE ({budget.curve_samples} samples per point)\n\n"
            f"{curve_table(results, base['curve'])}\n\nCommand: `{command}`; machine: {machine}; "
            f"wall time of this invocation: {report['wall_seconds'] / 60:.0f} min\n")
    (results_dir / "results.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
