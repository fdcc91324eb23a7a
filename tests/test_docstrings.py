"""Every docstring example in ``stream`` and ``agents`` runs (as river does with its doctests)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import agents
import stream

MODULES = sorted(
    m.name
    for pkg in (stream, agents)
    for m in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
