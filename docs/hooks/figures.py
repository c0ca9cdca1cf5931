"""MkDocs hook: draw the figures of the Concepts page on every build.

Runs ``docs/make_figures.py`` (:func:`draw_all`) into a temporary folder and adds the PNGs to
the site under ``figures/``. The figures are never committed, so they cannot go stale: a change
to a schedule or a basis changes them in the next build, and a change that breaks the script
breaks ``mkdocs build`` (and so ``make test``). Needs Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.figures")
SCRIPT = Path(__file__).resolve().parent.parent / "make_figures.py"


def on_files(files, config):
    spec = importlib.util.spec_from_file_location("lincorrupt_docs_make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = module.draw_all(Path(tmp))
        except FileNotFoundError as exc:
            raise PluginError(str(exc)) from exc
        for path in paths:
            files.append(File.generated(config, f"figures/{path.name}", content=path.read_bytes()))
    log.info("drew %d figures in %.1f s (docs/make_figures.py)", len(paths), time.perf_counter() - start)
    return files
