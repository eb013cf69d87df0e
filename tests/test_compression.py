"""CompressedStore and MemcachedCache(compress=True): smaller when it pays, untouched otherwise.

Unit tests run over the in-process MemoryStore, where each stored record can be inspected and
damaged; the end-to-end tests run MemcachedCache on a real memcached.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache
from nbcache.stores.api import NO_VALUE, ByteStore
from nbcache.stores.compressed import MIN_SIZE, SAMPLE_BYTES, CompressedStore
from nbcache.stores.memory import MemoryStore
from nbcache.stores.namespace import NamespacedStore
from nbcache.testing import resident_growth

SECRET = "compression-test-secret-0123456789"


def random_bytes(size: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).bytes(size)


def text(size: int) -> bytes:
    line = b"2026-05-09,temperature,21.5,humidity,0.43,station,north-east\n"
    return (line * (size // len(line) + 1))[:size]


@pytest.fixture
def inner() -> MemoryStore:
    return MemoryStore(threshold=1000)


@pytest.fixture
def store(inner: MemoryStore) -> CompressedStore:
    return CompressedStore(inner)


def stored_size(inner: MemoryStore, key: str) -> int:
    record = inner.get(key)
    assert record is not NO_VALUE
    return len(record)


def test_is_a_byte_store(store: CompressedStore) -> None:
    assert isinstance(store, ByteStore)


def test_compressible_value_is_stored_smaller_and_reads_back_writable(
    store: CompressedStore, inner: MemoryStore
) -> None:
    value = text(1_000_000)
    assert store.set("k", [value[:300_000], memoryview(value)[300_000:]], None)
    assert stored_size(inner, "k") < len(value) // 10
    got = store.get("k")
    assert got is not NO_VALUE and bytes(got) == value
    assert not memoryview(got).readonly  # arrays rebuilt on it must be the caller's


def test_incompressible_value_is_stored_as_it_is(
    store: CompressedStore, inner: MemoryStore
) -> None:
    value = random_bytes(1_000_000)
    assert store.set("k", [value], None)
    assert stored_size(inner, "k") == len(value) + 1
    assert bytes(store.get("k")) == value


def test_small_value_is_stored_as_it_is(store: CompressedStore, inner: MemoryStore) -> None:
    value = text(MIN_SIZE - 1)
    assert store.set("k", [value], None)
    assert stored_size(inner, "k") == len(value) + 1
    assert bytes(store.get("k")) == value
    assert store.set("empty", [], None)
    assert bytes(store.get("empty")) == b""


def test_samples_that_compress_but_a_whole_that_does_not_is_stored_raw(
    store: CompressedStore, inner: MemoryStore
) -> None:
    # Compressible where the samples fall (start, thirds, end), random in between.
    size = 40 * SAMPLE_BYTES
    value = bytearray(random_bytes(size))
    third = (size - SAMPLE_BYTES) // 3
    for start in (0, third, 2 * third, size - SAMPLE_BYTES):
        value[start : start + SAMPLE_BYTES] = bytes(SAMPLE_BYTES)
    assert store.set("k", [value], None)
    assert stored_size(inner, "k") == size + 1
    assert bytes(store.get("k")) == value


def test_mixed_value_that_saves_enough_is_compressed(
    store: CompressedStore, inner: MemoryStore
) -> None:
    value = random_bytes(200_000) + text(800_000)
    assert store.set("k", [value], None)
    assert stored_size(inner, "k") < 0.5 * len(value)
    assert bytes(store.get("k")) == value


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda r: r[:-10], id="truncated"),
        pytest.param(lambda r: r[:20] + bytes(len(r) - 20), id="zeroed stream"),
        pytest.param(lambda r: r + b"trailing", id="trailing bytes"),
        pytest.param(lambda r: r[:-9] + struct.pack("<Q", 10**15) + r[-1:], id="forged huge size"),
        pytest.param(lambda r: r[:-9] + struct.pack("<Q", 5) + r[-1:], id="size too small"),
        pytest.param(lambda r: r[:-1] + b"\x7f", id="unknown tag"),
        pytest.param(lambda r: r[-3:], id="short record"),
    ],
)
def test_damaged_record_is_a_miss(
    store: CompressedStore, inner: MemoryStore, damage: Callable[[bytes], bytes]
) -> None:
    assert store.set("k", [text(100_000)], None)
    record = bytes(inner.get("k"))
    inner.set("k", [damage(record)], None)
    assert store.get("k") is NO_VALUE
    assert store.get_many(["k"]) == [NO_VALUE]


def test_a_zlib_bomb_is_refused_before_allocation(
    store: CompressedStore, inner: MemoryStore
) -> None:
    stream = zlib.compress(bytes(10_000_000), 9)
    # Honest size, but claimed 100x larger than zlib could ever expand it: refused outright.
    inner.set("k", [stream, struct.pack("<Q", 1100 * len(stream) * 100), b"\x24"], None)
    claimed = 1100 * len(stream) * 100
    with resident_growth() as read:
        assert store.get("k") is NO_VALUE
    # The record's copy out of MemoryStore and little else; nowhere near the claimed size.
    assert read.peak < min(64 * 1024 * 1024, claimed // 10), (read.peak, claimed)


def test_gets_cas_add_and_delete_pass_through(store: CompressedStore) -> None:
    value = text(50_000)
    assert store.add("k", [value], None)
    assert not store.add("k", [b"other"], None)
    got, token = store.gets("k")
    assert bytes(got) == value and token is not None
    assert store.cas("k", [text(60_000)], None, token)
    assert not store.cas("k", [b"stale"], None, token)
    assert bytes(store.get("k")) == text(60_000)
    assert store.delete("k")
    assert store.gets("k") == (NO_VALUE, None)


def test_clear_of_a_namespaced_inner_store() -> None:
    store = CompressedStore(NamespacedStore(MemoryStore(), "ns"))
    assert store.set("k", [text(10_000)], None)
    assert store.clear()
    assert store.get("k") is NO_VALUE


# -- end to end, on a real memcached ----------------------------------------------------------


@pytest.mark.memcached
def test_memcached_cache_compresses_only_when_asked(memcached: MemcachedServer) -> None:
    import numpy as np

    plain = MemcachedCache([memcached.address], secret=SECRET, key_prefix="plain")
    packed = MemcachedCache([memcached.address], secret=SECRET, key_prefix="packed", compress=True)
    assert not isinstance(plain.store, CompressedStore)
    assert isinstance(packed.store, CompressedStore)
    regular = np.arange(3_000_000, dtype=np.float64) % 17  # 24 MB that compresses well
    noisy = np.random.default_rng(0).random(1_000_000)
    for cache in (plain, packed):
        assert cache.set("regular", regular, 300)
        assert cache.set("noisy", noisy, 300)
        got = cache.get("regular")
        assert np.array_equal(got, regular)
        got[0] = 99.0  # writable, the caller's own
        assert np.array_equal(cache.get("noisy"), noisy)
        assert cache.get("missing") is None
    stats = memcached.command(b"stats").decode()
    stored = int(next(line.split()[2] for line in stats.splitlines() if "STAT bytes " in line))
    # Both caches hold noisy (8 MB each); plain holds 24 MB of regular, packed a fraction.
    assert stored < 2 * noisy.nbytes + regular.nbytes + regular.nbytes // 4
