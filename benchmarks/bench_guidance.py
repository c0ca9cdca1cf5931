"""Class-conditional blurring and no-blur models on Fashion-MNIST, sampled with classifier-free guidance.

    .venv/bin/python benchmarks/bench_guidance.py --resume          # the study (about an hour on 2 cores)
    .venv/bin/python benchmarks/bench_guidance.py --tiny --out /tmp/g --results /tmp/g   # seconds: tests the code

The two headline models of the quality study (``bench_quality.py``, set up in ``fashion_study.py``: blurring
diffusion with sigma_B,max 17.5 and the same schedule without blur, both v-prediction), made
class-conditional: the same UNet with ``num_classes=10``, the same recipe, each training label replaced by the
null label -1 with probability 0.1 (Ho & Salimans 2022). Each trains to 3x the quality study's base budget
(1,500 steps of batch 32), evaluated at the base budget and at the end: at every guidance scale s of
:data:`SCALES`, 1,000 EMA samples (100 per class) with the quality study's sampler, their label accuracy (the
share the shipped Fashion-MNIST classifier assigns to the requested class), FID, KID, precision and recall
against the 10,000 test images in that classifier's features. Guidance trades diversity for fidelity to the
label: recall is the diversity.

Runs are resumable (``--resume`` continues each run folder, skips evaluations already written). Writes
to --results: guidance.md, guidance.json, guidance.png; --out holds the runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import fashion_study as study
import reports
import torch

from lincorrupt.data import TensorImages, load_fashion_mnist, to_model_range
from lincorrupt.metrics import extract_features, label_accuracy, load_feature_net
from lincorrupt.nn import UNet
from lincorrupt.train import Trainer
from lincorrupt.train.distributed import DistInfo

SCALES = (1.0, 2.0, 3.0, 5.0)
CLASSES = 10
MODELS = study.HEADLINE  # ("blur17.5-v", "noblur-v")


@dataclass(frozen=True)
class Budget:
    quality: study.Budget  # the quality study's budget: UNet, base steps, batch, samples, sampler
    thirds: tuple[int, ...] = (1, 3)  # evaluated at these multiples of the base budget
    scales: tuple[float, ...] = SCALES
    #: the last checkpoint also sampled with these (sampler, grid, NFE) at these scales: ancestral sampling,
    #: which the quality study found better than the solvers for trained blurring models
    also: tuple[tuple[str, str, int], ...] = (("ancestral", "uniform", 100),)
    also_scales: tuple[float, ...] = (3.0,)


FULL = Budget(study.FULL)
TINY = Budget(study.TINY, thirds=(1, 2), scales=(1.0, 3.0), also=(("ancestral", "uniform", 3),))


def train(name: str, budget: Budget, out: Path, device: torch.device) -> None:
    """Train the conditional ``name`` to each evaluated multiple of the base budget, keeping a copy at each."""
    q = budget.quality
    images, labels = load_fashion_mnist(train=True)
    images, labels = images[:q.train_images], labels[:q.train_images]
    folder = out / name
    for k in budget.thirds:
        target = k * q.steps
        kept = folder / f"step{target}.pt"
        if kept.exists():
            continue
        torch.manual_seed(0)  # the initial weights
        unet = UNet(image_size=study.SHAPE[1], in_channels=study.SHAPE[0], num_classes=CLASSES, **q.unet)
        corruption = study.MODELS[name].build(to_model_range(images))
        cfg = replace(study.config(study.Run(name), q, target, out), out_dir=str(folder / "run"), label_dropout=0.1)
        data = TensorImages(images, study.SHAPE, labels=labels)
        trainer = Trainer(unet, corruption, data, cfg, DistInfo(device=device))
        latest = folder / "run" / "checkpoint.pt"
        if latest.exists():
            trainer.resume(latest)
        if trainer.fit() != "done":
            sys.exit(f"{name}: training stopped before step {target}")
        shutil.copyfile(latest, kept.with_suffix(".tmp"))
        kept.with_suffix(".tmp").replace(kept)
        print(f"{name}: step {target} kept", flush=True)


def evaluate(name: str, step: int, budget: Budget, out: Path, ref, device: torch.device) -> dict:
    """Every guidance scale of ``name`` at ``step``: written to ``out/name/eval{step}.json`` and returned."""
    path = out / name / f"eval{step}.json"
    result = json.loads(path.read_text()) if path.exists() else {"model": name, "step": step, "scales": {}}
    q = budget.quality
    model = study.load(out / name / f"step{step}.pt", device, ref.train_x)
    labels = torch.arange(q.samples) % CLASSES
    last = step == max(budget.thirds) * q.steps
    todo = [(q.sampler, s) for s in budget.scales] + [(a, s) for a in budget.also for s in budget.also_scales if last]
    for sampler, s in todo:
        table, key = (result["scales"], str(s)) if sampler == q.sampler else \
            (result.setdefault("also", {}), f"{'/'.join(map(str, sampler))}@{s}")
        if key in table:
            continue
        start = time.perf_counter()
        x = study.draw(model, q.samples, sampler, seed=1, device=device, labels=labels, guidance=s)
        metrics = study.quality(ref.real, extract_features(ref.net, x), q.kid_subset)
        metrics["label_accuracy"] = label_accuracy(ref.net, x, labels)
        metrics["seconds"] = time.perf_counter() - start
        table[key] = metrics
        result.update(sampler="/".join(map(str, q.sampler)), commit=reports.commit(), samples=q.samples)
        if sampler == q.sampler and s == max(budget.scales):
            torch.save(x[:100].clone(), out / name / f"grid{step}.pth")  # ten of each class
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name} @ {step}, {'/'.join(map(str, sampler))}, s = {s}: accuracy {metrics['label_accuracy']:.3f}, "
              f"FID {metrics['fid']:.2f}, recall {metrics['recall']:.3f}", flush=True)
    return result


def work(name: str, budget: Budget, out: Path, device: torch.device) -> None:
    train(name, budget, out, device)
    ref = study.Reference.build(budget.quality)
    for k in budget.thirds:
        evaluate(name, k * budget.quality.steps, budget, out, ref, device)


def table(evals: list[dict]) -> str:
    rows = ["| model @ step | guidance s | label accuracy | FID | KID x 1e3 | precision | recall |",
            "|---|---|---|---|---|---|---|"]

    def row(what: str, s: str, m: dict) -> str:
        return (f"| {what} | {float(s):g} | {m['label_accuracy']:.3f} | {m['fid']:.2f} | "
                f"{m['kid_x1e3']:.2f} ± {m['kid_std_x1e3']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} |")
    for r in evals:
        for s, m in sorted(r["scales"].items(), key=lambda kv: float(kv[0])):
            rows.append(row(f"{r['model']} @ {r['step']}", s, m))
        for key, m in r.get("also", {}).items():
            sampler, s = key.split("@")
            rows.append(row(f"{r['model']} @ {r['step']}, sampled {sampler}", s, m))
    return "\n".join(rows)


def figure(evals: list[dict], out: Path, results: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid
    last = {r["model"]: r for r in evals}  # each model's latest step
    fig, axes = plt.subplots(1, 2 + len(last), figsize=(4.2 * (2 + len(last)) / 1.4, 3.2))
    for r in evals:
        scales = sorted(r["scales"], key=float)
        style = "o-" if r is last[r["model"]] else "s--"
        axes[0].plot([float(s) for s in scales], [r["scales"][s]["label_accuracy"] for s in scales], style,
                     label=f"{r['model']} @ {r['step']}", ms=4)
        axes[1].plot([r["scales"][s]["recall"] for s in scales], [r["scales"][s]["label_accuracy"] for s in scales],
                     style, ms=4)
    axes[0].set(xlabel="guidance scale s", ylabel="label accuracy")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="recall (diversity)", ylabel="label accuracy")
    for axis, (name, r) in zip(axes[2:], last.items()):
        grid = out / name / f"grid{r['step']}.pth"
        if grid.exists():
            x = torch.load(grid)
            order = torch.argsort(torch.arange(len(x)) % CLASSES, stable=True)  # sample i is of class i % 10
            grid = make_grid(x[order].add(1).div(2).clamp(0, 1), nrow=max(1, len(x) // CLASSES), padding=1)
            axis.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1)  # one class per row
        axis.set_title(f"{name} @ {r['step']}, s = {max(map(float, r['scales'])):g}", fontsize=8)
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(results / "guidance.png", dpi=120)
    plt.close(fig)


def report(budget: Budget, out: Path, results: Path, command: str) -> dict:
    evals = [json.loads(p.read_text()) for name in MODELS for p in sorted((out / name).glob("eval*.json"),
                                                                         key=lambda p: int(p.stem[4:]))]
    results.mkdir(parents=True, exist_ok=True)
    figure(evals, out, results)
    machine = reports.machine(len(MODELS))
    q = budget.quality
    text = (f"Class-conditional models, {q.steps} steps = the base budget of batch {q.batch_size}, label dropout 0.1; "
            f"{q.samples} samples per row ({q.samples // CLASSES} per class), sampler "
            f"{'/'.join(map(str, q.sampler))}, against {q.test_images} test images in the Fashion-MNIST "
            f"classifier's features\n\n{table(evals)}\n\nCommand: `{command}`; machine: {machine}\n")
    summary = {"command": command, "machine": machine, "evaluations": evals}
    reports.write(results, "guidance", summary, text)
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a seconds-long run of the same code (tests it, not numbers)")
    p.add_argument("--out", default="out/guidance", help="runs: checkpoints, logs and evaluations")
    p.add_argument("--results", default="docs/assets/guidance", help="table and figure")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a worker process: one model
    args = p.parse_args(argv)
    budget, device, out, results = TINY if args.tiny else FULL, torch.device(args.device), Path(args.out), \
        Path(args.results)
    load_feature_net("fashion-mnist"), load_fashion_mnist(train=False)  # fail before any work
    torch.set_num_threads(1)
    if args.only:
        work(args.only, budget, out, device)
        return {}
    if out.exists() and any(out.iterdir()) and not args.resume:
        p.error(f"{out} already holds runs; pass --resume to continue them, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in MODELS:
        cmd = [sys.executable, __file__, "--only", name, "--out", str(out), "--device", args.device] + \
            (["--tiny"] if args.tiny else [])
        with open(out / f"{name}.log", "a") as log:
            procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    for name, proc in procs:
        if proc.wait():
            sys.exit(f"error: {name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    return report(budget, out, results, reports.command("bench_guidance.py", argv))


if __name__ == "__main__":
    main()
