"""Fashion-MNIST (Xiao et al. 2017) with its labels, read from the original idx files (gzipped or not).

Debian's ``dataset-fashion-mnist`` package installs them under ``/usr/share/datasets/fashion-mnist``,
which makes the data set available offline; any folder holding the four files works too.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["DEBIAN_DIR", "load_fashion_mnist", "read_idx"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx file of unsigned bytes (LeCun's MNIST format: magic 0x0000 08 NDIM, NDIM big-endian sizes, data),
    gunzipped when its name ends in ``.gz``.

    Raises:
        ValueError: not such a file, a ``.gz`` file that is not gzip or is cut short, or sizes that disagree
            with the data; naming the file.
    """
    path = Path(path)
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path} is not a complete gzip file ({type(e).__name__}: {e}); download it again") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes, the file holds {body.size}")
    return body.reshape(dims)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name, root / "FashionMNIST" / "raw" / name):
        if candidate.is_file():
            return candidate
    hint = " (apt-get install dataset-fashion-mnist)" if root == DEBIAN_DIR else ""
    raise FileNotFoundError(f"Fashion-MNIST file {name}[.gz] not found under {root}{hint}")


def load_fashion_mnist(train: bool = True, root: str | os.PathLike = DEBIAN_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """The 60,000 training (or 10,000 test) images and labels.

    Returns:
        images: uint8 (N, 1, 28, 28); labels: int64 (N,) in 0..9.
    """
    root = Path(root)
    images, labels = (read_idx(_find(root, name)) for name in _FILES[train])
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST under {root}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
