"""Modules that record their constructor arguments, so ``type(m)(**m.config)`` rebuilds them.

Every class derived from :class:`Configurable` (the corruptions, the priors, the bases, the
UNet) gets, once its outermost ``__init__`` has returned, a ``config`` dict: the arguments it
was called with, defaults filled in, by the names of its ``__init__`` signature. A new subclass
gets this for free: nothing to register, no decorator (diffusers' ``register_to_config`` does
the same by decoration). After recording, the metaclass calls :meth:`Configurable.finish_init`,
a hook for checks that need the complete object (a corruption's Markov validity check).

:func:`module_spec` turns a module into plain data for a checkpoint (its class, its config,
the specs of module-valued arguments, tensor arguments by reference into the module's state
dict where the state already holds them); :func:`build_module` rebuilds it from that spec and
the saved state dict, registering buffers that a constructor leaves ``None`` and fitting
ones set after construction (e.g. a prior fitted to data) from the saved keys, so fitted
statistics travel without any list of their names.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Configurable", "module_spec", "build_module", "restore_state", "SpecError", "LOADABLE_MODULES"]

#: Every Configurable class by ``module.qualname``: the only classes a checkpoint may name.
_CLASSES: dict[str, type] = {}

#: The library's modules that define Configurable classes: the only modules a file may make
#: :func:`build_module` import (``lincorrupt.nn.unet`` is not imported by ``import lincorrupt``).
#: Any other module named by a file is refused unimported: importing a module runs its code.
LOADABLE_MODULES = ("lincorrupt.config", "lincorrupt.basis", "lincorrupt.priors", "lincorrupt.corruption",
                    "lincorrupt.corruptions.ddpm", "lincorrupt.corruptions.ihdm", "lincorrupt.corruptions.blurring",
                    "lincorrupt.corruptions.soft", "lincorrupt.nn.unet")


class SpecError(ValueError):
    """A saved module description cannot be rebuilt (unknown class, unexpected arguments)."""


def class_name(cls: type) -> str:
    """``"package.module.QualName"``: how a spec names a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


class _RecordsArguments(type):
    """Metaclass: after ``cls(*args, **kwargs)`` has built the object, record its arguments."""

    def __init__(cls, name, bases, namespace, **kwargs):
        super().__init__(name, bases, namespace, **kwargs)
        _CLASSES[class_name(cls)] = cls

    @property
    def __signature__(cls) -> inspect.Signature:
        """The constructor's parameters without ``self`` (``help()``, IDEs and ``inspect.signature(cls)`` would
        see this metaclass's ``__call__(*args, **kwargs)``); a property of the metaclass, so that instances
        (callable modules) keep the signature of their ``forward``."""
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        bound.apply_defaults()
        config: dict[str, Any] | None = {}
        for name, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
            if param.kind is param.VAR_POSITIONAL and bound.arguments.get(name):
                config = None  # positional *args have no names to rebuild from: module_spec refuses it
                break
            if param.kind is param.VAR_KEYWORD:
                config.update(bound.arguments.get(name, {}))
            elif param.kind is not param.VAR_POSITIONAL:
                config[name] = bound.arguments[name]
        obj.config = config
        obj.finish_init()
        return obj


class Configurable(nn.Module, metaclass=_RecordsArguments):
    """Base of modules that record their constructor arguments in ``self.config`` (a dict; None
    when the constructor was given positional ``*args``, which have no names)."""

    config: dict[str, Any] | None

    def finish_init(self) -> None:
        """Called once, after the outermost ``__init__`` returned and ``config`` was recorded."""


def module_spec(module: nn.Module, state: dict[str, Tensor] | None = None, prefix: str = "") -> dict[str, Any]:
    """Plain data (str, numbers, lists, dicts, tensors) that rebuild ``module`` with :func:`build_module`.

    A config value that is a module is described by the module now at that attribute (a prior
    assigned after construction replaces the one passed in). A tensor value equal to the entry
    of ``state`` (``module.state_dict()`` of the outermost module) that holds it is stored as a
    reference ``{"state_key": key}``, so a buffer is saved once.

    Raises:
        SpecError: ``module`` is not :class:`Configurable`.
    """
    if not isinstance(module, Configurable):
        raise SpecError(f"{type(module).__name__} does not record its constructor arguments (derive it from "
                        f"lincorrupt.config.Configurable), so it cannot be rebuilt from a file")
    if module.config is None:
        raise SpecError(f"{type(module).__name__} was built with positional *args, which have no names to record; "
                        f"pass them by name so that it can be rebuilt from a file")
    state = module.state_dict() if state is None else state
    config = {}
    for name, value in module.config.items():
        current = getattr(module, name, value)
        if isinstance(current, nn.Module) and isinstance(value, (nn.Module, type(None))):
            config[name] = {"module": module_spec(current, state, f"{prefix}{name}.")}
        elif isinstance(value, nn.Module):
            config[name] = {"module": module_spec(value, state, f"{prefix}{name}.")}
        elif isinstance(value, Tensor):
            key = f"{prefix}{name}"
            same = key in state and state[key].shape == value.shape and torch.equal(
                state[key].detach().cpu().to(value.dtype), value.detach().cpu())
            config[name] = {"state_key": key} if same else {"tensor": value.detach().cpu()}
        else:
            config[name] = {"value": _plain(value, f"{type(module).__name__}.config[{name!r}]")}
    return {"class": class_name(type(module)), "config": config}


def _plain(value: Any, where: str) -> Any:
    """``value`` if it is plain data a weights-only checkpoint can hold (tuples become lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, where) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value)
    raise SpecError(f"{where} is a {type(value).__name__}, which a checkpoint cannot store as plain data")


def build_module(spec: dict[str, Any], state: dict[str, Tensor] | None = None, prefix: str = "",
                 expected: type = nn.Module) -> nn.Module:
    """Rebuild a module from :func:`module_spec`'s ``spec``, then load ``state`` into it (:func:`restore_state`).

    Only classes derived from :class:`Configurable` can be named: lincorrupt's own (its module, one of
    :data:`LOADABLE_MODULES`, is imported when needed, e.g. ``lincorrupt.nn.unet`` for the UNet) or
    ones defined in this process (no other module is imported here: a custom corruption's module
    must be imported first).

    Raises:
        SpecError: ``spec`` is malformed, the class is unknown or not an ``expected``, a reference is
            missing from ``state``, or the constructor refuses the arguments.
    """
    _check_spec(spec, prefix)
    cls = _named_class(spec["class"])
    if not issubclass(cls, expected):
        raise SpecError(f"the file names {spec['class']} where a {expected.__name__} was expected")
    kwargs = {}
    for name, entry in spec["config"].items():
        if "module" in entry:
            kwargs[name] = build_module(entry["module"], state, f"{prefix}{name}.")
        elif "state_key" in entry:
            if state is None or entry["state_key"] not in state:
                raise SpecError(f"{cls.__name__} argument {name!r} refers to the saved tensor {entry['state_key']!r}, "
                                "which the file lacks")
            kwargs[name] = state[entry["state_key"]]
        elif "tensor" in entry:
            kwargs[name] = entry["tensor"]
        else:
            kwargs[name] = _unplain(entry["value"])
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{cls.__name__}(**config) from the file failed: {e}") from e
    if state is not None and not prefix:
        restore_state(module, state)
    return module


#: The keys of a spec's config entry: exactly one says what the argument is.
_ENTRY_KINDS = ("module", "state_key", "tensor", "value")


def _check_spec(spec: Any, prefix: str) -> None:
    """Refuse a spec that is not ``{"class": str, "config": {name: {kind: ...}}}`` (one kind of
    :data:`_ENTRY_KINDS` per entry), naming where it is malformed."""
    where = f"the spec of {prefix.rstrip('.') or 'the module'}"
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) or not isinstance(spec.get("config"),
                                                                                                dict):
        raise SpecError(f"{where} is malformed: expected a dict with a 'class' name and a 'config' dict")
    for name, entry in spec["config"].items():
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in _ENTRY_KINDS:
            raise SpecError(f"{where}: argument {name!r} is malformed: expected a dict with one of the keys "
                            f"{', '.join(_ENTRY_KINDS)}, got {entry!r:.80}")


def _named_class(name: str) -> type:
    """The Configurable class ``name`` ("module.QualName"), importing its module only if it is one of
    :data:`LOADABLE_MODULES`.

    Raises:
        SpecError: no such class here, naming why and what to do.
    """
    module = name.rsplit(".", 1)[0]
    if name not in _CLASSES and module in LOADABLE_MODULES:
        importlib.import_module(module)
    if name in _CLASSES:
        return _CLASSES[name]
    if name.startswith("__main__."):  # a script's classes, nested ones too
        raise SpecError(f"the file names class {name!r}, defined in the script that saved it: another process cannot "
                        f"import a script's classes; move the class into a module importable in the loading "
                        f"process (a .py file on its path) and import that module before loading")
    if name.startswith("lincorrupt."):
        raise SpecError(f"the file names class {name!r}, whose module is not one of the library's modules that "
                        f"define loadable classes; refused without importing it")
    raise SpecError(f"the file names class {name!r}, which is not defined in this process; import the module that "
                    f"defines it ({module}) before loading")


def _unplain(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("torch.") and isinstance(getattr(torch, value[6:], None),
                                                                             torch.dtype):
        return getattr(torch, value[6:])
    return value


def restore_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """``module.load_state_dict(state)`` (strict), after registering every saved buffer that the
    freshly built module holds as ``None`` or lacks (statistics fitted after construction).

    Raises:
        RuntimeError: a key of ``state`` names no submodule or clashes with an attribute, a value is not a
            tensor, or a tensor's shape differs.
    """
    own = module.state_dict()
    for key, value in state.items():
        if key in own:
            continue
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise RuntimeError(f"saved entry {key!r} of {type(module).__name__} is a {type(value).__name__}, "
                               f"expected a tensor under a str key")
        owner_name, _, attr = key.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            raise RuntimeError(f"saved buffer {key!r} names no submodule of {type(module).__name__}") from None
        if attr in owner._parameters:
            raise RuntimeError(f"saved parameter {key!r} is None in the rebuilt {type(module).__name__}")
        if attr in vars(owner):  # a plain attribute: None until fitted
            if vars(owner)[attr] is not None:
                raise RuntimeError(f"saved buffer {key!r} clashes with attribute {attr!r} of {type(owner).__name__}")
            delattr(owner, attr)
        try:
            owner.register_buffer(attr, torch.empty_like(value, device=_device_of(module)))
        except KeyError as e:  # a method's or a submodule's name, an empty name
            raise RuntimeError(f"saved buffer {key!r} clashes with {type(owner).__name__}: {e.args[0]}") from None
    module.load_state_dict(state)


def _device_of(module: nn.Module) -> torch.device:
    return next((t.device for t in module.state_dict().values()), torch.device("cpu"))
