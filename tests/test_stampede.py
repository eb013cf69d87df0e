"""Stampede protection against a real memcached: one computation per cold key."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nbcache import MemcachedCache, SimpleCache
from nbcache.entries.leases import Held, is_lease_record, lease_record
from nbcache.functions.claims import claims
from nbcache.functions.decorator import cached_result
from nbcache.functions.stampede import Computed, compute_once
from nbcache.stores.api import NO_VALUE, Buffer, NoValue
from nbcache.stores.memory import MemoryStore

REPO = Path(__file__).resolve().parent.parent

# Every process defines the same function in a notebook-like namespace, so all share one key.
# Each computation appends a line to the log (O_APPEND: lines from processes never interleave).
CALLER = """
import os, sys, time, textwrap
from nbcache import MemcachedCache
from nbcache.functions.decorator import cached_result
address, log_path, start_at, compute_seconds, lease = sys.argv[1:6]
ns = {"__name__": "__main__"}
exec(textwrap.dedent('''
    import os, time
    def slow_square(x, log_path, seconds):
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\\\\n".encode())
        os.close(fd)
        time.sleep(seconds)
        return x * x
'''), ns)
f = cached_result(cache=MemcachedCache([address]), ignore=("log_path", "seconds"),
                  lease=float(lease))(ns["slow_square"])
time.sleep(max(0.0, float(start_at) - time.time()))
print(f(7, log_path, float(compute_seconds)), flush=True)
"""


def spawn(address: str, log: Path, start_at: float, seconds: float, lease: float) -> Any:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [address, str(log), str(start_at), str(seconds), str(lease)]
    return subprocess.Popen(
        [sys.executable, "-c", CALLER, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def computations(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.slow
@pytest.mark.memcached
def test_eight_processes_on_one_cold_key_compute_once(memcached: Any, tmp_path: Path) -> None:
    log = tmp_path / "computations"
    start_at = time.time() + 3.0  # after every interpreter has started and imported nbcache
    callers = [spawn(memcached.address, log, start_at, 1.0, 30.0) for _ in range(8)]
    outputs = [caller.communicate(timeout=60)[0].strip() for caller in callers]
    assert [caller.returncode for caller in callers] == [0] * 8
    assert outputs == ["49"] * 8
    assert len(computations(log)) == 1


@pytest.mark.slow
@pytest.mark.memcached
def test_a_killed_holder_blocks_no_one_longer_than_its_lease(
    memcached: Any, tmp_path: Path
) -> None:
    lease = 2.0
    log = tmp_path / "computations"
    holder = spawn(memcached.address, log, 0.0, 600.0, lease)  # computes for 10 minutes
    try:
        deadline = time.time() + 30
        while not computations(log):
            assert time.time() < deadline, "the holder never started computing"
            time.sleep(0.05)
        waiter = spawn(memcached.address, log, 0.0, 0.0, lease)
        time.sleep(1.0)  # the waiter is polling now
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        output = waiter.communicate(timeout=60)[0].strip()
        waited = time.monotonic() - killed_at
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe
    assert output == "49"
    assert len(computations(log)) == 2
    # Bound: lease (2 s) + memcached's 1 s expiry granularity + one 0.5 s poll + slack for
    # this noisy machine.
    assert waited < lease + 5.0


@pytest.mark.slow
@pytest.mark.memcached
def test_a_live_holder_keeps_the_others_waiting_for_many_lease_periods(
    memcached: Any, tmp_path: Path
) -> None:
    """A holder computing for 5 s on a 2 s lease renews it: the others wait, one computes.

    Without renewals the others would stop waiting after about 2.5 s; renewals every 2/3 s
    leave room for a stall of the holder of up to 1.3 s on a busy machine.
    """
    log = tmp_path / "computations"
    start_at = time.time() + 3.0  # after every interpreter has started and imported nbcache
    callers = [spawn(memcached.address, log, start_at, 5.0, 2.0) for _ in range(3)]
    outputs = [caller.communicate(timeout=60)[0].strip() for caller in callers]
    assert [caller.returncode for caller in callers] == [0] * 3
    assert outputs == ["49"] * 3
    assert len(computations(log)) == 1


class OneKey:
    """One key of a real in-process store, as the stampede protocol sees a missed key.

    ``shared``: leases are taken in the store (as on memcached), else only claims in this
    process. ``before_first_read`` runs inside the first read, after the store was read: what
    another caller does just then.
    """

    def __init__(self, store: MemoryStore, shared: bool, before_first_read: Any) -> None:
        self.backing = store
        self.store = store if shared else None
        self.key = "k"
        self.claim_key = ("a test", "k")
        self.seen = None
        self.releases = None
        self._before_first_read = before_first_read

    def read(self) -> int | Held | NoValue:
        raw = self.backing.get(self.key)
        if self._before_first_read is not None:
            self._before_first_read()
            self._before_first_read = None
        if isinstance(raw, NoValue):
            return NO_VALUE
        if is_lease_record(raw):
            return Held(bytes(raw))
        return int(bytes(raw)) if bytes(raw).isdigit() else NO_VALUE

    def live(self, raw: Buffer) -> bool:
        return bytes(raw).isdigit()

    def store_result(self, value: Any, seconds: float) -> bool:
        return self.backing.set(self.key, [str(value).encode()], 60.0)


@pytest.mark.parametrize("shared", [True, False], ids=["shared store", "in-process store"])
def test_a_holder_finishing_between_a_miss_and_the_claim_is_not_computed_again(
    shared: bool,
) -> None:
    """The other holder stores its result and lets its claim (and lease) go just after this
    caller's read missed: the caller takes the free claim, and must find the result, not
    recompute."""
    store = MemoryStore()

    def other_holder_finishes() -> None:
        other = object()
        assert claims.take(("a test", "k"), other) is other
        store.set("k", [b"49"], 60.0)  # (on a shared store this replaces its lease)
        claims.release(("a test", "k"), other)

    computed: list[int] = []

    def compute() -> int:
        computed.append(1)
        return 49

    target = OneKey(store, shared, other_holder_finishes)
    assert compute_once(target, 30.0, compute) == 49
    assert computed == []
    target = OneKey(MemoryStore(), shared, None)  # control: nobody else, so it computes
    assert compute_once(target, 30.0, compute) == Computed(49)
    assert computed == [1]


def test_threads_of_one_process_compute_once() -> None:
    cache = SimpleCache()
    barrier = threading.Barrier(6)

    class Log(list[int]):
        def __nbcache_token__(self) -> str:
            return "log"

    computed = Log()

    @cached_result(cache=cache)
    def slow(x: int) -> int:
        computed.append(x)
        time.sleep(0.3)
        return x + 1

    results: list[int] = []

    def call() -> None:
        barrier.wait()
        results.append(slow(1))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [2] * 6
    assert computed == [1]


@pytest.mark.memcached
def test_a_failing_holder_lets_the_waiters_compute(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address])

    class Attempts(list[int]):
        def __nbcache_token__(self) -> str:
            return "attempts"

    attempts = Attempts()
    barrier = threading.Barrier(3)

    @cached_result(cache=cache)
    def flaky(x: int) -> int:
        attempts.append(x)
        time.sleep(0.2)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return x

    outcomes: list[object] = []

    def call() -> None:
        barrier.wait()
        try:
            outcomes.append(flaky(5))
        except RuntimeError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(map(str, outcomes)) == ["5", "5", "first attempt fails"]
    assert len(attempts) == 2


@pytest.mark.parametrize(
    ("planted", "lease", "bound"),
    [
        (b"\x80\x05not a lease record", 30.0, 5.0),
        (lease_record(b"lease:" + bytes(16), 7), 2.0, 2.0 + 5.0),
    ],
    ids=["malformed", "never renewed"],
)
@pytest.mark.slow
@pytest.mark.memcached
def test_a_planted_lease_blocks_a_call_no_longer_than_the_lease(
    planted: bytes, lease: float, bound: float, memcached: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Bounds: malformed < 5 s (it is replaced at once); never renewed < lease + 5 s; the
    next call is a hit (the abandoned record was replaced by the entry)."""
    cache = MemcachedCache([memcached.address])

    class Computed(list[int]):
        def __nbcache_token__(self) -> str:
            return "computed"

    computed = Computed()

    @cached_result(cache=cache, lease=lease)
    def answer(x: int) -> int:
        computed.append(x)
        return 42

    key = answer.cache_key(1)
    assert cache.store.set(key, [planted], None)  # no expiry: only the waiter's clock
    start = time.monotonic()
    assert answer(1) == 42
    assert time.monotonic() - start < bound
    assert computed == [1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and key in warnings[0], warnings

    assert answer(1) == 42 and computed == [1]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
