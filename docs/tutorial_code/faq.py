"""Troubleshooting: each error the FAQ page explains, raised on purpose, and its message printed.

    .venv/bin/python docs/tutorial_code/faq.py

Included in docs/faq.md; tests/test_docs_tutorial.py runs it and checks that the page quotes
today's messages.
"""
# --8<-- [start:ihdm-eps]
import torch

import lincorrupt as lc

c = lc.IHDM(shape=(1, 28, 28))
eps_model = lambda z_t, t: torch.zeros_like(z_t)      # stands in for a network trained with prediction="eps"
try:
    lc.sample(eps_model, c, 4, steps=20, prediction="eps")
except FloatingPointError as e:
    print(f"FloatingPointError: {e}")

x_model = lambda z_t, t: torch.zeros_like(z_t)        # a network trained with prediction="x"
samples = lc.sample(x_model, c, 4, steps=20, prediction="x")   # finite
# --8<-- [end:ihdm-eps]

# --8<-- [start:invalid]
import lincorrupt as lc
from lincorrupt.schedules import cosine_logsnr, vp_log_alpha_sigma


class Backwards(lc.DiagonalizableCorruption):
    """The cosine schedule run backwards: the SNR rises with t, so it is not a diffusion."""

    def __init__(self, shape):
        super().__init__(shape, lc.IdentityBasis())

    def _log_alpha_sigma(self, t):
        return vp_log_alpha_sigma(-cosine_logsnr(t.view(-1, 1, 1, 1)))


try:
    Backwards((1, 28, 28))
except lc.InvalidCorruptionError as e:
    print(f"InvalidCorruptionError: {e}")
# --8<-- [end:invalid]

# --8<-- [start:missing-files]
from lincorrupt.data import load_fashion_mnist
from lincorrupt.metrics import inception_weights_path

for find in (lambda: inception_weights_path("pt_inception.pth"), lambda: load_fashion_mnist(root="fashion-mnist")):
    try:
        find()
    except FileNotFoundError as e:
        print(f"FileNotFoundError: {e}")
# --8<-- [end:missing-files]
