"""Signals in a training run: SIGTERM/SIGINT ask the loop to stop; DataLoader workers ignore them."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable

__all__ = ["stop_on_signals", "ignore_stop_signals"]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM/SIGINT to the process group are for the training loop;
    the worker exits when the main process does (torch's worker watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def stop_on_signals(on_signal: Callable[[int], None]):
    """Within the block, SIGTERM/SIGINT call ``on_signal(signum)`` (main thread only; elsewhere no
    handler is installed), e.g. to set a flag the training loop checks after each step."""
    def handler(signum, frame):
        on_signal(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not in the main thread: no handlers
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
