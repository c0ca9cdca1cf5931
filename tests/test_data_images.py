"""Image datasets: the layouts we recognise, and wrong input named where it enters."""

import struct

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from lincorrupt.data import TensorImages, load_images, to_model_range, to_unit_range


def photo_patches(n: int, size: int) -> list[np.ndarray]:
    """n real-photo crops (matplotlib's Grace Hopper sample) resized to size x size, RGB uint8."""
    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, img.height - 64), rng.integers(0, img.width - 64)
        out.append(np.asarray(img.crop((x, y, x + 64, y + 64)).resize((size, size), Image.BILINEAR)))
    return out


def write_folder(root, patches, split="train", mode="RGB"):
    for i, p in enumerate(patches):
        d = root / split / f"class{i % 2}" if split else root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).convert(mode).save(d / f"{i:03d}.png")


@pytest.mark.parametrize("split", ["train", None])
def test_class_folders_load_exact_pixels(tmp_path, split):
    patches = photo_patches(6, 16)
    write_folder(tmp_path, patches, split)
    ds = load_images(tmp_path, (3, 16, 16))
    assert len(ds) == 6
    x = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), patches[0])  # files sorted: class0/000.png first


def test_torchvision_fashion_mnist_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):  # the idx format of LeCun's MNIST files
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 5, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 5) + bytes(5))
    ds = load_images(tmp_path, (1, 28, 28))
    assert len(ds) == 5 and torch.equal(ds[3], torch.from_numpy(images[3])[None])
    with pytest.raises(ValueError, match=r"are 28x28 with 1 channel\(s\), expected 32x32 with 3 channel\(s\)"):
        load_images(tmp_path, (3, 32, 32))


def test_missing_root_and_unrecognised_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root .*nowhere does not exist"):
        load_images(tmp_path / "nowhere", (3, 16, 16))
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="holds no recognised dataset"):
        load_images(tmp_path, (3, 16, 16))
    with pytest.raises(ValueError, match="download='mnist'"):
        load_images(tmp_path, (3, 16, 16), download="mnist")


def test_wrong_size_is_named_with_the_file(tmp_path):
    patches = photo_patches(4, 16)
    patches[2] = photo_patches(1, 20)[0]
    write_folder(tmp_path, patches)
    with pytest.raises(ValueError, match=r"002.png are 20x20 with 3 channel\(s\), expected 16x16 with 3 channel\(s\)"):
        load_images(tmp_path, (3, 16, 16))


def test_wrong_channels_are_named(tmp_path):
    write_folder(tmp_path, photo_patches(3, 16), mode="L")
    with pytest.raises(ValueError, match=r"16x16 with 1 channel\(s\), expected 16x16 with 3 channel\(s\)"):
        load_images(tmp_path, (3, 16, 16))
    assert load_images(tmp_path, (1, 16, 16))[0].shape == (1, 16, 16)


def test_tensor_images_checks_dtype_and_shape():
    with pytest.raises(ValueError, match="expected uint8 images"):
        TensorImages(torch.zeros(2, 3, 8, 8), (3, 8, 8))
    with pytest.raises(ValueError, match="expected 8x8"):
        TensorImages(torch.zeros(2, 3, 9, 8, dtype=torch.uint8), (3, 8, 8))


def test_ranges():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    torch.testing.assert_close(to_model_range(x), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))
    torch.testing.assert_close(to_unit_range(torch.tensor([-2.0, -1.0, 0.0, 1.0])), torch.tensor([0.0, 0.0, 0.5, 1.0]))


def write_grey16(root, images: list[np.ndarray], suffix: str = ".png") -> None:
    d = root / "train" / "class0"
    d.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(d / f"{i:03d}{suffix}")


def test_16_bit_grey_is_scaled_by_its_bit_depth(tmp_path):
    """16-bit grey PNGs (mode I;16) and TIFFs: round(v * 255 / 65535), one channel as for 8-bit grey;
    convert("RGB") clipped every value above 255 to white."""
    rng = np.random.default_rng(0)
    values = np.concatenate([[0, 1, 128, 129, 385, 65535], 257 * np.arange(0, 256, 26),
                             rng.integers(0, 65536, 64 - 16)]).astype(np.uint16).reshape(8, 8)
    write_grey16(tmp_path, [values, values[::-1].copy()])
    write_grey16(tmp_path / "tif", [values], suffix=".tif")
    expected = (values.astype(np.int64) * 255 + 32767) // 65535  # nearest integer; ties cannot occur
    ds = load_images(tmp_path, (1, 8, 8))
    assert ds.verify() == []
    np.testing.assert_array_equal(ds[0][0].numpy(), expected)
    np.testing.assert_array_equal(ds[1][0].numpy(), expected[::-1])
    np.testing.assert_array_equal(load_images(tmp_path / "tif", (1, 8, 8))[0][0].numpy(), expected)
    assert expected.min() == 0 and expected.max() == 255 and len(np.unique(expected)) > 40
    with pytest.raises(ValueError, match=r"000.png are 8x8 with 1 channel\(s\), expected 8x8 with 3 channel\(s\)"):
        load_images(tmp_path, (3, 8, 8))  # as 8-bit grey is


@pytest.mark.parametrize("dtype, mode", [(np.int32, "I"), (np.float32, "F")])
def test_32_bit_integer_and_float_pixels_are_refused_naming_the_file(tmp_path, dtype, mode):
    write_grey16(tmp_path, [np.full((8, 8), 3, dtype=dtype)], suffix=".tif")
    for skip in (False, True):  # not an unreadable file to skip: a format to convert
        with pytest.raises(ValueError, match=rf"000.tif holds .* pixels \(mode {mode}\), whose range"):
            load_images(tmp_path, (1, 8, 8), skip_unreadable=skip)
        with pytest.raises(ValueError, match=rf"000.tif holds .* pixels \(mode {mode}\), whose range"):
            load_images(tmp_path, (3, 8, 8), skip_unreadable=skip)


def test_linked_class_folders_are_followed_and_a_loop_is_named(tmp_path):
    """A class folder that links elsewhere (a shared disk, another copy) is read like a real one; rglob skipped it."""
    patches = photo_patches(4, 8)
    write_folder(tmp_path / "elsewhere", patches, split=None)  # class0: 000, 002; class1: 001, 003
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "class0").symlink_to(tmp_path / "elsewhere" / "class0", target_is_directory=True)
    (tmp_path / "data" / "train" / "class1").symlink_to(tmp_path / "elsewhere" / "class1", target_is_directory=True)
    ds = load_images(tmp_path / "data", (3, 8, 8))
    assert [p.relative_to(tmp_path / "data").as_posix() for p in ds.files] == [
        "train/class0/000.png", "train/class0/002.png", "train/class1/001.png", "train/class1/003.png"]
    np.testing.assert_array_equal(ds[2].permute(1, 2, 0).numpy(), patches[1])
    loop = tmp_path / "elsewhere" / "class1" / "again"
    loop.symlink_to(tmp_path / "data" / "train", target_is_directory=True)  # back to the root: a loop
    with pytest.raises(ValueError, match=r"train/class1/again is the folder \S*data/train again \(a link loop"):
        load_images(tmp_path / "data", (3, 8, 8))
