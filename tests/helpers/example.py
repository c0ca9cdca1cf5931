"""The CIFAR-10 training script, loaded as a module or run as a subprocess."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_blurring_cifar10.py"


def load_script(name: str = "train_blurring_cifar10"):
    """examples/train_blurring_cifar10.py as a fresh module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_script(args, **kw) -> subprocess.Popen:
    """The script in a subprocess of one thread, with this checkout's lincorrupt, pipes for its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)
