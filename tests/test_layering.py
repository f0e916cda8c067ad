"""The layering of ARCHITECTURE.md: ``pricing`` never imports ``qfnet``, and only
``pricing/quantlib.py`` imports QuantLib (so the rest runs on any torch device)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for package in ("pricing", "qfnet") for p in (ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_pricing_quantlib_imports_quantlib_and_pricing_never_imports_qfnet(path):
    imported = _imported(path)
    if path != ROOT / "pricing" / "quantlib.py":
        assert "QuantLib" not in imported, f"{path.name} imports QuantLib: use pricing.quantlib"
    if path.relative_to(ROOT).parts[0] == "pricing":
        assert "qfnet" not in imported, f"{path.name}: pricing must not import qfnet"
