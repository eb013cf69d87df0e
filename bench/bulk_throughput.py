"""How fast big values move through MemcachedCache, against a bare socket on the same loopback.

Starts a private memcached and a bare-socket peer (another process) on 127.0.0.1, then
measures, round after round (interleaved, so that load from elsewhere hits every figure
alike), for a big float64 array (256 MiB by default):

* **bare send / bare receive**: the array's bytes over one TCP connection to or from the peer
  (it receives into, or sends from, memory it touched before): what loopback moves;
* **write**: ``MemcachedCache.set`` of the array (near copies on, as by default; the
  background copy is let finish between rounds, outside the timing);
* **first hit**: ``get`` by a cache that holds no copy of it (like a kernel that has never
  seen it): the value crosses the loopback into fresh memory and its MAC is checked;
* **repeated hit**: ``get`` by the cache that stored it, which holds a near copy: one round
  trip proves it current, then a copy-on-write mapping;
* **in-process hit**: ``SimpleCache.get`` of the same array; **round trip**: one small
  ``get`` through MemcachedCache (these three: the median of 9 calls in each round).

It prints the medians and the ratios nbcache's targets name: write / bare send (<= 1.5),
first hit / bare receive (<= 1.5, or >= 3 GB/s), repeated hit / (in-process hit + round
trip) (<= 2). Then the peak memory of a first hit and a small hit against one raw
pymemcache ``get``.

``--compress`` repeats the big-value rounds with ``compress=True`` on a compressible array.

Run: ``python bench/bulk_throughput.py [--mib 256] [--rounds 5] [--connections N] [--compress]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_socket import BareSocket

from nbcache import MemcachedCache, SimpleCache
from nbcache.testing import MemcachedServer, resident_growth

SECRET = "bench-secret-0123456789abcdef"


def seconds(call: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    del result
    return elapsed


def set_transfer_connections(cache: MemcachedCache, connections: int) -> None:
    """Make ``cache``'s memcached store move big values over ``connections`` per server
    (a store setting, not a cache option: found under the cache's layers)."""
    store: Any = cache.entries.store
    while not hasattr(store, "transfer_connections"):
        store = store.inner
    store.transfer_connections = connections


def big_values(
    server: MemcachedServer, mib: int, rounds: int, connections: int, compress: bool
) -> None:
    import numpy as np

    array = np.random.default_rng(0).random(mib * 1024 * 1024 // 8)
    if compress:
        array = np.arange(array.size, dtype=np.float64)  # something that compresses
    size = array.nbytes
    options: dict[str, Any] = {"secret": SECRET, "compress": compress}
    writer = MemcachedCache([server.address], **options)
    stranger = MemcachedCache([server.address], near_bytes=0, **options)
    if connections:
        for cache in (writer, stranger):
            set_transfer_connections(cache, connections)
    local = SimpleCache()
    assert local.set("big", array)
    peer = BareSocket(size)
    data = memoryview(array).cast("B")
    figures: dict[str, list[float]] = {}

    def record(name: str, call: Callable[[], Any], calls: int = 1) -> None:
        # Calls of a few milliseconds or less wait on the scheduler as much as they work on a
        # shared machine: each round keeps the median of several.
        figures.setdefault(name, []).append(statistics.median(seconds(call) for _ in range(calls)))

    def first_hit() -> Any:
        got = stranger.get("big")
        assert got is not None and got.shape == array.shape, "the first hit missed"
        return got

    def repeated_hit() -> Any:
        got = writer.get("big")
        assert got is not None and got.shape == array.shape, "the repeated hit missed"
        return got

    try:
        for _ in range(rounds):
            record("bare send", lambda: peer.send(data))
            record("bare receive", peer.receive)
            record("write", lambda: writer.set("big", array, 0))
            near = writer.entries.near
            if near is not None:
                near.settle()
            record("first hit", first_hit)
            record("repeated hit", repeated_hit, calls=9)
            record("in-process hit", lambda: local.get("big"), calls=9)
            record("round trip", lambda: writer.get("small-probe"), calls=9)
    finally:
        peer.close()
    median = {name: statistics.median(times) for name, times in figures.items()}
    gb = size / 1e9
    kind = "compress=True, a compressible array" if compress else "random floats"
    print(f"{size / 2**20:.0f} MiB ({kind}), medians of {rounds} interleaved rounds:")
    for name, value in median.items():
        speed = "" if name == "round trip" else f"  ({gb / value:.2f} GB/s)"
        print(f"  {name:15s} {value * 1e3:9.2f} ms{speed}")
    floor = median["in-process hit"] + median["round trip"]
    print("targets, ratios within this run:")
    print(f"  write / bare send:            {median['write'] / median['bare send']:.2f} (<= 1.5)")
    print(
        f"  first hit / bare receive:     {median['first hit'] / median['bare receive']:.2f}"
        f" (<= 1.5; or >= 3 GB/s: {gb / median['first hit']:.2f} GB/s)"
    )
    print(
        f"  repeated hit / (in-process hit + round trip): {median['repeated hit'] / floor:.2f}"
        " (<= 2)"
    )
    first_hit_memory(stranger, size)
    writer.clear()


def first_hit_memory(cache: MemcachedCache, size: int) -> None:
    """Peak resident memory of one first hit, against the result's size."""
    with resident_growth() as growth:
        got = cache.get("big")
    del got
    print(f"peak memory of a first hit: {growth.peak / size:.3f}x the result (target <= 1.10x)")


def small_hits(server: MemcachedServer, rounds: int) -> None:
    from pymemcache.client.base import Client

    cache = MemcachedCache([server.address], secret=SECRET)
    value = {"answer": 42, "name": "small"}
    cache.set("small", value, 0)
    raw = Client(("127.0.0.1", server.port), no_delay=True)
    raw.set("raw-small", b"x" * 300, noreply=False)
    loops = 2000
    cache_times, raw_times = [], []

    def per_call(call: Callable[[], Any]) -> float:
        started = time.perf_counter()
        for _ in range(loops):
            call()
        return (time.perf_counter() - started) / loops

    for _ in range(rounds * 3):
        cache_times.append(per_call(lambda: cache.get("small")))
        raw_times.append(per_call(lambda: raw.get("raw-small")))
    hit, one_get = statistics.median(cache_times), statistics.median(raw_times)
    raw.close()
    print(
        f"small hit: {hit * 1e6:.0f} us, one raw pymemcache get: {one_get * 1e6:.0f} us, "
        f"ratio {hit / one_get:.2f}x (target <= 1.3x)"
    )
    cache.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the big value")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--connections", type=int, default=0, help="connections per transfer (0: default)"
    )
    parser.add_argument("--compress", action="store_true", help="also measure compress=True")
    options = parser.parse_args()
    with MemcachedServer(memory_mb=max(256, options.mib * 3)) as server:
        big_values(server, options.mib, options.rounds, options.connections, compress=False)
        small_hits(server, options.rounds)
        if options.compress:
            big_values(server, options.mib, options.rounds, options.connections, compress=True)


if __name__ == "__main__":
    main()
