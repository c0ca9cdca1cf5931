"""The code the documentation shows is code that runs.

Every file in docs/tutorial_code/ is included (in sections) into a page by pymdownx.snippets;
these tests execute them as they are, so the pages cannot drift from working code.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CODE = ROOT / "docs" / "tutorial_code"
DOCS = ROOT / "docs"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_tutorial_{name}", CODE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_snippet_section_exists():
    """Each `--8<-- "file:section"` on a page names a file and a section that exist."""
    for page in DOCS.rglob("*.md"):
        if page.name == "README.md":  # notes for doc writers, not a page
            continue
        for file, section in re.findall(r'^\s*--8<-- "([^":]+)(?::([\w-]+))?"', page.read_text(), re.MULTILINE):
            source = next((d / file for d in (CODE, DOCS / "assets" / "demo", DOCS / "assets" / "quality") if (d / file).is_file()), CODE / file)
            assert source.is_file(), f"{page.name} includes missing {file}"
            if section:
                text = source.read_text()
                assert f"[start:{section}]" in text and f"[end:{section}]" in text, (page.name, file, section)


@needs_fashion_mnist
def test_tutorial_colour_fade_runs(capsys):
    """The tutorial end to end: validity, refusal of a broken variant, training, sampling."""
    tutorial = _load("colour_fade")
    c, x, losses, samples, frames, agreements = tutorial.main()
    out = capsys.readouterr().out
    assert "refused: ColourReturns: SNR increases" in out
    page = (DOCS / "tutorial.md").read_text()
    for line in out.splitlines():  # the deterministic output the page quotes must be today's
        if line.startswith(("refused:", "log-SNR at")):
            assert line in page, f"docs/tutorial.md quotes an outdated output; the tutorial now prints:\n{line}"
    assert isinstance(c, tutorial.ColourFadeDiffusion) and x.shape[1:] == (3, 28, 28)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10]), "a few steps of training should lower the loss"
    assert samples.shape == (8, 3, 28, 28) and bool(torch.isfinite(samples).all())
    # the callback saw every one of the 50 evaluations, at the uniform grid's times, in data space
    assert [round(t, 6) for t, _ in frames] == [round(1 - k / 50, 6) for k in range(50)]
    assert all(x_hat.shape == (8, 3, 28, 28) for _, x_hat in frames)
    # shape first, colour last: mid-way the luminance detail is settled far more than the colour detail
    middle = [(lum, colour) for t, lum, colour in agreements if 0.1 < t < 0.5]
    assert middle and all(lum > colour + 0.2 for lum, colour in middle), agreements


def test_tutorial_basis_is_orthogonal():
    """The tutorial's basis, checked densely on a small image: V^T V = I."""
    tutorial = _load("colour_fade")
    basis = tutorial.OpponentColourDCT(4, 5)
    eye = torch.eye(3 * 4 * 5, dtype=torch.float64).reshape(-1, 3, 4, 5)
    v_t = basis.to_basis(eye).reshape(60, 60)
    assert torch.allclose(v_t @ v_t.T, torch.eye(60, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis.from_basis(basis.to_basis(eye)), eye, atol=1e-12)


@needs_fashion_mnist
def test_getting_started_first_sample_runs(tmp_path, monkeypatch):
    """The ten lines of Getting started, run as shown; they write first_samples.png."""
    import runpy

    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(CODE / "first_sample.py"))
    samples = namespace["samples"]
    assert samples.shape == (16, 1, 28, 28) and bool(torch.isfinite(samples).all())
    assert (tmp_path / "first_samples.png").stat().st_size > 0
