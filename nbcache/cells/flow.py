"""The statement-by-statement walk behind :func:`nbcache.cells.analysis.analyze_cell`.

:class:`CellFlow` visits a cell (or a class body inside it) in execution order. It keeps the
set of names the cell has surely settled (bound or deleted on every path so far), so that a
read of any other name is a read of the user namespace: an input. Branches are analysed from
the same entry state and merged by intersection; loop bodies from the state before the loop
(a body may run zero times, and its first round sees only what came before).

Globals read by functions the cell defines are "pending": they become inputs as soon as
anything that may call user code runs while they are still unsettled, or at the end.
"""

from __future__ import annotations

import ast

from nbcache.cells.ipython_calls import call_effect, timed_code
from nbcache.cells.scopes import (
    ComprehensionNode,
    comprehension_scope,
    evaluated_at_definition,
    function_scope,
)

_SUPPRESSING_CONTEXTS = ("suppress", "raises", "ignore")
# Expressions that cannot run user code, so they cannot call a function the cell defined.
_INERT = (ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Lambda, ast.Starred)

_State = tuple[set[str] | None, set[str]]  # (surely bound or deleted, None if unreachable; pending)


class CellFlow:
    """Walks a module or class body in execution order, tracking which names are settled.

    A class body has an ``outer`` flow (the cell): its own bindings are class attributes, and
    names it has not settled are read from the cell's namespace at that moment.
    """

    def __init__(self, outer: CellFlow | None = None) -> None:
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
    def root(self) -> CellFlow:
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
        timed = timed_code(node.value)
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
        body = CellFlow(outer=self)
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

    def __init__(self, flow: CellFlow) -> None:
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
        effect = call_effect(node)
        if effect.opaque:
            self.flow.mark_opaque(effect.opaque)
        for name in sorted(effect.reads):
            self.flow.read(name)
        if effect.code is not None:
            self._embedded_code(effect.code)
        self.generic_visit(node)

    def _embedded_code(self, code: str) -> None:
        """Code a magic runs (``%timeit stmt``): its reads happen now, its binds may."""
        try:
            statements = ast.parse(code).body
        except SyntaxError:
            self.flow.mark_opaque("a magic runs code nbcache cannot parse")
            return
        inner = CellFlow()
        inner.run_block(statements)
        for name in sorted(inner.inputs | inner.pending):
            self.flow.read(name)
        for name in inner.outputs | inner.deleted:
            self.flow.bind(name, surely=False)
        for reason in inner.opaque:
            self.flow.mark_opaque(reason)


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
