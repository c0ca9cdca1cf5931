"""benchmarks/bench_inverse.py --tiny: every cell of the study runs on tiny random priors, and a rerun resumes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_inverse", ROOT / "benchmarks" / "bench_inverse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_tiny_study_runs_every_cell_and_resumes(bench, tmp_path):
    bench.main(["--tiny", "--out", str(tmp_path)])
    assert torch.is_grad_enabled(), "the study must not switch gradients off for its caller"
    rows = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    expected = bench.cells(bench.TINY, ["blurring", "ddpm"])
    assert [(r["prior"], r["task"], r["noise"], r["method"], r["nfe"]) for r in rows] == expected
    assert all(r["images"] == bench.TINY.test_images for r in rows)
    for r in rows:  # the pseudo-inverse of an exact (8-bit) measurement is consistent with it up to rounding
        if r["method"] == "pinv" and r["noise"] == 0 and r["task"] != "deblur2":
            assert r["consistency"] < 1e-3, r
    bench.main(["--tiny", "--out", str(tmp_path)])  # resumes: nothing left to do
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == len(rows)
    assert (tmp_path / "results.md").read_text().count("\n") == len(rows) + 2
    assert (tmp_path / "summary.md").read_text().count("| sr4 | ddpm |") == 2  # both noise levels


def test_quantised_measurement_keeps_unobserved_zeros(bench):
    op = bench.TASKS["box14"]()
    y, sigma_y = bench.measure(op, torch.zeros(2, *bench.SHAPE), 0.0, seed=0)
    assert sigma_y == pytest.approx(2 / 255 / 12**0.5)
    assert bool((y[:, ~op.mask] == 0).all())
    torch.testing.assert_close(y[:, op.mask], torch.full_like(y[:, op.mask], 128 / 127.5 - 1))  # 0 -> level 128


def test_full_covariance_wiener_matches_the_library_wiener_on_a_diagonal_covariance(bench):
    """The study's dense Wiener baseline and lincorrupt.restoration.wiener agree when the covariance is diagonal
    in the DCT basis (the library's case; itself tested against Gaussian conditioning)."""
    import lincorrupt as lc
    from lincorrupt.restoration import wiener

    basis = lc.DCTBasis(28, 28)
    var = torch.rand(bench.SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.05
    eye = torch.eye(784, dtype=torch.float64).reshape(784, *bench.SHAPE)
    v = basis.from_basis(eye).reshape(784, 784).T  # columns: the basis vectors
    fit = bench.GaussianFit(torch.zeros(2, *bench.SHAPE))
    fit.mean = torch.linspace(-0.5, 0.5, 784, dtype=torch.float64)
    fit.cov = v @ torch.diag(var.flatten()) @ v.T
    for task in ("deblur2", "sr4", "box14"):
        op = bench.TASKS[task]()
        y = op.measure(torch.zeros(3, *bench.SHAPE), 0.05, generator=torch.Generator().manual_seed(1))
        library = wiener(y.double(), op, fit.mean.reshape(bench.SHAPE), var, basis, 0.05, cg_iterations=400,
                         cg_tol=1e-12)
        torch.testing.assert_close(fit.wiener(op, y, 0.05).double(), library, atol=1e-5, rtol=0)
