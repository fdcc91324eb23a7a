"""The import graph of ``stream/`` and ``agents/`` has no circle.

Imports flow one way: ``stream.app`` -> ``agents`` / ``stream.http`` ->
``stream.runtime`` -> ``stream.kafka`` / ``stream.core``. Every import counts,
also one inside a function; only ``if TYPE_CHECKING:`` blocks are exempt.
Run ``python tests/test_imports.py [ROOT]`` to print the circles of any checkout.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "agents")


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the packages under ``root``."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    mods = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                # the deepest project module the name points at (a module, or its package)
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    found = circles(graph(ROOT))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_flow_one_way() -> None:
    edges = graph(ROOT)
    assert "stream.runtime" in edges["agents.ingest"]
    assert {"agents.ingest", "agents.merge", "agents.erase"} <= edges["stream.app"]
    for name, targets in edges.items():
        if name.startswith(("stream.core.", "stream.kafka.", "stream.runtime")):
            bad = {t for t in targets if t.startswith(("agents", "stream.app", "stream.http"))}
            assert not bad, f"{name} imports {sorted(bad)} against the flow"
        if name.startswith("stream.core."):
            outside = {t for t in targets if not t.startswith("stream.core")}
            assert not outside, f"pure logic {name} imports {sorted(outside)}"


def test_a_circle_is_found(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "stream" / "app.py").write_text("from agents.ingest import run\n")
    (tmp_path / "agents" / "ingest.py").write_text("def run():\n    from stream import app\n")
    assert circles(graph(tmp_path)) == [["agents.ingest", "stream.app"]]


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for c in circles(graph(root)):
        print(" <-> ".join(c))
