"""Loading and saving under hostile or unlucky input: files that name foreign modules or huge networks,
malformed but check-summed files, files that are not checkpoints, torn metrics logs, damaged data files."""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lincorrupt as lc
from lincorrupt.config import SpecError, build_module
from lincorrupt.nn import UNet
from lincorrupt.train import load_checkpoint, save_checkpoint

ROOT = Path(lc.__file__).parents[1]
TINY = dict(image_size=8, in_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4)


def tiny_model() -> lc.DiffusionModel:
    torch.manual_seed(0)
    return lc.DiffusionModel(UNet(**TINY), lc.DDPM((1, 8, 8)), "v")


def saved_state(tmp_path) -> dict:
    """The dict a saved tiny model holds (check-summed again by whoever saves a changed copy)."""
    tiny_model().save(tmp_path / "good.pt")
    return {k: v for k, v in load_checkpoint(tmp_path / "good.pt").items() if k not in ("format", "checksum")}


def run_python(code: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


# ----------------------------------------------------------------- a file may import only the library's classes
def test_a_file_naming_a_class_of_lincorrupt_main_is_refused_and_runs_nothing(tmp_path):
    """Importing lincorrupt.__main__ used to run the command line on the host's own arguments."""
    state = saved_state(tmp_path)
    state["diffusion_model"]["network"]["class"] = "lincorrupt.__main__.X"
    save_checkpoint(state, tmp_path / "hostile.pt")
    pwned = tmp_path / "pwned.png"
    done = run_python("""
        import sys
        import lincorrupt as lc
        hostile = sys.argv[1]
        sys.argv = ["host", "sample", sys.argv[2], "-o", sys.argv[3], "--steps", "1", "--device", "cpu"]
        try:
            lc.load(hostile)
        except lc.model.ModelLoadError as e:
            print("refused:", e)
        print("imported" if "lincorrupt.__main__" in sys.modules else "not imported")
        import lincorrupt.__main__  # guarded: importing it runs nothing
        print("alive")
        """, tmp_path / "hostile.pt", tmp_path / "good.pt", pwned)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:") and "lincorrupt.__main__.X" in lines[0] and "hostile.pt" in lines[0]
    assert lines[1:] == ["not imported", "alive"]
    assert not pwned.exists()


def test_a_file_may_import_only_the_library_modules_that_define_loadable_classes():
    """The allow-list holds the module of every Configurable class of the library (all modules imported here)."""
    from lincorrupt import config
    for info in pkgutil.walk_packages([str(ROOT / "lincorrupt")], "lincorrupt."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    library = {cls.__module__ for cls in config._CLASSES.values() if cls.__module__.startswith("lincorrupt.")}
    assert library == set(config.LOADABLE_MODULES)
    with pytest.raises(SpecError, match="not one of the library's modules"):
        build_module({"class": "lincorrupt.train.trainer.Trainer", "config": {}})


def test_a_class_defined_in_a_script_gets_a_hint_to_move_it_into_a_module():
    with pytest.raises(SpecError, match="move the class into a module"):
        build_module({"class": "__main__.MyBlur", "config": {}})


# ----------------------------------------------------------------- signatures
@pytest.mark.parametrize("cls", [lc.BlurringDiffusion, lc.DDPM, lc.GaussianPrior, lc.DCTBasis, UNet])
def test_the_signature_of_a_recording_class_is_its_constructor(cls):
    expected = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert list(inspect.signature(cls).parameters.values()) == expected
    assert "(*args, **kwargs)" not in str(inspect.signature(cls))
