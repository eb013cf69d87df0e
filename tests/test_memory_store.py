"""MemoryStore hands out big values as copy-on-write mappings of memory files.

A hit on a big value costs a mapping, not a copy; what the caller gets is still its own: its
writes go to private pages, never to the store, never to another reader.
"""

from __future__ import annotations

import os

import pytest

from nbcache import SimpleCache
from nbcache.stores.api import NO_VALUE
from nbcache.stores.memory import MAPPED_SIZE, MemoryStore
from nbcache.stores.memory_files import MemoryFile

MIB = 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def big_array(seed: int = 0, nbytes: int = 4 * MIB) -> object:
    import numpy as np

    return np.random.default_rng(seed).random(nbytes // 8)


def test_memory_files_are_available_here() -> None:
    # The zero-copy hit needs memfd_create (Linux 3.17+): say so plainly if it is missing.
    assert hasattr(os, "memfd_create"), "os.memfd_create is missing: big hits will copy"


def test_a_big_value_is_kept_in_a_memory_file_and_counted() -> None:
    store = MemoryStore()
    value = bytes(range(256)) * (MAPPED_SIZE // 256 + 3)
    assert store.set("k", [value[:1000], memoryview(value)[1000:]], None)
    assert isinstance(store._items["k"].data, MemoryFile)
    assert store.size_bytes == len(value)
    got = store.get("k")
    assert isinstance(got, memoryview) and not got.readonly
    assert bytes(got) == value


def test_a_mutated_big_array_leaves_the_cache_unchanged() -> None:
    import numpy as np

    cache = SimpleCache()
    array = big_array()
    assert cache.set("a", array)
    got = cache.get("a")
    got[:] = -1.0
    again = cache.get("a")
    assert np.array_equal(again, array)
    assert (got == -1.0).all()


def test_two_readers_mutate_independently() -> None:
    import numpy as np

    cache = SimpleCache()
    array = big_array(1)
    assert cache.set("a", array)
    first, second = cache.get("a"), cache.get("a")
    first[::1000] = 1.0
    second[::1000] = 2.0
    assert (first[::1000] == 1.0).all() and (second[::1000] == 2.0).all()
    assert np.array_equal(first[1::1000], array[1::1000])
    assert np.array_equal(cache.get("a"), array)


def test_eviction_closes_the_file_and_readers_keep_their_arrays() -> None:
    import numpy as np

    store = MemoryStore(threshold=1)
    cache = SimpleCache()
    cache.entries.store = store
    array = big_array(2)
    before = open_fds()
    assert cache.set("a", array)
    assert open_fds() == before + 1
    held = cache.get("a")
    assert cache.set("b", 1)  # threshold 1: "a" is evicted
    assert cache.get("a") is None
    assert open_fds() == before
    assert np.array_equal(held, array)  # the mapping outlives the file's descriptor
    held[0] = 5.0
    assert held[0] == 5.0


def test_clear_and_overwrite_close_their_files() -> None:
    store = MemoryStore()
    before = open_fds()
    value = bytes(MAPPED_SIZE)
    assert store.set("a", [value], None) and store.set("b", [value], None)
    assert store.set("a", [value], None)  # replaces a's file
    assert open_fds() == before + 2
    assert store.delete("b")
    assert open_fds() == before + 1
    store.clear()
    assert open_fds() == before
    assert store.size_bytes == 0


def test_a_big_value_over_max_bytes_is_refused_without_leaking_a_file() -> None:
    store = MemoryStore(max_bytes=MAPPED_SIZE)
    before = open_fds()
    assert not store.set("k", [bytes(MAPPED_SIZE + 1)], None)
    assert open_fds() == before
    assert store.get("k") is NO_VALUE


@pytest.mark.parametrize("size", [70_000, MAPPED_SIZE + 5])
def test_big_values_come_back_aligned_and_writable(size: int) -> None:
    from nbcache.stores.buffers import address, required

    store = MemoryStore()
    assert store.set("k", [os.urandom(size)], None)
    got = memoryview(store.get("k"))  # type: ignore[arg-type]
    assert not got.readonly and got.nbytes == size
    assert address(got) % required(size) == 0
    got[0] ^= 0xFF
    assert memoryview(store.get("k"))[0] != got[0]  # type: ignore[arg-type]


MANY_BIG_VALUES = """
import os, resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from nbcache import SimpleCache

cache = SimpleCache(threshold=1000)
values = {f"k{i}": bytes([i % 251]) * 1_100_000 for i in range(400)}
for key, value in values.items():
    assert cache.set(key, value), key
open(sys.executable, "rb").close()            # the user's own files
socket.socket().close()                       # and sockets
import json, decimal, fractions               # and imports still work
assert all(cache.get(key) == value for key, value in values.items())
print(len(os.listdir("/proc/self/fd")))
"""


@pytest.mark.slow
def test_many_big_values_leave_the_process_its_file_descriptors() -> None:
    """400 values of 1.1 MB under a limit of 256 descriptors (the same ratio as 1,500 under
    1,024): the user's files, sockets and imports keep working, every value reads back, and
    nothing is left for the garbage collector to complain about."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", MANY_BIG_VALUES], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert int(result.stdout) <= 256 // 4 + 16


def test_a_small_value_comes_back_immutable_and_unchanged_by_the_callers_buffers() -> None:
    """A small hit copies nothing: the reader gets immutable bytes, the store kept its own."""
    store = MemoryStore()
    written = bytearray(os.urandom(100))
    assert store.set("k", [written[:40], memoryview(written)[40:]], None)
    expected = bytes(written)
    written[0] ^= 0xFF  # the writer's buffers are its own after set
    got = store.get("k")
    assert isinstance(got, bytes) and got == expected
    assert store.get("k") == expected
