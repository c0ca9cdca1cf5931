"""Restoration study: which prior and which method restore Fashion-MNIST best, against linear baselines.

    .venv/bin/python benchmarks/bench_inverse.py --out out/inverse            # the study (resumes what is there)
    .venv/bin/python benchmarks/bench_inverse.py --tiny --out /tmp/inv        # seconds: tests the code
    .venv/bin/python benchmarks/bench_inverse.py --export-priors out/priors  # ship the study's priors (float16 EMA)
    .venv/bin/python benchmarks/bench_inverse.py --images 50 --mean-of 2 --nfe 20 --dps-nfe 100 --out out/inv50
    .venv/bin/python benchmarks/bench_inverse.py --figure docs/assets/restore/restorations.png

Priors: the shipped ones (:mod:`lincorrupt.weights`: blurring diffusion and the same schedule without blur,
trained by ``benchmarks/bench_quality.py``'s recipe). Tasks on the test images in [-1, 1]: deblurring
(Gaussian, sigma 2 px), 2x and 4x super-resolution (average pooling), inpainting of the centre 14x14 box,
inpainting of 70 % random pixels; each with measurement noise 0.05 and without (then y is quantised to 8 bits,
as a stored image is, and every method, the Wiener baseline included, takes the quantisation noise
2 / 255 / sqrt(12) as its sigma_y). Methods: "pigdm", "ddnm" and "dps" (``lc.restore``, ancestral sampler,
uniform grid) at each NFE of ``--nfe``, DPS also at ``--dps-nfe``; baselines: the pseudo-inverse, the
Wiener (linear MMSE) restoration of the training data's Gaussian fit ("wiener", full covariance), and the same
with the covariance diagonal in the prior's basis ("wiener-diag", the Gaussian that "pigdm" assumes).

Metrics per cell: PSNR of one restoration and of the mean of ``--mean-of`` restorations (images in [0, 1]),
measurement consistency ``|A x - y| / (sigma_y sqrt(m))``, FID and KID of single restorations against the
test images in the shipped Fashion-MNIST classifier's features (not Inception), and label accuracy (the
classifier's label of the restoration against the true label).

Resumable: each cell (prior, task, noise, method, NFE) is one line of ``<out>/cells.jsonl``, written when it
is done; a rerun skips the cells that are there. ``<out>/results.md`` is the table of all cells.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import lincorrupt as lc
from lincorrupt import operators as ops
from lincorrupt.data import load_fashion_mnist, to_model_range
from lincorrupt.metrics import extract_features, frechet_distance, kid, load_feature_net
from lincorrupt.restoration import check_measurement, wiener

SHAPE = (1, 28, 28)
QUANTISATION_STD = 2 / 255 / math.sqrt(12)


@dataclass(frozen=True)
class Budget:
    """What sets the study's size."""

    test_images: int       # images restored per cell
    fit_images: int        # training images for the Wiener baseline's Gaussian fit
    mean_of: int           # restorations averaged for the "mean of k" PSNR
    nfe: tuple[int, ...]   # network evaluations of every method
    dps_nfe: tuple[int, ...]  # and of DPS besides
    batch: int             # restorations per call


FULL = Budget(test_images=1000, fit_images=10000, mean_of=8, nfe=(20, 50, 100), dps_nfe=(1000,), batch=250)
TINY = Budget(test_images=6, fit_images=64, mean_of=2, nfe=(2,), dps_nfe=(3,), batch=6)


def box_mask(size: int = 14) -> torch.Tensor:
    """True where observed: all but the centre ``size`` x ``size`` box."""
    mask = torch.ones(SHAPE, dtype=torch.bool)
    start = (SHAPE[1] - size) // 2
    mask[:, start:start + size, start:start + size] = False
    return mask


def random_mask(missing: float = 0.7, seed: int = 0) -> torch.Tensor:
    """True where observed: a fixed draw keeping ``1 - missing`` of the pixels."""
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed)) >= missing


#: The tasks: name -> the operator.
TASKS = {
    "deblur2": lambda: ops.Blur(SHAPE, 2.0),
    "sr2": lambda: ops.Downsample(SHAPE, 2),
    "sr4": lambda: ops.Downsample(SHAPE, 4),
    "box14": lambda: ops.Mask(box_mask()),
    "random70": lambda: ops.Mask(random_mask()),
}
#: The measurement noise levels: 0.05, and 0 with y quantised to 8 bits.
NOISES = (0.05, 0.0)


def measure(op: ops.Operator, x: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, float]:
    """``y`` and the sigma_y the methods assume: noisy y, or y quantised to 8 bits (sigma_y its rounding's std)."""
    if noise > 0:
        return op.measure(x, noise, generator=torch.Generator().manual_seed(seed)), noise
    y = op(x)
    observed = op(torch.ones_like(x)) != 0  # a mask's unobserved zeros stay 0, as the operator defines them
    return torch.where(observed, torch.round((y + 1) * 127.5) / 127.5 - 1, 0.0), QUANTISATION_STD


def psnr(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image, for images in [-1, 1] compared in [0, 1] (peak 1)."""
    mse = ((x.clamp(-1, 1) - truth) / 2).square().flatten(1).mean(1)
    return -10 * torch.log10(mse)


def consistency(op: ops.Operator, x: torch.Tensor, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
    """``|A x - y| / (sigma_y sqrt(m))`` per image: about 1 for a restoration consistent with y's noise."""
    return (op(x) - y).flatten(1).norm(dim=1) / (sigma_y * math.sqrt(op.num_measurements))


# ----------------------------------------------------------------------------- priors
def tiny_priors() -> dict[str, lc.DiffusionModel]:
    """Untrained tiny UNets on the study's two corruptions (for --tiny: tests the code, not the science)."""
    from lincorrupt.nn import UNet
    fit = to_model_range(load_fashion_mnist(train=True)[0][:64])
    priors = {}
    for name, blur in (("blurring", 17.5), ("ddpm", 0.0)):
        torch.manual_seed(0)
        net = UNet(image_size=28, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, groups=4)
        c = lc.BlurringDiffusion(SHAPE, sigma_blur_max=blur).fit_data_statistics(fit)
        priors[name] = lc.DiffusionModel(net, c, "v").eval()
    return priors


def shipped_priors() -> dict[str, lc.DiffusionModel]:
    from lincorrupt.weights import prior
    return {"blurring": lc.load(prior("fashion-mnist-blurring")).eval(),
            "ddpm": lc.load(prior("fashion-mnist-ddpm")).eval()}


def export_priors(folder: Path) -> None:
    """The quality study's headline models (seed 0, 1,500 steps) as the shipped float16 EMA weights."""
    weights = Path(lc.__file__).with_name("weights")
    for name, run in (("fashion-mnist-blurring", "blur17.5-v-s0"), ("fashion-mnist-ddpm", "noblur-v-s0")):
        model = lc.load(folder / run / "step1500.pt")
        config = {k: v for k, v in model.info.get("config", {}).items() if k != "out_dir"}
        model.info = {"step": model.info.get("step"), "config": config,
                      "made_by": f"benchmarks/bench_quality.py, run {run}; float16 EMA weights"}
        model.network.half()
        path = model.save(weights / f"{name}.pt")
        print(f"{folder / run} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


# ----------------------------------------------------------------------------- the cells
def restorations(model, op, y, sigma_y, method: str, nfe: int, k: int, seed: int, batch: int) -> torch.Tensor:
    """``k`` restorations of every row of ``y``: (k, N, *SHAPE); one generator seeded per draw."""
    out = []
    for draw in range(k):
        g = torch.Generator().manual_seed(seed + draw)
        out.append(torch.cat([model.restore(y[i:i + batch], op, noise_std=sigma_y, method=method, steps=nfe,
                                            generator=g) for i in range(0, len(y), batch)]))
    return torch.stack(out)


class GaussianFit:
    """Mean and full covariance (float64) of training images, flattened: the linear baselines' data model."""

    def __init__(self, x: torch.Tensor):
        flat = x.double().flatten(1)
        self.mean, self.cov = flat.mean(0), torch.cov(flat.T)

    def wiener(self, op: ops.Operator, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
        """The linear MMSE restoration ``m + S A^T (A S A^T + sigma_y^2 I)^+ (y - A m)`` with the full covariance S
        (a mask's unobserved zeros carry no noise: its noise covariance is sigma_y^2 diag(mask))."""
        a = op.matrix()
        noise = sigma_y**2 * torch.diag(op(torch.ones(1, *SHAPE, dtype=torch.float64)).flatten() != 0).double()
        gain = self.cov @ a.T @ torch.linalg.pinv(a @ self.cov @ a.T + noise, hermitian=True)
        residual = y.double().flatten(1) - self.mean @ a.T
        return (self.mean + residual @ gain.T).reshape(-1, *SHAPE).float()


def baseline(name: str, model, op, y, sigma_y, fit: GaussianFit) -> torch.Tensor:
    """(1, N, *SHAPE): "pinv" the pseudo-inverse; "wiener" the linear MMSE restoration of the training data's
    Gaussian fit with its full covariance; "wiener-diag" the same with the covariance diagonal in the prior's
    basis (``corruption.data_var``: the Gaussian the "pigdm" method assumes)."""
    if name == "pinv":
        return op.pinv(y)[None]
    if name == "wiener":
        return fit.wiener(op, y, sigma_y)[None]
    c = model.corruption
    return wiener(y.double(), op, fit.mean.reshape(SHAPE), c.data_var, c.basis, sigma_y).float()[None]


def score(x: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, op, y, sigma_y, net, truth_feats) -> dict:
    """Metrics of restorations ``x`` (k, N, *SHAPE) of ``truth`` (N, *SHAPE)."""
    one = x[0]
    feats = extract_features(net, one.clamp(-1, 1))
    with torch.no_grad():
        predicted = net(one.clamp(-1, 1)).argmax(1)
    kid_mean, _ = kid(truth_feats, feats, subsets=20, subset_size=min(len(one), 500))
    return {"psnr": psnr(one, truth).mean().item(), "psnr_mean": psnr(x.mean(0), truth).mean().item(),
            "consistency": consistency(op, one, y, sigma_y).mean().item(),
            "fid": frechet_distance(truth_feats, feats), "kid": kid_mean,
            "accuracy": (predicted == labels).double().mean().item()}


def cells(budget: Budget, priors) -> list[tuple[str, str, float, str, int]]:
    """Every (prior, task, noise, method, NFE) of the study; noisy measurements first, both priors side by side."""
    out = []
    for noise in NOISES:
        for task in TASKS:
            for prior in priors:
                out += [(prior, task, noise, b, 0) for b in ("pinv", "wiener", "wiener-diag")]
                out += [(prior, task, noise, m, n) for m in ("pigdm", "ddnm", "dps") for n in budget.nfe]
                out += [(prior, task, noise, "dps", n) for n in budget.dps_nfe]
    return out


def run(out: Path, budget: Budget, priors: dict[str, lc.DiffusionModel]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cells.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    keys = {(r["prior"], r["task"], r["noise"], r["method"], r["nfe"]) for r in done}
    images, labels = load_fashion_mnist(train=False)
    truth, labels = to_model_range(images[:budget.test_images]), labels[:budget.test_images]
    fit = GaussianFit(to_model_range(load_fashion_mnist(train=True)[0][:budget.fit_images]))
    net = load_feature_net("fashion-mnist")
    truth_feats = extract_features(net, truth)
    for key in cells(budget, priors):
        if key in keys:
            continue
        prior, task, noise, method, nfe = key
        model, op = priors[prior], TASKS[task]()
        y, sigma_y = measure(op, truth, noise, seed=1)
        check_measurement(model.corruption, y, op, sigma_y)
        start = time.perf_counter()
        if nfe == 0:
            x = baseline(method, model, op, y, sigma_y, fit)
        else:
            k = budget.mean_of if method != "dps" or nfe <= max(budget.nfe) else 1
            x = restorations(model, op, y, sigma_y, method, nfe, k, seed=100, batch=budget.batch)
        row = {"prior": prior, "task": task, "noise": noise, "method": method, "nfe": nfe, "draws": len(x),
               "images": len(truth), **score(x, truth, labels, op, y, sigma_y, net, truth_feats),
               "seconds": round(time.perf_counter() - start, 1)}
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.md").write_text(table(done))
    (out / "summary.md").write_text(summary(done))
    return done


def table(rows: list[dict]) -> str:
    head = ("| prior | task | noise | method | NFE | PSNR (1) | PSNR (mean of k) | k | consistency | FID | KID | "
            "accuracy |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['prior']} | {r['task']} | {r['noise'] or '8-bit'} | {r['method']} | {r['nfe'] or '-'} | "
        f"{r['psnr']:.2f} | {r['psnr_mean']:.2f} | {r['draws']} | {r['consistency']:.2f} | {r['fid']:.2f} | "
        f"{r['kid']:.4f} | {r['accuracy']:.3f} |\n" for r in rows)


def figure(path: Path, model: lc.DiffusionModel, nfe: int = 20, n: int = 4) -> None:
    """A grid per task (noise 0.05): columns truth, measurement (its pseudo-inverse), Wiener, pigdm, ddnm, dps;
    one row per test image."""
    from torchvision.utils import save_image
    truth = to_model_range(load_fashion_mnist(train=False)[0][:n])
    fit = GaussianFit(to_model_range(load_fashion_mnist(train=True)[0][:FULL.fit_images]))
    rows = []
    for task in ("deblur2", "sr4", "box14", "random70"):
        op = TASKS[task]()
        y, sigma_y = measure(op, truth, 0.05, seed=1)
        columns = [truth, op.pinv(y), baseline("wiener", model, op, y, sigma_y, fit)[0]]
        columns += [restorations(model, op, y, sigma_y, method, nfe, 1, seed=100, batch=n)[0]
                    for method in ("pigdm", "ddnm", "dps")]
        rows += [c[i] for i in range(n) for c in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((torch.stack(rows).clamp(-1, 1) + 1) / 2, path, nrow=6, pad_value=1.0)
    print(f"-> {path}")


def summary(rows: list[dict]) -> str:
    """Per noise level, one row per (task, prior): "PSNR of one restoration / PSNR of the mean / FID" per method."""
    methods = sorted({(r["method"], r["nfe"]) for r in rows}, key=lambda m: (METHOD_ORDER.index(m[0]), m[1]))
    by_key = {(r["noise"], r["task"], r["prior"], r["method"], r["nfe"]): r for r in rows}
    out = []
    for noise in NOISES:
        out.append(f"\nnoise_std {noise}\n" if noise else "\nnoiseless, y quantised to 8 bits\n")
        out.append("| task | prior | " + " | ".join(f"{m} {n}" if n else m for m, n in methods) + " |")
        out.append("|---|---|" + "---|" * len(methods))
        for task in TASKS:
            for prior in dict.fromkeys(r["prior"] for r in rows):
                cells = [by_key.get((noise, task, prior, m, n)) for m, n in methods]
                if any(cells):
                    out.append(f"| {task} | {prior} | " + " | ".join(
                        f"{c['psnr']:.1f} / {c['psnr_mean']:.1f} / {c['fid']:.1f}" if c else "" for c in cells) + " |")
    return "\n".join(out) + "\n"


METHOD_ORDER = ["pinv", "wiener", "wiener-diag", "pigdm", "ddnm", "dps"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/inverse"), help="where cells.jsonl and results.md go")
    p.add_argument("--tiny", action="store_true", help="tiny random priors, a few images: tests the code")
    p.add_argument("--images", type=int, default=None, help="test images per cell (default 1,000)")
    p.add_argument("--mean-of", type=int, default=None, help="restorations averaged per image (default 8)")
    p.add_argument("--nfe", type=int, nargs="+", default=None, help="NFE of every method (default 20 50 100)")
    p.add_argument("--dps-nfe", type=int, nargs="*", default=None, help="DPS's further NFE (default 1000)")
    p.add_argument("--figure", type=Path, default=None, metavar="PNG",
                   help="draw the picture grid of the blurring prior's restorations (noise 0.05), then stop")
    p.add_argument("--export-priors", type=Path, default=None, metavar="PRIORS",
                   help="write the shipped float16 priors from bench_quality.py's --out folder, then stop")
    args = p.parse_args(argv)
    with torch.no_grad():  # DPS turns gradients on inside its steps
        study(args)


def study(args) -> None:
    if args.export_priors is not None:
        return export_priors(args.export_priors)
    if args.figure is not None:
        return figure(args.figure, (tiny_priors() if args.tiny else shipped_priors())["blurring"])
    budget = TINY if args.tiny else FULL
    changes = {"test_images": args.images, "mean_of": args.mean_of, "nfe": args.nfe and tuple(args.nfe),
               "dps_nfe": None if args.dps_nfe is None else tuple(args.dps_nfe)}
    budget = replace(budget, **{k: v for k, v in changes.items() if v is not None})
    run(args.out, budget, tiny_priors() if args.tiny else shipped_priors())


if __name__ == "__main__":
    main()
