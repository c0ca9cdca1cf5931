"""How long does building a corruption take, relative to using it? Side by side, one run.

    .venv/bin/python benchmarks/bench_corruption.py                 # 3x256x256, best of 3
    .venv/bin/python benchmarks/bench_corruption.py --size 32 --repeats 5

Prints, per built-in corruption and the README's user-defined ``SpectralNoise``, the time of
constructing it (which runs the Markov validity check on 1001 times) divided by the time of
one ``c.diffuse`` of a batch of 16 images of the same size. The target is at most 30x.
Both are timed round-robin (best of ``--repeats``), so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import lincorrupt as lc
from lincorrupt.schedules import cosine_logsnr, vp_log_alpha_sigma

TARGET = 30.0


class SpectralNoise(lc.DiagonalizableCorruption):
    """The README's user-defined corruption: VP noise whose log-SNR is lower for higher DCT frequencies."""

    def __init__(self, shape, shift=4.0):
        basis = lc.DCTBasis(shape[-2], shape[-1])
        super().__init__(shape, basis)
        self.register_buffer("offset", shift * basis.frequencies_squared.sqrt() / math.pi)

    def _log_alpha_sigma(self, t):
        return vp_log_alpha_sigma(cosine_logsnr(t.view(-1, 1, 1, 1)) - self.offset.to(t.dtype))


BUILDERS = {
    "DDPM(linear)": lambda shape: lc.DDPM(shape, schedule="linear"),
    "DDPM(cosine)": lambda shape: lc.DDPM(shape, schedule="cosine"),
    "IHDM": lambda shape: lc.IHDM(shape),
    "BlurringDiffusion": lambda shape: lc.BlurringDiffusion(shape),
    "SpectralNoise (README)": lambda shape: SpectralNoise(shape),
}


def best_of(fns: dict, repeats: int) -> dict:
    """Best wall time of each callable, timed round-robin after one warm-up call."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image height = width")
    parser.add_argument("--batch", type=int, default=16, help="batch of the diffuse call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (3, args.size, args.size)
    x = torch.rand(args.batch, *shape) * 2 - 1
    t = torch.rand(args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); shape {shape}, diffuse batch {args.batch}")
    print(f"{'corruption':<24} {'build ms':>10} {'diffuse ms':>11} {'ratio':>8}  (target <= {TARGET:g}x)")
    worst = 0.0
    for name, build in BUILDERS.items():
        c = build(shape)
        times = best_of({"build": lambda build=build: build(shape), "diffuse": lambda c=c: c.diffuse(x, t)},
                        args.repeats)
        ratio = times["build"] / times["diffuse"]
        worst = max(worst, ratio)
        print(f"{name:<24} {1e3 * times['build']:>10.1f} {1e3 * times['diffuse']:>11.1f} {ratio:>7.1f}x")
    print(f"largest ratio {worst:.1f}x: {'within' if worst <= TARGET else 'ABOVE'} the target of {TARGET:g}x")


if __name__ == "__main__":
    main()
