"""``--threads`` of the ``lincorrupt`` command and of examples/train_blurring_cifar10.py: parsed,
bounded, and applied with ``torch.set_num_threads`` (each run in a fresh process, since the thread
count is global); importing the library leaves torch's threads alone."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.example import SCRIPT

ROOT = Path(__file__).resolve().parent.parent


def _threads_after(code: str) -> tuple[int, int, str]:
    """(torch's threads before ``code``, after it, stderr) in a fresh interpreter; ``code`` may fail."""
    program = ("import torch\nbefore = torch.get_num_threads()\ntry:\n" + "".join(f"    {line}\n" for line in
               code.splitlines()) + "except BaseException:\n    pass\nprint(before, torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", program], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    before, after = map(int, proc.stdout.split()[-2:])
    return before, after, proc.stderr


@pytest.mark.parametrize("argv, expected", [(["info", "no-such-run"], 1), (["info", "--threads", "3", "x"], 3),
                                            (["sample", "x", "--threads", "2"], 2), (["info", "--threads", "0", "x"],
                                                                                     None)])
def test_the_command_sets_torchs_threads(argv, expected):
    before, after, _ = _threads_after(f"from lincorrupt.commands import main\nmain({argv!r})")
    assert after == (before if expected is None else expected)


def test_importing_the_library_leaves_torchs_threads_alone():
    before, after, _ = _threads_after("import lincorrupt\nimport lincorrupt.commands")
    assert after == before


def test_a_negative_thread_count_is_refused_by_the_parser():
    _, _, stderr = _threads_after("from lincorrupt.commands import main\nmain(['info', '--threads', '-1', 'x'])")
    assert "--threads: expected 0 or a positive integer, got -1" in stderr


@pytest.mark.parametrize("argv, expected", [([], 1), (["--threads", "3"], 3), (["--threads", "0"], None)])
def test_the_example_sets_torchs_threads_before_any_work(argv, expected, tmp_path):
    """The script fails at once on a data folder that does not exist, after applying --threads."""
    code = (f"import runpy, sys\nsys.argv = [{str(SCRIPT)!r}, '--data-root', {str(tmp_path / 'none')!r}, "
            f"'--out-dir', {str(tmp_path / 'run')!r}, *{argv!r}]\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    before, after, _ = _threads_after(code)
    assert after == (before if expected is None else expected)


def test_the_example_refuses_a_negative_thread_count(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--threads", "-2", "--data-root", str(tmp_path)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "threads" in proc.stderr
