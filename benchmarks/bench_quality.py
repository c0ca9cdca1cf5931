"""Does blur help? Blurring diffusion against the same schedule without blur on Fashion-MNIST, made fair.

    .venv/bin/python benchmarks/bench_quality.py --resume            # the study (or what is left of it)
    .venv/bin/python benchmarks/bench_quality.py --resume --phase train   # train only; evaluate later
    .venv/bin/python benchmarks/bench_quality.py --resume --phase eval    # evaluate what is kept (beside training)
    .venv/bin/python benchmarks/bench_quality.py --resume --phase nfe     # the headline models with other samplers
    .venv/bin/python benchmarks/bench_quality.py --tiny --out /tmp/q --results /tmp/q   # seconds: tests the code
    python benchmarks/bench_quality.py --device cuda --resume        # the GPU mode: 10x the images per step
    .venv/bin/python benchmarks/bench_quality.py --samples 5000 --out out/quality5k   # 5,000 samples per evaluation
    .venv/bin/python benchmarks/bench_quality.py --resume --last-only --runs blur17.5-v-isotropic-s0  # weighting study

Every model gets the same UNet (0.69M parameters), Adam at lr 1e-3 with 200 warm-up steps, batch 32,
EMA decay 0.999 with k-diffusion's warm-up (power 2/3), no horizontal flips (Fashion-MNIST's shoes
all face one way), and the same budget; only the corruption and the prediction (and the loss weighting) differ:

- ``blur{w}-v``: BlurringDiffusion with sigma_B,max = w in {17.5, 10, 5, 2} (17.5 is the paper's 20 on
  32x32 scaled to 28x28), min_scale 0.001, log-SNR in [-10, 10], v-prediction;
- ``noblur-v``: the paper's ablation, the same cosine schedule with ``sigma_blur_max=0``;
- ``blur17.5-eps`` and ``noblur-eps``: the paper's own recipe, eps-prediction with the unweighted loss.
- the weighting study: the headline pair trained with a loss weighting of :mod:`lincorrupt.weightings` in
  each coordinate's own log-SNR (``blur17.5-v-isotropic``, ``-min-snr5`` with gamma 5, ``-sigmoid0`` with
  b = 0; ``"isotropic"`` without blur is the unweighted loss, so its no-blur model is ``noblur-v``), seed 0,
  the headline length; ``--last-only`` evaluates each run only after its last budget, and the report's first
  table is the blur / no-blur FID ratio per weighting.

The two headline models (blur17.5-v, noblur-v) train three times the base budget, evaluated at each
third, with two training seeds each; every other model trains the base budget once (seed 0). The base
budget, 500 steps (16,000 images), is what lets the whole study (18 base budgets of training, 28
evaluations) fit about two hours on a 2-core machine; the GPU mode trains the same steps at batch 320. Because
the learning rate is constant after warm-up, a headline run at its first third *is* the base-budget
model, so the width sweep compares like with like.

Each evaluation: 1,000 EMA samples on the CPU, 5,000 in the GPU mode, any number with ``--samples``
(:data:`SAMPLER`: the sampler, grid and NFE; the GPU mode samples at 50 NFE) against the 10,000 test images
in the shipped Fashion-MNIST classifier's features (FID, KID, precision, recall); test bits/dim; the radially
averaged DCT power spectrum of the samples relative to the test images per frequency band; the network's denoising error
per band relative to the linear (Wiener) estimator of the training data's Gaussian fit at t in
{0.1, 0.15, 0.2, 0.3}; and, at the first evaluation, the raw weights as well.

Runs are resumable: ``--resume`` continues every run folder that exists (training from its last
checkpoint, skipping evaluations already written) and starts the ones that don't; without it the
script refuses to touch an existing ``--out``. Each evaluation records the commit it ran on.
Writes to --results: results.md, results.json, samples.png, training.png; --out holds the runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import reports
import torch
from fashion_study import (
    FULL,
    GPU,
    HEADLINE,
    MODELS,
    NFE_SWEEP,
    SHAPE,
    TINY,
    WEIGHTED,
    Budget,
    Reference,
    Run,
    config,
    draw,
    load,
    quality,
)

from lincorrupt.data import TensorImages, load_fashion_mnist, to_model_range
from lincorrupt.metrics import extract_features, load_feature_net, spectral
from lincorrupt.nn import UNet
from lincorrupt.train import Trainer
from lincorrupt.train.distributed import DistInfo

WIENER_TIMES = (0.1, 0.15, 0.2, 0.3)


# In order of importance: a run that is cut short leaves the most useful ones done.
RUNS: tuple[Run, ...] = (
    Run("blur17.5-v", 0, 3), Run("noblur-v", 0, 3),
    Run("blur17.5-eps"), Run("noblur-eps"), Run("blur10-v"), Run("blur5-v"), Run("blur2-v"),
    Run("soft-x"), Run("blur17.5-v", 1, 3), Run("noblur-v", 1, 3),
    # the weighting study (--last-only): the headline pair with each loss weighting, seed 0, the headline length;
    # the best weighting's blurred model also with the second seed
    *(Run(model, 0, 3) for pair in WEIGHTED.values() for model in pair if model not in HEADLINE),
    Run("blur17.5-v-isotropic", 1, 3),
)
#: The models the sampler sweep (``--phase nfe``) covers: the headline pair and its weighted versions.
SWEPT: tuple[str, ...] = tuple(dict.fromkeys(m for pair in WEIGHTED.values() for m in pair))


# ----------------------------------------------------------------------------------- training
def train(run: Run, budget: Budget, out: Path, device: torch.device) -> None:
    """Train ``run`` to each multiple of the base budget, keeping a copy of the checkpoint at each."""
    images, _ = load_fashion_mnist(train=True)
    images = images[:budget.train_images]
    folder = out / run.name
    for k in range(1, run.budgets + 1):
        target = k * budget.steps
        kept = folder / f"step{target}.pt"
        if kept.exists():
            continue
        torch.manual_seed(run.seed)  # the initial weights
        unet = UNet(image_size=SHAPE[1], in_channels=SHAPE[0], **budget.unet)
        corruption = MODELS[run.model].build(to_model_range(images))
        trainer = Trainer(unet, corruption, TensorImages(images, SHAPE),
                          config(run, budget, target, out), DistInfo(device=device))
        latest = folder / "run" / "checkpoint.pt"
        if latest.exists():
            trainer.resume(latest)
        start = time.perf_counter()
        if trainer.fit() != "done":
            sys.exit(f"{run.name}: training stopped before step {target}")
        seconds = json.loads((folder / "train_seconds.json").read_text()) if (folder / "train_seconds.json").exists() \
            else {}
        seconds[str(target)] = seconds.get(str(target), 0.0) + time.perf_counter() - start
        (folder / "train_seconds.json").write_text(json.dumps(seconds) + "\n")
        shutil.copyfile(latest, kept.with_suffix(".tmp"))
        kept.with_suffix(".tmp").replace(kept)  # atomic: an evaluation running beside never reads half a file
        print(f"{run.name}: step {target} kept", flush=True)


# ----------------------------------------------------------------------------------- evaluation
def evaluate(run: Run, step: int, budget: Budget, out: Path, ref: Reference, device: torch.device,
             raw_too: bool) -> dict:
    """The evaluation of ``run`` at ``step``: written to ``out/run/eval{step}.json`` and returned."""
    spec, path = MODELS[run.model], out / run.name / f"eval{step}.json"
    if path.exists():
        return json.loads(path.read_text())
    kept = out / run.name / f"step{step}.pt"
    models = {part: load(kept, device, ref.train_x, ema=part == "ema") for part in
              (("ema", "raw") if raw_too else ("ema",))}
    ema = models["ema"]
    corruption = ema.corruption
    start = time.perf_counter()
    bands = spectral.radial_bands(*SHAPE[1:])
    result = {"run": run.name, "model": run.model, "seed": run.seed, "step": step, "prediction": ema.prediction,
              "images_seen": step * budget.batch_size, "sampler": "/".join(map(str, budget.sampler)),
              "commit": reports.commit(), "corruption": repr(corruption)}
    for part, model in models.items():
        x = draw(model, budget.samples, budget.sampler, seed=1, device=device)
        features = extract_features(ref.net, x)
        metrics = quality(ref.real, features, budget.kid_subset)
        if budget.first:  # the same draws' first few: the bias of the smaller count, measured
            metrics["first"] = quality(ref.real, features[:budget.first], budget.kid_subset)
        metrics["spectrum_ratio"] = spectral.spectrum_ratio(x, ref.test_x, bands).tolist()
        result[part] = metrics
        if part == "ema":
            torch.save(x[:64].clone(), out / run.name / f"grid{step}.pth")
    for sampler in spec.also:
        x = draw(ema, budget.samples, sampler, seed=1, device=device)
        result.setdefault("also", {})["/".join(map(str, sampler))] = quality(
            ref.real, extract_features(ref.net, x), budget.kid_subset)
    g = torch.Generator(device).manual_seed(2)
    test = ref.test_x[:budget.bpd_images].to(device)
    bound = [ema.elbo(test[i:i + 500], generator=g) for i in range(0, len(test), 500)]
    result["bpd"] = float(torch.cat([b.total for b in bound]).mean().cpu() / (math.prod(SHAPE) * math.log(2)))
    errors = spectral.denoising_band_errors(ema, corruption, ref.spectral, test[:budget.wiener_images],
                                            WIENER_TIMES, bands, ema.prediction,
                                            generator=torch.Generator(device).manual_seed(3))
    result["wiener_ratio"] = {str(t): [float(v) for v in r] for t, r in errors.items()}
    result["eval_seconds"] = time.perf_counter() - start
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{run.name} @ {step}: FID {result['ema']['fid']:.2f}", flush=True)
    return result


def sweep(run: Run, budget: Budget, out: Path, device: torch.device) -> dict | None:
    """FID, KID, precision and recall of ``run``'s EMA weights at its last kept checkpoint for every sampler of
    ``budget.nfe_sweep``: written to ``out/run/nfe{step}.json`` and returned (None: nothing kept yet)."""
    kept = sorted(int(p.stem[4:]) for p in (out / run.name).glob("step*.pt"))
    if not kept:
        return None
    path = out / run.name / f"nfe{kept[-1]}.json"
    if path.exists():
        return json.loads(path.read_text())
    ref = Reference.build(budget)
    model = load(out / run.name / f"step{kept[-1]}.pt", device, ref.train_x)
    result = {"run": run.name, "step": kept[-1], "samples": budget.nfe_samples, "commit": reports.commit(),
              "samplers": {}}
    for sampler in budget.nfe_sweep:
        x = draw(model, budget.nfe_samples, sampler, seed=4, device=device)
        result["samplers"]["/".join(map(str, sampler))] = quality(ref.real, extract_features(ref.net, x),
                                                                  budget.kid_subset)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def work(run: Run, budget: Budget, out: Path, device: torch.device, phase: str, last_only: bool = False) -> None:
    """Everything ``run`` still needs: training (unless ``phase == 'eval'``), then (unless ``phase ==
    'train'``) the evaluation of every kept checkpoint (``last_only``: of the one after its last budget).
    ``eval`` may run beside a training of the same run; ``nfe`` only runs the sampler sweep of a model of
    :data:`SWEPT`."""
    if phase == "nfe":
        if run.model in SWEPT and run.seed == 0:
            sweep(run, budget, out, device)
        return
    if phase != "eval":
        train(run, budget, out, device)
    if phase == "train":
        return
    ref = None
    for k in [run.budgets] if last_only else range(1, run.budgets + 1):
        if (out / run.name / f"step{k * budget.steps}.pt").exists():
            ref = ref or Reference.build(budget)
            evaluate(run, k * budget.steps, budget, out, ref, device, raw_too=k == 1)


def floor(budget: Budget, ref: Reference) -> dict:
    """The metrics of real training images against the test set: what a perfect model would score."""
    train_x, _ = load_fashion_mnist(train=True)
    index = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:budget.samples]
    return quality(ref.real, extract_features(ref.net, train_x[index]), budget.kid_subset)


# ----------------------------------------------------------------------------------- report
def collect(out: Path, budget: Budget) -> dict[str, list[dict]]:
    """Every evaluation written so far, per run, in step order."""
    found = {}
    for run in RUNS:
        evals = sorted((json.loads(p.read_text()) for p in (out / run.name).glob("eval*.json")),
                       key=lambda r: r["step"])
        if evals:
            found[run.name] = evals
    return found


def nfe_table(out: Path) -> str:
    """The sampler sweep of the models of :data:`SWEPT`: FID (KID x 1e3, recall) per (sampler, grid, NFE)."""
    found = {}
    for run in RUNS:
        if run.model in SWEPT and run.seed == 0:
            sweeps = sorted((json.loads(p.read_text()) for p in (out / run.name).glob("nfe*.json")),
                            key=lambda r: r["step"])
            if sweeps:
                found[run.model] = sweeps[-1]
    if not found:
        return ""
    models = [m for m in SWEPT if m in found]
    rows = ["| sampler / grid / NFE | " + " | ".join(f"{m} @ {found[m]['step']}: FID, KID x 1e3, recall"
                                                    for m in models) + " |", "|---|" + "---|" * len(models)]
    for name in found[models[0]]["samplers"]:
        cells = []
        for m in models:
            q = found[m]["samplers"].get(name)
            cells.append(f"{q['fid']:.2f}, {q['kid_x1e3']:.1f}, {q['recall']:.3f}" if q else "")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def base_table(evals: dict[str, list[dict]], budget: Budget, base: dict) -> str:
    """Every model at the base budget (seed 0): the width sweep and eps against v."""
    rows = ["| model | prediction | FID | KID x 1e3 | precision | recall | test bpd | commit |",
            "|---|---|---|---|---|---|---|---|"]
    for run in RUNS:
        r = next((e for e in evals.get(run.name, []) if e["step"] == budget.steps), None)
        if run.seed == 0 and r is not None:
            q = r["ema"]
            rows.append(f"| {run.model} | {r['prediction']} | {q['fid']:.2f} | {q['kid_x1e3']:.2f} ± "
                        f"{q['kid_std_x1e3']:.2f} | {q['precision']:.3f} | {q['recall']:.3f} | {r['bpd']:.3f} | "
                        f"{r['commit']} |")
            for sampler, q in r.get("also", {}).items():
                rows.append(f"| {run.model}, sampled {sampler} | {r['prediction']} | {q['fid']:.2f} | "
                            f"{q['kid_x1e3']:.2f} ± {q['kid_std_x1e3']:.2f} | {q['precision']:.3f} | "
                            f"{q['recall']:.3f} | | {r['commit']} |")
    rows.append(f"| training images (floor) | | {base['fid']:.2f} | {base['kid_x1e3']:.2f} ± "
                f"{base['kid_std_x1e3']:.2f} | {base['precision']:.3f} | {base['recall']:.3f} | | |")
    return "\n".join(rows)


def trend_table(evals: dict[str, list[dict]]) -> str:
    """The headline models over training: FID per seed, and the blur / no-blur ratio (mean ± spread)."""
    rows = ["| step | images seen | " + " | ".join(f"{m} FID (seeds)" for m in HEADLINE) + " | ratio blur / no-blur |",
            "|---|---|---|---|---|"]
    steps = sorted({e["step"] for m in HEADLINE for run in RUNS if run.model == m for e in evals.get(run.name, [])})
    for step in steps:
        per_model, seen = {}, None
        for m in HEADLINE:
            per_model[m] = {run.seed: e["ema"]["fid"] for run in RUNS if run.model == m
                            for e in evals.get(run.name, []) if e["step"] == step}
            seen = seen or next((e["images_seen"] for run in RUNS if run.model == m for e in evals.get(run.name, [])
                                 if e["step"] == step), None)
        ratios = [per_model[HEADLINE[0]][s] / per_model[HEADLINE[1]][s]
                  for s in per_model[HEADLINE[0]] if s in per_model[HEADLINE[1]]]
        ratio = (f"{np.mean(ratios):.2f}" + (f" ± {np.std(ratios):.2f} ({len(ratios)} seeds)" if len(ratios) > 1
                                             else " (1 seed)")) if ratios else ""
        cells = [", ".join(f"{v:.2f}" for _, v in sorted(per_model[m].items())) for m in HEADLINE]
        rows.append(f"| {step} | {seen:,} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(rows)


def weighting_table(evals: dict[str, list[dict]], out: Path) -> str:
    """The weighting study: per loss weighting of :data:`WEIGHTED`, the blur and no-blur models' FID (KID x 1e3)
    at the last step both were evaluated at (seed 0), their ratio, and the ratio with each sampler of the sweep
    (``--phase nfe``) where both were swept at that step."""
    rows = []
    for label, pair in WEIGHTED.items():
        found = [{e["step"]: e for e in evals.get(f"{m}-s0", [])} for m in pair]
        common = sorted(set(found[0]) & set(found[1]))
        if not common:
            continue
        step = common[-1]
        blur, plain = (f[step]["ema"] for f in found)
        swept = [json.loads(p.read_text()) if p.exists() else {"samplers": {}}
                 for p in (out / f"{m}-s0" / f"nfe{step}.json" for m in pair)]
        others = [f"{name} {q['fid'] / swept[1]['samplers'][name]['fid']:.2f}"
                  for name, q in swept[0]["samplers"].items() if name in swept[1]["samplers"]]
        rows.append(f"| {label} | {pair[0]} / {pair[1]} | {step} | {blur['fid']:.2f} ({blur['kid_x1e3']:.1f}) | "
                    f"{plain['fid']:.2f} ({plain['kid_x1e3']:.1f}) | {blur['fid'] / plain['fid']:.2f} | "
                    f"{', '.join(others)} |")
    if not rows:
        return ""
    return "\n".join(["| weighting | models (blur / no-blur) | step | blur FID (KID x 1e3) | no-blur FID (KID x 1e3) | "
                      "ratio | ratio with other samplers |", "|---|---|---|---|---|---|---|", *rows])


def first_table(evals: dict[str, list[dict]]) -> str:
    """Every evaluation scored twice on the same draws (``--samples`` above the default): all of them, and the
    first (default count) of them: how much the smaller count biases FID and KID."""
    rows = []
    for run in RUNS:
        for e in evals.get(run.name, []):
            q, f = e["ema"], e["ema"].get("first")
            if f:
                rows.append(f"| {run.name} @ {e['step']} | {q['fid']:.2f} | {f['fid']:.2f} | {q['kid_x1e3']:.1f} | "
                            f"{f['kid_x1e3']:.1f} | {q['recall']:.3f} | {f['recall']:.3f} |")
    if not rows:
        return ""
    n, m = next((e["ema"]["samples"], e["ema"]["first"]["samples"]) for es in evals.values() for e in es
                if e["ema"].get("first"))
    head = (f"| run @ step | FID ({n}) | FID (first {m}) | KID x 1e3 ({n}) | KID x 1e3 (first {m}) | recall ({n}) | "
            f"recall (first {m}) |")
    return "\n".join([head, "|---|---|---|---|---|---|---|", *rows])


#: The radial bands (integer radius of the DCT frequency, 0: the DC) the report's band tables show; the JSON has all.
SHOWN_BANDS = (0, 1, 2, 3, 5, 8, 13, 20, 28, 38)


def band_table(evals: dict[str, list[dict]], key: str, budget: Budget) -> str:
    """Per-band diagnostics of the seed-0 models at the base budget, and of the headline models at their last
    evaluation: spectrum ratio or Wiener ratio, at the bands of :data:`SHOWN_BANDS`."""
    rows = []
    for run in RUNS:
        mine = evals.get(run.name, [])
        last = [mine[-1]] if mine and mine[-1]["step"] != budget.steps else []
        chosen = [e for e in mine if e["step"] == budget.steps] + last
        if run.seed:
            continue
        for r in chosen:
            name = f"{run.model} @ {r['step']}"
            if key == "spectrum":
                rows.append((name, "", r["ema"]["spectrum_ratio"]))
            else:
                rows.extend((name, t, values) for t, values in r["wiener_ratio"].items())
    if not rows:
        return ""
    shown = [b for b in SHOWN_BANDS if b < len(rows[0][2])]
    head = "| model @ step | " + ("t | " if key != "spectrum" else "") + " | ".join(f"r = {b}" for b in shown) + " |"
    lines = [head, "|" + "---|" * (len(shown) + (2 if key != "spectrum" else 1))]
    for model, t, values in rows:
        lines.append(f"| {model} | " + (f"{t} | " if key != "spectrum" else "")
                     + " | ".join(f"{values[b]:.2f}" for b in shown) + " |")
    return "\n".join(lines)


def figures(evals: dict[str, list[dict]], budget: Budget, out: Path, results: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run in RUNS:
        points = evals.get(run.name, [])
        if points:
            ax.plot([p["images_seen"] for p in points], [p["ema"]["fid"] for p in points], "o-" if run.seed == 0
                    else "s--", label=f"{run.model} (seed {run.seed})", ms=4)
    ax.set(xlabel="training images seen", ylabel="FID, Fashion-MNIST classifier features", yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / "training.png", dpi=120)
    plt.close(fig)
    panels = {"test images": to_model_range(load_fashion_mnist(train=False)[0][:64])}
    for run in RUNS:
        last = evals.get(run.name, [])
        if run.seed == 0 and last:
            grid = out / run.name / f"grid{last[-1]['step']}.pth"
            if not grid.exists():  # an evaluation restored from a committed results.json has no samples beside it
                print(f"{grid} is missing: {results / 'samples.png'} is left as it is", file=sys.stderr)
                return
            panels[f"{run.model} @ {last[-1]['step']}"] = torch.load(grid)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.7))
    for axis, (name, x) in zip(np.atleast_1d(axes), panels.items()):
        axis.imshow(make_grid(x.add(1).div(2).clamp(0, 1), nrow=8, padding=1)[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(name, fontsize=8)
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(results / "samples.png", dpi=130)
    plt.close(fig)


def report(budget: Budget, out: Path, results: Path, command: str, wall: float, device: torch.device) -> dict:
    """results.json, results.md and the figures from every evaluation in ``out`` (refused before any work if
    results.json lists evaluations that ``out`` lacks)."""
    evals = collect(out, budget)
    done = {run.name: [e["step"] for e in evals.get(run.name, [])] for run in RUNS}
    reports.refuse_losing(results / "results.json", done)
    ref = Reference.build(budget)
    base, first, nfe, weighted = floor(budget, ref), first_table(evals), nfe_table(out), weighting_table(evals, out)
    results.mkdir(parents=True, exist_ok=True)
    figures(evals, budget, out, results)
    machine = reports.machine(budget.jobs, device)
    sweeps = {run.name: [json.loads(p.read_text()) for p in sorted((out / run.name).glob("nfe*.json"))]
              for run in RUNS if (out / run.name).is_dir()}
    summary = {"command": command, "machine": machine, "wall_seconds_of_last_invocation": wall,
               "budget": {k: v for k, v in budget.__dict__.items()}, "floor": base, "evaluations": evals,
               "sweeps": {name: found for name, found in sweeps.items() if found}, "done": done}
    text = (f"Base budget: {budget.steps} steps of batch {budget.batch_size}; "
            f"sampler {'/'.join(map(str, budget.sampler))}; {budget.samples} samples against "
            f"{budget.test_images} test images, Fashion-MNIST classifier features.\n\n"
            + (f"Blur / no-blur FID per loss weighting (seed 0)\n\n{weighted}\n\n" if weighted else "")
            + f"Every model at the base budget (seed 0)\n\n{base_table(evals, budget, base)}\n\n"
            f"The headline models over training\n\n{trend_table(evals)}\n\n"
            + (f"The same draws scored in full and by their first few\n\n{first}\n\n" if first else "")
            + f"DCT power of the samples relative to the test images, per radial band\n\n"
            f"{band_table(evals, 'spectrum', budget)}\n\n"
            f"Denoising error per band relative to the Wiener estimator of the data's Gaussian fit (> 1: worse than "
            f"linear)\n\n{band_table(evals, 'wiener', budget)}\n\n"
            + (f"The swept models with other samplers ({budget.nfe_samples} samples each)\n\n{nfe}\n\n"
               if nfe else "")
            + f"Evaluations done: {json.dumps(done)}\n\nCommand: `{command}`; machine: {machine}\n")
    reports.write(results, "results", summary, text)
    return summary


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long run of the same code (tests it, not the numbers)")
    p.add_argument("--out", default="out/quality", help="runs: checkpoints, logs and evaluations")
    p.add_argument("--results", default="docs/assets/quality", help="tables and figures")
    p.add_argument("--runs", default=None, help="comma-separated subset of the run names "
                   f"({','.join(r.name for r in RUNS)})")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out (and start the missing ones)")
    p.add_argument("--phase", choices=["all", "train", "eval", "nfe", "report"], default="all",
                   help="all: train, evaluate and report; train: only train; eval: only evaluate the checkpoints "
                        "kept so far (beside a training), then report; nfe: the sampler sweep of the headline "
                        "models at their last kept checkpoint, then report; report: only write the results")
    p.add_argument("--jobs", type=int, default=None, help="runs at once, one process and thread each")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU mode trains with 10x the batch)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per evaluation (default: 1,000 on the CPU, 5,000 in the GPU mode); with more than "
                        "the default an evaluation also scores its first (default count) samples")
    p.add_argument("--last-only", action="store_true",
                   help="evaluate each run only after its last budget (the weighting study's runs and baselines)")
    p.add_argument("--sweep", default=None, help="the samplers of --phase nfe, as comma-separated method/grid/NFE "
                   "(default: the study's sweep, " + ",".join("/".join(map(str, s)) for s in NFE_SWEEP) + ")")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a worker process: one run
    args = p.parse_args(argv)
    device = torch.device(args.device)
    budget = TINY if args.tiny else GPU if device.type == "cuda" else FULL
    if args.samples is not None:
        if args.samples < 2:
            p.error(f"--samples must be at least 2 (FID needs a covariance), got {args.samples}")
        budget = replace(budget, samples=args.samples,
                         first=budget.samples if args.samples > budget.samples else None)
    if args.sweep:
        try:
            budget = replace(budget, nfe_sweep=tuple((m, g, int(n)) for m, g, n in
                                                     (s.split("/") for s in args.sweep.split(","))))
        except ValueError:
            p.error(f"--sweep takes comma-separated method/grid/NFE (e.g. ancestral/uniform/100), got {args.sweep!r}")
    out, results = Path(args.out), Path(args.results)
    runs = {r.name: r for r in RUNS}
    names = args.runs.split(",") if args.runs else list(runs)
    unknown = sorted(set(names) - set(runs))
    if unknown:
        p.error(f"unknown runs {unknown}; expected some of {list(runs)}")
    if args.phase == "nfe":
        names = [n for n in names if runs[n].model in SWEPT and runs[n].seed == 0]
    load_feature_net("fashion-mnist"), load_fashion_mnist(train=False)  # fail before any work
    torch.set_num_threads(1)  # parallelism comes from --jobs processes
    if args.only:
        return work(runs[args.only], budget, out, device, args.phase, args.last_only)
    if out.exists() and any(out.iterdir()) and not args.resume and args.phase != "report":
        p.error(f"{out} already holds runs; pass --resume to continue them (nothing is overwritten), "
                f"or choose another --out")
    start = time.perf_counter()
    if args.phase != "report":
        out.mkdir(parents=True, exist_ok=True)
        pending, running = list(names), []
        jobs = args.jobs or budget.jobs
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                cmd = [sys.executable, __file__, "--only", name, "--out", str(out), "--phase", args.phase,
                       "--device", args.device] + (["--tiny"] if args.tiny else []) \
                    + ([] if args.samples is None else ["--samples", str(args.samples)]) \
                    + (["--last-only"] if args.last_only else []) \
                    + ([] if args.sweep is None else ["--sweep", args.sweep])
                with open(out / f"{name}.log", "a") as log:  # the child keeps its own copy of the handle
                    running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
            time.sleep(0.5)
            for name, proc in list(running):
                if proc.poll() is not None:
                    running.remove((name, proc))
                    if proc.returncode:
                        sys.exit(f"error: run {name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    if args.phase == "train":
        return None
    return report(budget, out, results, reports.command("bench_quality.py", argv), time.perf_counter() - start, device)


if __name__ == "__main__":
    main()
