"""benchmarks/bench_quality.py --tiny: the study's code end to end in seconds
(the numbers mean nothing at this size)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lincorrupt.data import DEBIAN_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is missing")
def test_tiny_study_writes_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    # two worker processes: one model with the NFE curves, one with IHDM's empirical prior
    report = module.main(["--tiny", "--models", "blurring,ihdm", "--jobs", "2", "--out", str(tmp_path / "runs"),
                          "--results", str(tmp_path / "results")])
    assert set(report["models"]) == {"blurring", "ihdm"}
    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    assert saved["models"]["blurring"]["steps"] == module.TINY.steps
    curve = saved["models"]["blurring"]["nfe_curve"]
    assert [(p["method"], p["grid"], p["nfe"]) for p in curve] == [
        (method, grid, nfe) for method, grid in module.CURVE_SAMPLERS for nfe in module.TINY.curve_nfe[method]]
    table = (tmp_path / "results" / "results.md").read_text()
    assert "| blurring | v |" in table and "| ihdm | x |" in table and "training images (floor)" in table
    for figure in ("samples.png", "nfe.png", "training_blurring.png", "training_ihdm.png"):
        assert (tmp_path / "results" / figure).stat().st_size > 0
    # a finished model is not rerun
    again = module.main(["--tiny", "--models", "ihdm", "--out", str(tmp_path / "runs"),
                         "--results", str(tmp_path / "r2")])
    assert again["models"]["ihdm"] == saved["models"]["ihdm"]
