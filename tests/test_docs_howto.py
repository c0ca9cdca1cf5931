"""Every command of the training script shown in the docs parses with the script's real flags.

The how-to pages (and the others) print commands such as
``python examples/train_blurring_cifar10.py --data-root ... --resume``; this test extracts each
one from the pages' code blocks and parses its arguments with the script's own parser, so a
renamed or removed flag, or a value outside its choices, fails the suite.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "examples/train_blurring_cifar10.py"


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.split("#")[0].strip()
                if SCRIPT in command:
                    words = shlex.split(command)
                    found.append((f"{page.relative_to(ROOT)}: {command}", words[words.index(SCRIPT) + 1:]))
    return found


COMMANDS = _commands()


def test_the_docs_show_training_commands():
    assert len(COMMANDS) >= 8, COMMANDS


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("docs_train_script", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return module


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(script, where, args, capsys):
    from lincorrupt.train.cli import parse_config

    try:
        cfg = parse_config(script.Config, args)
    except SystemExit:
        pytest.fail(f"{where}\n{capsys.readouterr().err}")
    assert isinstance(cfg, script.Config)


def test_sampler_guide_names_every_sampler_and_grid():
    """A sampler or grid added to the registries must be described in the how-to."""
    import lincorrupt as lc

    text = (ROOT / "docs" / "how-to" / "samplers.md").read_text()
    missing = [name for name in [*lc.SAMPLERS, *lc.GRIDS] if f'"{name}"' not in text]
    assert not missing, f"docs/how-to/samplers.md does not describe {missing}"
