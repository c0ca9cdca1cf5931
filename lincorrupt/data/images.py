"""Datasets of uint8 images (C, H, W), checked against the shape the model expects where they enter.

``load_images(root, shape)`` recognises, in order (a dict registry, first match wins):

- ``cifar10``: torchvision's CIFAR-10 (``root/cifar-10-batches-py``);
- ``fashion-mnist``: torchvision's Fashion-MNIST (``root/FashionMNIST/raw``);
- ``folder``: class subfolders of images, ``root/<class>/*.png|jpg`` or ``root/<split>/<class>/...``
  (e.g. ``cifar10-jpeg.zip`` unpacked).

Nothing downloads unless ``download=`` names a torchvision dataset. An image file that cannot be
decoded is an :class:`UnreadableImageError` naming the file, or, with ``skip_unreadable=True``,
replaced by the next readable image and counted; :meth:`ImageFolder.verify` decodes every file
up front and lists the unreadable ones. 16-bit grey images are scaled to 8 bits; pixels of
32-bit integers or floats (whose range a file does not state) are refused, naming the file.
Datasets return uint8 tensors; :func:`to_model_range` maps a batch to [-1, 1] on the device.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch.utils.data import Dataset

from lincorrupt.validation import check_labels

__all__ = ["ImageFolder", "TensorImages", "UnreadableImageError", "load_images", "to_model_range", "to_unit_range",
           "SOURCES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}
MODE_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
#: PIL's modes decoded as another 8-bit mode of :data:`MODE_CHANNELS`: 1-bit black and white as grey 0 / 255.
#: Every other 8-bit mode (palette, CMYK, ...) is decoded as RGB.
DECODE_AS = {"1": "L"}
#: PIL's modes of 16-bit grey (e.g. a 16-bit greyscale PNG) -> bits per value.
GREY_BITS = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


class UnreadableImageError(ValueError):
    """An image file whose header or contents cannot be decoded (truncated, damaged, not an image)."""


def _unreadable(path: Path, error: BaseException) -> UnreadableImageError:
    return UnreadableImageError(f"cannot decode image {path} ({type(error).__name__}: {error}); replace or delete it, "
                                f"or skip unreadable images (skip_unreadable=True, --skip-unreadable); "
                                f"verify() (--verify-data) lists every such file before training")


def _layout(img: Image.Image, path: Path) -> tuple[int, int]:
    """(channels, bits per value) of an opened image as :func:`_decode` returns it: grey and 1-bit 1, RGB 3, RGBA 4
    channels of 8 bits; 16-bit grey (:data:`GREY_BITS`) 1 channel of 16 bits; other 8-bit modes (palette, CMYK,
    ...) 3.

    Raises:
        ValueError: 32-bit integer or floating-point pixels (modes I and F, which state no range), naming the file.
    """
    if img.mode in GREY_BITS:
        return 1, GREY_BITS[img.mode]
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ValueError(f"{path} holds {kind} pixels (mode {img.mode}), whose range the file does not state; "
                         f"convert it to 8- or 16-bit grey or RGB")
    return MODE_CHANNELS[_decoded_mode(img)], 8


def _decoded_mode(img: Image.Image) -> str:
    """The 8-bit mode of :data:`MODE_CHANNELS` that :func:`_decode` converts ``img`` to."""
    mode = DECODE_AS.get(img.mode, img.mode)
    return mode if mode in MODE_CHANNELS else "RGB"


def _decode(path: Path) -> torch.Tensor:
    """The pixels of the image file ``path`` as uint8 (C, H, W): 8-bit modes as they are (1-bit images as grey
    0 / 255, palette images and other modes converted to RGB), 16-bit grey scaled as ``round(v * 255 / 65535)``.

    Raises:
        UnreadableImageError: the file cannot be opened or its contents cannot be decoded.
        ValueError: its pixel format is refused (:func:`_layout`).
    """
    try:
        img = Image.open(path)
    except Exception as e:  # PIL raises OSError, SyntaxError, zlib.error, ... for damaged files
        raise _unreadable(path, e) from None
    with img:
        _, bits = _layout(img, path)
        try:
            if bits > 8:  # np.rint: no ties, since v * 255 / 65535 = v / 257 is never k + 1/2
                x = np.rint(np.asarray(img, dtype=np.float64) * (255 / (2**bits - 1))).astype(np.uint8)
            else:
                mode = _decoded_mode(img)
                x = np.array(img if img.mode == mode else img.convert(mode), dtype=np.uint8, copy=True)
        except Exception as e:
            raise _unreadable(path, e) from None
    x = torch.from_numpy(x)
    return x[None] if x.ndim == 2 else rearrange(x, "h w c -> c h w")


def check_uint8(x: torch.Tensor, where: str = "images") -> torch.Tensor:
    """``x`` if it holds uint8 pixels in [0, 255], the convention of every dataset here (checking the dtype only:
    no host sync).

    Raises:
        ValueError: another dtype (e.g. floats in [0, 1], which would map to near-black), naming it and the
            range of values found.
    """
    if x.dtype != torch.uint8:
        found = f"values from {float(x.min()):.4f} to {float(x.max()):.4f}" if x.numel() else "no values"
        raise ValueError(f"{where} are {str(x.dtype).removeprefix('torch.')} with {found}; expected uint8 pixels in "
                         f"[0, 255] (lincorrupt.data's datasets give them): convert images in [0, 1] with "
                         f"(x * 255).round().to(torch.uint8)")
    return x


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the scale every corruption expects).

    Raises:
        ValueError: ``x`` is not uint8 (:func:`check_uint8`).
    """
    return check_uint8(x).float().div(127.5).sub(1.0)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> float [0, 1] clipped (for saving images and for Inception)."""
    return x.add(1.0).div(2.0).clamp(0.0, 1.0)


def first_images(dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``min(n, len(dataset))`` images of a dataset of uint8 (C, H, W) tensors (or
    ``(image, label)`` pairs), stacked and mapped to [-1, 1] in float64: (n, C, H, W)."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    images = torch.stack([item[0] if isinstance(item, tuple) else item for item in items])
    return check_uint8(images, "the dataset's images").double().div(127.5).sub(1.0)  # to_model_range, in float64


def _describe(shape) -> str:
    c, h, w = shape
    return f"{h}x{w} with {c} channel(s)"


def _check_shape(found: tuple[int, ...], expected: tuple[int, ...], where: str) -> None:
    if tuple(found) != tuple(expected):
        raise ValueError(f"images in {where} are {_describe(found)}, expected {_describe(expected)}; "
                         f"resize/convert them or set the image size and channels to match")


class TensorImages(Dataset):
    """An in-memory stack of uint8 images (N, C, H, W), shape-checked once; with ``labels`` (N,) integer
    class indices, item i is ``(image, label)`` (the data of a class-conditional model) and
    :attr:`num_classes` is ``num_classes`` (default: the largest label + 1)."""

    def __init__(self, images: torch.Tensor, shape: tuple[int, int, int], where: str = "the tensor",
                 labels: torch.Tensor | None = None, num_classes: int | None = None):
        if images.ndim == 3:  # (N, H, W) greyscale
            images = images[:, None]
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"{where}: expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        _check_shape(tuple(images.shape[1:]), shape, where)
        self.images = images.contiguous()
        self.labels, self.num_classes = None, None
        if labels is not None:
            self.labels = check_labels(labels, len(images), num_classes, name=f"{where}: labels")
            if len(images) and int(self.labels.min()) < 0:
                raise ValueError(f"{where}: labels must be class indices >= 0 (-1 is the null label of guidance)")
            self.num_classes = num_classes or (int(self.labels.max()) + 1 if len(images) else 0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.images[i] if self.labels is None else (self.images[i], self.labels[i])


def _raise(error: OSError) -> None:
    raise error


def _image_files(root: Path) -> list[Path]:
    """Every image file under ``root``, sorted, through linked folders too (``rglob`` skips those).

    Raises:
        ValueError: two paths under ``root`` reach one folder (a link loop, or a folder linked twice), naming both.
        OSError: a folder cannot be listed (no folder is skipped silently).
    """
    seen: dict[tuple[int, int], str] = {}
    files = []
    for top, _, names in os.walk(root, onerror=_raise, followlinks=True):
        st = os.stat(top)
        if (first := seen.setdefault((st.st_dev, st.st_ino), top)) != top:
            raise ValueError(f"{top} is the folder {first} again (a link loop, or one folder linked twice); "
                             f"remove the link so that each image is read once")
        files += [Path(top) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in files if p.is_file())


class ImageFolder(Dataset):
    """Every image under ``root/<class>/`` (sorted, recursive, through linked folders), each checked against
    ``shape``.

    Args:
        root: folder of class subfolders.
        shape: expected (C, H, W); images are never resized or converted silently.
        labels: items are ``(image, label)``, the label the index of the image's class subfolder in
            :attr:`classes` (the sorted names of the subfolders of ``root``), as in torchvision;
            :attr:`num_classes` is then their number (None without labels).
        skip_unreadable: an image whose file cannot be decoded is replaced by the next readable
            one (index ``i + 1``, ``i + 2``, ... cyclically; deterministic given the files), named
            on stderr when first found and counted by :meth:`unreadable_count` (also across
            DataLoader workers). Without it, such a file is an :class:`UnreadableImageError`.

    Raises:
        FileNotFoundError: no images under ``root``.
        ValueError: two paths under ``root`` reach one folder (a link loop); an image's header gives another
            size or channel count than ``shape``; or its pixels are 32-bit integers or floats (16-bit grey is
            scaled to 8 bits, 1 channel like 8-bit grey).
        UnreadableImageError: an image's header cannot be read (unless ``skip_unreadable``).
    """

    def __init__(self, root: str | os.PathLike, shape: tuple[int, int, int], skip_unreadable: bool = False,
                 labels: bool = False):
        self.root, self.shape, self.skip_unreadable = Path(root), tuple(shape), skip_unreadable
        self.files = _image_files(self.root)
        self.classes = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
        if labels and any(p.parent == self.root for p in self.files):
            raise ValueError(f"labels=True: {self.root} holds images outside class subfolders; move each into "
                             f"the folder of its class")
        index = {name: k for k, name in enumerate(self.classes)}
        self.targets = [index[p.relative_to(self.root).parts[0]] for p in self.files] if labels else None
        self.num_classes = len(self.classes) if labels else None
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {self.root}")
        # one flag per file in shared memory: DataLoader workers mark what they skip, the main process counts
        self.unreadable = torch.zeros(len(self.files), dtype=torch.bool).share_memory_()
        for i, path in enumerate(self.files):  # fail fast here, not inside a DataLoader worker (reads headers only)
            try:
                img = Image.open(path)
            except Exception as e:
                self._mark(i, _unreadable(path, e))
                continue
            with img:
                _check_shape((_layout(img, path)[0], img.height, img.width), self.shape, str(path))
        if bool(self.unreadable.all()):
            raise UnreadableImageError(f"none of the {len(self.files)} images under {self.root} can be read")

    def __len__(self) -> int:
        return len(self.files)

    def _mark(self, i: int, error: UnreadableImageError) -> None:
        """Record file ``i`` as unreadable (saying so once), or raise ``error`` without ``skip_unreadable``."""
        if not self.skip_unreadable:
            raise error
        if not self.unreadable[i]:
            self.unreadable[i] = True
            print(f"skipping unreadable image {self.files[i]} ({self.unreadable_count()} so far)", file=sys.stderr)

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self.files)
        for j in range(i, i + n):
            k = j % n
            if self.unreadable[k]:
                continue
            try:
                x = _decode(self.files[k])
            except UnreadableImageError as e:
                self._mark(k, e)
                continue
            _check_shape(tuple(x.shape), self.shape, str(self.files[k]))
            return x if self.targets is None else (x, torch.tensor(self.targets[k]))
        raise UnreadableImageError(f"none of the {n} images under {self.root} can be read")

    def unreadable_count(self) -> int:
        """How many files were found unreadable so far (by this process and its DataLoader workers)."""
        return int(self.unreadable.sum())

    def verify(self, progress: bool = False) -> list[Path]:
        """Decode every image now; return the unreadable files (also marked, so they are skipped).

        Raises:
            ValueError: a decoded image is not of ``shape``.
        """
        from tqdm.auto import tqdm
        bad = []
        for i, path in enumerate(tqdm(self.files, desc="verifying images", disable=not progress)):
            try:
                x = _decode(path)
            except UnreadableImageError:
                self.unreadable[i] = True
                bad.append(path)
                continue
            _check_shape(tuple(x.shape), self.shape, str(path))
        return bad


def _cifar10(root: Path, train: bool, download: bool):
    from torchvision.datasets import CIFAR10
    ds = CIFAR10(str(root), train=train, download=download)
    return rearrange(torch.from_numpy(ds.data), "n h w c -> n c h w"), torch.tensor(ds.targets)


def _fashion_mnist(root: Path, train: bool, download: bool):
    from torchvision.datasets import FashionMNIST
    ds = FashionMNIST(str(root), train=train, download=download)
    return ds.data[:, None], torch.as_tensor(ds.targets)


def _labelled(loaded: tuple[torch.Tensor, torch.Tensor], labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels) of a torchvision loader, the labels only when asked for."""
    return loaded[0], loaded[1] if labels else None


def _class_folder(root: Path, train: bool) -> Path | None:
    split = root / ("train" if train else "test")
    for base in (split, root):
        if base.is_dir() and any(p.is_dir() for p in base.iterdir()):
            return base
    return None


# name -> (detect(root), load(root, train, download) -> (uint8 (N, C, H, W), int64 labels (N,)))
TORCHVISION: dict[str, tuple[Callable[[Path], bool], Callable]] = {
    "cifar10": (lambda r: (r / "cifar-10-batches-py").is_dir(), _cifar10),
    "fashion-mnist": (lambda r: (r / "FashionMNIST" / "raw").is_dir(), _fashion_mnist),
}
SOURCES = [*TORCHVISION, "folder"]


def load_images(root: str | os.PathLike, shape: tuple[int, int, int], train: bool = True,
                download: str | None = None, skip_unreadable: bool = False, labels: bool = False) -> Dataset:
    """The training (or test) images under ``root`` as a Dataset of uint8 (C, H, W) tensors.

    Args:
        root: a torchvision dataset root or a folder of class subfolders (see module docstring).
        shape: the (C, H, W) the model expects; other sizes or channel counts are an error.
        train: the training split (else the test split).
        download: name of a torchvision dataset (``"cifar10"`` or ``"fashion-mnist"``) to download
            into ``root`` if absent (needs network); ``None`` never downloads.
        skip_unreadable: for a folder of images, replace undecodable files (see :class:`ImageFolder`).
        labels: items are ``(image, label)`` pairs (the dataset's classes, or a folder's subfolders).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no recognised dataset.
        ValueError: the images are not of ``shape``.
    """
    root = Path(root).expanduser()
    if download is not None:
        if download not in TORCHVISION:
            raise ValueError(f"download={download!r}: expected one of {sorted(TORCHVISION)}")
        root.mkdir(parents=True, exist_ok=True)
        return TensorImages(*_labelled(TORCHVISION[download][1](root, train, True), labels), shape, str(root),
                            num_classes=10 if labels else None)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; pass a folder of class subfolders of images, "
                                f"a torchvision CIFAR-10/Fashion-MNIST root, or download with torchvision when online")
    for name, (detect, load) in TORCHVISION.items():
        if detect(root):
            images, targets = _labelled(load(root, train, False), labels)
            return TensorImages(images, shape, f"{root} ({name})", targets, num_classes=10 if labels else None)
    folder = _class_folder(root, train)
    if folder is None:
        raise FileNotFoundError(f"{root} holds no recognised dataset: expected cifar-10-batches-py/, "
                                f"FashionMNIST/raw/, or class subfolders of images (optionally under train/ and test/)")
    return ImageFolder(folder, shape, skip_unreadable=skip_unreadable, labels=labels)
