"""A training state with NaN or infinity is never written: the check that refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["NonFiniteStateError", "check_finite"]


class NonFiniteStateError(FloatingPointError):
    """The model, EMA or optimiser state holds NaN or infinity (and is therefore not saved)."""


def check_finite(state: dict[str, Any], step: int, path: str | Path = "") -> None:
    """Refuse a state whose model, EMA or optimiser tensors hold NaN or infinity (one host sync).

    Raises:
        NonFiniteStateError: naming the step and the first non-finite tensors.
    """
    tensors = {f"{part}.{name}": t for part in ("model", "ema") for name, t in state[part].items()}
    for i, s in state["optimizer"]["state"].items():
        tensors.update({f"optimizer.state.{i}.{k}": t for k, t in s.items() if isinstance(t, torch.Tensor)})
    tensors = {k: t for k, t in tensors.items() if t.is_floating_point() or t.is_complex()}
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if bool(finite.all()):
        return
    bad = [k for k, ok in zip(tensors, finite.tolist()) if not ok]
    kept = (f"so {path} still holds an earlier, finite step: resume from it" if path and Path(path).is_file() else
            f"and no earlier checkpoint exists{f' at {path}' if path else ''}: start again")
    raise NonFiniteStateError(f"the training state at step {step} holds NaN or infinity (in {', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); not saved, {kept} with a lower lr or more warm-up")
