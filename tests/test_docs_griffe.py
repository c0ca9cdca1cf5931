"""The griffe extension that prepares docstrings for the reference (docs/hooks/griffe_docstrings.py)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import griffe
import pytest

HOOK = Path(__file__).resolve().parent.parent / "docs" / "hooks" / "griffe_docstrings.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("griffe_docstrings", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_become_code_and_math_becomes_katex_delimiters(hook):
    text = "See :class:`~lincorrupt.priors.GaussianPrior` and :meth:`fit`; :math:`\\alpha_t > 0`."
    assert hook.rewrite(text) == "See `GaussianPrior` and `fit`; $\\alpha_t > 0$."


def test_one_entry_for_several_parameters_is_split(hook):
    text = "Args:\n    s, t: times with s < t.\n    x: data."
    assert hook.rewrite(text) == "Args:\n    s: times with s < t.\n    t: times with s < t.\n    x: data."


def test_package_model(tmp_path, hook):
    """Doc comments, inherited docstrings and the members left out, on a small package."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        __all__ = ["REGISTRY", "Base", "Child"]

        #: name -> thing, for lookups.
        #: Second line.
        REGISTRY = {"a": 1}


        class Base:
            """A base."""

            def __init__(self):
                self.layer = 1

            def step(self, t):
                """One step at time t."""

            def extra_repr(self):
                return ""


        class Child(Base):
            """A child."""

            def step(self, t):
                return t

            def __len__(self):
                return 0

            def __call__(self):
                """Call it."""
    '''))
    extension = hook.DocstringConventions()
    pkg = griffe.load("pkg", search_paths=[str(tmp_path)], extensions=griffe.load_extensions(extension))
    assert pkg["REGISTRY"].docstring.value == "name -> thing, for lookups.\nSecond line."
    assert pkg["Child.step"].docstring.value == "One step at time t."
    assert set(pkg["Child"].members) == {"step", "__call__"}
    assert set(pkg["Base"].members) == {"__init__", "step"}
