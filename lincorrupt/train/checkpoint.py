"""Checkpoints that lose nothing: atomic writes, the previous one kept, checksums, safe loading.

A checkpoint is a plain dict of tensors and Python primitives written with ``torch.save`` to
a temporary file in the same folder, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX), so a crash or SIGKILL at any moment leaves either the old
or the new file, never half of one. The file it replaces is kept as ``<name>.prev``. Each file
stores a SHA-256 of its contents (every tensor's dtype, shape and bytes, every primitive, in a
fixed key order), checked on load, so a damaged file is refused instead of loading wrong
weights. Loading uses ``torch.load(weights_only=True)``: no arbitrary pickle.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_latest", "find_checkpoint", "run_checkpoints",
           "recorded_step", "newer_checkpoint", "check_compatible", "require_keys", "remove_partial_saves",
           "state_checksum", "FORMAT"]

FORMAT = "lincorrupt-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, damaged, foreign or incompatible, or a new run would overwrite one."""


def _update(h, key: str, value: Any) -> None:
    """Feed ``key`` and ``value`` (tensors, dicts, lists, primitives, nested) into the hash ``h``."""
    h.update(f"{key}:{type(value).__name__}:".encode())
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            _update(h, f"{key}/{k!r}", value[k])
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _update(h, f"{key}/{i}", v)
    else:
        h.update(repr(value).encode())


def state_checksum(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``state`` without its ``"checksum"`` entry: every tensor's dtype, shape and
    bytes and every primitive's value, keys in sorted order (so it does not depend on insertion order)."""
    h = hashlib.sha256()
    for k in sorted(k for k in state if k != "checksum"):
        _update(h, k, state[k])
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` (tensors and primitives) to ``path``; keep the old file as ``.prev``.

    Returns:
        The path written.

    Raises:
        CheckpointError: ``path`` is a folder (it is never moved aside).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the path of a file to write, e.g. {path / 'model.pt'} "
                              f"(a run's folder holds its training checkpoint.pt)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            state = {"format": FORMAT, **state}
            torch.save({**state, "checksum": state_checksum(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, path.with_name(path.name + ".prev"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def run_checkpoints(folder: str | os.PathLike) -> list[str]:
    """The names of the checkpoint files a run left in ``folder`` (``checkpoint.pt``, ``checkpoint.pt.prev``)."""
    return [name for name in ("checkpoint.pt", "checkpoint.pt.prev") if (Path(folder) / name).exists()]


def recorded_step(path: str | os.PathLike) -> int | None:
    """The step a checkpoint file records, read without loading its tensors (memory-mapped), or None when the
    file cannot be read (torn, foreign). Its checksum is not verified: :func:`load_checkpoint` does that."""
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:
        return None
    return step if isinstance(step, int) else None


def newer_checkpoint(folder: str | os.PathLike, step: int) -> tuple[Path, int] | None:
    """The first sound checkpoint file of ``folder`` (:func:`run_checkpoints`) whose step is beyond ``step``, with
    that step, or None. A file recording a later step is verified in full: a damaged one is no newer work."""
    for name in run_checkpoints(folder):
        path = Path(folder) / name
        recorded = recorded_step(path)
        if recorded is not None and recorded > step:
            try:
                load_checkpoint(path)
            except CheckpointError:
                continue
            return path, recorded
    return None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint to resume from: ``path`` (a file, or a folder holding ``checkpoint.pt``),
    falling back to ``<file>.prev`` when the main file is absent (a crash between the two renames).

    Raises:
        CheckpointError: neither exists.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    for candidate in (path, path.with_name(path.name + ".prev")):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no checkpoint at {path} (nor {path.name}.prev); train first or pass the path of a .pt file")


def load_latest(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest sound checkpoint at ``path`` (a file, or a folder holding ``checkpoint.pt``):
    the file itself, else ``<file>.prev`` when the file is absent or damaged (saying so on stderr).

    Returns:
        (the path loaded, its state).

    Raises:
        CheckpointError: neither exists, or both are damaged (naming both).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    prev = path.with_name(path.name + ".prev")
    if not path.is_file() and not prev.is_file():
        find_checkpoint(path)  # raises its error
    errors = []
    for candidate in (path, prev):
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            print(f"warning: {errors[0]}\nfalling back to {candidate} (step {state.get('step', '?')})", file=sys.stderr)
        return candidate, state
    raise CheckpointError(errors[0] if len(errors) == 1 else "no sound checkpoint: " + "; ".join(errors))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``
    and verify its checksum.

    Raises:
        CheckpointError: the file is missing, truncated, damaged (checksum mismatch) or corrupt,
            or not a lincorrupt checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if magic and not magic.startswith(_ZIP_MAGIC) and not magic.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{path} is not a lincorrupt checkpoint: not a file written by torch.save (it starts "
                              f"with {magic!r}); pass a run folder or a .pt file that lincorrupt saved")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(e).__name__}: {_torch_reason(e)}); "
                              f"the previous good one, if any, is {path.name}.prev") from None
    except Exception as e:  # pickle.UnpicklingError from weights_only: arbitrary objects inside
        raise CheckpointError(f"checkpoint {path} holds objects that are not plain tensors/primitives "
                              f"and is refused ({_torch_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lincorrupt checkpoint (expected a dict with format={FORMAT!r})")
    if "checksum" not in state:  # written before checksums were recorded: still loaded, not to lose that run
        print(f"warning: checkpoint {path} has no checksum (an older lincorrupt wrote it), so its contents "
              f"cannot be verified", file=sys.stderr)
        return state
    if state_checksum(state) != state["checksum"]:
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the checksum stored in it "
                              "(a disk or copy error changed its bytes); "
                              f"the previous one, if any, is {path.name}.prev")
    return state


def require_keys(state: dict[str, Any], keys: tuple[str, ...] | list[str], path: str | os.PathLike = "") -> None:
    """Refuse a checkpoint that lacks any of ``keys``, naming the missing ones.

    Raises:
        CheckpointError: some keys are missing.
    """
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(map(repr, missing))} (it has "
                              f"{', '.join(map(repr, sorted(state)))}); expected a checkpoint written by Trainer.save")


def remove_partial_saves(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) of saves that were killed before their rename.
    Only safe while no other process saves into ``folder`` (hold its run lock).

    Returns:
        The files removed.
    """
    removed = []
    for tmp in Path(folder).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


#: How a file of torch.save starts: a zip archive (the default format) or a pickle (protocol 2 or later).
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def _torch_reason(e: BaseException) -> str:
    """What torch.load found wrong, without its advice on loading the file unsafely or allow-listing what
    it holds: the line after "WeightsUnpickler error:" when there is one (e.g. "Unsupported global:
    GLOBAL print was not an allowed global by default"), else the first line, each cut before any
    "Please" or mention of ``weights_only``."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = _first_line(text).split("Please")[0].split("weights_only")[0]
    return line.rstrip(" ,.;:`(") or type(e).__name__


def _first_line(e: BaseException | str) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def check_compatible(state: dict[str, Any], corruption: str, shape: tuple[int, ...],
                     path: str | os.PathLike = "") -> None:
    """Refuse to load a checkpoint trained with another corruption class or data shape.

    Raises:
        CheckpointError: naming both the stored and the requested corruption/shape.
    """
    stored = (state.get("corruption"), tuple(state.get("shape", ())))
    if stored != (corruption, tuple(shape)):
        raise CheckpointError(f"checkpoint {path} was trained with corruption {stored[0]} on shape {stored[1]}, "
                              f"but this run uses {corruption} on shape {tuple(shape)}; "
                              f"build the run with the checkpoint's corruption and shape, or use another checkpoint")
