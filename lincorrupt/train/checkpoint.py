"""Checkpoints that lose nothing: atomic writes, the previous one kept, safe loading.

A checkpoint is a plain dict of tensors and Python primitives written with ``torch.save`` to
a temporary file in the same folder, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX), so a crash or SIGKILL at any moment leaves either the old
or the new file, never half of one. The file it replaces is kept as ``<name>.prev``. Loading
uses ``torch.load(weights_only=True)``: no arbitrary pickle.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "find_checkpoint", "check_compatible",
           "FORMAT"]

FORMAT = "lincorrupt-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, foreign or incompatible."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` (tensors and primitives) to ``path``; keep the old file as ``.prev``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or not a lincorrupt checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(e).__name__}: {_first_line(e)}); "
                              f"the previous good one, if any, is {path.name}.prev") from None
    except Exception as e:  # pickle.UnpicklingError from weights_only: arbitrary objects inside
        raise CheckpointError(f"checkpoint {path} holds objects that are not plain tensors/primitives "
                              f"and is refused (weights_only loading): {_first_line(e)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lincorrupt checkpoint (expected a dict with format={FORMAT!r})")
    return state


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def check_compatible(state: dict[str, Any], corruption: str, shape: tuple[int, ...], path: str | os.PathLike = "") -> None:
    """Refuse to load a checkpoint trained with another corruption class or data shape.

    Raises:
        CheckpointError: naming both the stored and the requested corruption/shape.
    """
    stored = (state.get("corruption"), tuple(state.get("shape", ())))
    if stored != (corruption, tuple(shape)):
        raise CheckpointError(f"checkpoint {path} was trained with corruption {stored[0]} on shape {stored[1]}, "
                              f"but this run uses {corruption} on shape {tuple(shape)}; "
                              f"use the matching --corruption/--image-size or another checkpoint")
