"""examples/demo.py (``make demo``) end to end, shortened, on a Fashion-MNIST-format root of real photo crops."""

import importlib.util
import struct
import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def write_idx_root(root: Path, n: int = 40) -> Path:
    """torchvision's FashionMNIST layout (raw idx files) holding n greyscale 28x28 crops of a real photograph."""
    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("L")
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(n):
        y, x = rng.integers(0, img.height - 84), rng.integers(0, img.width - 84)
        crops.append(np.asarray(img.crop((x, y, x + 84, y + 84)).resize((28, 28), Image.BILINEAR)))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        images = struct.pack(">IIII", 2051, n, 28, 28) + np.stack(crops).tobytes()
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(n))
    return root


def test_demo_writes_its_pictures_and_summary(tmp_path):
    spec = importlib.util.spec_from_file_location("lincorrupt_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    spec.loader.exec_module(demo)
    out = tmp_path / "out"
    root = write_idx_root(out / "data")
    result = demo.main(["--out", str(out), "--data", str(root), "--steps", "3", "--sample-steps", "3"])
    for name in ("forward_process.png", "samples.png", "loss.png", "summary.md", "run/checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    assert result["steps"] == 3
    summary = (out / "summary.md").read_text()
    assert "3 steps of batch 32" in summary and "40 Fashion-MNIST training images" in summary
    assert "from data\n" in summary and str(tmp_path) not in summary.split("Continue training")[0]  # relative to --out
    resumed = demo.main(["--out", str(out), "--data", str(root), "--steps", "4", "--sample-steps", "3", "--resume"])
    assert resumed["steps"] == 4 and "4 steps of batch 32, the last 1 in" in (out / "summary.md").read_text()
