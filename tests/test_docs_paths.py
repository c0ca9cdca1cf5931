"""The documentation's sources name no path that exists only on one machine.

Pages, the snippets they include (the demo's summary, the quality tables), the README and the
figure script's usage show paths relative to the repository (``out/demo``, ``data/cifar10``),
so a reader can run them as written. Debian's dataset folder (``/usr/share/datasets/...``) is
where a package installs it on every machine, so it is allowed. tests/test_docs_site.py checks
the built HTML the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.docs import MACHINE_PATH

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    [ROOT / "README.md", ROOT / "mkdocs.yml", ROOT / "docs" / "make_figures.py",
     *(p for p in (ROOT / "docs").rglob("*.md") if "node_modules" not in p.parts),
     *(ROOT / "docs" / "tutorial_code").glob("*.py")]
)


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_no_machine_specific_path(source):
    lines = [f"{source.relative_to(ROOT)}:{n}: {line.strip()}"
             for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not lines, "machine-specific paths (write them relative to the repository):\n" + "\n".join(lines)


@pytest.mark.parametrize("text, bad", [("from /tmp/demo_docs2/data", True), ("see ../shared/data/x.zip", True),
                                       ("/home/ann/lincorrupt", True), ("--out /work/run", True),
                                       ("from out/demo/data", False), ("/usr/share/datasets/fashion-mnist", False),
                                       ("the [temp](../tmp/x.md) page", False)])
def test_the_pattern_tells_machine_paths_from_repository_paths(text, bad):
    assert bool(MACHINE_PATH.search(text)) == bad


WORDING_SOURCES = sorted([ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "Makefile",
                          *(p for p in (ROOT / "docs").rglob("*.md") if "node_modules" not in p.parts)])


@pytest.mark.parametrize("source", WORDING_SOURCES, ids=[str(p.relative_to(ROOT)) for p in WORDING_SOURCES])
def test_no_wording_about_whose_machines(source):
    """What readers see names a machine by what it is ("a 2-core x86-64 machine"), not by whose it is."""
    import re

    whose = re.compile(r"\b(team|our machines?|these machines)\b", re.IGNORECASE)
    lines = [f"{source.relative_to(ROOT)}:{n}: {line.strip()}"
             for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1) if whose.search(line)]
    assert not lines, "say which machine, not whose (e.g. 'a 2-core x86-64 machine'):\n" + "\n".join(lines)
