"""What a notebook cell reads from and binds in the user namespace, found from its AST.

:func:`analyze_cell` takes a cell's Python source (after IPython's ``transform_cell``, so
``%magic`` and ``!cmd`` arrive as ``get_ipython()`` calls) and returns a :class:`CellCode`.

The rules the ``%%cache`` magic relies on:

- ``inputs`` are conservative: every name whose namespace value the cell might read before
  (or without) binding it. Builtin names are reported too when read (``print``, ``len``); the
  caller keeps only those present in the user namespace, so a user name shadowing a builtin is
  still keyed. A spurious input costs a cache miss; a missing one would give a wrong result.
- Statements run in order, so a name the cell has surely bound (on every path) is not an input
  when read afterwards; a name bound on some paths only (``if``, loop bodies, ``try``) is.
- A function body runs when called, so the globals it reads are inputs unless the cell has
  surely bound them before anything that could call the function has run (a plain ``def`` or
  an assignment of constants calls nothing; a call, an operator or a decorator may).
- ``outputs`` are every name the cell may bind, ``deleted`` every name it may delete (``del``,
  and ``except ... as e``, which Python unbinds after the handler). Some may be absent after a
  run (a branch not taken): read ``outputs | deleted`` from the namespace after running;
  store those present and delete the absent ones when restoring.
- ``opaque`` explains why the analysis cannot be trusted (``exec``, ``globals()``,
  ``from m import *``, magics that run code or bind names nbcache cannot see). When it is not
  empty the caller should run the cell without caching.
- ``$name`` and ``{expr}`` in magic lines and shell commands are reads: IPython expands them
  from the namespace. ``%time stmt`` and ``%%time`` are analysed as the code they time.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

from nbcache.cell_scopes import (
    ComprehensionNode,
    comprehension_scope,
    evaluated_at_definition,
    function_scope,
)

#: Line magics that neither read nor bind names beyond ``$name``/``{expr}`` expansion.
HARMLESS_LINE_MAGICS = frozenset(
    "matplotlib config load_ext reload_ext unload_ext pip conda mamba autoreload aimport "
    "precision pwd cd env who whos who_ls lsmagic history pinfo pinfo2 psearch pdoc pdef "
    "psource pfile page magic quickref colors xmode automagic autocall".split()
)
#: Cell magics whose body is not Python and which bind no names.
HARMLESS_CELL_MAGICS = frozenset("html HTML javascript js latex markdown svg writefile".split())
#: Magics whose argument is Python code run in the user namespace.
CODE_MAGICS = frozenset({"time", "timeit"})
_SHELL_CALLS = frozenset({"system", "getoutput"})
_NAMESPACE_CALLS = frozenset({"exec", "eval", "globals", "locals", "vars", "dir"})
_SUPPRESSING_CONTEXTS = ("suppress", "raises", "ignore")
# Expressions that cannot run user code, so they cannot call a function the cell defined.
_INERT = (ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Lambda, ast.Starred)
_DOLLAR_NAME = re.compile(r"\$\$?([A-Za-z_]\w*)")
_BRACED = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class CellCode:
    """The names a cell reads and binds, and its code in a canonical form."""

    inputs: frozenset[str]
    outputs: frozenset[str]
    deleted: frozenset[str]
    #: The AST without positions: equal for cells that differ only in comments and layout.
    #: Ends with a marker when display is suppressed, as that changes what a cell shows.
    normalized: str
    last_expression: bool
    display_suppressed: bool
    opaque: tuple[str, ...] = ()


def analyze_cell(source: str) -> CellCode:
    """Analyse a cell's (already transformed) Python source.

    Raises SyntaxError when the source does not parse; the caller then runs the cell as is
    so that Python reports the error.
    """
    try:
        tree = ast.parse(source)
    except ValueError as error:  # null bytes are a ValueError before Python 3.12
        raise SyntaxError(str(error)) from error
    flow = _Flow()
    flow.run_block(tree.body)
    inputs = flow.inputs | flow.pending
    if "get_ipython" not in flow.outputs:
        inputs.discard("get_ipython")
    suppressed = display_suppressed(source)
    return CellCode(
        inputs=frozenset(inputs),
        outputs=frozenset(flow.outputs),
        deleted=frozenset(flow.deleted),
        normalized=ast.dump(tree, include_attributes=False) + ("\n;" if suppressed else ""),
        last_expression=bool(tree.body) and isinstance(tree.body[-1], ast.Expr),
        display_suppressed=suppressed,
        opaque=tuple(dict.fromkeys(flow.opaque)),
    )


def display_suppressed(source: str) -> bool:
    """IPython's rule: the last token (comments and newlines aside) is ``;``."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skipped = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    skipped += (tokenize.DEDENT, tokenize.INDENT)
    for token in reversed(tokens):
        if token.type not in skipped:
            return token.type == tokenize.OP and token.string == ";"
    return False


def expanded_names(text: str) -> set[str]:
    """Names IPython's ``$name`` / ``{expr}`` expansion of a magic line may read."""
    names = set(_DOLLAR_NAME.findall(text))
    for field in _BRACED.findall(text):
        try:
            parsed = ast.parse(field.strip(), mode="eval")
        except SyntaxError:
            continue
        names |= {n.id for n in ast.walk(parsed) if isinstance(n, ast.Name)}
    return names


_State = tuple[set[str] | None, set[str]]  # (surely bound or deleted, None if unreachable; pending)


class _Flow:
    """Walks a module or class body in execution order, tracking which names are settled.

    A class body has an ``outer`` flow (the cell): its own bindings are class attributes, and
    names it has not settled are read from the cell's namespace at that moment.
    """

    def __init__(self, outer: _Flow | None = None) -> None:
        self.outer = outer
        self.inputs: set[str] = set()
        self.outputs: set[str] = set()
        self.deleted: set[str] = set()
        self.opaque: list[str] = []
        self.settled: set[str] | None = set()
        # Globals read by functions defined so far, not yet settled: inputs once code runs.
        self.pending: set[str] = set()
        self.loop_exits: list[list[_State]] = []
        self.conditional = 0

    @property
    def root(self) -> _Flow:
        return self if self.outer is None else self.outer.root

    # -- names ------------------------------------------------------------------------------

    def read(self, name: str) -> None:
        if self.settled is None or name in self.settled:
            return
        if self.outer is not None:
            self.outer.read(name)
        else:
            self.inputs.add(name)

    def read_global(self, name: str) -> None:
        """A read that skips class scope (comprehensions and functions in a class body)."""
        if self.outer is not None:
            self.outer.read(name)
        else:
            self.read(name)

    def bind(self, name: str, surely: bool = True) -> None:
        if self.outer is None:
            self.outputs.add(name)
            if surely:
                self.pending.discard(name)
        if surely and self.settled is not None:
            self.settled.add(name)

    def delete(self, name: str) -> None:
        self.read(name)
        if self.outer is None:
            self.deleted.add(name)
            self.pending.discard(name)
        if self.settled is not None:
            self.settled.add(name)

    def bind_global(self, name: str) -> None:
        self.root.outputs.add(name)

    def defer(self, names: set[str]) -> None:
        if self.outer is not None:
            self.outer.defer(names)
        elif self.settled is not None:
            self.pending |= names - self.settled

    def code_may_run(self) -> None:
        """Anything defined so far may be called now: its pending globals become inputs."""
        root = self.root
        if root.settled is not None:
            root.inputs |= root.pending
            root.pending = set()

    def mark_opaque(self, reason: str) -> None:
        self.root.opaque.append(reason)

    # -- control flow -----------------------------------------------------------------------

    def snapshot(self) -> _State:
        settled = None if self.settled is None else set(self.settled)
        return settled, set(self.root.pending)

    def restore(self, state: _State) -> None:
        self.settled = None if state[0] is None else set(state[0])
        self.root.pending = set(state[1])

    def merge(self, states: list[_State]) -> None:
        reachable = [s[0] for s in states if s[0] is not None]
        pending: set[str] = set().union(*(s[1] for s in states))
        self.settled = set.intersection(*reachable) if reachable else None
        self.root.pending = pending if reachable else set()

    def unreachable(self) -> None:
        self.settled = None

    def run_block(self, statements: list[ast.stmt]) -> None:
        for statement in statements:
            self.run_statement(statement)

    def run_statement(self, node: ast.stmt) -> None:
        handler = getattr(self, "_" + type(node).__name__, None)
        if handler is not None:
            handler(node)
        else:  # Pass, Global, Nonlocal and anything newer: evaluate what it holds.
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.evaluate(child)

    def evaluate(self, node: ast.expr) -> None:
        _ExpressionWalker(self).visit(node)

    def assign(self, target: ast.expr, surely: bool = True) -> None:
        if isinstance(target, ast.Name):
            self.bind(target.id, surely)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.assign(element, surely)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, surely)
        else:  # attribute or item assignment: reads the root, runs __setattr__/__setitem__
            for child in ast.iter_child_nodes(target):
                if isinstance(child, ast.expr):
                    self.evaluate(child)
            self.code_may_run()

    # -- statements -------------------------------------------------------------------------

    def _Expr(self, node: ast.Expr) -> None:
        timed = _timed_code(node.value)
        if timed is None:
            self.evaluate(node.value)
            return
        try:
            self.run_block(ast.parse(timed).body)
        except SyntaxError:
            self.mark_opaque("%time with code that does not parse")

    def _Assign(self, node: ast.Assign) -> None:
        self.evaluate(node.value)
        for target in node.targets:
            self.assign(target)

    def _AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.read(node.target.id)
            self.evaluate(node.value)
            self.code_may_run()
            self.bind(node.target.id)
        else:
            self.evaluate(node.value)
            self.assign(node.target)

    def _AnnAssign(self, node: ast.AnnAssign) -> None:
        self.evaluate(node.annotation)
        if node.value is not None:
            self.evaluate(node.value)
            self.assign(node.target)
        elif not isinstance(node.target, ast.Name):
            self.evaluate(node.target)

    def _Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.delete(target.id)
            else:
                self.assign(target)

    def _Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.bind(alias.asname or alias.name.split(".")[0])

    def _ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.mark_opaque(f"from {node.module} import * binds names nbcache cannot see")
            else:
                self.bind(alias.asname or alias.name)

    def _Raise(self, node: ast.Raise) -> None:
        for child in (node.exc, node.cause):
            if child is not None:
                self.evaluate(child)
        self.unreachable()

    def _Return(self, node: ast.Return) -> None:
        if node.value is not None:
            self.evaluate(node.value)
        self.unreachable()

    def _Break(self, node: ast.Break) -> None:
        if self.loop_exits:
            self.loop_exits[-1].append(self.snapshot())
        self.unreachable()

    def _Continue(self, node: ast.Continue) -> None:
        self.unreachable()

    def _FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expression in evaluated_at_definition(node):
            self.evaluate(expression)
        scope = function_scope(node)
        self.defer(scope.free - {node.name})
        for name in scope.global_binds:
            self.bind_global(name)
        if node.decorator_list:
            self.code_may_run()
        self.bind(node.name)

    _AsyncFunctionDef = _FunctionDef

    def _ClassDef(self, node: ast.ClassDef) -> None:
        for expression in evaluated_at_definition(node):
            self.evaluate(expression)
        body = _Flow(outer=self)
        body.run_block(node.body)
        if node.decorator_list or node.bases or node.keywords:
            self.code_may_run()
        self.bind(node.name)

    def _If(self, node: ast.If) -> None:
        self.evaluate(node.test)
        entry = self.snapshot()
        self.run_block(node.body)
        after_body = self.snapshot()
        self.restore(entry)
        self.run_block(node.orelse)
        self.merge([after_body, self.snapshot()])

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While) -> None:
        entry = self.snapshot()
        exits: list[_State] = []
        pending = set(entry[1])
        # Twice: a function defined late in the body may be called early in the next round.
        for _ in range(2):
            self.restore((entry[0], pending))
            self.loop_exits.append(exits)
            if isinstance(node, ast.While):
                self.evaluate(node.test)
            else:
                self.assign(node.target)
            self.run_block(node.body)
            self.loop_exits.pop()
            pending |= self.root.pending
        endless = isinstance(node, ast.While) and _always_true(node.test)
        self.restore((entry[0], pending))
        if isinstance(node, ast.While):
            self.evaluate(node.test)
        self.run_block(node.orelse)
        self.merge(exits + ([] if endless else [self.snapshot()]))

    def _For(self, node: ast.For | ast.AsyncFor) -> None:
        self.evaluate(node.iter)
        self._loop(node)

    _AsyncFor = _For
    _While = _loop

    def _With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.evaluate(item.context_expr)
            self.code_may_run()
            if item.optional_vars is not None:
                self.assign(item.optional_vars)
        entry = self.snapshot()
        self.run_block(node.body)
        if any(_may_suppress(item.context_expr) for item in node.items):
            self.merge([entry, self.snapshot()])

    _AsyncWith = _With

    def _Try(self, node: ast.Try) -> None:
        entry = self.snapshot()
        self.run_block(node.body)
        pending = set(entry[1]) | self.root.pending
        self.run_block(node.orelse)
        ends = [self.snapshot()]
        for handler in node.handlers:
            # A handler may run after any prefix of the body: start from the entry state.
            self.restore((entry[0], pending))
            if handler.type is not None:
                self.evaluate(handler.type)
            if handler.name:
                self.bind(handler.name)
            self.run_block(handler.body)
            if handler.name:
                self.delete(handler.name)
            ends.append(self.snapshot())
        self.merge(ends)
        if not node.finalbody:
            return
        merged = self.snapshot()
        self.restore((entry[0], merged[1] | pending))
        self.run_block(node.finalbody)
        final = self.snapshot()
        if merged[0] is None or final[0] is None or entry[0] is None:
            self.unreachable()
        else:
            self.settled = merged[0] | (final[0] - entry[0])

    _TryStar = _Try

    def _Match(self, node: ast.Match) -> None:
        self.evaluate(node.subject)
        entry = self.snapshot()
        ends: list[_State] = []
        exhaustive = False
        for case in node.cases:
            self.restore(entry)
            self._pattern(case.pattern)
            if case.guard is not None:
                self.evaluate(case.guard)
            self.run_block(case.body)
            ends.append(self.snapshot())
            pattern = case.pattern
            if case.guard is None and isinstance(pattern, ast.MatchAs) and pattern.pattern is None:
                exhaustive = True
        if not exhaustive:
            ends.append(entry)
        self.merge(ends)

    def _pattern(self, pattern: ast.pattern) -> None:
        for node in ast.walk(pattern):
            if isinstance(node, ast.MatchValue):
                self.evaluate(node.value)
            elif isinstance(node, ast.MatchClass):
                self.evaluate(node.cls)
                self.code_may_run()
            elif isinstance(node, ast.MatchMapping):
                for key in node.keys:
                    self.evaluate(key)
                if node.rest:
                    self.bind(node.rest)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                self.bind(node.name)


class _ExpressionWalker(ast.NodeVisitor):
    """Visits one expression in evaluation order, reading, binding and deferring names."""

    def __init__(self, flow: _Flow) -> None:
        self.flow = flow

    def generic_visit(self, node: ast.AST) -> None:
        super().generic_visit(node)
        if isinstance(node, ast.expr) and not _inert(node):
            self.flow.code_may_run()

    def visit_Name(self, node: ast.Name) -> None:
        self.flow.read(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.flow.bind(node.target.id, surely=self.flow.conditional == 0)

    def _conditionally(self, nodes: list[ast.expr]) -> None:
        self.flow.conditional += 1
        try:
            for child in nodes:
                self.visit(child)
        finally:
            self.flow.conditional -= 1

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self.visit(node.values[0])
        self._conditionally(node.values[1:])
        self.flow.code_may_run()

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self._conditionally([node.body, node.orelse])
        self.flow.code_may_run()

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expression in evaluated_at_definition(node):
            self.visit(expression)
        scope = function_scope(node)
        self.flow.defer(scope.free)
        for name in scope.global_binds:
            self.flow.bind_global(name)

    def _visit_comprehension(self, node: ComprehensionNode) -> None:
        self.visit(node.generators[0].iter)
        scope = comprehension_scope(node)
        for name in scope.free:
            self.flow.read_global(name)
        for name in scope.outer_binds:
            self.flow.bind(name, surely=False)
        for name in scope.global_binds:
            self.flow.bind_global(name)
        self.flow.code_may_run()

    visit_ListComp = _visit_comprehension
    visit_SetComp = _visit_comprehension
    visit_DictComp = _visit_comprehension
    visit_GeneratorExp = _visit_comprehension

    def visit_Call(self, node: ast.Call) -> None:
        self._check_call(node)
        self.generic_visit(node)

    def _check_call(self, node: ast.Call) -> None:
        function = node.func
        if isinstance(function, ast.Name) and function.id in _NAMESPACE_CALLS:
            if function.id not in ("vars", "dir") or not node.args:
                self.flow.mark_opaque(f"{function.id}() reads or binds names nbcache cannot see")
            return
        if not _is_ipython_attribute(function):
            return
        assert isinstance(function, ast.Attribute)
        strings = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
        if not all(isinstance(s, str) for s in strings) or node.keywords:
            self.flow.mark_opaque(f"get_ipython().{function.attr} with computed arguments")
            return
        texts = [s for s in strings if isinstance(s, str)]
        if function.attr in _SHELL_CALLS and texts:
            self._read_all(expanded_names(texts[0]))
        elif function.attr in ("run_line_magic", "run_cell_magic") and len(texts) >= 2:
            self._magic(function.attr, texts[0], texts[1], texts[2] if len(texts) > 2 else "")
        else:
            self.flow.mark_opaque(f"get_ipython().{function.attr} may touch any name")

    def _magic(self, kind: str, name: str, line: str, body: str) -> None:
        cell = kind == "run_cell_magic"
        if name in CODE_MAGICS:
            self._embedded_code(name, body if cell else line)
        elif name in (HARMLESS_CELL_MAGICS if cell else HARMLESS_LINE_MAGICS):
            self._read_all(expanded_names(line))
        else:
            self.flow.mark_opaque(f"%{'%' if cell else ''}{name} may read or bind any name")

    def _embedded_code(self, name: str, code: str) -> None:
        try:
            inner = analyze_cell(code)
        except SyntaxError:
            self.flow.mark_opaque(f"%{name} with arguments nbcache cannot parse")
            return
        self._read_all(set(inner.inputs))
        for output in inner.outputs | inner.deleted:
            self.flow.bind(output, surely=False)
        for reason in inner.opaque:
            self.flow.mark_opaque(reason)

    def _read_all(self, names: set[str]) -> None:
        for name in sorted(names):
            self.flow.read(name)


def _is_ipython_attribute(node: ast.expr) -> bool:
    """``get_ipython().something``."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "get_ipython"
    )


def _timed_code(node: ast.expr) -> str | None:
    """The code of a statement-level ``%time stmt`` or ``%%time`` cell, else None."""
    if not (isinstance(node, ast.Call) and _is_ipython_attribute(node.func)):
        return None
    assert isinstance(node.func, ast.Attribute)
    values = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
    if not values or values[0] != "time" or node.keywords:
        return None
    if node.func.attr == "run_line_magic" and len(values) == 2 and isinstance(values[1], str):
        return values[1]
    if node.func.attr == "run_cell_magic" and len(values) == 3 and isinstance(values[2], str):
        return values[2]
    return None


def _inert(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.operand, ast.Constant)
    return isinstance(node, _INERT)


def _always_true(test: ast.expr) -> bool:
    return isinstance(test, ast.Constant) and bool(test.value)


def _may_suppress(context: ast.expr) -> bool:
    """Whether a ``with`` item looks like it swallows exceptions (``suppress``, ``raises``)."""
    callee = context.func if isinstance(context, ast.Call) else context
    name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
    return any(word in name.lower() for word in _SUPPRESSING_CONTEXTS)
