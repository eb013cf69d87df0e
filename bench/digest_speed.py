"""Digest speed of a 256 MiB float64 array, against md5 and xxh3 on the same raw bytes.

Run: ``python bench/digest_speed.py``. Prints the best of several runs on one core: nbcache's
``value_digest`` (the target is <= 20 ms), xxh3_128 and md5 over the array's bytes, and
the ratios between them, all measured in this run.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
from nbcache.keys.digest import value_digest

SIZE_BYTES = 256 * 1024 * 1024
REPEATS = 5


def best_seconds(work: Callable[[], object], repeats: int = REPEATS) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    array = np.random.default_rng(0).random(SIZE_BYTES // 8)
    raw = memoryview(array).cast("B")
    strided = np.random.default_rng(1).random((SIZE_BYTES // 8 // 512, 1024))[:, ::2]
    results = {
        "nbcache value_digest": best_seconds(lambda: value_digest(array)),
        "xxh3_128 raw bytes": best_seconds(lambda: xxhash.xxh3_128_digest(raw)),
        "md5 raw bytes": best_seconds(lambda: hashlib.md5(raw).digest(), repeats=2),
        "nbcache strided view": best_seconds(lambda: value_digest(strided), repeats=3),
    }
    gib = SIZE_BYTES / 1e9
    for name, seconds in results.items():
        print(f"{name:24s} {seconds * 1e3:8.1f} ms  {gib / seconds:6.1f} GB/s")
    ours = results["nbcache value_digest"]
    print(f"value_digest / xxh3 time: {ours / results['xxh3_128 raw bytes']:.2f}x")
    print(f"md5 / value_digest time:  {results['md5 raw bytes'] / ours:.1f}x")
    print(f"within the 20 ms bound:   {ours <= 0.020}")


if __name__ == "__main__":
    main()
