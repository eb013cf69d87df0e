"""How fast big values move through MemcachedCache, what a hit costs in memory, and small hits.

Starts a private memcached on 127.0.0.1, then measures, end to end through ``MemcachedCache``:

* ``set`` and ``get`` of a big float64 array (256 MiB by default), in GB/s (best and median
  of ``--repeat`` runs);
* the peak memory of a hit, by tracemalloc (Python and numpy allocations) and by the
  process's peak resident size (reset before the hit), against the result's size;
* a small hit against one raw pymemcache ``get`` of an item of the same size (medians);
* the same with ``compress=True`` when ``--compress`` is given.

Run: ``python bench/bulk_throughput.py [--mib 256] [--repeat 5] [--compress]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbcache import MemcachedCache
from nbcache.testing import MemcachedServer, resident_growth

SECRET = "bench-secret-0123456789abcdef"


def timed(call: Any, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def big_values(cache: MemcachedCache, mib: int, repeat: int, label: str) -> None:
    import numpy as np

    array = np.random.default_rng(0).random(mib * 1024 * 1024 // 8)
    if label.endswith("compressible"):
        array = np.arange(array.size, dtype=np.float64)
    size = array.nbytes
    sets = timed(lambda: cache.set("big", array, 0), repeat)
    gets = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        got = cache.get("big")
        gets.append(time.perf_counter() - started)
        assert got is not None and got.shape == array.shape, "the hit missed"
        del got
    gb = size / 1e9
    print(
        f"{label}: {size / 2**20:.0f} MiB  set {gb / min(sets):.2f} GB/s best, "
        f"{gb / statistics.median(sets):.2f} median ({statistics.median(sets) * 1e3:.0f} ms)   "
        f"get {gb / min(gets):.2f} GB/s best, {gb / statistics.median(gets):.2f} median "
        f"({statistics.median(gets) * 1e3:.0f} ms)"
    )
    assert np.array_equal(cache.get("big"), array)

    gc.collect()
    tracemalloc.start()
    got = cache.get("big")
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del got
    with resident_growth() as growth:
        got = cache.get("big")
    rss_peak = growth.peak
    del got
    print(
        f"  peak memory of a hit: tracemalloc {traced_peak / size:.3f}x the result, "
        f"resident {rss_peak / size:.3f}x the result (target <= 1.10x)"
    )


def small_hits(cache: MemcachedCache, server: MemcachedServer, repeat: int) -> None:
    from pymemcache.client.base import Client

    value = {"answer": 42, "name": "small"}
    cache.set("small", value, 0)
    raw = Client(("127.0.0.1", server.port), no_delay=True)
    raw.set("raw-small", b"x" * 300, noreply=False)
    loops = 2000
    cache_times, raw_times = [], []
    for _ in range(repeat * 3):
        cache_times.append(min(timed(lambda: cache.get("small"), loops)))
        raw_times.append(min(timed(lambda: raw.get("raw-small"), loops)))
        cache_times[-1] = statistics.median(timed(lambda: cache.get("small"), loops))
        raw_times[-1] = statistics.median(timed(lambda: raw.get("raw-small"), loops))
    hit, one_get = statistics.median(cache_times), statistics.median(raw_times)
    raw.close()
    print(
        f"small hit: {hit * 1e6:.0f} us, one raw pymemcache get: {one_get * 1e6:.0f} us, "
        f"ratio {hit / one_get:.2f}x (target <= 1.3x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the big value")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compress", action="store_true", help="also measure compress=True")
    options = parser.parse_args()
    memory = max(256, options.mib * 3)
    with MemcachedServer(memory_mb=memory) as server:
        cache = MemcachedCache([server.address], secret=SECRET)
        big_values(cache, options.mib, options.repeat, "MemcachedCache")
        small_hits(cache, server, options.repeat)
        cache.clear()
        if options.compress:
            compressed = MemcachedCache([server.address], secret=SECRET, compress=True)
            big_values(compressed, options.mib, options.repeat, "compress=True, random")
            compressed.clear()
            big_values(compressed, options.mib, options.repeat, "compress=True, compressible")


if __name__ == "__main__":
    main()
