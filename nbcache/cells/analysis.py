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
- ``members`` tells how each input is used: the attribute chains read from it (``hm.scale``
  gives ``("scale",)``), and the empty chain when the name is also used on its own (passed,
  returned, reloaded). A module of the user's own is keyed by the members the cell uses.
- ``incidental`` are outputs bound only by imports and as loop variables: restored on a hit
  like every output, but not worth naming in the note that says what was restored.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass

from nbcache.cells.flow import CellFlow


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
    #: ``(input, chain)``: the attribute chains read from each input; ``()`` used on its own.
    members: frozenset[tuple[str, tuple[str, ...]]] = frozenset()
    incidental: frozenset[str] = frozenset()

    def chains(self, name: str) -> frozenset[tuple[str, ...]]:
        """The attribute chains the cell reads from input ``name`` (``()``: used on its own)."""
        found = frozenset(chain for owner, chain in self.members if owner == name)
        return found or frozenset({()})


def analyze_cell(source: str) -> CellCode:
    """Analyse a cell's (already transformed) Python source.

    Raises SyntaxError when the source does not parse; the caller then runs the cell as is
    so that Python reports the error.
    """
    try:
        tree = ast.parse(source)
    except ValueError as error:  # null bytes are a ValueError before Python 3.12
        raise SyntaxError(str(error)) from error
    flow = CellFlow()
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
        members=member_chains(tree, inputs),
        incidental=frozenset(_incidental_bindings(tree)),
    )


def member_chains(tree: ast.AST, names: set[str]) -> frozenset[tuple[str, tuple[str, ...]]]:
    """``(name, chain)`` for each attribute chain read from one of ``names`` in ``tree``.

    ``a.b.c`` gives ``("b", "c")`` for ``a``; a use of ``a`` that is not the start of an
    attribute chain gives ``()``. Nested functions count too (they may run during the cell).
    """
    chains: set[tuple[str, tuple[str, ...]]] = set()
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name) or node.id not in names:
            continue
        chain: list[str] = []
        current: ast.AST = node
        parent = parents.get(id(current))
        while isinstance(parent, ast.Attribute) and parent.value is current:
            chain.append(parent.attr)
            current, parent = parent, parents.get(id(parent))
        chains.add((node.id, tuple(chain)))
    return frozenset(chains)


def _incidental_bindings(tree: ast.Module) -> set[str]:
    """Names bound only by imports or as loop targets, and by no other statement."""
    incidental: set[str] = set()
    target_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            incidental |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            for name in ast.walk(node.target):
                if isinstance(name, ast.Name):
                    incidental.add(name.id)
                    target_nodes.add(id(name))
    other: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            if id(node) not in target_nodes:
                other.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            other.add(node.name)
    return incidental - other


def display_suppressed(source: str) -> bool:
    """IPython's rule: the last token (comments and newlines aside) is ``;``."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skipped = {tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT}
    skipped |= {tokenize.DEDENT, tokenize.INDENT}
    for token in reversed(tokens):
        if token.type not in skipped:
            return token.type == tokenize.OP and token.string == ";"
    return False
