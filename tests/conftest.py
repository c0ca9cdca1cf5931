"""Shared test set-up: the Hypothesis profiles and the fixtures (a ``corruption`` for every entry
of ``helpers.corruptions.CORRUPTIONS``, random Inception weights). Shared code lives in ``helpers``."""

import os

import pytest
import torch
from hypothesis import settings

from helpers.corruptions import CORRUPTIONS

# Deterministic in CI (CI=true), random examples on a developer's machine.
settings.register_profile("ci", derandomize=True, max_examples=20, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=20, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(1)  # pytest-xdist runs one worker per core


@pytest.fixture(params=sorted(CORRUPTIONS))
def corruption(request):
    return CORRUPTIONS[request.param]()


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """A state dict of pytorch-fid's FID Inception architecture with random weights (no download)."""
    from pytorch_fid import inception as pf
    torch.manual_seed(0)
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c = pf.FIDInceptionA(192, pool_features=32), pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c, net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160), pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    from lincorrupt.metrics import WEIGHTS_FILE
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path
