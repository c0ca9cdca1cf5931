"""Checkpoints: atomic, previous one kept, safe loading, clear errors, survive SIGKILL mid-write."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from lincorrupt.train import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from lincorrupt.train.checkpoint import check_compatible


def state(step):
    return {"step": step, "corruption": "BlurringDiffusion", "shape": [3, 8, 8], "w": torch.full((4,), float(step))}


def test_roundtrip_and_previous_kept(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    assert load_checkpoint(path)["step"] == 2
    prev = load_checkpoint(path.with_name("checkpoint.pt.prev"))
    assert prev["step"] == 1 and torch.equal(prev["w"], torch.ones(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]  # no temp left


def test_truncated_file_is_a_clear_error_and_previous_survives(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    assert load_checkpoint(path.with_name("checkpoint.pt.prev"))["step"] == 1


class Foreign:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("kind", ["random-bytes", "plain-dict", "pickled-object", "empty"])
def test_foreign_files_are_refused(tmp_path, kind):
    path = tmp_path / "foreign.pt"
    if kind == "random-bytes":
        path.write_bytes(os.urandom(1000))
    elif kind == "plain-dict":
        torch.save({"model": {"w": torch.zeros(2)}}, path)
    elif kind == "pickled-object":
        torch.save({"format": "lincorrupt-checkpoint-v1", "obj": Foreign()}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)


def test_missing_and_fallback_to_previous(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_checkpoint(tmp_path)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(state(1), path)
    assert find_checkpoint(tmp_path) == path
    save_checkpoint(state(2), path)
    path.unlink()  # a crash between the two renames of save_checkpoint
    assert load_checkpoint(find_checkpoint(tmp_path))["step"] == 1


def test_other_corruption_or_shape_is_refused():
    s = state(1)
    check_compatible(s, "BlurringDiffusion", (3, 8, 8))
    with pytest.raises(CheckpointError, match=r"trained with corruption BlurringDiffusion on shape \(3, 8, 8\).*DDPM"):
        check_compatible(s, "DDPM", (3, 8, 8))
    with pytest.raises(CheckpointError, match=r"this run uses BlurringDiffusion on shape \(1, 8, 8\)"):
        check_compatible(s, "BlurringDiffusion", (1, 8, 8))


WRITER = textwrap.dedent("""
    import sys, torch
    from lincorrupt.train import save_checkpoint
    path, step = sys.argv[1], 0
    # 24 MB: each write takes a while, so kills land mid-write
    big = torch.randn(6_000_000, generator=torch.Generator().manual_seed(0))
    while True:
        step += 1
        save_checkpoint({"step": step, "w": big + step}, path)
        print(step, flush=True)
""")


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "ckpt" / "checkpoint.pt"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    base = torch.randn(6_000_000, generator=torch.Generator().manual_seed(0))
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout.readline()  # at least one checkpoint exists
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(find_checkpoint(path.parent))
        assert state["step"] >= 1
        torch.testing.assert_close(state["w"], base + state["step"], rtol=0, atol=0)  # complete, not a mix
