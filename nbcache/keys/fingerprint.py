"""Code fingerprints: a digest of what a function does, not of where or how it was written.

A function's fingerprint covers

* its code objects: bytecode, constants (nested code objects too), names, argument layout and
  flags, but not line numbers, file names or its docstring, so comments, blank lines and
  formatting do not change it, and the same function defined in two kernels (different cell
  numbers, ``<ipython-input-..>`` or ``/tmp/ipykernel_../..py`` file names) fingerprints the
  same;
* its defaults, keyword defaults and closure cell values, by
  :func:`nbcache.keys.digest.value_digest`;
* the functions and classes it references by global name that are defined in the notebook or in
  the user's own modules (not the standard library, not site-packages), recursively with a cycle
  guard, so editing a helper changes the fingerprint of every caller;
* modules it references, by name and ``__version__``, and library functions or classes it
  references, by name and their package's version.

Global values that are not functions, classes or modules (a DataFrame, a threshold) are not
part of a fingerprint: they are inputs, which the decorator and the cell magic key on
separately. The Python version is part of it, because bytecode differs between versions.
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from nbcache.exceptions import UnhashableValue
from nbcache.keys.digest import TokenWriter, register_handler, use_class_fingerprint, value_digest
from nbcache.keys.provenance import (
    display_name,
    is_user_module,
    library_identity,
    module_version,
)

__all__ = [
    "class_fingerprint",
    "code_token",
    "function_fingerprint",
    "function_fingerprint_parts",
]

_FINGERPRINT_VERSION = "nbcache.keys.fingerprint/1"
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

# co_flags bits that say how the code runs (generator, varargs...). Higher bits record the
# __future__ imports in force when it was compiled, which IPython carries from cell to cell;
# their effect is already in the bytecode.
_RUNTIME_CODE_FLAGS = 0xFFFF

# Functions and classes being fingerprinted by this thread: met again, they are a cycle.
_in_progress = threading.local()


class _Unset:
    """Stands for an empty closure cell (a variable assigned after the inner function)."""

    def __nbcache_token__(self) -> str:
        return "empty cell"


_EMPTY_CELL = _Unset()


def function_fingerprint(func: Any) -> str:
    """The code fingerprint of ``func``: 32 hex characters (see the module docstring).

    Bound methods fingerprint their function (``self`` is a value, not code); classes
    fingerprint as :func:`class_fingerprint`; functions from libraries by name and package
    version. Other callables (partials, callable objects) digest by value. Raises
    :class:`~nbcache.exceptions.UnhashableValue` when a default or closure value has no
    digest.
    """
    if isinstance(func, types.MethodType):
        func = func.__func__
    if isinstance(func, type):
        return class_fingerprint(func)
    if not isinstance(func, types.FunctionType):
        return value_digest(func)
    if not is_user_module(func.__module__):
        return value_digest(("library function", *library_identity(func)))
    with _guard(func) as first_visit:
        if not first_visit:
            return value_digest(("recursive reference", func.__qualname__))
        return value_digest(_function_token(func))


def class_fingerprint(cls: type) -> str:
    """The fingerprint of a class: its bases, methods' fingerprints and class attributes.

    Classes from libraries fingerprint by name and package version. Class attributes that
    cannot be digested count by their type only.
    """
    if not is_user_module(getattr(cls, "__module__", "") or ""):
        return value_digest(("library class", *library_identity(cls)))
    with _guard(cls) as first_visit:
        if not first_visit:
            return value_digest(("recursive reference", cls.__qualname__))
        return value_digest(_class_token(cls))


def function_fingerprint_parts(func: Any) -> dict[str, str]:
    """Each user-defined function or class ``func`` reaches, by name, with its fingerprint.

    Names are the qualified name for notebook code and ``module.qualname`` otherwise; ``func``
    itself is included. Meant for explaining misses ("helper `clean` was edited").
    """
    parts: dict[str, str] = {}
    pending = [func.__func__ if isinstance(func, types.MethodType) else func]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        parts[display_name(current)] = function_fingerprint(current)
        if isinstance(current, types.FunctionType):
            pending.extend(_user_callees(current))
        elif isinstance(current, type):
            pending.extend(_class_callables(current))
    return parts


def code_token(code: types.CodeType, docstring: object = None) -> tuple[object, ...]:
    """What a code object does, as a digestible tuple, without positions or file names.

    ``docstring``: the function's ``__doc__``; when it is the first constant it is left out.
    Nested code objects stay code objects in the tuple and digest through this function.
    """
    consts = code.co_consts
    if docstring is not None and consts and consts[0] == docstring:
        consts = (None, *consts[1:])
    return (
        code.co_name,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & _RUNTIME_CODE_FLAGS,
        code.co_code,
        consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        getattr(code, "co_exceptiontable", b""),
    )


class _guard:
    """Marks an object as being fingerprinted by this thread; yields False if it already is."""

    def __init__(self, obj: object) -> None:
        self._key = id(obj)
        self._first = False

    def __enter__(self) -> bool:
        active: set[int] | None = getattr(_in_progress, "ids", None)
        if active is None:
            active = _in_progress.ids = set()
        self._first = self._key not in active
        active.add(self._key)
        return self._first

    def __exit__(self, *exc_info: object) -> None:
        if self._first:
            _in_progress.ids.discard(self._key)


def _function_token(func: types.FunctionType) -> tuple[object, ...]:
    closure = func.__closure__ or ()
    cells = []
    for name, cell in zip(func.__code__.co_freevars, closure, strict=True):
        try:
            contents = cell.cell_contents
        except ValueError:
            contents = _EMPTY_CELL
        cells.append((name, contents))
    return (
        _FINGERPRINT_VERSION,
        sys.implementation.cache_tag,
        code_token(func.__code__, func.__doc__),
        func.__defaults__,
        func.__kwdefaults__,
        tuple(cells),
        _global_references(func),
    )


def code_names(code: types.CodeType) -> Iterator[str]:
    """Every global or attribute name ``code`` and the code nested in it mention."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_names(const)


def _global_references(func: types.FunctionType) -> tuple[tuple[str, object], ...]:
    """The code-like globals ``func`` names, each as (name, token), sorted by name.

    ``co_names`` also holds attribute names; a global that merely shares a name with an
    attribute is included too, which can only cause an extra miss, never a wrong hit.
    """
    names = sorted(set(code_names(func.__code__)))
    namespace = func.__globals__
    references = []
    for name in names:
        if name not in namespace:
            continue
        token = _reference_token(namespace[name], names)
        if token is not None:
            references.append((name, token))
    return tuple(references)


def _reference_token(value: Any, names: list[str]) -> object:
    value = _unwrapped(value)
    if isinstance(value, types.ModuleType):
        module_name = value.__name__
        if not is_user_module(module_name):
            return ("module", module_name, module_version(value))
        # a user module: the functions and classes the code reaches through it count too
        members = [
            (name, _reference_token(getattr(value, name), []))
            for name in names
            if _is_code(getattr(value, name, None))
        ]
        return ("user module", module_name, tuple(members))
    if isinstance(value, (types.FunctionType, type)):
        return ("code", function_fingerprint(value))
    if isinstance(value, types.BuiltinFunctionType):
        return ("builtin", *library_identity(value))
    return None


def wrapper_chain(value: Any) -> list[tuple[Any, Any]]:
    """``(wrapper, wrapped)`` pairs down to the function under wrappers that are not functions
    (caches, nbcache's own), outermost first."""
    chain = []
    for _ in range(100):
        if isinstance(value, (types.FunctionType, type, types.ModuleType)):
            break
        inner = getattr(value, "__wrapped__", None)
        if inner is None or not callable(inner):
            break
        chain.append((value, inner))
        value = inner
    return chain


def _unwrapped(value: Any) -> Any:
    """The function under decorator wrappers that are not functions."""
    chain = wrapper_chain(value)
    return chain[-1][1] if chain else value


def _is_code(value: object) -> bool:
    return isinstance(_unwrapped(value), (types.FunctionType, type))


def _class_token(cls: type) -> tuple[object, ...]:
    bases = tuple(class_fingerprint(base) for base in cls.__bases__ if base is not object)
    attributes: list[tuple[str, object]] = []
    for name, value in sorted(vars(cls).items()):
        if name in _CLASS_BOOKKEEPING:
            continue
        functions = _attribute_functions(value)
        if functions is not None:
            attributes.append((name, tuple(function_fingerprint(f) for f in functions)))
        elif isinstance(value, type):
            attributes.append((name, class_fingerprint(value)))
        elif not (name.startswith("__") and name.endswith("__")):
            attributes.append((name, _attribute_digest(value)))
    return (_FINGERPRINT_VERSION, cls.__name__, bases, tuple(attributes))


def _attribute_functions(value: object) -> list[Any] | None:
    """The functions behind a method-like class attribute, or None if it is data."""
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, (staticmethod, classmethod)):
        return [value.__func__]
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if f is not None]
    inner = getattr(value, "func", None)  # functools.cached_property, partialmethod
    if isinstance(value, (functools.cached_property, functools.partialmethod)):
        return [inner]
    return None


def _attribute_digest(value: object) -> str:
    try:
        return value_digest(value)
    except UnhashableValue:
        # a class-level lock or connection: what it holds is state, not behaviour
        return value_digest(("unhashable", type(value).__module__, type(value).__qualname__))


def _user_callees(func: types.FunctionType) -> Iterator[Any]:
    namespace = func.__globals__
    for name in set(code_names(func.__code__)):
        value = _unwrapped(namespace.get(name))
        if isinstance(value, types.ModuleType) and is_user_module(value.__name__):
            candidates = [_unwrapped(getattr(value, n, None)) for n in code_names(func.__code__)]
        else:
            candidates = [value]
        for candidate in candidates:
            if _is_code(candidate) and is_user_module(candidate.__module__):
                yield candidate
    for cell in func.__closure__ or ():
        try:
            contents = _unwrapped(cell.cell_contents)
        except ValueError:
            continue
        if _is_code(contents) and is_user_module(contents.__module__):
            yield contents


def _class_callables(cls: type) -> Iterator[Any]:
    for value in vars(cls).values():
        for function in _attribute_functions(value) or ():
            if isinstance(function, types.FunctionType):
                yield from _user_callees(function)


# --- digests of code objects ----------------------------------------------------------


def _function(writer: TokenWriter, value: types.FunctionType) -> None:
    writer.raw(b"U")
    writer.text(value.__module__ or "")
    writer.text(value.__qualname__)
    writer.raw(bytes.fromhex(function_fingerprint(value)))


def _code(writer: TokenWriter, value: types.CodeType) -> None:
    writer.raw(b"k")
    writer.value(code_token(value))


register_handler(types.FunctionType, _function, builtin=True)
register_handler(types.CodeType, _code, builtin=True)
use_class_fingerprint(class_fingerprint)
