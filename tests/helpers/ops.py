"""Counting the aten operators a piece of code dispatches (each one a kernel launch on a GPU)."""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """``counts[name]``: how often each aten operator ran (``aten.add.Tensor`` and so on); ``copies``
    lists, for every dtype or layout copy, ``(op, input dtype, output dtype, output channels_last)``
    (None: not 4-d), and ``shapes`` its input's shape."""

    def __init__(self):
        super().__init__()
        self.counts, self.copies, self.shapes = Counter(), [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket.__name__)
        self.counts[f"aten.{name}"] += 1
        if name in ("_to_copy", "copy_", "clone"):
            src = args[1] if name == "copy_" else args[0]
            dst = out
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                layout = dst.is_contiguous(memory_format=torch.channels_last) if dst.dim() == 4 else None
                self.copies.append((name, src.dtype, dst.dtype, layout))
                self.shapes.append(tuple(src.shape))
        return out


def step_copies(trainer, x: torch.Tensor) -> tuple[list[tuple], int]:
    """The dtype/layout copies of one ``trainer.train_step(x)`` (after a first, validating step):
    ``(activation copies, parameter copies)``. A copy is of an activation when the batch size is
    among its first two sizes: pick a batch size (e.g. 6) that no layer width equals."""
    trainer.train_step(x)
    with OpCounter() as ops:
        trainer.train_step(x)
    batch = x.shape[0]
    acts = [c for c, shape in zip(ops.copies, ops.shapes) if batch in shape[:2]]
    return acts, len(ops.copies) - len(acts)
