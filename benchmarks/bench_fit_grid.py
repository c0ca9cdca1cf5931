"""Fitted time grids against ancestral sampling and the registered grids, on the exact Gaussian oracle.

For each corruption, a full-covariance Gaussian fitted to 28x28 Fashion-MNIST (``lc.GaussianData.fit``, the
60,000 training images on the [-1, 1] scale) gives the exact KL, in nats, of what a sampler generates with the
exact denoiser (``GaussianData.sample_kl``). Per corruption and NFE this measures:

- ``lc.fit_grid`` (dpm++2m by default) with its default guard rails, and the time it took;
- the best registered grid (uniform, logsnr, info, data) for the same sampler and NFE, as registered and with
  its last evaluation at ``earliest_time`` (``last=``);
- ancestral sampling on the uniform grid at 1,000 steps (the target for 20 NFE) and 250 steps (for 10 NFE).

Corruptions: blurring diffusion (sigma_B,max = 20 x 28/32 = 17.5), the same schedule without blur, DDPM with
the linear schedule, IHDM (sigma_B,max = 24 x 28/32 = 21, its Gaussian prior moment-matched to the data).

    python benchmarks/bench_fit_grid.py --corruption blurring --nfe 20
    python benchmarks/bench_fit_grid.py --corruption noblur ddpm ihdm --nfe 20 10 --part grids

``--size 14`` average-pools the images to 14x14 (a quarter of the dimensions, about 64 times cheaper per KL).
Each corruption and NFE writes docs/assets/fit_grid/<corruption>[-<size>px]-<nfe>.json (the command, the machine, the
commit, every KL, the fitted times and the seconds taken), so a long run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from reports import command, commit, machine

import lincorrupt as lc
from lincorrupt.data import load_fashion_mnist
from lincorrupt.sampling.grids import earliest_time

OUT = Path(__file__).resolve().parents[1] / "docs" / "assets" / "fit_grid"
#: The targets: ancestral steps whose KL the fitted grid should reach at each NFE.
TARGETS = {20: 1000, 10: 250}


def corruption(name: str, data: lc.GaussianData) -> lc.DiagonalizableCorruption:
    """The corruptions of the study at the data's size H (sigma_B,max scaled by H / 32 from the CIFAR-10
    settings)."""
    shape = data.shape
    if name == "ihdm":
        c = lc.IHDM(shape, sigma_blur_max=24.0 * shape[-1] / 32)
        mu, C = data.in_basis(c)
        c.prior = lc.GaussianPrior(mu.reshape(shape), C.diagonal().reshape(shape))
        return c
    return {"blurring": lambda: lc.BlurringDiffusion(shape, sigma_blur_max=20.0 * shape[-1] / 32),
            "noblur": lambda: lc.BlurringDiffusion(shape, sigma_blur_max=0.0),
            "ddpm": lambda: lc.DDPM(shape, schedule="linear")}[name]()


def ancestral_target(record: dict, c: lc.DiagonalizableCorruption, data: lc.GaussianData, nfe: int) -> None:
    """Add the KL of ancestral sampling with the target's steps for ``nfe`` (uniform grid) and its seconds."""
    steps = TARGETS[nfe]
    start = time.perf_counter()
    record[f"ancestral_{steps}"] = float(data.sample_kl(c, "ancestral", steps, grid="uniform"))
    record["ancestral_seconds"] = time.perf_counter() - start
    print(f"{record['corruption']}: ancestral {steps} steps: {record[f'ancestral_{steps}']:.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corruption", nargs="+", default=["blurring"], choices=["blurring", "noblur", "ddpm", "ihdm"])
    parser.add_argument("--nfe", nargs="+", type=int, default=[20])
    parser.add_argument("--method", default="dpm++2m")
    parser.add_argument("--max-iter", type=int, default=50, help="L-BFGS iterations on the full problem")
    parser.add_argument("--warm-iter", type=int, default=200, help="L-BFGS iterations on the diagonal problem")
    parser.add_argument("--part", choices=["all", "grids", "ancestral"], default="all",
                        help="grids: the registered and fitted grids only; ancestral: the 1,000 / 250-step targets "
                             "only (two processes can share the work; each writes its own file)")
    parser.add_argument("--grids", nargs="+", default=["uniform", "logsnr", "info", "data"], choices=sorted(lc.GRIDS),
                        help="the registered grids to score beside the fitted one")
    parser.add_argument("--size", type=int, default=28, choices=[28, 14, 7],
                        help="image size: 28, or Fashion-MNIST average-pooled to 14x14 or 7x7 (D / 4, D / 16)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.nn.functional.avg_pool2d(load_fashion_mnist(train=True)[0].double() / 127.5 - 1, 28 // args.size)
    data = lc.GaussianData.fit(x)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.size == 28 else f"-{args.size}px"
    for name in args.corruption:
        c = corruption(name, data).fit_data_statistics(x)  # for grid="data"
        for nfe in args.nfe:
            record = {"command": command("bench_fit_grid.py", argv), "machine": machine(1), "commit": commit(),
                      "corruption": name, "nfe": nfe, "method": args.method,
                      "data": f"Fashion-MNIST train, 60,000, {args.size}x{args.size}"}
            if args.part == "ancestral":
                ancestral_target(record, c, data, nfe)
                path = args.out / f"{name}{suffix}-ancestral-{TARGETS[nfe]}.json"
                path.write_text(json.dumps(record, indent=1) + "\n")
                continue
            kl = {}
            for grid in args.grids:
                kl[grid] = float(data.sample_kl(c, args.method, nfe, grid=grid))
                times = lc.sampling.grid_times(c, grid, nfe, dtype=torch.float64, last=earliest_time(c))
                kl[f"{grid}, last={earliest_time(c):g}"] = float(data.sample_kl(c, args.method, grid=times))
            record["registered"] = kl
            start = time.perf_counter()
            warm = lc.fit_grid(c, data, nfe, args.method, max_iter=0, warm_iter=args.warm_iter)
            record["warm_seconds"] = time.perf_counter() - start
            record["warm_start"] = float(data.sample_kl(c, args.method, grid=warm))
            print(f"{name} {nfe} NFE: warm start {record['warm_start']:.3f} in {record['warm_seconds']:.0f} s",
                  flush=True)
            fitted = lc.fit_grid(c, data, nfe, args.method, max_iter=args.max_iter, warm_iter=0, init=warm)
            record["fit_seconds"] = time.perf_counter() - start
            record["fitted"] = float(data.sample_kl(c, args.method, grid=fitted))
            record["times"] = fitted.tolist()
            print(f"{name} {nfe} NFE {args.method}: fitted {record['fitted']:.3f} nats in "
                  f"{record['fit_seconds']:.0f} s; best registered {min(kl.values()):.3f} ({min(kl, key=kl.get)})",
                  flush=True)
            if args.part == "all" and nfe in TARGETS:
                ancestral_target(record, c, data, nfe)
            (args.out / f"{name}{suffix}-{nfe}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
