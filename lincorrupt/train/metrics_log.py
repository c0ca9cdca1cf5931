"""What a training run writes as it goes: ``metrics.jsonl``, mirrored to TensorBoard when installed.

Each step is logged once: a run that starts at step s (a resume after a kill, say) first removes the
records of steps beyond s (:func:`drop_records_after`), which it is about to train, and so log, again.
A loss record averages the ``loss_steps`` steps up to its ``step``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_records", "unreadable_record", "drop_records_after"]


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, one JSON object a line. A last line without its newline that is
    not JSON (a write cut short by a full disk or a power loss) is skipped, saying so on stderr.

    Raises:
        ValueError: any other line is not JSON, naming the file and the line number.
    """
    text = Path(path).read_text()
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is not JSON ({e}): {line[:80]!r}") from None
    if torn.strip():
        try:
            records.append(json.loads(torn))
        except json.JSONDecodeError:
            print(f"warning: skipping the unfinished last line of {path} (a write cut short): {torn[:80]!r}",
                  file=sys.stderr)
    return records


def _start_fresh_line(path: Path) -> None:
    """End ``path`` with a newline before records are appended: a last line left without one is completed
    when it is a whole record, else (a write cut short) cut off, saying so on stderr."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    data = path.read_bytes()
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except (json.JSONDecodeError, UnicodeDecodeError):
        print(f"warning: {path} ended in an unfinished record (a write cut short), removed: "
              f"{data[start:start + 80]!r}", file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(start)
        return
    with open(path, "ab") as f:
        f.write(b"\n")


def unreadable_record(dataset) -> dict[str, int]:
    """``{"unreadable_images": n}`` for a dataset that skips and counts unreadable images, else ``{}``."""
    count = getattr(dataset, "unreadable_count", None)
    return {"unreadable_images": count()} if callable(count) else {}


def drop_records_after(path: Path, step: int) -> int:
    """Remove the records of ``path`` (a ``metrics.jsonl``) with a step beyond ``step``, and any line that is not a
    record (a torn last line); the file is replaced atomically, and only when something goes. Returns how many
    lines went."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept))
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _step_of(line: str) -> int | None:
    """The step of a complete record line, or None (a torn or foreign line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


class MetricsLog:
    """JSONL metrics (``metrics.jsonl``), mirrored to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled, self.file, self.tb = enabled, None, None
        if not enabled:
            return
        _start_fresh_line(out_dir / "metrics.jsonl")
        self.file = open(out_dir / "metrics.jsonl", "a")
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({**record, "time": time.time()}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()
