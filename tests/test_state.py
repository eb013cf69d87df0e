"""State is not an input: a function that changes a global as it runs still hits."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import nbcache
from nbcache import MemcachedCache, SimpleCache
from nbcache.functions.decorator import cached_result


def notebook(source: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``source`` as a notebook cell would: in a namespace named ``__main__``."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    exec(compile(textwrap.dedent(source), "<ipython-input-1>", "exec"), namespace)
    return namespace


@pytest.fixture(params=["simple", pytest.param("memcached", marks=pytest.mark.memcached)])
def cache(request: pytest.FixtureRequest) -> Iterator[nbcache.Cache]:
    if request.param == "simple":
        yield SimpleCache()
    else:
        server = request.getfixturevalue("memcached")
        yield MemcachedCache([server.address])


# Three ways notebook code keeps state, each counting the runs of f in a global.
STATEFUL = {
    "counter dict": (
        "RUNS = {'f': 0}\ndef f(x):\n    RUNS['f'] += 1\n    return x * 2\n",
        lambda ns: ns["RUNS"]["f"],
    ),
    "log list": (
        "log = []\ndef f(x):\n    log.append(x)\n    return x * 2\n",
        lambda ns: len(ns["log"]),
    ),
    "global statement": (
        "calls = 0\ndef f(x):\n    global calls\n    calls += 1\n    return x * 2\n",
        lambda ns: ns["calls"],
    ),
}


@pytest.mark.parametrize("pattern", sorted(STATEFUL))
def test_a_function_that_counts_its_calls_hits_on_the_second_call(
    cache: nbcache.Cache, pattern: str
) -> None:
    source, runs = STATEFUL[pattern]
    ns = notebook(source)
    f = cached_result(cache=cache)(ns["f"])
    assert f(3) == 6
    assert f(3) == 6
    assert f(3) == 6
    assert runs(ns) == 1
    assert (f.cache_info().hits, f.cache_info().misses) == (2, 1)
    assert f(4) == 8 and runs(ns) == 2  # other arguments still run


@pytest.mark.parametrize("pattern", ["counter dict", "log list"])
def test_an_async_function_that_counts_its_calls_hits_on_the_second_call(
    cache: nbcache.Cache, pattern: str
) -> None:
    source, runs = STATEFUL[pattern]
    ns = notebook(source.replace("def f(x):", "async def f(x):"))
    f = cached_result(cache=cache)(ns["f"])

    async def main() -> list[int]:
        return [await f(3), await f(3), await f(3)]

    assert asyncio.run(main()) == [6, 6, 6]
    assert runs(ns) == 1
    assert f.cache_info().hits == 2


def test_a_function_that_raises_once_then_succeeds_hits_after_its_first_success(
    cache: nbcache.Cache,
) -> None:
    ns = notebook(
        """
        RUNS = {'f': 0}
        def f(x):
            RUNS['f'] += 1
            if RUNS['f'] == 1:
                raise RuntimeError('first run fails')
            return x * 2
        """
    )
    f = cached_result(cache=cache)(ns["f"])
    with pytest.raises(RuntimeError):
        f(3)
    assert f(3) == 6
    assert f(3) == 6
    assert ns["RUNS"]["f"] == 2
    assert f.cache_info().hits == 1


def test_state_is_said_once_at_info_and_in_explain(caplog: pytest.LogCaptureFixture) -> None:
    ns = notebook(STATEFUL["counter dict"][0])
    f = cached_result(cache=SimpleCache())(ns["f"])
    note = (
        "f() changes global `RUNS` while it runs: it is state, not an input, and a hit does "
        "not replay that change"
    )
    with caplog.at_level(logging.INFO, logger="nbcache"):
        for _ in range(3):
            f(3)
    said = [r for r in caplog.records if note in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert said[0].getMessage() == f"nbcache: {note}"
    assert f.explain(3) == f"hit; {note}"


def test_a_global_statement_is_state_from_the_first_call(caplog: pytest.LogCaptureFixture) -> None:
    ns = notebook(STATEFUL["global statement"][0])
    f = cached_result(cache=SimpleCache())(ns["f"])
    with caplog.at_level(logging.INFO, logger="nbcache"):
        key = f.cache_key(3)
        ns["calls"] = 100
        assert f.cache_key(3) == key
    assert any("changes global `calls`" in r.getMessage() for r in caplog.records)


def test_a_global_another_cell_changes_stays_an_input() -> None:
    ns = notebook(
        """
        RUNS = {'f': 0}
        LIMIT = 3
        def f(x):
            RUNS['f'] += 1
            return min(x, LIMIT)
        """
    )
    f = cached_result(cache=SimpleCache())(ns["f"])
    assert f(10) == 3
    assert f(10) == 3
    notebook("LIMIT = 5\n", ns)  # another cell
    assert f(10) == 5
    assert f(10) == 5
    assert ns["RUNS"]["f"] == 2
    notebook("LIMIT = 7\n", ns)
    assert f.explain(10).startswith("global `LIMIT` changed")


def test_a_helper_that_changes_state_makes_it_state_for_its_callers() -> None:
    ns = notebook(
        """
        seen = []
        def remember(x):
            seen.append(x)
        def f(x):
            remember(x)
            return x + 1
        """
    )
    f = cached_result(cache=SimpleCache())(ns["f"])
    assert [f(1), f(1), f(1)] == [2, 2, 2]
    assert ns["seen"] == [1]
