"""Classes and functions pickled by value come back as the loading process's own when unchanged.

cloudpickle pickles a class or function defined in a notebook by value (its code and
attributes) and, in another process, rebuilds a copy: instances of a restored ``Point`` are
not instances of that kernel's ``Point``, and a restored pipeline's function ``is not`` the
notebook's. :func:`with_identity` wraps cloudpickle's by-value reduction of such an object so
that the pickle also records its module, qualified name and code fingerprint. At load time
(inside :func:`load_with`), the object the loading process has under that module and name
is used instead of a copy when its fingerprint is the same; cloudpickle's rebuilt copy is used
only when there is no such object or it differs. A pickle loaded without a fingerprint, or by
plain ``pickle.loads``, rebuilds the copy as cloudpickle would.

The fingerprint function comes from the caller (a front door passes
:func:`nbcache.keys.fingerprint.function_fingerprint`): this layer knows nothing of code.
"""

from __future__ import annotations

import re
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar

#: A function of a class or function: equal for the same code in every process; raises when
#: it has none.
CodeFingerprint = Callable[[Any], str]

_T = TypeVar("_T")
_LOADER_NAME = re.compile(rb"reuse_or_make")
_state = threading.local()


def pickled_by_value(obj: Any, reduction: Any) -> bool:
    """Whether cloudpickle's ``reduction`` of ``obj`` pickles a class or function by value.

    By value, cloudpickle gives a full reduction with a state setter (six items); by reference
    it gives ``NotImplemented`` (pickle saves the name) or a short one (builtin types).
    """
    if not isinstance(obj, type | types.FunctionType):
        return False
    return isinstance(reduction, tuple) and len(reduction) == 6


def with_identity(obj: Any, reduction: Any, code_fingerprint: CodeFingerprint) -> Any:
    """``reduction``, made to reuse the loading process's own ``obj`` when it is the same code.

    Anything not pickled by value, or without a name to look up or a fingerprint, is returned
    unchanged.
    """
    if not pickled_by_value(obj, reduction):
        return reduction
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return reduction  # a lambda or a local class: nothing to look up by name
    try:
        fingerprint = code_fingerprint(obj)
    except Exception:  # no fingerprint (a closure over a lock...): the copy it is
        return reduction
    make, arguments, state, list_items, dict_items, set_state = reduction
    return (
        reuse_or_make,
        (module, qualname, fingerprint, make, arguments),
        (set_state, state),
        list_items,
        dict_items,
        set_state_unless_reused,
    )


def records_identity(head: bytes | memoryview) -> bool:
    """Whether a pickle may hold code recorded by :func:`with_identity` (it names the loader).

    A scan of the pickle stream for the loader's name, without copying it: cheaper than
    preparing a load that reuses objects, for the many pickles that hold no such code.
    """
    return _LOADER_NAME.search(head) is not None


def load_with(code_fingerprint: CodeFingerprint, load: Callable[[], _T]) -> _T:
    """``load()``, during which pickles recorded by :func:`with_identity` reuse matching objects."""
    previous = getattr(_state, "fingerprint", None), getattr(_state, "reused", None)
    _state.fingerprint, _state.reused = code_fingerprint, set()
    try:
        return load()
    finally:
        _state.fingerprint, _state.reused = previous


def reuse_or_make(
    module: str,
    qualname: str,
    fingerprint: str,
    make: Callable[..., Any],
    arguments: tuple[Any, ...],
) -> Any:
    """At load time: this process's ``module.qualname`` if its fingerprint is ``fingerprint``,
    else cloudpickle's copy, built by ``make(*arguments)``."""
    code_fingerprint: CodeFingerprint | None = getattr(_state, "fingerprint", None)
    if code_fingerprint is not None:
        own = _lookup(module, qualname)
        if own is not None and _fingerprint_or_none(code_fingerprint, own) == fingerprint:
            _state.reused.add(id(own))
            return own
    return make(*arguments)


def set_state_unless_reused(obj: Any, wrapped: tuple[Callable[[Any, Any], Any], Any]) -> Any:
    """At load time: fill a rebuilt copy with its pickled state; leave a reused object alone."""
    set_state, state = wrapped
    reused: set[int] | None = getattr(_state, "reused", None)
    if reused is not None and id(obj) in reused:
        return obj
    return set_state(obj, state)


def _lookup(module: str, qualname: str) -> Any:
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if found is None:
            return None
        found = getattr(found, part, None)
    return found if isinstance(found, type | types.FunctionType) else None


def _fingerprint_or_none(code_fingerprint: CodeFingerprint, obj: Any) -> str | None:
    try:
        return code_fingerprint(obj)
    except Exception:  # no fingerprint here: never the same code
        return None
