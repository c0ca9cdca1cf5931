"""Collectives that work with or without a ``torch.distributed`` process group.

Without one (a single process) each is the identity on this process's value, so code that
uses them runs unchanged under ``torchrun`` and alone.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_distributed", "all_gather_objects"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (just ``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
