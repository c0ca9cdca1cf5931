"""Load a script of benchmarks/ as a module, so a test can call its main() in process."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as the module ``name`` (registered in sys.modules, as its
    dataclasses and worker processes need), with benchmarks/ on ``sys.path`` as when the script runs,
    so that it finds its shared modules (``fashion_study``, ``reports``)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec.loader.exec_module(module)
    return module
