"""Training-step throughput on CPU and the share of step time spent outside the network.

    .venv/bin/python benchmarks/bench_train.py                 # tiny and default (DDPM 35.7M) UNet
    .venv/bin/python benchmarks/bench_train.py --threads 1 --repeats 5

For each UNet, in a fresh subprocess (so peak memory is its own), one run interleaves:

- ``step``: a full Trainer.train_step with data fetching: next batch from the DataLoader, the
  step-seeded draws, corruption (DCT, diffuse), the loss, backward, clipping, Adam, EMA;
- ``net``: the network's forward and backward alone on ready-made z_t, t;
- ``optim``: gradient clipping and the Adam step alone;
- ``ema``, ``data``, ``diffuse``: the EMA update, fetching a batch, and corruption.diffuse alone.

``outside = (step - net - optim) / step`` is the corruption + loss + EMA + data overhead the
issue bounds by 3% for the default UNet. All numbers are medians over interleaved repeats, so
they share the machine's load; compare the ratios, not the absolute times.
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


def measure(name: str, repeats: int) -> dict:
    import lincorrupt as lc
    from lincorrupt.data import TensorImages
    from lincorrupt.nn import UNet
    from lincorrupt.train import TrainConfig, Trainer

    cfg, shape = CONFIGS[name], (3, 32, 32)
    torch.manual_seed(0)
    model = UNet(**cfg["unet"])
    images = torch.randint(0, 256, (cfg["batch"] * 4, *shape), dtype=torch.uint8)
    trainer = Trainer(model, lc.BlurringDiffusion(shape), TensorImages(images, shape),
                      TrainConfig(batch_size=cfg["batch"], num_workers=0, progress=False, out_dir="/tmp/bench_train"))
    batches = trainer.batches()
    x = torch.rand(cfg["batch"], *shape) * 2 - 1
    t = torch.rand(cfg["batch"])
    z, eps = trainer.corruption.diffuse(x, t)

    def net():
        (model(z, t) - eps).square().mean().backward()

    def optim():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()

    tasks = {"step": lambda: trainer.train_step(next(batches)), "net": net, "optim": optim,
             "ema": lambda: trainer.ema.update(model), "data": lambda: next(batches),
             "diffuse": lambda: trainer.corruption.diffuse(x, t)}
    for fn in tasks.values():  # warm-up
        fn()
    trainer.optimizer.zero_grad()
    times = {k: [] for k in tasks}
    for _ in range(repeats):
        for k, fn in tasks.items():
            times[k].append(timed(fn))
            if k == "optim":
                trainer.optimizer.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"name": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "batch": cfg["batch"],
            "images_per_s": cfg["batch"] / med["step"], **{f"{k}_s": v for k, v in med.items()},
            "outside": (med["step"] - med["net"] - med["optim"]) / med["step"],
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
           f"{'ema s':>7} {'data s':>7} {'diffuse s':>9} {'outside':>8} {'peak RSS':>9}"
    print(head)
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--only", name, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=root,
                             env={**__import__("os").environ, "PYTHONPATH": str(root)})
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:8} {r['params_M']:7.2f}M {r['batch']:5d} {r['images_per_s']:7.1f} {r['step_s']:7.3f} "
              f"{r['net_s']:7.3f} {r['optim_s']:7.3f} {r['ema_s']:7.3f} {r['data_s']:7.4f} {r['diffuse_s']:9.4f} "
              f"{100 * r['outside']:7.2f}% {r['peak_rss_MB']:7.0f}MB")
    print("outside = (step - net - optim) / step: corruption, loss, EMA, data and draws (target < 3% for the default UNet)")


if __name__ == "__main__":
    main()
