"""A function's code and defaults are re-checked on every call without raising audit events.

Reading ``__code__``, ``__defaults__`` or ``__kwdefaults__`` raises an audit event, which
calls every installed audit hook; a small hit re-checks them for every function it reaches.
The field views read them from the function object instead: these tests hold the views to
exactly what the attribute reads would see.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import Counter
from typing import Any

from nbcache import SimpleCache
from nbcache.functions.decorator import cached_result
from nbcache.keys.function_fields import expected_words, fields_view
from nbcache.keys.snapshot import CodeSnapshot

_events: Counter[str] = Counter()
_counting = [False]


def _count(event: str, args: tuple[Any, ...]) -> None:
    if _counting[0] and event == "object.__getattr__":
        _events[args[1]] += 1


sys.addaudithook(_count)  # a hook cannot be removed; it counts only while asked to


def fields(func: types.FunctionType) -> tuple[object, ...]:
    return (func.__code__, func.__defaults__, func.__kwdefaults__)


def test_a_view_sees_each_field_replaced_in_place() -> None:
    def func(a: int = 1, *, b: int = 2) -> int:
        return a + b

    def other(c: int = 5) -> int:
        return c

    view = fields_view(func)
    assert view is not None, "CPython on this machine: the layout must be found"
    before = view()
    assert expected_words(view, fields(func)) and view() == before
    for name, value in [
        ("__code__", other.__code__),
        ("__defaults__", (7,)),
        ("__defaults__", None),
        ("__kwdefaults__", {"b": 3}),
        ("__kwdefaults__", None),
    ]:
        seen = view()
        setattr(func, name, value)
        assert view() != seen, f"replacing {name} must change what the view reads"
        assert expected_words(view, fields(func))


def test_only_plain_python_functions_have_views() -> None:
    assert fields_view(len) is None  # type: ignore[arg-type]
    assert fields_view(SimpleCache.get) is not None


def test_a_small_hit_raises_no_attribute_audit_events() -> None:
    def helper(x: int) -> int:
        return x * 2

    namespace: dict[str, Any] = {"helper": helper}
    exec("def work(x, scale=3):\n    return helper(x) * scale\n", namespace)
    work = cached_result(cache=SimpleCache())(namespace["work"])
    assert work(2) == 12 and work(2) == 12
    _events.clear()
    _counting[0] = True
    try:
        assert work(2) == 12
    finally:
        _counting[0] = False
    assert not _events, dict(_events)


def test_a_helper_whose_code_is_replaced_in_place_changes_the_snapshot() -> None:
    """What ``%autoreload`` does to a function of an edited module."""

    def helper(x: int) -> int:
        return x * 2

    def edited(x: int) -> int:
        return x * 3

    namespace: dict[str, Any] = {"helper": helper}
    exec("def work(x):\n    return helper(x)\n", namespace)
    snapshot = CodeSnapshot.take(namespace["work"])
    assert snapshot.unchanged()
    helper.__code__ = edited.__code__
    assert not snapshot.unchanged()
    assert CodeSnapshot.take(namespace["work"]).fingerprint != snapshot.fingerprint


def test_a_snapshot_keeps_the_functions_it_views_alive() -> None:
    namespace: dict[str, Any] = {}
    exec("def helper(x):\n    return x\ndef work(x):\n    return helper(x)\n", namespace)
    snapshot = CodeSnapshot.take(namespace["work"])
    del namespace["helper"]
    gc.collect()
    for _ in range(1000):  # new functions may take freed memory; the viewed one is not freed
        exec("def filler(y=1):\n    return y\n", {})
    assert not snapshot.unchanged(), "the helper's name is gone from the notebook"
