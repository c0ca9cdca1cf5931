"""examples/train_blurring_cifar10.py end to end on a tiny UNet and a folder of real photo crops."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from lincorrupt.metrics import WEIGHTS_FILE
from lincorrupt.train import CheckpointError, load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_blurring_cifar10.py"
TINY = ["--image-size", "16", "--ch", "16", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "8",
        "--groups", "8", "--batch-size", "4", "--num-workers", "0", "--sample-steps", "3", "--grid-size", "4",
        "--log-every", "1", "--warmup-steps", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_blurring_cifar10", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A folder of class subfolders holding 12 real photo crops (matplotlib's Grace Hopper), 16x16 RGB PNG."""
    root = tmp_path_factory.mktemp("photos")
    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    rng = np.random.default_rng(0)
    for i in range(12):
        y, x = rng.integers(0, img.height - 64), rng.integers(0, img.width - 64)
        d = root / "train" / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        img.crop((x, y, x + 64, y + 64)).resize((16, 16), Image.BILINEAR).save(d / f"{i:02d}.png")
    return root


def test_train_checkpoint_resume_sample_fid(script, data_root, tmp_path, random_weights):
    args = TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path / "run")]
    first = script.main(args + ["--steps", "2"])
    assert first["status"] == "done" and first["step"] == 2 and (tmp_path / "run" / "samples.png").is_file()
    resumed = script.main(args + ["--steps", "4", "--resume"])
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2
    straight = script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path / "straight"), "--steps", "4"])
    assert first["losses"] + resumed["losses"] == straight["losses"]  # exact resume through the script
    fid = script.main(args + ["--sample-only", "--fid", "--fid-samples", "6", "--fid-batch", "3", "--fid-steps", "3",
                              "--fid-dims", "64", "--inception-weights", str(random_weights)])
    record = json.loads((tmp_path / "run" / "fid.json").read_text())
    assert record["fid"] == fid["fid"] and np.isfinite(fid["fid"]) and record["num_samples"] == 6
    assert record["step"] == 4 and json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 4


def test_quality_during_training(script, data_root, tmp_path, random_weights):
    """--eval-every logs FID/KID/precision/recall of the EMA samples (Inception with random weights, 64 features)."""
    script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path), "--steps", "2", "--eval-every", "1",
                        "--eval-samples", "5", "--eval-steps", "2", "--eval-features", "inception",
                        "--inception-weights", str(random_weights), "--fid-dims", "64"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2] and all(r["eval"] == "Inception (pytorch-fid)" for r in evals)
    assert all(np.isfinite([r["fid"], r["kid"], r["precision"], r["recall"]]).all() for r in evals)
    assert (tmp_path / "quality.png").is_file()


@pytest.mark.parametrize("corruption", ["ddpm", "ihdm"])
def test_baselines_train_and_sample(script, data_root, tmp_path, corruption):
    out = script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path), "--steps", "1",
                              "--corruption", corruption, "--sampler", "ddim"])
    assert out["status"] == "done" and out["prediction"] == {"ddpm": "eps", "ihdm": "x"}[corruption]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["corruption"] == {"ddpm": "DDPM", "ihdm": "IHDM"}[corruption]


def test_bad_input_is_named(script, data_root, tmp_path, monkeypatch):
    base = TINY + ["--steps", "1", "--out-dir", str(tmp_path / "a")]
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        script.main(base + ["--data-root", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match=r"are 16x16 with 3 channel\(s\), expected 32x32"):
        script.main(base + ["--data-root", str(data_root), "--image-size", "32"])
    with pytest.raises(ValueError, match=r"16x16 with 3 channel\(s\), expected 16x16 with 1 channel"):
        script.main(base + ["--data-root", str(data_root), "--channels", "1"])
    script.main(base + ["--data-root", str(data_root)])
    with pytest.raises(CheckpointError, match="already holds checkpoint.pt"):
        script.main(base + ["--data-root", str(data_root)])
    with pytest.raises(CheckpointError, match="trained with corruption BlurringDiffusion .* this run uses DDPM"):
        script.main(base + ["--data-root", str(data_root), "--resume", "--corruption", "ddpm"])
    with pytest.raises(CheckpointError, match=r"on shape \(3, 16, 16\).*this run uses BlurringDiffusion on shape \(1, 16, 16\)"):
        script.main(base + ["--data-root", str(data_root), "--resume", "--channels", "1", "--sample-only"])
    monkeypatch.delenv("LINCORRUPT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):  # before any training or sampling
        script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path / "b"), "--fid"])
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        script.main(base + ["--ch-mult", "1,x"])
    with pytest.raises(SystemExit):
        script.main(base + ["--sampler", "euler"])


def run_script(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_error_has_no_traceback(tmp_path):
    out, err = run_script(TINY + ["--data-root", str(tmp_path / "nowhere")]).communicate(timeout=120)
    assert err.startswith("error: data root") and "Traceback" not in err


def test_sigterm_saves_a_checkpoint_and_exits_as_interrupted(data_root, tmp_path):
    run = tmp_path / "run"
    proc = run_script(TINY + ["--data-root", str(data_root), "--out-dir", str(run), "--steps", "100000",
                              "--ckpt-every", "0"])
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # as a shell reports a process ended by SIGTERM
    assert "interrupted at step" in out
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] >= 2 and state["step"] == int(out.split("interrupted at step ")[1].split(":")[0])


def test_grad_accum_and_checkpoint_activations_flags_train_like_the_plain_run(script, data_root, tmp_path):
    args = TINY + ["--data-root", str(data_root), "--steps", "2", "--dropout", "0", "--sample-steps", "1"]
    plain = script.main(args + ["--out-dir", str(tmp_path / "plain")])
    scaled = script.main(args + ["--out-dir", str(tmp_path / "scaled"), "--grad-accum", "2", "--checkpoint-activations"])
    assert scaled["status"] == "done" and len(scaled["losses"]) == 2
    np.testing.assert_allclose(scaled["losses"], plain["losses"], rtol=1e-5)
    config = load_checkpoint(tmp_path / "scaled" / "checkpoint.pt")["config"]
    assert config["grad_accum"] == 2 and config["checkpoint_activations"]
