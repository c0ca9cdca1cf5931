"""The README's code runs as printed: the "define your own corruption" example and the "Use it" snippet."""

import re
from pathlib import Path

import torch

import lincorrupt as lc

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_defines_a_valid_corruption():
    text = README.read_text()
    match = re.search(r"<!-- readme-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its tested example"
    namespace = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    c, samples, loss = namespace["c"], namespace["samples"], namespace["loss"]
    assert samples.shape == (4, 3, 32, 32) and torch.isfinite(samples).all()
    assert torch.isfinite(loss)
    # the high frequencies really are noisier than the low ones at every time
    snr = c.snr(torch.tensor([0.5]))
    assert snr[0, 0, 0, 0] > snr[0, 0, -1, -1]


def test_readme_use_it_snippet_runs_as_pasted_after_make_demo(tmp_path, monkeypatch):
    """The "Use it" snippet runs in the repository's folder once `make demo` wrote out/demo/run: here a small model
    of the demo's kind (blurring diffusion at 1x28x28, x-prediction, data statistics fitted as the Trainer does)."""
    from lincorrupt.nn import UNet
    match = re.search(r"<!-- readme-use-it[^>]*-->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its Use it snippet"
    torch.manual_seed(0)
    net = UNet(image_size=28, in_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4)
    corruption = lc.BlurringDiffusion((1, 28, 28))
    corruption.fit_data_statistics(torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    (tmp_path / "out" / "demo" / "run").mkdir(parents=True)
    lc.DiffusionModel(net, corruption, "x").save(tmp_path / "out" / "demo" / "run" / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    assert namespace["samples"].shape == namespace["better"].shape == namespace["same"].shape == (16, 1, 28, 28)
    assert namespace["bpd"].shape == (16,) and torch.isfinite(namespace["bpd"]).all()
    assert torch.isfinite(namespace["loss"])


def _readme_benchmark_rows() -> list[str]:
    section = README.read_text().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|") and not line.startswith(("| what", "|---"))]


# A measured number: a decimal (5.02, 1.0000), a ratio (7.5x) or a percentage (0.32%, 93.37 %).
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?x|\d+(?:\.\d+)? ?%|\d+\.\d+)(?![\w.])")


def test_readme_benchmark_numbers_are_those_of_the_docs():
    """Every number in the README's benchmark table is on the Benchmarks or Results page (or the
    tables they include), so the two can never show different runs of the same benchmark."""
    docs = README.parent / "docs"
    tables = sorted((docs / "assets" / "quality").rglob("results.md"))  # the study's passes, earlier ones too
    pages = " ".join(p.read_text() for p in (docs / "benchmarks.md", docs / "results.md", *tables) if p.is_file())
    pages = " ".join(pages.split())
    rows = _readme_benchmark_rows()
    assert len(rows) >= 8, rows
    missing = []
    for row in rows:
        result = row.split("|")[2]  # the "result" column; "what" holds sizes, "command" flags
        for number in _NUMBER.findall(result):
            variants = {number, number.replace(" %", "%"), number.replace("%", " %").replace("  ", " ")}
            if not any(v in pages for v in variants):
                missing.append(f"{number} in: {result.strip()}")
    assert not missing, "README benchmark numbers that the Benchmarks/Results pages do not show:\n" + "\n".join(missing)


def test_the_number_pattern_finds_ratios_decimals_and_percentages():
    assert _NUMBER.findall("7.5x / 5.2x, 1.43x; 0.32%, 93.37 %, FID 5.02, 12 % better, 16 / 22") == [
        "7.5x", "5.2x", "1.43x", "0.32%", "93.37 %", "5.02", "12 %"]
