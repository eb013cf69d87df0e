"""Small calls in loops: what a hit and a miss cost in round trips, threads and memory.

Counts, never timings: round trips and writes are counted by the memcached server itself
(``stats``), threads by ``threading``, memory by the sizes of what the cache keeps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from nbcache import MemcachedCache, SimpleCache
from nbcache.entries.leases import is_lease_record
from nbcache.functions.claims import claims
from nbcache.functions.decorator import cached_result
from nbcache.functions.explain import RECENT_ENTRIES, book
from nbcache.functions.stampede import renewals

REPO = Path(__file__).resolve().parent.parent


class Calls(list[Any]):
    """A call log with a constant digest: logging a call leaves the fingerprint alone."""

    def __nbcache_token__(self) -> str:
        return "calls"


def server_stats(server: Any) -> dict[str, int]:
    counts = {}
    for line in server.command(b"stats").decode().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "STAT" and fields[2].isdigit():
            counts[fields[1]] = int(fields[2])
    return counts


def delta(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {name: after[name] - before[name] for name in names}


@pytest.mark.memcached
def test_a_hit_reads_once_and_a_miss_writes_only_its_claim_and_its_entry(memcached: Any) -> None:
    """A hit is one multi-get (namespace generation, function generation, entry). A miss is
    that read, one ``add`` that claims the key and one ``set`` that stores the entry over the
    claim, each sent with a read of the namespace generation (so a write never lands under a
    generation that was cleared meanwhile): no record rewritten, nothing else read."""
    cache = MemcachedCache([memcached.address])
    calls = Calls()

    @cached_result(cache=cache)
    def total(x: int) -> int:
        calls.append(x)
        return x * 2

    total(0)  # the function's first call makes its generation
    book.write()  # and its record goes out now, not during the counts below
    before = server_stats(memcached)
    assert total(1) == 2
    after = server_stats(memcached)
    assert delta(before, after, "cmd_get", "cmd_set", "cas_hits", "cmd_touch") == {
        "cmd_get": 3 + 1 + 1,
        "cmd_set": 2,
        "cas_hits": 0,
        "cmd_touch": 0,
    }
    before = server_stats(memcached)
    assert total(1) == 2
    after = server_stats(memcached)
    assert delta(before, after, "cmd_get", "get_hits", "cmd_set") == {
        "cmd_get": 3,
        "get_hits": 3,
        "cmd_set": 0,
    }
    assert calls == [0, 1]


def test_misses_in_process_start_no_thread_and_leave_no_claim() -> None:
    cache = SimpleCache(threshold=50)

    @cached_result(cache=cache)
    def square(x: int) -> int:
        return x * x

    before = threading.active_count()
    assert [square(x) for x in range(200)] == [x * x for x in range(200)]
    assert threading.active_count() == before
    assert len(claims) == 0
    assert len(renewals) == 0


@pytest.mark.memcached
def test_misses_on_memcached_share_one_background_thread(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address])

    @cached_result(cache=cache)
    def square(x: int) -> int:
        return x * x

    square(-1)
    before = {thread.name for thread in threading.enumerate()}
    assert [square(x) for x in range(50)] == [x * x for x in range(50)]
    after = {thread.name for thread in threading.enumerate()}
    assert after - before <= {"nbcache-timer"}
    assert len(claims) == 0
    assert len(renewals) == 0


def test_a_long_loop_of_distinct_calls_keeps_the_cache_within_its_bounds() -> None:
    """20,000 distinct calls through a cache of 500 entries: it holds 500, and nothing else
    grows with the number of calls (claims, leases, explanation records)."""
    cache = SimpleCache(threshold=500, max_bytes=64 * 1024)
    calls = Calls()

    @cached_result(cache=cache)
    def row(customer: int, region: str) -> dict[str, Any]:
        calls.append(customer)
        return {"customer": customer, "region": region.upper()}

    for customer in range(20_000):
        assert row(customer, "north")["customer"] == customer
    store = cache.store
    assert len(store) <= 500  # type: ignore[arg-type]
    assert store.size_bytes <= 64 * 1024  # type: ignore[attr-defined]
    assert len(claims) == 0 and len(renewals) == 0
    records_key = row.cache_key(0, "north").rsplit(":", 1)[0] + "#recent"
    assert len(book.recent(cache.entries, records_key)) == RECENT_ENTRIES
    assert row(19_999, "north") == {"customer": 19_999, "region": "NORTH"}
    assert len(calls) == 20_000  # the last one hit
    assert row.explain(19_998, "south") == "argument `region` changed"


def test_map_computes_only_the_misses_in_order() -> None:
    cache = SimpleCache()
    calls = Calls()

    @cached_result(cache=cache)
    def scale(x: int, factor: int) -> int:
        calls.append(x)
        return x * factor

    assert scale(2, 10) == 20
    assert scale.map([1, 2, 3, 2], [10, 10, 10, 10]) == [10, 20, 30, 20]
    assert calls == [2, 1, 3]
    assert scale.cache_info()[:2] == (2, 3)
    assert scale.map([7, 7], [1, 1]) == [7, 7]  # the second finds what the first stored
    assert calls == [2, 1, 3, 7]
    assert scale.map([], []) == []


def test_map_runs_calls_without_a_key_uncached() -> None:
    @cached_result(cache=SimpleCache())
    def size(value: Any) -> int:
        return len(value)

    lock_holder = [threading.Lock()]
    assert size.map([[1, 2], lock_holder, [1, 2]]) == [2, 1, 2]
    assert size.cache_info()[:2] == (1, 1)


def test_a_call_that_finds_what_another_stored_meanwhile_gets_this_processs_own_code() -> None:
    """The second ``f(1)`` of a map missed at the lookup and finds the first one's entry
    when it reads again before computing (as a caller does that waited for another): a
    notebook function (pickled by value) in that entry comes back as the notebook's own, as
    it does on a plain hit, not as a rebuilt copy."""
    import cloudpickle

    notebook = types.ModuleType("small_calls_notebook")
    sys.modules[notebook.__name__] = notebook
    exec("def clean(text):\n    return text.strip()\n", vars(notebook))
    cloudpickle.register_pickle_by_value(notebook)
    try:
        calls = Calls()

        @cached_result(cache=SimpleCache())
        def pipeline(step: int) -> Any:
            calls.append(step)
            return [notebook.clean]

        first, again = pipeline.map([1, 1])
        assert calls == [1]
        assert pipeline(1)[0] is notebook.clean  # a plain hit
        assert first[0] is notebook.clean and again[0] is notebook.clean
    finally:
        cloudpickle.unregister_pickle_by_value(notebook)
        del sys.modules[notebook.__name__]


def test_map_of_a_coroutine_function_awaits_only_the_misses() -> None:
    calls = Calls()

    @cached_result(cache=SimpleCache())
    async def double(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return 2 * x

    assert asyncio.run(double.map([1, 2, 1])) == [2, 4, 2]
    assert asyncio.run(double.map([2, 3])) == [4, 6]
    assert calls == [1, 2, 3]


@pytest.mark.memcached
def test_map_on_memcached_reads_every_call_in_one_round_trip(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address])

    @cached_result(cache=cache)
    def square(x: int) -> int:
        return x * x

    assert square.map(range(5)) == [0, 1, 4, 9, 16]
    before = server_stats(memcached)
    assert square.map(range(5)) == [0, 1, 4, 9, 16]
    after = server_stats(memcached)
    # Namespace generation, function generation and five entries, all hits, no write.
    assert delta(before, after, "cmd_get", "get_hits", "cmd_set") == {
        "cmd_get": 7,
        "get_hits": 7,
        "cmd_set": 0,
    }


@pytest.mark.memcached
def test_a_lease_whose_computation_raised_is_released_and_not_renewed(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address])

    @cached_result(cache=cache, lease=0.3)
    def fails(x: int) -> int:
        time.sleep(0.5)  # long enough to be renewed while it runs
        raise ValueError("no")

    with pytest.raises(ValueError):
        fails(1)
    assert len(renewals) == 0
    time.sleep(0.5)  # a renewal still scheduled would have written by now
    held = cache.store.get(fails.cache_key(1))
    assert isinstance(held, bytes | memoryview | bytearray)  # the release's tombstone
    assert not is_lease_record(held)


@pytest.mark.memcached
def test_a_lease_whose_computation_ended_is_never_renewed_over_its_entry(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address])
    calls = Calls()

    @cached_result(cache=cache, lease=0.3)
    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.5)  # renewed while it runs
        return x

    assert slow(1) == 1
    assert len(renewals) == 0
    time.sleep(0.5)
    assert slow(1) == 1 and calls == [1]  # still its entry, not a lease record


FORKED = """
import os, sys, textwrap, time
from nbcache import MemcachedCache
from nbcache.functions.decorator import cached_result
address, log_path = sys.argv[1:3]
ns = {"__name__": "__main__"}
exec(textwrap.dedent('''
    import os, time
    def slow(x, log_path, seconds):
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\\\\n".encode())
        os.close(fd)
        time.sleep(seconds)
        return x * x
'''), ns)
cache = MemcachedCache([address])
f = cached_result(cache=cache, ignore=("log_path", "seconds"), lease=2.0)(ns["slow"])
f(0, log_path, 1.0)  # the parent has taken (and renewed) a lease before: its timer thread runs
child = os.fork()
# The child computes for 5 s on a 2 s lease: only its renewals (every 2/3 s) keep it. Without
# them the parent would take over after about 2.5 s; with them, a stall of the child shorter
# than 1.3 s (a busy machine) does not let the lease lapse.
if child == 0:
    print("child", f(7, log_path, 5.0), flush=True)
    os._exit(0)
time.sleep(0.5)
print("parent", f(7, log_path, 5.0), flush=True)
os.waitpid(child, 0)
"""


@pytest.mark.slow
@pytest.mark.memcached
def test_a_forked_child_renews_its_own_leases(memcached: Any, tmp_path: Path) -> None:
    log = tmp_path / "computations"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", FORKED, memcached.address, str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(result.stdout.split("\n")[:2]) == ["child 49", "parent 49"]
    assert len(log.read_text().split()) == 2  # f(0) by the parent, f(7) by the child only


EXITS = """
import sys, time
from nbcache import MemcachedCache
from nbcache.functions.decorator import cached_result

@cached_result(cache=MemcachedCache([sys.argv[1]]))
def square(x):
    return x * x

print(square(3), flush=True)
"""


@pytest.mark.memcached
def test_the_background_timer_never_keeps_the_interpreter_from_exiting(memcached: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", EXITS, memcached.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "9"


KERNEL_A = """
import sys, textwrap
from nbcache import MemcachedCache
from nbcache.functions.decorator import cached_result
ns = {"__name__": "__main__"}
exec(textwrap.dedent('''
    def total(values, scale=1):
        return sum(values) * scale
'''), ns)
total = cached_result(cache=MemcachedCache([sys.argv[1]]))(ns["total"])
total([1, 2, 3])
print("computed", flush=True)
sys.stdin.readline()  # stays alive, as a kernel does
"""


@pytest.mark.memcached
def test_explain_names_what_changed_since_another_kernels_entry(memcached: Any) -> None:
    """Kernel A computes and stays alive; this kernel, which never called the function,
    explains its own call by A's record (written to the server in the background)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kernel_a = subprocess.Popen(
        [sys.executable, "-c", KERNEL_A, memcached.address],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert kernel_a.stdout is not None and kernel_a.stdout.readline().strip() == "computed"
        ns: dict[str, Any] = {"__name__": "__main__"}
        exec(
            textwrap.dedent(
                """
                def total(values, scale=1):
                    return sum(values) * scale
                """
            ),
            ns,
        )
        total = cached_result(cache=MemcachedCache([memcached.address]))(ns["total"])
        deadline = time.monotonic() + 30
        reason = total.explain([1, 2, 3], scale=2)
        while reason == "no entry yet" and time.monotonic() < deadline:
            time.sleep(0.2)
            reason = total.explain([1, 2, 3], scale=2)
        assert reason == "argument `scale` changed"
        assert total.explain([1, 2, 3]) == "hit"
    finally:
        kernel_a.communicate("\n", timeout=30)
