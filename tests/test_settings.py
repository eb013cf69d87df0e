"""Every bad setting fails where it is given, with a ConfigurationError naming it and its value.

A setting that cannot work (a zero timeout, NaN, a port past 65535) used to be accepted; the
cache then never worked and its warnings blamed the server. Secrets and passwords are never
echoed in a message.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import pytest
from memcached_server import MemcachedServer

from nbcache import ConfigurationError, MemcachedCache, SimpleCache, cached_result
from nbcache.cache import Cache
from nbcache.config import cache_from

SECRET = "settings-tests-secret-0123456789"
NOT_A_WAIT = [0, -1, math.nan, math.inf, "2", None, True]
NOT_A_LIFETIME = [-1, -0.5, math.nan, math.inf, "300", None, True]


@pytest.mark.parametrize("setting", ["timeout", "connect_timeout"])
@pytest.mark.parametrize("value", NOT_A_WAIT, ids=repr)
def test_a_memcached_wait_that_bounds_nothing_is_refused(setting: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"{setting}={value!r}"):
        MemcachedCache(["127.0.0.1:11211"], secret=SECRET, **{setting: value})


@pytest.mark.parametrize("setting", ["timeout", "connect_timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_memcached_wait_in_the_url_that_bounds_nothing_is_refused(
    setting: str, value: str
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        cache_from(f"memcached://127.0.0.1:11211?{setting}={value}")


@pytest.mark.parametrize("value", NOT_A_LIFETIME, ids=repr)
def test_a_default_timeout_that_is_not_a_lifetime_is_refused_by_every_cache(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"default_timeout={value!r}"):
        SimpleCache(default_timeout=value)
    with pytest.raises(ConfigurationError, match=f"default_timeout={value!r}"):
        MemcachedCache(["127.0.0.1:11211"], default_timeout=value, secret=SECRET)
    cache = SimpleCache()
    with pytest.raises(ConfigurationError, match="default_timeout"):
        cache.default_timeout = value
    assert cache.default_timeout == 300


@pytest.mark.parametrize("url", ["simple://?default_timeout=nan", "simple://?default_timeout=-5"])
def test_a_default_timeout_in_the_url_that_is_not_a_lifetime_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="default_timeout"):
        cache_from(url)


@pytest.mark.parametrize(
    ("url", "setting"),
    [
        ("simple://?threshold=0", "threshold=0"),
        ("simple://?threshold=-3", "threshold=-3"),
        ("simple://?max_bytes=0", "max_bytes=0"),
    ],
)
def test_simple_cache_bounds_below_one_are_configuration_errors(url: str, setting: str) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        cache_from(url)


@pytest.mark.parametrize(
    "servers",
    [
        ["127.0.0.1:99999"],
        ["127.0.0.1:0"],
        "127.0.0.1:11211,127.0.0.1:65536",
    ],
)
def test_a_port_out_of_range_is_refused(servers: Any) -> None:
    with pytest.raises(ConfigurationError, match="port from 1 to 65535"):
        MemcachedCache(servers, secret=SECRET)


def test_a_port_out_of_range_in_the_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="99999"):
        cache_from("memcached://127.0.0.1:99999")


@pytest.mark.parametrize(
    "make",
    [
        lambda: cache_from("memcached://admin:hunter2-password@127.0.0.1:11211"),
        lambda: MemcachedCache(["admin:hunter2-password@127.0.0.1:11211"], secret=SECRET),
    ],
)
def test_a_user_name_and_password_are_refused_without_echoing_them(make: Any) -> None:
    with pytest.raises(ConfigurationError, match="user name or password") as raised:
        make()
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1:11211" in str(raised.value)


@pytest.mark.parametrize("value", [math.nan, -1, "300"], ids=repr)
def test_a_cached_function_timeout_that_is_not_a_lifetime_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"timeout={value!r}"):

        @cached_result(timeout=value)
        def f() -> int:
            return 1


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf], ids=repr)
def test_a_cached_function_lease_that_bounds_nothing_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"lease={value!r}"):

        @cached_result(lease=value)
        def f() -> int:
            return 1


@pytest.fixture(params=["simple", "memcached"])
def cache(request: pytest.FixtureRequest) -> Cache:
    if request.param == "simple":
        return SimpleCache()
    server: MemcachedServer = request.getfixturevalue("memcached")
    return MemcachedCache([server.address], secret=SECRET)


@pytest.mark.memcached
@pytest.mark.parametrize("key", [1, 2.5, b"bytes", ("a", 1), None], ids=repr)
def test_a_key_that_is_not_a_string_is_the_same_type_error_on_every_backend(
    cache: Cache, key: Any
) -> None:
    for operation in (
        lambda: cache.set(key, 1),
        lambda: cache.get(key),
        lambda: cache.add(key, 1),
        lambda: cache.has(key),
        lambda: cache.delete(key),
        lambda: cache.inc(key),
        lambda: cache.get_many("fine", key),
    ):
        with pytest.raises(TypeError, match=f"cache keys are str, not {type(key).__name__}"):
            operation()


@pytest.mark.memcached
def test_a_secret_variable_that_is_not_utf8_is_used_as_its_bytes(
    memcached: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCACHE_SECRET", os.fsdecode(b"\xff\xfe secret bytes \x80\x81 0123456789"))
    writer = MemcachedCache([memcached.address])
    reader = MemcachedCache([memcached.address])
    assert writer.set("k", "shared")
    assert reader.get("k") == "shared"


@pytest.mark.parametrize("value", [",", " , ,", "short", "long-enough-0123456789,short"])
def test_a_secret_variable_without_usable_secrets_names_the_variable_not_the_secret(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCACHE_SECRET", value)
    with pytest.raises(ConfigurationError, match="NBCACHE_SECRET") as raised:
        MemcachedCache(["127.0.0.1:11211"])
    assert "short" not in str(raised.value)
    assert "long-enough" not in str(raised.value)


def test_inc_never_raises_when_the_store_cannot_take_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An item limit with no room for a value (a server started with a tiny ``-I``) is a
    fault like any other: None and a warning, never an exception into the caller."""
    from nbcache.stores.chunked import ChunkedStore
    from nbcache.stores.memory import MemoryStore

    cache = Cache(ChunkedStore(MemoryStore(), max_item_size=520), name="tiny")
    caplog.set_level(logging.DEBUG, logger="nbcache")
    assert cache.inc("n") is None
    assert cache.set("k", 1) is False
    assert cache.get("k") is None
