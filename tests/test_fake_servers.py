"""A hung, slow or flooding server costs at most the operation timeout, a miss, and no memory.

The timeout bounds a whole operation, not each ``recv``: a server dribbling a correct reply a
byte at a time used to keep a ``get`` for over a minute. And a server that floods a reply is
cut off once it has sent more than the reply can hold, instead of being buffered. Each
operation runs on a fresh cache or store (an open circuit breaker would make later calls
free) and its total time is measured. Bounds are generous for a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fake_servers import elapsed, fake_server

from nbcache import MemcachedCache, cached_result
from nbcache.exceptions import StoreFault
from nbcache.stores.api import CasToken
from nbcache.stores.memcached.store import DEFAULT_ITEM_SIZE_MAX, MemcachedStore
from nbcache.testing import resident_growth

pytestmark = pytest.mark.slow  # each test waits out a timeout

SECRET = "fake-servers-secret-0123456789abcdef"
TIMEOUT = 0.5
SLACK = 1.5  # seconds of scheduling noise allowed on top of the bound
MIB = 1024 * 1024
#: Chunks enough for four connections (transfer.MIN_CHUNKS_PER_PART each).
PARALLEL_CHUNKS = 32
BEHAVIOURS = ["silent", "slow", "flood", "garbage"]

CACHE_OPERATIONS: dict[str, tuple[Callable[[MemcachedCache], Any], Any]] = {
    "get": (lambda cache: cache.get("k"), None),
    "get_many": (lambda cache: cache.get_many("a", "b"), [None, None]),
    "has": (lambda cache: cache.has("k"), False),
    "set": (lambda cache: cache.set("k", {"a": 1}), False),
    "set big": (lambda cache: cache.set("big", b"x" * (3 * MIB)), False),
    "add": (lambda cache: cache.add("k", 1), False),
    "delete": (lambda cache: cache.delete("k"), False),
    "inc": (lambda cache: cache.inc("n"), None),
    "clear": (lambda cache: cache.clear(), False),
}


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("operation", list(CACHE_OPERATIONS))
def test_a_cache_operation_on_a_broken_server_is_a_miss_within_the_timeout(
    behaviour: str, operation: str
) -> None:
    """Bound: timeout + slack for the whole call, however many round trips it makes."""
    call, miss = CACHE_OPERATIONS[operation]
    with fake_server(behaviour) as server:
        cache = MemcachedCache(
            [server.address], secret=SECRET, timeout=TIMEOUT, connect_timeout=TIMEOUT
        )
        with resident_growth() as growth:
            result, seconds = elapsed(lambda: call(cache))
    assert result == miss
    assert seconds < TIMEOUT + SLACK, f"{operation} took {seconds:.1f} s"
    assert growth.peak < 32 * MIB, f"{operation} kept {growth.peak / MIB:.0f} MiB of reply"


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_a_cached_function_on_a_broken_server_runs_within_the_timeout(behaviour: str) -> None:
    with fake_server(behaviour) as server:
        cache = MemcachedCache(
            [server.address], secret=SECRET, timeout=TIMEOUT, connect_timeout=TIMEOUT
        )

        @cached_result(cache=cache)
        def triple(x: int) -> int:
            return 3 * x

        result, seconds = elapsed(lambda: triple(14))
    assert result == 42
    assert seconds < TIMEOUT + SLACK, f"took {seconds:.1f} s"


STORE_OPERATIONS: dict[str, Callable[[MemcachedStore], Any]] = {
    "get": lambda store: store.get("k"),
    "gets": lambda store: store.gets("k"),
    "get_many": lambda store: store.get_many(["a", "b"]),
    "set": lambda store: store.set("k", [b"v"], None),
    "add": lambda store: store.add("k", [b"v"], None),
    "cas": lambda store: store.cas("k", [b"v"], None, CasToken(b"1")),
    "delete": lambda store: store.delete("k"),
    "set_chunks": lambda store: store.set_chunks([("c0", [b"x" * MIB]), ("c1", [b"y"])], None),
    "get_chunks_into": lambda store: store.get_chunks_into(
        ["c0", "c1"], [memoryview(bytearray(MIB)), memoryview(bytearray(64))]
    ),
    # Enough chunks to travel over several connections at once: one deadline for them all.
    "set_chunks over connections": lambda store: store.set_chunks(
        [(f"c{index}", [b"x" * (64 * 1024)]) for index in range(PARALLEL_CHUNKS)], None
    ),
    "get_chunks_into over connections": lambda store: store.get_chunks_into(
        [f"c{index}" for index in range(PARALLEL_CHUNKS)],
        [memoryview(bytearray(64)) for _ in range(PARALLEL_CHUNKS)],
    ),
    "delete_chunks": lambda store: store.delete_chunks(
        [f"c{index}" for index in range(PARALLEL_CHUNKS)]
    ),
}


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("operation", list(STORE_OPERATIONS))
def test_every_store_operation_on_a_broken_server_faults_within_the_timeout(
    behaviour: str, operation: str
) -> None:
    """Bound: two timeouts + slack (the store first asks the server for its item limit, and
    the breaker here lets the operation itself through right after that failed)."""
    with fake_server(behaviour) as server:
        store = MemcachedStore(
            [server.address],
            timeout=TIMEOUT,
            connect_timeout=TIMEOUT,
            breaker_cooldown=1e-6,
            transfer_connections=4,
        )
        with resident_growth() as growth:
            start_call = STORE_OPERATIONS[operation]

            def call() -> object:
                with pytest.raises(StoreFault):
                    start_call(store)
                return None

            _, seconds = elapsed(call)
        store.close()
    assert seconds < 2 * TIMEOUT + SLACK, f"{operation} took {seconds:.1f} s"
    assert growth.peak < 32 * MIB, f"{operation} kept {growth.peak / MIB:.0f} MiB of reply"


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_asking_a_broken_server_for_its_item_limit_gives_the_default_within_the_timeout(
    behaviour: str,
) -> None:
    with fake_server(behaviour) as server:
        store = MemcachedStore([server.address], timeout=TIMEOUT, connect_timeout=TIMEOUT)
        size, seconds = elapsed(lambda: store.max_item_size)
        store.close()
    assert size == DEFAULT_ITEM_SIZE_MAX
    assert seconds < TIMEOUT + SLACK
