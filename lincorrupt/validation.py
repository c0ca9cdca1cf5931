"""One switch for argument validation, as in ``torch.distributions``.

Checks of an argument's *type, shape, dtype and device* cost nothing and always run. Checks of
its *values* (times in [0, 1], ``s < t``, a decreasing time grid, 8-bit data, finite samples)
read the tensor back to the host: on a GPU each one stalls the CPU's queue of kernels and
rules out CUDA graphs. These run while validation is on (the default) and are skipped while it
is off::

    lc.set_validate_args(False)          # from now on
    with lc.validate_args(False):        # inside the block only
        loss = lc.diffusion_loss(model, c, x)

Each public call checks each input once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["set_validate_args", "validate_args", "is_validating"]

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
