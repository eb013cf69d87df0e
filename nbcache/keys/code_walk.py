"""The one walk over the user code a function reaches, shared by fingerprints and snapshots.

A code fingerprint (:mod:`nbcache.keys.fingerprint`) digests what this walk finds; a snapshot
(:mod:`nbcache.keys.snapshot`) records the identity of every object the walk read, and the
global data it met, so that both always see the same code. Each node of the walk is a user
function or a user class; :func:`node_links` lists what one node links to:

* **code**: a user function or class, walked in turn;
* **library**: a module, function, class or builtin from a library, named, never walked;
* **held**: a value the code itself holds (defaults, closure cells, the arguments of a
  ``partialmethod``): part of the fingerprint;
* **class data**: a class attribute that is data (part of the fingerprint, by type if it has
  no digest);
* **input**: a global the code reads that holds data (``THRESHOLD``, a DataFrame): not part of
  the fingerprint, keyed on its value by the front doors;
* **state**: a global the code assigns (``global calls; calls += 1``): neither.

Wrappers are seen through alike wherever they appear (a global, a closure cell, a class
attribute): bound methods, ``staticmethod``, ``classmethod``, ``property``,
``functools.cached_property``, ``functools.partialmethod``, ``functools.partial``, and
``__wrapped__`` chains (``functools.wraps``, ``lru_cache``, nbcache's own decorator). A
wrapper that carries data (a partial's arguments, a bound method's instance) is also an input.
"""

from __future__ import annotations

import dis
import enum
import functools
import types
from collections.abc import Iterator
from typing import Any, NamedTuple

from nbcache.keys.provenance import is_user_module, library_identity, module_version

__all__ = [
    "MISSING",
    "CodeReads",
    "Kind",
    "Link",
    "assigned_globals",
    "code_names",
    "is_user_code",
    "node_links",
    "walk",
]

#: What a global name, an attribute or a closure cell holds when it holds nothing.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()

# Class attributes that describe the class rather than what it does.
_CLASS_BOOKKEEPING = frozenset(
    {
        "__dict__",
        "__doc__",
        "__module__",
        "__qualname__",
        "__weakref__",
        "__annotations__",
        "__firstlineno__",
        "__static_attributes__",
        "__orig_bases__",
        "__parameters__",
        "__dataclass_fields__",
        "__dataclass_params__",
        "__match_args__",
        "_abc_impl",
    }
)
_WRAPPER_DEPTH = 100
_STORE_OPCODES = frozenset({"STORE_GLOBAL", "DELETE_GLOBAL"})
_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)


class Kind(enum.Enum):
    """What a link leads to (see the module docstring)."""

    CODE = "code"
    LIBRARY = "library"
    HELD = "held"
    CLASS_DATA = "class data"
    INPUT = "input"
    STATE = "state"


class Link(NamedTuple):
    """One thing a node links to: ``label`` says where (``"global THRESHOLD"``)."""

    label: str
    kind: Kind
    target: Any
    namespace: dict[str, Any] | None = None  # for inputs and state: where the global lives
    name: str = ""


class CodeReads:
    """Told every object a walk reads, with where it read it; does nothing by default."""

    def attribute(self, owner: object, name: str, value: object) -> None:
        """``getattr(owner, name)`` was ``value``."""

    def entry(self, mapping: Any, name: str, value: object) -> None:
        """``mapping.get(name, MISSING)`` was ``value``."""

    def cell(self, cell: types.CellType, value: object) -> None:
        """The closure cell held ``value`` (MISSING when empty)."""

    def size(self, mapping: Any) -> None:
        """A class's attributes were read: adding or deleting one matters too."""


_NO_READS = CodeReads()


def is_user_code(value: object) -> bool:
    """Whether ``value`` is a function or class whose code is the user's own.

    A function counts where its code lives (its globals' module), not by its ``__module__``,
    which ``functools.wraps`` copies onto a library's wrapper from the function it wraps.
    """
    if isinstance(value, types.FunctionType):
        return is_user_module(value.__globals__.get("__name__"))
    if isinstance(value, type):
        return is_user_module(getattr(value, "__module__", None))
    return False


def code_names(code: types.CodeType) -> Iterator[str]:
    """Every global or attribute name ``code`` and the code nested in it mention."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_names(const)


@functools.lru_cache(maxsize=4096)
def assigned_globals(code: types.CodeType) -> frozenset[str]:
    """Global names ``code`` (or code nested in it) assigns or deletes: ``global x; x = 1``."""
    names = {
        instruction.argval
        for instruction in dis.get_instructions(code)
        if instruction.opname in _STORE_OPCODES
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= assigned_globals(const)
    return frozenset(names)


def walk(root: Any, reads: CodeReads = _NO_READS) -> list[tuple[Any, list[Link]]]:
    """Every user function and class reachable from ``root`` with its links, once each.

    The order is fixed (depth first, links in their order); ``reads`` is told every object
    read on the way.
    """
    reached: list[tuple[Any, list[Link]]] = []
    seen: set[int] = set()
    pending = [link.target for link in see_through("root", root, Kind.HELD, reads)]
    pending.reverse()
    while pending:
        node = pending.pop()
        if id(node) in seen or not is_user_code(node):
            continue
        seen.add(id(node))
        links = node_links(node, reads)
        reached.append((node, links))
        pending.extend(reversed([link.target for link in links if link.kind is Kind.CODE]))
    return reached


def node_links(node: Any, reads: CodeReads = _NO_READS) -> list[Link]:
    """What one user function or class links to, in a fixed order (see the module docstring)."""
    if isinstance(node, type):
        return list(_class_links(node, reads))
    return list(_function_links(node, reads))


def _function_links(func: types.FunctionType, reads: CodeReads) -> Iterator[Link]:
    for attribute in ("__code__", "__defaults__", "__kwdefaults__"):
        reads.attribute(func, attribute, getattr(func, attribute))
    for position, default in enumerate(func.__defaults__ or ()):
        yield from see_through(f"default {position}", default, Kind.HELD, reads)
    for name, default in sorted((func.__kwdefaults__ or {}).items()):
        yield from see_through(f"keyword default {name}", default, Kind.HELD, reads)
    closure = func.__closure__ or ()
    for name, cell in zip(func.__code__.co_freevars, closure, strict=True):
        try:
            contents = cell.cell_contents
        except ValueError:
            contents = MISSING
        reads.cell(cell, contents)
        yield from see_through(f"cell {name}", contents, Kind.HELD, reads)
    namespace = func.__globals__
    names = sorted(set(code_names(func.__code__)))
    assigned = assigned_globals(func.__code__)
    for name in names:
        value = namespace.get(name, MISSING)
        reads.entry(namespace, name, value)
        if value is MISSING:
            continue
        if name in assigned and not _is_code_like(value):
            yield Link(f"global {name}", Kind.STATE, value, namespace, name)
            continue
        yield from _global_links(namespace, name, value, names, reads)


def _global_links(
    namespace: dict[str, Any], name: str, value: Any, names: list[str], reads: CodeReads
) -> Iterator[Link]:
    label = f"global {name}"
    if isinstance(value, types.ModuleType):
        if not is_user_module(value.__name__):
            yield Link(label, Kind.LIBRARY, ("module", value.__name__, module_version(value)))
            return
        # a user module: what the code reaches through it counts, code and data alike
        members = vars(value)
        yield Link(label, Kind.LIBRARY, ("user module", value.__name__))
        for member_name in names:
            member = members.get(member_name, MISSING)
            reads.entry(members, member_name, member)
            if member is not MISSING and not isinstance(member, types.ModuleType):
                yield from _global_links(members, member_name, member, [], reads)
        return
    yield from see_through(label, value, Kind.INPUT, reads, namespace, name)


def see_through(
    label: str,
    value: Any,
    data_kind: Kind,
    reads: CodeReads = _NO_READS,
    namespace: dict[str, Any] | None = None,
    name: str = "",
) -> Iterator[Link]:
    """The links of a value met in code: the code behind it, and itself if it is data.

    ``data_kind`` is what the value is when it is data (an input for a global, held for a
    default or a closure cell, class data for a class attribute).
    """
    original = value
    carries_data = False
    for _ in range(_WRAPPER_DEPTH):
        if isinstance(value, (types.FunctionType, type)):
            if is_user_code(value):
                yield Link(label, Kind.CODE, value)
                break
            yield Link(label, Kind.LIBRARY, ("library", *library_identity(value)))
            inner = getattr(value, "__wrapped__", None)
            if not isinstance(value, types.FunctionType) or inner is None or not callable(inner):
                break
            # a library's wrapper around the user's function (functools.wraps)
            reads.attribute(value, "__wrapped__", inner)
            value = inner
        elif isinstance(value, types.ModuleType):
            yield Link(label, Kind.LIBRARY, ("module", value.__name__, module_version(value)))
            break
        elif isinstance(value, _BUILTIN_CALLABLES):
            owner = getattr(value, "__self__", None)
            if owner is None or isinstance(owner, (types.ModuleType, type)):
                yield Link(label, Kind.LIBRARY, ("builtin", *library_identity(value)))
            else:
                carries_data = True  # [].append: the list is data
            break
        elif isinstance(value, types.MethodType):
            carries_data = True  # the instance is data
            value = value.__func__
        elif isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, property):
            for accessor in (value.fget, value.fset, value.fdel):
                if accessor is not None:
                    yield from see_through(label, accessor, data_kind, reads)
            break
        elif isinstance(value, functools.cached_property):
            value = value.func
        elif isinstance(value, functools.partial):
            carries_data = True  # its arguments are data
            value = value.func
        elif isinstance(value, functools.partialmethod):
            if value.args:
                yield Link(f"{label} arguments", data_kind, value.args, namespace, name)
            if value.keywords:
                yield Link(f"{label} keywords", data_kind, value.keywords, namespace, name)
            value = value.func
        else:
            if is_user_code(type(value)):
                # an instance of a user class: its methods are code the caller reaches
                yield Link(f"{label} class", Kind.CODE, type(value))
                carries_data = True
            inner = getattr(value, "__wrapped__", None)
            if inner is None or not callable(inner):
                carries_data = True
                break
            # a wrapper object (a cache, a decorator's callable): what it wraps is code
            reads.attribute(value, "__wrapped__", inner)
            value = inner
    if carries_data:
        yield Link(label, data_kind, original, namespace, name)


def _is_code_like(value: object) -> bool:
    return isinstance(value, (types.FunctionType, type, types.ModuleType))


def _class_links(cls: type, reads: CodeReads) -> Iterator[Link]:
    reads.attribute(cls, "__bases__", cls.__bases__)
    for position, base in enumerate(cls.__bases__):
        if base is not object:
            yield from see_through(f"base {position}", base, Kind.CLASS_DATA, reads)
    attributes = vars(cls)
    reads.size(attributes)
    for name in sorted(attributes):
        value = attributes[name]
        reads.entry(attributes, name, value)
        if name in _CLASS_BOOKKEEPING:
            continue
        links = list(see_through(f"attribute {name}", value, Kind.CLASS_DATA, reads))
        if name.startswith("__") and name.endswith("__"):
            # dunder data (__slots__, __hash__ = None) says how the class is built, not what
            # it computes; dunder methods are code like any other
            links = [link for link in links if link.kind is not Kind.CLASS_DATA]
        yield from links
