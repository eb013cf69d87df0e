"""Arrays restored from any cache are aligned, writable, and were not copied on the way.

numpy works on an array's memory where it lies: an array rebuilt at an odd address takes slow
paths, and numba or C code may refuse it. Every out-of-band buffer of an entry sits at a
64-byte offset, and every store hands back big values at 64-byte aligned addresses, so a
restored array is 64-byte aligned when big (64 KiB or more) and 16-byte aligned when small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache, SimpleCache
from nbcache.cache import Cache
from nbcache.stores.buffers import BIG

SECRET = "aligned-values-test-secret"
MIB = 1024 * 1024


@pytest.fixture(
    params=[
        "simple",
        pytest.param("memcached", marks=pytest.mark.memcached),
        pytest.param("memcached-compressed", marks=pytest.mark.memcached),
    ]
)
def cache(
    request: pytest.FixtureRequest, memcached_factory: Callable[..., MemcachedServer]
) -> Iterator[Cache]:
    if request.param == "simple":
        made: Cache = SimpleCache()
    else:
        server = memcached_factory(memory_mb=256)
        compress = request.param == "memcached-compressed"
        made = MemcachedCache([server.address], secret=SECRET, compress=compress)
    yield made
    made.store.close()


def arrays_in(value: Any) -> list[Any]:
    """Every numpy array a restored value holds (dicts, lists, DataFrame blocks)."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        return [array for item in value.values() for array in arrays_in(item)]
    if isinstance(value, (list, tuple)):
        return [array for item in value for array in arrays_in(item)]
    if isinstance(value, pd.DataFrame):
        # The blocks themselves, not copies: what a user's computation works on.
        return [block.values for block in value._mgr.blocks]
    raise TypeError(type(value))


def assert_aligned(value: Any) -> None:
    arrays = arrays_in(value)
    assert arrays
    for array in arrays:
        address = array.__array_interface__["data"][0]
        assert array.flags.aligned, (array.dtype, address)
        assert array.flags.writeable, array.dtype
        required = 64 if array.nbytes >= BIG else 16
        assert address % required == 0, (array.dtype, array.nbytes, address % 64)


def values() -> dict[str, Callable[[], Any]]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(5)
    record = np.dtype([("id", "<i4"), ("flag", "?"), ("score", "<f8"), ("name", "S3")])

    def structured(count: int) -> Any:
        out = np.zeros(count, dtype=record)
        out["id"] = np.arange(count)
        out["score"] = rng.random(count)
        return out

    return {
        "small float64": lambda: rng.random(1000),
        "big float64": lambda: rng.random(3 * MIB // 8),
        "compressible float64": lambda: np.arange(3 * MIB // 8, dtype=np.float64),
        "mid-size complex128": lambda: rng.random(20_000) + 1j * rng.random(20_000),
        "big complex128": lambda: rng.random(MIB // 8) * (1 + 2j),
        "structured": lambda: structured(200_003),
        # Odd sizes between the arrays: each one's offset depends on the padding before it.
        "several arrays": lambda: {
            "a": rng.random(3),
            "b": np.arange(100_001, dtype=np.int8),
            "c": rng.random(300_001),
            "d": [np.arange(7, dtype=np.int16), rng.random(20_001).astype(np.float32)],
        },
        "DataFrame": lambda: pd.DataFrame(
            {
                "x": rng.random(100_000),
                "y": rng.integers(0, 9, 100_000),
                "z": rng.random(100_000).astype(np.float32),
                "w": rng.random(100_000),
            }
        ),
    }


@pytest.mark.parametrize("name", list(values()))
def test_restored_arrays_are_aligned_writable_and_equal(cache: Cache, name: str) -> None:
    import numpy as np
    import pandas as pd

    value = values()[name]()
    assert cache.set("k", value)
    got = cache.get("k")
    assert_aligned(got)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(got, value)
    else:
        for mine, theirs in zip(arrays_in(got), arrays_in(value), strict=True):
            assert np.array_equal(mine, theirs)


def test_big_values_reach_the_unpickler_without_a_copy(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """The envelope copies a big buffer only when a store delivered it read-only or
    misaligned (and says so at DEBUG): on every normal path no store does."""
    import numpy as np

    rng = np.random.default_rng(6)
    value = {"random": rng.random(3 * MIB // 8), "compressible": np.zeros(2 * MIB // 8)}
    assert cache.set("k", value)
    with caplog.at_level(logging.DEBUG, logger="nbcache"):
        got = cache.get("k")
    assert_aligned(got)
    copies = [r.getMessage() for r in caplog.records if "copying a" in r.getMessage()]
    assert copies == []


def test_the_envelope_copies_what_a_store_delivers_misaligned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last resort: an entry at an odd address still gives aligned arrays, logged."""
    import numpy as np

    from nbcache.entries.envelope import Envelope

    envelope = Envelope()
    array = np.random.default_rng(7).random(MIB // 8)
    entry = b"".join(bytes(frame) for frame in envelope.seal("k", array, None))
    shifted = memoryview(bytearray(len(entry) + 1))[1:]
    shifted[:] = entry
    with caplog.at_level(logging.DEBUG, logger="nbcache"):
        got = envelope.open("k", shifted).value
    assert_aligned(got)
    assert np.array_equal(got, array)
    assert any("misaligned" in r.getMessage() for r in caplog.records)
