"""Loading and saving under hostile or unlucky input: files that name foreign modules or huge networks,
malformed but check-summed files, files that are not checkpoints, torn metrics logs, damaged data files."""

import gzip
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lincorrupt as lc
from lincorrupt.commands import main
from lincorrupt.config import SpecError, build_module
from lincorrupt.model import ModelLoadError
from lincorrupt.nn import UNet
from lincorrupt.train import CheckpointError, load_checkpoint, save_checkpoint

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
    with pytest.raises(SpecError, match="move the class into a module"):
        build_module({"class": "__main__.Outer.MyBlur", "config": {}})
    with pytest.raises(SpecError, match=r"import the module that defines it \(mypkg.blur\) before loading"):
        build_module({"class": "mypkg.blur.MyBlur", "config": {}})


# ----------------------------------------------------------------- a small file cannot ask for a huge network
def test_a_file_recording_a_huge_network_is_refused_before_building_it(tmp_path):
    """ch=65536 asks for terabytes; the recorded shapes are checked against the weights on the meta device,
    so the refusal comes under a 16 GB address-space limit (a real build would fail to allocate)."""
    state = saved_state(tmp_path)
    state["diffusion_model"]["network"]["config"]["ch"] = {"value": 65536}
    save_checkpoint(state, tmp_path / "huge.pt")
    done = run_python("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
        import lincorrupt as lc
        try:
            lc.load(sys.argv[1])
        except lc.model.ModelLoadError as e:
            print(e)
        """, tmp_path / "huge.pt")
    assert done.returncode == 0, done.stderr
    assert "huge.pt" in done.stdout and "do not fit" in done.stdout, done.stdout
    assert f"temb.0.weight: recorded ({4 * 65536}, 65536), saved ({4 * 8}, 8)" in done.stdout  # temb width 4 ch
    assert "allocate" not in done.stdout


def test_recorded_shapes_that_match_the_weights_load_the_weights(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "m.pt")
    loaded = lc.load(tmp_path / "m.pt")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for (name, a), b in zip(model.network.state_dict().items(), loaded.network.state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------- malformed but check-summed files
def malformed(state: dict, kind: str) -> dict:
    record = state["diffusion_model"]
    if kind == "empty record":
        state["diffusion_model"] = {}
    elif kind == "no weights":
        del state["model"]
    elif kind == "buffer named forward":
        record["corruption_state"]["forward"] = torch.zeros(2)
    elif kind == "buffer of a missing submodule":
        record["corruption_state"]["nowhere.x"] = torch.zeros(2)
    elif kind == "spec without class":
        del record["network"]["class"]
    elif kind == "config entry of no kind":
        record["network"]["config"]["ch"] = {"what": 8}
    elif kind == "config entry not a dict":
        record["network"]["config"]["ch"] = 8
    elif kind == "unknown prediction":
        record["prediction"] = "score"
    elif kind == "weights not a dict":
        state["model"] = [1, 2]
    elif kind == "info not a dict":
        state["info"] = "x"
    elif kind == "record not a dict":
        state["diffusion_model"] = 3
    return state


MALFORMED = ["empty record", "no weights", "buffer named forward", "buffer of a missing submodule",
             "spec without class", "config entry of no kind", "config entry not a dict", "unknown prediction",
             "weights not a dict", "info not a dict", "record not a dict"]


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_but_checksummed_file_is_a_one_line_error(tmp_path, kind, capsys):
    save_checkpoint(malformed(saved_state(tmp_path), kind), tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="bad.pt"):
        lc.load(tmp_path / "bad.pt")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "bad.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.pt" in err and err.count("\n") == 1, err


# ----------------------------------------------------------------- files that are not checkpoints
def test_a_text_file_is_not_a_checkpoint_and_unsafe_loading_is_never_suggested(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# lincorrupt\n\nDiffusion models.\n")
    with pytest.raises(CheckpointError, match="README.md is not a lincorrupt checkpoint") as e:
        lc.load(readme)
    assert "weights_only" not in str(e.value) and "False" not in str(e.value)
    assert main(["info", str(readme)]) == 1
    err = capsys.readouterr().err
    assert "not a lincorrupt checkpoint" in err and "weights_only" not in err and err.count("\n") == 1


class Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_a_pickle_payload_is_refused_without_torch_advice(tmp_path, capsys):
    torch.save({"format": "lincorrupt-checkpoint-v1", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt") as e:
        lc.load(tmp_path / "evil.pt")
    message = str(e.value)
    assert "refused" in message and "print" in message  # names what it holds
    assert "weights_only" not in message and "False" not in message and "payload ran" not in capsys.readouterr().out


# ----------------------------------------------------------------- saving onto a folder
def test_saving_a_model_onto_a_folder_is_refused_and_the_folder_is_untouched(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("week-long run")
    with pytest.raises(CheckpointError, match="is a folder"):
        tiny_model().save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (folder / "notes.txt").read_text() == \
        "week-long run"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


# ----------------------------------------------------------------- sampling follows the network's dtype
def test_a_double_model_samples_in_double(tmp_path):
    tiny_model().save(tmp_path / "m.pt")
    x = lc.load(tmp_path / "m.pt").double().sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and x.shape == (2, 1, 8, 8) and bool(x.isfinite().all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_model_samples_in_its_dtype_and_keeps_the_corruption_exact(tmp_path, dtype):
    """The sampler's arithmetic stays in float32 (the corruption's tables are not rounded to half); the network
    sees its own dtype. The float32 model's samples within half precision's error (torch draws the same normal
    numbers in half as in float32, rounded)."""
    model = tiny_model()
    ref = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    half = tiny_model().to(dtype)
    assert half.corruption.log_alphabar.dtype == model.corruption.log_alphabar.dtype
    assert torch.equal(half.corruption.log_alphabar, model.corruption.log_alphabar)
    x = half.sample(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert x.dtype == dtype and bool(x.isfinite().all())
    assert torch.allclose(x.float(), ref, atol=0.02), (x.float() - ref).abs().max()  # bf16 spacing at 2: 0.0078


# ----------------------------------------------------------------- metrics.jsonl with a torn last line
def test_readers_skip_a_torn_last_line_of_metrics_jsonl_only(tmp_path):
    from lincorrupt.train.metrics_log import read_records
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "eval": "x", "fid": 3.0, "eval_samples": 4, '
                    '"eval_sampler": "a"}\n{"step": 3, "lo')
    assert [r["step"] for r in read_records(path)] == [1, 2]
    from lincorrupt.train.evaluation import plot_quality
    plot_quality(path, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").is_file()
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON"):
        read_records(path)


@pytest.mark.parametrize("tail, kept", [('{"step": 3, "lo', [1]), ('{"step": 3}', [1, 3])])
def test_a_writer_starts_a_fresh_line_after_a_torn_one(tmp_path, tail, kept, capsys):
    from lincorrupt.train.metrics_log import MetricsLog, read_records
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n' + tail)
    log = MetricsLog(tmp_path, enabled=True)
    log.log({"step": 4, "loss": 0.25})
    log.close()
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [*kept, 4]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")


# ----------------------------------------------------------------- data files
def test_a_truncated_or_non_gzip_fashion_mnist_file_is_named(tmp_path):
    from lincorrupt.data import read_idx
    data = bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes(4)
    (tmp_path / "short.gz").write_bytes(gzip.compress(data)[:-9])
    (tmp_path / "plain.gz").write_bytes(data)
    for name in ("short.gz", "plain.gz"):
        with pytest.raises(ValueError, match=name):
            read_idx(tmp_path / name)


def test_a_one_bit_png_is_one_channel_of_0_and_255(tmp_path):
    from lincorrupt.data import load_images
    bits = np.random.default_rng(0).integers(0, 2, (8, 8)).astype(bool)
    (tmp_path / "a").mkdir()
    Image.fromarray(bits).convert("1").save(tmp_path / "a" / "0.png")
    assert Image.open(tmp_path / "a" / "0.png").mode == "1"
    np.testing.assert_array_equal(load_images(tmp_path, (1, 8, 8))[0].numpy(), bits[None] * 255)
    with pytest.raises(ValueError, match=r"with 1 channel\(s\), expected 8x8 with 3"):
        load_images(tmp_path, (3, 8, 8))


# ----------------------------------------------------------------- signatures
@pytest.mark.parametrize("cls", [lc.BlurringDiffusion, lc.DDPM, lc.GaussianPrior, lc.DCTBasis, UNet])
def test_the_signature_of_a_recording_class_is_its_constructor(cls):
    expected = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert list(inspect.signature(cls).parameters.values()) == expected
    assert "(*args, **kwargs)" not in str(inspect.signature(cls))
