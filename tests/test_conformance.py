"""One conformance suite, every backend: the Flask/cachelib contract users rely on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from memcached_server import MemcachedServer

from nbcache import GAEMemcachedCache, MemcachedCache, SimpleCache, UnpicklableValueError
from nbcache.cache import Cache

SECRET = "conformance-suite-secret-0123456789"


@pytest.fixture(params=["simple", pytest.param("memcached", marks=pytest.mark.memcached), "gae"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "simple":
        yield SimpleCache()
        return
    if request.param == "gae":
        request.getfixturevalue("gae_memcache")
        yield GAEMemcachedCache(secret=SECRET)
        return
    server: MemcachedServer = request.getfixturevalue("memcached")
    yield MemcachedCache([server.address], secret=SECRET)


def main_module_objects() -> dict[str, Any]:
    """A class and functions defined in ``__main__``, as in a notebook (pickled by value)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "    def norm(self):\n"
        "        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
        "def make_adder(n):\n"
        "    def add(x):\n"
        "        return x + n\n"
        "    return add\n",
        namespace,
    )
    return namespace


def test_get_is_none_on_a_miss_and_set_returns_true(cache: Cache) -> None:
    assert cache.get("missing") is None
    assert cache.set("my-item", {"a": 1}, timeout=5 * 60) is True
    assert cache.get("my-item") == {"a": 1}


def test_stored_none_is_told_from_a_miss_by_has(cache: Cache) -> None:
    assert cache.set("none", None)
    assert cache.get("none") is None
    assert cache.has("none")
    assert not cache.has("missing")


def test_bools_stay_bools(cache: Cache) -> None:
    cache.set_many({"t": True, "f": False, "one": 1})
    t, f, one = cache.get_many("t", "f", "one")
    assert t is True and f is False
    assert one == 1 and type(one) is int


def test_add_stores_only_if_not_live(cache: Cache) -> None:
    assert cache.add("k", 1)
    assert not cache.add("k", 2)
    assert cache.get("k") == 1
    cache.set("short", 1, timeout=1)
    time.sleep(1.2)
    assert cache.add("short", 2), "an expired key is not live: add must store"
    assert cache.get("short") == 2


def test_delete_and_delete_many(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.delete_many("b", "c", "zz") == ["b", "c"]
    assert cache.get_many("a", "b", "c") == [None, None, None]


def test_get_many_and_get_dict_keep_order(cache: Cache) -> None:
    assert cache.set_many({"x": 1, "y": 2}) == ["x", "y"]
    assert cache.get_many("y", "nope", "x") == [2, None, 1]
    assert cache.get_dict("x", "nope") == {"x": 1, "nope": None}


def test_inc_dec(cache: Cache) -> None:
    assert cache.inc("n") == 1
    assert cache.inc("n", 5) == 6
    assert cache.dec("n", 2) == 4
    assert cache.dec("fresh") == -1
    assert cache.get("n") == 4


def test_inc_is_atomic_across_threads(cache: Cache) -> None:
    def bump() -> None:
        for _ in range(25):
            assert cache.inc("counter") is not None

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("counter") == 100


def test_clear(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": 2})
    assert cache.clear()
    assert cache.get_many("a", "b") == [None, None]
    assert cache.set("a", 3) and cache.get("a") == 3


def test_timeouts_none_default_zero_never_negative_expired(cache: Cache) -> None:
    # memcached counts whole seconds: an item stored for 2 s lives 1-2 s, so the read below
    # finds it even if the server's clock ticks between the write and the read.
    cache.default_timeout = 2
    cache.set("default", 1)  # None: the default (2 s here)
    cache.set("forever", 2, timeout=0)
    cache.set("expired", 3, timeout=-1)
    cache.set("long", 4, timeout=40 * 24 * 3600)  # over 30 days: must stay relative
    assert not cache.has("expired")
    assert cache.get("default") == 1
    time.sleep(2.2)
    assert cache.get("default") is None
    assert cache.get("forever") == 2
    assert cache.get("long") == 4


def test_negative_timeout_replaces_an_older_value(cache: Cache) -> None:
    cache.set("k", "old")
    assert cache.set("k", "new", timeout=-5)
    assert cache.get("k") is None


def test_entry_metadata(cache: Cache) -> None:
    before = time.time()
    cache.entries.set("k", 1, timeout=60, duration=2.5, meta={"why": "test"})
    entry = cache.get_entry("k")
    assert not isinstance(entry, type(None))
    assert entry.value == 1  # type: ignore[union-attr]
    assert entry.duration == 2.5  # type: ignore[union-attr]
    assert entry.meta == {"why": "test"}  # type: ignore[union-attr]
    assert before - 1 <= entry.created <= time.time()  # type: ignore[union-attr]
    assert entry.expires is not None and 58 < entry.expires - time.time() <= 60  # type: ignore[union-attr]


def test_notebook_objects_round_trip(cache: Cache) -> None:
    ns = main_module_objects()
    cache.set("point", ns["Point"](3, 4))
    cache.set("adder", ns["make_adder"](10))
    cache.set("lambda", lambda x: x * 2)
    cache.set("class", ns["Point"])
    assert cache.get("point").norm() == 5.0
    assert cache.get("adder")(1) == 11
    assert cache.get("lambda")(21) == 42
    assert cache.get("class")(6, 8).norm() == 10.0


def test_numpy_and_pandas_round_trip(cache: Cache) -> None:
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    frame = pd.DataFrame(
        {"x": np.arange(5), "name": list("abcde"), "t": pd.date_range("2026-01-01", periods=5)}
    ).set_index("name")
    cache.set("array", array)
    cache.set("frame", frame)
    got = cache.get("array")
    assert got.dtype == np.float32 and got.shape == (10, 100)
    np.testing.assert_array_equal(got, array)
    pd.testing.assert_frame_equal(cache.get("frame"), frame)


def test_returned_object_is_the_callers_own_copy(cache: Cache) -> None:
    cache.set("list", [1, 2, 3])
    cache.set("array", np.zeros(100_000))
    mine = cache.get("list")
    mine.append(4)
    array = cache.get("array")
    array[0] = 99.0  # writable, and the cache keeps its own
    assert cache.get("list") == [1, 2, 3]
    assert cache.get("array")[0] == 0.0


def test_unpicklable_value_raises_naming_the_type_and_keeps_the_old_value(cache: Cache) -> None:
    cache.set("k", "old")
    with pytest.raises(UnpicklableValueError, match="lock"):
        cache.set("k", {"lock": threading.Lock()})
    assert cache.get("k") == "old"


def test_fifty_megabyte_array_round_trips(cache: Cache) -> None:
    array = np.random.default_rng(7).random(50 * 1024 * 1024 // 8)
    assert cache.set("big", array)
    np.testing.assert_array_equal(cache.get("big"), array)


def test_keys_of_any_length_and_characters(cache: Cache) -> None:
    keys = ["a b", "ключ", "x" * 1000, "tab\there", "new\nline", "", "a:b", "a" * 249]
    for index, key in enumerate(keys):
        assert cache.set(key, index), key
    assert cache.get_many(*keys) == list(range(len(keys)))


def test_bad_timeout_is_a_clear_error(cache: Cache) -> None:
    with pytest.raises(TypeError, match="timeout"):
        cache.set("k", 1, timeout="5 minutes")  # type: ignore[arg-type]
