"""Soft Diffusion's likelihood bound with the exact denoiser: how much of a trained model's bound is the network's.

    .venv/bin/python benchmarks/bench_soft_bound.py                 # 200 test images (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_soft_bound.py --images 2000

The corruption is the Results page's ``soft-x``: ``SoftDiffusion.fit`` on 10,000 Fashion-MNIST
training images (32 W2 levels in [0.01, 23] px, noise 0.01 to 0.1) with the empirical prior of
1,000 of them, as benchmarks/bench_quality.py builds it. The denoiser is the exact E[x | z_t] of a
Gaussian (1e-4 ridge) fitted to the training images (bench_samplers.py's whole-image oracle), so
the bound's diffusion term is what a perfect network for that Gaussian would pay; its prior term
(KL of q(z_1 | x) from the prior, which no network changes) is printed on its own. Test images:
the first ``--images`` of the test split, 8-bit, scaled to [-1, 1]; ``lc.elbo`` continuous time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: the machines are shared

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import lincorrupt as lc  # noqa: E402
from lincorrupt.data import load_fashion_mnist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import _soft  # noqa: E402
from bench_samplers import FullOracle  # noqa: E402


def per_datum_model(oracle: FullOracle):
    """The oracle's x-prediction for a batch whose data have different times (one gain per datum)."""
    def model(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([oracle.model(z[i:i + 1], t[i:i + 1]) for i in range(len(z))])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="test images (default 200)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"# command: {' '.join(sys.argv)}")
    train = load_fashion_mnist(train=True)[0].to(torch.float64) / 127.5 - 1
    test = load_fashion_mnist(train=False)[0][:args.images].to(torch.float64) / 127.5 - 1
    c = _soft(train)
    oracle = FullOracle(c, train[:10_000])
    bound = lc.elbo(per_datum_model(oracle), c, test, prediction="x", generator=torch.Generator().manual_seed(0))
    to_bpd = 1 / (math.log(2) * test[0].numel())
    for name in ("prior", "diffusion", "reconstruction", "total"):
        v = getattr(bound, name)
        print(f"{name:15} {v.mean().item():10.2f} nats per image ({v.mean().item() * to_bpd:.3f} bits/dim), "
              f"standard error {v.std().item() / math.sqrt(len(v)):.2f}")
    print(f"({len(test)} test images, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
