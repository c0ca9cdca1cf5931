"""Dataclass configs as command-line flags (``steps`` -> ``--steps``, bools as ``--x/--no-x``).

A config field is declared once with :func:`option`: its default, its help text (the flag's
``--help`` and the attribute's entry in the API reference) and the values it admits
(``choices`` or an :class:`Interval`), which :func:`check_options` enforces in the
dataclass's ``__post_init__``, so a config built in Python is checked like one built from flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["parse_config", "given_options", "resumed_config", "option", "Interval", "OptionError", "check_options"]

T = TypeVar("T")


class OptionError(ValueError):
    """A config field holds a value it does not admit; ``name`` is the field, the message names it too."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


@dataclasses.dataclass(frozen=True)
class Interval:
    """The finite numbers between ``low`` and ``high`` (each bound excluded when ``*_open``)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        low = f"{'>' if self.low_open else '>='} {self.low:g}"
        high = f"{'<' if self.high_open else '<='} {self.high:g}"
        if math.isinf(self.high):
            return low
        if math.isinf(self.low):
            return high
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, bounds: Interval | None = None) -> Any:
    """A dataclass field with its help text and admitted values (``bounds`` applies to each
    element of a tuple)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if bounds is not None:
        metadata["bounds"] = bounds
    return dataclasses.field(default=default, metadata=metadata)


def check_options(config: Any) -> None:
    """Raise :class:`OptionError` for the first field of ``config`` not of its declared type (an int
    field refuses 1.5 and True, a float field takes an int) or outside its ``choices`` or ``bounds``."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _has_type(value, hints[f.name]):
            raise OptionError(f.name, f"{f.name} must be {_type_name(hints[f.name])}, got {value!r} "
                                      f"({type(value).__name__})")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise OptionError(f.name, f"{f.name}={value!r}: expected one of {f.metadata['choices']}")
        bounds = f.metadata.get("bounds")
        values = value if isinstance(value, tuple) else (value,)
        if bounds is not None and not all(_is_number(v) and v in bounds for v in values):
            finite = not _is_number(value) or math.isfinite(value)
            what = "hold finite values" if isinstance(value, tuple) else "be" if finite else "be finite and"
            raise OptionError(f.name, f"{f.name} must {what} {bounds}, got {value!r}")


_SCALAR_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the field type ``hint`` (bool, int, float, str or tuple[X, ...]; others pass)."""
    if typing.get_origin(hint) is tuple:
        element = typing.get_args(hint)[0]
        return isinstance(value, (tuple, list)) and all(_has_type(v, element) for v in value)
    if hint not in _SCALAR_TYPES:
        return True
    return isinstance(value, _SCALAR_TYPES[hint]) and (hint is bool or not isinstance(value, bool))


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a tuple of {_type_name(typing.get_args(hint)[0])}s"
    return {bool: "a bool", int: "an int", float: "a number", str: "a str"}.get(hint, str(hint))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tuple_of_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2,2, got {text!r}") from None


def _tuple_of_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.05,0.1, got {text!r}") from None


def _mapping_of_floats(text: str) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in (item.split("=") for item in text.replace(" ", "").split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated name=number pairs such as gamma=5, got "
                                         f"{text!r}") from None


def _is_mapping(hint: Any) -> bool:
    """Whether ``hint`` is ``dict[...]`` or ``dict[...] | None``."""
    return any(typing.get_origin(h) is dict for h in (hint, *typing.get_args(hint)))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser(cls: type, description: str | None, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     argument_default=argparse.SUPPRESS if suppress_defaults else None)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        kw = {"help": f.metadata.get("help", " "), "dest": f.name}
        if not suppress_defaults:
            kw["default"] = f.default
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(kind) is tuple:
            element = typing.get_args(kind)[0]
            parser.add_argument(_flag(f.name), type=_tuple_of_floats if element is float else _tuple_of_ints, **kw)
        elif _is_mapping(kind):
            parser.add_argument(_flag(f.name), type=_mapping_of_floats, **kw)
        else:
            parser.add_argument(_flag(f.name), type=kind, **kw)
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Build ``cls(...)`` from flags; every field's default is the flag's default.

    Field types: int, float, str, bool (``--flag``/``--no-flag``), tuple[int, ...] (``1,2,2,2``),
    tuple[float, ...] (``0.05,0.1``), dict[str, float] (``gamma=5,b=1``).
    A field's ``metadata["choices"]`` restricts its values; ``metadata["help"]`` documents it
    (see :func:`option`). Invalid values, and an :class:`OptionError` or ``ValueError`` of the
    dataclass's own checks, exit with argparse's usage message, naming the flag.
    """
    parser = _parser(cls, description)
    args = parser.parse_args(argv)
    try:
        return cls(**vars(args))
    except OptionError as e:
        parser.error(f"argument {_flag(e.name)}: {e}")
    except ValueError as e:
        parser.error(str(e))


def given_options(cls: type, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` set explicitly by the flags ``argv``, with their parsed values."""
    return vars(_parser(cls, None, suppress_defaults=True).parse_args(argv))


def resumed_config(cls: type[T], recorded: Mapping[str, Any], given: Mapping[str, Any], resumable: Collection[str],
                   path: Any = "the checkpoint") -> T:
    """The config a resumed run continues with: ``cls`` built from the ``recorded`` one (e.g. a Trainer checkpoint's
    ``"config"``; fields ``cls`` lacks are dropped) with the ``given`` flags (:func:`given_options`) applied.

    Flags named in ``resumable`` (how long, how often, where and how fast to run) may change the recorded value;
    any other given flag must repeat it.

    Raises:
        lincorrupt.train.CheckpointError: a given flag outside ``resumable`` contradicts the record, naming both
            values and ``path``.
    """
    from lincorrupt.train.checkpoint import CheckpointError

    names = {f.name for f in dataclasses.fields(cls)}
    stored = cls(**{k: v for k, v in recorded.items() if k in names})
    wanted = cls(**{**dataclasses.asdict(stored), **given})
    conflicts = [f"{_flag(name)} {getattr(wanted, name)!r} (the checkpoint's: {getattr(stored, name)!r})"
                 for name in given if name not in resumable and getattr(wanted, name) != getattr(stored, name)]
    if conflicts:
        raise CheckpointError(f"{path} was trained with other settings than the flags ask for: {'; '.join(conflicts)}. "
                              f"Leave these flags out to continue with the checkpoint's values, or start a new run "
                              f"in another --out-dir; flags that may change: {', '.join(sorted(resumable))}")
    return wanted
