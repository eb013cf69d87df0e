"""NamespacedStore: many caches on one shared store, each cleared on its own in O(1).

Every behaviour runs against a dict store and against a real memcached. "Another kernel" is a
second store object (for memcached, a second client) on the same storage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memcached_server import MemcachedServer
from test_chunked_store import DictStore, FaultyStore, pattern

from nbcache.exceptions import StoreFault
from nbcache.stores.api import NO_VALUE, ByteStore, NoValue
from nbcache.stores.chunked import ChunkedStore
from nbcache.stores.memcached.store import MemcachedStore
from nbcache.stores.memory import MemoryStore
from nbcache.stores.namespace import GENERATION_BYTES, NamespacedStore

#: Makes a new store object onto the one shared storage of a test (another kernel's client).
Connect = Callable[[], ByteStore]


@pytest.fixture(params=["dict", "memory", pytest.param("memcached", marks=pytest.mark.memcached)])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    if request.param in ("dict", "memory"):
        shared: ByteStore = DictStore() if request.param == "dict" else MemoryStore(10_000)
        yield lambda: shared
        return
    server: MemcachedServer = request.getfixturevalue("memcached")
    clients: list[MemcachedStore] = []

    def new_client() -> ByteStore:
        clients.append(MemcachedStore([server.address]))
        return clients[-1]

    yield new_client
    for client in clients:
        client.close()


def value_of(read: bytes | bytearray | memoryview | NoValue) -> bytes | NoValue:
    return read if isinstance(read, NoValue) else bytes(read)


def test_is_a_byte_store(connect: Connect) -> None:
    assert isinstance(NamespacedStore(connect(), "ns"), ByteStore)


def test_round_trip(connect: Connect) -> None:
    store = NamespacedStore(connect(), "ns")
    assert store.get("k") is NO_VALUE
    assert store.set("k", [b"v", memoryview(b"alue")], None)
    assert store.set("empty", [], 300)
    assert [value_of(v) for v in store.get_many(["k", "nothing", "empty"])] == [
        b"value",
        NO_VALUE,
        b"",
    ]
    assert store.delete("k")
    assert store.get("k") is NO_VALUE
    assert not store.delete("k")


def test_clear_forgets_this_namespace_only(connect: Connect) -> None:
    inner = connect()
    ours, theirs = NamespacedStore(inner, "ours"), NamespacedStore(inner, "theirs")
    ours.set("k", [b"ours"], None)
    theirs.set("k", [b"theirs"], None)
    inner.set("raw", [b"someone else's"], None)
    assert ours.clear() is True
    assert ours.get("k") is NO_VALUE
    assert value_of(theirs.get("k")) == b"theirs"
    assert value_of(inner.get("raw")) == b"someone else's"
    ours.set("k", [b"after"], None)
    assert value_of(ours.get("k")) == b"after"


def test_clear_is_seen_at_once_by_another_kernel(connect: Connect) -> None:
    mine, other_kernel = NamespacedStore(connect(), "team"), NamespacedStore(connect(), "team")
    mine.set("k", [b"v"], None)
    assert value_of(other_kernel.get("k")) == b"v"
    other_kernel.clear()
    assert mine.get("k") is NO_VALUE
    assert mine.get_many(["k"]) == [NO_VALUE]


def test_keys_with_separators_never_collide_across_namespaces(connect: Connect) -> None:
    inner = connect()
    pairs = [("a:b", "c"), ("a", "b:c"), ("a", "b#generation"), ("a#generation", ""), ("", "a")]
    stores = [NamespacedStore(inner, namespace) for namespace, _ in pairs]
    for index, (store, (_, key)) in enumerate(zip(stores, pairs, strict=True)):
        assert store.set(key, [str(index).encode()], None)
    for index, (store, (_, key)) in enumerate(zip(stores, pairs, strict=True)):
        assert value_of(store.get(key)) == str(index).encode()
    stores[0].clear()
    assert stores[0].get("c") is NO_VALUE
    for index, (store, (_, key)) in list(enumerate(zip(stores, pairs, strict=True)))[1:]:
        assert value_of(store.get(key)) == str(index).encode()


@given(st.text(), st.text(), st.text(), st.text())
def test_inner_keys_are_disjoint_across_namespaces(
    namespace_a: str, key_a: str, namespace_b: str, key_b: str
) -> None:
    a, b = NamespacedStore(DictStore(), namespace_a), NamespacedStore(DictStore(), namespace_b)
    if (namespace_a, key_a) != (namespace_b, key_b):
        assert a.inner_key(key_a) != b.inner_key(key_b)
    assert a.inner_key(key_a) not in (a.generation_key, b.generation_key)
    if namespace_a != namespace_b:
        assert a.generation_key != b.generation_key


def test_add_replaces_a_stale_entry_but_not_a_live_one(connect: Connect) -> None:
    store = NamespacedStore(connect(), "ns")
    assert store.add("k", [b"first"], None)
    assert not store.add("k", [b"second"], None)
    assert value_of(store.get("k")) == b"first"
    store.clear()
    assert store.add("k", [b"after clear"], None)
    assert value_of(store.get("k")) == b"after clear"
    assert not store.add("k", [b"again"], None)


def test_delete_is_true_only_for_a_live_value(connect: Connect) -> None:
    inner = connect()
    store = NamespacedStore(inner, "ns")
    store.set("k", [b"v"], None)
    store.clear()
    assert not store.delete("k")
    # The stale entry is gone from the server too.
    assert inner.get(store.inner_key("k")) is NO_VALUE


def test_evicted_generation_makes_misses_never_resurrects(connect: Connect) -> None:
    inner = connect()
    store = NamespacedStore(inner, "ns")
    store.set("before clear", [b"old"], None)
    store.clear()
    store.set("after clear", [b"new"], None)
    inner.delete(store.generation_key)  # evicted by the server
    assert store.get_many(["before clear", "after clear"]) == [NO_VALUE, NO_VALUE]
    # The next write makes a fresh generation; nothing written before comes back.
    store.set("fresh", [b"v"], None)
    assert value_of(store.get("fresh")) == b"v"
    assert store.get_many(["before clear", "after clear"]) == [NO_VALUE, NO_VALUE]
    assert store.add("before clear", [b"added"], None)


def test_racing_first_writers_agree_on_one_generation(connect: Connect) -> None:
    stores = [NamespacedStore(connect(), "fresh") for _ in range(6)]
    barrier = threading.Barrier(len(stores))

    def write(index: int) -> None:
        barrier.wait()
        stores[index].set(f"k{index}", [b"v"], None)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = [f"k{i}" for i in range(len(stores))]
    assert [value_of(v) for v in stores[0].get_many(keys)] == [b"v"] * len(stores)


def test_gets_and_cas(connect: Connect) -> None:
    store = NamespacedStore(connect(), "ns")
    assert store.gets("k") == (NO_VALUE, None)
    store.set("k", [b"v1"], None)
    value, token = store.gets("k")
    assert value_of(value) == b"v1" and token is not None
    assert store.cas("k", [b"v2"], None, token)
    assert not store.cas("k", [b"v3"], None, token)
    assert value_of(store.get("k")) == b"v2"
    # A clear between gets and cas wins: the cas lands in the old generation.
    value, token = store.gets("k")
    assert token is not None
    store.clear()
    store.cas("k", [b"late"], None, token)
    assert store.get("k") is NO_VALUE


def test_values_are_followed_by_their_generation(connect: Connect) -> None:
    # A suffix keeps the value at the start of the inner record, where the inner store
    # aligned it.
    inner = connect()
    store = NamespacedStore(inner, "ns")
    store.set("k", [b"v"], None)
    raw = bytes(inner.get(store.inner_key("k")))
    assert raw[-GENERATION_BYTES:] == bytes(inner.get(store.generation_key))
    assert raw[:-GENERATION_BYTES] == b"v"


class CountingStore(DictStore):
    """A DictStore that counts its calls, to count round trips."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def get(self, key: str) -> bytes | bytearray | memoryview | NoValue:
        self.calls.append("get")
        return super().get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | bytearray | memoryview | NoValue]:
        self.calls.append("get_many")
        return [super(CountingStore, self).get(key) for key in keys]


def test_reads_take_one_round_trip() -> None:
    inner = CountingStore()
    store = NamespacedStore(inner, "ns")
    store.set("a", [b"1"], None)
    inner.calls.clear()
    store.get("a")
    store.get_many(["a", "b", "c"])
    assert inner.calls == ["get_many", "get_many"]


def test_faults_of_the_inner_store_propagate() -> None:
    store = NamespacedStore(FaultyStore(), "ns")
    with pytest.raises(StoreFault):
        store.get("k")
    with pytest.raises(StoreFault):
        store.clear()


def test_item_limit_leaves_room_for_the_generation() -> None:
    assert NamespacedStore(DictStore(1000), "ns").max_item_size == 1000 - GENERATION_BYTES
    assert NamespacedStore(DictStore(), "ns").max_item_size is None


@pytest.mark.parametrize("order", ["chunks inside namespace", "namespace inside chunks"])
def test_composes_with_chunked_store(connect: Connect, order: str) -> None:
    inner = connect()
    limit = 1024 * 1024 if isinstance(inner, MemcachedStore) else 4096
    if order == "chunks inside namespace":
        store: ByteStore = NamespacedStore(ChunkedStore(inner, limit), "ns")
    else:
        store = ChunkedStore(NamespacedStore(inner, "ns"), limit - GENERATION_BYTES)
    big = pattern(3 * limit + 17, 1)
    assert store.set("big", [big], None)
    assert store.set("small", [b"s"], None)
    assert [value_of(v) for v in store.get_many(["big", "small"])] == [big, b"s"]
    assert store.clear()
    assert store.get_many(["big", "small"]) == [NO_VALUE, NO_VALUE]
    assert store.add("big", [big[::-1]], None)
    assert value_of(store.get("big")) == big[::-1]
