"""One switch for argument validation, as in ``torch.distributions``.

Checks of an argument's *type, shape, dtype and device* cost nothing and always run. Checks of
its *values* (times in [0, 1], ``s < t``, a decreasing time grid, 8-bit data, finite samples)
read the tensor back to the host: on a GPU each one stalls the CPU's queue of kernels and
rules out CUDA graphs. These run while validation is on (the default) and are skipped while it
is off::

    lc.set_validate_args(False)          # from now on
    with lc.validate_args(False):        # inside the block only
        loss = lc.diffusion_loss(model, c, x)

Each public call checks each input once. The generic checks of tensors that any public
function receives (:func:`check_like`, :func:`check_finite`, :func:`check_model_output`) live
here too; a corruption's own (shape, times) are its methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["set_validate_args", "validate_args", "is_validating", "check_finite", "check_like", "check_model_output",
           "check_nonempty", "check_labels", "NULL_LABEL"]

#: The class label of a conditional model's unconditional output (classifier-free guidance's null label).
NULL_LABEL = -1

_enabled = True


def set_validate_args(value: bool) -> None:
    """Turn the value checks of lincorrupt's public functions on (the default) or off."""
    global _enabled
    if not isinstance(value, bool):
        raise TypeError(f"set_validate_args expects a bool, got {type(value).__name__}")
    _enabled = value


def is_validating() -> bool:
    """Whether value checks run now."""
    return _enabled


@contextlib.contextmanager
def validate_args(value: bool) -> Iterator[None]:
    """Value checks on or off inside a ``with`` block; the previous setting is restored after it."""
    previous = _enabled
    set_validate_args(value)
    try:
        yield
    finally:
        set_validate_args(previous)


def check_finite(x: Tensor, name: str) -> None:
    """``ValueError`` if ``x`` holds NaN or Inf, while validation is on (one host sync; meta
    tensors have no values to check)."""
    if is_validating() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x)
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must be finite, but {int(bad.sum())} of its {x.numel()} values are NaN or "
                         f"Inf (the first, {x[first].item()}, at index {first})")


def check_nonempty(x: Tensor, name: str, needs: str) -> None:
    """``ValueError`` when the batch ``x`` (B, ...) holds no example, where ``needs`` (a mean over it) has no value."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); {needs} needs at least one example")


def check_like(y: Tensor, x: Tensor, name: str) -> None:
    """``TypeError``/``ValueError`` unless ``y`` (called ``name``) is a tensor of ``x``'s shape, device
    and dtype and, while validation is on, finite."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x, {tuple(x.shape)}; got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"{name} is on {y.device} but x is on {x.device}")
    if y.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {y.dtype} but x has {x.dtype}")
    check_finite(y, name)


def check_model_output(output, z_t: Tensor) -> Tensor:
    """The model's output, checked to be a tensor of ``z_t``'s shape (B, *shape) (a clear error otherwise)."""
    if not isinstance(output, Tensor):
        raise TypeError(f"the model must return a Tensor of shape {tuple(z_t.shape)}, got {type(output).__name__}")
    if output.shape != z_t.shape:
        raise ValueError(f"the model returned shape {tuple(output.shape)} for input z_t of shape "
                         f"{tuple(z_t.shape)}; a model maps (z_t, t) to a tensor of z_t's shape")
    return output


def check_labels(labels, n: int, num_classes: int | None = None, name: str = "labels") -> Tensor:
    """Class labels as a LongTensor (n,): integers in ``[-1, num_classes)`` (-1: :data:`NULL_LABEL`).

    ``labels`` may be a tensor, a list or an int (one label for all n). The range is checked while
    validation is on (one host sync), the upper end only when ``num_classes`` is given.

    Raises:
        TypeError: not integers (a float or bool tensor).
        ValueError: not of length n, or out of range.
    """
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.long)
    labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one class index per image, got {tuple(labels.shape)}")
    labels = labels.long()
    if is_validating() and n and labels.device.type != "meta":
        low, high = int(labels.min()), int(labels.max())
        if low < NULL_LABEL or (num_classes is not None and high >= num_classes):
            allowed = "at least -1" if num_classes is None else f"in -1 .. {num_classes - 1}"
            raise ValueError(f"{name} must be {allowed} (-1: the null label), got values from {low} to {high}")
    return labels
