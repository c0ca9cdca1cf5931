"""The optimiser of a training run: Adam/AdamW with fused kernels where possible, and the warm-up."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "FUSED_DEVICES", "FUSED_DTYPES", "kernel_options", "make_optimizer", "keep_kernel_options",
           "Warmup"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: Devices and parameter dtypes for which torch has fused Adam/AdamW kernels (one kernel per
#: step instead of one per tensor, and no host read of the step count).
FUSED_DEVICES = ("cuda", "cpu")
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def kernel_options(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` where every parameter is a dense floating tensor on a device with fused
    Adam kernels (:data:`FUSED_DEVICES`, :data:`FUSED_DTYPES`), else ``{"foreach": True}``."""
    fused = all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES and not p.is_sparse for p in params)
    return {"fused": True, "foreach": False} if fused else {"fused": False, "foreach": True}


def make_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """``config.optimizer`` (a key of :data:`OPTIMIZERS`) with ``config.lr`` and ``config.weight_decay``
    over ``model``'s parameters, fused where they allow it, else foreach."""
    params = list(model.parameters())
    return OPTIMIZERS[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay,
                                        **kernel_options(params))


def keep_kernel_options(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` (whose saved groups carry the writer's kernel options): this
    run's options again, with each step count on its parameter's device where the kernel is fused."""
    for group in optimizer.param_groups:
        group.update(kernel_options(group["params"]))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                if group["fused"]:
                    state["step"] = state["step"].to(p.device, torch.float32)


class Warmup:
    """Learning-rate factor ``min(1, (step + 1) / warmup_steps)`` (a class so it checkpoints)."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
