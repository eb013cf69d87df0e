"""Run a cell's body in the user namespace and hand back the value of its last expression.

The ``%%cache`` magic runs the body itself rather than through a nested ``run_cell``: an
exception then leaves the magic, so the notebook cell fails (and "Run all" stops) exactly as
an uncached cell would, with one traceback. The frames of nbcache in that traceback are
hidden (``__tracebackhide__``); the user's frames point at the lines of the notebook cell.

The last expression is evaluated, not displayed: the magic returns its value, and IPython's
display hook shows it as the cell's result (``Out[n]``), as it would for any cell.
"""

from __future__ import annotations

import ast
from typing import Any

from nbcache.stores.api import NO_VALUE


def run_body(shell: Any, python_source: str, header: str, *, show_result: bool) -> Any:
    """Execute transformed cell source in ``shell``'s namespace; the last expression's value.

    ``header`` is the cell's first line (the ``%%cache`` line): it is kept in the source
    IPython shows in tracebacks, so line numbers match the notebook cell. Returns
    :data:`~nbcache.stores.api.NO_VALUE` when the cell does not end in an expression or
    ``show_result`` is False (then a trailing expression runs as a statement). Whatever the
    body raises propagates unchanged.
    """
    __tracebackhide__ = True
    compiler = shell.compile
    shown_source = header + "\n" + python_source
    filename = compiler.cache(shown_source, shell.execution_count, raw_code=shown_source)
    # A blank first line stands for the header: line numbers, also of a SyntaxError, then
    # match the notebook cell.
    tree = compiler.ast_parse("\n" + python_source, filename=filename)
    transformed = shell.transform_ast(tree)
    if transformed is not None:  # None: an AST transformer failed and IPython has said so
        tree = transformed
    statements, last = _split_last_expression(tree, show_result)
    namespace, local_namespace = shell.user_global_ns, shell.user_ns
    if statements.body:
        exec(compiler(statements, filename, "exec"), namespace, local_namespace)
    if last is None:
        return NO_VALUE
    return eval(compiler(last, filename, "eval"), namespace, local_namespace)


def _split_last_expression(
    tree: ast.Module, show_result: bool
) -> tuple[ast.Module, ast.Expression | None]:
    body = list(tree.body)
    if not show_result or not body or not isinstance(body[-1], ast.Expr):
        return tree, None
    last = body.pop()
    assert isinstance(last, ast.Expr)
    expression = ast.Expression(last.value)
    ast.copy_location(expression, last)
    return ast.Module(body=body, type_ignores=tree.type_ignores), expression
