"""Getting started: train a tiny model on Fashion-MNIST for a few steps and sample from it.

    .venv/bin/python docs/tutorial_code/first_sample.py      # writes first_samples.png

Included in docs/getting-started.md; tests/test_docs_tutorial.py runs it.
"""
# --8<-- [start:first]
import gzip

import numpy as np
import torch
import torchvision

import lincorrupt as lc
from lincorrupt.nn import UNet

raw = gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").read()
x = torch.tensor(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:2048]) / 127.5 - 1

c = lc.BlurringDiffusion(shape=(1, 28, 28))                      # the paper's defaults
model = UNet(image_size=28, in_channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(), dropout=0.0, groups=8)
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
for _ in range(50):
    loss = lc.diffusion_loss(model, c, x[torch.randint(len(x), (16,))], prediction="v")
    opt.zero_grad()
    loss.backward()
    opt.step()

samples = lc.sample(model.eval(), c, 16, steps=50, prediction="v")   # (16, 1, 28, 28), not clipped
torchvision.utils.save_image((samples + 1) / 2, "first_samples.png", nrow=8)   # clamps to [0, 1]
# --8<-- [end:first]
