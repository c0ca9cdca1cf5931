"""Writing a benchmark's results: its JSON record and Markdown report side by side, with what produced them.

Used by the Fashion-MNIST studies (``bench_quality.py``, ``bench_guidance.py``); any benchmark that writes a
results folder can use it. ``write`` never replaces a record whose ``"done"`` lists evaluations that the new
one lacks (run folders do not survive between machines, so a report from an empty run folder would wipe
a committed study).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short hash of the checked-out commit, or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(processes: int, device: torch.device | str | None = None) -> str:
    """What ran it: architecture, threads per process, processes, device and torch version."""
    where = f", device {device}" if device is not None else ""
    return (f"{platform.machine()}, {torch.get_num_threads()} thread(s) per process, {processes} processes{where}, "
            f"torch {torch.__version__}")


def command(script: str, argv: list[str] | None) -> str:
    """The command line that produced a report: ``python benchmarks/<script> <arguments>``."""
    return " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def refuse_losing(path: Path, done: dict[str, list]) -> None:
    """Exit with an error if the record at ``path`` lists, under ``"done"``, evaluations that ``done`` lacks."""
    if not path.is_file():
        return
    kept = json.loads(path.read_text()).get("done", {})
    lost = sorted(f"{name} @ {step}" for name, steps in kept.items() for step in steps
                  if step not in done.get(name, []))
    if lost:
        sys.exit(f"error: {path} holds evaluations that the runs lack ({', '.join(lost)}); writing the report "
                 f"would lose them: pass the run folder they came from, or another results folder")


def write(results: Path, stem: str, summary: dict, text: str) -> None:
    """``results/<stem>.json`` (``summary``) and ``results/<stem>.md`` (``text``), after :func:`refuse_losing`;
    the text is printed too."""
    results.mkdir(parents=True, exist_ok=True)
    refuse_losing(results / f"{stem}.json", summary.get("done", {}))
    (results / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / f"{stem}.md").write_text(text)
    print(text)

