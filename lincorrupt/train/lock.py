"""One run per folder: an exclusive lock file ``<run folder>/.lock`` naming its owner process.

The lock is created with ``O_CREAT | O_EXCL`` (atomic: of two processes, exactly one creates
it) and removed when the owner releases it. It names the owner by host, pid and, where the
system tells them (Linux: field 22 of ``/proc/<pid>/stat`` and ``/proc/sys/kernel/random/boot_id``),
the process's start time and the boot it ran in, because a pid alone is reused: a container
restarted after a kill usually gives the new process the pid of the old one. A lock left by a
process that died without releasing it (SIGKILL, power loss) is stale, and the next run takes it
over: on the same host, when the lock names another boot, a pid that no longer runs, a pid that
runs but started at another time (a new process), or this process's own pid while this process
holds no lock on the folder (an earlier process with the same pid). Where start times cannot be
read, a live pid counts as the owner. A lock from another host cannot be checked from here; the
error names the host and pid, so that the file can be deleted once that process is known to be gone.
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


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (field 22 of ``/proc/<pid>/stat``), or None where
    that cannot be read (no /proc, the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 1:].split()  # after "pid (comm)": the name may hold spaces and parentheses
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None  # fields[0] is field 3


def _boot_id() -> str | None:
    """This boot's id (``/proc/sys/kernel/random/boot_id``; new at every boot), or None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _differ(a, b) -> bool:
    """Two recorded facts that are both known and disagree (an unknown one proves nothing)."""
    return a is not None and b is not None and a != b


#: The lock files that RunLocks of this process hold (resolved paths): a lock naming this process's pid is
#: held by this process only if it is listed here, else an earlier process with the same pid left it.
_HELD: set[str] = set()


def _read_owner(path: Path) -> dict | None:
    """The lock file's ``{"pid", "host", "time", "start", "boot"}`` (the last two may be absent or None), or None
    when it is gone or unreadable (being written)."""
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
        pid = os.getpid()
        me = {"pid": pid, "host": socket.gethostname(), "time": time.time(), "start": _process_start(pid),
              "boot": _boot_id()}
        for _ in range(3):  # a stale lock is moved aside (atomically) and the creation retried
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            _HELD.add(str(self.path.resolve()))
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
        if self._owner_runs(owner, me):
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

    def _owner_runs(self, owner: dict, me: dict) -> bool:
        """Whether the process that wrote the lock ``owner`` (on this host) still runs (module docstring)."""
        if owner["pid"] == me["pid"]:
            return str(self.path.resolve()) in _HELD
        if _differ(owner.get("boot"), me["boot"]) or not _pid_alive(owner["pid"]):
            return False
        return not _differ(owner.get("start"), _process_start(owner["pid"]))

    def release(self) -> None:
        """Remove the lock file if this process still owns it."""
        if self.held:
            owner = _read_owner(self.path)
            if owner is not None and owner["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            _HELD.discard(str(self.path.resolve()))
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
