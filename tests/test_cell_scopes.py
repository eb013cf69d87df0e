"""Deferred scopes of a cell (functions, lambdas, class bodies, comprehensions): what they read
from the globals and what they bind there, by Python's own scoping rules."""

from __future__ import annotations

import ast

import pytest

from nbcache.cells.scopes import (
    ScopeNames,
    class_body_scope,
    comprehension_scope,
    evaluated_at_definition,
    function_scope,
    parameter_names,
)


def first(source: str) -> ast.AST:
    statement = ast.parse(source).body[0]
    return statement.value if isinstance(statement, ast.Expr) else statement


def scope_of(source: str) -> ScopeNames:
    node = first(source)
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    return function_scope(node)


def test_a_name_read_but_never_bound_in_the_body_is_free() -> None:
    names = scope_of("def f(a):\n    return a + THRESHOLD\n")
    assert names.free == {"THRESHOLD"}
    assert names.global_binds == set()


def test_a_name_bound_anywhere_in_the_body_is_local_to_the_whole_body() -> None:
    # Python reads `x` from the function's own (not yet bound) local: not a global read.
    names = scope_of("def f():\n    y = x\n    x = 1\n    return y\n")
    assert "x" not in names.free


def test_a_global_declaration_makes_an_assignment_a_global_bind() -> None:
    names = scope_of("def f():\n    global calls\n    calls += 1\n    log.append(calls)\n")
    assert names.global_binds == {"calls"}
    assert names.free == {"calls", "log"}


def test_parameters_of_every_kind_are_local() -> None:
    node = first("def f(a, /, b, *args, c, **kwargs):\n    return a, b, args, c, kwargs, d\n")
    assert isinstance(node, ast.FunctionDef)
    assert parameter_names(node.args) == {"a", "b", "args", "c", "kwargs"}
    assert function_scope(node).free == {"d"}


def test_defaults_decorators_and_annotations_run_at_definition_not_in_the_body() -> None:
    node = first("@wrap(W)\ndef f(a: A = DEFAULT, *, k=K) -> R:\n    return a\n")
    assert isinstance(node, ast.FunctionDef)
    evaluated = {
        n.id for e in evaluated_at_definition(node) for n in ast.walk(e) if isinstance(n, ast.Name)
    }
    assert evaluated == {"wrap", "W", "A", "DEFAULT", "K", "R"}
    assert function_scope(node).free == set()


def test_a_lambda_reads_its_free_names_and_binds_nothing() -> None:
    names = scope_of("lambda x, y=Y: x * SCALE + y")
    assert names.free == {"SCALE"}
    lambda_node = first("lambda x, y=Y: x")
    assert isinstance(lambda_node, ast.Lambda)
    assert [n.id for n in evaluated_at_definition(lambda_node) if isinstance(n, ast.Name)] == ["Y"]


def test_a_nested_function_reading_an_outer_local_is_not_a_global_read() -> None:
    names = scope_of(
        "def outer():\n"
        "    total = 0\n"
        "    def inner():\n"
        "        nonlocal total\n"
        "        total += STEP\n"
        "    inner()\n"
        "    return total\n"
    )
    assert names.free == {"STEP"}


def test_a_global_bind_in_a_nested_function_reaches_the_module() -> None:
    names = scope_of(
        "def outer():\n    def inner():\n        global seen\n        seen = 1\n    inner()\n"
    )
    assert names.global_binds == {"seen"}


def test_comprehension_targets_are_local_but_a_walrus_binds_outside() -> None:
    node = first("[last := x * FACTOR for x in data if x > LIMIT]")
    assert isinstance(node, ast.ListComp)
    names = comprehension_scope(node)
    # The first iterable (`data`) is evaluated outside the comprehension.
    assert names.free == {"FACTOR", "LIMIT"}
    assert names.outer_binds == {"last"}


def test_a_walrus_in_a_comprehension_in_a_function_binds_a_local_of_the_function() -> None:
    names = scope_of("def f(data):\n    [last := x for x in data]\n    return last\n")
    assert names.free == set()


def test_later_iterables_of_a_comprehension_are_read_inside_it() -> None:
    node = first("{(a, b) for a in rows for b in COLUMNS}")
    assert isinstance(node, ast.SetComp)
    assert comprehension_scope(node).free == {"COLUMNS"}


def test_a_class_body_in_a_function_reads_every_name_it_mentions() -> None:
    node = first(
        "class Inner(Base):\n    size = SIZE\n    def method(self):\n        return OTHER\n"
    )
    assert isinstance(node, ast.ClassDef)
    names = class_body_scope(node)
    assert names.free == {"SIZE", "OTHER"}


@pytest.mark.parametrize(
    "body",
    [
        "import numpy as np\n    return np",
        "from math import pi\n    return pi",
        "try:\n        pass\n    except Exception as err:\n        return err",
        "match value:\n"
        "        case [first, *rest]:\n"
        "            return first, rest\n"
        "        case {'k': v, **others}:\n"
        "            return v, others",
    ],
)
def test_imports_exception_names_and_match_captures_are_local(body: str) -> None:
    names = scope_of(f"def f(value):\n    {body}\n")
    assert names.free <= {"Exception"}


def test_del_reads_the_name_it_unbinds() -> None:
    names = scope_of("def f():\n    global cache\n    del cache\n")
    assert names.free == {"cache"}
    assert names.global_binds == {"cache"}
