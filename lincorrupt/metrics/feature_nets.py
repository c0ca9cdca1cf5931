"""Small image classifiers shipped with lincorrupt, whose penultimate features the quality metrics use.

Inception weights cannot always be had, and on 28x28 greyscale data Inception is a poor judge
anyway; many papers measure MNIST-like data in the features of a small classifier trained on the
data itself. :func:`load_feature_net` returns such a network for Fashion-MNIST (1x28x28) or
CIFAR-10 (3x32x32), trained by ``benchmarks/train_feature_net.py`` (which records each file's
sha256 and test accuracy in ``benchmarks/feature_nets.json``).

Name a number measured with it for what it is, e.g. "FID in Fashion-MNIST classifier
features": it is comparable across runs of this project, never with a paper's Inception FID.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lincorrupt.data.images import to_model_range
from lincorrupt.validation import check_labels, is_validating

__all__ = ["Classifier", "FEATURE_NETS", "FeatureNetSpec", "load_feature_net", "extract_features", "label_accuracy",
           "weights_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Images may exceed [-1, 1] by this much (rounding) before the range check refuses them.
RANGE_TOLERANCE = 1e-3


class Classifier(nn.Module):
    """A VGG-style CNN: per width, two (3x3 conv, BatchNorm, ReLU) then 2x2 max-pooling; global average pool; linear.

    Args:
        shape: the (C, H, W) of the images it accepts.
        widths: channels of each stage; the last one is the feature size D.
        num_classes: size of the logits.

    Shapes:
        x: (N, C, H, W) in [-1, 1]; ``features(x)``: (N, widths[-1]); ``forward(x)``: (N, num_classes).
    """

    def __init__(self, shape: tuple[int, int, int], widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10):
        super().__init__()
        self.shape = tuple(shape)
        layers, c = [], shape[0]
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes)
        self.feature_dim = c

    def check_images(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is a finite (N, *shape) float batch in [-1, 1]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"feature net: images have shape {tuple(x.shape)}, "
                             f"expected (N, {', '.join(map(str, self.shape))})")
        if not x.is_floating_point():
            raise ValueError(f"feature net: images are {x.dtype}, expected float in [-1, 1] (map uint8 with "
                             f"lincorrupt.data.to_model_range)")
        lo, hi = float(x.min()), float(x.max())  # also False for NaN: reported below
        if not (lo >= -1 - RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
            raise ValueError(f"feature net: image values span [{lo:.4g}, {hi:.4g}], expected [-1, 1] "
                             f"(clip samples, e.g. x.clamp(-1, 1), or quantise them as saved images are)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, D): the globally average-pooled last stage."""
        self.check_images(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class FeatureNetSpec:
    """What a shipped network accepts and where its weights are."""

    shape: tuple[int, int, int]
    widths: tuple[int, ...]
    file: str


FEATURE_NETS: dict[str, FeatureNetSpec] = {
    "fashion-mnist": FeatureNetSpec((1, 28, 28), (32, 64, 128), "fashion_mnist_classifier.pth"),
    "cifar10": FeatureNetSpec((3, 32, 32), (32, 64, 128), "cifar10_classifier.pth"),
}


def _spec(name: str) -> FeatureNetSpec:
    if name not in FEATURE_NETS:
        raise ValueError(f"feature net {name!r}: expected one of {sorted(FEATURE_NETS)}")
    return FEATURE_NETS[name]


def weights_path(name: str) -> Path:
    """The packaged weights file of feature net ``name``."""
    return WEIGHTS_DIR / _spec(name).file


def load_feature_net(name: str, device: str | torch.device = "cpu") -> Classifier:
    """The shipped classifier ``name`` ("fashion-mnist" or "cifar10"), in eval mode, without gradients.

    Raises:
        ValueError: unknown name, or a weights file that is not this network's state dict.
        FileNotFoundError: the weights file is missing (``benchmarks/train_feature_net.py`` makes it).
    """
    spec, path = _spec(name), weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"feature net {name!r}: weights file {path} is missing; it ships with lincorrupt "
                                f"and is made by benchmarks/train_feature_net.py --data {name}")
    net = Classifier(spec.shape, spec.widths)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise ValueError(f"feature net {name!r}: cannot load {path}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    net.requires_grad_(False)
    return net.eval().to(device)


@torch.no_grad()
def extract_features(net: Classifier, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """``net.features`` of ``images`` in batches, as a float64 (N, D) array.

    Args:
        images: (N, C, H, W) uint8 in [0, 255] (data as stored) or float in [-1, 1].
    """
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        if x.dtype == torch.uint8:
            x = to_model_range(x)
        out.append(net.features(x).double().cpu().numpy())
    if not out:
        raise ValueError("extract_features: no images")
    return np.concatenate(out)


@torch.no_grad()
def label_accuracy(net: Classifier, samples: torch.Tensor, labels, batch_size: int = 500) -> float:
    """The share of ``samples`` (N, C, H, W; uint8, or float in [-1, 1]) that ``net`` classifies as ``labels``
    (N,): how often a class-conditional model draws the class it was asked for (Ho & Salimans 2022 report
    the Inception score instead; with a dataset's own classifier the accuracy is direct).

    Raises:
        ValueError: ``labels`` are not N class indices of ``net`` (-1, the null label, has no class).
    """
    if len(samples) == 0:
        raise ValueError("label_accuracy: no samples")
    labels = check_labels(labels, len(samples), net.head.out_features)
    if is_validating() and int(labels.min()) < 0:
        raise ValueError("label_accuracy: labels must be classes 0 .. K-1; -1 (unconditional) has no class to match")
    device = next(net.parameters()).device
    hits = 0
    for start in range(0, len(samples), batch_size):
        x = samples[start:start + batch_size].to(device)
        x = to_model_range(x) if x.dtype == torch.uint8 else x.float()
        hits += int((net(x).argmax(1).cpu() == labels[start:start + batch_size].cpu()).sum())
    return hits / len(samples)
