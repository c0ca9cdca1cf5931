"""benchmarks/bench_guidance.py --tiny: the guidance study's code end to end in seconds (the numbers mean
nothing at this size): conditional training, every guidance scale evaluated, resuming, the report."""

import json

import pytest

from helpers.benchmarks import load_benchmark
from lincorrupt.data import DEBIAN_DIR


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_tiny_guidance_study_trains_evaluates_every_scale_resumes_and_reports(tmp_path):
    module = load_benchmark("bench_guidance")
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ["--tiny", "--out", str(out), "--results", str(results)]
    report = module.main(args)
    budget = module.TINY
    steps = [k * budget.quality.steps for k in budget.thirds]
    evals = report["evaluations"]
    assert [(e["model"], e["step"]) for e in evals] == [(m, s) for m in module.MODELS for s in steps]
    for e in evals:
        assert sorted(map(float, e["scales"])) == sorted(budget.scales)
        assert all(0 <= m["label_accuracy"] <= 1 and 0 <= m["recall"] <= 1 for m in e["scales"].values())
    last = [e for e in evals if e["step"] == steps[-1]]
    assert all(set(e["also"]) == {"ancestral/uniform/3@3.0"} for e in last)  # ancestral beside the solver
    assert not any("also" in e for e in evals if e["step"] != steps[-1])
    table = (results / "guidance.md").read_text()
    assert f"| {module.MODELS[0]} @ {steps[-1]}, sampled ancestral/uniform/3 | 3 |" in table
    assert table.count(f"| {module.MODELS[0]} @ {steps[-1]} |") == len(budget.scales)
    assert (results / "guidance.png").stat().st_size > 0
    # an existing study is never overwritten without --resume; with it, nothing is redone
    with pytest.raises(SystemExit):
        module.main(args)
    again = module.main([*args, "--resume"])
    assert again["evaluations"] == json.loads((results / "guidance.json").read_text())["evaluations"] == evals
