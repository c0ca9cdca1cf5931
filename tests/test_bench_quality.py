"""benchmarks/bench_quality.py --tiny: the study's code end to end in seconds
(the numbers mean nothing at this size): training in thirds, evaluations, resuming, the report."""

import json

import pytest
import torch

from helpers.benchmarks import load_benchmark
from lincorrupt.data import DEBIAN_DIR


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_tiny_study_trains_evaluates_resumes_and_reports(tmp_path):
    module = load_benchmark("bench_quality")
    out, results = tmp_path / "runs", tmp_path / "results"
    # two worker processes: a headline run (three thirds) and Soft Diffusion (its fitted levels and prior)
    args = ["--tiny", "--runs", "blur17.5-v-s0,soft-x-s0", "--jobs", "2", "--out", str(out), "--results", str(results)]
    report = module.main(args)
    steps = module.TINY.steps
    evals = report["evaluations"]
    assert [e["step"] for e in evals["blur17.5-v-s0"]] == [steps, 2 * steps, 3 * steps]
    assert [e["step"] for e in evals["soft-x-s0"]] == [steps]
    first = evals["blur17.5-v-s0"][0]
    assert "raw" in first and "raw" not in evals["blur17.5-v-s0"][1]  # raw weights at the first evaluation only
    assert len(first["ema"]["spectrum_ratio"]) > 1 and set(first["wiener_ratio"]) == {"0.1", "0.15", "0.2", "0.3"}
    assert first["sampler"] == "/".join(map(str, module.TINY.sampler)) and first["commit"]
    table = (results / "results.md").read_text()
    assert "| blur17.5-v | v |" in table and "| soft-x | x |" in table and "training images (floor)" in table
    soft = evals["soft-x-s0"][0]
    assert set(soft["also"]) == {"momentum/uniform/20", "dpm++2m/uniform/20"}  # its own sampler beside the study's
    assert "| soft-x, sampled momentum/uniform/20 | x |" in table
    for figure in ("samples.png", "training.png"):
        assert (results / figure).stat().st_size > 0
    # an existing study is never overwritten without --resume; with it, what is done is not redone
    with pytest.raises(SystemExit):
        module.main(args)
    again = module.main([*args, "--resume"])
    assert again["evaluations"] == json.loads((results / "results.json").read_text())["evaluations"] == evals
    # the sampler sweep: the headline run at its last checkpoint, one row per sampler; the Soft run is not swept
    module.main([*args, "--resume", "--phase", "nfe"])
    swept = json.loads((out / "blur17.5-v-s0" / f"nfe{3 * steps}.json").read_text())
    assert list(swept["samplers"]) == ["/".join(map(str, s)) for s in module.TINY.nfe_sweep]
    assert not list((out / "soft-x-s0").glob("nfe*.json"))
    assert "| ancestral/uniform/3 |" in (results / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_more_samples_also_score_the_default_count_of_the_same_draws(tmp_path):
    module = load_benchmark("bench_quality")
    n, default = 40, module.TINY.samples
    report = module.main(["--tiny", "--samples", str(n), "--runs", "noblur-v-s0", "--out", str(tmp_path / "runs"),
                          "--results", str(tmp_path / "results")])
    for e in report["evaluations"]["noblur-v-s0"]:
        assert e["ema"]["samples"] == n and e["ema"]["first"]["samples"] == default
    assert report["floor"]["samples"] == n
    assert f"| FID ({n}) | FID (first {default}) |" in (tmp_path / "results" / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_weighting_study_trains_with_the_weighting_and_reports_the_ratio_after_the_last_budget(tmp_path):
    module = load_benchmark("bench_quality")
    out, results = tmp_path / "runs", tmp_path / "results"
    pair = module.WEIGHTED["min-snr5"]
    args = ["--tiny", "--last-only", "--runs", ",".join(f"{m}-s0" for m in pair), "--jobs", "1", "--out", str(out),
            "--results", str(results)]
    report = module.main(args)
    steps = module.TINY.steps
    for m in pair:
        (e,) = report["evaluations"][f"{m}-s0"]  # only after the last of its three budgets, EMA weights only
        assert e["step"] == 3 * steps and "raw" not in e
        config = torch.load(out / f"{m}-s0" / f"step{3 * steps}.pt", weights_only=False)["config"]
        assert (config["weighting"], config["weighting_options"]) == ("min-snr", {"gamma": 5.0})
    fids = [report["evaluations"][f"{m}-s0"][0]["ema"]["fid"] for m in pair]
    assert f"| min-snr5 | {pair[0]} / {pair[1]} | {3 * steps} | {fids[0]:.2f} " in (results / "results.md").read_text()
    assert f"| {fids[0] / fids[1]:.2f} |" in (results / "results.md").read_text()
    # the sweep covers the weighted runs, with the samplers asked for
    module.main([*args, "--resume", "--phase", "nfe", "--sweep", "ancestral/uniform/3"])
    for m in pair:
        swept = json.loads((out / f"{m}-s0" / f"nfe{3 * steps}.json").read_text())
        assert list(swept["samplers"]) == ["ancestral/uniform/3"]
    assert "| ancestral/uniform/3 " in (results / "results.md").read_text()


def test_too_few_samples_are_refused_before_any_work(tmp_path):
    module = load_benchmark("bench_quality")
    with pytest.raises(SystemExit):
        module.main(["--tiny", "--samples", "1", "--out", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_a_report_never_replaces_one_that_knows_more_evaluations(tmp_path):
    module = load_benchmark("bench_quality")
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.json").write_text('{"done": {"noblur-v-s0": [500]}}')
    with pytest.raises(SystemExit, match="noblur-v-s0 @ 500"):
        module.report(module.TINY, tmp_path / "empty", results, "test", 0.0, None)
    assert (results / "results.json").read_text() == '{"done": {"noblur-v-s0": [500]}}'
