"""benchmarks/bench_samplers.py at whole-image sizes: its data modes on a tiny synthetic image
folder, the eigenbasis oracle against the full-covariance one, the NFE search, and one quick
real-size convergence case per sampler."""

import importlib.util
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from lincorrupt.data import DEBIAN_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_samplers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_samplers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/<class>/*.png, 6x6 grey images with a known content, plus a stray test/ image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    (root / "test").mkdir()
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(root / "test" / "0.png")
    return root


def test_folder_and_zip_read_the_same_training_images(bench, folder, tmp_path):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*.png")):
            z.write(f, str(f.relative_to(folder)))
    a, b = bench.read_images(folder), bench.read_images(archive)
    assert len(a) == len(b) == 24  # train/ only
    from PIL import Image

    first = np.asarray(Image.open(folder / "train" / "cat" / "0.png"), dtype=np.float64) / 127.5 - 1
    assert any(np.array_equal(first, x) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.min() >= -1 and x.max() <= 1 for x in a)


def test_missing_root_is_a_clear_error(bench, tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bench.read_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        bench.read_images(tmp_path / "empty")
    monkeypatch.setattr(sys, "argv", ["bench_samplers.py", "--data", "cifar10"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--data cifar10 needs --root" in capsys.readouterr().err


def test_cifar10_mode_runs_on_a_tiny_folder(bench, folder, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_samplers.py", "--data", "cifar10", "--root", str(folder),
                                      "--samplers", "dpm++2m", "ancestral", "--grids", "data", "--max-nfe", "20"])
    bench.main()
    out = capsys.readouterr().out
    assert "24 grey 6x6 training images" in out and "# machine:" in out
    for name in ("blurring", "no-blur", "ddpm", "ihdm"):
        assert f"| {name:10} | dpm++2m   | data    |" in out


def _gaussian_images(n=400, size=4, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((size * size, size * size)) / size
    return torch.from_numpy(np.tanh(rng.standard_normal((n, size * size)) @ mix)).reshape(n, 1, size, size)


@pytest.mark.parametrize("name", ["no-blur", "ddpm"])
@pytest.mark.parametrize("method, grid", [("dpm++2m", "logsnr"), ("ancestral", "uniform"), ("momentum", "data")])
def test_eigenbasis_oracle_equals_the_full_covariance_oracle(bench, name, method, grid):
    """Two exact computations of the same KL: D x D conditioning in the corruption's basis, and per
    eigen-coordinate scalars in the eigenbasis of the data covariance (the benchmark's fast path)."""
    x = _gaussian_images()
    c = bench.real_corruptions(4)[name]
    c.fit_data_statistics(x)
    assert bench.is_isotropic(c)
    diagonal, full = bench.real_data(c, x), lc.GaussianData.fit(x, ridge=1e-4)
    assert diagonal.basis_var is not None and full.basis_var is None
    a, b = (data.sample_kl(c, method, 12, grid, exact_prior=True).item() for data in (full, diagonal))
    assert b == pytest.approx(a, rel=1e-7, abs=1e-9)


def test_blur_is_not_isotropic(bench):
    assert not bench.is_isotropic(bench.real_corruptions(8)["blurring"])
    assert not bench.is_isotropic(bench.real_corruptions(8)["ihdm"])


@given(st.floats(0.5, 200.0), st.integers(10, 120))
def test_smallest_nfe_is_the_brute_force_answer(bench, target, cap):
    def kl_at(n):
        assert 1 <= n <= cap
        return 100.0 / n

    brute = next((n for n in range(1, cap + 1) if kl_at(n) <= target), None)
    assert bench.smallest_nfe(kl_at, target, cap=cap) == brute


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_every_sampler_converges_on_the_exact_oracle_at_28x28(bench):
    """One real-size case: 28x28 Fashion-MNIST, the same schedule as blurring diffusion without
    blur, exact denoiser of the full-covariance Gaussian. Every sampler that is consistent (all
    but the naive one, which re-draws all the noise each step) gets closer as NFE grows."""
    x = bench.real_images("fashion-mnist", None, 5000)[0]
    c = bench.real_corruptions(28)["no-blur"]
    c.fit_data_statistics(x)
    data = bench.real_data(c, x)
    for method in lc.SAMPLERS:
        kls = [data.sample_kl(c, method, n, "data", exact_prior=True).item() for n in (10, 40, 160)]
        assert all(math.isfinite(k) for k in kls), (method, kls)
        if method != "naive":
            assert kls[2] < kls[1] < kls[0], (method, kls)
