"""The KaTeX build hook (docs/hooks/katex.py) turns bad math into build warnings, which fail
``mkdocs build --strict``: a TeX error, and a control character in a formula's source (a TAB
typed for the ``\\t`` of ``\\text``: Markdown expands it to spaces and KaTeX renders "ext"
without complaint). The docs' Markdown and the package's docstrings hold no such formula."""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "docs" / "hooks" / "katex.py"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every control character but the newline


def _load_hook():
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("lincorrupt_docs_katex_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def katex_hook():
    module = _load_hook()
    if shutil.which("node") is None or not (module.KATEX_DIST / "katex.js").is_file():
        pytest.skip("Node.js and KaTeX (make docs-deps) are needed to render math")
    return module


def _render_page(hook, body: str, caplog) -> tuple[str, list[str]]:
    page = SimpleNamespace(file=SimpleNamespace(src_uri="page.md"))
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.katex"):
        caplog.clear()
        out = hook.on_post_page(f"<html><body>{body}</body></html>", page, None)
    return out, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_clean_math_renders_without_warnings(katex_hook, caplog):
    out, warnings = _render_page(katex_hook, r'<span class="arithmatex">\(\min(\text{ema\_decay}, 1)\)</span>'
                                             '<div class="arithmatex">\\[a\n+ b\\]</div>', caplog)
    assert warnings == []
    assert out.count('class="katex"') == 2 and "ema_decay" in out


@pytest.mark.parametrize("char", ["\t", "\r", "\x0c", "\x08", "\x7f"])
def test_a_control_character_in_a_formula_is_a_build_warning(katex_hook, caplog, char):
    """``\\t`` of ``\\text`` typed in a Python string without ``r`` becomes a TAB (and ``\\f``,
    ``\\b``, ``\\r`` other controls); KaTeX renders it without complaint, so the hook must."""
    formula = r"\min(" + char + r"ext{ema\_decay}, 1)"
    _, warnings = _render_page(katex_hook, f'<span class="arithmatex">\\({formula}\\)</span>', caplog)
    assert any("control character" in w and repr(char) in w for w in warnings), warnings


def test_a_tex_error_is_a_build_warning(katex_hook, caplog):
    out, warnings = _render_page(katex_hook, r'<span class="arithmatex">\(\frac{1}{\)</span>', caplog)
    assert warnings and "KaTeX" in warnings[0], warnings
    assert r"\frac{1}{" in out  # the source stays visible rather than vanishing


def test_the_markdown_check_finds_a_tab_in_a_formula_and_its_line(caplog):
    hook = _load_hook()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="page.md"))
    source = ("Prose with a\ttab and `$code\t$` are fine,\n```\n$x\t$\n```\n"
              "but not $\\min(\text{ema\\_decay}, 1)$.\n$$\na\fb\n$$\n")
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.katex"):
        assert hook.on_page_markdown(source, page, None, None) == source
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "page.md line 5" in messages[0] and "'\\t'" in messages[0]
    assert "page.md line 6" in messages[1] and "'\\x0c'" in messages[1]


def test_no_formula_of_the_docs_holds_a_control_character():
    """Every page and snippet under docs/, read as Markdown reads it."""
    hook = _load_hook()
    found = [f"{page.relative_to(ROOT)}:{line}: {tex!r}"
             for page in sorted((ROOT / "docs").rglob("*.md")) if "node_modules" not in page.parts
             for line, tex in hook.markdown_math(page.read_text(encoding="utf-8")) if CONTROL.search(tex)]
    assert not found, "control characters in formulas (a TAB where \\t was meant?):\n" + "\n".join(found)


def test_no_docstring_of_the_package_holds_a_control_character():
    """Docstrings become reference pages with KaTeX math; a non-raw ``"\\text"`` holds a TAB."""
    found = []
    for path in sorted((ROOT / "lincorrupt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc and CONTROL.search(doc):
                    found.append(f"{path.relative_to(ROOT)}: {getattr(node, 'name', '<module>')}")
    assert not found, "control characters in docstrings:\n" + "\n".join(found)
