"""ChunkedStore: values of any size in a store of small items, all or nothing.

Runs against a small dict store (where the test can see and damage every item) and against a
real memcached with its stock 1 MiB item limit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

import pytest
from memcached_server import MemcachedServer

from nbcache.exceptions import StoreFault
from nbcache.stores.api import ITEM_OVERHEAD, NO_VALUE, Buffer, ByteStore, CasToken, NoValue, join
from nbcache.stores.chunked import CHUNK_TTL_MARGIN, ChunkedStore
from nbcache.stores.memcached.store import MemcachedStore

Read: TypeAlias = bytes | bytearray | memoryview | NoValue
REPO = Path(__file__).resolve().parent.parent

#: Small items for the dict store, so big values have many chunks and tests stay fast.
SMALL_ITEM = ITEM_OVERHEAD + 1000


class DictStore:
    """A ByteStore in a dict that records each key's ttl and can refuse items over a size."""

    def __init__(self, max_item_size: int | None = None) -> None:
        self.items: dict[str, tuple[bytes, float | None, int]] = {}
        self.limit = max_item_size
        self._lock = threading.Lock()
        self._version = 0

    @property
    def max_item_size(self) -> int | None:
        return self.limit

    def get(self, key: str) -> Read:
        with self._lock:
            item = self.items.get(key)
        return NO_VALUE if item is None else item[0]

    def get_many(self, keys: Sequence[str]) -> list[Read]:
        return [self.get(key) for key in keys]

    def gets(self, key: str) -> tuple[Read, CasToken | None]:
        with self._lock:
            item = self.items.get(key)
        return (NO_VALUE, None) if item is None else (item[0], CasToken(item[2]))

    def _put(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        data = join(value)
        if self.limit is not None and len(data) + len(key) > self.limit:
            return False
        self._version += 1
        self.items[key] = (data, ttl, self._version)
        return True

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        with self._lock:
            return self._put(key, value, ttl)

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        with self._lock:
            return key not in self.items and self._put(key, value, ttl)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        with self._lock:
            item = self.items.get(key)
            return item is not None and item[2] == token.value and self._put(key, value, ttl)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self.items.pop(key, None) is not None

    def clear(self) -> bool:
        with self._lock:
            self.items.clear()
        return True

    def close(self) -> None:
        pass


class FaultyStore(DictStore):
    """A DictStore whose server has gone away."""

    def get_many(self, keys: Sequence[str]) -> list[Read]:
        raise StoreFault("server 127.0.0.1:1 is down")

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        raise StoreFault("server 127.0.0.1:1 is down")


def pattern(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes, different for each seed."""
    import numpy as np

    return np.random.default_rng(seed).bytes(size)


@pytest.fixture
def inner() -> DictStore:
    return DictStore(SMALL_ITEM)


@pytest.fixture
def store(inner: DictStore) -> ChunkedStore:
    return ChunkedStore(inner)


@pytest.fixture
def memcached_store(memcached: MemcachedServer) -> Iterator[MemcachedStore]:
    mc = MemcachedStore([memcached.address])
    yield mc
    mc.close()


def test_is_a_byte_store(store: ChunkedStore) -> None:
    assert isinstance(store, ByteStore)


# -- inline values and the size boundary ------------------------------------------------------


def test_small_value_is_one_inline_item(store: ChunkedStore, inner: DictStore) -> None:
    assert store.set("k", [b"hello ", memoryview(b"world")], None)
    assert bytes(store.get("k")) == b"hello world"
    assert list(inner.items) == ["k"]


def test_empty_value_round_trips(store: ChunkedStore) -> None:
    assert store.set("k", [], None)
    assert bytes(store.get("k")) == b""
    assert store.set("k", [b""], None)
    assert bytes(store.get("k")) == b""


def test_value_at_the_inline_limit_is_one_item_one_byte_more_is_chunked(
    store: ChunkedStore, inner: DictStore
) -> None:
    at_limit = pattern(store.inline_limit, 1)
    assert store.set("k", [at_limit], None)
    assert bytes(store.get("k")) == at_limit
    assert list(inner.items) == ["k"]

    over = pattern(store.inline_limit + 1, 2)
    assert store.set("k", [over], None)
    assert bytes(store.get("k")) == over
    assert len(store.chunk_keys("k")) == 1


def test_big_value_in_many_buffers_round_trips(store: ChunkedStore) -> None:
    # Buffer boundaries fall inside chunks and chunk boundaries inside buffers.
    parts = [pattern(n, n) for n in (1, 999, 1000, 1001, 3333, 0, 7)]
    assert store.set(
        "k", [parts[0], bytearray(parts[1]), *(memoryview(part) for part in parts[2:])], None
    )
    assert bytes(store.get("k")) == b"".join(parts)
    assert len(store.chunk_keys("k")) == -(-sum(map(len, parts)) // store.chunk_size)


def test_multidimensional_buffer_is_read_as_its_bytes(store: ChunkedStore) -> None:
    import numpy as np

    array = np.arange(3000, dtype=np.float64).reshape(100, 30)
    assert store.set("k", [memoryview(array)], None)  # type: ignore[arg-type]
    assert bytes(store.get("k")) == array.tobytes()


def test_get_many_mixes_inline_chunked_and_missing(store: ChunkedStore) -> None:
    big = pattern(5000, 3)
    store.set("small", [b"s"], None)
    store.set("big", [big], None)
    got = store.get_many(["big", "nothing", "small"])
    assert [bytes(v) if v is not NO_VALUE else v for v in got] == [big, NO_VALUE, b"s"]


def test_item_limit_comes_from_argument_callable_or_inner(inner: DictStore) -> None:
    assert ChunkedStore(inner).chunk_size == SMALL_ITEM - ITEM_OVERHEAD
    assert ChunkedStore(inner, 5000).chunk_size == 5000 - ITEM_OVERHEAD
    assert ChunkedStore(inner, lambda: 6000).chunk_size == 6000 - ITEM_OVERHEAD
    assert ChunkedStore(DictStore()).chunk_size == 1024 * 1024 - ITEM_OVERHEAD


# -- damage is a miss ---------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("nbcache.stores.chunk") and r.levelno == logging.WARNING
    ]


def test_evicted_chunk_is_a_quiet_miss(
    store: ChunkedStore, inner: DictStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Eviction is normal in memcached: logged at DEBUG, no warning."""
    store.set("k", [pattern(5000, 4)], None)
    inner.delete(store.chunk_keys("k")[2])
    with caplog.at_level(logging.DEBUG, logger="nbcache"):
        assert store.get("k") is NO_VALUE
        assert store.get_many(["k"]) == [NO_VALUE]
        assert store.gets("k") == (NO_VALUE, None)
    assert "chunk 2 is missing" in caplog.text
    assert warnings_of(caplog) == []


def test_corrupt_chunk_of_the_right_length_is_a_miss_with_a_warning(
    store: ChunkedStore, inner: DictStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.set("k", [pattern(5000, 5)], None)
    victim = store.chunk_keys("k")[1]
    original = bytes(inner.get(victim))
    inner.set(victim, [bytes(b ^ 1 for b in original)], None)
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert store.get("k") is NO_VALUE
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "'k'" in warnings[0] and "digest mismatch" in warnings[0]


def test_chunk_of_the_wrong_length_is_a_miss(store: ChunkedStore, inner: DictStore) -> None:
    store.set("k", [pattern(5000, 6)], None)
    victim = store.chunk_keys("k")[0]
    inner.set(victim, [bytes(inner.get(victim))[:-1]], None)
    assert store.get("k") is NO_VALUE


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"", "empty record"),
        (b"\x00old format", "not an nbcache record"),
        (b"\x80\x05\x95planted pickle", "not an nbcache record"),
        (b"too short\x15", "malformed manifest"),
        (bytes(24) + b"\x05\x00\x00\x00" + bytes(17) + b"\x15", "malformed manifest"),
        (b"\x14 a manifest of format 2", "not an nbcache record"),
    ],
)
def test_unknown_or_malformed_record_is_a_miss_with_a_warning(
    store: ChunkedStore,
    inner: DictStore,
    record: bytes,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing nbcache writes looks like this: tampering or corruption, so a warning."""
    inner.set("planted", [record], None)
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert store.get("planted") is NO_VALUE
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert "'planted'" in warnings[0] and reason in warnings[0]


# -- writes -------------------------------------------------------------------------------------


def test_replacing_a_big_value_deletes_the_old_chunks(
    store: ChunkedStore, inner: DictStore
) -> None:
    store.set("k", [pattern(5000, 7)], None)
    new = pattern(3000, 8)
    store.set("k", [new], None)
    assert bytes(store.get("k")) == new
    assert sorted(inner.items) == sorted(["k", *store.chunk_keys("k")])


def test_delete_removes_manifest_and_chunks(store: ChunkedStore, inner: DictStore) -> None:
    store.set("k", [pattern(5000, 9)], None)
    assert store.delete("k")
    assert store.get("k") is NO_VALUE
    assert inner.items == {}
    assert not store.delete("k")


def test_chunks_outlive_their_manifest(store: ChunkedStore, inner: DictStore) -> None:
    store.set("k", [pattern(5000, 10)], 300)
    manifest_ttl = inner.items["k"][1]
    assert manifest_ttl is not None and 299 < manifest_ttl <= 300
    for key in store.chunk_keys("k"):
        assert inner.items[key][1] == 300 + CHUNK_TTL_MARGIN
    store.set("forever", [pattern(5000, 11)], None)
    assert {inner.items[key][1] for key in ["forever", *store.chunk_keys("forever")]} == {None}


def test_refused_chunk_stores_nothing_and_keeps_the_old_value(inner: DictStore) -> None:
    # The store believes items may be bigger than the inner store really takes.
    store = ChunkedStore(inner, SMALL_ITEM + 2000)
    store.set("k", [b"old"], None)
    assert not store.set("k", [pattern(5000, 12)], None)
    assert bytes(store.get("k")) == b"old"
    assert list(inner.items) == ["k"]


def test_add_stores_only_over_nothing_readable(store: ChunkedStore, inner: DictStore) -> None:
    first, second = pattern(5000, 13), pattern(4000, 14)
    assert store.add("k", [first], None)
    assert not store.add("k", [second], None)
    assert not store.add("k", [b"small"], None)
    assert bytes(store.get("k")) == first
    # The losing add left no chunks behind.
    assert sorted(inner.items) == sorted(["k", *store.chunk_keys("k")])
    # A manifest whose chunk was evicted holds no value: add takes its place.
    inner.delete(store.chunk_keys("k")[0])
    assert store.add("k", [second], None)
    assert bytes(store.get("k")) == second
    assert store.add("small", [b"x"], None)
    assert not store.add("small", [b"y"], None)


def test_gets_and_cas_for_inline_and_big_values(store: ChunkedStore) -> None:
    store.set("k", [b"small"], None)
    value, token = store.gets("k")
    assert bytes(value) == b"small" and token is not None
    big = pattern(5000, 15)
    assert store.cas("k", [big], None, token)
    assert not store.cas("k", [b"late"], None, token)
    value, token = store.gets("k")
    assert bytes(value) == big and token is not None
    assert store.cas("k", [b"small again"], None, token)
    assert bytes(store.get("k")) == b"small again"


def test_faults_of_the_inner_store_propagate() -> None:
    store = ChunkedStore(FaultyStore(SMALL_ITEM))
    with pytest.raises(StoreFault):
        store.get("k")
    with pytest.raises(StoreFault):
        store.set("k", [pattern(5000, 16)], None)


def test_interleaved_writers_give_one_whole_value_or_a_miss(store: ChunkedStore) -> None:
    values = [pattern(20_000, seed) for seed in range(4)]
    _race_writers_and_reader(store, values, seconds=1.0)


def _race_writers_and_reader(store: ChunkedStore, values: list[bytes], seconds: float) -> None:
    """Two writers store different values under one key while a reader checks every read."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(mine: list[bytes]) -> None:
        try:
            while not stop.is_set():
                for value in mine:
                    store.set("k", [value], None)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    writers = [
        threading.Thread(target=write, args=(values[0::2],)),
        threading.Thread(target=write, args=(values[1::2],)),
    ]
    for writer in writers:
        writer.start()
    whole = misses = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            got = store.get("k")
            if got is NO_VALUE:
                misses += 1
            else:
                assert bytes(got) in values, "a read mixed chunks of different writes"
                whole += 1
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert not errors, errors
    assert whole > 0, f"no read saw a whole value ({misses} misses)"


# -- against a real memcached (stock 1 MiB item limit) ---------------------------------------


@pytest.mark.memcached
def test_fifty_megabyte_array_round_trips_through_stock_memcached(
    memcached_store: MemcachedStore,
) -> None:
    import numpy as np

    array = np.random.default_rng(0).random(50 * 1024 * 1024 // 8)
    store = ChunkedStore(memcached_store)
    assert store.set("array", [memoryview(array)], 300)  # type: ignore[arg-type]
    got = store.get("array")
    assert got is not NO_VALUE
    assert np.array_equal(np.frombuffer(got, dtype=array.dtype), array)
    assert len(store.chunk_keys("array")) == 51


@pytest.mark.memcached
def test_values_at_and_over_the_real_item_limit(memcached_store: MemcachedStore) -> None:
    store = ChunkedStore(memcached_store)
    assert memcached_store.max_item_size == 1024 * 1024
    for size in (store.inline_limit, store.inline_limit + 1, 2 * store.chunk_size):
        value = pattern(size, size)
        assert store.set(f"k{size}", [value], None), size
        assert bytes(store.get(f"k{size}")) == value
    assert store.chunk_keys(f"k{store.inline_limit}") == []
    assert len(store.chunk_keys(f"k{2 * store.chunk_size}")) == 2


@pytest.mark.memcached
def test_evicted_or_corrupt_chunk_on_memcached_is_a_miss(memcached_store: MemcachedStore) -> None:
    store = ChunkedStore(memcached_store)
    for key, seed in (("evicted", 1), ("corrupt", 2)):
        assert store.set(key, [pattern(3 * 1024 * 1024, seed)], None)
    memcached_store.delete(store.chunk_keys("evicted")[1])
    victim = store.chunk_keys("corrupt")[2]
    length = len(memcached_store.get(victim))
    memcached_store.set(victim, [pattern(length, 99)], None)
    assert store.get_many(["evicted", "corrupt"]) == [NO_VALUE, NO_VALUE]


@pytest.mark.slow
@pytest.mark.memcached
def test_interleaved_writers_on_memcached(memcached_store: MemcachedStore) -> None:
    store = ChunkedStore(memcached_store)
    values = [pattern(3 * 1024 * 1024 + seed, seed) for seed in range(4)]
    _race_writers_and_reader(store, values, seconds=3.0)


WRITER = """
import sys
from nbcache.stores.chunked import ChunkedStore
from nbcache.stores.memcached.store import MemcachedStore
import numpy as np

address, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
value = np.random.default_rng(seed).bytes(size)
store = ChunkedStore(MemcachedStore([address]))
print("writing", flush=True)
store.set("k", [value], None)
print("stored", flush=True)
"""


def _item_count(server: MemcachedServer) -> int:
    for line in server.command(b"stats").decode().splitlines():
        if line.startswith("STAT curr_items "):
            return int(line.split()[2])
    raise AssertionError("memcached did not report curr_items")


@pytest.mark.slow
@pytest.mark.memcached
def test_writer_killed_mid_write_leaves_the_previous_whole_value(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_factory(memory_mb=256)
    size = 32 * 1024 * 1024
    previous, new = pattern(size, 1), pattern(size, 2)
    inner = MemcachedStore([server.address])
    try:
        store = ChunkedStore(inner)
        assert store.set("k", [previous], None)
        before = _item_count(server)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, server.address, str(size), "2"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            deadline = time.monotonic() + 30
            while _item_count(server) == before:
                assert writer.poll() is None, "the writer exited before writing a chunk"
                assert time.monotonic() < deadline, "the writer wrote no chunk in 30 s"
                time.sleep(0.001)
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()
            output = writer.communicate()[0]
        assert b"stored" not in output, "the writer finished before it was killed"
        assert _item_count(server) > before, "the killed writer left no chunk to test with"
        got = store.get("k")
        assert got is not NO_VALUE and bytes(got) == previous
        # The next writer is unaffected by the orphaned chunks.
        assert store.set("k", [new], None)
        assert bytes(store.get("k")) == new
    finally:
        inner.close()


def test_over_the_in_process_store() -> None:
    from nbcache.stores.memory import MemoryStore

    memory = MemoryStore(10_000)
    store = ChunkedStore(memory, SMALL_ITEM)
    big = pattern(10_000, 17)
    assert store.set("k", [big], 300)
    assert bytes(store.get("k")) == big
    memory.delete(store.chunk_keys("k")[-1])
    assert store.get("k") is NO_VALUE


def _sets(server: MemcachedServer) -> int:
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", server.port))
    try:
        return int(client.stats()[b"cmd_set"])
    finally:
        client.close()


@pytest.mark.memcached
@pytest.mark.slow
@pytest.mark.parametrize("size_mb", [100, 63], ids=["over-memory", "evicted-as-written"])
def test_a_value_the_server_cannot_keep_is_refused_once_with_a_warning_and_not_sent_again(
    memcached_factory: Callable[..., MemcachedServer],
    caplog: pytest.LogCaptureFixture,
    size_mb: int,
):
    from nbcache import MemcachedCache

    server = memcached_factory(memory_mb=64)
    cache = MemcachedCache(server.address)
    value = bytes(size_mb * 2**20 - 4096)
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert cache.set("too-big", value) is False, "a value that cannot stay is not stored"
        assert cache.get("too-big") is None
        sets = _sets(server)
        assert cache.set("too-big", value) is False
        assert _sets(server) == sets, "a value that cannot stay must not be sent again"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{(size_mb * 2**20 - 4096) / 2**20:.1f} MiB" in warnings[0]
    assert "64.0 MiB (-m)" in warnings[0]
    assert cache.set("small", b"x" * 1000) is True and cache.get("small") == b"x" * 1000
