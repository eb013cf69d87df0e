"""MemcachedCache under real faults: killed, paused, restarted, flushed, one of two servers away.

This is the user's view, through the whole stack (namespace, chunks, envelope): reads become
misses, writes return False, nothing raises, one warning per outage, and caching resumes by
itself. Each test starts its own memcached processes and signals them by PID. Time bounds are
generous upper bounds for a loaded 2-core machine; each test states the ones it asserts.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache
from nbcache.cache import CLOCK_TOLERANCE
from nbcache.stores.memcached.store import MemcachedStore

pytestmark = pytest.mark.memcached

SECRET = "fault-tests-secret-0123456789abcdef"
TIMEOUT = 0.5  # the operation timeout given to caches in these tests


def make_cache(*servers: MemcachedServer) -> MemcachedCache:
    return MemcachedCache(
        [s.address for s in servers], secret=SECRET, timeout=TIMEOUT, connect_timeout=TIMEOUT
    )


def memcached_store(cache: MemcachedCache) -> MemcachedStore:
    """The MemcachedStore at the bottom of the cache's stack (namespace -> chunks -> servers)."""
    store: Any = cache.store
    while not isinstance(store, MemcachedStore):
        store = store.inner
    return store


def owner(cache: MemcachedCache, key: str) -> str:
    """The address of the server holding the cache key ``key``."""
    return memcached_store(cache).server_for(cache.store.inner_key(key))  # type: ignore[attr-defined]


def generation_owner(cache: MemcachedCache) -> str:
    """The address of the server holding the namespace's generation token."""
    return memcached_store(cache).server_for(cache.store.generation_key)  # type: ignore[attr-defined]


def warnings_of(caplog: pytest.LogCaptureFixture, about: str = "") -> list[str]:
    """Warnings on nbcache loggers (those mentioning ``about``, when given)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("nbcache") and r.levelno >= logging.WARNING and about in r.getMessage()
    ]


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``condition`` every 50 ms; the seconds it took to hold."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, f"{what} not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - start


def items_on(server: MemcachedServer) -> int:
    """How many items the server holds (expired or stale ones included)."""
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", server.port), timeout=5)
    try:
        return int(client.stats()[b"curr_items"])
    finally:
        client.close()


def round_trips(cache: MemcachedCache, key: str, value: Any) -> bool:
    return cache.set(key, value) and cache.get(key) == value


@pytest.fixture
def server(memcached_factory: Callable[..., MemcachedServer]) -> MemcachedServer:
    return memcached_factory()


def test_killed_server_gives_misses_and_false_one_warning_and_costs_little(
    server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Bounds: the first call after the kill < 1.5 s; the next 200 calls < 3 s in all (the
    breaker answers for the dead server: no call connects or warns again)."""
    cache = make_cache(server)
    assert cache.set("result", {"rows": 3})
    assert cache.get("result") == {"rows": 3}
    caplog.set_level(logging.INFO, logger="nbcache")
    server.kill()

    start = time.monotonic()
    assert cache.get("result") is None
    assert time.monotonic() - start < 1.5

    start = time.monotonic()
    for i in range(100):
        assert cache.get(f"key-{i}") is None
        assert cache.set(f"key-{i}", i) is False
    assert time.monotonic() - start < 3.0
    assert cache.get_many("a", "b") == [None, None]
    assert not cache.has("result")
    assert cache.delete("result") is False
    assert cache.add("new", 1) is False
    assert cache.inc("counter") is None
    assert cache.clear() is False
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert f"{server.address} failed" in warnings[0]


@pytest.mark.slow
def test_paused_server_costs_at_most_the_timeout_per_call(
    server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Bounds: every call to a SIGSTOPped server < timeout (0.5 s) + 1 s slack, over 3 s of
    calls (the breaker's trials each pay one timeout); working again < 10 s after SIGCONT."""
    cache = make_cache(server)
    assert cache.set("result", [1, 2, 3])

    def set_other() -> bool:
        return cache.set("other", "x")

    caplog.set_level(logging.INFO, logger="nbcache")
    server.pause()
    try:
        deadline = time.monotonic() + 3.0
        slowest = 0.0
        calls = 0
        while time.monotonic() < deadline:
            for call, expected in ((lambda: cache.get("result"), None), (set_other, False)):
                start = time.monotonic()
                assert call() is expected
                slowest = max(slowest, time.monotonic() - start)
                calls += 1
        assert slowest < TIMEOUT + 1.0
        assert calls > 10
    finally:
        server.resume()
    wait_until(lambda: cache.get("result") == [1, 2, 3], within=10.0, what="reads after SIGCONT")
    assert round_trips(cache, "other", "y")
    assert len(warnings_of(caplog, about=f"{server.address} failed")) == 1


@pytest.mark.slow
def test_restarted_server_is_used_again_without_any_action(
    server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Bound: values round-trip again < 10 s after the restart (breaker cool-down 1 s doubling
    to 8 s at most)."""
    cache = make_cache(server)
    assert cache.set("result", "before")
    caplog.set_level(logging.INFO, logger="nbcache")
    server.kill()
    deadline = time.monotonic() + 2.5  # several failed trials in the outage
    while time.monotonic() < deadline:
        assert cache.get("result") is None
        assert cache.set("result", "during") is False
        time.sleep(0.05)
    server.start()
    took = wait_until(lambda: round_trips(cache, "result", "after"), 10.0, "caching")
    assert cache.get("result") == "after"
    assert len(warnings_of(caplog, about=f"{server.address} failed")) == 1
    assert took < 10.0


def test_flushed_by_someone_else_misses_then_works(server: MemcachedServer) -> None:
    """Bound: values round-trip again < 3 s after the flush (memcached's flush_all counts in
    whole seconds, so an item set in the same second may be flushed too)."""
    cache = make_cache(server)
    other = make_cache(server)
    assert cache.set("a", 1) and cache.set("b", 2)
    server.flush_all()
    assert cache.get_many("a", "b") == [None, None]
    assert other.get("a") is None
    wait_until(lambda: round_trips(cache, "a", 10), within=3.0, what="caching after flush_all")
    assert other.get("a") == 10


@pytest.fixture
def two(memcached_factory: Callable[..., MemcachedServer]) -> list[MemcachedServer]:
    return [memcached_factory(), memcached_factory()]


def split_keys(
    cache: MemcachedCache, servers: list[MemcachedServer], count: int = 40
) -> dict[str, list[str]]:
    """Cache keys grouped by the address of the server that holds them."""
    found: dict[str, list[str]] = {s.address: [] for s in servers}
    for i in range(count):
        found[owner(cache, f"key-{i}")].append(f"key-{i}")
    assert all(found.values()), f"every server should hold some of {count} keys"
    return found


def value_of(key: str, version: int) -> dict[str, Any]:
    return {"key": key, "version": version}


def test_one_dead_server_of_two_only_its_keys_miss(
    two: list[MemcachedServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The server that does not hold the generation token dies. Bound: all 80 calls < 5 s."""
    cache = make_cache(*two)
    keys = split_keys(cache, two)
    for key in keys[two[0].address] + keys[two[1].address]:
        assert cache.set(key, value_of(key, 1))
    live = next(s for s in two if s.address == generation_owner(cache))
    dead = next(s for s in two if s is not live)
    caplog.set_level(logging.INFO, logger="nbcache")
    dead.kill()

    start = time.monotonic()
    for key in keys[live.address]:
        assert cache.get(key) == value_of(key, 1)
        assert cache.set(key, value_of(key, 2))
        assert cache.get(key) == value_of(key, 2)
    for key in keys[dead.address]:
        assert cache.get(key) is None
        assert cache.set(key, value_of(key, 2)) is False
    everything = keys[live.address] + keys[dead.address]
    assert cache.get_many(*everything) == [value_of(k, 2) for k in keys[live.address]] + [
        None
    ] * len(keys[dead.address])
    assert time.monotonic() - start < 5.0
    assert len(warnings_of(caplog)) == 1
    assert len(warnings_of(caplog, about=f"{dead.address} failed")) == 1


def test_the_server_holding_the_generation_dying_only_its_keys_miss(
    two: list[MemcachedServer],
) -> None:
    cache = make_cache(*two)
    keys = split_keys(cache, two)
    for key in keys[two[0].address] + keys[two[1].address]:
        assert cache.set(key, value_of(key, 1))
    dead = next(s for s in two if s.address == generation_owner(cache))
    live = next(s for s in two if s is not dead)
    dead.kill()
    for key in keys[live.address]:
        assert cache.get(key) == value_of(key, 1)


def test_a_server_back_from_a_pause_never_shadows_a_newer_value(
    two: list[MemcachedServer],
) -> None:
    """Writes to keys on a paused server fail; once it is back, each of those keys reads as a
    miss, as its last successfully written value, or as the newest (failed) write, which the
    server may still apply from its socket buffer; never anything older. A write after the
    server is back wins. Bounds: each write to the paused server < timeout + 1 s; the server
    serves again < 10 s after SIGCONT."""
    cache = make_cache(*two)
    keys = split_keys(cache, two, count=20)
    paused = next(s for s in two if s.address != generation_owner(cache))
    live = next(s for s in two if s is not paused)
    for version in (1, 2):
        for key in keys[paused.address] + keys[live.address]:
            assert cache.set(key, value_of(key, version))

    paused.pause()
    try:
        for key in keys[paused.address]:
            start = time.monotonic()
            assert cache.set(key, value_of(key, 3)) is False
            assert time.monotonic() - start < TIMEOUT + 1.0
        for key in keys[live.address]:
            assert cache.set(key, value_of(key, 3))
    finally:
        paused.resume()

    probe = keys[paused.address][0]
    wait_until(lambda: cache.get(probe) is not None, within=10.0, what="the paused server")
    for key in keys[live.address]:
        assert cache.get(key) == value_of(key, 3)
    for key in keys[paused.address]:
        assert cache.get(key) in (None, value_of(key, 2), value_of(key, 3))
    for key in keys[paused.address]:
        assert cache.set(key, value_of(key, 4))
    time.sleep(0.2)  # room for anything still buffered to land
    for key in keys[paused.address]:
        assert cache.get(key) == value_of(key, 4)


def test_clear_while_a_server_is_paused_keeps_its_old_entries_dead(
    two: list[MemcachedServer],
) -> None:
    """Bound: the paused server serves again < 10 s after SIGCONT."""
    cache = make_cache(*two)
    keys = split_keys(cache, two, count=20)
    paused = next(s for s in two if s.address != generation_owner(cache))
    for key in keys[paused.address]:
        assert cache.set(key, value_of(key, 1))

    paused.pause()
    try:
        assert cache.clear() is True  # the generation lives on the other server
    finally:
        paused.resume()

    # The old entries are still on the server that was paused; they must read as misses.
    assert items_on(paused) >= len(keys[paused.address])
    probe = keys[paused.address][0]
    wait_until(lambda: cache.set(probe, "fresh"), within=10.0, what="the paused server")
    assert cache.get(probe) == "fresh"
    for key in keys[paused.address][1:]:
        assert cache.get(key) is None
        assert not cache.has(key)
    # And another kernel agrees.
    other = make_cache(*two)
    assert [other.get(key) for key in keys[paused.address][1:]] == [None] * (
        len(keys[paused.address]) - 1
    )


@pytest.mark.slow
@pytest.mark.parametrize("idle", [True, False], ids=["idle across the restart", "outage noticed"])
def test_a_server_restarted_with_a_smaller_item_limit_is_used_at_its_new_limit(
    memcached_factory: Callable[..., MemcachedServer], idle: bool
) -> None:
    """The item limit is asked again after a reconnect or a refused write, so values that fit
    the old limit but not the new one are chunked at once, not refused forever."""
    server = memcached_factory(item_size="2m")
    cache = make_cache(server)
    value = b"v" * (1536 * 1024)  # one item under -I 2m; two chunks under -I 1m
    assert round_trips(cache, "before", value)
    if idle:
        server.item_size = "1m"
        server.restart()
    else:
        server.kill()
        assert cache.get("before") is None  # the cache sees the outage
        server.item_size = "1m"
        server.start()
        wait_until(lambda: cache.set("probe", 1), within=10, what="the server back")
    for index in range(3):
        assert round_trips(cache, f"after-{index}", value), index
    assert memcached_store(cache).max_item_size == 1024 * 1024


FORKED_ROUNDS = 400


@pytest.mark.slow
def test_a_forked_child_and_its_parent_never_share_a_connection(
    server: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Both use the cache at once after the fork, starting with the pooled connection the
    parent opened before it: every reply reaches the process that asked, every increment is
    counted once, and nobody blames the server."""
    cache = make_cache(server)
    assert cache.set("shared", "value")
    assert cache.get("shared") == "value"  # the parent's pooled connection is open now
    caplog.set_level(logging.INFO, logger="nbcache")
    readable, writable = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking while other threads of the test run exist: this
        # test's own processes start none, and the child only uses the cache.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        try:
            logging.disable(logging.CRITICAL)
            results = [(cache.inc("child"), cache.get("shared")) for _ in range(FORKED_ROUNDS)]
            expected = [(n, "value") for n in range(1, FORKED_ROUNDS + 1)]
            os.write(writable, b"ok" if results == expected else repr(results[:5]).encode())
        finally:
            os._exit(0)
    os.close(writable)
    results = [(cache.inc("parent"), cache.get("shared")) for _ in range(FORKED_ROUNDS)]
    os.waitpid(pid, 0)
    with os.fdopen(readable, "rb") as report:
        assert report.read() == b"ok"
    assert results == [(n, "value") for n in range(1, FORKED_ROUNDS + 1)]
    assert cache.inc("child", 0) == FORKED_ROUNDS
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("ahead", [301.0, 3600.0 * 24 * 31])
def test_a_reader_whose_clock_is_ahead_still_hits_entries_the_server_keeps(
    server: MemcachedServer, monkeypatch: pytest.MonkeyPatch, ahead: float
) -> None:
    """A 300 s entry read by a kernel whose clock is 301 s ahead is a hit: the server
    expires entries by its own clock. Only an entry long past its signed expiry (as one
    replayed into the server would be) is refused."""
    writer, reader = make_cache(server), make_cache(server)
    assert writer.set("result", {"rows": 3}, timeout=300)
    assert writer.set("forever", "kept", timeout=0)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + ahead)
    within_tolerance = ahead - 300 < CLOCK_TOLERANCE
    assert (reader.get("result") == {"rows": 3}) is within_tolerance
    assert reader.has("result") is within_tolerance
    assert reader.get("forever") == "kept"
