"""@cached_result: keys on code and values, invalidation, semantics, faults."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import nbcache
from nbcache import MemcachedCache, SimpleCache
from nbcache.functions.decorator import cached_result

REPO = Path(__file__).resolve().parent.parent


def notebook(source: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``source`` as a notebook cell would: in a namespace named ``__main__``."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    exec(compile(textwrap.dedent(source), "<ipython-input-1>", "exec"), namespace)
    return namespace


@pytest.fixture(params=["simple", pytest.param("memcached", marks=pytest.mark.memcached), "gae"])
def cache(request: pytest.FixtureRequest) -> Iterator[nbcache.Cache]:
    if request.param == "simple":
        yield SimpleCache()
    elif request.param == "gae":
        request.getfixturevalue("gae_memcache")
        yield nbcache.GAEMemcachedCache()
    else:
        server = request.getfixturevalue("memcached")
        yield MemcachedCache([server.address])


class Calls(list[Any]):
    """A call log the functions under test close over; its digest is constant, so logging a
    call does not change the function's fingerprint (closure values are part of it)."""

    def __nbcache_token__(self) -> str:
        return "calls"


def counting(cache: nbcache.Cache | None, **options: Any) -> tuple[Callable[..., Any], Calls]:
    calls = Calls()

    @cached_result(cache=cache, **options)
    def f(a: Any, b: int = 2, *, c: int = 3) -> Any:
        calls.append((a, b, c))
        return (a, b, c)

    return f, calls


def test_hit_returns_the_stored_value_and_counts(cache: nbcache.Cache) -> None:
    f, calls = counting(cache)
    assert f(1) == (1, 2, 3)
    assert f(1) == (1, 2, 3)
    assert len(calls) == 1
    info = f.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert info.time_saved >= 0


def test_key_ignores_keyword_order_and_explicit_defaults() -> None:
    f, _ = counting(SimpleCache())
    assert f.cache_key(1) == f.cache_key(1, 2) == f.cache_key(1, c=3, b=2) == f.cache_key(a=1)
    assert f.cache_key(1) != f.cache_key(1, 3)


@pytest.mark.parametrize(
    "make_a, make_b",
    [
        (lambda: np.arange(1000), lambda: np.r_[np.arange(999), 1000]),
        (lambda: np.zeros(10, "int64"), lambda: np.zeros(10, "int32")),
        (lambda: np.zeros((2, 6)), lambda: np.zeros((3, 4))),
        (lambda: pd.DataFrame({"a": [1, 2]}), lambda: pd.DataFrame({"b": [1, 2]})),
        (lambda: pd.DataFrame({"a": [1, 2]}), lambda: pd.DataFrame({"a": [1, 2]}, index=[5, 6])),
        (lambda: pd.DataFrame({"a": [1, 2]}), lambda: pd.DataFrame({"a": [1.0, 2.0]})),
    ],
)
def test_different_data_gives_different_keys(make_a: Any, make_b: Any) -> None:
    f, _ = counting(SimpleCache())
    assert f.cache_key(make_a()) == f.cache_key(make_a())
    assert f.cache_key(make_a()) != f.cache_key(make_b())


def test_key_unchanged_by_comments_changed_by_an_edited_helper() -> None:
    cell = """
        def clean(x):
            return x + 1
        def f(x):
            return clean(x) * 2
    """
    first = notebook(cell)
    commented = notebook(
        """
        def clean(x):
            # a comment, and a blank line

            return x + 1
        def f(x):
            return clean(x) * 2  # doubled
        """
    )
    key = cached_result(first["f"]).cache_key
    assert key(1) == cached_result(commented["f"]).cache_key(1)
    wrapped = cached_result(first["f"])
    before = wrapped.cache_key(1)
    notebook("def clean(x):\n    return x + 2\n", first)  # the helper is edited in place
    assert wrapped.cache_key(1) != before


def test_edited_helper_recomputes_through_the_same_wrapper() -> None:
    cache = SimpleCache()
    ns = notebook("def clean(x):\n    return x + 1\ndef f(x):\n    return clean(x)\n")
    f = cached_result(cache=cache)(ns["f"])
    assert f(1) == 2
    notebook("def clean(x):\n    return x + 10\n", ns)
    assert f(1) == 11
    assert f.explain(1) == "hit"


def test_global_data_read_by_the_function_is_part_of_the_key() -> None:
    ns = notebook("LIMIT = 3\ndef f(x):\n    return min(x, LIMIT)\n")
    f = cached_result(cache=SimpleCache())(ns["f"])
    assert f(10) == 3
    ns["LIMIT"] = 5
    assert f(10) == 5


def test_ignore_and_version() -> None:
    cache = SimpleCache()
    f, _ = counting(cache, ignore=("c",))
    assert f.cache_key(1, c=1) == f.cache_key(1, c=2)
    g, _ = counting(cache, version=2)
    assert g.cache_key(1) != f.cache_key(1)
    with pytest.raises(ValueError, match="nope"):
        counting(cache, ignore=("nope",))


def test_custom_key_callable_stands_for_the_arguments() -> None:
    f, calls = counting(SimpleCache(), key=lambda a, b=2, c=3: a % 10)
    assert f(1) == (1, 2, 3)
    assert f(11) == (1, 2, 3)  # same custom key part: the first result
    assert len(calls) == 1


@pytest.mark.memcached
def test_cache_clear_from_another_cache_object_is_seen(memcached: Any) -> None:
    kernel_a, kernel_b = MemcachedCache([memcached.address]), MemcachedCache([memcached.address])
    f_a, calls_a = counting(kernel_a)
    f_b, calls_b = counting(kernel_b)
    assert f_a(1) == (1, 2, 3)
    assert f_b(1) == (1, 2, 3) and calls_b == []  # shared entry
    assert f_b.cache_key(1) == f_a.cache_key(1)
    f_b.cache_clear()
    f_a(1)
    assert len(calls_a) == 2
    assert f_a.explain(1) == "hit"


@pytest.mark.parametrize(
    "planted", [b"", b"not a token", b"\x00" * 16, b"a" * 65, b"ABCDEF0123456789"]
)
def test_garbage_under_the_generation_key_costs_misses_then_caching_resumes(
    cache: nbcache.Cache, planted: bytes
) -> None:
    f, calls = counting(cache)
    assert f(1) == (1, 2, 3)
    generation_key = f.cache_key(1).rsplit(":", 1)[0] + "#generation-token"
    assert cache.store.set(generation_key, [planted], None)
    assert f(1) == (1, 2, 3)  # the entry's generation is not named any more: a miss
    assert f(1) == (1, 2, 3)  # stored under a fresh generation, which replaced the garbage
    assert len(calls) == 2
    f.cache_clear()
    assert f(1) == (1, 2, 3)
    assert len(calls) == 3


def test_a_forged_generation_token_never_makes_an_older_result_hit(
    cache: nbcache.Cache,
) -> None:
    f, calls = counting(cache)
    f(1)
    generation_key = f.cache_key(1).rsplit(":", 1)[0] + "#generation-token"
    assert cache.entries.set_token(generation_key, "0123456789abcdef")
    assert f(1) == (1, 2, 3)
    assert len(calls) == 2  # no entry names the forged token
    assert f(1) == (1, 2, 3) and len(calls) == 2


def test_invalidate_forgets_one_call(cache: nbcache.Cache) -> None:
    f, calls = counting(cache)
    f(1), f(2)
    assert f.invalidate(1)
    f(1), f(2)
    assert [call[0] for call in calls] == [1, 2, 1]


def test_none_is_cached_and_exceptions_are_not(cache: nbcache.Cache) -> None:
    calls = Calls()

    @cached_result(cache=cache)
    def none_or_raise(x: int) -> None:
        calls.append(x)
        if x < 0:
            raise ValueError("negative")
        return None

    assert none_or_raise(1) is None
    assert none_or_raise(1) is None
    for _ in range(2):
        with pytest.raises(ValueError):
            none_or_raise(-1)
    assert calls == [1, -1, -1]


def test_hits_return_the_callers_own_copy() -> None:
    @cached_result(cache=SimpleCache())
    def make(n: int) -> list[int]:
        return list(range(n))

    first = make(3)
    first.append(99)
    assert make(3) == [0, 1, 2]


def test_async_functions(cache: nbcache.Cache) -> None:
    calls = Calls()

    @cached_result(cache=cache)
    async def double(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return 2 * x

    assert inspect.iscoroutinefunction(double)
    assert asyncio.run(double(4)) == 8
    assert asyncio.run(double(4)) == 8
    assert calls == [4]


def test_methods_by_value_or_ignoring_self() -> None:
    cache = SimpleCache()

    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        @cached_result(cache=cache)
        def predict(self, x: int) -> int:
            return self.scale * x

        @cached_result(cache=cache, ignore=("self",))
        def constant(self, x: int) -> int:
            return self.scale * x

    assert Model(2).predict(3) == 6
    assert Model(3).predict(3) == 9
    assert Model.predict.cache_key(Model(2), 3) == Model.predict.cache_key(Model(2), 3)
    assert Model(2).constant(3) == 6
    assert Model(3).constant(3) == 6  # self is not part of that key


def test_default_cache_is_looked_up_at_call_time() -> None:
    f, _ = counting(None)
    mine = SimpleCache()
    nbcache.configure(mine)
    try:
        f(1)
        assert mine.get_entry(f.cache_key(1)) is not nbcache.NO_VALUE
    finally:
        nbcache.configure(None)


def test_unhashable_argument_runs_uncached_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f, calls = counting(SimpleCache())
    lock = threading.Lock()
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert f(lock) == (lock, 2, 3)
        f(lock)
    assert len(calls) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "`a`" in message and "ignore=" in message and "register_token" in message


def test_unpicklable_result_is_returned_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @cached_result(cache=SimpleCache())
    def make_lock(x: int) -> Any:
        return threading.Lock()

    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert make_lock(1) is not None
        make_lock(1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "lock" in warnings[0].getMessage()
    assert make_lock.cache_info().hits == 0


@pytest.mark.memcached
def test_a_dead_server_never_breaks_the_call(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address], timeout=0.5, connect_timeout=0.5)
    f, calls = counting(cache)
    memcached.stop()
    assert f(1) == (1, 2, 3)
    assert f(1) == (1, 2, 3)
    assert len(calls) == 2


KEY_SCRIPT = """
import textwrap
from nbcache.functions.decorator import cached_result
ns = {"__name__": "__main__"}
exec(textwrap.dedent('''
    def f(a, b=None, *, c=frozenset()):
        return a, b, c
'''), ns)
f = cached_result(ns["f"])
print(f.cache_key({"x": 1, "y": {"z", "w"}}, b=("s", 1.5), c=frozenset({"p", "q", "r"})))
"""


def test_keys_are_equal_across_processes_and_hash_seeds() -> None:
    keys = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        keys.add(result.stdout.strip())
    assert len(keys) == 1 and next(iter(keys)).startswith("nbcache.fn/3:__main__:f:")


def run_with_deadline(call: Callable[[], Any], seconds: float = 20.0) -> list[Any]:
    """``call()`` in a daemon thread: its result, or [] if it did not return in time."""
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    return results


def test_a_function_calling_itself_under_its_own_key_returns_with_one_warning(
    cache: nbcache.Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """``depth`` is left out of the key, so each level has the key of the first: the inner
    calls must not wait for the outer one to finish (it never would)."""
    calls = Calls()

    @cached_result(cache=cache, ignore=("depth",))
    def walk(path: str, depth: int = 0) -> str:
        calls.append(depth)
        return walk(path, depth + 1) if depth < 2 else path

    caplog.set_level(logging.WARNING, logger="nbcache")
    assert run_with_deadline(lambda: walk("/data")) == ["/data"]
    assert calls == [0, 1, 2]
    assert run_with_deadline(lambda: walk("/data")) == ["/data"]
    assert calls == [0, 1, 2]  # the outer call's result was cached
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "walk() called itself" in warnings[0], warnings


def test_a_coroutine_awaiting_itself_under_its_own_key_returns_with_one_warning(
    cache: nbcache.Cache, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()

    @cached_result(cache=cache, ignore=("depth",))
    async def walk(path: str, depth: int = 0) -> str:
        calls.append(depth)
        await asyncio.sleep(0)
        return await walk(path, depth + 1) if depth < 2 else path

    caplog.set_level(logging.WARNING, logger="nbcache")
    assert run_with_deadline(lambda: asyncio.run(walk("/data"))) == ["/data"]
    assert calls == [0, 1, 2]
    assert run_with_deadline(lambda: asyncio.run(walk("/data"))) == ["/data"]
    assert calls == [0, 1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "walk() called itself" in warnings[0], warnings
