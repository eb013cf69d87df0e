"""The quick-start demo: ``python -m nbcache.demo``.

A slow analysis function, called twice with the same data: the first call computes, the second
is answered from the cache. Runs on the default cache (in-process unless NBCACHE_URL is set).
"""

from __future__ import annotations

import statistics
import time

from .config import get_cache


def rolling_stats(values: list[float], window: int) -> list[tuple[float, float]]:
    """Mean and standard deviation over each window: deliberately slow, like real analysis."""
    time.sleep(1.0)  # stands in for a long computation
    return [
        (statistics.fmean(values[i : i + window]), statistics.pstdev(values[i : i + window]))
        for i in range(len(values) - window + 1)
    ]


def main() -> None:
    cache = get_cache()
    values = [float((i * 7919) % 1000) for i in range(20_000)]
    key = "demo:rolling_stats"

    print(f"nbcache quick start, on {cache!r} (5-minute expiry)")
    for attempt in ("first call", "same call again"):
        started = time.perf_counter()
        result = cache.get(key)
        source = "from the cache"
        if result is None:
            result = rolling_stats(values, window=50)
            cache.set(key, result, timeout=5 * 60)
            source = "computed"
        elapsed = time.perf_counter() - started
        print(f"{attempt:>16}: {len(result)} windows {source} in {elapsed * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
