"""The package's shape: layers import only downwards, and no module imports itself round a circle.

The rules are those of docs/architecture.md. Every ``import`` statement counts, also those
inside functions and under ``TYPE_CHECKING``: an import deferred to call time is still a
dependency, and a circle of them is still a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbcache"

#: What each layer may import from nbcache (besides itself). Front doors are ``functions``
#: and ``cells``; ``nbcache`` stands for the top-level modules (cache, config, ...).
ALLOWED: dict[str, set[str]] = {
    "stores": {"exceptions"},
    "entries": {"exceptions", "stores"},
    "keys": {"exceptions"},
    "inputs": {"exceptions", "keys"},
    "cache": {"exceptions", "entries", "stores"},
    "config": {"exceptions", "cache"},
    "functions": {"exceptions", "cache", "config", "entries", "inputs", "keys", "stores"},
    "cells": {"exceptions", "cache", "config", "entries", "inputs", "keys", "stores"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> Iterator[str]:
    """The nbcache modules ``path`` imports, each resolved to a module (not a package member)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name in known else node.module for name in names]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: relative import"
            continue
        for name in names:
            while name not in known and "." in name:
                name = name.rpartition(".")[0]
            if name in known and name != "nbcache":
                yield name
            elif name == "nbcache":
                yield "nbcache"


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: set(imported_modules(path, known)) - {name} for name, path in modules.items()}


def layer(module: str) -> str:
    """``stores``, ``keys``, ..., or the top-level module's own name (``cache``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nbcache"


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        allowed = ALLOWED.get(layer(module))
        if allowed is None:
            continue  # the package's front (__init__, testing, demo) may use anything
        for target in sorted(targets):
            if layer(target) != layer(module) and layer(target) not in allowed:
                problems.append(f"{module} imports {target}")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer_with_rules() -> None:
    unruled = {
        module
        for module in import_graph()
        if layer(module) not in ALLOWED
        and module not in ("nbcache", "nbcache.exceptions", "nbcache.testing", "nbcache.demo")
    }
    assert unruled == set()


def test_layers_import_only_downwards() -> None:
    assert forbidden_imports(import_graph()) == []


def test_the_import_graph_has_no_circle() -> None:
    assert circles(import_graph()) == []


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("nbcache.stores.memory", "nbcache.entries.envelope"),
        ("nbcache.keys.digest", "nbcache.stores.api"),
        ("nbcache.functions.decorator", "nbcache.cells.run"),
        ("nbcache.cells.run", "nbcache.functions.call_key"),
        ("nbcache.cache", "nbcache.functions.decorator"),
    ],
)
def test_a_forbidden_import_is_reported(module: str, target: str) -> None:
    graph = import_graph()
    graph[module] = graph[module] | {target}
    assert forbidden_imports(graph) == [f"{module} imports {target}"]


def test_a_circle_is_reported() -> None:
    graph = import_graph()
    graph["nbcache.keys.digest"] = graph["nbcache.keys.digest"] | {"nbcache.keys.fingerprint"}
    assert ["nbcache.keys.digest", "nbcache.keys.fingerprint"] in circles(graph)


def test_import_statements_inside_functions_count(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from nbcache.cells.run import cell_key\n")
    assert list(imported_modules(source, set(all_modules()))) == ["nbcache.cells.run"]
