"""MemcachedStore against real memcached servers, plus its pure parts (keys, expiry, breaker)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memcached_server import MemcachedServer

from nbcache.exceptions import ConfigurationError
from nbcache.stores.api import NO_VALUE, ByteStore, CasToken
from nbcache.stores.memcached.breaker import CircuitBreaker
from nbcache.stores.memcached.keys import (
    HASHED_MARKER,
    READABLE_MARKER,
    is_valid_memcached_key,
    memcached_key,
)
from nbcache.stores.memcached.store import (
    DEFAULT_ITEM_SIZE_MAX,
    MAX_RELATIVE_EXPIRY,
    MemcachedStore,
    memcached_expiry,
    parse_server,
    rendezvous_owner,
)

pytestmark = pytest.mark.memcached

DAY = 24 * 3600


@pytest.fixture(scope="module")
def shared_server() -> Iterator[MemcachedServer]:
    """One server for the contract tests (emptied before each test): stopping an idle
    memcached takes about a second, so a server per test would dominate the run time."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def store(shared_server: MemcachedServer) -> Iterator[MemcachedStore]:
    assert shared_server.command(b"flush_all") == b"OK\r\n"  # this test's own private server
    store = MemcachedStore([shared_server.address])
    yield store
    store.close()


# -- expiry -----------------------------------------------------------------------------


def test_expiry_none_never_expires() -> None:
    assert memcached_expiry(None) == 0


@pytest.mark.parametrize(("ttl", "sent"), [(0.001, 1), (1, 1), (1.5, 2), (300, 300)])
def test_expiry_rounds_positive_ttls_up_never_to_zero(ttl: float, sent: int) -> None:
    assert memcached_expiry(ttl) == sent


def test_expiry_of_thirty_days_stays_relative() -> None:
    assert memcached_expiry(MAX_RELATIVE_EXPIRY, now=1_700_000_000.7) == MAX_RELATIVE_EXPIRY


def test_expiry_beyond_thirty_days_is_absolute_unix_time() -> None:
    now = 1_700_000_000.7
    assert memcached_expiry(40 * DAY, now=now) == 1_700_000_000 + 40 * DAY
    assert memcached_expiry(MAX_RELATIVE_EXPIRY + 0.5, now=now) == (
        1_700_000_000 + MAX_RELATIVE_EXPIRY + 1
    )


@pytest.mark.parametrize("ttl", [0, -1, float("nan")])
def test_expiry_rejects_ttls_that_must_never_reach_a_store(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        memcached_expiry(ttl)


# -- keys -------------------------------------------------------------------------------


def test_safe_short_keys_stay_readable_behind_a_marker() -> None:
    assert memcached_key("result/abc-123") == READABLE_MARKER + "result/abc-123"


@pytest.mark.parametrize(
    "key",
    ["", "with space", "tab\there", "new\nline", "nul\x00", "del\x7f", "π≈3.14", "x" * 249],
)
def test_any_key_maps_to_a_valid_memcached_key(key: str) -> None:
    assert is_valid_memcached_key(memcached_key(key))


def test_unsafe_keys_are_hashed_and_cannot_equal_a_readable_key() -> None:
    hashed = memcached_key("with space")
    assert hashed.startswith(HASHED_MARKER)
    # The readable key spelling the same text carries the other marker.
    assert memcached_key(hashed) == READABLE_MARKER + hashed != hashed


def test_keys_too_long_to_stay_readable_are_hashed() -> None:
    assert memcached_key("x" * 248).startswith(READABLE_MARKER)
    assert memcached_key("x" * 249).startswith(HASHED_MARKER)


def test_lone_surrogates_are_valid_keys() -> None:
    assert memcached_key("\udcff") != memcached_key("\udcfe")


@given(st.text(alphabet=st.characters(codec=None), max_size=300))
def test_every_mapped_key_is_valid(key: str) -> None:
    assert is_valid_memcached_key(memcached_key(key))


@given(st.lists(st.text(max_size=260), unique=True, max_size=30))
def test_distinct_keys_map_to_distinct_keys(keys: list[str]) -> None:
    mapped = {memcached_key(key) for key in keys}
    assert len(mapped) == len(keys)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300))
def test_readable_and_hashed_forms_never_meet(key: str) -> None:
    assert memcached_key(key) != memcached_key(key + " ")


# -- servers and configuration ----------------------------------------------------------


def test_server_addresses_parse() -> None:
    assert parse_server("127.0.0.1:11300") == ("127.0.0.1", 11300)
    assert parse_server("cachehost") == ("cachehost", 11211)
    assert parse_server("[::1]:11300") == ("::1", 11300)
    assert parse_server("unix:/run/memcached.sock") == "/run/memcached.sock"


@pytest.mark.parametrize("servers", [[], ["a:1", "a:1"], ["host:port"]])
def test_bad_server_lists_are_configuration_errors(servers: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        MemcachedStore(servers)


def test_importing_the_store_does_not_import_pymemcache() -> None:
    code = "import sys, nbcache.stores.memcached.store; print('pymemcache' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the ByteStore contract on a real server --------------------------------------------


def test_is_a_byte_store(store: MemcachedStore) -> None:
    assert isinstance(store, ByteStore)


def test_buffers_round_trip_as_bytes(store: MemcachedStore) -> None:
    payload = [b"head\r\n", bytearray(b"\x00mid"), memoryview(b"tail END\r\n")]
    assert store.set("k", payload, None) is True
    value = store.get("k")
    assert isinstance(value, bytes)
    assert value == b"head\r\n\x00midtail END\r\n"


def test_a_memoryview_is_stored_as_its_bytes_not_its_text(store: MemcachedStore) -> None:
    assert store.set("k", [memoryview(b"abc")], None)
    assert store.get("k") == b"abc"


def test_empty_value_is_a_hit(store: MemcachedStore) -> None:
    assert store.set("k", [], None)
    assert store.get("k") == b""


def test_miss_is_no_value(store: MemcachedStore) -> None:
    assert store.get("absent") is NO_VALUE
    assert store.gets("absent") == (NO_VALUE, None)


def test_values_are_stored_with_flags_zero(
    store: MemcachedStore, shared_server: MemcachedServer
) -> None:
    store.set("k", [b"abc"], None)
    mapped = memcached_key("k").encode()
    reply = shared_server.command(b"get " + mapped)
    assert reply == b"VALUE " + mapped + b" 0 3\r\nabc\r\nEND\r\n"


@pytest.mark.parametrize(
    "key", ["", "with space", "ctl\x01\x02", "ünïcödé ✓", "x" * 1000, "\udcff"]
)
def test_awkward_keys_round_trip(store: MemcachedStore, key: str) -> None:
    assert store.set(key, [key.encode("utf-8", "surrogatepass")], None)
    assert store.get(key) == key.encode("utf-8", "surrogatepass")


def test_add_stores_only_when_absent(store: MemcachedStore) -> None:
    assert store.add("k", [b"1"], None) is True
    assert store.add("k", [b"2"], None) is False
    assert store.get("k") == b"1"


def test_cas_stores_only_when_unchanged(store: MemcachedStore) -> None:
    store.set("k", [b"1"], None)
    value, token = store.gets("k")
    assert value == b"1" and isinstance(token, CasToken)
    assert store.cas("k", [b"2"], None, token) is True
    assert store.cas("k", [b"3"], None, token) is False  # changed since the token
    assert store.get("k") == b"2"
    store.delete("k")
    assert store.cas("k", [b"4"], None, token) is False  # gone
    assert store.get("k") is NO_VALUE


def test_delete_reports_whether_something_was_deleted(store: MemcachedStore) -> None:
    store.set("k", [b"1"], None)
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.get("k") is NO_VALUE


def test_get_many_keeps_order_duplicates_and_misses(store: MemcachedStore) -> None:
    store.set("a", [b"A"], None)
    store.set("b c", [b"B"], None)
    assert store.get_many(["b c", "absent", "a", "a"]) == [b"B", NO_VALUE, b"A", b"A"]
    assert store.get_many([]) == []


def test_oversized_write_returns_false_and_the_store_still_works(
    store: MemcachedStore,
) -> None:
    store.set("k", [b"old"], None)
    assert store.set("k", [b"x" * (2 * DEFAULT_ITEM_SIZE_MAX)], None) is False
    # memcached drops the old value when a set of the same key is refused.
    assert store.get("k") is NO_VALUE
    assert store.set("k", [b"x" * store.max_value_size], None) is True
    assert store.servers[store.server_for("k")].breaker.state == "closed"


def test_forty_day_ttl_item_is_still_there(store: MemcachedStore) -> None:
    # Sent as a relative 3456000 s, memcached would read a date in 1970 and drop it at once.
    assert store.set("k", [b"v"], 40 * DAY)
    assert store.get("k") == b"v"


def test_short_ttl_expires(store: MemcachedStore) -> None:
    """memcached's clock ticks once a second: a 0.2 s ttl (sent as 1 s) is gone within 3 s."""
    import time

    assert store.set("k", [b"v"], 0.2)
    assert store.get("k") == b"v"  # rounded up, not sent as 0 ("never") or dropped at once
    deadline = time.monotonic() + 3.0
    while store.get("k") is not NO_VALUE:
        assert time.monotonic() < deadline, "a 0.2 s item was still there after 3 s"
        time.sleep(0.1)


def test_clear_refuses_and_never_flushes(
    store: MemcachedStore, shared_server: MemcachedServer
) -> None:
    shared_server.command(b"set foreign 0 0 1\r\nx")
    store.set("k", [b"v"], None)
    with pytest.raises(NotImplementedError, match="NamespacedStore"):
        store.clear()
    assert store.get("k") == b"v"
    assert shared_server.command(b"get foreign").startswith(b"VALUE foreign")


def test_close_then_use_again(store: MemcachedStore) -> None:
    store.set("k", [b"v"], None)
    store.close()
    assert store.get("k") == b"v"


def test_threads_never_see_each_others_replies(store: MemcachedStore) -> None:
    """8 threads x 200 keys, values of varied size: every reply belongs to its own key."""
    errors: list[str] = []

    def work(thread: int) -> None:
        for i in range(200):
            key = f"t{thread}-k{i}"
            value = key.encode() * (1 + (i * 37) % 400)
            if not store.set(key, [value], None):
                errors.append(f"set {key} failed")
            got = store.get(key)
            if got != value:
                errors.append(f"{key}: got {bytes(got)[:30]!r}")
            if i % 20 == 0:
                keys = [f"t{thread}-k{j}" for j in range(i + 1)]
                expected = [k.encode() * (1 + (j * 37) % 400) for j, k in enumerate(keys)]
                if store.get_many(keys) != expected:
                    errors.append(f"get_many in thread {thread} crossed")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- several servers --------------------------------------------------------------------


def curr_items(server: MemcachedServer) -> int:
    stats = server.command(b"stats").decode().split("\r\n")
    return next(int(line.split()[2]) for line in stats if line.startswith("STAT curr_items "))


def test_keys_spread_over_servers_and_read_back(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    servers = [memcached_factory() for _ in range(3)]
    store = MemcachedStore([s.address for s in servers])
    keys = [f"key-{i}" for i in range(300)]
    for key in keys:
        assert store.set(key, [key.encode()], None)
    counts = [curr_items(s) for s in servers]
    assert sum(counts) == 300
    assert min(counts) > 50, f"rendezvous hashing should spread 300 keys, got {counts}"
    assert store.get_many(keys) == [key.encode() for key in keys]
    # Every key is on the server the store names for it, and only there.
    for key in keys[:30]:
        mapped = memcached_key(key).encode()
        for server in servers:
            held = server.command(b"get " + mapped).startswith(b"VALUE")
            assert held == (server.address == store.server_for(key))


def test_rendezvous_moves_only_the_keys_of_a_removed_server() -> None:
    seeds = [f"10.0.0.{n}:11211".encode() + b"\0" for n in range(4)]
    keys = [f"k:{i}" for i in range(2000)]
    before = {key: rendezvous_owner(seeds, key) for key in keys}
    assert len(set(before.values())) == 4
    assert before == {key: rendezvous_owner(seeds[::-1], key) for key in keys}
    after = {key: rendezvous_owner(seeds[1:], key) for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == "10.0.0.0:11211"}


def test_a_new_store_maps_keys_the_same_way(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    addresses = [memcached_factory().address for _ in range(2)]
    MemcachedStore(addresses).set("k", [b"v"], None)
    assert MemcachedStore(list(reversed(addresses))).get("k") == b"v"


def test_max_item_size_is_the_smallest_server_limit(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    big = memcached_factory(item_size="4m")
    assert MemcachedStore([big.address]).max_item_size == 4 * 1024 * 1024
    small = memcached_factory(item_size="2m")
    store = MemcachedStore([big.address, small.address])
    assert store.max_item_size == 2 * 1024 * 1024
    assert store.max_value_size < store.max_item_size


def test_max_item_size_defaults_to_one_mib_when_no_server_answers() -> None:
    from memcached_server import free_port

    store = MemcachedStore([f"127.0.0.1:{free_port()}"])
    assert store.max_item_size == DEFAULT_ITEM_SIZE_MAX


def test_breaker_is_reusable_with_a_fake_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(cooldown=1.0, max_cooldown=4.0, clock=lambda: now[0])
    assert breaker.allow() and breaker.state == "closed"
    assert breaker.failed() is True  # outage starts
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 1.0
    assert breaker.allow() is True  # the one trial
    assert breaker.state == "half-open" and not breaker.allow()
    assert breaker.failed() is False  # same outage
    assert breaker.cooldown == 2.0
    now[0] = 3.0
    assert breaker.allow()
    breaker.failed()
    now[0] = 7.0
    assert breaker.allow()
    breaker.failed()
    assert breaker.cooldown == 4.0  # capped
    now[0] = 11.0
    assert breaker.allow()
    breaker.abandoned()  # an interrupted trial re-arms it
    assert breaker.allow()
    assert breaker.succeeded() is True  # outage over
    assert breaker.succeeded() is False
    assert breaker.state == "closed" and breaker.cooldown == 1.0


def test_breaker_lets_exactly_one_trial_through_under_contention() -> None:
    now = [0.0]
    breaker = CircuitBreaker(cooldown=1.0, clock=lambda: now[0])
    breaker.failed()
    now[0] = 2.0
    allowed: list[bool] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1
