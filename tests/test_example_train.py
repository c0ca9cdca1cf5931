"""examples/train_blurring_cifar10.py end to end on a tiny UNet and a folder of real photo crops."""

import json
import re
import signal
import time

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

import lincorrupt as lc
from helpers.example import SCRIPT, load_script, run_script
from lincorrupt.metrics import WEIGHTS_FILE
from lincorrupt.train import CheckpointError, load_checkpoint

TINY = ["--image-size", "16", "--ch", "16", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "8",
        "--groups", "8", "--batch-size", "4", "--num-workers", "0", "--sample-steps", "3", "--grid-size", "4",
        "--log-every", "1", "--warmup-steps", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def script():
    return load_script()


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
    straight = script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path / "straight"),
                                   "--steps", "4"])
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


def test_a_class_conditional_run_learns_the_folder_classes_and_samples_them_at_its_guidance(
        script, data_root, tmp_path, random_weights):
    args = TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path), "--class-conditional"]
    assert script.main(args + ["--steps", "2", "--guidance", "2"])["status"] == "done"
    model = lc.load(tmp_path)
    assert model.num_classes == 3  # the folder's class subfolders
    resumed = script.main(args + ["--steps", "3", "--resume", "--guidance", "3"])  # guidance is a sampling option
    assert resumed["step"] == 3 and resumed["config"]["guidance"] == 3
    with pytest.raises(CheckpointError, match="--label-dropout"):
        script.main(args + ["--steps", "4", "--resume", "--label-dropout", "0.3"])  # part of the recipe
    script.main(args + ["--sample-only", "--fid", "--fid-samples", "6", "--fid-batch", "3", "--fid-steps", "2",
                        "--fid-dims", "64", "--inception-weights", str(random_weights), "--guidance", "3"])
    record = json.loads((tmp_path / "fid.json").read_text())
    assert np.isfinite(record["fid"]) and record["guidance"] == 3


def test_guidance_without_a_class_conditional_model_is_refused(script, trained, data_root, tmp_path):
    with pytest.raises(ValueError, match="needs a class-conditional model: train one with --class-conditional"):
        script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path), "--guidance", "2"])
    with pytest.raises(ValueError, match="needs a class-conditional model"):  # the checkpoint's model decides
        script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(trained["out"]), "--sample-only",
                            "--guidance", "2"])
    assert not (tmp_path / "checkpoint.pt").exists()


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
    with pytest.raises(CheckpointError, match="--corruption 'ddpm' \\(the checkpoint's: 'blurring'\\)"):
        script.main(base + ["--data-root", str(data_root), "--resume", "--corruption", "ddpm"])
    with pytest.raises(CheckpointError, match=r"--channels 1 \(the checkpoint's: 3\)"):
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
    scaled = script.main(args + ["--out-dir", str(tmp_path / "scaled"), "--grad-accum", "2",
                                 "--checkpoint-activations"])
    assert scaled["status"] == "done" and len(scaled["losses"]) == 2
    np.testing.assert_allclose(scaled["losses"], plain["losses"], rtol=1e-5)
    config = load_checkpoint(tmp_path / "scaled" / "checkpoint.pt")["config"]
    assert config["grad_accum"] == 2 and config["checkpoint_activations"]


@pytest.mark.parametrize("flag, value, shown", [
    ("sigma-blur-max", "2", "2.0 (the checkpoint's: 20.0)"), ("min-scale", "0.01", "0.01 (the checkpoint's: 0.001)"),
    ("prediction", "x", "'x' (the checkpoint's: 'eps')"), ("lr", "1.0", "1.0 (the checkpoint's: 0.0002)"),
    ("ch", "8", "8 (the checkpoint's: 16)"), ("ch-mult", "1,1", "(1, 1) (the checkpoint's: (1, 2))"),
    ("ema-decay", "0.5", "0.5 (the checkpoint's: 0.9999)"), ("seed", "3", "3 (the checkpoint's: 0)"),
    ("ddpm-steps", "10", "10 (the checkpoint's: 1000)"),  # another corruption's setting is no setting of this run
])
def test_resume_and_sample_only_refuse_flags_that_contradict_the_checkpoint(script, trained, flag, value, shown):
    before = load_checkpoint(trained["out"] / "checkpoint.pt")
    for mode in ("--resume", "--sample-only"):
        with pytest.raises(CheckpointError, match=re.escape(f"--{flag} {shown}")):
            script.main(trained["args"] + ["--steps", "3", mode, f"--{flag}", value])
    assert load_checkpoint(trained["out"] / "checkpoint.pt")["step"] == before["step"]


@pytest.fixture(scope="module")
def trained(script, data_root, tmp_path_factory):
    """A blurring run of 2 steps, trained with the default flags but the tiny network."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = TINY + ["--data-root", str(data_root), "--out-dir", str(out)]
    return {"args": args, "out": out, "summary": script.main(args + ["--steps", "2"])}


def test_resume_rebuilds_from_the_checkpoint_and_records_the_config_it_used(script, trained, data_root):
    out = trained["out"]
    before = load_checkpoint(out / "checkpoint.pt")
    # only the flags that may change, everything else from the checkpoint (no --image-size 16: the default is 32)
    resumed = script.main(["--out-dir", str(out), "--data-root", str(data_root), "--resume", "--steps", "3",
                           "--log-every", "3", "--no-progress", "--device", "cpu",
                           "--num-workers", "0", "--sample-steps", "2", "--lr", "0.0002"])
    after = load_checkpoint(out / "checkpoint.pt")
    expected = {**before["config"], "steps": 3, "log_every": 3, "sample_steps": 2, "resume": True}
    assert after["config"] == expected == resumed["config"] and after["step"] == 3
    assert after["extra"]["model_args"] == before["extra"]["model_args"]
    assert before["extra"]["model_args"] == {
        "corruption": "blurring", "shape": [3, 16, 16], "prediction": "eps",
        "settings": {"sigma_blur_max": 20.0, "min_scale": 1e-3, "logsnr_min": -10.0, "logsnr_max": 10.0},
        "unet": {"image_size": 16, "in_channels": 3, "ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1,
                 "attn_resolutions": [8], "dropout": 0.1, "groups": 8, "num_classes": None}}
    summary = json.loads((out / "summary.json").read_text())["config"]
    assert summary == {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
    assert after["optimizer"]["param_groups"][0]["lr"] == 2e-4  # the recorded lr is the one Adam used (warm-up over)


def test_ihdm_samples_from_its_checkpoint_without_data(script, data_root, tmp_path):
    out = tmp_path / "ihdm"
    script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(out), "--steps", "1", "--corruption", "ihdm",
                        "--prior-images", "5"])
    state = load_checkpoint(out / "checkpoint.pt")
    u_x = state["diffusion_model"]["corruption_state"]["prior.u_x"]
    assert u_x.shape == (5, 3, 16, 16)
    sampled = script.main(["--out-dir", str(out), "--sample-only", "--data-root", str(tmp_path / "no-data-here"),
                           "--device", "cpu", "--no-progress"])
    assert sampled["corruption"] == "ihdm" and sampled["prediction"] == "x" and (out / "samples.png").is_file()
    # the rebuilt corruption holds the stored prior: its samples start from those images, not from N(0, I)
    corruption = lc.load(out).corruption
    assert isinstance(corruption.prior, lc.EmpiricalPrior) and torch.equal(corruption.prior.u_x, u_x)
    assert corruption.sigma == 0.01 and corruption.num_steps == 200 and corruption.sigma_blur_max == 24.0


def test_the_how_to_lists_exactly_the_flags_that_may_change_on_resume(script):
    text = (SCRIPT.parents[1] / "docs" / "how-to" / "train-cifar10.md").read_text()
    table = text[text.index("| what | flags |"):text.index("Any other flag")]
    assert {flag[2:].replace("-", "_") for flag in re.findall(r"`(--[a-z0-9-]+)`", table)} == script.RESUMABLE


def test_a_run_resumed_from_a_checkpoint_elsewhere_writes_where_out_dir_says(script, trained, data_root, tmp_path):
    source = trained["out"] / "checkpoint.pt"
    before = load_checkpoint(source)
    new = tmp_path / "continued"
    script.main(["--checkpoint", str(source), "--out-dir", str(new), "--resume", "--data-root", str(data_root),
                 "--steps", str(before["step"] + 1), "--no-progress", "--device", "cpu", "--num-workers", "0",
                 "--sample-steps", "2"])
    assert load_checkpoint(new / "checkpoint.pt")["step"] == before["step"] + 1
    assert load_checkpoint(new / "checkpoint.pt")["config"]["out_dir"] == str(new)
    assert load_checkpoint(source)["step"] == before["step"]  # the source run is left as it was
    assert lc.load(new).info["step"] == before["step"] + 1


def test_a_run_resumed_from_elsewhere_without_out_dir_writes_to_the_default_not_the_recorded_folder(
        script, trained, data_root, tmp_path, monkeypatch):
    """Without --out-dir the run goes to the flag's default (runs/<corruption> here), never back into the
    folder the checkpoint was trained in, whose checkpoint must stay as it was."""
    source = trained["out"] / "checkpoint.pt"
    before = load_checkpoint(source)
    monkeypatch.chdir(tmp_path)
    script.main(["--checkpoint", str(source), "--resume", "--data-root", str(data_root),
                 "--steps", str(before["step"] + 1), "--no-progress", "--device", "cpu", "--num-workers", "0",
                 "--sample-steps", "2"])
    written = load_checkpoint(tmp_path / "runs" / "blurring" / "checkpoint.pt")
    assert written["step"] == before["step"] + 1 and written["config"]["out_dir"] == "runs/blurring"
    assert load_checkpoint(source)["step"] == before["step"]
