"""Training and sampling throughput on CUDA, and a 2-step DDP check with NCCL.

    .venv/bin/python benchmarks/bench_gpu.py                 # everything, a few minutes on one GPU
    .venv/bin/python benchmarks/bench_gpu.py --steps 10      # fewer timed steps
    .venv/bin/python benchmarks/bench_gpu.py --profile       # where a bf16 training step spends its time

Prints, for the default 35.7M-parameter DDPM UNet on 3x32x32 blurring diffusion:
  1. training images/s and peak GPU memory of a full Trainer step (corruption, loss, backward,
     clipping, fused Adam, EMA) at batch 128 for fp32, bf16 autocast, bf16 + channels_last and
     bf16 + channels_last + torch.compile of the network;
  2. sampling images/s of the EMA network under bf16 autocast for ancestral and dpm++2m;
  3. a 2-step run under ``torchrun`` on every GPU present with the NCCL backend, checking that
     the ranks end with identical weights (one GPU: one rank, NCCL's all-reduce only).
Without CUDA it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time

import torch

import lincorrupt as lc
from lincorrupt.data import TensorImages
from lincorrupt.nn import UNet
from lincorrupt.train import TrainConfig, Trainer
from lincorrupt.train.distributed import DistInfo

SHAPE = (3, 32, 32)
#: name -> (precision, channels_last, compile)
TRAINING = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False),
            "bf16 + channels_last": ("bf16", True, False), "bf16 + channels_last + compile": ("bf16", True, True)}
SAMPLERS = ("ancestral", "dpm++2m")


def make_trainer(batch: int, precision: str, channels_last: bool, compile: bool, out_dir: str, steps: int = 10**6,
                 dist=None) -> Trainer:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (max(batch, 256), *SHAPE), dtype=torch.uint8)
    cfg = TrainConfig(steps=steps, batch_size=batch, precision=precision, channels_last=channels_last,
                      compile=compile, num_workers=0, sample_every=0, ckpt_every=0, progress=False,
                      out_dir=out_dir)
    dist = dist or DistInfo(device=torch.device("cuda", torch.cuda.current_device()))
    return Trainer(UNet(), lc.BlurringDiffusion(SHAPE), TensorImages(images, SHAPE), cfg, dist)


def timed(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls, the GPU's queue drained before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def bench_training(name: str, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, peak GiB) of full Trainer steps at ``batch``."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(batch, *TRAINING[name], out)
        x = torch.randint(0, 256, (batch, *SHAPE), dtype=torch.uint8, device="cuda")
        for _ in range(warmup):  # also compiles
            trainer.train_step(x)
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(functools.partial(trainer.train_step, x), steps)
        peak = torch.cuda.max_memory_allocated() / 2**30
    del trainer
    torch.cuda.empty_cache()
    return batch / seconds, peak


def bench_sampling(method: str, n: int, steps: int) -> float:
    """Images/s of ``lc.sample`` with the EMA network under bf16 autocast."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(n, "bf16", True, False, out)
        model = trainer.sampling_model().eval()
        run = lambda: lc.sample(model, trainer.corruption, n, steps=steps, method=method, device="cuda")  # noqa: E731
        run()
        return n / timed(run, 1)


def profile_training(batch: int, steps: int) -> None:
    """torch.profiler over ``steps`` bf16 + channels_last Trainer steps: the GPU's busy share of
    the wall time (kernel time / wall time; far below 1 means the host cannot feed the GPU) and the
    operators that take the most GPU and host time."""
    from torch.profiler import ProfilerActivity, profile
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(batch, "bf16", True, False, out)
        x = torch.randint(0, 256, (batch, *SHAPE), dtype=torch.uint8, device="cuda")
        for _ in range(3):
            trainer.train_step(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                trainer.train_step(x)
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(f"profile: {steps} steps of batch {batch} (bf16, channels_last) in {wall * 1e3:.0f} ms (with the "
          f"profiler's overhead); GPU kernels {kernel_us / 1e3:.0f} ms = {kernel_us / 1e6 / wall:.0%} of the wall "
          f"time; {launches / steps:.0f} kernel launches per step")
    print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


def ddp_worker(out_dir: str) -> None:
    """Two steps on every rank; rank 0 checks that all ranks hold the same weights."""
    import torch.distributed as dist

    from lincorrupt.train import init_distributed
    info = init_distributed("cuda")
    if not dist.is_initialized():  # one GPU: a one-rank NCCL group still exercises the backend
        dist.init_process_group("nccl", device_id=info.device)
    trainer = make_trainer(32 * info.world_size, "bf16", True, False, out_dir, steps=2, dist=info)
    assert trainer.fit() == "done"
    checksum = torch.stack([p.detach().double().sum() for p in trainer.model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if info.is_main:
        same = all(torch.equal(g, gathered[0]) for g in gathered)
        print(f"DDP check: {'ok' if same else 'FAILED'}, {dist.get_world_size()} rank(s), backend "
              f"{dist.get_backend()}, weights {'identical' if same else 'differ'} after 2 steps")
    dist.destroy_process_group()


def run_ddp_check() -> None:
    ranks = torch.cuda.device_count()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               str(ranks), __file__, "--ddp-worker", out], env=env, capture_output=True, text=True)
    print(proc.stdout.strip() or f"DDP check: FAILED (exit status {proc.returncode})\n{proc.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (torch.compile compiles here)")
    parser.add_argument("--samples", type=int, default=256, help="images per sampling run")
    parser.add_argument("--sample-steps", type=int, default=50, help="network evaluations per sampling run")
    parser.add_argument("--profile", action="store_true", help="profile bf16 training steps instead of timing")
    parser.add_argument("--ddp-worker", metavar="OUT_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu.py: CUDA is not available on this machine; nothing measured. Run it where "
              "torch.cuda.is_available() is True.")
        return 0
    if args.ddp_worker:
        ddp_worker(args.ddp_worker)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s); "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}; UNet 35.7M, BlurringDiffusion {SHAPE}")
    if args.profile:
        profile_training(args.batch, args.steps)
        return 0
    print(f"\n| training, batch {args.batch} | img/s | peak GiB |\n|---|---|---|")
    for name in TRAINING:
        ips, peak = bench_training(name, args.batch, args.steps, args.warmup)
        print(f"| {name} | {ips:.0f} | {peak:.2f} |", flush=True)
    print(f"\n| sampling, {args.samples} images, {args.sample_steps} steps, bf16 | img/s |\n|---|---|")
    for method in SAMPLERS:
        print(f"| {method} | {bench_sampling(method, args.samples, args.sample_steps):.1f} |", flush=True)
    print()
    run_ddp_check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
