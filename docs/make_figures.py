"""Draw the documentation's figures from the library and real images.

    .venv/bin/python docs/make_figures.py --out out/figures                  # Fashion-MNIST (Debian package)
    .venv/bin/python docs/make_figures.py --out out/figures --cifar10 cifar10-jpeg.zip
    .venv/bin/python docs/make_figures.py --demo out/demo                    # copy the demo's sample grids

The docs build runs :func:`draw_all` through ``docs/hooks/figures.py`` on every build, so the
figures of the Concepts page always show the code as it is; nothing it draws is committed.
The sample grids of a trained model cannot be redrawn in a docs build (they need the demo's
training run): ``--demo DIR`` copies them, with their provenance, into ``docs/assets/demo/``,
where they are committed.

Figures:

- ``forward_fashion_mnist.png``: one test image through the forward process of DDPM, IHDM and
  blurring diffusion at t = 0, 0.1, ..., 1 (one noise draw shared by the three rows).
- ``snr_per_frequency.png``: log SNR_i(t) of 40 DCT frequencies (low to high) of the same
  image size for the three corruptions at their default (CIFAR-10) settings.
- ``tutorial_colour_fade.png``: the tutorial's corruption on a tinted Fashion-MNIST image, the
  mean of q(z_t | x) and a sample.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lincorrupt as lc  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TIMES = [i / 10 for i in range(11)]
DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"


def fashion_mnist_test_images(n: int, root: Path = FASHION_MNIST) -> torch.Tensor:
    """The first ``n`` Fashion-MNIST test images, shape (n, 1, 28, 28), in [-1, 1]."""
    path = root / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the figures are drawn from real Fashion-MNIST images "
            "(`apt-get install dataset-fashion-mnist`)"
        )
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    assert magic == 2051, f"{path} is not an idx3 image file"
    images = np.frombuffer(data[16:], dtype=np.uint8, count=n * rows * cols).reshape(n, 1, rows, cols)
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


def cifar10_test_images(n: int, zip_path: Path) -> torch.Tensor:
    """The first ``n`` images (sorted by name) of the zip's test split, (n, 3, 32, 32), in [-1, 1]."""
    from PIL import Image

    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(m for m in zf.namelist() if "test" in m and m.lower().endswith((".jpg", ".jpeg", ".png")))
        images = [np.asarray(Image.open(io.BytesIO(zf.read(m))).convert("RGB")) for m in names[:n]]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def corruptions(shape: tuple[int, int, int]) -> dict[str, lc.DiagonalizableCorruption]:
    """The three shipped corruptions at their defaults, for images of ``shape``."""
    return {
        "DDPM (linear)": lc.DDPM(shape=shape),
        "IHDM": lc.IHDM(shape=shape),
        "Blurring diffusion": lc.BlurringDiffusion(shape=shape),
    }


def draw_forward(x: torch.Tensor, path: Path, rows: dict, seed: int = 0, noise_free: tuple[str, ...] = ()) -> None:
    """Forward process of each corruption in ``rows`` for one image ``x`` of shape (C, H, W).

    Rows named in ``noise_free`` show the mean of q(z_t | x), ``V alpha_t V^T x``, instead of a sample.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = tuple(x.shape)
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(len(rows), len(TIMES), figsize=(0.78 * len(TIMES) + 1.2, 0.85 * len(rows) + 0.3),
                             squeeze=False)
    for r, (name, c) in enumerate(rows.items()):
        for j, t in enumerate(TIMES):
            z, _ = c.diffuse(x[None], torch.tensor([t]), noise=noise * (name not in noise_free))
            img = ((z[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax = axes[r, j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {t:.1f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.16, right=0.995, top=0.9, bottom=0.02, wspace=0.05, hspace=0.08)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_snr(path: Path, panels: dict) -> None:
    """log SNR_i(t) per DCT frequency for each corruption in ``panels`` (channel 0; channels are identical)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = next(iter(panels.values())).shape
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    lam = lc.DCTBasis(shape[-2], shape[-1]).frequencies_squared
    freq = lam.sqrt().flatten()
    order = torch.argsort(freq)
    pick = order[torch.linspace(0, freq.numel() - 1, 40).round().long()]  # 40 frequencies, low to high
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.1), sharey=True)
    for ax, (name, c) in zip(axes, panels.items()):
        with torch.no_grad():
            logsnr = c.log_snr(t)  # log space: IHDM's alpha_t underflows at high frequencies
        logsnr = torch.broadcast_to(logsnr, (t.numel(), *shape))[:, 0].flatten(1)
        if torch.allclose(logsnr, logsnr[:, :1]):
            ax.plot(t, logsnr[:, 0], color="black", lw=1.5)
        else:
            for i in pick.flip(0):
                ax.plot(t, logsnr[:, i], color=cmap(float(freq[i] / freq.max())), lw=0.9)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("t")
        ax.set_ylim(-25, 15)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"log SNR$_i(t)$")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, float(freq.max())))
    fig.colorbar(sm, ax=axes, label=r"$\sqrt{\lambda_{kl}}$", fraction=0.025, pad=0.01)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def draw_all(out: Path, images: torch.Tensor | None = None, tag: str = "fashion_mnist") -> list[Path]:
    """Draw every figure the docs build needs into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if images is None:
        images = fashion_mnist_test_images(1)
    paths = [out / f"forward_{tag}.png", out / "snr_per_frequency.png", out / "tutorial_colour_fade.png"]
    cs = corruptions(tuple(images.shape[1:]))  # constructed once: each runs its validity check
    draw_forward(images[0], paths[0], cs)
    draw_snr(paths[1], cs)
    draw_tutorial(paths[2])
    return paths


def draw_tutorial(path: Path) -> None:
    """The tutorial's corruption (docs/tutorial_code/colour_fade.py) on a tinted Fashion-MNIST image."""
    import importlib.util

    tutorial_file = Path(__file__).parent / "tutorial_code" / "colour_fade.py"
    spec = importlib.util.spec_from_file_location("colour_fade", tutorial_file)
    tutorial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial)
    x = tutorial.colourful_fashion_mnist(n=8)[7]
    c = tutorial.ColourFadeDiffusion(shape=(3, 28, 28))
    draw_forward(x, path, {"mean of q(z_t | x)": c, "z_t ~ q(z_t | x)": c}, noise_free=("mean of q(z_t | x)",))


DEMO_FILES = ("samples.png", "loss.png", "summary.md")


def demo_recipe_hash() -> str:
    """sha256 of examples/demo.py: the recipe the committed grids were made with."""
    import hashlib

    return hashlib.sha256((ROOT / "examples" / "demo.py").read_bytes()).hexdigest()


def copy_demo(demo_dir: Path, dest: Path = DEMO_DIR) -> None:
    """Copy the demo's sample grid, loss curve and summary into ``dest``, with their provenance.

    tests/test_docs_figures.py fails when examples/demo.py no longer matches the recorded
    hash, so the committed grids cannot silently outlive the recipe that made them.
    """
    missing = [f for f in DEMO_FILES if not (demo_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{demo_dir} lacks {missing}: run `make demo` first")
    dest.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        if name.endswith(".png"):
            _save_small_png(demo_dir / name, dest / name)
        else:
            shutil.copy2(demo_dir / name, dest / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                            cwd=ROOT, capture_output=True, text=True).stdout.strip()
    provenance = {
        "files": list(DEMO_FILES),
        "made_by": f"examples/demo.py --out {demo_dir}",
        "copied_by": f".venv/bin/python docs/make_figures.py --demo {demo_dir}",
        "git_head": commit,
        "examples/demo.py sha256": demo_recipe_hash(),
        "copied_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def _save_small_png(src: Path, dst: Path) -> None:
    """Re-encode a PNG with an adaptive 256-colour palette: exact for greyscale grids, a fraction of the size."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/figures"), help="where to draw the figures")
    parser.add_argument("--cifar10", type=Path, help="draw the forward process from this CIFAR-10 zip instead")
    parser.add_argument("--demo", type=Path, help="copy the sample grids of `make demo` from this folder into docs/")
    args = parser.parse_args()
    if args.demo:
        copy_demo(args.demo)
        print(f"copied the demo's grids from {args.demo} to {DEMO_DIR}")
        return
    images, tag = (cifar10_test_images(1, args.cifar10), "cifar10") if args.cifar10 else (None, "fashion_mnist")
    for p in draw_all(args.out, images, tag):
        print(p)


if __name__ == "__main__":
    main()
