"""Every numeric field of the training configs is checked where it enters, and every field has one help text.

The configs: :class:`lincorrupt.train.TrainConfig` and the ``Config`` of
examples/train_blurring_cifar10.py (which adds the corruption, network and evaluation flags).
"""

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.example import load_script
from helpers.training import make_trainer
from lincorrupt.train import TrainConfig
from lincorrupt.train.cli import OptionError, given_options, parse_config

CONFIGS = {"TrainConfig": TrainConfig, "Config": load_script().Config}

# Values that are wrong whatever the code declares (the reference of this test): a step count
# below 1, a learning rate or clip norm that is not positive, a decay or probability outside
# [0, 1), negative counts, and non-finite numbers.
BAD = {
    "steps": [0, -5], "batch_size": [0], "lr": [0.0, -1e-4, math.inf, math.nan], "warmup_steps": [-1],
    "grad_clip": [-1.0, 0.0, math.nan, math.inf], "ema_decay": [1.0, 1.5, -0.1, math.nan],
    "ema_warmup_power": [-0.1, 1.5, math.nan], "weight_decay": [-0.1],
    "label_dropout": [-0.1, 1.0, math.nan], "guidance": [-1.0, math.nan, math.inf],
    "seed": [-1], "grad_accum": [0], "num_workers": [-2], "prefetch_factor": [0], "log_every": [0],
    "sample_every": [-1], "ckpt_every": [-1], "snapshot_every": [-1],
    "posthoc_ema": [(0.0,), (0.05, 0.3), (math.nan,)], "sample_steps": [0], "eval_every": [-1], "grid_size": [0],
    # the example's own
    "image_size": [0], "channels": [0], "sigma_blur_max": [-1.0, math.nan], "min_scale": [-0.1, 1.0],
    "logsnr_min": [math.nan, -math.inf], "logsnr_max": [math.inf], "ddpm_steps": [0], "ihdm_sigma": [0.0, -0.01],
    "ihdm_blur_max": [0.0], "ihdm_steps": [0], "prior_images": [0], "ch": [0], "ch_mult": [(1, 0), (-1,), ()],
    "num_res_blocks": [0], "attn_resolutions": [(0,)], "dropout": [1.0, -0.1, math.nan], "groups": [0],
    "fid_samples": [0], "fid_batch": [0], "fid_steps": [0], "fid_dims": [100, 0], "eval_samples": [3, 0],
    "eval_steps": [0], "dist_timeout": [0.0, -1.0, math.nan], "threads": [-1],
}


def numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        element = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        if element in (int, float):
            yield f, kind


def cases():
    for name, cls in CONFIGS.items():
        for f, _ in numeric_fields(cls):
            for value in BAD.get(f.name, []):
                yield pytest.param(cls, f.name, value, id=f"{name}.{f.name}={value}")


def test_every_numeric_field_has_bad_values_in_the_table():
    """A new numeric field must be added to BAD (and so get a check)."""
    missing = [f"{name}.{f.name}" for name, cls in CONFIGS.items() for f, _ in numeric_fields(cls) if f.name not in BAD]
    assert not missing, missing


@pytest.mark.parametrize("cls, name, value", list(cases()))
def test_a_bad_numeric_value_is_refused_naming_the_field(cls, name, value):
    with pytest.raises(OptionError, match=rf"^{name}\b") as info:
        cls(**{name: value})
    assert info.value.name == name


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_bad_flag_is_a_usage_error_naming_the_flag(cls, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(cls, ["--grad-clip", "-1"])
    assert info.value.code == 2
    assert "argument --grad-clip: grad_clip must be > 0, got -1.0" in capsys.readouterr().err


def bounded_fields():
    return [(cls, f) for cls in CONFIGS.values() for f, _ in numeric_fields(cls) if "bounds" in f.metadata]


@st.composite
def outside(draw):
    """A field with declared bounds and a finite number just outside them, or a non-finite one."""
    cls, f = draw(st.sampled_from(bounded_fields()))
    b = f.metadata["bounds"]
    options = [st.sampled_from([math.nan, math.inf, -math.inf])]
    if math.isfinite(b.low):
        options.append(st.floats(b.low - 1e6, b.low, exclude_max=not b.low_open))
    if math.isfinite(b.high):
        options.append(st.floats(b.high, b.high + 1e6, exclude_min=not b.high_open))
    value = draw(st.one_of(options))
    hints = typing.get_type_hints(cls)
    if hints[f.name] is int and math.isfinite(value):
        below = math.isfinite(b.low) and value < b.low + (1 if b.low_open else 0)
        value = math.floor(value) if below else math.ceil(value)
    if typing.get_origin(hints[f.name]) is tuple:
        value = (2, value)
    return cls, f.name, value


@given(outside())
def test_values_outside_the_declared_bounds_are_refused(case):
    cls, name, value = case
    with pytest.raises(OptionError, match=rf"^{name}\b"):
        cls(**{name: value})


@pytest.mark.parametrize("cls", CONFIGS.values(), ids=CONFIGS.keys())
def test_defaults_are_valid_and_every_field_has_its_help_text_in_help(cls, capsys):
    cls()
    with pytest.raises(SystemExit):
        parse_config(cls, ["--help"])
    text = re.sub(r"\s+", "", capsys.readouterr().out)  # argparse re-wraps lines (also after hyphens)
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help", "").strip(), f"{f.name} has no help text"
        assert re.sub(r"\s+", "", f.metadata["help"]) in text, f.name


def test_given_options_are_only_the_flags_on_the_command_line():
    assert given_options(TrainConfig, ["--lr", "0.1", "--no-hflip", "--steps", "5"]) == {"lr": 0.1, "hflip": False,
                                                                                          "steps": 5}
    assert given_options(TrainConfig, []) == {}


def test_the_api_reference_shows_each_field_with_its_help_text_and_default():
    """The docs' griffe extension reads the same ``option(default, help)`` the flags are built from."""
    griffe = pytest.importorskip("griffe")
    root = Path(__file__).resolve().parents[1]
    extension = griffe.load_extensions(f"{root / 'docs' / 'hooks' / 'griffe_docstrings.py'}:DocstringConventions")
    documented = griffe.load("lincorrupt.train.trainer", extensions=extension, search_paths=[str(root)],
                             resolve_aliases=False)["TrainConfig"]
    for f in dataclasses.fields(TrainConfig):
        attribute = documented.members[f.name]
        assert attribute.docstring.value == f.metadata["help"], f.name
        assert eval(str(attribute.value)) == f.default, f.name


# A value of the wrong type for each declared field type (the reference: Python's own types).
WRONG_TYPE = {int: [1.5, True, "3"], float: ["0.1", None, True], bool: [1, "yes"], str: [3, None]}


def wrong_type_cases():
    for name, cls in CONFIGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            tuple_of = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None
            values = [1, (WRONG_TYPE[tuple_of][0],)] if tuple_of else WRONG_TYPE.get(kind, [])
            for value in values:
                yield pytest.param(cls, f.name, value, id=f"{name}.{f.name}={value!r}")


@pytest.mark.parametrize("cls, name, value", list(wrong_type_cases()))
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(cls, name, value):
    with pytest.raises(OptionError, match=rf"^{name} must be") as info:
        cls(**{name: value})
    assert info.value.name == name


def train_config_cases():
    for f, _ in numeric_fields(TrainConfig):
        for value in BAD.get(f.name, []):
            yield pytest.param(f.name, value, id=f"{f.name}={value}")


@pytest.mark.parametrize("name, value", list(train_config_cases()))
def test_a_config_changed_after_the_trainer_was_built_is_checked_again_by_fit(tmp_path, name, value):
    with pytest.raises(OptionError) as at_construction:
        TrainConfig(**{name: value})
    trainer = make_trainer(tmp_path, 2)
    setattr(trainer.cfg, name, value)
    with pytest.raises(OptionError) as at_fit:
        trainer.fit()
    assert str(at_fit.value) == str(at_construction.value)
    assert not (tmp_path / "checkpoint.pt").exists()
