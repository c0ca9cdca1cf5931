"""Shared test set-up: the Hypothesis profiles and the registry of corruptions.

Every generic property test loops over ``CORRUPTIONS``: a new corruption gets all of them
by adding one line here.
"""

import os

import pytest
import torch
from hypothesis import settings

import lincorrupt as lc

# Deterministic in CI (CI=true), random examples on a developer's machine.
settings.register_profile("ci", derandomize=True, max_examples=20, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=20, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(1)  # pytest-xdist runs one worker per core

# Small shapes with H != W so that transposed height and width cannot pass unnoticed.
SHAPE = (2, 4, 6)
CORRUPTIONS = {
    "ddpm-linear": lambda: lc.DDPM(SHAPE, schedule="linear"),
    "ddpm-cosine": lambda: lc.DDPM(SHAPE, schedule="cosine"),
    "ihdm": lambda: lc.IHDM(SHAPE),
    "blurring": lambda: lc.BlurringDiffusion(SHAPE),
    "blurring-weak": lambda: lc.BlurringDiffusion(SHAPE, sigma_blur_max=2.0, min_scale=0.1),
}


@pytest.fixture(params=sorted(CORRUPTIONS))
def corruption(request):
    return CORRUPTIONS[request.param]()
