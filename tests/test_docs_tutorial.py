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
            folders = (CODE, DOCS / "assets" / "demo", DOCS / "assets" / "quality", DOCS / "assets" / "guidance")
            source = next((d / file for d in folders if (d / file).is_file()), CODE / file)
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
    v, eye = basis.matrix((3, 4, 5)), torch.eye(60, dtype=torch.float64)
    assert v.shape == (60, 60) and torch.allclose(v.T @ v, eye, atol=1e-12)
    # to_basis is V^T (and so from_basis's inverse): it maps V's columns to the unit vectors
    assert torch.allclose(basis.to_basis(v.T.reshape(60, 3, 4, 5)).reshape(60, 60), eye, atol=1e-12)


@needs_fashion_mnist
def test_getting_started_first_sample_runs(tmp_path, monkeypatch):
    """The ten lines of Getting started, run as shown; they write first_samples.png."""
    import runpy

    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(CODE / "first_sample.py"))
    samples = namespace["samples"]
    assert samples.shape == (16, 1, 28, 28) and bool(torch.isfinite(samples).all())
    assert (tmp_path / "first_samples.png").stat().st_size > 0


@pytest.mark.slow
def test_train_from_python_runs(tmp_path):
    """The Train-from-Python page's loop, as shown, on one batch (32 images) in its folder layout."""
    from PIL import Image

    folder = tmp_path / "my-images" / "anything"
    folder.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for i in range(32):
        pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    page = _load("train_python")
    trainer, samples = page.train(str(tmp_path / "my-images"), str(tmp_path / "run"), steps=2)
    assert trainer.step == 2 and trainer.cfg.prediction == "v"
    assert samples.shape == (64, 3, 32, 32) and bool(torch.isfinite(samples).all())
    assert {"checkpoint.pt", "metrics.jsonl", "samples.png"} <= {p.name for p in (tmp_path / "run").iterdir()}


@needs_fashion_mnist
def test_conditional_how_to_trains_on_labels_and_samples_classes(tmp_path):
    page = _load("conditional")
    model = page.train(str(tmp_path / "run"), steps=2, train_images=64)
    assert model.num_classes == 10 and model.network.config["num_classes"] == 10
    x, accuracy = page.sample_classes(model, guidance=3.0, per_class=1)
    assert x.shape == (10, 1, 28, 28) and bool(torch.isfinite(x).all()) and 0 <= accuracy <= 1


def test_faq_code_runs_and_the_page_quotes_its_messages(tmp_path, monkeypatch, capsys):
    """Each error the FAQ explains is raised by the page's code, with the message the page quotes."""
    import runpy

    monkeypatch.chdir(tmp_path)  # the missing files are looked for relative to here
    namespace = runpy.run_path(str(CODE / "faq.py"))
    assert bool(torch.isfinite(namespace["samples"]).all()), "the x-prediction fix must sample finitely"
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == [
        "FloatingPointError", "InvalidCorruptionError", "FileNotFoundError", "FileNotFoundError"]
    page = (DOCS / "faq.md").read_text()
    for line in printed:
        assert line in page, f"docs/faq.md quotes an outdated message; the code now prints:\n{line}"


# Pages whose code is written inline (not included from docs/tutorial_code/): every Python block
# runs as shown, and every line it prints that the page quotes in a text block is today's output.
INLINE_CODE_PAGES = ["install.md", "limits.md"]


@pytest.mark.parametrize("name", INLINE_CODE_PAGES)
def test_inline_python_blocks_run(name, capsys):
    page = (DOCS / name).read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert blocks, f"docs/{name} has no Python block"
    for block in blocks:
        exec(compile(block, f"docs/{name}", "exec"), {"__name__": f"docs_{name}"})
    printed = capsys.readouterr().out.splitlines()
    blocks = re.findall(r"^```text\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    quoted = {line for text in blocks for line in text.splitlines()}
    for line in quoted:
        assert line in printed, (f"docs/{name} quotes output its code no longer prints:\n{line}\nit prints:\n"
                                 + "\n".join(printed))


@pytest.mark.parametrize("section", ["ihdm-eps", "invalid", "missing-files"])
def test_each_faq_section_runs_on_its_own(section, tmp_path, monkeypatch):
    """A reader copies one section of the FAQ, not the file: each runs in a fresh namespace."""
    monkeypatch.chdir(tmp_path)
    text = (CODE / "faq.py").read_text()
    code = text.split(f"# --8<-- [start:{section}]\n", 1)[1].split(f"# --8<-- [end:{section}]", 1)[0]
    exec(compile(code, f"faq.py:{section}", "exec"), {"__name__": "faq_section"})
