"""What a function's code fingerprint depends on, re-checked in microseconds per call.

:func:`nbcache.keys.fingerprint.function_fingerprint` walks a function, its helpers and their
constants, which takes a hundred microseconds or more: too slow for every call of a cached
function. A :class:`CodeSnapshot` runs the same walk (:mod:`nbcache.keys.code_walk`), records
every object it reads (each reachable user function's code, defaults and closure cells, each
class attribute, and every global name the code mentions) and checks on the next call that
each one is still the *same object*. Rebinding a helper in a notebook cell, reloading a module
or editing a class shows up as a changed identity, and the fingerprint is recomputed.

Identity says nothing about a mutable object changed in place, so a snapshot whose defaults,
closure cells or class attributes hold anything but immutable scalars is *volatile*: its
fingerprint is recomputed on every call.

The walk also collects the function's *global inputs*: global names its code (or a helper's
code) reads that hold data rather than code (``THRESHOLD``, a DataFrame). The fingerprint
leaves those out by design; :meth:`CodeSnapshot.global_digests` digests their current values,
remembering the digest of a value that cannot have changed (the same immutable object, or a
value whose witness holds: see :mod:`nbcache.keys.witness`). Globals the code assigns
(``global calls; calls += 1``) are *state*: they are listed apart, in
:attr:`CodeSnapshot.assigned`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from nbcache.exceptions import UnhashableValue
from nbcache.keys.code_walk import MISSING, CodeReads, Kind, walk
from nbcache.keys.digest import value_digest
from nbcache.keys.fingerprint import function_fingerprint, function_fingerprint_parts
from nbcache.keys.function_fields import FIELDS, expected_words, fields_view

_FROZEN_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, range})


@dataclass(frozen=True)
class GlobalInput:
    """A global name holding data that some reachable function reads."""

    label: str  # "THRESHOLD", or "module.THRESHOLD" outside the notebook
    namespace: dict[str, Any]
    name: str


class _Slot:
    """One global input and the digest of the value it held last time, if that cannot change."""

    __slots__ = ("global_input", "remembered")

    def __init__(self, global_input: GlobalInput) -> None:
        self.global_input = global_input
        # (value, digest) of an immutable value: the same object again has the same digest.
        # One tuple, replaced whole, so that threads never see half of an update.
        self.remembered: tuple[object, str] | None = None


@dataclass
class CodeSnapshot:
    """The fingerprint of one function and the identities it was computed from."""

    func: Any
    fingerprint: str = ""
    global_inputs: tuple[GlobalInput, ...] = ()
    #: Labels of the global inputs the code assigns (``global x; x = ...``): state.
    assigned: frozenset[str] = frozenset()
    volatile: bool = False
    _attributes: list[tuple[object, str, object]] = field(default_factory=list)
    #: Functions' fields read through views: (view, the words it read, then the function and
    #: the objects the words are, kept alive: no other object can take their addresses).
    _fields: list[tuple[Callable[[], list[Any]], list[Any], tuple[object, ...]]] = field(
        default_factory=list
    )
    _entries: list[tuple[Any, str, object]] = field(default_factory=list)
    _cells: list[tuple[types.CellType, object]] = field(default_factory=list)
    _slots: tuple[_Slot, ...] = ()
    _parts: dict[str, str] | None = None

    @classmethod
    def take(cls, func: Any) -> CodeSnapshot:
        """Walk ``func`` and compute its fingerprint (may raise UnhashableValue)."""
        snapshot = cls(func)
        recorder = _Recorder(snapshot)
        inputs: dict[tuple[int, str], GlobalInput] = {}
        assigned: set[str] = set()
        for _, links in walk(func, recorder):
            for link in links:
                if link.kind is Kind.HELD or link.kind is Kind.CLASS_DATA:
                    if not _frozen(link.target):
                        snapshot.volatile = True
                elif link.kind is Kind.INPUT or link.kind is Kind.STATE:
                    assert link.namespace is not None
                    global_input = inputs.setdefault(
                        (id(link.namespace), link.name),
                        GlobalInput(_label(link.namespace, link.name), link.namespace, link.name),
                    )
                    if link.kind is Kind.STATE:
                        assigned.add(global_input.label)
        snapshot.global_inputs = tuple(inputs.values())
        snapshot.assigned = frozenset(assigned)
        snapshot._slots = tuple(_Slot(global_input) for global_input in snapshot.global_inputs)
        snapshot._read_fields_unaudited()
        # Identities are recorded before the fingerprint is computed: a change in between
        # fails the next check instead of hiding behind a fingerprint of the newer code.
        snapshot.fingerprint = function_fingerprint(func)
        return snapshot

    def _read_fields_unaudited(self) -> None:
        """Check functions' code and defaults through field views where the layout is known
        (:mod:`nbcache.keys.function_fields`), instead of by audited attribute reads."""
        by_function: dict[int, list[tuple[object, str, object]]] = {}
        for read in self._attributes:
            if read[1] in FIELDS and type(read[0]) is types.FunctionType:
                by_function.setdefault(id(read[0]), []).append(read)
        viewed: set[int] = set()
        for reads in by_function.values():
            values = {name: value for _, name, value in reads}
            func = reads[0][0]
            view = fields_view(func)  # type: ignore[arg-type]
            if len(values) != len(FIELDS) or view is None:
                continue
            expected = tuple(values[name] for name in FIELDS)
            if expected_words(view, expected):  # else: changed meanwhile; read attributes
                self._fields.append((view, view(), (func, *expected)))
                viewed.update(id(read) for read in reads)
        if viewed:
            self._attributes = [read for read in self._attributes if id(read) not in viewed]

    def unchanged(self) -> bool:
        """True if every recorded object is still the same object (and nothing is volatile)."""
        if self.volatile:
            return False
        for view, words, _ in self._fields:
            if view() != words:
                return False
        for owner, attribute, expected in self._attributes:
            if getattr(owner, attribute, MISSING) is not expected:
                return False
        for mapping, name, expected in self._entries:
            if mapping.get(name, MISSING) is not expected:
                return False
        return all(_cell_contents(cell) is expected for cell, expected in self._cells)

    def global_digests(
        self, leave_out: Collection[str] = ()
    ) -> tuple[dict[str, str], dict[str, UnhashableValue]]:
        """Digests of the global data values the code reads now, by label.

        ``leave_out``: labels not to digest (state). A value without a digest (a connection,
        a lock) is keyed by its type only; those are returned second, so the caller can say
        so.
        """
        digests: dict[str, str] = {}
        opaque: dict[str, UnhashableValue] = {}
        for slot in self._slots:
            global_input = slot.global_input
            label = global_input.label
            if label in leave_out:
                continue
            value = global_input.namespace.get(global_input.name, MISSING)
            remembered = slot.remembered
            if remembered is not None and remembered[0] is value:
                digests[label] = remembered[1]
                continue
            try:
                digest = value_digest(value)
            except UnhashableValue as problem:
                opaque[label] = problem
                digests[label] = value_digest(("type", problem.type_name))
                continue
            digests[label] = digest
            slot.remembered = (value, digest) if _frozen(value) else None
        return digests, opaque

    def parts(self) -> dict[str, str]:
        """Fingerprints of the function and each user-defined helper it reaches, by name."""
        if self._parts is None:
            self._parts = function_fingerprint_parts(self.func)
        return self._parts


class FingerprintMemo:
    """The current :class:`CodeSnapshot` of one function, retaken only when it changed."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self._snapshot: CodeSnapshot | None = None

    def current(self) -> CodeSnapshot:
        snapshot = self._snapshot
        if snapshot is not None and snapshot.unchanged():
            return snapshot
        snapshot = CodeSnapshot.take(self.func)
        self._snapshot = snapshot
        return snapshot


class _Recorder(CodeReads):
    """Records every object the walk reads into a snapshot, for :meth:`CodeSnapshot.unchanged`."""

    def __init__(self, snapshot: CodeSnapshot) -> None:
        self.snapshot = snapshot

    def attribute(self, owner: object, name: str, value: object) -> None:
        self.snapshot._attributes.append((owner, name, value))

    def entry(self, mapping: Any, name: str, value: object) -> None:
        self.snapshot._entries.append((mapping, name, value))

    def cell(self, cell: types.CellType, value: object) -> None:
        self.snapshot._cells.append((cell, value))

    def size(self, mapping: Any) -> None:
        # A new or deleted class attribute changes the fingerprint: checked through its size.
        self.snapshot._attributes.append((_DictSize(mapping), "size", len(mapping)))


class _DictSize:
    """Reads the length of a mapping as an attribute, for the identity checks."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Any) -> None:
        self._mapping = mapping

    @property
    def size(self) -> int:
        return len(self._mapping)


def _label(namespace: dict[str, Any], name: str) -> str:
    module = namespace.get("__name__", "")
    return name if module == "__main__" else f"{module}.{name}"


def _frozen(value: object) -> bool:
    """Whether ``value`` cannot change without changing identity (so identity checks suffice).

    Exact types only: an instance of a subclass of ``str`` or ``tuple`` can carry attributes.
    """
    cls = type(value)
    if cls in _FROZEN_SCALARS:
        return True
    if cls is tuple or cls is frozenset:
        return all(_frozen(item) for item in value)  # type: ignore[attr-defined]
    return False


def _cell_contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:
        return MISSING
