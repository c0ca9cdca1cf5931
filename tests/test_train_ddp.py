"""Two CPU processes (gloo, launched by torchrun) train exactly like one process on the same global batch,
also with gradient accumulation (micro-batches without the all-reduce but for the last)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent("""
    import json, sys, torch
    import lincorrupt as lc
    from lincorrupt.data import TensorImages
    from lincorrupt.nn import UNet
    from lincorrupt.train import TrainConfig, Trainer, init_distributed

    out, grad_accum = sys.argv[1], int(sys.argv[2])
    dist = init_distributed("cpu")
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               groups=4, dropout=0.0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=2, num_workers=0, log_every=1, sample_every=0,
                      ckpt_every=0, progress=False, out_dir=out, grad_accum=grad_accum)
    trainer = Trainer(net, lc.BlurringDiffusion((3, 8, 8)), TensorImages(images, (3, 8, 8)), cfg, dist)
    # the gradient of step 0 (DDP averages it over the ranks)
    trainer.loss(next(trainer.batches())).backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.fit()
    if dist.is_main:
        torch.save({"grad": grads, "model": trainer.model.state_dict()}, out + "/result.pt")
    torch.distributed.destroy_process_group() if dist.world_size > 1 else None
""")


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_process_ddp_equals_single_process(tmp_path, grad_accum):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env.update(PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    run([sys.executable, str(script), str(tmp_path / "one"), "1"], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "two"), str(grad_accum)], env)
    one, two = (torch.load(tmp_path / d / "result.pt", weights_only=True) for d in ("one", "two"))
    assert one["grad"].abs().max() > 0
    torch.testing.assert_close(two["grad"], one["grad"], rtol=1e-4, atol=1e-7)
    logs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    for a, b in zip(*logs):  # the global-batch loss and the averaged gradient's norm, step by step
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"]
    for name, p in one["model"].items():
        torch.testing.assert_close(two["model"][name], p, rtol=1e-4, atol=1e-5, msg=name)
