"""What keying on inputs costs a cached function: globals, arguments and digest throughput.

Run: ``python bench/key_inputs.py`` (``--quick`` for 1/10 sizes). Everything is measured in
this one process, on one core, as medians; the ratios printed are what the targets bound:

* a function reading a global 1e6 x 10 DataFrame (4 float, 4 int, 2 text columns): a hit
  against the bare call (target <= 2x), and the first call's overhead;
* the same frame passed as an argument: the digest of the second call (target <= 1 ms);
* a global dict and a global list of 10 items: what each adds to a hit (target <= 3 us);
* digest throughput of what notebooks hold, against pickling the same value (target <= 1.5x):
  a list of 300k small dicts, a list of 1M strings, a 2M-row pandas text column.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
from nbcache import SimpleCache, cached_result
from nbcache.keys.digest import value_digest
from nbcache.keys.snapshot import CodeSnapshot
from nbcache.keys.witness import forget_all


def median_seconds(call: Callable[[], object], budget: float = 1.0, least: int = 5) -> float:
    """Median seconds per call; fast calls are timed in loops of about a millisecond."""
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    loop = max(1, int(1e-3 / max(first, 1e-8))) if first < 1e-3 else 1
    samples = []
    began = time.perf_counter()
    while len(samples) < least or (time.perf_counter() - began < budget and len(samples) < 500):
        started = time.perf_counter()
        for _ in range(loop):
            call()
        samples.append((time.perf_counter() - started) / loop)
    return statistics.median(samples)


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = np.array([f"item-{i:05d}" for i in range(5000)], dtype=object)
    columns: dict[str, Any] = {}
    for i in range(4):
        columns[f"f{i}"] = rng.random(rows)
        columns[f"i{i}"] = rng.integers(0, 1 << 40, rows)
    for i in range(2):
        columns[f"t{i}"] = pd.array(words[rng.integers(0, len(words), rows)], dtype="str")
    return pd.DataFrame(columns)


def notebook(source: str, **names: object) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__", **names}
    exec(compile(source, "<ipython-input-1>", "exec"), namespace)
    return namespace


def report(label: str, value: float, unit: str, bound: str = "") -> None:
    print(f"{label:62s} {value:10.3f} {unit:4s} {bound}")


def global_frame(rows: int) -> None:
    ns = notebook("def summarize(k):\n    return float(DF['f0'].sum()) + k\n", DF=frame(rows))
    bare = ns["summarize"]
    bare_time = median_seconds(lambda: bare(1))
    cached = cached_result(cache=SimpleCache())(bare)
    started = time.perf_counter()
    cached(0)
    first = time.perf_counter() - started
    hit = median_seconds(lambda: cached(0))
    report("global DataFrame: bare call", bare_time * 1e3, "ms")
    report("global DataFrame: first call (miss)", first * 1e3, "ms")
    report("global DataFrame: hit", hit * 1e3, "ms")
    report("global DataFrame: hit / bare call", hit / bare_time, "x", "(target <= 2)")
    report("global DataFrame: first call overhead", (first - bare_time) * 1e3, "ms")


def argument_frame(rows: int) -> None:
    df = frame(rows)
    started = time.perf_counter()
    value_digest(df)
    first = time.perf_counter() - started
    again = median_seconds(lambda: value_digest(df))
    report("DataFrame argument: first digest", first * 1e3, "ms")
    report("DataFrame argument: digest of the second call", again * 1e3, "ms", "(target <= 1)")


def small_globals() -> None:
    table = {f"key{i}": i for i in range(10)}
    items = [f"value {i}" for i in range(10)]
    ns = notebook(
        "def plain(x):\n    return x\n"
        "def with_dict(x):\n    return x if TABLE else 0\n"
        "def with_list(x):\n    return x if ITEMS else 0\n",
        TABLE=table,
        ITEMS=items,
    )
    cache = SimpleCache()
    names = ("plain", "with_dict", "with_list")
    hits: dict[str, float] = {}
    globals_: dict[str, float] = {}
    for name in names:
        cached = cached_result(cache=cache)(ns[name])
        cached(1)
        snapshot = CodeSnapshot.take(ns[name])
        hits[name] = median_seconds(lambda cached=cached: cached(1), budget=1.5)
        globals_[name] = median_seconds(snapshot.global_digests, budget=0.5)
    report("small globals: hit reading no global", hits["plain"] * 1e6, "us")
    for name, label in (("with_dict", "dict"), ("with_list", "list")):
        # what the global adds to a hit is its digest (the rest of the hit is the same); the
        # difference of two hit timings is shown too, but it drowns in a busy machine's noise
        added = (globals_[name] - globals_["plain"]) * 1e6
        report(
            f"small globals: added to a hit by a global {label} of 10 items",
            added,
            "us",
            "(target <= 3)",
        )
        report(
            f"small globals: hit with the {label} minus hit without",
            (hits[name] - hits["plain"]) * 1e6,
            "us",
        )


def throughput(scale: float) -> None:
    rng = np.random.default_rng(1)
    records = [
        {"id": i, "name": f"user{i}", "score": float(i) / 7, "active": i % 2 == 0}
        for i in range(int(300_000 * scale))
    ]
    strings = [f"string number {i}" for i in range(int(1_000_000 * scale))]
    words = np.array([f"w{i}" for i in range(100_000)], dtype=object)
    column = pd.Series(
        pd.array(words[rng.integers(0, len(words), int(2_000_000 * scale))], dtype="str")
    )
    for label, value in (
        ("list of small dicts", records),
        ("list of strings", strings),
        ("pandas text column", column),
    ):
        # forget_all: a frame seen before would be remembered, and this measures digesting it
        digest = median_seconds(
            lambda value=value: (forget_all(), value_digest(value)), budget=2.0, least=3
        )
        pickled = median_seconds(
            lambda value=value: pickle.dumps(value, protocol=5), budget=2.0, least=3
        )
        report(f"throughput: {label} ({len(value)}): digest", digest * 1e3, "ms")
        report(f"throughput: {label}: pickle", pickled * 1e3, "ms")
        report(f"throughput: {label}: digest / pickle", digest / pickled, "x", "(target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes")
    options = parser.parse_args()
    scale = 0.1 if options.quick else 1.0
    try:
        import pyarrow

        arrow = f"pyarrow {pyarrow.__version__} (text columns are Arrow-backed)"
    except ImportError:
        arrow = "no pyarrow (text columns hold Python strings)"
    print(
        f"pandas {pd.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}, {arrow}"
    )
    global_frame(int(1_000_000 * scale))
    argument_frame(int(1_000_000 * scale))
    small_globals()
    throughput(scale)


if __name__ == "__main__":
    main()
