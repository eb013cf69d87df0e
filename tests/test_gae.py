"""App Engine's memcache backend, against the service stub the App Engine SDK runs in-process.

The contract every cache keeps is in test_conformance.py (which runs on this backend too);
here is what is particular to App Engine's service: its value limit, its reading of long
expiries, its faults, its shared namespace, its SDK's habits (unpickling what it reads,
hashing long keys), and the ways users reach it (configure, @cached_result, %%cache).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbcache
from nbcache import GAEMemcachedCache
from nbcache.cache import Cache
from nbcache.stores.api import NO_VALUE, ByteStore
from nbcache.stores.gae import MAX_VALUE_SIZE, GAEMemcacheStore
from nbcache.stores.memcached.keys import memcached_key

SECRET = "app-engine-tests-secret-0123456789"
THIRTY_DAYS = 30 * 24 * 3600


@pytest.fixture
def cache(gae_memcache: Any) -> GAEMemcachedCache:
    return GAEMemcachedCache(secret=SECRET)


@pytest.fixture
def store(gae_memcache: Any) -> GAEMemcacheStore:
    return GAEMemcacheStore()


def service_client() -> Any:
    """A plain client of the service, as other code of the same app would use it."""
    from google.appengine.api import memcache

    return memcache.Client()


def raw_key(cache: Cache, key: str) -> str:
    """The service key under which ``cache`` keeps the record of ``key``."""
    return memcached_key(cache.store.inner_key(key))  # type: ignore[attr-defined]


def nbcache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("nbcache") and record.levelno >= logging.WARNING
    ]


# -- the store on the service --------------------------------------------------------------


def test_is_a_byte_store(store: GAEMemcacheStore) -> None:
    assert isinstance(store, ByteStore)


def test_a_value_over_the_service_limit_is_refused_with_false(store: GAEMemcacheStore) -> None:
    assert store.set("fits", [b"x" * (MAX_VALUE_SIZE - 10), b"y" * 10], None) is True
    assert bytes(store.get("fits")) == b"x" * (MAX_VALUE_SIZE - 10) + b"y" * 10  # type: ignore[arg-type]
    too_big = [b"z" * (MAX_VALUE_SIZE + 1)]
    assert store.set("too-big", too_big, None) is False
    assert store.add("too-big", too_big, None) is False
    assert store.set_chunks([("chunk-0", [b"ok"]), ("chunk-1", too_big)], None) is False
    assert store.get("too-big") is NO_VALUE


def test_the_cache_chunks_what_the_store_would_refuse(cache: GAEMemcachedCache) -> None:
    value = os.urandom(3 * MAX_VALUE_SIZE)
    assert cache.set("big", value) is True
    assert cache.get("big") == value


@pytest.mark.slow
def test_a_fifty_megabyte_array_is_stored_in_items_the_service_takes(
    cache: GAEMemcachedCache,
) -> None:
    from google.appengine.api import memcache

    array = np.random.default_rng(16).random(50 * 1024 * 1024 // 8)
    assert cache.set("big", array)
    np.testing.assert_array_equal(cache.get("big"), array)
    stats = memcache.get_stats()
    assert stats["items"] >= array.nbytes // MAX_VALUE_SIZE  # chunks of at most 1 MB
    assert stats["bytes"] < array.nbytes * 1.01


@pytest.mark.slow
def test_a_ttl_over_thirty_days_is_sent_as_a_date_the_service_reads_right(
    store: GAEMemcacheStore,
) -> None:
    forty_days = 40 * 24 * 3600
    assert store.set("long", [b"kept"], forty_days)
    assert store.get("long") == b"kept"
    item = service_client().peek(memcached_key("long"), namespace="")
    assert abs(item.get_expiration_time_sec() - (time.time() + forty_days)) < 60
    assert store.set("short", [b"gone"], 1)
    time.sleep(1.2)
    assert store.get("short") is NO_VALUE


def test_compare_and_set_add_and_delete(store: GAEMemcacheStore) -> None:
    assert store.gets("k") == (NO_VALUE, None)
    assert store.add("k", [b"first"], None) is True
    assert store.add("k", [b"second"], None) is False
    value, token = store.gets("k")
    assert value == b"first" and token is not None
    assert store.cas("k", [b"swapped"], None, token) is True
    assert store.cas("k", [b"again"], None, token) is False, "a used token must not match"
    _, stale = store.gets("k")
    assert stale is not None
    assert store.set("k", [b"someone else"], None)
    assert store.cas("k", [b"late"], None, stale) is False
    assert store.get("k") == b"someone else"
    assert store.delete("k") is True
    assert store.delete("k") is False


def test_long_keys_never_meet_a_short_key_equal_to_their_sdk_hash(
    store: GAEMemcacheStore,
) -> None:
    long_key = "x" * 300
    # The SDK itself would store a key over 250 bytes under its bare SHA-1 in hex: this key.
    sdk_hash = hashlib.sha1(long_key.encode()).hexdigest()
    assert store.set(long_key, [b"long"], None)
    assert store.set(sdk_hash, [b"short"], None)
    assert store.get_many([long_key, sdk_hash]) == [b"long", b"short"]


def test_many_values_read_and_written_in_batches_keep_their_places(
    store: GAEMemcacheStore,
) -> None:
    keys = [f"chunk-{i}" for i in range(70)]
    assert store.set_chunks([(key, [key.encode() * 1000]) for key in keys], None)
    targets = [memoryview(bytearray(len(key) * 1000)) for key in keys]
    assert store.get_chunks_into([*keys[:-1], "missing"], targets) == [True] * 69 + [False]
    assert [bytes(target) for target in targets[:-1]] == [key.encode() * 1000 for key in keys[:-1]]
    assert store.get_many(["missing", *keys]) == [NO_VALUE, *(k.encode() * 1000 for k in keys)]


def test_the_namespace_of_the_request_does_not_move_entries(cache: GAEMemcachedCache) -> None:
    from google.appengine.api import namespace_manager

    assert cache.set("k", "written in the default namespace")
    namespace_manager.set_namespace("tenant-7")
    try:
        assert cache.get("k") == "written in the default namespace"
        assert cache.set("k2", "written in a tenant's request")
    finally:
        namespace_manager.set_namespace("")
    assert cache.get("k2") == "written in a tenant's request"


# -- sharing the service -------------------------------------------------------------------


def test_clear_forgets_its_own_prefix_and_leaves_another_alone(gae_memcache: Any) -> None:
    mine = GAEMemcachedCache(key_prefix="mine", secret=SECRET)
    theirs = GAEMemcachedCache(key_prefix="theirs", secret=SECRET)
    big = os.urandom(2 * MAX_VALUE_SIZE)
    for cache in (mine, theirs):
        assert cache.set_many({"a": 1, "big": big}) == ["a", "big"]
    assert mine.clear()
    assert mine.get_many("a", "big") == [None, None]
    assert theirs.get_many("a", "big") == [1, big]


def test_every_instance_of_the_app_shares_entries_and_clears(gae_memcache: Any) -> None:
    instance_a = GAEMemcachedCache(secret=SECRET)
    instance_b = GAEMemcachedCache(secret=SECRET)
    assert instance_a.set("k", {"from": "a"})
    assert instance_b.get("k") == {"from": "a"}
    assert instance_b.clear()
    assert instance_a.get("k") is None


def test_an_entry_signed_with_another_secret_is_a_miss(gae_memcache: Any) -> None:
    assert GAEMemcachedCache(secret="another-version-of-the-app-secret").set("k", 1)
    assert GAEMemcachedCache(secret=SECRET).get("k") is None


class Planted:
    """A pickle whose loading runs code: what a hostile writer would store."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, ("import builtins; builtins.nbcache_planted_ran = True",)


@pytest.fixture
def planted_flag() -> Iterator[None]:
    yield
    if hasattr(builtins, "nbcache_planted_ran"):
        del builtins.nbcache_planted_ran


def test_a_pickle_planted_under_its_keys_is_never_unpickled(
    cache: GAEMemcachedCache, planted_flag: None, caplog: pytest.LogCaptureFixture
) -> None:
    client = service_client()
    # The control: the SDK's own client runs a planted pickle as it reads it.
    assert client.set("control", Planted())
    client.get("control")
    assert builtins.nbcache_planted_ran is True  # type: ignore[attr-defined]
    del builtins.nbcache_planted_ran

    assert cache.set("k", "mine")
    assert client.set(raw_key(cache, "k"), Planted(), namespace="")
    generation = memcached_key(cache.store.generation_key)  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert cache.get("k") is None
        assert client.set(generation, Planted(), namespace="")
        assert cache.get("k") is None
    assert not hasattr(builtins, "nbcache_planted_ran"), "a planted pickle was loaded"
    assert nbcache_warnings(caplog), "a planted value goes unnoticed"
    # Both planted items are replaced by the next writes: caching resumes.
    assert cache.set("k", "mine again")
    assert cache.get("k") == "mine again"


@pytest.mark.parametrize("planted", ["text", 12345, True])
def test_a_value_of_another_type_under_its_keys_is_a_miss_then_replaced(
    cache: GAEMemcachedCache, planted: object
) -> None:
    client = service_client()
    assert cache.set("k", "mine")
    generation = memcached_key(cache.store.generation_key)  # type: ignore[attr-defined]
    for key in (raw_key(cache, "k"), generation):
        assert client.set(key, planted, namespace="")
        assert cache.get("k") is None
        assert cache.set("k", "mine again"), "something planted blocks writes for good"
        assert cache.get("k") == "mine again"


def test_an_evicted_chunk_makes_a_miss_never_a_mixed_value(cache: GAEMemcachedCache) -> None:
    value = os.urandom(5 * MAX_VALUE_SIZE)
    assert cache.set("big", value)
    chunks = cache.store.inner.chunk_keys(cache.store.inner_key("big"))  # type: ignore[attr-defined]
    assert len(chunks) >= 5
    assert service_client().delete(memcached_key(chunks[2]), namespace="")
    assert cache.get("big") is None
    assert cache.set("big", value) and cache.get("big") == value


# -- the service's faults ------------------------------------------------------------------


def service_errors() -> list[Any]:
    from google.appengine.api.memcache import memcache_service_pb2
    from google.appengine.runtime import apiproxy_errors

    return [
        apiproxy_errors.CapabilityDisabledError("memcache is in maintenance"),
        apiproxy_errors.OverQuotaError("the app's memcache quota is used up"),
        apiproxy_errors.DeadlineExceededError("the call took too long"),
        apiproxy_errors.ApplicationError(
            memcache_service_pb2.MemcacheServiceError.UNSPECIFIED_ERROR, "unavailable"
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("error_index", range(4))
def test_a_failing_service_costs_misses_and_one_warning_then_caching_resumes(
    cache: GAEMemcachedCache,
    gae_memcache: Any,
    error_index: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = service_errors()[error_index]
    assert cache.set("k", "cached")
    gae_memcache.SetError(error)
    with caplog.at_level(logging.INFO, logger="nbcache"):
        for _ in range(3):
            assert cache.get("k") is None
            assert cache.set("k", "new") is False
            assert cache.add("other", 1) is False
            assert not cache.has("k")
        assert cache.inc("n") is None
        assert cache.clear() is False
        (warning,) = nbcache_warnings(caplog)
        assert type(error).__name__ in warning
        gae_memcache.SetError(None)
        time.sleep(1.2)  # the circuit breaker's first cool-down
        assert cache.get("k") == "cached"
    assert any("is back" in record.getMessage() for record in caplog.records)
    assert cache.set("k", "new") and cache.get("k") == "new"


def test_without_the_service_in_the_process_a_warning_says_how_to_set_it_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = GAEMemcachedCache(secret=SECRET)  # no testbed, not on App Engine
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert cache.get("k") is None
        assert cache.set("k", 1) is False
    (warning,) = nbcache_warnings(caplog)
    assert "app_engine_apis" in warning and "testbed" in warning


@pytest.mark.slow
def test_every_call_is_bounded_by_the_timeout(gae_memcache: Any) -> None:
    from google.appengine.api import apiproxy_stub_map

    deadlines: list[float | None] = []

    def record(service: str, call: str, request: Any, response: Any, rpc: Any) -> None:
        deadlines.append(rpc.deadline)

    apiproxy_stub_map.apiproxy.GetPreCallHooks().Append("deadlines", record, "memcache")
    cache = GAEMemcachedCache(secret=SECRET, timeout=0.75)
    assert cache.set("small", 1) and cache.get("small") == 1
    assert cache.set("big", os.urandom(40 * MAX_VALUE_SIZE)) and cache.get("big") is not None
    assert cache.inc("n") == 1 and cache.delete("small") and cache.clear()
    assert len(deadlines) > 10
    assert set(deadlines) == {0.75}


# -- how users reach it --------------------------------------------------------------------


def test_configure_with_a_gae_url(gae_memcache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = nbcache.configure("gae://?key_prefix=team&default_timeout=60&timeout=1.5")
    assert isinstance(cache, GAEMemcachedCache)
    assert (cache.key_prefix, cache.default_timeout) == ("team", 60.0)
    assert cache.store.inner.inner.deadline == 1.5  # type: ignore[attr-defined]
    assert cache.set("k", 1) and nbcache.get_cache().get("k") == 1

    monkeypatch.setenv("NBCACHE_URL", "gae://")
    from_environment = nbcache.configure(None)
    assert isinstance(from_environment, GAEMemcachedCache)
    assert from_environment.key_prefix.startswith("nbcache-")  # derived from the secret


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gae://memcache.example:11211", "takes no server"),
        ("gae://?servers=a", "unknown option 'servers'"),
        ("gae://?timeout=soon", "not a valid float"),
    ],
)
def test_a_bad_gae_url_is_a_clear_error(gae_memcache: Any, url: str, message: str) -> None:
    with pytest.raises(nbcache.ConfigurationError, match=message):
        nbcache.configure(url)


class Runs(list[Any]):
    """A call log the function under test appends to; its digest is constant (state is not
    an input)."""

    def __nbcache_token__(self) -> str:
        return "runs"


def test_cached_result_on_app_engine_memcache(gae_memcache: Any) -> None:
    nbcache.configure("gae://")
    runs = Runs()

    @nbcache.cached_result
    def features(n: int) -> np.ndarray:
        runs.append(n)
        return np.arange(n, dtype=np.float64) * 2

    np.testing.assert_array_equal(features(300_000), np.arange(300_000) * 2.0)
    np.testing.assert_array_equal(features(300_000), np.arange(300_000) * 2.0)
    assert runs == [300_000]
    assert features.cache_info().hits == 1
    # Another instance of the app (another cache object on the same service) hits too.
    nbcache.configure("gae://")
    features(300_000)
    assert runs == [300_000]


def test_a_cell_cached_on_app_engine_memcache_is_restored(
    gae_memcache: Any, ipython_shell: Any, tmp_path: Path
) -> None:
    from IPython.utils.capture import capture_output

    nbcache.configure(GAEMemcachedCache(secret=SECRET))
    shell = ipython_shell
    counter = tmp_path / "runs.txt"
    assert shell.run_cell("%load_ext nbcache").success
    assert shell.run_cell(
        f"def count_run():\n    with open({str(counter)!r}, 'a') as f:\n        f.write('ran\\n')"
    ).success
    shell.run_cell("data = list(range(5))")
    cell = "%%cache doubled\ncount_run()\nX = [v * 2 for v in data]\nprint('len', len(X))"
    assert shell.run_cell(cell).success
    shell.run_cell("del X")
    with capture_output() as captured:
        assert shell.run_cell(cell).success
    assert counter.read_text().count("ran") == 1, "the cell ran again on a hit"
    assert shell.user_ns["X"] == [0, 2, 4, 6, 8]
    note, _, replayed = captured.stdout.partition("\n")
    assert note.startswith("nbcache: restored X from App Engine memcache (computed ")
    assert replayed.startswith("len 5")


# -- the optional dependency ---------------------------------------------------------------


def test_without_the_sdk_the_backend_says_what_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["google.appengine"] = None  # as if appengine-python-standard were absent
        import nbcache
        for make in (lambda: nbcache.GAEMemcachedCache(), lambda: nbcache.configure("gae://")):
            try:
                make()
            except nbcache.ConfigurationError as error:
                print("refused:", error)
        print("simple still works:", nbcache.SimpleCache().set("k", 1))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    for line in lines[:2]:
        assert line.startswith("refused:") and 'pip install "nbcache[gae]"' in line
    assert lines[2] == "simple still works: True"


def test_importing_nbcache_never_imports_the_sdk() -> None:
    code = (
        "import sys, nbcache, nbcache.cache, nbcache.config; nbcache.GAEMemcachedCache; "
        "nbcache.configure('simple://'); "
        "print(sorted(m for m in sys.modules if m.startswith('google.appengine')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
