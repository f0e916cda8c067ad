"""Every function and class a public module exports (``__all__``) shows a runnable example.

The examples themselves run as doctests (``--doctest-modules``); this checks that none is missing.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

PACKAGES = ("pricing", "qfnet", "qfnet.hedging", "qfnet.training")


def _public_modules() -> list[str]:
    """The public submodules of the packages (``qfnet.hedging`` and ``qfnet.training`` among them)."""
    names = set()
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names |= {f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if m.name[0] != "_"}
    return sorted(names)


def _has_example(obj: object) -> bool:
    doc = inspect.getdoc(obj) or ""
    return "Examples:\n" in doc and ">>> " in doc


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_exported_function_and_class_has_a_doctest_example(module_name):
    module = importlib.import_module(module_name)
    exported = [getattr(module, name) for name in getattr(module, "__all__", ())]
    missing = [
        obj.__name__
        for obj in exported
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not _has_example(obj)
    ]
    assert not missing, f"{module_name} exports without an Examples doctest: {missing}"
