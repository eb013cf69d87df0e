"""What a cell's run did to the namespaces, measured on a miss and replayed on a hit.

Effects are measured, not guessed:

* a name the cell may bind (its analysis says so) is stored when it was bound: new, another
  object, or bound by an unconditional top-level statement; a name it may delete is deleted
  on a hit only if the run deleted it;
* a name of the notebook, or a global of a user module, that the cell's helpers rebound or
  deleted (``global total; total = ...``) is an effect too: the namespaces the run may reach
  are compared binding by binding, before and after;
* an object changed in place (an input, a global a helper reads, a member of a user module
  the cell uses) is told by its digest, taken before the run for the key and again after.

A hit binds and deletes the same names. An object the run changed in place is changed in
place again where that is exact (:mod:`nbcache.cells.in_place`), so other names that refer to
it see the change as in a plain run; otherwise the name is rebound to the restored copy and
one warning names the other names that still refer to the old object.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from nbcache.cells.in_place import update_in_place
from nbcache.cells.key import Watched
from nbcache.cells.rebind import rebind_globals

log = logging.getLogger(__name__)

MAIN = "__main__"
_ABSENT = object()
# Names IPython itself keeps in the namespace (history, outputs): never a cell's effect.
_IPYTHON_NAMES = re.compile(r"_+|_i+|_i?\d+|_[iod]h|In|Out|exit|quit|get_ipython")


@dataclass
class Effects:
    """What a run did: names of the notebook bound, changed in place and deleted, and the same
    for globals of other modules as ``(module, name)``. Plain data: stored in the entry."""

    bound: dict[str, Any] = field(default_factory=dict)
    mutated: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    module_bound: dict[tuple[str, str], Any] = field(default_factory=dict)
    module_mutated: dict[tuple[str, str], Any] = field(default_factory=dict)
    module_deleted: list[tuple[str, str]] = field(default_factory=list)

    def restored_names(self) -> list[str]:
        """The notebook names a hit binds, in order."""
        return sorted({*self.bound, *self.mutated})


@dataclass
class Before:
    """The state a run starts from, as needed to measure its effects."""

    #: The cell's own outputs (and deletions), by name: what they held.
    outputs: dict[str, Any]
    surely_bound: frozenset[str]
    #: Every binding of each namespace the run may reach, by module name.
    bindings: dict[str, dict[str, Any]]
    namespaces: dict[str, dict[str, Any]]
    watched: list[Watched]


def take_before(
    user_ns: dict[str, Any],
    outputs: frozenset[str],
    surely_bound: frozenset[str],
    namespaces: dict[str, dict[str, Any]],
    watched: list[Watched],
) -> Before:
    """Record what the run starts from (a shallow copy of each namespace: pointers only)."""
    reachable = {MAIN: user_ns, **{m: ns for m, ns in namespaces.items() if ns is not user_ns}}
    return Before(
        outputs={name: user_ns.get(name, _ABSENT) for name in outputs},
        surely_bound=surely_bound,
        bindings={module: dict(namespace) for module, namespace in reachable.items()},
        namespaces=reachable,
        watched=watched,
    )


def measure_effects(before: Before) -> Effects:
    """What the run did, compared with ``before``."""
    effects = Effects()
    user_ns = before.namespaces[MAIN]
    mutated_names = {(w.module, w.name) for w in before.watched if w.changed_in_place()}
    for name in sorted(before.outputs):
        old, new = before.outputs[name], user_ns.get(name, _ABSENT)
        if new is _ABSENT:
            if old is not _ABSENT:
                effects.deleted.append(name)
        elif new is old and (MAIN, name) in mutated_names:
            effects.mutated[name] = new
        elif new is not old or name in before.surely_bound:
            effects.bound[name] = new
    for module, namespace in before.namespaces.items():
        old_bindings = before.bindings[module]
        for name in _rebound(old_bindings, namespace):
            if module == MAIN and name in before.outputs:
                continue
            value = namespace.get(name, _ABSENT)
            if module == MAIN:
                if value is _ABSENT:
                    effects.deleted.append(name)
                else:
                    effects.bound[name] = value
            elif value is _ABSENT:
                effects.module_deleted.append((module, name))
            else:
                effects.module_bound[(module, name)] = value
    for module, name in sorted(mutated_names):
        if module == MAIN:
            if not {name} & {*effects.bound, *effects.mutated, *effects.deleted}:
                effects.mutated[name] = user_ns[name]
        elif (module, name) not in effects.module_bound:
            owner = before.namespaces.get(module)
            if owner is not None and name in owner:
                effects.module_mutated[(module, name)] = owner[name]
    return effects


def apply_effects(shell: Any, effects: Effects, label: str) -> None:
    """Replay ``effects`` (restored from an entry: the caller's own copies) in ``shell``."""
    user_ns = shell.user_ns
    namespace = shell.user_global_ns
    bound = {name: rebind_globals(value, namespace) for name, value in effects.bound.items()}
    stale: dict[str, list[str]] = {}
    for name, value in effects.mutated.items():
        current = user_ns.get(name, _ABSENT)
        if current is _ABSENT or not update_in_place(current, value):
            bound[name] = rebind_globals(value, namespace)
            if current is not _ABSENT:
                stale[name] = _other_names(user_ns, current, name)
    shell.push(bound, interactive=True)
    for name in effects.deleted:
        user_ns.pop(name, None)
    for (module, name), value in effects.module_bound.items():
        module_ns = _module_namespace(module)
        if module_ns is not None:
            module_ns[name] = value
    for (module, name), value in effects.module_mutated.items():
        module_ns = _module_namespace(module)
        if module_ns is None:
            continue
        current = module_ns.get(name, _ABSENT)
        if current is _ABSENT or not update_in_place(current, value):
            module_ns[name] = value
            if current is not _ABSENT:
                stale[f"{module}.{name}"] = _other_names(user_ns, current, "")
    for module, name in effects.module_deleted:
        module_ns = _module_namespace(module)
        if module_ns is not None:
            module_ns.pop(name, None)
    _warn_stale(stale, label)


def _rebound(old: dict[str, Any], namespace: dict[str, Any]) -> list[str]:
    """Names whose binding differs between ``old`` (a copy) and ``namespace`` (now)."""
    changed = [name for name, value in namespace.items() if old.get(name, _ABSENT) is not value]
    changed += [name for name in old if name not in namespace]
    return sorted(name for name in changed if not _bookkeeping(name))


def _bookkeeping(name: str) -> bool:
    return (name.startswith("__") and name.endswith("__")) or bool(_IPYTHON_NAMES.fullmatch(name))


def _module_namespace(module: str) -> dict[str, Any] | None:
    found = sys.modules.get(module)
    return None if found is None else vars(found)


def _other_names(user_ns: dict[str, Any], target: Any, own: str) -> list[str]:
    return sorted(
        name
        for name, value in user_ns.items()
        if value is target and name != own and not _bookkeeping(name)
    )


def _warn_stale(stale: dict[str, list[str]], label: str) -> None:
    """One warning naming the names a plain run would have changed too, if there are any."""
    parts = [
        f"{', '.join(others)} still refer{'s' if len(others) == 1 else ''} to the old {name}"
        for name, others in stale.items()
        if others
    ]
    if parts:
        log.warning(
            "nbcache: %s changed objects in place that a hit can only replace: %s "
            "(a plain run would have changed them too)",
            label,
            "; ".join(parts),
        )


def top_level_bindings(tree: ast.Module) -> frozenset[str]:
    """Names bound by unconditional top-level statements: a successful run surely bound them.

    Tells "bound again to the very same object" (``n = 1`` when ``n`` was 1) from "left alone"
    (a branch not taken), which comparing objects before and after cannot.
    """
    names: set[str] = set()
    for statement in tree.body:
        targets: list[ast.expr] = []
        if isinstance(statement, ast.Assign):
            targets = list(statement.targets)
        elif isinstance(statement, ast.AugAssign | ast.AnnAssign):
            if statement.value is not None:
                targets = [statement.target]
        elif isinstance(statement, ast.Import | ast.ImportFrom):
            for alias in statement.names:
                if alias.name != "*":
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.With | ast.AsyncWith):
            targets = [item.optional_vars for item in statement.items if item.optional_vars]
        for target in targets:
            names |= _target_names(target)
    return frozenset(names)


def _target_names(target: ast.expr) -> set[str]:
    """Names an assignment target binds (``a[i] = ...`` and ``a.b = ...`` bind none)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_target_names(element) for element in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()
