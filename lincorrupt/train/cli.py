"""Expose a dataclass config as command-line flags (``steps`` -> ``--steps``, bools as ``--x/--no-x``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Sequence, TypeVar

__all__ = ["parse_config"]

T = TypeVar("T")


def _tuple_of_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2,2, got {text!r}") from None


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Build ``cls(...)`` from flags; every field's default is the flag's default.

    Field types: int, float, str, bool (``--flag``/``--no-flag``), tuple[int, ...] (``1,2,2,2``).
    A field's ``metadata["choices"]`` restricts its values; ``metadata["help"]`` documents it.
    Invalid values exit with argparse's usage message, naming the flag.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, flag = hints[f.name], "--" + f.name.replace("_", "-")
        kw = {"default": f.default, "help": f.metadata.get("help", " "), "dest": f.name}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=_tuple_of_ints, **kw)
        else:
            parser.add_argument(flag, type=kind, **kw)
    args = parser.parse_args(argv)
    try:
        return cls(**vars(args))
    except ValueError as e:  # the dataclass's own validation
        parser.error(str(e))
