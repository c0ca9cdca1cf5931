"""Restore images: deblur Fashion-MNIST test images with a shipped prior, against the Wiener baseline.

    .venv/bin/python docs/tutorial_code/restore.py

Included in docs/how-to/restore.md; tests/test_restoration.py runs it.
"""
# --8<-- [start:restore]
import torch

import lincorrupt as lc
from lincorrupt import operators
from lincorrupt.data import load_fashion_mnist, to_model_range
from lincorrupt.restoration import wiener
from lincorrupt.weights import prior

model = lc.load(prior("fashion-mnist-blurring"))          # a DiffusionModel; its corruption knows data_var
x = to_model_range(load_fashion_mnist(train=False)[0][:8])  # (8, 1, 28, 28) in [-1, 1]

op = operators.Blur((1, 28, 28), sigma=2.0)                 # Gaussian blur, 2 px
noise_std = 0.05                                            # in the images' [-1, 1] scale
y = op.measure(x, noise_std, generator=torch.Generator().manual_seed(0))

restored = model.restore(y, op, noise_std=noise_std, method="pigdm", steps=20,
                         generator=torch.Generator().manual_seed(1))          # (8, 1, 28, 28)
# --8<-- [end:restore]

# --8<-- [start:compare]
def psnr(a, b):  # images in [-1, 1], compared in [0, 1]
    return (-10 * torch.log10(((a.clamp(-1, 1) - b) / 2).square().mean())).item()


c = model.corruption
mean = to_model_range(load_fashion_mnist(train=True)[0][:5000]).mean(0)     # the training data's mean
linear = wiener(y.double(), op, mean.double(), c.data_var, c.basis, noise_std).float()
print(f"PSNR  blurred {psnr(y, x):.1f} dB   Wiener {psnr(linear, x):.1f} dB   pigdm {psnr(restored, x):.1f} dB")
# --8<-- [end:compare]
