"""Sampling without per-kernel launch overhead: the network replayed from a CUDA graph.

    graphed = CUDAGraphModel(model)          # model(z_t, t) -> Tensor, in eval mode
    x = lc.sample(graphed, corruption, 256, steps=50, method="dpm++2m", device="cuda")

A sampler calls the network once per step with inputs of one shape, so the network's hundreds
of kernel launches can be captured once (:class:`torch.cuda.CUDAGraph`) and replayed as one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["CUDAGraphModel"]


class CUDAGraphModel(nn.Module):
    """``model(z_t, t)``, replayed on CUDA from a graph captured once per input signature.

    The first call with a new (shape, dtype, device) of ``z_t`` and ``t`` runs ``model``
    ``warmup`` times on a side stream (cuDNN and cuBLAS pick their kernels there), captures one
    call into a CUDA graph, and keeps static input and output buffers; every later call with that
    signature copies its inputs into the buffers, replays the graph and returns a copy of the
    output (callers may keep it across steps, as multistep samplers do). Off CUDA it simply calls
    ``model``: the same code runs on any device.

    For inference only, under :func:`torch.no_grad` (as :func:`lincorrupt.sample` runs): the
    model must be deterministic in eval mode (no dropout at eval), read nothing back to the host
    and keep its weights where they were at capture (a graph replays the addresses it captured:
    load new weights in place, with ``load_state_dict``, not by replacing tensors).

    Args:
        model: ``model(z_t, t) -> Tensor`` (e.g. a UNet under :class:`lincorrupt.train.precision.Autocast`).
        warmup: eager calls before each capture (at least 1).
    """

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], warmup: int = 2):
        super().__init__()
        if warmup < 1:
            raise ValueError(f"CUDAGraphModel: warmup must be >= 1 (eager calls before a capture), got {warmup}")
        self.model, self.warmup = model, warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        if z_t.device.type != "cuda":
            return self.model(z_t, t)
        if torch.is_grad_enabled():
            raise RuntimeError("CUDAGraphModel replays inference only: call it under torch.no_grad() "
                               "(lincorrupt.sample does), or call the model itself to train it")
        t = torch.as_tensor(t, device=z_t.device)
        key = (tuple(z_t.shape), z_t.dtype, tuple(t.shape), t.dtype, z_t.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(z_t, t)
        graph, z_in, t_in, out = self._graphs[key]
        z_in.copy_(z_t)
        t_in.copy_(t)
        graph.replay()
        return out.clone()

    def _capture(self, z_t: Tensor, t: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        """A graph of one ``model`` call on static copies of ``z_t`` and ``t``."""
        z_in, t_in = z_t.clone(), t.clone()
        side = torch.cuda.Stream(z_t.device)
        side.wait_stream(torch.cuda.current_stream(z_t.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(z_in, t_in)
        torch.cuda.current_stream(z_t.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(z_in, t_in)
        return graph, z_in, t_in, out

    def reset(self) -> None:
        """Drop the captured graphs and their buffers (the next call captures again)."""
        self._graphs.clear()
