"""MkDocs hook: render the pages' mathematics with KaTeX at build time.

Markdown writes math as ``$...$`` (inline) and ``$$...$$`` (display); ``pymdownx.arithmatex``
in generic mode turns them into ``<span class="arithmatex">\\(...\\)</span>`` and
``<div class="arithmatex">\\[...\\]</div>``. This hook replaces each of those by KaTeX's HTML
(rendered by ``docs/_katex/render.js`` under Node.js, one process per page) and ships KaTeX's
stylesheet and fonts inside the site, so the pages need no JavaScript and no network to show
their equations. A TeX error is a build error, and so is a control character (other than a
newline) in a formula of a page's Markdown source: Markdown expands a TAB typed where the ``\\t``
of ``\\text`` was meant into spaces, and KaTeX then renders "ext" without complaint, so the check
reads the source before Markdown does (and the rendered formulas again, for docstrings).

KaTeX comes from the npm registry, pinned by ``docs/_katex/package-lock.json``; ``make docs-deps``
(a prerequisite of ``make test`` and ``make docs``) runs ``npm ci`` there.
"""

from __future__ import annotations

import html
import json
import logging
import re
import subprocess
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.katex")

KATEX_DIR = Path(__file__).resolve().parent.parent / "_katex"
KATEX_DIST = KATEX_DIR / "node_modules" / "katex" / "dist"
RENDER_JS = KATEX_DIR / "render.js"
SITE_PREFIX = "assets/katex"  # where katex.min.css and fonts/ land in the built site

# Macros shared by every page (KaTeX syntax).
MACROS = {
    r"\R": r"\mathbb{R}",
    r"\N": r"\mathcal{N}",
    r"\diag": r"\operatorname{diag}",
    r"\SNR": r"\operatorname{SNR}",
    r"\E": r"\mathbb{E}",
}

# arithmatex (generic mode) output; the TeX inside is HTML-escaped.
_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<display>.*?)\\\])</(?P=tag)>',
    re.DOTALL,
)

# C0 and C1 control characters and DEL, except the newline (a display formula may span lines).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

_cache: dict[tuple[str, bool], str] = {}


# Markdown that holds no math: fenced code blocks and inline code spans.
_CODE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\1[ \t]*$|`[^`\n]*`", re.MULTILINE | re.DOTALL)
# Math as arithmatex reads it: $$...$$ (may span lines) and $...$ (one line, no space inside the dollars).
_MD_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?![\s$])([^$\n]*?[^\s\\])\$", re.DOTALL)


def control_characters(tex: str) -> list[str]:
    """The control characters of a formula's source (other than newlines), as their ``repr``."""
    return [repr(c) for c in _CONTROL.findall(tex)]


def markdown_math(markdown: str) -> list[tuple[int, str]]:
    """(line number, TeX) of every formula of a Markdown source, code blocks and code spans skipped."""
    text = _CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), markdown)
    return [(text.count("\n", 0, m.start()) + 1, m.group(1) if m.group(1) is not None else m.group(2))
            for m in _MD_MATH.finditer(text)]


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Refuse (as a warning, which fails a strict build) control characters in the page's formulas."""
    for line, tex in markdown_math(markdown):
        bad = control_characters(tex)
        if bad:
            log.warning("KaTeX, %s line %d: control character(s) %s in the formula %r (a TAB where \\t was "
                        "meant?)", page.file.src_uri, line, ", ".join(sorted(set(bad))), tex)
    return markdown


def _render(items: list[tuple[str, bool]], where: str) -> None:
    """Render the items missing from the cache, in one Node.js process."""
    todo = sorted({item for item in items if item not in _cache})
    if not todo:
        return
    if not (KATEX_DIST / "katex.js").is_file():
        raise PluginError(f"KaTeX is not installed in {KATEX_DIR}: run `make docs-deps` (npm ci there).")
    request = {"items": [{"tex": tex, "display": display} for tex, display in todo], "macros": MACROS}
    try:
        proc = subprocess.run(
            ["node", str(RENDER_JS)], input=json.dumps(request), capture_output=True,
            text=True, check=True, cwd=KATEX_DIR, timeout=120,
        )
    except FileNotFoundError as exc:
        raise PluginError("Node.js (`node`) is needed to render the documentation's math.") from exc
    except subprocess.CalledProcessError as exc:
        raise PluginError(f"KaTeX renderer failed on {where}: {exc.stderr}") from exc
    result = json.loads(proc.stdout)
    for message in result["errors"]:
        log.warning("KaTeX, %s: %s", where, message)  # a warning fails `mkdocs build --strict`
    for item, rendered in zip(todo, result["html"]):
        if rendered:
            _cache[item] = rendered


def on_post_page(output: str, page, config) -> str:
    """Replace every arithmatex span/div of the finished page by KaTeX HTML."""
    matches = list(_MATH.finditer(output))
    if not matches:
        return output

    def key(m: re.Match) -> tuple[str, bool]:
        display = m.group("display") is not None
        return html.unescape(m.group("display") if display else m.group("inline")).strip(), display

    for tex, _ in {key(m) for m in matches}:
        bad = control_characters(tex)
        if bad:  # a warning fails `mkdocs build --strict`
            log.warning("KaTeX, %s: control character(s) %s in the formula %r (a TAB where \\t was meant?)",
                        page.file.src_uri, ", ".join(sorted(set(bad))), tex)
    _render([key(m) for m in matches], page.file.src_uri)

    def substitute(m: re.Match) -> str:
        tex, display = key(m)
        rendered = _cache.get((tex, display))
        if rendered is None:  # already reported as a warning; keep the source visible
            return m.group(0)
        return f'<div class="arithmatex">{rendered}</div>' if display else f'<span class="arithmatex">{rendered}</span>'

    return _MATH.sub(substitute, output)


def on_files(files, config):
    """Ship KaTeX's stylesheet and fonts with the site (no CDN)."""
    if not KATEX_DIST.is_dir():
        raise PluginError(f"KaTeX is not installed in {KATEX_DIR}: run `make docs-deps` (npm ci there).")
    sources = [KATEX_DIST / "katex.min.css", *sorted((KATEX_DIST / "fonts").iterdir())]
    for src in sources:
        rel = src.relative_to(KATEX_DIST).as_posix()
        files.append(File.generated(config, f"{SITE_PREFIX}/{rel}", abs_src_path=str(src)))
    return files
