"""Functions and classes restored from the cache read their globals from the notebook again.

cloudpickle rebuilds a function defined in a notebook with a private copy of the globals it
referenced when it was stored. Restored as is, ``def scaled(x): return x * factor`` would
keep using the old ``factor`` after the user changes it. Rebinding gives the restored function
(and the methods of a restored class) the notebook's namespace as globals, so it behaves
exactly like one defined by running the cell.
"""

from __future__ import annotations

import types
from typing import Any


def rebind_globals(value: Any, namespace: dict[str, Any]) -> Any:
    """``value``, with notebook functions (and methods of notebook classes) using ``namespace``.

    Only functions whose module is the namespace's own (``__main__``) and whose globals are a
    detached copy are touched; anything else is returned unchanged. Classes are updated in
    place; a function is replaced by an equivalent one.
    """
    if isinstance(value, types.FunctionType):
        return _rebound(value, namespace)
    if isinstance(value, type) and value.__module__ == namespace.get("__name__"):
        for name, attribute in list(vars(value).items()):
            replacement = _rebound_attribute(attribute, namespace)
            if replacement is not attribute:
                setattr(value, name, replacement)
    return value


def _rebound_attribute(attribute: Any, namespace: dict[str, Any]) -> Any:
    if isinstance(attribute, types.FunctionType):
        return _rebound(attribute, namespace)
    if isinstance(attribute, staticmethod | classmethod):
        inner = attribute.__func__
        rebound = _rebound(inner, namespace) if isinstance(inner, types.FunctionType) else inner
        return attribute if rebound is inner else type(attribute)(rebound)
    if isinstance(attribute, property):
        parts: list[Any] = [attribute.fget, attribute.fset, attribute.fdel]
        rebound_parts: list[Any] = [
            _rebound(part, namespace) if isinstance(part, types.FunctionType) else part
            for part in parts
        ]
        if all(new is old for new, old in zip(rebound_parts, parts, strict=True)):
            return attribute
        fget, fset, fdel = rebound_parts
        return property(fget, fset, fdel, attribute.__doc__)
    return attribute


def _rebound(func: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    if func.__globals__ is namespace or func.__module__ != namespace.get("__name__"):
        return func
    rebound = types.FunctionType(
        func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
    )
    rebound.__kwdefaults__ = func.__kwdefaults__
    rebound.__qualname__ = func.__qualname__
    rebound.__annotations__ = func.__annotations__
    rebound.__doc__ = func.__doc__
    rebound.__module__ = func.__module__
    rebound.__dict__.update(func.__dict__)
    return rebound
