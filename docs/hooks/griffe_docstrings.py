"""Griffe extension (loaded by mkdocstrings, see mkdocs.yml): the conventions of this code base
that Google-style parsing does not know, and what the reference should not show.

1. One ``Args:`` entry for several parameters, ``s, t: times with s < t``: split into one
   entry per parameter, each with the shared description (otherwise griffe warns that a
   parameter called ``"s, t"`` does not exist, and the strict build fails).
2. Sphinx roles such as ``:class:`~lincorrupt.priors.GaussianPrior``` or ``:meth:`fit```:
   rendered as inline code of the name they show (``GaussianPrior``, ``fit``);
   ``:math:`\alpha_t``` becomes ``$\alpha_t$``, rendered by KaTeX like the pages' math.
3. Config fields declared with ``option(default, help, ...)`` (lincorrupt.train.cli): the help
   text, which is also the flag's ``--help``, becomes the attribute's docstring, and the
   default (not the ``option(...)`` call) is the value the signature shows.
4. ``#:`` comment lines right above a module or class attribute (Sphinx's attribute doc
   comments) become its docstring, so registries such as ``SAMPLERS`` are documented.
5. A method without a docstring that overrides a documented one inherits its docstring, as
   ``inspect.getdoc`` does.
6. Not API, so left out of the reference: ``extra_repr`` (how ``torch.nn.Module`` prints
   itself), special methods other than ``__init__`` and ``__call__`` (``__len__``,
   ``__post_init__``, ...), and instance attributes set in ``__init__`` that have no docstring
   (a network's layers, a trainer's internals). Module members follow ``__all__``
   (mkdocs.yml filters on ``public``).

Only the text given to the documentation changes; the code is untouched.
"""

from __future__ import annotations

import ast
import re

import griffe

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_MULTI = re.compile(r"^(\s*)(\**\w+(?:\s*,\s*\**\w+)+)(\s*\([^)]*\))?:(.*)$")
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
NOT_API = {"extra_repr"}
KEEP_SPECIAL = {"__init__", "__call__"}  # merged into the class; how an object is called


def _role(match: re.Match) -> str:
    target = match.group(2).strip()
    if target.startswith("!"):
        target = target[1:]
    shown = target.split(".")[-1] if match.group(1) == "~" else target
    return f"`{shown}`"


def rewrite(text: str) -> str:
    """The docstring with multi-name Args entries split and Sphinx roles turned into code."""
    lines = text.splitlines()
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and indent <= section_indent:
            section_indent = None  # the Args section ended
        multi = _MULTI.match(line) if section_indent is not None else None
        if multi:
            # The entry continues on deeper-indented lines.
            block = [line]
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].strip()):
                    break
                block.append(lines[j])
                j += 1
            names = [n.strip() for n in multi.group(2).split(",")]
            for name in names:
                out.append(f"{multi.group(1)}{name}{multi.group(3) or ''}:{multi.group(4)}")
                out.extend(block[1:])
            i = j
            continue
        out.append(line)
        i += 1
    return _ROLE.sub(_role, _MATH.sub(r"$\1$", "\n".join(out)))


def doc_comment(attr: griffe.Attribute) -> str | None:
    """The ``#:`` lines right above ``attr``'s assignment, without the markers, or None."""
    lines = attr.module.lines if attr.lineno else []   # the whole file; lineno counts from 1
    found: list[str] = []
    i = attr.lineno - 2  # the line above the assignment, 0-based
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return "\n".join(found) or None


def inherited_docstring(method: griffe.Object) -> griffe.Docstring | None:
    """The docstring of the nearest documented method of the same name in the class's bases."""
    for base in method.parent.mro():
        parent_method = base.members.get(method.name)
        if parent_method is not None and not parent_method.is_alias and parent_method.docstring is not None:
            return parent_method.docstring
    return None


def is_not_api(member: griffe.Object) -> bool:
    """A class member the reference leaves out (see the module docstring, point 6)."""
    special = member.name.startswith("__") and member.name.endswith("__")
    return (member.name in NOT_API
            or (special and member.name not in KEEP_SPECIAL)
            or (member.is_attribute and member.docstring is None and _set_in_a_method(member)))


def _set_in_a_method(attr: griffe.Attribute) -> bool:
    """``self.x = ...`` inside a method (not a field declared in the class body)."""
    return any(m.is_function and not m.is_alias and m.lineno <= attr.lineno <= (m.endlineno or m.lineno)
               for m in attr.parent.members.values())


def _walk(obj: griffe.Object):
    """``obj`` and every object defined (not imported) inside it, depth first."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def option_call(node: ast.AST) -> ast.Call | None:
    """The ``option(default, help, ...)`` call a field is assigned, else None."""
    call = getattr(node, "value", None)
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "option"
            and len(call.args) == 2):
        return call
    return None


class DocstringConventions(griffe.Extension):
    """Apply :func:`rewrite` to every docstring as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

    def on_attribute_instance(self, *, node: ast.AST, attr: griffe.Attribute, **kwargs) -> None:
        """A field declared with ``option(default, help)``: its help text as docstring, its default as value."""
        call = option_call(node) if isinstance(node, ast.AST) else None
        if call is None:
            return
        default, text = call.args
        attr.value = griffe.safe_get_expression(default, parent=attr.parent) or attr.value
        if isinstance(text, ast.Constant) and isinstance(text.value, str) and attr.docstring is None:
            attr.docstring = griffe.Docstring(rewrite(text.value), parent=attr)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        """Once every module is loaded (base classes resolve): doc comments, inheritance, non-API."""
        not_api = []
        for obj in _walk(pkg):
            if obj.docstring is None and obj.is_attribute and (obj.parent.is_module or obj.parent.is_class):
                text = doc_comment(obj)
                if text:
                    obj.docstring = griffe.Docstring(rewrite(text), parent=obj)
            if obj.parent is None or not obj.parent.is_class:
                continue
            if is_not_api(obj):
                not_api.append(obj)
            elif obj.is_function and obj.docstring is None:
                docstring = inherited_docstring(obj)
                if docstring is not None:
                    obj.docstring = griffe.Docstring(docstring.value, parent=obj)
        # Removed from the model rather than marked private, so that no page shows them, also
        # where a class is rendered through a re-export (an alias of it).
        for obj in not_api:
            del obj.parent.members[obj.name]
