"""The quick-start demo: ``python -m nbcache.demo``.

A slow analysis function, called twice with the same data: the first call computes, the second
is answered from the cache. Then one input value changes, and nbcache computes again. Runs on
the default cache (in-process unless NBCACHE_URL says otherwise).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from nbcache.config import get_cache
from nbcache.functions.decorator import cached_result


@cached_result(timeout=5 * 60)
def rolling_stats(values: list[float], window: int) -> list[tuple[float, float]]:
    """Mean and standard deviation over each window: deliberately slow, like real analysis."""
    time.sleep(1.0)  # stands in for a long computation
    return [
        (statistics.fmean(values[i : i + window]), statistics.pstdev(values[i : i + window]))
        for i in range(len(values) - window + 1)
    ]


def timed(label: str, call: Callable[[], Any]) -> None:
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    print(f"{label:<34} {len(result):6d} windows in {elapsed * 1000:9.1f} ms")


def main() -> None:
    values = [float((i * 7919) % 1000) for i in range(20_000)]
    print(f"nbcache quick start on {get_cache()!r}; entries expire after 5 minutes\n")
    timed("first call (computes)", lambda: rolling_stats(values, window=50))
    timed("same call again (from the cache)", lambda: rolling_stats(values, window=50))
    timed("window=60 (new input: computes)", lambda: rolling_stats(values, window=60))
    info = rolling_stats.cache_info()
    print(f"\n{info.hits} hit, {info.misses} misses, {info.time_saved:.1f} s saved")


if __name__ == "__main__":
    main()
