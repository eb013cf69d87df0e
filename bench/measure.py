"""What one benchmark subprocess measures for one contestant on one workload.

Every measurement runs in a fresh process, so contestants never share memory, caches or
allocator state. ``timing`` gives the bare function's time, the repeated-hit time (a hit in
the kernel that stored the result) and the miss overhead (for the small workload also per
call in a loop of distinct calls); ``first_hit`` the time of one hit in a process that has
never seen the result (another kernel); ``peak_memory`` the resident memory one hit adds at
its peak. Background work a contestant leaves (nbcache's near copies) is let finish before
each timed call, never inside one.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import peers
import workloads
from bare_socket import bare_seconds

from nbcache.testing import resident_growth


def median_call_seconds(call: Callable[[], Any], budget: float, min_repeats: int = 3) -> dict:
    """Median seconds per call, repeats scaled to ``budget``: fast calls get many more.

    Calls under a millisecond are timed in loops of about a millisecond each, so the
    clock's own cost does not count; each loop is one sample. Slow calls are timed one by
    one, ``min_repeats`` times at least (their first call counts: it is a hit like the rest).
    """
    samples = []
    began = time.perf_counter()
    call()
    first = time.perf_counter() - began
    per_sample = 1
    if first < 1e-3:
        per_sample = max(1, int(1e-3 / max(first, 1e-8)))
    else:
        samples.append(first)
    while len(samples) < 2000 and (
        len(samples) < min_repeats or time.perf_counter() - began < budget
    ):
        started = time.perf_counter()
        for _ in range(per_sample):
            call()
        samples.append((time.perf_counter() - started) / per_sample)
    return {"median": statistics.median(samples), "calls": len(samples) * per_sample}


def timing(workload_name: str, contestant: str, env: peers.Env, quick: bool) -> dict:
    """Bare time, hit time and miss overhead of ``contestant`` on the workload."""
    workload = workloads.build(workload_name, quick)
    small = workload_name == "small"
    budget = (0.3 if quick else 2.0) if small else (0.4 if quick else 2.0)
    bare = workload.function
    hit_args = workload.hit_args
    report: dict[str, Any] = {"result_bytes": workload.result_bytes()}
    gc.collect()
    bare_time = median_call_seconds(lambda: bare(*hit_args), budget / 2)
    report.update(bare=bare_time["median"], bare_calls=bare_time["calls"])
    cached, close = peers.make(contestant, bare, env)
    try:
        if peers.by_name(contestant).is_cache:
            if not small:
                # What loopback moves in this process, now: the write's yardstick.
                report["bare_send"] = bare_seconds(report["result_bytes"])["send"]
            cold = cold_calls(cached, workload, 2 if quick else 3, budget)
            report.update(cold=cold["median"], cold_calls=cold["calls"])
            report["miss_overhead"] = cold["overhead"]
            if small:
                loop = loop_misses(cached, workload, budget)
                report.update(loop_miss_overhead=loop["overhead"], loop_calls=loop["calls"])
        cached(*hit_args)  # fill
        cached(*hit_args)  # first hit: connections, imports, lazily built state
        peers.settle()
        gc.collect()
        hit = median_call_seconds(lambda: cached(*hit_args), budget)
        report.update(hit=hit["median"], hit_calls=hit["calls"])
        if small:
            report["peak_memory"] = traced_peak_bytes(lambda: cached(*hit_args))
            report["peak_memory_method"] = "tracemalloc"
    finally:
        close()
    return report


def cold_calls(
    cached: Callable[..., Any], workload: workloads.Workload, at_least: int, budget: float
) -> dict:
    """Miss overhead: cold call minus the bare function, paired on each never-seen argument.

    For each fresh argument the bare function runs first and its result is kept while the
    cached call runs, so both pay for fresh result pages alike. ``at_least`` pairs, more (up
    to 30) while ``budget`` seconds last. Returns medians of the cold calls and overheads.
    """
    cold, overheads = [], []
    began = time.perf_counter()
    while len(cold) < 30 and (len(cold) < at_least or time.perf_counter() - began < budget):
        args = workload.fresh(len(cold))
        peers.settle()
        gc.collect()
        started = time.perf_counter()
        bare_result = workload.function(*args)
        bare = time.perf_counter() - started
        started = time.perf_counter()
        result = cached(*args)
        cold.append(time.perf_counter() - started)
        overheads.append(cold[-1] - bare)
        del args, result, bare_result
    gc.collect()
    return {
        "median": statistics.median(cold),
        "overhead": statistics.median(overheads),
        "calls": len(cold),
    }


def loop_misses(cached: Callable[..., Any], workload: workloads.Workload, budget: float) -> dict:
    """Miss overhead per call in a loop of distinct calls, as a notebook loops over rows.

    Unlike :func:`cold_calls` (one miss at a time, after a garbage collection), the code runs
    warm, and the store fills up as it would. Cached calls on never-seen arguments run in
    batches while ``budget`` seconds last (at least 200 calls); then the bare function runs on
    the same arguments. Returns the overhead per call (total cached minus total bare, over the
    count) and the count.
    """
    batch = 200
    arguments: list[tuple[Any, ...]] = []
    spent = 0.0
    while not arguments or spent < budget:
        fresh = [workload.fresh(1_000_000 + len(arguments) + i) for i in range(batch)]
        started = time.perf_counter()
        for args in fresh:
            cached(*args)
        spent += time.perf_counter() - started
        arguments += fresh
    function = workload.function
    started = time.perf_counter()
    for args in arguments:
        function(*args)
    bare = time.perf_counter() - started
    return {"overhead": (spent - bare) / len(arguments), "calls": len(arguments)}


def traced_peak_bytes(call: Callable[[], Any]) -> int:
    """Peak bytes Python's allocator (and numpy) held during one call, above the start."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - start


def first_hit(workload_name: str, contestant: str, env: peers.Env, quick: bool) -> dict:
    """Seconds of one hit in a fresh process: the entry another process stored, read here.

    The argument is built first (not timed); the call digests it, finds the entry and
    returns the result, as the first call in a new kernel would. Just before, in this
    process, a bare socket moves as many bytes as the result has: its yardstick.
    """
    workload = workloads.build(workload_name, quick)
    bare_receive = bare_seconds(workload.result_bytes())["receive"]
    cached, close = peers.make(contestant, workload.function, env)
    try:
        gc.collect()
        started = time.perf_counter()
        result = cached(*workload.hit_args)
        elapsed = time.perf_counter() - started
        del result
        peers.settle()
    finally:
        close()
    return {"first_hit": elapsed, "bare_receive": bare_receive}


def peak_memory(workload_name: str, contestant: str, env: peers.Env, quick: bool) -> dict:
    """Resident bytes one hit adds at its peak (:func:`nbcache.testing.resident_growth`).

    The parent runs this process with glibc's mmap threshold fixed low so big blocks freed
    earlier go back to the system instead of being reused silently. The result is kept alive
    until the reading.
    """
    workload = workloads.build(workload_name, quick)
    cached, close = peers.make(contestant, workload.function, env)
    try:
        cached(*workload.hit_args)  # a hit if the timing run left the entry, else a fill
        with resident_growth() as growth:
            result = cached(*workload.hit_args)
        del result
    finally:
        close()
    return {"peak_memory": growth.peak, "peak_memory_method": "rss"}
