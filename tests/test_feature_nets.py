"""The shipped feature networks: the files are the recorded ones, they classify, and their metrics see corruption."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lincorrupt.data import DEBIAN_DIR, load_fashion_mnist
from lincorrupt.metrics import FEATURE_NETS, extract_features, feature_nets, frechet_distance, kid, load_feature_net

RECORD = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "feature_nets.json").read_text())
needs_fashion_mnist = pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")


@pytest.mark.parametrize("name", sorted(RECORD))
def test_shipped_file_is_the_recorded_one(name):
    path = feature_nets.weights_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RECORD[name]["sha256"]
    assert RECORD[name]["test_accuracy"] >= {"fashion-mnist": 0.92, "cifar10": 0.80}[name]


@pytest.mark.parametrize("name", sorted(RECORD))
def test_loaded_net_shapes(name):
    net = load_feature_net(name)
    spec = FEATURE_NETS[name]
    x = torch.rand(3, *spec.shape) * 2 - 1
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net(x).shape == (3, 10) and net.features(x).shape == (3, net.feature_dim)
    assert extract_features(net, x, batch_size=2).shape == (3, net.feature_dim)


@pytest.fixture(scope="module")
def fashion():
    net = load_feature_net("fashion-mnist")
    test_x, test_y = load_fashion_mnist(train=False)
    train_x, _ = load_fashion_mnist(train=True)
    return net, test_x[:1000], test_y[:1000], train_x[:1000]


@needs_fashion_mnist
def test_fashion_mnist_net_classifies_test_images(fashion):
    net, x, y, _ = fashion
    with torch.no_grad():
        predicted = net(x.float() / 127.5 - 1).argmax(1)
    assert (predicted == y).float().mean() >= 0.90  # 1000 test images; the full test set is in the record


@needs_fashion_mnist
def test_label_accuracy_is_the_share_of_samples_classified_as_asked(fashion):
    from lincorrupt.metrics import label_accuracy
    net, x, y, _ = fashion
    with torch.no_grad():
        expected = (net(x.float() / 127.5 - 1).argmax(1) == y).double().mean().item()
    assert label_accuracy(net, x, y, batch_size=300) == pytest.approx(expected, abs=1e-12)  # uint8 and in batches
    assert label_accuracy(net, x.float() / 127.5 - 1, y.tolist()) == pytest.approx(expected, abs=1e-12)
    assert label_accuracy(net, x, (y + 1) % 10) < 0.1  # asked for another class, it rarely matches
    with pytest.raises(ValueError, match="-1"):
        label_accuracy(net, x[:2], torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        label_accuracy(net, x[:2], torch.tensor([0, 1, 2]))


@needs_fashion_mnist
def test_metrics_in_classifier_features_separate_real_from_corrupted(fashion):
    net, test_x, _, train_x = fashion
    real, other_real = extract_features(net, test_x), extract_features(net, train_x)
    x = train_x.float() / 127.5 - 1
    kernel = torch.exp(-torch.arange(-3, 4.0) ** 2 / 2)  # Gaussian blur, sigma 1 pixel, separable
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, 7), padding=(0, 3)), kernel.view(1, 1, 7, 1), padding=(3, 0))
    noised = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    fid_real = frechet_distance(real, other_real)
    kid_real, kid_std = kid(real, other_real, subsets=20, subset_size=500)
    for corrupted in (blurred, noised):
        feats = extract_features(net, corrupted)
        assert frechet_distance(real, feats) > 10 * fid_real
        assert kid(real, feats, subsets=20, subset_size=500)[0] > 10 * max(kid_real, kid_std)


def test_bad_images_are_refused():
    net = feature_nets.Classifier((1, 28, 28))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 28, 28\), expected \(N, 1, 28, 28\)"):
        net.features(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="expected float in \\[-1, 1\\]"):
        net.features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"span \[0, 255\], expected \[-1, 1\]"):
        net.features(torch.full((2, 1, 28, 28), 255.0).index_fill_(0, torch.tensor([0]), 0.0))
    nan = torch.zeros(2, 1, 28, 28)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="expected \\[-1, 1\\]"):
        net.features(nan)


def test_unknown_or_missing_net(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="expected one of \\['cifar10', 'fashion-mnist'\\]"):
        load_feature_net("mnist")
    monkeypatch.setattr(feature_nets, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_feature_net.py --data fashion-mnist"):
        load_feature_net("fashion-mnist")
    (tmp_path / FEATURE_NETS["fashion-mnist"].file).write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot load"):
        load_feature_net("fashion-mnist")


def test_extract_features_accepts_uint8_as_model_range():
    net = feature_nets.Classifier((1, 28, 28)).eval()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    np.testing.assert_array_equal(extract_features(net, x), extract_features(net, x.float() / 127.5 - 1))
