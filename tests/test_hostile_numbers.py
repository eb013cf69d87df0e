"""No number a user gives ever turns a value's bytes into memcached commands.

memcached refuses a command line it cannot parse (an expiry past a signed 32-bit number, say)
*before* it reads the value, and then reads the value's bytes as commands of their own. Every
value here holds commands (set another key, delete a victim's key, flush the server), and
every number that reaches a command line is hostile: huge, infinite, past 2038. The tests
assert the server saw no command but ours, and that the value is kept and reads back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from call_log import Calls
from memcached_server import MemcachedServer
from pymemcache.client.base import Client

from nbcache import MemcachedCache, cached_result
from nbcache.config import cache_from
from nbcache.stores.api import CasToken
from nbcache.stores.memcached.protocol import MAX_EXPTIME
from nbcache.stores.memcached.store import (
    MAX_RELATIVE_EXPIRY,
    MemcachedStore,
    memcached_expiry,
)

pytestmark = pytest.mark.memcached

SECRET = "hostile-numbers-secret-0123456789"
#: What an attacker (or an unlucky string) would like memcached to run.
COMMANDS = "text\r\nset injected 0 0 4\r\npwnd\r\ndelete k:victim\r\nflush_all\r\n"
#: Timeouts a user may pass that memcached cannot take as they are.
HOSTILE_TIMEOUTS = [
    1e19,
    9.3e18,
    float("inf"),
    2**31,
    2**63,
    2**64,
    1e300,
    351_685_732,  # a little over 11 years: past 2038 as an absolute time
    MAX_RELATIVE_EXPIRY + 1,
    MAX_EXPTIME,
]


@pytest.fixture
def raw(memcached: MemcachedServer) -> Iterator[Client]:
    client = Client(("127.0.0.1", memcached.port), timeout=5)
    assert client.set("victim", b"still here", noreply=False)
    yield client
    client.close()


def assert_nothing_injected(raw: Client) -> None:
    assert raw.get("victim") == b"still here", "a value's bytes ran as a delete"
    assert raw.get("injected") is None, "a value's bytes ran as a set"
    assert int(raw.stats()[b"cmd_flush"]) == 0, "a value's bytes ran as flush_all"


def commands_sent(raw: Client) -> int:
    stats = raw.stats()
    return sum(int(stats[name]) for name in (b"cmd_set", b"cmd_get", b"cmd_touch"))


@pytest.mark.parametrize("timeout", HOSTILE_TIMEOUTS, ids=repr)
def test_a_hostile_timeout_keeps_the_value_and_runs_none_of_its_bytes(
    timeout: float, memcached: MemcachedServer, raw: Client
) -> None:
    cache = MemcachedCache([memcached.address], secret=SECRET)
    big = (COMMANDS * (3 * 1024 * 1024 // len(COMMANDS))).encode()  # chunked: 3 MiB
    assert cache.set("small", COMMANDS, timeout=timeout)
    assert cache.set("big", big, timeout=timeout)
    assert cache.add("added", COMMANDS, timeout=timeout)
    assert_nothing_injected(raw)
    assert cache.get("small") == COMMANDS
    assert cache.get("big") == big
    assert cache.get("added") == COMMANDS


@pytest.mark.parametrize("default_timeout", ["1e19", "9.3e18", "351685732"])
def test_a_hostile_default_timeout_in_the_url_keeps_values(
    default_timeout: str,
    memcached: MemcachedServer,
    raw: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBCACHE_SECRET", SECRET)
    cache = cache_from(f"{memcached.url}?default_timeout={default_timeout}")
    assert cache.set("k", COMMANDS)
    assert cache.inc("counter", 3) == 3
    assert cache.inc("counter", 4) == 7
    assert_nothing_injected(raw)
    assert cache.get("k") == COMMANDS


@pytest.mark.parametrize("ttl", HOSTILE_TIMEOUTS, ids=repr)
def test_every_store_command_takes_a_hostile_ttl_without_injection(
    ttl: float, memcached: MemcachedServer, raw: Client
) -> None:
    store = MemcachedStore([memcached.address])
    value = [COMMANDS.encode()]
    assert store.set("set", value, ttl)
    assert store.add("add", value, ttl)
    _, token = store.gets("set")
    assert isinstance(token, CasToken)
    assert store.cas("set", [b"cas " + value[0]], ttl, token)
    assert store.set_chunks([("chunk-0", value), ("chunk-1", value)], ttl)
    assert_nothing_injected(raw)
    assert store.get("set") == b"cas " + value[0]
    assert store.get_many(["add", "chunk-0", "chunk-1"]) == value * 3


@pytest.mark.parametrize("ttl", [0, -1, -1e19, float("nan"), float("-inf")], ids=repr)
def test_a_ttl_that_is_not_positive_is_refused_before_anything_is_sent(
    ttl: float, memcached: MemcachedServer, raw: Client
) -> None:
    store = MemcachedStore([memcached.address])
    value = [COMMANDS.encode()]
    before = commands_sent(raw)
    for write in (
        lambda: store.set("k", value, ttl),
        lambda: store.add("k", value, ttl),
        lambda: store.cas("k", value, ttl, CasToken(b"1")),
        lambda: store.set_chunks([("k", value)], ttl),
    ):
        with pytest.raises(ValueError, match="ttl"):
            write()
    assert commands_sent(raw) == before
    assert_nothing_injected(raw)


def test_memcached_expiry_is_always_a_number_memcached_parses() -> None:
    now = time.time()
    for ttl in [*HOSTILE_TIMEOUTS, None, 1e-9, 0.5, 1, 300, MAX_RELATIVE_EXPIRY, 1e9, 2e9]:
        exptime = memcached_expiry(ttl, now)
        assert isinstance(exptime, int) and 0 <= exptime <= MAX_EXPTIME, (ttl, exptime)
        if ttl is not None and not math.isinf(ttl) and now + ttl < MAX_EXPTIME:
            assert exptime != 0, f"a ttl of {ttl} s must not become 'never expires'"


def test_a_function_cached_for_fifty_years_hits(memcached: MemcachedServer) -> None:
    cache = MemcachedCache([memcached.address], secret=SECRET)
    calls = Calls()

    @cached_result(cache=cache, timeout=50 * 365 * 24 * 3600)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert [double(21) for _ in range(3)] == [42, 42, 42]
    assert calls == [21]
