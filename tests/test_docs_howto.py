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


def test_benchmark_tables_name_todays_samplers_and_grids():
    """The sampler benchmark's tables name samplers and grids by the keys ``lc.sample`` takes, so a
    renamed sampler must be renamed on the Benchmarks page too (or the benchmark rerun)."""
    import lincorrupt as lc

    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text.split("## Samplers", 1)[1].split("\n## ", 1)[0]
    samplers, grids = set(), set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        first = cells[0]
        if not line.startswith("| ") or first in ("sampler", "sampler/grid", "(ancestral KL)", "corruption"):
            continue
        if "/" in first:                               # matching NFE: "dpm++3m/logsnr"
            sampler, grid = first.split("/")
            samplers.add(sampler), grids.add(grid)
        elif first[0].isupper() or " " in first:       # the recommendation: "DDPM | `dpm++3m` / `logsnr`"
            sampler, grid = re.findall(r"`([^`]+)`", cells[1])
            samplers.add(sampler), grids.add(grid)
        else:                                          # KL tables: "dpm++3m | logsnr" or "ddim | diffusers"
            samplers.add(first)
            if cells[1] not in ("lincorrupt", "diffusers", "ratio"):
                grids.add(cells[1])
    assert {"ancestral", "ddim"} <= samplers and {"uniform", "logsnr", "info"} <= grids, (samplers, grids)
    unknown = sorted(samplers - set(lc.SAMPLERS)) + sorted(grids - set(lc.GRIDS))
    assert not unknown, f"docs/benchmarks.md names {unknown}: not keys of lc.SAMPLERS / lc.GRIDS"
