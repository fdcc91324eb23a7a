"""Every docstring example in ``stream`` runs (as river does with its doctests)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import stream
import stream.core

MODULES = sorted(
    m.name
    for pkg, prefix in ((stream, "stream."), (stream.core, "stream.core."))
    for m in pkgutil.iter_modules(pkg.__path__, prefix)
    if not m.ispkg
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
