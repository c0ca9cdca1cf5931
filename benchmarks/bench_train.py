"""Training-step throughput on CPU and the share of step time spent outside the network.

    .venv/bin/python benchmarks/bench_train.py                 # tiny and default (DDPM 35.7M) UNet
    .venv/bin/python benchmarks/bench_train.py --threads 1 --repeats 5

For each UNet, in a fresh subprocess (so peak memory is its own), one run interleaves:

- ``step``: a full Trainer.train_step: next batch from the DataLoader, the step-seeded draws,
  corruption (DCT, diffuse), network, loss, backward, clipping, Adam, EMA;
- ``net``: the network's forward and backward alone on ready-made z_t, t;
- ``optim``: gradient clipping and the Adam step;
- ``data``: fetching a batch; ``corruption+loss``: Trainer.loss forward and backward with a
  network of negligible cost (draws, flips, diffuse, DCTs, loss); ``ema``: the EMA update.
  These are cheap, so each is timed 20 times per repeat.

``outside = (data + corruption+loss + ema) / (that + net + optim)`` is the share of a step spent
outside the network and the optimiser; ``residual = (step - net - optim) / step`` is the same share
by subtraction, noisier on a shared machine. Medians over interleaved repeats share the
machine's load; compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIGS = {
    "tiny": dict(unet=dict(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(16,)), batch=32),
    "default": dict(unet=dict(), batch=16),
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Stub(torch.nn.Module):
    """A network of negligible cost (``a * z_t``): timing Trainer.loss with it isolates everything but the network."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(()))

    def forward(self, z_t, t):
        return self.a * z_t


def measure(name: str, repeats: int) -> dict:
    import lincorrupt as lc
    from lincorrupt.data import TensorImages
    from lincorrupt.nn import UNet
    from lincorrupt.train import TrainConfig, Trainer

    cfg, shape = CONFIGS[name], (3, 32, 32)
    torch.manual_seed(0)
    model = UNet(**cfg["unet"])
    images = TensorImages(torch.randint(0, 256, (cfg["batch"] * 4, *shape), dtype=torch.uint8), shape)
    tcfg = TrainConfig(batch_size=cfg["batch"], num_workers=0, progress=False, out_dir="/tmp/bench_train")
    trainer = Trainer(model, lc.BlurringDiffusion(shape), images, tcfg)
    stub = Trainer(Stub(), lc.BlurringDiffusion(shape), images, tcfg)
    batches = trainer.batches()
    xb = next(batches)
    x = torch.rand(cfg["batch"], *shape) * 2 - 1
    t = torch.rand(cfg["batch"])
    z, eps = trainer.corruption.diffuse(x, t)

    def net():
        (model(z, t) - eps).square().mean().backward()

    def optim():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    # large: interleaved, `repeats` times; small (cheap, so timed 20x as often for precision)
    large = {"step": lambda: trainer.train_step(next(batches)), "net": net, "optim": optim}
    small = {"data": lambda: next(batches), "corruption_loss": lambda: stub.loss(xb).backward(),
             "ema": lambda: trainer.ema.update(model)}
    for fn in [*large.values(), *small.values()]:  # warm-up
        fn()
    times = {k: [] for k in [*large, *small]}
    for _ in range(repeats):
        for k, fn in large.items():
            times[k].append(timed(fn))
        for _ in range(20):
            for k, fn in small.items():
                times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    outside = med["data"] + med["corruption_loss"] + med["ema"]
    return {"name": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "batch": cfg["batch"],
            "images_per_s": cfg["batch"] / med["step"], **{f"{k}_s": v for k, v in med.items()},
            "outside": outside / (outside + med["net"] + med["optim"]),
            "residual": (med["step"] - med["net"] - med["optim"]) / med["step"],
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # the subprocess's job
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(measure(args.only, args.repeats)))
        return
    root = Path(__file__).resolve().parents[1]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, BlurringDiffusion 3x32x32, Adam, EMA")
    head = f"{'UNet':8} {'params':>8} {'batch':>5} {'img/s':>7} {'step s':>7} {'net s':>7} {'optim s':>7} " \
           f"{'data s':>7} {'corr+loss s':>11} {'ema s':>7} {'outside':>8} {'residual':>8} {'peak RSS':>9}"
    print(head)
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--only", name, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=root,
                             env={**__import__("os").environ, "PYTHONPATH": str(root)})
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:8} {r['params_M']:7.2f}M {r['batch']:5d} {r['images_per_s']:7.1f} {r['step_s']:7.3f} "
              f"{r['net_s']:7.3f} {r['optim_s']:7.3f} {r['data_s']:7.4f} {r['corruption_loss_s']:11.4f} "
              f"{r['ema_s']:7.4f} {100 * r['outside']:7.2f}% {100 * r['residual']:7.2f}% {r['peak_rss_MB']:7.0f}MB")
    print("outside  = (data + corruption+loss + ema) / (that + net + optim): the share outside the network "
          "(target < 3% for the default UNet)")
    print("residual = (step - net - optim) / step: the same share by subtraction (exposed to load noise)")


if __name__ == "__main__":
    main()
