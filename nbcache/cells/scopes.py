"""Names a deferred scope (function, lambda, class body) reads from and binds in the globals.

A function body runs later, when it is called, so the order of its statements tells nothing
about when a global is read: every name it reads that is not its own local is a global read
(or a closure read, resolved by the enclosing function). Python's own rule decides locals: a
name bound anywhere in a function body is local to the whole body unless declared ``global``
or ``nonlocal``. Comprehensions are functions too, whose targets are local, except that a
walrus inside one binds in the enclosing function.

Used by :mod:`nbcache.cells.analysis`; pure functions of the AST.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
ComprehensionNode = ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp


@dataclass
class ScopeNames:
    """What one deferred scope reads from outside itself and binds in the module globals.

    ``free``: names read but not local (they resolve in enclosing scopes, then globals).
    ``global_binds``: names bound through ``global`` declarations, here or in nested scopes.
    ``outer_binds``: walrus targets inside comprehensions, which bind in the enclosing scope.
    """

    free: set[str] = field(default_factory=set)
    global_binds: set[str] = field(default_factory=set)
    outer_binds: set[str] = field(default_factory=set)


def parameter_names(arguments: ast.arguments) -> set[str]:
    """Every name a function's parameter list binds."""
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return {a.arg for a in every}


def evaluated_at_definition(node: FunctionNode | ast.ClassDef) -> list[ast.expr]:
    """Expressions Python evaluates when the ``def``/``class``/``lambda`` statement runs."""
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
    arguments = node.args
    found: list[ast.expr] = [*arguments.defaults]
    found += [d for d in arguments.kw_defaults if d is not None]
    if isinstance(node, ast.Lambda):
        return found
    found += node.decorator_list
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    found += [a.annotation for a in every if a.annotation is not None]
    if node.returns is not None:
        found.append(node.returns)
    return found


def function_scope(node: FunctionNode) -> ScopeNames:
    """Free names and global bindings of a function or lambda body (not its defaults)."""
    collector = _ScopeCollector()
    if isinstance(node, ast.Lambda):
        collector.visit(node.body)
    else:
        for statement in node.body:
            collector.visit(statement)
    return collector.finish(local=parameter_names(node.args))


def class_body_scope(node: ast.ClassDef) -> ScopeNames:
    """Free names of a class body nested in a function (conservatively: every name it reads)."""
    collector = _ScopeCollector(class_body=True)
    for statement in node.body:
        collector.visit(statement)
    return collector.finish(local=set())


def comprehension_scope(node: ComprehensionNode) -> ScopeNames:
    """Free names of a comprehension, except its first iterable (evaluated outside it)."""
    collector = _ScopeCollector(comprehension=True)
    for index, generator in enumerate(node.generators):
        collector.bind_target(generator.target)
        if index > 0:
            collector.visit(generator.iter)
        for condition in generator.ifs:
            collector.visit(condition)
    if isinstance(node, ast.DictComp):
        collector.visit(node.key)
        collector.visit(node.value)
    else:
        collector.visit(node.elt)
    return collector.finish(local=set())


class _ScopeCollector(ast.NodeVisitor):
    """Walks one scope's body; nested scopes are summarised by their own collectors."""

    def __init__(self, *, comprehension: bool = False, class_body: bool = False) -> None:
        self.comprehension = comprehension
        self.class_body = class_body
        self.reads: set[str] = set()
        self.binds: set[str] = set()
        self.declared_global: set[str] = set()
        self.declared_nonlocal: set[str] = set()
        self.nested = ScopeNames()

    def finish(self, local: set[str]) -> ScopeNames:
        if self.comprehension:
            # Walrus targets belong to the enclosing scope; only the for-targets are local.
            local = local | (self.binds - self.nested.outer_binds)
        elif not self.class_body:
            local = local | self.binds | self.nested.outer_binds
        local -= self.declared_global | self.declared_nonlocal
        free = (self.reads | self.nested.free) - local
        global_binds = self.nested.global_binds | (self.declared_global & self.binds)
        outer = self.nested.outer_binds if self.comprehension else set()
        return ScopeNames(free=free, global_binds=global_binds, outer_binds=outer)

    def bind_target(self, target: ast.expr) -> None:
        self.visit(target)

    def _absorb(self, inner: ScopeNames) -> None:
        self.nested.free |= inner.free
        self.nested.global_binds |= inner.global_binds
        self.nested.outer_binds |= inner.outer_binds

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.reads.add(node.id)
        else:
            # ``del x`` needs x to exist: it reads as well as unbinds.
            if isinstance(node.ctx, ast.Del):
                self.reads.add(node.id)
            self.binds.add(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.reads.add(node.target.id)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.binds.add(node.target.id)
        if self.comprehension:
            self.nested.outer_binds.add(node.target.id)

    def visit_Global(self, node: ast.Global) -> None:
        self.declared_global.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.declared_nonlocal.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.binds.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.binds.add(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.binds.add(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.binds.add(node.rest)
        self.generic_visit(node)

    def _visit_function(self, node: FunctionNode) -> None:
        for expression in evaluated_at_definition(node):
            self.visit(expression)
        if not isinstance(node, ast.Lambda):
            self.binds.add(node.name)
        self._absorb(function_scope(node))

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function
    visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expression in evaluated_at_definition(node):
            self.visit(expression)
        self.binds.add(node.name)
        self._absorb(class_body_scope(node))

    def _visit_comprehension(self, node: ComprehensionNode) -> None:
        self.visit(node.generators[0].iter)
        inner = comprehension_scope(node)
        self._absorb(inner)
        self.binds |= inner.outer_binds

    visit_ListComp = _visit_comprehension
    visit_SetComp = _visit_comprehension
    visit_DictComp = _visit_comprehension
    visit_GeneratorExp = _visit_comprehension
