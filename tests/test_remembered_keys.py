"""A small call's key is remembered by its plain arguments, and never stands for another call.

Loops call a cached function with the same few plain values; their keys are remembered
instead of rebuilt. These tests hold the remembered keys to what a freshly built key would
give: values that Python finds equal but that differ (``1``, ``True``, ``1.0``; ``0.0`` and
``-0.0``) keep apart, and a change of code or of a global the function reads is seen at once.
"""

from __future__ import annotations

import math
import types
from typing import Any

from nbcache import SimpleCache
from nbcache.functions.decorator import cached_result
from nbcache.functions.remembered_keys import MAX_KEYS, call_identity


def notebook_function(source: str, name: str, **globals_: Any) -> Any:
    """``name`` defined by ``source`` in a fresh module, as a notebook cell defines it."""
    module = types.ModuleType("__main__")
    module.__dict__.update(globals_)
    exec(source, module.__dict__)
    return module.__dict__[name], module.__dict__


def test_equal_python_values_of_other_types_or_signs_get_their_own_entries() -> None:
    cache = SimpleCache()

    @cached_result(cache=cache)
    def describe(x: Any) -> str:
        return f"{type(x).__name__} {math.copysign(1, x) if isinstance(x, float) else x}"

    for _ in range(3):  # a miss, a hit that remembers its key, a hit by the remembered key
        assert describe(1) == "int 1"
        assert describe(True) == "bool True"
        assert describe(1.0) == "float 1.0"
        assert describe(0.0) == "float 1.0"
        assert describe(-0.0) == "float -1.0"
        assert describe("1") == "str 1"
        assert describe(b"1") == "bytes b'1'"
    assert describe.cache_info().hits == 14 and describe.cache_info().misses == 7


def test_a_remembered_call_sees_a_global_changed_in_place_and_rebound() -> None:
    source = "def total(n):\n    return n * sum(WEIGHTS)\n"
    total, namespace = notebook_function(source, "total", WEIGHTS=[1, 2])
    cached = cached_result(cache=SimpleCache())(total)
    assert cached(10) == 30 and cached(10) == 30
    namespace["WEIGHTS"].append(3)
    assert cached(10) == 60, "a list changed in place is a new input"
    namespace["WEIGHTS"] = (5,)
    assert cached(10) == 50, "a rebound global is a new input"
    assert cached(10) == 50
    assert cached.cache_info().hits == 2 and cached.cache_info().misses == 3


def test_a_remembered_call_sees_its_code_redefined() -> None:
    scale, namespace = notebook_function("def scale(n):\n    return n * 2\n", "scale")
    cached = cached_result(cache=SimpleCache())(scale)
    assert cached(4) == 8 and cached(4) == 8
    exec("def helper(n):\n    return n * 3\n", namespace)
    scale.__code__ = namespace["helper"].__code__
    assert cached(4) == 12


def test_keywords_and_positions_of_one_call_share_an_entry_however_given() -> None:
    cache = SimpleCache()

    @cached_result(cache=cache)
    def area(width: int, height: int = 2) -> int:
        return width * height

    assert [area(3), area(3, 2), area(3, height=2), area(height=2, width=3)] == [6] * 4
    assert area.cache_info().misses == 1 and area.cache_info().hits == 3
    assert area(3, height=5) == 15


def test_only_plain_short_values_identify_a_call() -> None:
    assert call_identity((1, "a"), {}) != call_identity((1,), {"b": "a"})
    assert call_identity((1,), {}) != call_identity((True,), {})
    assert call_identity((0.0,), {}) != call_identity((-0.0,), {})
    assert call_identity(([1],), {}) is None, "a list can change in place"
    assert call_identity(("x" * 10_000,), {}) is None
    assert call_identity((1,), {"opt": [1]}) is None


def test_many_distinct_calls_keep_the_remembered_keys_bounded() -> None:
    @cached_result(cache=SimpleCache(threshold=2 * MAX_KEYS))
    def square(n: int) -> int:
        return n * n

    for n in range(MAX_KEYS + 10):
        assert square(n) == n * n and square(n) == n * n  # a miss, then a remembered hit
    remembered = square.map.__self__.remembered  # the function's state, behind its wrapper
    assert 0 < len(remembered.keys_for(*remembered._state[:2])) <= MAX_KEYS
