"""Train from Python: the Trainer loop on a folder of your own 32x32 RGB images.

    .venv/bin/python docs/tutorial_code/train_python.py my-images      # writes runs/my-images/

Included in docs/train-python.md; tests/test_docs_tutorial.py runs it on a tiny folder of images.
"""
# --8<-- [start:train]
import torch
import torchvision

import lincorrupt as lc
from lincorrupt.data import load_images, to_unit_range
from lincorrupt.nn import UNet
from lincorrupt.train import TrainConfig, Trainer, init_distributed


def train(root="my-images", out_dir="runs/my-images", steps=2000):
    shape = (3, 32, 32)                                    # every image must be 32x32 RGB
    data = load_images(root, shape)                        # uint8 (C, H, W) tensors, nothing resized
    c = lc.BlurringDiffusion(shape=shape)                  # the paper's sigma_blur_max=20, min_scale=1e-3
    model = UNet(image_size=32, in_channels=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                 attn_resolutions=(8,), dropout=0.0, groups=8)                 # 1.1M parameters
    config = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=200, ema_decay=0.999,
                         prediction="v", sample_every=0, ckpt_every=500, out_dir=out_dir)
    trainer = Trainer(model, c, data, config, dist=init_distributed())       # CUDA when available
    trainer.fit()                        # resumable: trainer.resume(out_dir) before fit() continues a run
    model = lc.load(out_dir, map_location=trainer.device)      # network, corruption, prediction; EMA weights
    g = torch.Generator(trainer.device).manual_seed(0)
    samples = model.sample(64, steps=20, method="dpm++3m", grid="data", generator=g)  # c.fast_sampling
    torchvision.utils.save_image(to_unit_range(samples.float().cpu()), f"{out_dir}/samples.png", nrow=8)
    return trainer, samples


if __name__ == "__main__":
    import sys

    train(*sys.argv[1:2])
# --8<-- [end:train]
