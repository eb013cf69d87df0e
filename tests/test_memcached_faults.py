"""MemcachedStore under real faults: killed, paused, restarted and flushed servers.

Each test starts its own memcached processes and signals them by PID. Time bounds are
generous upper bounds for a loaded 2-core machine; each test states the ones it asserts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from memcached_server import MemcachedServer

from nbcache.exceptions import StoreFault
from nbcache.stores.api import NO_VALUE
from nbcache.stores.memcached.keys import memcached_key
from nbcache.stores.memcached.store import MemcachedStore

pytestmark = pytest.mark.memcached

LOGGER = "nbcache.stores.memcached"  # the store and its server pools
COOLDOWN = 0.3  # short breaker cool-down so recovery tests stay fast


@pytest.fixture
def server(memcached_factory: Callable[..., MemcachedServer]) -> MemcachedServer:
    return memcached_factory()


@pytest.fixture
def make_store() -> Iterator[Callable[..., MemcachedStore]]:
    stores: list[MemcachedStore] = []

    def make(servers: list[MemcachedServer], **options: float) -> MemcachedStore:
        options.setdefault("breaker_cooldown", COOLDOWN)
        options.setdefault("timeout", 0.5)
        store = MemcachedStore([s.address for s in servers], **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(LOGGER) and r.levelname == "WARNING"
    ]


def infos_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(LOGGER) and r.levelname == "INFO"
    ]


def wait_until_served(store: MemcachedStore, key: str, within: float) -> float:
    """Poll ``store.get(key)`` until it stops raising StoreFault; seconds it took."""
    start = time.monotonic()
    while True:
        try:
            store.get(key)
            return time.monotonic() - start
        except StoreFault:
            assert time.monotonic() - start < within, f"store still failing after {within} s"
            time.sleep(0.05)


def test_killed_server_faults_fast_and_the_open_breaker_costs_microseconds(
    server: MemcachedServer,
    make_store: Callable[..., MemcachedStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bounds: the first failing call < 1 s; 100 calls with the breaker open < 2 s in all (they
    take microseconds each; the bound leaves room for a busy machine's stalls)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store([server], breaker_cooldown=5.0)
    assert store.set("k", [b"v"], None)
    server.kill()

    start = time.monotonic()
    with pytest.raises(StoreFault, match=server.address):
        store.get("k")
    assert time.monotonic() - start < 1.0

    start = time.monotonic()
    for _ in range(50):
        with pytest.raises(StoreFault):
            store.get("k")
        with pytest.raises(StoreFault):
            store.set("k", [b"w"], None)
    assert time.monotonic() - start < 2.0
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert server.address in warnings[0] and "ConnectionRefusedError" in warnings[0]


def test_paused_server_costs_at_most_the_timeout_per_call(
    server: MemcachedServer,
    make_store: Callable[..., MemcachedStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bounds: a call to a SIGSTOPped server < timeout (1 s) + 1.5 s slack; with the breaker
    open, a call < 0.8 s (it does not wait the 1 s timeout again); after SIGCONT the store
    serves again within 5 s."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store([server], timeout=1.0)
    assert store.set("k", [b"v"], None)
    server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StoreFault, match="timed out"):
            store.get("k")
        assert time.monotonic() - start < 2.5
        start = time.monotonic()
        with pytest.raises(StoreFault, match="unavailable"):
            store.set("k", [b"w"], None)  # breaker open: no new wait
        assert time.monotonic() - start < 0.8
    finally:
        server.resume()
    wait_until_served(store, "k", within=5.0)
    assert store.get("k") == b"v"
    assert len(warnings_of(caplog)) == 1
    assert len(infos_of(caplog)) == 1


@pytest.mark.slow
def test_restarted_server_is_used_again_by_the_same_store(
    server: MemcachedServer,
    make_store: Callable[..., MemcachedStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bound: working again within 5 s of the restart (cool-down 0.3 s, doubling to <= 8 s
    while the server stays down)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store([server])
    assert store.set("k", [b"v"], None)
    port = server.port
    server.kill()
    # Stay down across several failed trials: still one warning for the whole outage.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        with pytest.raises(StoreFault):
            store.get("k")
        time.sleep(0.05)
    assert store.servers[server.address].breaker.cooldown > COOLDOWN  # it backed off

    server.start()
    assert server.port == port
    wait_until_served(store, "k", within=5.0)
    assert store.get("k") is NO_VALUE  # a restarted memcached is empty
    assert store.set("k", [b"new"], None)
    assert store.get("k") == b"new"
    assert len(warnings_of(caplog)) == 1
    assert infos_of(caplog) == [f"nbcache: memcached server {server.address} is back"]

    server.kill()  # a second outage gets its own warning
    with pytest.raises(StoreFault):
        store.get("k")
    assert len(warnings_of(caplog)) == 2


def test_restart_between_calls_is_absorbed_without_a_fault(
    server: MemcachedServer,
    make_store: Callable[..., MemcachedStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pooled connections to a server restarted while the store was idle are stale; the store
    reconnects instead of failing."""
    store = make_store([server])
    assert store.set("k", [b"v"], None)
    server.restart()
    assert store.get("k") is NO_VALUE
    assert store.set("k", [b"w"], None)
    assert store.get("k") == b"w"
    assert warnings_of(caplog) == []


def test_flushed_by_someone_else_reads_as_misses(
    server: MemcachedServer, make_store: Callable[..., MemcachedStore]
) -> None:
    store = make_store([server])
    assert store.set("a", [b"1"], None)
    assert store.set("b", [b"2"], None)
    server.flush_all()
    assert store.get_many(["a", "b"]) == [NO_VALUE, NO_VALUE]
    assert store.set("a", [b"3"], None)
    assert store.get("a") == b"3"


def keys_by_server(store: MemcachedStore, count: int = 40) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {address: [] for address in store.servers}
    for i in range(count):
        key = f"key-{i}"
        found[store.server_for(key)].append(key)
    assert all(found.values()), f"every server should own some of {count} keys"
    return found


def holds(server: MemcachedServer, key: str) -> bool:
    return server.command(b"get " + memcached_key(key).encode()).startswith(b"VALUE")


def test_one_dead_server_of_two_loses_only_its_own_keys_and_they_never_move(
    memcached_factory: Callable[..., MemcachedServer],
    make_store: Callable[..., MemcachedStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bound: the dead server's keys work again within 5 s of its restart."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    live, dead = memcached_factory(), memcached_factory()
    store = make_store([live, dead])
    owned = keys_by_server(store)
    live_keys, dead_keys = owned[live.address], owned[dead.address]
    for key in live_keys + dead_keys:
        assert store.set(key, [key.encode()], None)

    dead.kill()
    for key in live_keys:
        assert store.get(key) == key.encode()
        assert store.set(key, [b"new " + key.encode()], None)
    for key in dead_keys:
        with pytest.raises(StoreFault):
            store.get(key)
        with pytest.raises(StoreFault):
            store.set(key, [b"written while away"], None)
    # One round trip per server: the live server's values, misses for the dead one's keys.
    everything = live_keys + dead_keys
    expected = [b"new " + k.encode() for k in live_keys] + [NO_VALUE] * len(dead_keys)
    assert store.get_many(everything) == expected
    with pytest.raises(StoreFault):
        store.get_many(dead_keys)  # no server involved answered
    # Nothing was moved to the live server.
    assert not any(holds(live, key) for key in dead_keys)

    dead.start()
    wait_until_served(store, dead_keys[0], within=5.0)
    for key in dead_keys:
        assert store.get(key) is NO_VALUE
        assert store.set(key, [b"back " + key.encode()], None)
        assert holds(dead, key) and not holds(live, key)
    assert store.get_many(dead_keys) == [b"back " + k.encode() for k in dead_keys]
    assert len(warnings_of(caplog)) == 1 and dead.address in warnings_of(caplog)[0]


def test_a_store_built_while_the_server_is_down_starts_working_when_it_comes_up(
    make_store: Callable[..., MemcachedStore],
) -> None:
    """Bound: served within 5 s of the server starting."""
    server = MemcachedServer()  # not started yet: its port refuses connections
    store = make_store([server])
    with pytest.raises(StoreFault):
        store.get("k")
    with server:
        wait_until_served(store, "k", within=5.0)
        assert store.set("k", [b"v"], None)
        assert store.get("k") == b"v"
