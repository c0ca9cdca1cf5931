"""One run per folder: an exclusive lock file ``<run folder>/.lock`` holding its owner's pid and host.

The lock is created with ``O_CREAT | O_EXCL`` (atomic: of two processes, exactly one creates
it) and removed when the owner releases it. A lock left by a process that died without
releasing it (SIGKILL, power loss) is stale: on the same host, its pid no longer runs, and the
next run takes it over. A lock from another host cannot be checked from here; the error names
the host and pid, so that the file can be deleted once that process is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_owner(path: Path) -> dict | None:
    """The lock file's ``{"pid", "host", "time"}``, or None when it is gone or unreadable (being written)."""
    try:
        owner = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


class RunLock:
    """Exclusive lock on a run folder (``with RunLock(folder): ...``), held by this process.

    Args:
        folder: the run folder (created if absent).

    Raises:
        RunLockedError: on :meth:`acquire`, when a live process holds the lock (naming its pid and host).
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        for _ in range(3):  # a stale lock is moved aside (atomically) and the creation retried
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: another process keeps creating it")

    def _clear_if_stale(self, me: dict) -> None:
        owner = _read_owner(self.path)
        if owner is None:
            time.sleep(0.1)  # just created, not yet written: look again
            owner = _read_owner(self.path)
            if owner is None and self.path.exists():
                raise RunLockedError(f"{self.path} exists but names no owner; if no run uses {self.path.parent}, "
                                     f"delete it and start again")
            if owner is None:
                return
        if owner.get("host") != me["host"]:
            raise RunLockedError(f"{self.path.parent} is in use by pid {owner['pid']} on host {owner.get('host')} "
                                 f"(lock file {self.path}); use another --out-dir, or delete the lock file once "
                                 f"that process is gone")
        if owner["pid"] == me["pid"] or _pid_alive(owner["pid"]):
            raise RunLockedError(f"{self.path.parent} is in use by pid {owner['pid']} on this host "
                                 f"({me['host']}; lock file {self.path}); wait for it to finish, stop it, or use "
                                 f"another --out-dir")
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{me['pid']}")
        try:
            os.replace(self.path, aside)  # of two processes clearing it, only one moves the stale file
        except FileNotFoundError:
            return
        if _read_owner(aside) == owner:
            aside.unlink(missing_ok=True)
        else:  # a live owner's fresh lock was moved by mistake: put it back
            os.replace(aside, self.path)

    def release(self) -> None:
        """Remove the lock file if this process still owns it."""
        if self.held:
            owner = _read_owner(self.path)
            if owner is not None and owner["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
