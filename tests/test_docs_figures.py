"""The figures of the docs cannot go stale.

The Concepts and Tutorial figures are drawn by the docs build itself (docs/hooks/figures.py),
so test_docs_site's strict build covers them. The demo's sample grid cannot be redrawn in a
build (it needs the demo's training run), so it is committed under docs/assets/demo/ with a
provenance file; this test fails when examples/demo.py, the recipe that made it, has changed
since, or when the files and the provenance disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "docs" / "assets" / "demo"
REGENERATE = "make demo && .venv/bin/python docs/make_figures.py --demo out/demo"

pytestmark = pytest.mark.skipif(not (DEMO / "provenance.json").is_file(),
                                reason=f"no demo grids committed in {DEMO} yet (make them with: {REGENERATE})")


def test_demo_grids_match_the_demo_recipe():
    provenance = json.loads((DEMO / "provenance.json").read_text())
    recorded = provenance["examples/demo.py sha256"]
    current = hashlib.sha256((ROOT / "examples" / "demo.py").read_bytes()).hexdigest()
    assert current == recorded, (
        f"examples/demo.py changed since the docs' demo grids were made (at {provenance['git_head']}); "
        f"regenerate them: {REGENERATE}")


def test_demo_files_are_present_and_small():
    provenance = json.loads((DEMO / "provenance.json").read_text())
    for name in provenance["files"]:
        path = DEMO / name
        assert path.is_file(), f"{path} is listed in provenance.json but missing; {REGENERATE}"
        if path.suffix == ".png":
            assert path.stat().st_size < 300_000, f"{path} is {path.stat().st_size} bytes: keep committed PNGs small"
    assert sorted(p.name for p in DEMO.iterdir()) == sorted([*provenance["files"], "provenance.json"])
