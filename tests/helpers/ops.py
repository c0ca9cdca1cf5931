"""Counting the aten operators a piece of code dispatches (each one a kernel launch on a GPU)."""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """``counts[name]``: how often each aten operator ran (``aten.add.Tensor`` and so on); ``copies``
    lists, for every dtype or layout copy, ``(op, input dtype, output dtype, output channels_last)``."""

    def __init__(self):
        super().__init__()
        self.counts, self.copies = Counter(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket.__name__)
        self.counts[f"aten.{name}"] += 1
        if name in ("_to_copy", "copy_", "clone"):
            src = args[1] if name == "copy_" else args[0]
            dst = out
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and dst.dim() == 4:
                self.copies.append((name, src.dtype, dst.dtype, dst.is_contiguous(memory_format=torch.channels_last)))
            elif isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                self.copies.append((name, src.dtype, dst.dtype, None))
        return out
