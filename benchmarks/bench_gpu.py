"""Training and sampling throughput on CUDA, and a 2-step DDP check with NCCL.

    .venv/bin/python benchmarks/bench_gpu.py                 # everything, a few minutes on one GPU
    .venv/bin/python benchmarks/bench_gpu.py --steps 10      # fewer timed steps
    .venv/bin/python benchmarks/bench_gpu.py --profile       # where a bf16 training step spends its time
    .venv/bin/python benchmarks/bench_gpu.py --tiny          # a seconds-long smoke run of every part (CPU too)
    .venv/bin/python benchmarks/bench_gpu.py --compile-modes max-autotune   # other torch.compile modes

Prints, for the default 35.7M-parameter DDPM UNet on 3x32x32 blurring diffusion:
  1. training images/s and peak GPU memory of a full Trainer step (corruption, loss, backward,
     clipping, fused Adam, EMA) at batch 128 for fp32, bf16 autocast, bf16 + channels_last and
     bf16 + channels_last + torch.compile of the network in each ``--compile-modes`` mode, with the
     compile time (first step minus an eager step); and diffusers' UNet2DModel at the same
     configuration through the same Trainer and through diffusers' usual training loop
     (DDPMScheduler.add_noise, MSE, AdamW, EMAModel), with the img/s ratio to ours;
  2. sampling images/s of the EMA network under bf16 autocast for ancestral and dpm++2m, eager and
     replayed from a CUDA graph (lc.CUDAGraphModel), and diffusers' DDPMPipeline with
     DPMSolverMultistepScheduler at the same number of network evaluations;
  3. a 2-step run under ``torchrun`` on every GPU present with the NCCL backend, checking that
     the ranks end with identical weights (one GPU: one rank, NCCL's all-reduce only).
Without CUDA it says so and exits with status 0, except with ``--tiny`` (a tiny UNet on 3x8x8, on the CPU
when there is no GPU; no compile nor DDP there).
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
#: name -> (precision, channels_last); the compiled variants are added per --compile-modes
TRAINING = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16 + channels_last": ("bf16", True)}
SAMPLERS = ("ancestral", "dpm++2m")
#: the DDPM CIFAR-10 UNet (35.7M) in our constructor and in diffusers' (google/ddpm-cifar10-32's config)
UNET = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, groups=32)
TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, groups=4)
CFG = {"shape": SHAPE, "unet": UNET, "device": None}


def sync() -> None:
    if CFG["device"].type == "cuda":
        torch.cuda.synchronize()


def diffusers_unet(unet: dict):
    from diffusers import UNet2DModel
    widths = tuple(unet["ch"] * m for m in unet["ch_mult"])
    size = CFG["shape"][-1]
    attn = [size // 2 ** i in unet["attn_resolutions"] for i in range(len(widths))]
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=unet["num_res_blocks"],
                       block_out_channels=widths, norm_num_groups=unet["groups"], dropout=unet["dropout"],
                       attention_head_dim=None,
                       down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                       up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)))


class DiffusersNet(torch.nn.Module):
    """UNet2DModel as ``net(z_t, t)``, t in [0, 1] scaled to diffusers' timesteps 0..1000."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, z_t, t):
        return self.unet(z_t, t * 1000.0).sample


def make_trainer(batch: int, precision: str, channels_last: bool, compile: bool, out_dir: str, steps: int = 10**6,
                 dist=None, net=None) -> Trainer:
    torch.manual_seed(0)
    shape = CFG["shape"]
    images = torch.randint(0, 256, (max(batch, 256), *shape), dtype=torch.uint8)
    cfg = TrainConfig(steps=steps, batch_size=batch, precision=precision, channels_last=channels_last,
                      compile=compile, num_workers=0, sample_every=0, ckpt_every=0, progress=False,
                      out_dir=out_dir)
    dist = dist or DistInfo(device=CFG["device"])
    net = net or UNet(image_size=shape[-1], **CFG["unet"])
    return Trainer(net, lc.BlurringDiffusion(shape), TensorImages(images, shape), cfg, dist)


def timed(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls, the device's queue drained before and after."""
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if CFG["device"].type == "cuda" else float("nan")


def reset_peak() -> None:
    if CFG["device"].type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_training(precision: str, channels_last: bool, batch: int, steps: int, warmup: int, mode: str | None = None,
                   net=None) -> tuple[float, float, float]:
    """(images/s, peak GiB, compile seconds) of full Trainer steps at ``batch``; ``mode``: torch.compile's."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(batch, precision, channels_last, False, out, net=net)
        x = torch.randint(0, 256, (batch, *CFG["shape"]), dtype=torch.uint8, device=CFG["device"])
        eager = timed(functools.partial(trainer.train_step, x), 1) if mode else 0.0
        if mode:
            trainer.net = torch.compile(trainer.net, mode=mode)
        first = timed(functools.partial(trainer.train_step, x), 1)  # compiles here
        for _ in range(warmup - 1):
            trainer.train_step(x)
        reset_peak()
        seconds = timed(functools.partial(trainer.train_step, x), steps)
        peak = peak_gib()
    del trainer
    reset_peak()
    return batch / seconds, peak, max(first - eager, 0.0) if mode else 0.0


def bench_diffusers_loop(batch: int, steps: int, warmup: int) -> float:
    """Images/s of diffusers' usual training step (examples/unconditional_image_generation): add_noise
    of DDPMScheduler, bf16 autocast, MSE on eps, backward, clip 1.0, AdamW, EMAModel, channels_last."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    device = CFG["device"]
    torch.manual_seed(0)
    model = diffusers_unet(CFG["unet"]).to(device, memory_format=torch.channels_last).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    x_uint8 = torch.randint(0, 256, (batch, *CFG["shape"]), dtype=torch.uint8, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step():
        clean = x_uint8.float() / 127.5 - 1
        noise = torch.randn(clean.shape, device=device)
        k = torch.randint(0, 1000, (batch,), device=device)
        noisy = scheduler.add_noise(clean, noise, k)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            pred = model(noisy, k).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(model.parameters())

    for _ in range(warmup):
        step()
    return batch / timed(step, steps)


def bench_sampling(method: str, n: int, steps: int, graphed: bool) -> float:
    """Images/s of ``lc.sample`` with the EMA network under bf16 autocast (eager or CUDA-graphed)."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(n, "bf16", True, False, out)
        model = trainer.sampling_model().eval()
        model = lc.CUDAGraphModel(model) if graphed else model
        run = lambda: lc.sample(model, trainer.corruption, n, steps=steps, method=method,  # noqa: E731
                                device=CFG["device"])
        run()
        return n / timed(run, 1)


def bench_diffusers_sampling(n: int, steps: int) -> float:
    """Images/s of diffusers' DDPMPipeline with DPMSolverMultistepScheduler (its 2M solver), bf16 weights."""
    from diffusers import DDPMPipeline, DPMSolverMultistepScheduler
    torch.manual_seed(0)
    dtype = torch.bfloat16 if CFG["device"].type == "cuda" else torch.float32
    unet = diffusers_unet(CFG["unet"]).to(CFG["device"], dtype=dtype, memory_format=torch.channels_last).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DPMSolverMultistepScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(batch_size=n, num_inference_steps=steps, output_type="np")  # noqa: E731
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
    parser.add_argument("--compile-modes", default="default", help="comma-separated torch.compile modes ('' none)")
    parser.add_argument("--only", choices=("training", "diffusers", "sampling", "ddp"), action="append",
                        help="run only these parts (repeatable); default all")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on 3x8x8, 2 steps: a smoke run (CPU too)")
    parser.add_argument("--profile", action="store_true", help="profile bf16 training steps instead of timing")
    parser.add_argument("--ddp-worker", metavar="OUT_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("bench_gpu.py: CUDA is not available on this machine; nothing measured. Run it where "
              "torch.cuda.is_available() is True.")
        return 0
    CFG["device"] = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if args.tiny:
        CFG.update(shape=(3, 8, 8), unet=TINY)
        args.batch, args.steps, args.warmup, args.samples, args.sample_steps = 4, 2, 1, 4, 3
    if args.ddp_worker:
        ddp_worker(args.ddp_worker)
        return 0
    parts = set(args.only or ("training", "diffusers", "sampling", "ddp"))
    modes = [m for m in args.compile_modes.split(",") if m] if cuda else []  # inductor on 2 CPU cores: too slow
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    params = sum(p.numel() for p in UNet(image_size=CFG["shape"][-1], **CFG["unet"]).parameters()) / 1e6
    where = (f"{torch.cuda.get_device_properties(0).name}, {torch.cuda.device_count()} GPU(s), CUDA "
             f"{torch.version.cuda}") if cuda else "CPU"
    print(f"device: {where}; torch {torch.__version__}; UNet {params:.2f}M, BlurringDiffusion {CFG['shape']}")
    if args.profile:
        profile_training(args.batch, args.steps)
        return 0
    ours = None
    if "training" in parts:
        print(f"\n| training, batch {args.batch} | img/s | peak GiB | compile s |\n|---|---|---|---|")
        runs = [(name, *cfg, None) for name, cfg in TRAINING.items()]
        runs += [(f"bf16 + channels_last + compile ({mode})", "bf16", True, mode) for mode in modes]
        for name, precision, channels_last, mode in runs:
            ips, peak, compile_s = bench_training(precision, channels_last, args.batch, args.steps, args.warmup, mode)
            ours = ips if name == "bf16 + channels_last" else ours
            print(f"| {name} | {ips:.0f} | {peak:.2f} | {compile_s:.0f} |", flush=True)
    if "diffusers" in parts:
        from diffusers import __version__ as version
        net = DiffusersNet(diffusers_unet(CFG["unet"]))
        print(f"\n| diffusers {version} UNet2DModel ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M), "
              f"batch {args.batch}, bf16 + channels_last | img/s | ours / it |\n|---|---|---|")
        same, _, _ = bench_training("bf16", True, args.batch, args.steps, args.warmup, net=net)
        usual = bench_diffusers_loop(args.batch, args.steps, args.warmup)
        for name, ips in (("through our Trainer", same), ("through diffusers' usual loop", usual)):
            ratio = f"{ours / ips:.2f}" if ours else "-"
            print(f"| {name} | {ips:.0f} | {ratio} |", flush=True)
    if "sampling" in parts:
        print(f"\n| sampling, {args.samples} images, {args.sample_steps} network evaluations, bf16 | img/s |"
              "\n|---|---|")
        for method in SAMPLERS:
            for graphed in (False, True):
                ips = bench_sampling(method, args.samples, args.sample_steps, graphed)
                print(f"| {method}{' + CUDA graph' if graphed else ''} | {ips:.1f} |", flush=True)
        print(f"| diffusers DDPMPipeline + DPMSolverMultistepScheduler | "
              f"{bench_diffusers_sampling(args.samples, args.sample_steps):.1f} |", flush=True)
    if "ddp" in parts and cuda:
        print()
        run_ddp_check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
