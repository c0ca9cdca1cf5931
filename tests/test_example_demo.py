"""examples/demo.py (``make demo``) end to end, shortened, on a Fashion-MNIST-format root of real photo crops."""

import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from lincorrupt.train import CheckpointError
from lincorrupt.train.lock import RunLockedError

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def write_idx_root(root: Path, n: int = 40) -> Path:
    """torchvision's FashionMNIST layout (raw idx files) holding n greyscale 28x28 crops of a real photograph."""
    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("L")
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(n):
        y, x = rng.integers(0, img.height - 84), rng.integers(0, img.width - 84)
        crops.append(np.asarray(img.crop((x, y, x + 84, y + 84)).resize((28, 28), Image.BILINEAR)))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        images = struct.pack(">IIII", 2051, n, 28, 28) + np.stack(crops).tobytes()
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(n))
    return root


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("lincorrupt_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_writes_its_pictures_and_summary(demo, tmp_path):
    out = tmp_path / "out"
    root = write_idx_root(out / "data")
    result = demo.main(["--out", str(out), "--data", str(root), "--steps", "3", "--sample-steps", "3"])
    for name in ("forward_process.png", "samples.png", "loss.png", "summary.md", "run/checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    assert result["steps"] == 3
    summary = (out / "summary.md").read_text()
    assert "3 steps of batch 32" in summary and "40 Fashion-MNIST training images" in summary
    assert "from data\n" in summary and str(tmp_path) not in summary.split("Continue training")[0]  # relative to --out
    assert Image.open(out / "samples.png").size == (484, 484)  # 8 x 8 images of 28 + 2 padding, + 2, drawn 2x2
    resumed = demo.main(["--out", str(out), "--data", str(root), "--steps", "4", "--sample-steps", "3", "--resume"])
    assert resumed["steps"] == 4 and "4 steps of batch 32, the last 1 in" in (out / "summary.md").read_text()


def test_a_second_make_demo_remakes_the_pictures_and_bad_steps_are_refused_before_any_work(demo, tmp_path, capsys,
                                                                                         monkeypatch):
    """`make demo` passes --resume once the run exists: without --steps it keeps the run's step (beyond the
    default) and makes the pictures again; --steps below the run's step, or 0, is refused before writing."""
    out = tmp_path / "out"
    root = write_idx_root(tmp_path / "data")
    monkeypatch.setattr(demo, "DEFAULT_STEPS", 2)
    assert demo.main(["--out", str(out), "--data", str(root), "--steps", "3", "--sample-steps", "2"])["steps"] == 3
    (out / "samples.png").unlink()
    assert demo.main(["--out", str(out), "--data", str(root), "--sample-steps", "2", "--resume"])["steps"] == 3
    assert (out / "samples.png").is_file()
    before = files(out) | files(out / "run")
    with pytest.raises(demo.DemoError, match=r"is at step 3, beyond --steps 2: pass --steps 3 or more"):
        demo.main(["--out", str(out), "--data", str(root), "--steps", "2", "--resume"])
    assert files(out) | files(out / "run") == before
    for steps in ("0", "-5", "many"):
        with pytest.raises(SystemExit) as stop:
            demo.main(["--out", str(tmp_path / "fresh"), "--data", str(root), "--steps", steps])
        assert stop.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()


def test_ctrl_c_while_sampling_writes_the_summary_and_reports_an_interruption(demo, tmp_path, monkeypatch):
    out = tmp_path / "out"
    root = write_idx_root(tmp_path / "data")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "sample_grid", interrupted)
    result = demo.main(["--out", str(out), "--data", str(root), "--steps", "1"])
    assert result["status"] == "interrupted" and result["signal"] == signal.SIGINT
    assert "samples.png not written; make it with --resume" in (out / "summary.md").read_text()
    assert (out / "loss.png").is_file() and not (out / "samples.png").exists()


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_run_without_resume_deletes_no_run(demo, tmp_path):
    """Neither a finished run (its checkpoint) nor a live one (its lock, before its first save) is removed."""
    out = tmp_path / "out"
    root = write_idx_root(tmp_path / "data")
    args = ["--out", str(out), "--data", str(root), "--steps", "1", "--sample-steps", "1"]
    demo.main(args)
    before = files(out / "run")
    with pytest.raises(CheckpointError, match="already holds a run .*--resume"):
        demo.main(args[:-4] + ["--steps", "2", "--sample-steps", "1"])  # a longer run, --resume forgotten
    assert files(out / "run") == before
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a run still in its first steps: its lock, nothing else yet
        starting = tmp_path / "starting"
        (starting / "run").mkdir(parents=True)
        (starting / "run" / ".lock").write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(RunLockedError, match=f"in use by pid {live.pid}"):
            demo.main(["--out", str(starting), "--data", str(root), "--steps", "1", "--sample-steps", "1"])
        assert files(starting / "run") == {".lock": (starting / "run" / ".lock").read_bytes()}
        (starting / "run" / "metrics.jsonl").write_text('{"step": 10, "loss": 0.5}\n')  # it has logged
        with pytest.raises(CheckpointError, match="metrics.jsonl of a run without a checkpoint"):
            demo.main(["--out", str(starting), "--data", str(root), "--steps", "1", "--sample-steps", "1"])
        assert len(files(starting / "run")) == 2
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow  # a subprocess
def test_an_interrupted_demo_saves_and_exits_with_128_plus_the_signal(tmp_path):
    root = write_idx_root(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(DEMO), "--out", str(out), "--data", str(root), "--steps", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(DEMO.parents[1]), "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "run" / "metrics.jsonl").is_file():  # training has begun: 10 steps logged
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    assert (out / "run" / "checkpoint.pt").is_file() and not (out / "samples.png").exists()
    proc = subprocess.run([sys.executable, str(DEMO), "--out", str(out), "--data", str(root)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(DEMO.parents[1])})
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "--resume" in proc.stderr


@pytest.mark.slow  # a subprocess
def test_resuming_with_fewer_steps_than_the_run_has_is_one_line(demo, tmp_path):
    root = write_idx_root(tmp_path / "data")
    out = tmp_path / "out"
    demo.main(["--out", str(out), "--data", str(root), "--steps", "2", "--sample-steps", "1"])
    proc = subprocess.run([sys.executable, str(DEMO), "--out", str(out), "--data", str(root), "--steps", "1",
                           "--resume"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(DEMO.parents[1])})
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "beyond --steps 1" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
