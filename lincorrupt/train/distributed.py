"""torch.distributed set-up for runs launched by ``torchrun`` (NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from lincorrupt.collectives import all_gather_objects, is_distributed

__all__ = ["DistInfo", "init_distributed", "is_distributed", "all_gather_objects", "all_reduce_mean", "any_rank",
           "barrier"]

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: Seconds a process waits for its peers in a collective (or to join) before failing.
DEFAULT_TIMEOUT = 1800.0


def init_distributed(device: str | torch.device | None = None, timeout: float = DEFAULT_TIMEOUT) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available). On CUDA each process uses
            GPU ``LOCAL_RANK``.
        timeout: seconds to wait for the peers in any collective; a peer that stopped or hangs
            makes the others fail with an error after this long instead of blocking forever.

    Returns:
        The :class:`DistInfo` of this process (rank 0 of 1 without torchrun).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in BACKENDS:
        raise ValueError(f"device {device}: expected one of {sorted(BACKENDS)}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not is_distributed():
        dist.init_process_group(BACKENDS[device.type], device_id=device if device.type == "cuda" else None,
                                timeout=timedelta(seconds=timeout))
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def any_rank(flag: bool, sync: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank: this process's flag outside DDP; under DDP every rank's, agreed on
    (a host sync) only where ``sync`` (e.g. at log steps, so a signal stops a distributed run at the next one)."""
    if not is_distributed():
        return flag
    if not sync:
        return False
    both = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
    return bool(both.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()
