"""The documentation site: `mkdocs build --strict` passes, and the built pages work offline.

The site is built once per test session (shared between xdist workers through a file lock) into
a temporary directory. The browser tests open the built home and Concepts pages from disk in
headless Chromium with every network request blackholed, and check that the mathematics was
rendered (KaTeX elements present, no raw TeX in the page text, KaTeX's own font loaded from the
site itself). They skip only when Chromium is not installed (`apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.docs import MACHINE_PATH

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """Build the site once (strict) and return (site_dir, build_log, returncode)."""
    from filelock import FileLock

    if not FASHION_MNIST.is_dir() and not os.environ.get("CI"):
        pytest.skip(f"{FASHION_MNIST} is absent (apt-get install dataset-fashion-mnist): the docs' figures "
                    "are drawn from it; CI installs it and fails instead of skipping")

    basetemp = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp sits in one folder per run, shared by the workers;
    # without xdist basetemp itself is the per-run folder (its parent outlives the run).
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    site_dir, log_file = shared / "docs_site", shared / "docs_site.json"
    with FileLock(str(shared / "docs_site.lock")):
        if not log_file.exists():
            env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
            proc = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "--site-dir", str(site_dir)],
                cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
            )
            log_file.write_text(json.dumps({"returncode": proc.returncode, "log": proc.stdout + proc.stderr}))
    result = json.loads(log_file.read_text())
    return site_dir, result["log"], result["returncode"]


def test_mkdocs_build_strict(built_site):
    site_dir, log, returncode = built_site
    assert returncode == 0, f"`mkdocs build --strict` failed:\n{log}"
    assert (site_dir / "index.html").is_file() and (site_dir / "concepts.html").is_file()


class _Refs(HTMLParser):
    """Collect the URLs a page loads at view time (scripts, stylesheets, images, icons)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "source", "iframe") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href") and a.get("rel") in ("stylesheet", "icon", "preload", "modulepreload"):
            self.urls.append(a["href"])


def test_site_needs_no_network(built_site):
    """Everything a page loads resolves to a file of the site; no CDN, no web fonts."""
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    missing, remote = [], []
    for page in site_dir.rglob("*.html"):
        if page.name == "404.html":  # served by a web server at any depth, so its links are absolute
            continue
        parser = _Refs()
        parser.feed(page.read_text(encoding="utf-8"))
        for url in parser.urls:
            if re.match(r"^(https?:)?//", url):
                remote.append(f"{page.relative_to(site_dir)}: {url}")
            elif not url.startswith("data:"):
                target = (page.parent / url.split("?")[0].split("#")[0]).resolve()
                if not target.is_file():
                    missing.append(f"{page.relative_to(site_dir)}: {url}")
    for css in site_dir.rglob("*.css"):
        for url in re.findall(r"url\((['\"]?)([^)'\"]+)\1\)", css.read_text(encoding="utf-8")):
            url = url[1]
            if url.startswith("data:"):
                continue
            if re.match(r"^(https?:)?//", url):
                remote.append(f"{css.relative_to(site_dir)}: {url}")
            elif not (css.parent / url.split("?")[0].split("#")[0]).resolve().is_file():
                missing.append(f"{css.relative_to(site_dir)}: {url}")
    assert not remote, "pages load remote resources:\n" + "\n".join(remote)
    assert not missing, "pages load files the site lacks:\n" + "\n".join(missing)


# Appended to a copy of the page: reports, once fonts have settled, what the reader would see.
_PROBE = """
<script>
document.fonts.ready.then(() => {
  const article = document.querySelector("article") || document.body;
  const copy = article.cloneNode(true);
  copy.querySelectorAll(".katex-mathml, script, style, pre, code").forEach((e) => e.remove());
  const first = document.querySelector(".katex");
  const faces = [];
  document.fonts.forEach((f) => { if (f.family.replace(/['"]/g, "") === "KaTeX_Main") faces.push(f.status); });
  const report = {
    katex: document.querySelectorAll(".katex").length,
    errors: document.querySelectorAll(".katex-error").length,
    fontFamily: first ? getComputedStyle(first).fontFamily : "",
    katexMainLoaded: faces.includes("loaded"),
    text: copy.textContent,
  };
  const out = document.createElement("pre");
  out.id = "docs-probe";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>
"""

# TeX that escaped rendering: delimiters, or a backslash command such as \alpha or \frac.
_RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\s][^$]*\$|\\[A-Za-z]{2,}")


def _open_in_chromium(page: Path) -> dict:
    probe = page.with_name(f"_probe_{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}",
             # No network at all: any request that would leave the machine fails.
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    match = re.search(r'<pre id="docs-probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert match, f"the page did not finish loading in Chromium:\n{proc.stderr[-3000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


@needs_chromium
@pytest.mark.parametrize("page", ["index.html", "concepts.html", "train-python.html", "faq.html", "limits.html",
                                  "reference/losses.html"])
def test_math_renders_in_chromium(built_site, page):
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    report = _open_in_chromium(site_dir / page)
    assert report["katex"] >= (50 if page == "concepts.html" else 3), report["katex"]
    assert report["errors"] == 0
    raw = sorted(set(_RAW_TEX.findall(report["text"])))
    assert not raw, f"raw TeX left in the text of {page}: {raw}"
    assert "KaTeX_Main" in report["fontFamily"], report["fontFamily"]
    assert report["katexMainLoaded"], "KaTeX's font did not load from the site"


_ANNOTATION = re.compile(r'<annotation encoding="application/x-tex">(.*?)</annotation>', re.DOTALL)
_UNRENDERED = re.compile(r'class="arithmatex">\\[(\[]')
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # control characters but the newline


def test_every_formula_of_the_site_rendered_from_clean_tex(built_site):
    """On every built page (narrative and API reference): no KaTeX error box, no formula left as
    TeX, and no control character in a formula's source, which KaTeX renders silently (a TAB typed
    for the ``\\t`` of ``\\text`` shows as "ext")."""
    import html

    site_dir, log, returncode = built_site
    assert returncode == 0, log
    found = []
    for page in sorted(site_dir.rglob("*.html")):
        if page.name.startswith("_"):  # the probes other tests write beside the pages
            continue
        text, rel = page.read_text(encoding="utf-8"), page.relative_to(site_dir)
        found += [f"{rel}: a KaTeX error box" for _ in re.findall(r'class="katex-error"', text)]
        found += [f"{rel}: unrendered math {text[m.start():m.start() + 80]!r}" for m in _UNRENDERED.finditer(text)]
        for source in _ANNOTATION.findall(text):
            tex = html.unescape(source)
            if _CONTROL.search(tex):
                found.append(f"{rel}: control character(s) {sorted(set(_CONTROL.findall(tex)))} in {tex!r}")
    assert not found, "math that did not render cleanly:\n" + "\n".join(found)


def test_reference_covers_the_public_api(built_site):
    """Every name ``lincorrupt`` exports has an entry in the generated reference pages."""
    import lincorrupt

    site_dir, log, returncode = built_site
    assert returncode == 0, log
    ids = set()
    for page in (site_dir / "reference").glob("*.html"):
        ids.update(re.findall(r'id="(lincorrupt[\w.]*)"', page.read_text(encoding="utf-8")))
    documented = {i.rsplit(".", 1)[-1] for i in ids}
    missing = sorted(name for name in lincorrupt.__all__ if name not in documented and not name.startswith("__"))
    assert not missing, f"exported by lincorrupt but absent from docs/reference/*.md: {missing}"


class _Headings(HTMLParser):
    """The text of every h1-h6 of a page, with its level (permalink anchors dropped)."""

    def __init__(self):
        super().__init__()
        self.headings: list[tuple[int, str]] = []
        self._level, self._text, self._skip = None, [], 0

    def handle_starttag(self, tag, attrs):
        if re.fullmatch(r"h[1-6]", tag):
            self._level, self._text = int(tag[1]), []
        elif self._level and tag == "a" and "headerlink" in (dict(attrs).get("class") or ""):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag == "a" and self._skip:
            self._skip -= 1
        elif self._level and tag == f"h{self._level}":
            self.headings.append((self._level, " ".join("".join(self._text).split())))
            self._level = None

    def handle_data(self, data):
        if self._level and not self._skip:
            self._text.append(data)


def _markdown_headings(text: str) -> list[tuple[int, str]]:
    """ATX headings outside fenced code blocks, as (level, plain text)."""
    found, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif stripped.startswith(fence * 3):
                fence = None
            continue
        heading = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fence is None and heading:
            plain = re.sub(r"\{[#.][^}]*\}$", "", heading.group(2))          # attribute lists {#anchor}
            plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", plain)            # links -> their text
            plain = re.sub(r"[`*_]", "", plain)
            found.append((len(heading.group(1)), " ".join(plain.split())))
    return found


def test_every_markdown_heading_is_a_heading_of_the_built_page(built_site):
    """A page cannot swallow its sections (e.g. behind an unclosed code fence) without this failing."""
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    lost = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(ROOT / "docs")
        html = site_dir / rel.with_suffix(".html")
        if not html.is_file():  # not a page: docs/README.md, snippets included by other pages
            continue
        parser = _Headings()
        parser.feed(html.read_text())
        built = [(level, text.replace("\u00b6", "").strip()) for level, text in parser.headings]
        for level, text in _markdown_headings(page.read_text()):
            if "$" in text:  # mathematics is rendered by KaTeX: compare the level only
                ok = any(lv == level for lv, _ in built)
            else:
                ok = (level, text) in built
            if not ok:
                lost.append(f"{rel}: {'#' * level} {text}")
    assert not lost, "Markdown headings missing from the built pages:\n" + "\n".join(lost)




def test_built_site_shows_no_machine_specific_paths(built_site):
    """The pages show paths relative to the repository (``out/demo``), never where one run lived."""
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    found = []
    for page in sorted(site_dir.rglob("*.html")):
        for match in MACHINE_PATH.finditer(page.read_text(encoding="utf-8")):
            excerpt = page.read_text(encoding="utf-8")[max(0, match.start() - 60):match.end() + 40]
            found.append(f"{page.relative_to(site_dir)}: ...{excerpt!r}")
    assert not found, "machine-specific paths in the built site:\n" + "\n".join(found)


def _reference_ids(site_dir: Path) -> dict[str, list[str]]:
    """The anchor ids of the API entries on each reference page, in page order."""
    return {page.stem: re.findall(r'id="(lincorrupt[\w.]*)"', page.read_text(encoding="utf-8"))
            for page in sorted((site_dir / "reference").glob("*.html"))}


def _resolve(path: str):
    """The Python object an id such as ``lincorrupt.sampling.sample`` names (None if it is no object)."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        return obj
    return None


def test_reference_shows_the_api_once_and_no_internals(built_site):
    """No entry twice (a re-export beside its original), no ``extra_repr``, no layers of a network
    or internals of the trainer, no special methods but ``__call__``."""
    import inspect

    site_dir, log, returncode = built_site
    assert returncode == 0, log
    pages = _reference_ids(site_dir)
    all_ids = [i for ids in pages.values() for i in ids]
    internal = [i for i in all_ids if i.rsplit(".", 1)[-1] in ("extra_repr", "temb", "conv_in", "scaler", "ddp")
                or (re.search(r"\.__\w+__$", i) and not i.endswith(".__call__"))]
    assert not internal, f"internals shown as API: {internal}"
    seen: dict[int, str] = {}
    duplicated = []
    for i in all_ids:
        obj = _resolve(i)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if id(obj) in seen and seen[id(obj)] != i:
                duplicated.append(f"{seen[id(obj)]} and {i}")
            seen.setdefault(id(obj), i)
    assert not duplicated, "one object documented twice:\n" + "\n".join(duplicated)
    assert pages["sampling"][0].endswith(".sample"), (
        f"the Sampling page must open with sample, not {pages['sampling'][:3]}")


def _entry_html(site_dir: Path, page: str, entry_id: str) -> str:
    text = (site_dir / "reference" / f"{page}.html").read_text(encoding="utf-8")
    start = text.index(f'id="{entry_id}"')
    following = re.search(r'id="lincorrupt[\w.]*"', text[start + 10:])
    return text[start:start + 10 + following.start()] if following else text[start:]


@pytest.mark.parametrize("page, entry", [("sampling", "SAMPLERS"), ("sampling", "GRIDS"), ("losses", "PREDICTIONS")])
def test_registries_have_docstrings_and_no_values(built_site, page, entry):
    """The registries say what they hold in words, not as a dump of their values."""
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    entry_id = next(i for i in _reference_ids(site_dir)[page] if i.endswith(f".{entry}"))
    html = _entry_html(site_dir, page, entry_id)
    assert 'class="doc doc-contents' in html and re.search(r"<p>\s*\S", html), f"{entry} has no docstring"
    import html as html_module

    text = html_module.unescape(re.sub(r"<[^>]+>", "", html))
    value = re.compile(r"""['"](ancestral|uniform)['"]\s*:|EpsPrediction\(\)|<function""")
    assert not value.search(text), f"{entry}'s value is shown"


def test_docstring_math_is_rendered_by_katex(built_site):
    """``$...$`` in a docstring is typeset like the narrative pages' math (here PREDICTIONS')."""
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    html = _entry_html(site_dir, "losses", "lincorrupt.predictions.PREDICTIONS")
    assert html.count('class="katex"') >= 3
    text = re.sub(r'<span class="katex-mathml">.*?</math></span>', "", html, flags=re.DOTALL)
    assert not _RAW_TEX.findall(re.sub(r"<[^>]+>", "", text)), "raw TeX left in a docstring"


def test_overriding_methods_show_their_base_docstring(built_site):
    """``GaussianPrior.log_prob`` has no docstring of its own; the reference shows the one it
    overrides, as ``help()`` would (``inspect.getdoc``)."""
    import inspect

    import lincorrupt as lc

    site_dir, log, returncode = built_site
    assert returncode == 0, log
    assert lc.GaussianPrior.log_prob.__doc__ is None, "GaussianPrior.log_prob got a docstring: pick another example"
    words = inspect.getdoc(lc.GaussianPrior.log_prob).split(":", 1)[0].replace("``", "")  # "log p(u_1) in nats, ..."
    first_line = " ".join(words.split())
    html = _entry_html(site_dir, "priors", "lincorrupt.priors.GaussianPrior.log_prob")
    assert first_line in " ".join(re.sub(r"<[^>]+>", "", html).split())


_TABLE_PROBE = """
<script>
window.addEventListener("load", () => {
  const wide = [];
  document.querySelectorAll("article table").forEach((table) => {
    const box = table.closest(".md-typeset__scrollwrap") || table.parentElement;
    const width = table.getBoundingClientRect().width;
    const head = table.rows[0].textContent.trim().replace(/\\s+/g, " ");
    if (width > box.clientWidth + 1) wide.push(`${Math.round(width)} px > ${box.clientWidth} px: ${head}`);
  });
  const out = document.createElement("pre");
  out.id = "table-probe";
  out.textContent = JSON.stringify(wide);
  document.body.appendChild(out);
});
</script>
"""


@needs_chromium
@pytest.mark.parametrize("page", ["results.html", "benchmarks.html", "train-python.html"])
def test_tables_fit_the_text_column(built_site, page):
    """On a 1280-pixel-wide window every table of numbers fits the text column: nothing is cut
    off at the page edge or hidden behind a side-scroll."""
    site_dir, log, returncode = built_site
    assert returncode == 0, log
    source = site_dir / page
    probe = source.with_name(f"_tables_{source.name}")
    probe.write_text(source.read_text(encoding="utf-8").replace("</body>", _TABLE_PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,900",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    match = re.search(r'<pre id="table-probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert match, f"the page did not finish loading in Chromium:\n{proc.stderr[-3000:]}"
    import html

    wide = json.loads(html.unescape(match.group(1)))
    assert not wide, f"tables wider than the text column of {page}:\n" + "\n".join(wide)
