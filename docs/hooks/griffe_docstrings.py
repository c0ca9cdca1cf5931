"""Griffe extension (loaded by mkdocstrings, see mkdocs.yml): two docstring conventions of
this code base that Google-style parsing does not know.

1. One ``Args:`` entry for several parameters, ``s, t: times with s < t``: split into one
   entry per parameter, each with the shared description (otherwise griffe warns that a
   parameter called ``"s, t"`` does not exist, and the strict build fails).
2. Sphinx roles such as ``:class:`~lincorrupt.priors.GaussianPrior``` or ``:meth:`fit```:
   rendered as inline code of the name they show (``GaussianPrior``, ``fit``).
3. Config fields declared with ``option(default, help, ...)`` (lincorrupt.train.cli): the help
   text, which is also the flag's ``--help``, becomes the attribute's docstring, and the
   default (not the ``option(...)`` call) is the value the signature shows.

Only the text given to the documentation changes; the code is untouched.
"""

from __future__ import annotations

import ast
import re

import griffe

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_MULTI = re.compile(r"^(\s*)(\**\w+(?:\s*,\s*\**\w+)+)(\s*\([^)]*\))?:(.*)$")
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


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
    return _ROLE.sub(_role, "\n".join(out))


def option_call(node: ast.AST) -> ast.Call | None:
    """The ``option(default, help, ...)`` call a field is assigned, else None."""
    call = getattr(node, "value", None)
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "option" and len(call.args) == 2:
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
