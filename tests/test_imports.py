"""The package's import graph: no cycle, metrics independent of training, no borrowed private names.

The graph is read from the source with ``ast``, not from ``sys.modules``, so it sees every
import statement whether or not it has run. Every import counts: at the top of a module,
under ``if TYPE_CHECKING:`` (the modules are still coupled, only the failure is hidden) and
inside a function (a lazy import that avoids a cycle still is one; it only moves the failure to
run time). Only the parent packages that Python imports implicitly before a submodule do not
count: importing ``lincorrupt.sampling.grids`` runs ``lincorrupt/__init__.py`` first, and a package
importing its own submodules is how a package exposes them.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import lincorrupt

PACKAGE = "lincorrupt"
ROOT = Path(lincorrupt.__file__).parent


def module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def known_module(name: str) -> str:
    """``name`` if it is a module of the package, else the closest enclosing one (``a.b.attr`` -> ``a.b``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """``(module imported from, name imported or None)`` for one import statement, absolute."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    base = module
    if node.level:
        is_package = MODULES[module].name == "__init__.py"
        parts = module.split(".")[:len(module.split(".")) - node.level + is_package]
        base = ".".join(parts)
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module
    return [(source, alias.name) for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for source, name in imported_names(module, node):
                if source != PACKAGE and not source.startswith(PACKAGE + "."):
                    continue
                target = f"{source}.{name}" if name and f"{source}.{name}" in MODULES else source
                target = known_module(target)
                if target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]`` (each imports the next), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists it from importer's dependency back to importer
    return None


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_metrics_never_import_training():
    graph = import_graph()
    for module in (m for m in MODULES if m.startswith(f"{PACKAGE}.metrics")):
        reached, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()] - reached:
                reached.add(target)
                todo.append(target)
        training = sorted(m for m in reached if m.startswith(f"{PACKAGE}.train"))
        assert not training, f"{module} imports {training} (directly or through other modules)"


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: its functions, classes, methods, assigned names and ``self._x``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {name for name in names if is_private(name)}


def test_no_module_uses_another_modules_private_names():
    """``from .x import _y`` and ``obj._y``, where ``_y`` is defined in another module of the
    package and not in this one, reach into that module's internals."""
    defined = {module: defined_private_names(tree) for module, tree in TREES.items()}
    owners: dict[str, set[str]] = {}
    for module, names in defined.items():
        for name in names:
            owners.setdefault(name, set()).add(module)
    borrowed = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for source, name in imported_names(module, node):
                    if source.startswith(PACKAGE) and is_private(name) and known_module(source) != module:
                        borrowed.append(f"{module}:{node.lineno} imports {name} from {source}")
            elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in defined[module]:
                if owners.get(node.attr):
                    borrowed.append(f"{module}:{node.lineno} uses {node.attr} of {sorted(owners[node.attr])}")
    assert not borrowed, "private names used outside their module:\n" + "\n".join(borrowed)


@pytest.mark.parametrize("source, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set()}, None),
])
def test_the_cycle_finder_reports_the_path(source, expected):
    cycle = find_cycle(source)
    if expected is None:
        assert cycle is None
    else:  # the same cycle, from whichever module it starts
        assert cycle[0] == cycle[-1] and len(cycle) == len(expected)
        start = cycle.index("a")
        assert cycle[start:-1] + cycle[:start] == expected[:-1]


def test_relative_imports_resolve_to_the_modules_they_name():
    graph = import_graph()
    assert f"{PACKAGE}.coefficients" in graph[f"{PACKAGE}.corruption"]  # from .coefficients import ...
    assert f"{PACKAGE}.sampling.samplers" in graph[f"{PACKAGE}.sampling"]  # from .samplers import ... in __init__
    assert f"{PACKAGE}.corruption" in graph[f"{PACKAGE}.sampling.samplers"]  # from ..corruption import ...


def test_tests_share_code_through_helpers_not_by_importing_each_other():
    tests = Path(__file__).parent
    crossed = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            crossed += [f"{path.relative_to(tests)}:{node.lineno} imports {n}" for n in names
                        if n.split(".")[0].startswith("test_") or n.split(".")[0] == "conftest"]
    assert not crossed, ("tests import other test modules (move the shared code to tests/helpers/):\n"
                         + "\n".join(crossed))
