"""Code fingerprints: a digest of what a function does, not of where or how it was written.

A function's fingerprint covers

* its code objects: what their instructions do (:mod:`nbcache.keys.bytecode`: the control
  flow in a canonical form, constants by value, nested code objects too), names, argument
  layout and flags, but not line numbers, the compiler's block layout, file names or the
  docstring, so comments, blank lines and formatting do not change it on any Python version
  (3.12+ lays out the same code differently when only its lines differ), and the same
  function defined in two kernels (different cell numbers, ``<ipython-input-..>`` or
  ``/tmp/ipykernel_../..py`` file names) fingerprints the same;
* its defaults, keyword defaults and closure cell values, by
  :func:`nbcache.keys.digest.value_digest`;
* the functions and classes it reaches that are defined in the notebook or in the user's own
  modules (not the standard library, not site-packages), recursively with a cycle guard, so
  editing a helper changes the fingerprint of every caller. What counts as reached (by global
  name, through a user module, a closure, a default, a method, a property, a partial, a
  wrapper...) is decided by :mod:`nbcache.keys.code_walk`, the walk snapshots re-check too;
* modules it references, by name and ``__version__``, and library functions or classes it
  references, by name and their package's version.

Global values that are not functions, classes or modules (a DataFrame, a threshold) are not
part of a fingerprint: they are inputs, which the decorator and the cell magic key on
separately. The Python version is part of it, because bytecode differs between versions.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import Any

from nbcache.exceptions import UnhashableValue
from nbcache.keys.bytecode import control_flow
from nbcache.keys.code_walk import MISSING, Kind, Link, is_user_code, node_links, see_through, walk
from nbcache.keys.digest import TokenWriter, register_handler, use_class_fingerprint, value_digest
from nbcache.keys.provenance import display_name, library_identity

__all__ = [
    "class_fingerprint",
    "code_token",
    "function_fingerprint",
    "function_fingerprint_parts",
]

_FINGERPRINT_VERSION = "nbcache.keys.fingerprint/3"

# co_flags bits that say how the code runs (generator, varargs...). Higher bits record the
# __future__ imports in force when it was compiled, which IPython carries from cell to cell;
# their effect is already in the bytecode.
_RUNTIME_CODE_FLAGS = 0xFFFF

# code_token per code object. Equal code objects (equal in every field, line table included)
# have equal tokens; the entries go with their code objects.
_code_tokens: weakref.WeakKeyDictionary[types.CodeType, tuple[object, ...]] = (
    weakref.WeakKeyDictionary()
)

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
    version (and what they wrap, for a library's wrapper around the user's function). Other
    callables (partials, callable objects) digest by value. Raises
    :class:`~nbcache.exceptions.UnhashableValue` when a default or closure value has no
    digest.
    """
    if isinstance(func, types.MethodType):
        func = func.__func__
    if isinstance(func, type):
        return class_fingerprint(func)
    if not isinstance(func, types.FunctionType):
        return value_digest(func)
    if not is_user_code(func):
        links = tuple(_link_token(link) for link in see_through("function", func, Kind.HELD))
        return value_digest(("library function", links))
    with _guard(func) as first_visit:
        if not first_visit:
            return value_digest(("recursive reference", func.__qualname__))
        return value_digest(_node_token(func))


def class_fingerprint(cls: type) -> str:
    """The fingerprint of a class: its bases, methods' fingerprints and class attributes.

    Classes from libraries fingerprint by name and package version. Class attributes that
    cannot be digested count by their type only.
    """
    if not is_user_code(cls):
        return value_digest(("library class", *library_identity(cls)))
    with _guard(cls) as first_visit:
        if not first_visit:
            return value_digest(("recursive reference", cls.__qualname__))
        return value_digest(_node_token(cls))


def function_fingerprint_parts(func: Any) -> dict[str, str]:
    """Each user-defined function or class ``func`` reaches, by name, with its fingerprint.

    Names are the qualified name for notebook code and ``module.qualname`` otherwise; ``func``
    itself is included. Meant for explaining misses ("helper `clean` was edited").
    """
    root = func.__func__ if isinstance(func, types.MethodType) else func
    parts = {display_name(root): function_fingerprint(root)}
    for node, _ in walk(root):
        parts[display_name(node)] = function_fingerprint(node)
    return parts


def code_token(code: types.CodeType) -> tuple[object, ...]:
    """What a code object does, as a digestible tuple, on every Python version.

    Its control flow in canonical form (:mod:`nbcache.keys.bytecode`: no line numbers,
    positions, file names, block layout or docstring), with constants by digest, nested code
    objects through this function, and the names, argument layout and flags the
    instructions refer to. Remembered per code object: code objects never change.
    """
    token = _code_tokens.get(code)
    if token is None:
        token = (
            code.co_name,
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags & _RUNTIME_CODE_FLAGS,
            code.co_names,
            code.co_varnames,
            code.co_freevars,
            code.co_cellvars,
            control_flow(code, value_digest),
        )
        _code_tokens[code] = token
    return token


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


def _node_token(node: Any) -> tuple[object, ...]:
    """What a user function or class does: its own code and what it links to."""
    links = tuple(
        _link_token(link)
        for link in node_links(node)
        if link.kind is not Kind.INPUT and link.kind is not Kind.STATE
    )
    if isinstance(node, type):
        return (_FINGERPRINT_VERSION, "class", node.__name__, links)
    return (
        _FINGERPRINT_VERSION,
        sys.implementation.cache_tag,
        code_token(node.__code__),
        links,
    )


def _link_token(link: Link) -> tuple[object, ...]:
    if link.kind is Kind.CODE:
        target = link.target
        fingerprint = (
            class_fingerprint(target) if isinstance(target, type) else function_fingerprint(target)
        )
        return (link.label, "code", fingerprint)
    if link.kind is Kind.CLASS_DATA:
        return (link.label, "class data", _attribute_digest(link.target))
    target = _EMPTY_CELL if link.target is MISSING else link.target
    return (link.label, link.kind.value, target)


def _attribute_digest(value: object) -> str:
    try:
        return value_digest(value)
    except UnhashableValue:
        # a class-level lock or connection: what it holds is state, not behaviour
        return value_digest(("unhashable", type(value).__module__, type(value).__qualname__))


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
