"""The README's "define your own corruption" example runs as printed."""

import re
from pathlib import Path

import torch

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
