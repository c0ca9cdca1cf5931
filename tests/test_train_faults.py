"""Training on a shared cluster: signals to the process group, failures mid-run, damaged checkpoints
and images, two runs in one folder, peers that stop. Tiny networks on CPU; subprocesses where a
signal or a second process is the point."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import lincorrupt as lc
from helpers.example import ROOT, load_script, run_script
from lincorrupt.data import ImageFolder, TensorImages, UnreadableImageError
from lincorrupt.nn import UNet
from lincorrupt.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from lincorrupt.train.checkpoint import load_latest, state_checksum
from lincorrupt.train.lock import RunLock, RunLockedError
from lincorrupt.train.trainer import NonFiniteStateError

SHAPE = (3, 8, 8)
TINY = ["--image-size", "8", "--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "4",
        "--groups", "4", "--batch-size", "4", "--sample-steps", "2", "--grid-size", "2", "--log-every", "1",
        "--warmup-steps", "2", "--no-progress", "--device", "cpu", "--sample-every", "0"]


def make_trainer(out_dir, steps, dataset=None, **kw):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               groups=4, dropout=0.2)  # dropout on: a resumed run must also restore the global RNG
    images = torch.randint(0, 256, (20, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=4, warmup_steps=3, ema_decay=0.9, num_workers=0, log_every=100,
                                sample_every=0, ckpt_every=0, progress=False, out_dir=str(out_dir)), **kw})
    return Trainer(net, lc.BlurringDiffusion(SHAPE), dataset or TensorImages(images, SHAPE), cfg)


def tensors(state: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in state["ema"].items()})
    for i, s in state["optimizer"]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in s.items()})
    return out


def assert_same_state(a: dict, b: dict):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a["step"] == b["step"]


def write_images(root: Path, n: int, size: int = 8, suffix: str = ".png") -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        d = root / "train" / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        paths.append(d / f"{i:03d}{suffix}")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1], quality=95)
    return paths


def scramble_body(path: Path) -> None:
    """Overwrite a PNG's compressed pixels (the IDAT chunk's data) with noise; the header stays intact."""
    data = bytearray(path.read_bytes())
    start, end = data.index(b"IDAT") + 4, data.index(b"IEND") - 8
    data[start:end] = np.random.default_rng(1).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Cut a JPEG halfway through its compressed pixels (after the start-of-scan marker): the header stays."""
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")
    path.write_bytes(data[: (scan + len(data)) // 2])


@pytest.fixture(scope="module")
def script():
    return load_script("train_blurring_cifar10_faults")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_images(root, 12)
    return root


def wait_for_records(proc, metrics: Path, n: int, timeout: float = 120):
    deadline = time.time() + timeout
    while not (metrics.is_file() and metrics.read_text().count("\n") >= n):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.1)


# ---------------------------------------------------------------- 1. signals and failures
@pytest.mark.slow  # subprocesses
def test_sigterm_to_the_process_group_with_workers_saves_and_resume_is_bit_exact(script, data_root, tmp_path):
    """What SLURM does: SIGTERM to every process of the job, the DataLoader workers included."""
    args = TINY + ["--data-root", str(data_root), "--num-workers", "2", "--ckpt-every", "0"]
    proc = run_script(args + ["--out-dir", str(tmp_path / "run"), "--steps", "100000"], start_new_session=True)
    wait_for_records(proc, tmp_path / "run" / "metrics.jsonl", 3)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "is killed by signal" not in err and "interrupted at step" in out
    stopped = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"]
    assert stopped >= 3
    resumed = script.main(args + ["--out-dir", str(tmp_path / "run"), "--steps", str(stopped + 2), "--resume"])
    straight = script.main(args + ["--out-dir", str(tmp_path / "straight"), "--steps", str(stopped + 2)])
    assert resumed["losses"] == straight["losses"][stopped:]
    assert_same_state(load_checkpoint(tmp_path / "run" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "straight" / "checkpoint.pt"))


def test_an_exception_in_the_loop_saves_the_last_completed_step_and_resume_is_exact(tmp_path):
    full = make_trainer(tmp_path / "full", 6)
    full.fit()
    run = make_trainer(tmp_path / "run", 6)
    loss_fn = run.loss

    def fails_at_step_3(*args, **kw):
        loss = loss_fn(*args, **kw)  # the forward pass has drawn its dropout masks from the global RNG
        if run.step == 3:
            raise RuntimeError("DataLoader worker (pid 1234) is killed by signal: Terminated.")
        return loss

    run.loss = fails_at_step_3
    with pytest.raises(RuntimeError, match="killed by signal"):
        run.fit()
    resumed = make_trainer(tmp_path / "run", 6)
    resumed.resume(tmp_path / "run" / "checkpoint.pt")
    assert resumed.step == 3
    resumed.fit()
    assert run.losses + resumed.losses == full.losses
    assert_same_state(resumed.state_dict(), full.state_dict())
    assert not (tmp_path / "run" / ".lock").exists()  # released on the way out


def test_a_failure_inside_the_update_saves_nothing(tmp_path):
    t = make_trainer(tmp_path, 6, ckpt_every=2)
    update = t.ema.update

    def fails_at_step_3(model, step):
        if t.step == 2:
            raise MemoryError("out of memory")
        update(model, step)

    t.ema.update = fails_at_step_3  # the optimiser has stepped, the EMA has not: not a consistent state
    with pytest.raises(MemoryError):
        t.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    t = make_trainer(tmp_path, 8, ckpt_every=1, log_every=100)  # no log step to catch it first
    loss_fn = t.loss
    t.loss = lambda *a, **kw: loss_fn(*a, **kw) * (float("nan") if t.step == 2 else 1.0)
    with pytest.raises(NonFiniteStateError, match="at step 3 holds NaN or infinity"):
        t.fit()
    assert not all(torch.isfinite(p).all() for p in t.model.parameters())  # the weights did become NaN
    for name, step in (("checkpoint.pt", 2), ("checkpoint.pt.prev", 1)):
        state = load_checkpoint(tmp_path / name)
        assert state["step"] == step and all(torch.isfinite(v).all() for v in tensors(state).values())


@pytest.mark.slow  # subprocesses
def test_interrupted_script_exit_code_is_128_plus_the_signal(data_root, tmp_path):
    proc = run_script(TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(tmp_path),
                              "--steps", "100000"])
    wait_for_records(proc, tmp_path / "metrics.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err


# ---------------------------------------------------------------- 4. damaged images
@pytest.fixture
def damaged(tmp_path):
    """Six images; the files sorted, the second has a good header and a scrambled body (PNG), the fifth is
    a truncated JPEG. Returns the folder and the sorted files."""
    paths = write_images(tmp_path, 6)
    files = sorted(paths)
    scramble_body(files[1])
    jpg = files[4].with_suffix(".jpg")
    Image.open(files[4]).save(jpg, quality=95)
    files[4].unlink()
    files[4] = jpg
    truncate(jpg)
    for p in (files[1], files[4]):
        with Image.open(p) as img:  # the headers still read
            assert img.size == (8, 8)
    assert sorted(files) == files
    return tmp_path / "train", files


def test_a_damaged_image_is_named_even_from_a_worker(damaged):
    root, files = damaged
    ds = ImageFolder(root, SHAPE)
    assert ds.files == files
    for i in (1, 4):
        with pytest.raises(UnreadableImageError, match=f"cannot decode image {files[i]}"):
            ds[i]
    batches = DataLoader(ds, batch_size=2, num_workers=1)
    with pytest.raises(UnreadableImageError, match=str(files[1])):
        list(batches)


def test_skip_unreadable_replaces_with_the_next_readable_image_and_counts_across_workers(damaged):
    root, files = damaged
    ds = ImageFolder(root, SHAPE, skip_unreadable=True)
    readable = {i: np.asarray(Image.open(files[i]).convert("RGB")) for i in (0, 2, 3, 5)}
    batch = next(iter(DataLoader(ds, batch_size=6, num_workers=2)))
    for got, k in zip(batch, [0, 2, 2, 3, 5, 5]):  # 1 -> 2, 4 -> 5
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), readable[k])
    assert ds.unreadable_count() == 2


def test_verify_lists_every_unreadable_file(damaged):
    root, files = damaged
    assert ImageFolder(root, SHAPE).verify() == [files[1], files[4]]


@pytest.mark.slow  # a DataLoader worker
def test_a_damaged_image_in_training_saves_first_and_names_the_file(tmp_path):
    files = sorted(write_images(tmp_path, 8))
    t = make_trainer(tmp_path / "run", 20, dataset=ImageFolder(tmp_path / "train", SHAPE), num_workers=1,
                     prefetch_factor=1, batch_size=2)
    loss_fn = t.loss

    def damage_all_after_step_2(*args, **kw):
        if t.step == 2:
            for f in files:
                scramble_body(f)
        return loss_fn(*args, **kw)

    t.loss = damage_all_after_step_2
    with pytest.raises(UnreadableImageError, match="cannot decode image .*/train/class"):
        t.fit()
    assert t.step >= 2 and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == t.step


def test_skip_unreadable_in_training_logs_the_count(damaged, tmp_path):
    root, files = damaged
    t = make_trainer(tmp_path / "run", 6, dataset=ImageFolder(root, SHAPE, skip_unreadable=True), num_workers=1,
                     batch_size=2, log_every=6)
    assert t.fit() == "done"
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["unreadable_images"] == 2


def test_verify_data_flag_lists_the_files_before_training(script, damaged, tmp_path):
    root, paths = damaged
    args = TINY + ["--data-root", str(root.parent), "--num-workers", "0", "--steps", "2", "--verify-data"]
    with pytest.raises(ValueError, match=f"2 of 6 images cannot be decoded:\n  {paths[1]}\n  {paths[4]}"):
        script.main(args + ["--out-dir", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    assert script.main(args + ["--out-dir", str(tmp_path / "b"), "--skip-unreadable"])["status"] == "done"


# ---------------------------------------------------------------- 6. checksums
def flip_tensor_bytes(path: Path, n: int = 400) -> None:
    """Flip n bytes inside the largest tensor record of a torch.save zip (stored, not compressed)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset  # the local file header: signature, ..., name length at 26, extra length at 28
    assert data[local:local + 4] == b"PK\x03\x04"
    name_length = int.from_bytes(data[local + 26:local + 28], "little")
    extra_length = int.from_bytes(data[local + 28:local + 30], "little")
    start = local + 30 + name_length + extra_length
    for k in np.random.default_rng(0).choice(info.file_size, min(n, info.file_size), replace=False):
        data[start + int(k)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_detected_and_the_previous_checkpoint_is_used(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)
    save_checkpoint({"step": 2, "w": torch.arange(1000.0) * 2}, path)
    flip_tensor_bytes(path)
    raw = torch.load(path, weights_only=True)  # torch itself loads it: only the checksum can tell
    assert not torch.equal(raw["w"], torch.arange(1000.0) * 2)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is damaged"):
        load_checkpoint(path)
    used, state = load_latest(tmp_path)
    assert used == tmp_path / "checkpoint.pt.prev" and state["step"] == 1
    assert f"checkpoint {path} is damaged" in capsys.readouterr().err
    flip_tensor_bytes(used)
    with pytest.raises(CheckpointError,
                       match="no sound checkpoint.*checkpoint.pt is damaged.*checkpoint.pt.prev is damaged"):
        load_latest(tmp_path)


def test_a_checkpoint_from_before_checksums_loads_with_a_warning(tmp_path, capsys):
    from lincorrupt.train.checkpoint import FORMAT
    torch.save({"format": FORMAT, "step": 7, "w": torch.ones(3)}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 7
    assert "has no checksum" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_checksum_changes_with_any_element_and_not_with_key_order(dtype):
    base = {"step": 3, "net": {"a": torch.zeros(5, 3).to(dtype), "b": torch.ones(2).to(dtype)}, "rng": [torch.zeros(4)]}
    same = {"rng": [torch.zeros(4)], "net": {"b": torch.ones(2).to(dtype), "a": torch.zeros(5, 3).to(dtype)}, "step": 3}
    assert state_checksum(base) == state_checksum(same)
    for i in range(15):
        changed = {**base, "net": {**base["net"], "a": base["net"]["a"].clone()}}
        changed["net"]["a"].view(-1)[i] = 1
        assert state_checksum(changed) != state_checksum(base)
    assert state_checksum({**base, "step": 4}) != state_checksum(base)
    reshaped = {**base, "net": {**base["net"], "a": base["net"]["a"].reshape(3, 5)}}  # same bytes, other shape
    assert state_checksum(reshaped) != state_checksum(base)


def test_checkpoint_missing_an_entry_is_named(tmp_path):
    t = make_trainer(tmp_path, 1)
    state = t.state_dict()
    del state["ema"]
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="lacks 'ema'"):
        make_trainer(tmp_path, 1).resume(tmp_path / "checkpoint.pt")


def test_script_names_a_missing_entry(script, data_root, tmp_path):
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(tmp_path)]
    script.main(args + ["--steps", "1"])
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["extra"], state["checksum"], state["format"]
    (tmp_path / "checkpoint.pt.prev").unlink(missing_ok=True)
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    for mode in ("--resume", "--sample-only"):
        with pytest.raises(CheckpointError, match="lacks 'extra'"):
            script.main(args + ["--steps", "2", mode])


# ---------------------------------------------------------------- 7. one run per folder
HOLD = textwrap.dedent("""
    import sys, time
    from lincorrupt.train.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_locked_folder_is_refused_and_a_dead_owner_is_recognised(tmp_path):
    owner = hold_lock(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"in use by pid {owner.pid} on this host"):
            make_trainer(tmp_path, 2).fit()
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        owner.kill()  # SIGKILL: the lock file stays behind, stale
        owner.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == owner.pid
    assert make_trainer(tmp_path, 2).fit() == "done"
    assert not (tmp_path / ".lock").exists()


def test_lock_of_another_host_names_it_and_the_lock_is_exclusive_within_a_process(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "node-17", "time": 0}))
    with pytest.raises(RunLockedError, match="pid 1 on host node-17"):
        RunLock(tmp_path).acquire()
    (tmp_path / ".lock").unlink()
    with RunLock(tmp_path):
        owner = json.loads((tmp_path / ".lock").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def write_lock(folder: Path, **owner) -> None:
    (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "time": 0, **owner}))


def proc_start(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, read as proc(5) describes it (the name in field 2 is in parentheses)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_a_lock_naming_this_pid_from_an_earlier_process_is_stale(tmp_path):
    """A restarted container: the new process has the pid of the killed one, whose lock is still there."""
    for owner in ({"pid": os.getpid()}, {"pid": os.getpid(), "start": 1, "boot": "an-earlier-boot"}):
        write_lock(tmp_path, **owner)
        assert make_trainer(tmp_path, 1).fit() == "done"
        assert not (tmp_path / ".lock").exists()
        for name in ("checkpoint.pt", "checkpoint.pt.prev", "metrics.jsonl"):
            (tmp_path / name).unlink(missing_ok=True)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="start times come from /proc")
def test_a_live_pid_that_started_after_the_lock_was_written_is_not_its_owner(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, pid=other.pid, start=proc_start(other.pid) - 1)  # the pid's earlier process
        with RunLock(tmp_path):
            owner = json.loads((tmp_path / ".lock").read_text())
        assert owner["pid"] == os.getpid() and owner["start"] == proc_start(os.getpid())
        assert owner["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        write_lock(tmp_path, pid=other.pid, start=proc_start(other.pid), boot=owner["boot"])  # it is the owner
        with pytest.raises(RunLockedError, match=f"in use by pid {other.pid} on this host"):
            RunLock(tmp_path).acquire()
        write_lock(tmp_path, pid=other.pid, start=proc_start(other.pid), boot="an-earlier-boot")
        with RunLock(tmp_path):  # a lock from before a reboot: every process of that boot is gone
            pass
    finally:
        other.kill()
        other.wait()


def test_a_fresh_run_refuses_a_folder_where_a_run_finished_after_it_was_set_up(tmp_path):
    """The race of two fresh runs: the second passed every check before the first finished; under the lock it
    finds the first one's checkpoint and overwrites nothing."""
    late = make_trainer(tmp_path, 3)
    make_trainer(tmp_path, 2, ckpt_every=1).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"checkpoint.pt", "checkpoint.pt.prev", "metrics.jsonl"} <= before.keys()
    with pytest.raises(CheckpointError, match=r"already holds checkpoint.pt and checkpoint.pt.prev .*resume"):
        late.fit()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    late.resume(tmp_path / "checkpoint.pt")  # resuming it is what the message asks for
    assert late.fit() == "done" and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_the_script_checks_again_under_the_lock(script, data_root, tmp_path, monkeypatch):
    """The script's early check saw an empty folder; a run finished in between: fit refuses it."""
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(tmp_path), "--steps", "1"]
    script.main(args)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(script, "run_checkpoints", lambda folder: [])
    with pytest.raises(CheckpointError, match="already holds checkpoint.pt .*resume"):
        script.main(args)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.slow  # subprocesses
def test_two_script_runs_into_one_folder(data_root, tmp_path):
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(tmp_path)]
    first = run_script(args + ["--steps", "100000"])
    wait_for_records(first, tmp_path / "metrics.jsonl", 1)
    second = run_script(args + ["--steps", "2"])
    _, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert second.returncode == 1 and err.startswith("error: ") and f"in use by pid {first.pid}" in err


# ---------------------------------------------------------------- 8. smaller ones
def test_partial_saves_are_removed(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    partial = tmp_path / ".checkpoint.pt.x8k2.tmp"
    partial.write_bytes(b"half a checkpoint")
    make_trainer(tmp_path, 1).fit()
    assert not partial.exists() and sorted(p.name for p in tmp_path.glob(".*")) == []


def test_resume_with_steps_below_the_checkpoint_is_refused_and_keeps_prev(tmp_path):
    make_trainer(tmp_path, 4, ckpt_every=2).fit()
    before = {n: (tmp_path / n).read_bytes() for n in ("checkpoint.pt", "checkpoint.pt.prev")}
    for steps in (3, 4):
        t = make_trainer(tmp_path, steps)
        t.resume(tmp_path / "checkpoint.pt")
        if steps < 4:
            with pytest.raises(ValueError, match="checkpoint is at step 4, beyond steps=3"):
                t.fit()
        else:
            assert t.fit() == "done"
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_a_surviving_prev_blocks_a_fresh_run(script, data_root, tmp_path):
    make_trainer(tmp_path, 2, ckpt_every=1).fit()
    (tmp_path / "checkpoint.pt").unlink()  # a crash between the two renames leaves only .prev
    with pytest.raises(CheckpointError, match="already holds checkpoint.pt.prev"):
        script.main(TINY + ["--data-root", str(data_root), "--out-dir", str(tmp_path), "--steps", "2"])


def test_sample_only_into_a_new_folder(script, data_root, tmp_path):
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0"]
    script.main(args + ["--out-dir", str(tmp_path / "run"), "--steps", "1"])
    script.main(args + ["--out-dir", str(tmp_path / "new" / "samples"), "--sample-only",
                        "--checkpoint", str(tmp_path / "run" / "checkpoint.pt")])
    assert (tmp_path / "new" / "samples" / "samples.png").is_file()


def test_sample_only_keeps_the_training_summary_and_names_a_checkpoint_it_did_not_write(script, data_root, tmp_path):
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(tmp_path / "run")]
    script.main(args + ["--steps", "1"])
    trained = (tmp_path / "run" / "summary.json").read_text()
    script.main(args + ["--sample-only"])
    assert (tmp_path / "run" / "summary.json").read_text() == trained and json.loads(trained)["status"] == "done"
    assert json.loads((tmp_path / "run" / "sample_summary.json").read_text())["config"]["sample_only"] is True
    make_trainer(tmp_path / "other", 1).fit()  # a Trainer run of another script (the demo's, say): no model_args
    with pytest.raises(CheckpointError, match=r"no model_args: this script did not write it .*`lincorrupt sample "):
        script.main(args + ["--sample-only", "--checkpoint", str(tmp_path / "other" / "checkpoint.pt")])


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("where", ["a file", "a read-only folder"])
def test_an_out_dir_that_cannot_be_written_is_one_error_line(data_root, tmp_path, where):
    out = tmp_path / "out"
    if where == "a file":
        out.write_text("not a folder")
        out = out / "run"
    else:
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):  # root writes anyway
            pytest.skip("this user can write into read-only folders")
        out = out / "run"
    proc = run_script(TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(out), "--steps",
                              "1"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert str(out.parent) in err


@pytest.mark.parametrize("problem, message", [
    ("weights", "cannot read Inception weights"),
    ("dims", "invalid choice: 100"),
    ("samples", "FID needs at least 2 samples"),
    ("cache", "FID reference statistics .* cannot be read"),
])
def test_fid_problems_surface_before_training(script, data_root, tmp_path, random_weights, capsys, problem, message):
    weights = random_weights
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(tmp_path / "run"), "--steps",
                   "2", "--fid", "--fid-samples", "4", "--fid-dims", "64"]
    if problem == "weights":
        weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
        weights.write_bytes(random_weights.read_bytes()[:4096])
    if problem == "dims":
        args += ["--fid-dims", "100"]
    if problem == "samples":
        args += ["--fid-samples", "1"]
    if problem == "cache":
        cache = tmp_path / "ref.npz"
        np.savez(cache, mu=np.zeros(64), sigma=np.eye(64), n=12)
        cache.write_bytes(cache.read_bytes()[:200])
        args += ["--fid-stats", str(cache)]
    if problem == "dims":  # refused by the flag parser, naming the flag and its choices
        with pytest.raises(SystemExit):
            script.main(args + ["--inception-weights", str(weights)])
        assert message in capsys.readouterr().err
    else:
        with pytest.raises(ValueError, match=message):
            script.main(args + ["--inception-weights", str(weights)])
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow  # subprocesses
def test_a_stopped_peer_fails_init_within_the_timeout():
    code = textwrap.dedent("""
        import time
        from lincorrupt.train.distributed import init_distributed
        start = time.time()
        try:
            init_distributed("cpu", timeout=2)
        except Exception as e:
            print(f"failed after {time.time() - start:.0f}s: {type(e).__name__}")
    """)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("failed after"), out
    assert int(out.split()[2].rstrip("s:")) < 30


# ---------------------------------------------------------------- 9. no save, resume or datum loses or hides work
SLOW_SAVE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import lincorrupt.train.trainer as trainer_module
    from helpers.training import make_trainer

    save_checkpoint = trainer_module.save_checkpoint

    def slow_save(state, path):  # says when it starts, then takes long enough for a signal to arrive
        Path(path).with_name("saving").touch()
        time.sleep(3)
        return save_checkpoint(state, path)

    trainer_module.save_checkpoint = slow_save
    t = make_trainer(sys.argv[1], 2)
    print(t.fit(), t.step, flush=True)
""")


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_save_lets_the_save_finish(tmp_path, signum):
    """ckpt_every=0: the only save is the last one; the signal arrives while it writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(tmp_path), str(ROOT / "tests")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "saving").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["interrupted", "2"]  # the steps are done; the caller is told to stop
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_a_stale_resume_does_not_overwrite_the_newer_checkpoints_of_another_run(tmp_path):
    """A resumes step 8; B resumes the same folder, trains to 24 and exits; then A's fit must not write."""
    make_trainer(tmp_path, 8, ckpt_every=4).fit()
    a = make_trainer(tmp_path, 16, ckpt_every=4)
    a.resume(tmp_path / "checkpoint.pt")
    b = make_trainer(tmp_path, 24, ckpt_every=4)
    b.resume(tmp_path / "checkpoint.pt")
    assert b.fit() == "done"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is at step 24, beyond step 8 .* resume again"):
        a.fit()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not (tmp_path / ".lock").exists()
    again = make_trainer(tmp_path, 28)
    again.resume(tmp_path / "checkpoint.pt")
    assert again.step == 24 and again.fit() == "done"


def test_a_resume_from_prev_past_a_damaged_checkpoint_still_trains(tmp_path):
    """The newest file is damaged (its recorded step is newer): it is no newer run's work."""
    make_trainer(tmp_path, 4, ckpt_every=2).fit()
    flip_tensor_bytes(tmp_path / "checkpoint.pt")
    t = make_trainer(tmp_path, 6)
    t.resume(tmp_path)
    assert t.step == 2 and t.fit() == "done"
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6


def test_resume_takes_a_run_folder_and_falls_back_to_prev(tmp_path):
    make_trainer(tmp_path, 4, ckpt_every=2).fit()
    t = make_trainer(tmp_path, 4)
    t.resume(tmp_path)  # the run folder, as the docs write it
    assert t.step == 4
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:1000])  # torn
    for path in (tmp_path, tmp_path / "checkpoint.pt"):
        t = make_trainer(tmp_path, 4)
        t.resume(path)
        assert t.step == 2
    (tmp_path / "checkpoint.pt").unlink()  # a kill between the two renames
    t = make_trainer(tmp_path, 4)
    t.resume(tmp_path)
    assert t.step == 2


class FloatImages(torch.utils.data.Dataset):
    """torch.rand images: floats in [0, 1), not the uint8 in [0, 255] a Trainer reads."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(SHAPE, generator=torch.Generator().manual_seed(i))


def test_float_images_are_refused_naming_their_range(tmp_path):
    with pytest.raises(ValueError, match=r"float32 .*values from 0\.0\d* to 0\.9\d*.*uint8"):
        make_trainer(tmp_path, 2, dataset=FloatImages())
    with pytest.raises(ValueError, match=r"float32 .*values from 0\.0\d* to 0\.9\d*.*uint8"):
        lc.data.to_model_range(torch.rand(2, *SHAPE))
    t = make_trainer(tmp_path, 2)
    t.dataset = FloatImages()  # past the constructor's look at the data: refused at the first batch
    with pytest.raises(ValueError, match=r"float32 .*values from 0\.0\d* to 0\.9\d*.*uint8"):
        t.fit()
    assert not (tmp_path / "checkpoint.pt").exists()


def metric_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_run_resumed_after_a_kill_logs_each_step_once(tmp_path):
    """Killed at step 6 with its checkpoint at step 4: the records of steps 5 and 6 are written again, once."""
    evaluator = lambda trainer: {"score": float(trainer.step)}  # noqa: E731
    first = make_trainer(tmp_path, 4, log_every=1, eval_every=2)
    first.evaluator = evaluator
    first.fit()
    at_4 = (tmp_path / "checkpoint.pt").read_bytes()
    further = make_trainer(tmp_path, 6, log_every=1, eval_every=2)
    further.evaluator = evaluator
    further.resume(tmp_path)
    further.fit()
    (tmp_path / "checkpoint.pt").write_bytes(at_4)  # as if SIGKILLed after logging step 6, before saving it
    (tmp_path / "checkpoint.pt.prev").unlink()
    resumed = make_trainer(tmp_path, 6, log_every=1, eval_every=2)
    resumed.evaluator = evaluator
    resumed.resume(tmp_path)
    resumed.fit()
    records = metric_records(tmp_path)
    losses = [r for r in records if "loss" in r]
    evaluations = [r for r in records if "score" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evaluations] == [2, 4, 6]
    assert [r["loss"] for r in losses] == pytest.approx(first.losses + resumed.losses, rel=1e-6)


def test_each_loss_record_says_how_many_steps_it_averages(tmp_path):
    """SIGTERM at step 3 (log_every 2): its record averages step 3; the first after the resume step 4 alone."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    run = make_trainer(tmp_path, 7, log_every=2)
    loss_fn = run.loss

    def loss_then_sigterm(*args, **kw):
        if run.step == 2:
            signal.raise_signal(signal.SIGTERM)
        return loss_fn(*args, **kw)

    run.loss = loss_then_sigterm
    assert run.fit() == "interrupted"
    resumed = make_trainer(tmp_path, 7, log_every=2)
    resumed.resume(tmp_path)
    resumed.fit()
    per_step = run.losses + resumed.losses
    records = metric_records(tmp_path)
    assert [(r["step"], r["loss_steps"]) for r in records] == [(2, 2), (3, 1), (4, 1), (6, 2), (7, 1)]
    for r in records:
        assert r["loss"] == pytest.approx(np.mean(per_step[r["step"] - r["loss_steps"]:r["step"]]), rel=1e-6)


@pytest.mark.parametrize("ckpt_every", [0, 1])
def test_a_diverging_run_names_a_checkpoint_only_where_one_exists(tmp_path, ckpt_every):
    t = make_trainer(tmp_path, 20, lr=1e6, warmup_steps=0, log_every=1, ckpt_every=ckpt_every)
    with pytest.raises(FloatingPointError) as info:
        t.fit()
    message = str(info.value)
    if (tmp_path / "checkpoint.pt").exists():
        step = load_checkpoint(tmp_path / "checkpoint.pt")["step"]
        assert f"checkpoint.pt (step {step})" in message and "resume from it" in message
    else:
        assert "no checkpoint" in message and "last checkpoint" not in message and "resume" not in message


def test_the_script_resumes_a_run_whose_folder_name_holds_braces(script, data_root, tmp_path):
    out = tmp_path / "run{x}"  # braces other than {corruption} are kept as they are, when started and resumed
    args = TINY + ["--data-root", str(data_root), "--num-workers", "0", "--out-dir", str(out)]
    script.main(args + ["--steps", "1"])
    assert load_checkpoint(out / "checkpoint.pt")["config"]["out_dir"] == str(out)
    summary = script.main(args + ["--steps", "2", "--resume"])
    assert summary["step"] == 2 and summary["out_dir"] == str(out)


def test_a_non_finite_state_names_an_earlier_checkpoint_only_where_one_exists(tmp_path):
    from lincorrupt.train.trainer import check_finite
    state = {"model": {"w": torch.tensor([float("nan")])}, "ema": {}, "optimizer": {"state": {}}}
    with pytest.raises(NonFiniteStateError, match="no earlier checkpoint exists at .*: start again") as info:
        check_finite(state, 1, tmp_path / "checkpoint.pt")
    assert "resume" not in str(info.value)
    (tmp_path / "checkpoint.pt").write_bytes(b"an earlier step")
    with pytest.raises(NonFiniteStateError, match="checkpoint.pt still holds an earlier, finite step: resume from it"):
        check_finite(state, 1, tmp_path / "checkpoint.pt")


class FailingImages(torch.utils.data.Dataset):
    """Images whose item 6 cannot be loaded once ``broken`` (in the DataLoader worker)."""

    broken = False

    def __len__(self):
        return 20

    def __getitem__(self, i):
        if i == 6 and self.broken:
            raise OSError("image 6 cannot be read")
        return torch.full(SHAPE, i, dtype=torch.uint8)


@pytest.mark.slow  # DataLoader workers
@pytest.mark.parametrize("where", ["in the loop", "in a worker"])
def test_a_failed_run_stops_its_data_workers(tmp_path, where):
    """The workers ignore SIGTERM (the process group's signal is for the loop), so one left running after a failed
    fit would block the host's exit for ever (multiprocessing terminates with SIGTERM, then joins)."""
    import multiprocessing
    before = set(multiprocessing.active_children())
    t = make_trainer(tmp_path, 6, num_workers=1, dataset=FailingImages() if where == "in a worker" else None)
    loss_fn = t.loss

    def fails_at_step_2(*args, **kw):
        if t.step == 2:
            raise OSError("image 6 cannot be read")
        return loss_fn(*args, **kw)

    if where == "in the loop":
        t.loss = fails_at_step_2
    else:
        t.dataset.broken = True  # after the Trainer's first look at the data
    with pytest.raises(OSError, match="image 6 cannot be read") as info:
        t.fit()
    assert info.traceback  # the traceback (and its frames) are still held here
    assert set(multiprocessing.active_children()) <= before
