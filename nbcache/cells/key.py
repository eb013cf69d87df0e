"""The key of a ``%%cache`` cell, and what a run of it may change besides its own names.

A cell's key is its label, its normalised code, the Python version (the same code can compute
differently under another one, and code fingerprints differ between versions) and a digest of
each input it reads:

* functions and classes by code fingerprint, and by the values of the global data their code
  reads (changing a global a helper uses changes the key);
* a module of the user's own (a file beside the notebook, a package on ``sys.path`` in
  development: anything not installed as a library) by what the cell uses of it: each
  ``module.member`` chain the cell reads counts as that member would as an input, so editing
  ``helpers.py`` and reloading it (or ``%autoreload``) changes the key. A module used on its
  own (passed to a function, reloaded) counts by all its members;
* a library module by name and version; everything else by value.

Each input also says what to watch while the cell runs (:class:`Watched`): values a run may
change in place (the input itself, a global a helper reads, a member of a user module), with
their digests before the run, and the namespaces whose names a helper may rebind.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

from nbcache.cells.analysis import CellCode
from nbcache.exceptions import UnhashableValue
from nbcache.keys.digest import value_digest
from nbcache.keys.provenance import is_user_module
from nbcache.keys.snapshot import CodeSnapshot

#: Changes whenever the key's recipe changes (3: entries record the files, environment
#: variables and random state the cell used, and the files it declares are keyed).
KEY_VERSION = "nbcache.cell/3"

_ABSENT = object()


@dataclass(frozen=True)
class Watched:
    """``namespace[name]`` (the globals of module ``module``) and its digest before a run."""

    module: str
    namespace: dict[str, Any]
    name: str
    value: Any
    digest: str

    def changed_in_place(self) -> bool:
        """Whether the name still holds the same object, whose digest changed (or has none)."""
        current = self.namespace.get(self.name, _ABSENT)
        if current is not self.value:
            return False  # rebound or deleted: the namespaces' bindings tell that
        try:
            return watch_digest(current) != self.digest
        except UnhashableValue:
            return True


@dataclass
class InputState:
    """What one input contributes to the key, and what of it a run may change."""

    digest: str
    watched: list[Watched] = field(default_factory=list)
    #: Globals of modules (by name) whose bindings a helper of this input may change.
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)


def input_digest(value: object, members: frozenset[tuple[str, ...]] = frozenset({()})) -> str:
    """The digest an input contributes to a cell's key (see the module docstring).

    ``members``: the attribute chains the cell reads from it (``()``: used on its own).
    Raises :class:`~nbcache.exceptions.UnhashableValue` for values without a digest.
    """
    return input_state(value, members).digest


def input_state(
    value: object,
    members: frozenset[tuple[str, ...]] = frozenset({()}),
    *,
    name: str = "",
    namespace: dict[str, Any] | None = None,
) -> InputState:
    """:func:`input_digest`, with what to watch; ``namespace[name]`` is where it was read."""
    state = InputState("")
    state.digest, own = _state_of(value, members, state)
    if namespace is not None and name:
        module = str(namespace.get("__name__", "__main__"))
        state.watched.append(Watched(module, namespace, name, value, own))
    return state


def watch_digest(value: object) -> str:
    """What tells that a value changed in place: its code fingerprint, or its value digest."""
    if isinstance(value, types.FunctionType | type):
        return "code:" + CodeSnapshot.take(value).fingerprint
    if isinstance(value, types.ModuleType):
        return "module:" + value.__name__
    return "value:" + value_digest(value)


def cell_key(
    name: str, code: CellCode, input_digests: dict[str, str], depends_on: tuple[str, ...] = ()
) -> str:
    """The cache key of a cell: its label, normalised code, Python version, input digests and
    declared files.

    A pure function: the files, environment variables and random state the cell reads are
    checked against its entry, not keyed.
    """
    python = sys.implementation.cache_tag
    recipe = (KEY_VERSION, python, name, code.normalized, sorted(input_digests.items()), depends_on)
    return "cell:" + value_digest(recipe)


def _state_of(
    value: object, members: frozenset[tuple[str, ...]], state: InputState
) -> tuple[str, str]:
    """The key digest of an input, and its :func:`watch_digest` (computed once for both)."""
    if isinstance(value, types.FunctionType | type):
        return _code_digest(value, state)
    if isinstance(value, types.ModuleType):
        watch = "module:" + value.__name__
        if is_user_module(value.__name__):
            return _user_module_digest(value, members, state), watch
        return "value:" + value_digest(value), watch
    digest = "value:" + value_digest(value)
    return digest, digest


def _code_digest(value: types.FunctionType | type, state: InputState) -> tuple[str, str]:
    snapshot = CodeSnapshot.take(value)
    global_digests, _ = snapshot.global_digests()
    for global_input in snapshot.global_inputs:
        namespace = global_input.namespace
        module = str(namespace.get("__name__", "__main__"))
        state.namespaces.setdefault(module, namespace)
        current = namespace.get(global_input.name, _ABSENT)
        digest = global_digests.get(global_input.label)
        if current is not _ABSENT and digest is not None:
            watched = Watched(module, namespace, global_input.name, current, "value:" + digest)
            state.watched.append(watched)
    own_globals = getattr(value, "__globals__", None)
    if isinstance(own_globals, dict):
        state.namespaces.setdefault(str(own_globals.get("__name__", "__main__")), own_globals)
    digest = value_digest((snapshot.fingerprint, sorted(global_digests.items())))
    return "code:" + digest, "code:" + snapshot.fingerprint


def _user_module_digest(
    module: types.ModuleType, members: frozenset[tuple[str, ...]], state: InputState
) -> str:
    namespace = vars(module)
    state.namespaces.setdefault(module.__name__, namespace)
    if () in members:
        parts = _whole_module(module, state)
    else:
        parts = [_chain_part(module, chain, state) for chain in sorted(members)]
    return "module:" + value_digest((module.__name__, sorted(parts)))


def _chain_part(
    module: types.ModuleType, chain: tuple[str, ...], state: InputState
) -> tuple[str, str]:
    """The digest of what ``module.a.b...`` names, walking through user modules only."""
    owner = module
    for depth, attribute in enumerate(chain):
        label = ".".join(chain[: depth + 1])
        member = vars(owner).get(attribute, _ABSENT)
        if member is _ABSENT:
            return label, "absent"
        rest = chain[depth + 1 :]
        if isinstance(member, types.ModuleType) and is_user_module(member.__name__) and rest:
            state.namespaces.setdefault(member.__name__, vars(member))
            owner = member
            continue
        digest, watch = _state_of(member, frozenset({()}), state)
        _watch(owner, attribute, member, watch, state)
        return label, digest
    return "", "module"


def _whole_module(module: types.ModuleType, state: InputState) -> list[tuple[str, str]]:
    """Every member of a user module used on its own: code by fingerprint, data by value."""
    parts = []
    for attribute, member in sorted(vars(module).items()):
        if attribute.startswith("__") and attribute.endswith("__"):
            continue  # the module's bookkeeping (__file__, __spec__, __builtins__...)
        if isinstance(member, types.ModuleType):
            parts.append((attribute, "module:" + member.__name__))
            continue
        try:
            digest, watch = _state_of(member, frozenset({()}), state)
        except UnhashableValue as problem:
            # a lock or connection a module keeps: its type is all a digest can say
            parts.append((attribute, "type:" + problem.type_name))
            continue
        parts.append((attribute, digest))
        _watch(module, attribute, member, watch, state)
    return parts


def _watch(
    owner: types.ModuleType, attribute: str, member: Any, watch: str, state: InputState
) -> None:
    if not isinstance(member, types.ModuleType):
        state.watched.append(Watched(owner.__name__, vars(owner), attribute, member, watch))
