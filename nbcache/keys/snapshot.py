"""What a function's code fingerprint depends on, re-checked in microseconds per call.

:func:`nbcache.keys.fingerprint.function_fingerprint` walks a function, its helpers and their
constants, which takes a hundred microseconds or more: too slow for every call of a cached
function. A :class:`CodeSnapshot` records the objects that walk reads (each reachable user
function's code, defaults and closure cells, and every global name its code mentions) and
checks on the next call that each one is still the *same object*. Rebinding a helper in a
notebook cell, reloading a module or editing a class shows up as a changed identity, and the
fingerprint is recomputed.

Identity says nothing about a mutable object changed in place, so a snapshot whose defaults,
closure cells or class attributes hold anything but immutable scalars is *volatile*: its
fingerprint is recomputed on every call.

The walk also collects the function's *global inputs*: global names its code (or a helper's
code) reads that hold data rather than code (``THRESHOLD``, a DataFrame). The fingerprint
leaves those out by design; the decorator digests their values into the key on every call.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

from nbcache.exceptions import UnhashableValue
from nbcache.keys.digest import value_digest
from nbcache.keys.fingerprint import (
    code_names,
    function_fingerprint,
    function_fingerprint_parts,
    wrapper_chain,
)
from nbcache.keys.provenance import is_user_module

_MISSING = object()
_FROZEN_SCALARS = (type(None), bool, int, float, complex, str, bytes, range)
_CODE_TYPES = (
    types.ModuleType,
    types.FunctionType,
    type,
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
)


@dataclass(frozen=True)
class GlobalInput:
    """A global name holding data that some reachable function reads."""

    label: str  # "THRESHOLD", or "module.THRESHOLD" outside the notebook
    namespace: dict[str, Any]
    name: str


@dataclass
class CodeSnapshot:
    """The fingerprint of one function and the identities it was computed from."""

    func: Any
    fingerprint: str = ""
    global_inputs: tuple[GlobalInput, ...] = ()
    volatile: bool = False
    _attributes: list[tuple[object, str, object]] = field(default_factory=list)
    _entries: list[tuple[Any, str, object]] = field(default_factory=list)
    _cells: list[tuple[types.CellType, object]] = field(default_factory=list)
    _parts: dict[str, str] | None = None

    @classmethod
    def take(cls, func: Any) -> CodeSnapshot:
        """Walk ``func`` and compute its fingerprint (may raise UnhashableValue)."""
        snapshot = cls(func)
        walk = _Walk(snapshot)
        walk.function(func)
        snapshot.global_inputs = tuple(walk.inputs.values())
        # Identities are recorded before the fingerprint is computed: a change in between
        # fails the next check instead of hiding behind a fingerprint of the newer code.
        snapshot.fingerprint = function_fingerprint(func)
        return snapshot

    def unchanged(self) -> bool:
        """True if every recorded object is still the same object (and nothing is volatile)."""
        if self.volatile:
            return False
        for owner, attribute, expected in self._attributes:
            if getattr(owner, attribute, _MISSING) is not expected:
                return False
        for mapping, name, expected in self._entries:
            if mapping.get(name, _MISSING) is not expected:
                return False
        return all(_cell_contents(cell) is expected for cell, expected in self._cells)

    def global_digests(self) -> tuple[dict[str, str], dict[str, UnhashableValue]]:
        """Digests of the global data values the code reads now, by label.

        A value without a digest (a connection, a lock) is keyed by its type only; those are
        returned second, so the caller can say so.
        """
        digests: dict[str, str] = {}
        opaque: dict[str, UnhashableValue] = {}
        for global_input in self.global_inputs:
            value = global_input.namespace.get(global_input.name, _MISSING)
            try:
                digests[global_input.label] = value_digest(value)
            except UnhashableValue as problem:
                opaque[global_input.label] = problem
                digests[global_input.label] = value_digest(("type", problem.type_name))
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


class _Walk:
    """One traversal of the user code reachable from a function."""

    def __init__(self, snapshot: CodeSnapshot) -> None:
        self.snapshot = snapshot
        self.seen: set[int] = set()
        self.inputs: dict[tuple[int, str], GlobalInput] = {}

    def function(self, func: Any) -> None:
        func = self._unwrapped(func)
        if isinstance(func, types.MethodType):
            func = func.__func__
        if isinstance(func, type):
            self.klass(func)
            return
        if not isinstance(func, types.FunctionType) or id(func) in self.seen:
            return
        if not is_user_module(func.__globals__.get("__name__")):
            # a library decorator's wrapper (its __module__ copied from the user's function):
            # its own code is the library's; what it wraps is the user's
            inner = getattr(func, "__wrapped__", None)
            if inner is not None:
                self.snapshot._attributes.append((func, "__wrapped__", inner))
                self.function(inner)
            return
        self.seen.add(id(func))
        snapshot = self.snapshot
        for attribute in ("__code__", "__defaults__", "__kwdefaults__"):
            value = getattr(func, attribute)
            snapshot._attributes.append((func, attribute, value))
        keyword_defaults = tuple((func.__kwdefaults__ or {}).values())
        if not _frozen(func.__defaults__) or not _frozen(keyword_defaults):
            snapshot.volatile = True
        for cell in func.__closure__ or ():
            contents = _cell_contents(cell)
            snapshot._cells.append((cell, contents))
            if _is_user_code(contents):
                self.function(contents)
            elif not _frozen(contents):
                snapshot.volatile = True
        names = sorted(set(code_names(func.__code__)))
        namespace = func.__globals__
        for name in names:
            value = namespace.get(name, _MISSING)
            snapshot._entries.append((namespace, name, value))
            if value is not _MISSING:
                self.reference(value, names, namespace, name)

    def reference(self, value: Any, names: list[str], namespace: dict[str, Any], name: str) -> None:
        target = self._unwrapped(value)
        if isinstance(target, types.ModuleType):
            if is_user_module(target.__name__):
                members = vars(target)
                for member_name in names:
                    member = members.get(member_name, _MISSING)
                    self.snapshot._entries.append((members, member_name, member))
                    if _is_user_code(member):
                        self.function(member)
            return
        if isinstance(target, (types.FunctionType, type)):
            if is_user_module(getattr(target, "__module__", None)):
                self.function(target)
            return
        if isinstance(target, _CODE_TYPES):
            return
        module = namespace.get("__name__", "")
        label = name if module == "__main__" else f"{module}.{name}"
        self.inputs.setdefault((id(namespace), name), GlobalInput(label, namespace, name))

    def klass(self, cls: type) -> None:
        if id(cls) in self.seen or not is_user_module(getattr(cls, "__module__", None)):
            return
        self.seen.add(id(cls))
        attributes = vars(cls)
        # A new or deleted attribute changes the key tuple: checked through __dict__ size.
        self.snapshot._attributes.append((cls, "__bases__", cls.__bases__))
        for name, value in attributes.items():
            self.snapshot._entries.append((attributes, name, value))
            functions = _method_functions(value)
            if functions:
                for function in functions:
                    self.function(function)
            elif isinstance(value, type):
                self.klass(value)
            elif (
                not _frozen(value)
                and not isinstance(value, _CODE_TYPES)
                and not (name.startswith("__") and name.endswith("__"))
            ):
                self.snapshot.volatile = True
        self.snapshot._attributes.append((_DictSize(attributes), "size", len(attributes)))
        for base in cls.__bases__:
            self.klass(base)

    def _unwrapped(self, value: Any) -> Any:
        """What a wrapper that is not a function (a callable object with __wrapped__) wraps."""
        chain = wrapper_chain(value)
        for wrapper, inner in chain:
            self.snapshot._attributes.append((wrapper, "__wrapped__", inner))
        return chain[-1][1] if chain else value


class _DictSize:
    """Reads the length of a mapping as an attribute, for the identity checks."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Any) -> None:
        self._mapping = mapping

    @property
    def size(self) -> int:
        return len(self._mapping)

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - only "size" is read
        raise AttributeError(name)


def _frozen(value: object) -> bool:
    """Whether ``value`` cannot change without changing identity (so identity checks suffice)."""
    if isinstance(value, _FROZEN_SCALARS):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_frozen(item) for item in value)
    return False


def _is_user_code(value: object) -> bool:
    return isinstance(value, (types.FunctionType, type)) and is_user_module(
        getattr(value, "__module__", None)
    )


def _method_functions(value: object) -> list[Any]:
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, (staticmethod, classmethod)):
        return [value.__func__]
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if f is not None]
    return []


def _cell_contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING
