"""The reference is complete: every public class and function has a docstring.

"Public" is what a module lists in ``__all__``, for lincorrupt and the subpackages the examples
use; methods count too (a method may inherit its docstring). tests/test_docs_site.py checks
that each of them also appears in the built reference pages.
"""

from __future__ import annotations

import importlib
import inspect

MODULES = ["lincorrupt", "lincorrupt.schedules", "lincorrupt.coefficients", "lincorrupt.sampling",
           "lincorrupt.sampling.denoiser", "lincorrupt.sampling.samplers", "lincorrupt.sampling.grids",
           "lincorrupt.sampling.guidance",
           "lincorrupt.losses", "lincorrupt.weightings", "lincorrupt.predictions",
           "lincorrupt.model", "lincorrupt.config", "lincorrupt.commands",
           "lincorrupt.priors", "lincorrupt.collectives",
           "lincorrupt.nn", "lincorrupt.train", "lincorrupt.train.evaluation", "lincorrupt.data", "lincorrupt.metrics"]

# Gaps that existed when this test was written; the list may only shrink.
KNOWN_GAPS: set[str] = set()


def public_objects():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj
                if inspect.isclass(obj):
                    for attr, value in vars(obj).items():
                        if not attr.startswith("_") and inspect.isfunction(value):
                            yield f"{module_name}.{name}.{attr}", getattr(obj, attr)


def test_every_public_object_has_a_docstring():
    missing = sorted(path for path, obj in public_objects() if not inspect.getdoc(obj) and path not in KNOWN_GAPS)
    assert not missing, ("public objects without a docstring (they appear empty in the reference):\n"
                         + "\n".join(missing))
