"""What a training run writes as it goes: ``metrics.jsonl``, mirrored to TensorBoard when installed."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "unreadable_record"]


def unreadable_record(dataset) -> dict[str, int]:
    """``{"unreadable_images": n}`` for a dataset that skips and counts unreadable images, else ``{}``."""
    count = getattr(dataset, "unreadable_count", None)
    return {"unreadable_images": count()} if callable(count) else {}


class MetricsLog:
    """JSONL metrics (``metrics.jsonl``), mirrored to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled, self.file, self.tb = enabled, None, None
        if not enabled:
            return
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
