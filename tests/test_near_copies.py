"""Near copies: a kernel that stored or read a big value answers a repeated hit with one round
trip, and only while that round trip proves the copy is still the current entry.

Everything runs against real memcached servers. Other kernels are real Python processes
sharing the server; how many bytes a hit moved is read from the server's own counters
(``bytes_written``), never from a clock.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache, cached_result
from nbcache.entries.near import FILE_NAME, MIN_SIZE, NearCopies
from nbcache.exceptions import ConfigurationError
from nbcache.testing import memory_file_bytes, resident_bytes

pytestmark = pytest.mark.memcached

SECRET = "near-copies-test-secret-0123456789"
OTHER_SECRET = "another-teams-secret-9876543210"
MIB = 1024 * 1024
REPOSITORY = Path(__file__).resolve().parents[1]


def big(seed: int, mib: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).random(mib * MIB // 8)


def sent_by(server: MemcachedServer) -> int:
    """Bytes the server has written to its clients so far."""
    for line in server.command(b"stats").decode().splitlines():
        name, _, value = line.removeprefix("STAT ").partition(" ")
        if name == "bytes_written":
            return int(value)
    raise AssertionError("memcached reported no bytes_written")


def tier(cache: MemcachedCache) -> NearCopies:
    near = cache.entries.near
    assert near is not None, "this cache keeps no near copies"
    return near


def new_cache(server: MemcachedServer, **options: object) -> MemcachedCache:
    options.setdefault("secret", SECRET)
    options.setdefault("near_bytes", 256 * MIB)
    return MemcachedCache([server.address], **options)  # type: ignore[arg-type]


@pytest.fixture
def memcached(memcached_factory: Callable[..., MemcachedServer]) -> MemcachedServer:
    """A private server with room for the big values here (stock settings otherwise)."""
    return memcached_factory(memory_mb=512)


@pytest.fixture
def cache(memcached: MemcachedServer) -> Iterator[MemcachedCache]:
    cache = new_cache(memcached)
    yield cache
    tier(cache).clear()


def in_another_kernel(
    server: MemcachedServer, code: str, secret: str = SECRET, key_prefix: str | None = None
) -> str:
    """Run ``code`` in a new Python process whose ``cache`` shares the server; its stdout."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from nbcache import MemcachedCache

        def big(seed, mib=8):
            return np.random.default_rng(seed).random(mib * 1024 * 1024 // 8)

        cache = MemcachedCache([{server.address!r}], key_prefix={key_prefix!r}, secret={secret!r})
        """
    ) + textwrap.dedent(code)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])
    )
    # A session of its own: whatever it starts is stopped with it, by the group's id.
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        out, err = process.communicate()
        pytest.fail(f"the other kernel did not finish in 120 s: {err}")
    assert process.returncode == 0, err
    return out


# -- what a near hit costs and gives -------------------------------------------------------


def test_a_repeated_hit_of_a_stored_value_moves_no_value_bytes(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    value = big(1)
    assert cache.set("k", value)
    tier(cache).settle()
    before = sent_by(memcached)
    for _ in range(3):
        assert np.array_equal(cache.get("k"), value)
    moved = sent_by(memcached) - before
    # Each hit reads the namespace generation and the value's manifest, not its 8 MiB.
    assert moved < 3 * 16 * 1024, moved


def test_a_repeated_read_never_waits_for_a_copy_still_being_made(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    """A copy held up (here behind another copy whose check does not return) is not waited
    for: the read moves the value from the server at once, and leaves that copy to be made;
    once made, it answers the next read."""
    near = tier(cache)
    gate = threading.Event()
    try:
        assert near.keep(
            "elsewhere",
            "blocker",
            b"v",
            [bytes(MIN_SIZE)],
            MIN_SIZE,
            None,
            lambda copy: gate.wait(20.0),
        )
        value = big(6)
        assert cache.set("k", value)  # its copy waits behind the blocker's
        before = sent_by(memcached)
        assert np.array_equal(cache.get("k"), value)
        assert sent_by(memcached) - before > value.nbytes, "the read did not move the value"
        assert not near.settle(timeout=0), "the held-back copies were made meanwhile"
        assert len(near) == 2
    finally:
        gate.set()
    assert near.settle(60)
    assert len(near) == 2
    before = sent_by(memcached)
    assert np.array_equal(cache.get("k"), value)
    assert sent_by(memcached) - before < 16 * 1024, "the copy made meanwhile did not answer"


def test_a_value_read_once_is_kept_for_the_next_hit(memcached: MemcachedServer) -> None:
    value = big(2)
    in_another_kernel(memcached, "assert cache.set('k', big(2))")
    cache = new_cache(memcached)
    before = sent_by(memcached)
    assert np.array_equal(cache.get("k"), value)
    first = sent_by(memcached) - before
    assert first > value.nbytes, "the first hit must move the value"
    tier(cache).settle()
    before = sent_by(memcached)
    assert np.array_equal(cache.get("k"), value)
    assert sent_by(memcached) - before < 16 * 1024


def test_each_caller_gets_its_own_writable_copy(cache: MemcachedCache) -> None:
    value = big(3)
    assert cache.set("k", value)
    tier(cache).settle()
    first, second = cache.get("k"), cache.get("k")
    first[:] = -1.0
    assert np.array_equal(second, value)
    assert np.array_equal(cache.get("k"), value)
    value[:] = 5.0  # the stored object itself, changed after the write
    assert not np.array_equal(cache.get("k"), value)


def test_a_dataframe_comes_back_equal_from_its_copy(cache: MemcachedCache) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {"x": np.arange(400_000, dtype=np.float64), "name": [f"n{i}" for i in range(400_000)]}
    )
    assert cache.set("frame", frame)
    tier(cache).settle()
    assert len(tier(cache)) == 1
    for _ in range(2):
        pd.testing.assert_frame_equal(cache.get("frame"), frame)


def test_has_and_get_many_use_copies_too(cache: MemcachedCache, memcached: MemcachedServer) -> None:
    values = {"a": big(4), "b": big(5)}
    for key, value in values.items():
        assert cache.set(key, value)
    tier(cache).settle()
    before = sent_by(memcached)
    assert cache.has("a")
    got = cache.get_many("a", "b", "absent")
    assert sent_by(memcached) - before < 32 * 1024
    assert np.array_equal(got[0], values["a"]) and np.array_equal(got[1], values["b"])
    assert got[2] is None


# -- everything that changes an entry is seen ----------------------------------------------


def test_a_rewrite_by_another_kernel_is_read_never_the_old_copy(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    assert cache.set("k", big(1))
    tier(cache).settle()
    in_another_kernel(memcached, "assert cache.set('k', big(2))")
    assert np.array_equal(cache.get("k"), big(2))
    in_another_kernel(memcached, "assert cache.set('k', {'now': 'small'})")
    assert cache.get("k") == {"now": "small"}


def test_a_rewrite_with_the_same_bytes_is_read_again(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    """The copy stands for one write, not for its bytes: a new write is read, whatever it holds
    (its expiry, its metadata, and who wrote it may differ)."""
    assert cache.set("k", big(1))
    tier(cache).settle()
    in_another_kernel(memcached, "assert cache.set('k', big(1))")
    before = sent_by(memcached)
    assert np.array_equal(cache.get("k"), big(1))
    assert sent_by(memcached) - before > big(1).nbytes, "the new write was not read"


def test_delete_by_another_kernel_is_a_miss(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    assert cache.set("k", big(1))
    tier(cache).settle()
    in_another_kernel(memcached, "assert cache.delete('k')")
    assert cache.get("k") is None
    assert not cache.has("k")


def test_clear_by_another_kernel_is_a_miss(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    assert cache.set("k", big(1))
    tier(cache).settle()
    in_another_kernel(memcached, "assert cache.clear()")
    assert cache.get("k") is None


def test_an_expired_entry_is_a_miss_though_its_copy_is_held(cache: MemcachedCache) -> None:
    # The server expires an entry by its own clock (whole seconds: within about a second of
    # its ttl); the copy held here must stop answering once the server says it is gone.
    assert cache.set("k", big(1), timeout=1)
    tier(cache).settle()
    assert len(tier(cache)) == 1
    assert wait_for(lambda: cache.get("k") is None, within=10.0)


class Runs(list[int]):
    """A run log the function under test closes over, with a constant digest (closure values
    are part of a function's fingerprint)."""

    def __nbcache_token__(self) -> str:
        return "runs"


def test_cache_clear_recomputes_a_big_result(memcached: MemcachedServer) -> None:
    cache = new_cache(memcached)
    runs = Runs()

    @cached_result(cache=cache)
    def doubled(seed: int) -> np.ndarray:
        runs.append(seed)
        return big(seed) * 2

    first = doubled(1)
    tier(cache).settle()
    before = sent_by(memcached)
    assert np.array_equal(doubled(1), first)
    assert runs == [1] and sent_by(memcached) - before < 16 * 1024
    assert doubled.cache_clear()
    assert np.array_equal(doubled(1), first)
    assert runs == [1, 1], "cache_clear must make the next call recompute"
    assert doubled.invalidate(1)
    doubled(1)
    assert runs == [1, 1, 1], "invalidate must make the next call recompute"


def test_a_cached_function_keeps_what_it_read_and_hits_its_copy(
    memcached: MemcachedServer,
) -> None:
    cache = new_cache(memcached)
    runs = Runs()

    @cached_result(cache=cache)
    def tripled(seed: int) -> np.ndarray:
        runs.append(seed)
        return big(seed) * 3

    first = tripled(4)
    tier(cache).settle()
    tier(cache).clear()  # as in a kernel that finds the result another one stored
    before = sent_by(memcached)
    assert np.array_equal(tripled(4), first)
    assert sent_by(memcached) - before > first.nbytes, "the first read must move the value"
    tier(cache).settle()
    for call in (lambda: tripled(4), lambda: tripled.map([4])[0]):
        before = sent_by(memcached)
        assert np.array_equal(call(), first)
        assert sent_by(memcached) - before < 16 * 1024
    assert runs == [4]


# -- faults between a near hit and the next call --------------------------------------------


def test_a_server_killed_after_a_near_hit_gives_a_miss_then_the_new_value(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_factory(memory_mb=256)
    cache = new_cache(server, timeout=0.5)
    assert cache.set("k", big(1))
    tier(cache).settle()
    assert np.array_equal(cache.get("k"), big(1))
    server.kill()
    assert cache.get("k") is None
    server.start()  # the same port, empty
    assert wait_for(lambda: cache.get("k") is None and cache.set("probe", 1))
    assert cache.get("k") is None, "a restarted server holds nothing: the copy must not answer"
    in_another_kernel(server, "assert cache.set('k', big(2))")
    assert np.array_equal(cache.get("k"), big(2))


def test_a_server_paused_after_a_near_hit_gives_a_miss(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_factory(memory_mb=256)
    cache = new_cache(server, timeout=0.3)
    assert cache.set("k", big(1))
    tier(cache).settle()
    assert cache.get("k") is not None
    server.pause()
    try:
        assert cache.get("k") is None
    finally:
        server.resume()
    assert wait_for(lambda: cache.get("k") is not None)
    assert np.array_equal(cache.get("k"), big(1))


def test_a_server_restarted_and_rewritten_meanwhile_gives_the_new_value(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_factory(memory_mb=256)
    cache = new_cache(server, timeout=0.5)
    assert cache.set("k", big(1))
    tier(cache).settle()
    server.restart()
    # Another kernel writes the same key before this one asks again: the same bytes, even.
    in_another_kernel(server, "assert cache.set('k', big(1))\nassert cache.set('j', big(2))")
    assert wait_for(lambda: cache.get("k") is not None)
    assert np.array_equal(cache.get("k"), big(1))
    assert np.array_equal(cache.get("j"), big(2))


def wait_for(condition: Callable[[], object], within: float = 10.0) -> bool:
    """Poll ``condition`` (a store recovering from an outage) until true or ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- secrets, budgets, changes while copying -----------------------------------------------


def test_caches_with_different_secrets_never_accept_each_others_copies(
    memcached: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Both use the process's shared tier: the same server, namespace and key (caches with
    # different secrets get different namespaces unless a key_prefix is given).
    ours = MemcachedCache([memcached.address], key_prefix="shared", secret=SECRET)
    theirs = MemcachedCache([memcached.address], key_prefix="shared", secret=OTHER_SECRET)
    try:
        assert ours.set("k", big(1))
        tier(ours).settle()
        assert np.array_equal(ours.get("k"), big(1))
        with caplog.at_level(logging.WARNING, logger="nbcache"):
            assert theirs.get("k") is None
            assert theirs.set("k", big(2))
            tier(theirs).settle()
            assert ours.get("k") is None, "another secret's entry must be refused"
        assert np.array_equal(theirs.get("k"), big(2))
    finally:
        ours.clear()


def test_a_kernel_with_another_secret_cannot_make_a_copy_answer(
    cache: MemcachedCache, memcached: MemcachedServer
) -> None:
    assert cache.set("k", big(1))
    tier(cache).settle()
    # Another secret, writing into our namespace (its own would be another one by default).
    code = "assert cache.set('k', big(2))"
    in_another_kernel(memcached, code, secret=OTHER_SECRET, key_prefix=cache.key_prefix)
    assert cache.get("k") is None


def test_a_value_changed_while_its_copy_is_made_is_never_served(cache: MemcachedCache) -> None:
    for attempt in range(3):
        value = big(10 + attempt, mib=32)
        stored = value.copy()
        assert cache.set("k", value)
        value[:] = 0.0  # at once: the background copy is most likely still reading it
        tier(cache).settle()
        assert np.array_equal(cache.get("k"), stored)
        got = cache.get("k")
        got[:] = 1.0  # the result of a read, changed while its copy may be made
        tier(cache).settle()
        assert np.array_equal(cache.get("k"), stored)


def test_the_budget_holds_over_a_hundred_big_values_and_memory_comes_back(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_factory(memory_mb=512)
    budget = 24 * MIB
    cache = new_cache(server, near_bytes=budget)
    near = tier(cache)
    files_before, resident_before = memory_file_bytes(FILE_NAME), resident_bytes()
    peak_files = peak_tier = peak_resident = 0
    for index in range(100):
        value = big(index, mib=2)
        assert cache.set(f"k{index}", value)
        got = cache.get(f"k{index}")
        assert np.array_equal(got, value)
        del got, value
        if index % 10 == 9:
            near.settle()
        peak_tier = max(peak_tier, near.size_bytes)
        peak_files = max(peak_files, memory_file_bytes(FILE_NAME) - files_before)
        peak_resident = max(peak_resident, resident_bytes() - resident_before)
    near.settle()
    assert peak_tier <= budget
    # The kernel's own count of the pages in the tier's memory files.
    assert peak_files <= budget + MIB, peak_files / MIB
    # Values and results were dropped: nothing of them stays resident.
    assert peak_resident < 64 * MIB, peak_resident / MIB
    assert len(near) <= budget // (2 * MIB)
    cache.clear()
    assert near.size_bytes == 0
    assert memory_file_bytes(FILE_NAME) <= files_before, "the files of dropped copies stay open"


def test_a_rewritten_value_gives_its_old_copys_memory_back(cache: MemcachedCache) -> None:
    """The copy a rewrite replaces is closed by the background thread, not by the write:
    once it has caught up, only the current value's copy holds memory."""
    near = tier(cache)
    files_before = memory_file_bytes(FILE_NAME)
    for seed in range(4):
        assert cache.set("k", big(seed))
        if seed == 1:
            assert near.settle(60)  # a copy made, then replaced: its file to close
    assert near.settle(60)
    assert len(near) == 1
    held = memory_file_bytes(FILE_NAME) - files_before
    assert held <= 9 * MIB, held / MIB
    assert np.array_equal(cache.get("k"), big(3))


def test_copies_are_bounded_in_number_too(memcached: MemcachedServer) -> None:
    """Each copy holds a file descriptor: a tier keeps no more than it may."""
    cache = new_cache(memcached)
    near = tier(cache)
    assert 1 <= near.max_copies <= 512
    near.max_copies = 3
    for index in range(6):
        assert cache.set(f"k{index}", big(index, mib=2))
        near.settle()
        assert len(near) <= 3
    assert [cache.get(f"k{index}") is not None for index in range(6)] == [True] * 6
    near.clear()


def test_a_forked_child_reads_current_values_not_its_parents_copies(
    memcached: MemcachedServer,
) -> None:
    out = in_another_kernel(
        memcached,
        """
        import os
        near_cache = MemcachedCache(cache.servers, secret=cache_secret, near_bytes=64 << 20)
        assert near_cache.set('k', big(1))
        near_cache.entries.near.settle()
        assert len(near_cache.entries.near) == 1
        child = os.fork()
        if child == 0:
            ok = len(near_cache.entries.near) == 0 and (near_cache.get('k') == big(1)).all()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        print('child', os.waitstatus_to_exitcode(status))
        """.replace("cache_secret", repr(SECRET)),
    )
    assert out.strip() == "child 0"


def test_near_bytes_zero_keeps_no_copies_and_nonsense_is_refused(
    memcached: MemcachedServer,
) -> None:
    assert new_cache(memcached, near_bytes=0).entries.near is None
    with pytest.raises(ConfigurationError, match="near_bytes"):
        new_cache(memcached, near_bytes=-1)
    from nbcache.config import cache_from

    configured = cache_from(f"memcached://{memcached.address}?near_bytes=1048576")
    assert tier(configured).max_bytes == MIB


def test_a_kernel_exiting_while_a_copy_is_made_exits_cleanly(memcached: MemcachedServer) -> None:
    """Shutting a kernel down never crashes it, whatever the background copy is doing."""
    for delay in (0.0, 0.1, 0.2, 0.3, 0.4, 0.6):
        in_another_kernel(
            memcached,
            f"""
            import time
            near_cache = MemcachedCache(cache.servers, secret={SECRET!r}, near_bytes=1 << 30)
            assert near_cache.set('k', big(0, mib=128))
            time.sleep({delay})  # the interpreter exits while the copy is written or checked
            """,
        )
