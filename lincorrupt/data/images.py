"""Datasets of uint8 images (C, H, W), checked against the shape the model expects where they enter.

``load_images(root, shape)`` recognises, in order (a dict registry, first match wins):

- ``cifar10``: torchvision's CIFAR-10 (``root/cifar-10-batches-py``);
- ``fashion-mnist``: torchvision's Fashion-MNIST (``root/FashionMNIST/raw``);
- ``folder``: class subfolders of images, ``root/<class>/*.png|jpg`` or ``root/<split>/<class>/...``
  (e.g. ``cifar10-jpeg.zip`` unpacked).

Nothing downloads unless ``download=`` names a torchvision dataset.
Datasets return uint8 tensors; :func:`to_model_range` maps a batch to [-1, 1] on the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ImageFolder", "TensorImages", "load_images", "to_model_range", "to_unit_range", "SOURCES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}
MODE_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the scale every corruption expects)."""
    return x.float().div(127.5).sub(1.0)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> float [0, 1] clipped (for saving images and for Inception)."""
    return x.add(1.0).div(2.0).clamp(0.0, 1.0)


def _describe(shape) -> str:
    c, h, w = shape
    return f"{h}x{w} with {c} channel(s)"


def _check_shape(found: tuple[int, ...], expected: tuple[int, ...], where: str) -> None:
    if tuple(found) != tuple(expected):
        raise ValueError(f"images in {where} are {_describe(found)}, expected {_describe(expected)}; "
                         f"resize/convert them or set the image size and channels to match")


class TensorImages(Dataset):
    """An in-memory stack of uint8 images (N, C, H, W), shape-checked once."""

    def __init__(self, images: torch.Tensor, shape: tuple[int, int, int], where: str = "the tensor"):
        if images.ndim == 3:  # (N, H, W) greyscale
            images = images[:, None]
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"{where}: expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        _check_shape(tuple(images.shape[1:]), shape, where)
        self.images = images.contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class ImageFolder(Dataset):
    """Every image under ``root/<class>/`` (sorted, recursive), each checked against ``shape``.

    Args:
        root: folder of class subfolders.
        shape: expected (C, H, W); images are never resized or converted silently.
    """

    def __init__(self, root: str | os.PathLike, shape: tuple[int, int, int]):
        self.root, self.shape = Path(root), tuple(shape)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}")
        for path in self.files:  # fail fast here, not inside a DataLoader worker (reads headers only)
            with Image.open(path) as img:
                found = (MODE_CHANNELS.get(img.mode, 3), img.height, img.width)
            _check_shape(found, self.shape, str(path))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.files[i]
        with Image.open(path) as img:
            if img.mode not in MODE_CHANNELS or img.mode == "P":
                img = img.convert("RGB")
            x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        _check_shape(tuple(x.shape), self.shape, str(path))
        return x


def _cifar10(root: Path, train: bool, download: bool):
    from torchvision.datasets import CIFAR10
    ds = CIFAR10(str(root), train=train, download=download)
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2)


def _fashion_mnist(root: Path, train: bool, download: bool):
    from torchvision.datasets import FashionMNIST
    ds = FashionMNIST(str(root), train=train, download=download)
    return ds.data[:, None]


def _class_folder(root: Path, train: bool) -> Path | None:
    split = root / ("train" if train else "test")
    for base in (split, root):
        if base.is_dir() and any(p.is_dir() for p in base.iterdir()):
            return base
    return None


# name -> (detect(root), load(root, train, download) -> uint8 (N, C, H, W))
TORCHVISION: dict[str, tuple[Callable[[Path], bool], Callable]] = {
    "cifar10": (lambda r: (r / "cifar-10-batches-py").is_dir(), _cifar10),
    "fashion-mnist": (lambda r: (r / "FashionMNIST" / "raw").is_dir(), _fashion_mnist),
}
SOURCES = [*TORCHVISION, "folder"]


def load_images(root: str | os.PathLike, shape: tuple[int, int, int], train: bool = True,
                download: str | None = None) -> Dataset:
    """The training (or test) images under ``root`` as a Dataset of uint8 (C, H, W) tensors.

    Args:
        root: a torchvision dataset root or a folder of class subfolders (see module docstring).
        shape: the (C, H, W) the model expects; other sizes or channel counts are an error.
        train: the training split (else the test split).
        download: name of a torchvision dataset (``"cifar10"`` or ``"fashion-mnist"``) to download
            into ``root`` if absent (needs network); ``None`` never downloads.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no recognised dataset.
        ValueError: the images are not of ``shape``.
    """
    root = Path(root).expanduser()
    if download is not None:
        if download not in TORCHVISION:
            raise ValueError(f"download={download!r}: expected one of {sorted(TORCHVISION)}")
        root.mkdir(parents=True, exist_ok=True)
        return TensorImages(TORCHVISION[download][1](root, train, True), shape, str(root))
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; pass a folder of class subfolders of images, "
                                f"a torchvision CIFAR-10/Fashion-MNIST root, or download with torchvision when online")
    for name, (detect, load) in TORCHVISION.items():
        if detect(root):
            return TensorImages(load(root, train, False), shape, f"{root} ({name})")
    folder = _class_folder(root, train)
    if folder is None:
        raise FileNotFoundError(f"{root} holds no recognised dataset: expected cifar-10-batches-py/, FashionMNIST/raw/, "
                                f"or class subfolders of images (optionally under train/ and test/)")
    return ImageFolder(folder, shape)
