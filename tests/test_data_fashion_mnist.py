"""Fashion-MNIST's idx reader against files written here byte by byte, and the real files where installed."""

import gzip
import struct

import numpy as np
import pytest

from lincorrupt.data import DEBIAN_DIR, load_fashion_mnist, read_idx


def _idx(array: np.ndarray) -> bytes:
    """The idx format written out: two zero bytes, type 0x08 (unsigned byte), ndim, big-endian sizes, data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(_idx(array)) if compress else _idx(array))
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_refuses_bad_files(tmp_path):
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">i", 2) + b"\x00" * 8)  # 0x0D: float32
    with pytest.raises(ValueError, match="not an idx file of unsigned bytes"):
        read_idx(bad_magic)
    truncated = tmp_path / "short"
    truncated.write_bytes(_idx(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(ValueError, match=r"header says \(4, 2\) = 8 bytes, the file holds 5"):
        read_idx(truncated)


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist(train=False, root=tmp_path)


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_files():
    images, labels = load_fashion_mnist(train=False)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype.is_floating_point is False
    assert labels.bincount().tolist() == [1000] * 10  # the test set is balanced
