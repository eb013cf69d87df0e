"""@cached_result: files, environment variables and global random state are inputs.

What a function reads besides its arguments is recorded when it runs and checked before a hit
is used: a changed file, variable or random state recomputes, and a hit leaves the global
random state where a plain call would.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import xxhash

import nbcache
from nbcache import MemcachedCache, SimpleCache
from nbcache.entries.secrets import resolve_secrets
from nbcache.entries.signing import Signer
from nbcache.functions.decorator import cached_result
from nbcache.inputs import files as file_inputs

REPO = Path(__file__).resolve().parent.parent


class Calls(list[Any]):
    """A call log whose digest is constant, so logging does not change a fingerprint."""

    def __nbcache_token__(self) -> str:
        return "calls"


@pytest.fixture(params=["simple", pytest.param("memcached", marks=pytest.mark.memcached)])
def cache(request: pytest.FixtureRequest) -> Iterator[nbcache.Cache]:
    if request.param == "simple":
        yield SimpleCache()
    else:
        server = request.getfixturevalue("memcached")
        yield MemcachedCache([server.address])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def reader(cache: nbcache.Cache, **options: Any) -> tuple[Callable[..., Any], Calls]:
    calls = Calls()

    @cached_result(cache=cache, **options)
    def total(path: str) -> int:
        calls.append(path)
        return int(pd.read_csv(path)["x"].sum())

    return total, calls


def write_csv(path: Path | str, values: list[int]) -> None:
    Path(path).write_text("x\n" + "".join(f"{v}\n" for v in values))


def age(path: Path, seconds: float = 60) -> None:
    """Date the file back, as if it had been written a while ago."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


# -- files ----------------------------------------------------------------------------------


def test_a_file_rewritten_with_the_same_size_recomputes(cache: nbcache.Cache, workdir: Path):
    sales = workdir / "sales.csv"
    write_csv(sales, [1, 2])
    total, calls = reader(cache)
    assert total("sales.csv") == 3
    assert total("sales.csv") == 3 and len(calls) == 1

    write_csv(sales, [4, 5])  # same size, new content, new mtime
    assert total("sales.csv") == 9 and len(calls) == 2
    assert total("sales.csv") == 9 and len(calls) == 2


def test_a_file_replaced_by_os_replace_recomputes(cache: nbcache.Cache, workdir: Path):
    write_csv(workdir / "sales.csv", [1, 2])
    total, calls = reader(cache)
    assert total("sales.csv") == 3
    write_csv(workdir / "next.csv", [7, 8])
    os.replace(workdir / "next.csv", workdir / "sales.csv")
    assert total("sales.csv") == 15 and len(calls) == 2


def test_a_file_only_touched_still_hits(cache: nbcache.Cache, workdir: Path):
    sales = workdir / "sales.csv"
    write_csv(sales, [1, 2])
    age(sales)
    total, calls = reader(cache)
    assert total("sales.csv") == 3
    os.utime(sales)  # new mtime and ctime, same content
    assert total("sales.csv") == 3 and len(calls) == 1
    assert total.explain("sales.csv") == "hit"


def test_a_file_changed_within_one_timestamp_tick_is_still_seen(workdir: Path):
    """A rewrite that keeps the size and the timestamp (coarse filesystem clocks) recomputes."""
    sales = workdir / "sales.csv"
    write_csv(sales, [1, 2])
    total, calls = reader(SimpleCache())
    assert total("sales.csv") == 3
    stat = sales.stat()
    write_csv(sales, [4, 5])
    os.utime(sales, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime as before
    assert total("sales.csv") == 9 and len(calls) == 2


def test_a_function_reading_two_files_misses_when_either_changes(
    cache: nbcache.Cache, workdir: Path
):
    calls = Calls()

    @cached_result(cache=cache)
    def joined(left: str, right: str) -> int:
        calls.append(1)
        with open(left) as first, open(right) as second:
            return len(first.read()) * 100 + len(second.read())

    (workdir / "a.txt").write_text("aa")
    (workdir / "b.txt").write_text("bbb")
    assert joined("a.txt", "b.txt") == 203
    (workdir / "b.txt").write_text("bbbb")
    assert joined("a.txt", "b.txt") == 204
    (workdir / "a.txt").write_text("a")
    assert joined("a.txt", "b.txt") == 104
    assert joined("a.txt", "b.txt") == 104 and len(calls) == 3


def test_explain_names_the_changed_file(workdir: Path):
    sales = workdir / "sales.csv"
    write_csv(sales, [1, 2])
    age(sales, 600)
    total, _ = reader(SimpleCache())
    total("sales.csv")
    assert total.explain("sales.csv") == "hit"
    write_csv(sales, [3, 4])
    age(sales, 120)
    assert total.explain("sales.csv") == "`sales.csv` changed 2 min ago"
    sales.unlink()
    assert total.explain("sales.csv") == "`sales.csv` is missing"


def test_a_vanished_or_unreadable_file_is_a_miss_not_an_error(workdir: Path):
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def size(path: str) -> int:
        calls.append(1)
        try:
            with open(path) as file:
                return len(file.read())
        except OSError:
            return -1

    (workdir / "data.txt").write_text("abc")
    assert size("data.txt") == 3
    (workdir / "data.txt").unlink()
    assert size("data.txt") == -1 and len(calls) == 2
    assert size("data.txt") == -1 and len(calls) == 2, "an absent file is an input too"
    (workdir / "data.txt").mkdir()  # there, but no longer a file that can be read
    assert size("data.txt") == -1 and len(calls) == 3
    (workdir / "data.txt").rmdir()
    (workdir / "data.txt").write_text("abcd")
    assert size("data.txt") == 4 and len(calls) == 4


def test_relative_paths_are_checked_where_the_caller_is(workdir: Path):
    """Two working directories with different files under one name share no wrong entry."""
    for name, values in (("north", [1]), ("south", [2, 3])):
        (workdir / name).mkdir()
        write_csv(workdir / name / "sales.csv", values)
    total, calls = reader(SimpleCache())
    os.chdir(workdir / "north")
    assert total("sales.csv") == 1
    os.chdir(workdir / "south")
    assert total("sales.csv") == 5
    os.chdir(workdir / "north")
    assert total("sales.csv") == 1 and len(calls) == 3


def test_same_content_elsewhere_hits_by_content_digest(workdir: Path):
    """Another copy of the same bytes (another machine's file) is the same input."""
    for name in ("north", "south"):
        (workdir / name).mkdir()
        write_csv(workdir / name / "sales.csv", [1, 2])
    total, calls = reader(SimpleCache())
    os.chdir(workdir / "north")
    assert total("sales.csv") == 3
    os.chdir(workdir / "south")
    assert total("sales.csv") == 3 and len(calls) == 1


def test_a_file_over_the_digest_limit_is_never_read_by_nbcache(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(file_inputs.DIGEST_LIMIT_ENV, "16")
    monkeypatch.setattr(file_inputs, "RACY_NS", 0)  # written long ago: its times can be trusted
    digested: list[str] = []
    digest = file_inputs.content_digest
    monkeypatch.setattr(
        file_inputs, "content_digest", lambda path: digested.append(path) or digest(path)
    )
    big = workdir / "big.csv"
    write_csv(big, list(range(20)))
    total, calls = reader(SimpleCache())
    assert total("big.csv") == 190
    assert total("big.csv") == 190 and len(calls) == 1
    assert digested == [], "identity suffices for a file over the limit"
    os.utime(big)  # touched: without a digest, a new identity is a change
    assert total("big.csv") == 190 and len(calls) == 2
    assert digested == []


def test_a_file_the_function_wrote_is_not_an_input(workdir: Path):
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def report(n: int) -> str:
        calls.append(n)
        Path("report.txt").write_text(f"n={n}")
        with open("log.txt", "a") as log:
            log.write("ran\n")
        return Path("report.txt").read_text()

    assert report(1) == "n=1"
    Path("report.txt").write_text("edited")
    Path("log.txt").write_text("")
    assert report(1) == "n=1" and len(calls) == 1


def test_files_read_by_a_thread_the_function_starts_are_inputs(workdir: Path):
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def threaded(path: str) -> str:
        calls.append(path)
        found: list[str] = []
        worker = threading.Thread(target=lambda: found.append(Path(path).read_text()))
        worker.start()
        worker.join()
        return found[0]

    (workdir / "data.txt").write_text("one")
    assert threaded("data.txt") == "one"
    (workdir / "data.txt").write_text("two")
    assert threaded("data.txt") == "two" and len(calls) == 2


def test_a_hit_inside_a_computation_passes_its_files_on(workdir: Path):
    cache = SimpleCache()
    inner_calls, outer_calls = Calls(), Calls()

    @cached_result(cache=cache)
    def load(path: str) -> str:
        inner_calls.append(path)
        return Path(path).read_text()

    (workdir / "data.txt").write_text("one")
    assert load("data.txt") == "one"

    @cached_result(cache=cache)
    def shout(path: str) -> str:
        outer_calls.append(path)
        return load(path).upper()

    assert shout("data.txt") == "ONE"  # load hits inside shout's run
    assert len(inner_calls) == 1 and len(outer_calls) == 1
    (workdir / "data.txt").write_text("two")
    assert shout("data.txt") == "TWO"
    assert len(inner_calls) == 2 and len(outer_calls) == 2


def test_async_functions_record_their_files(workdir: Path):
    calls = Calls()

    @cached_result(cache=SimpleCache())
    async def read(path: str) -> str:
        calls.append(path)
        await asyncio.sleep(0)
        return Path(path).read_text()

    (workdir / "data.txt").write_text("one")
    assert asyncio.run(read("data.txt")) == "one"
    assert asyncio.run(read("data.txt")) == "one" and len(calls) == 1
    (workdir / "data.txt").write_text("two!")
    assert asyncio.run(read("data.txt")) == "two!" and len(calls) == 2


def test_map_recomputes_only_the_calls_whose_files_changed(cache: nbcache.Cache, workdir: Path):
    for name, values in (("a.csv", [1]), ("b.csv", [2]), ("c.csv", [3])):
        write_csv(workdir / name, values)
    total, calls = reader(cache)
    assert total.map(["a.csv", "b.csv", "c.csv"]) == [1, 2, 3] and len(calls) == 3
    write_csv(workdir / "b.csv", [5])
    assert total.map(["a.csv", "b.csv", "c.csv"]) == [1, 5, 3]
    assert calls[3:] == ["b.csv"]


@pytest.mark.memcached
def test_a_shared_entry_whose_file_changed_is_replaced_at_once(
    memcached: Any, workdir: Path, caplog: pytest.LogCaptureFixture
):
    """The caller that finds a stale entry takes the key's lease over it: no wait, no warning."""
    total, calls = reader(MemcachedCache([memcached.address]))
    write_csv(workdir / "sales.csv", [1, 2])
    assert total("sales.csv") == 3
    write_csv(workdir / "sales.csv", [4, 5])
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        assert total("sales.csv") == 9
    assert [record.getMessage() for record in caplog.records] == []
    assert total("sales.csv") == 9 and len(calls) == 2


# Each process defines the same function (one key for all) and reads `data.txt` where it runs.
SLOW_READER = """
import os, sys, textwrap, time
from nbcache import MemcachedCache
from nbcache.functions.decorator import cached_result
address, log_path, start_at = sys.argv[1:4]
ns = {"__name__": "__main__"}
exec(textwrap.dedent('''
    import os, time
    def slow_read(path, log_path):
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"computed ")
        os.close(fd)
        with open(path) as file:
            text = file.read()
        time.sleep(2.0)
        return text
'''), ns)
f = cached_result(cache=MemcachedCache([address]), ignore=("log_path",))(ns["slow_read"])
time.sleep(max(0.0, float(start_at) - time.time()))
print(f("data.txt", log_path), flush=True)
"""


@pytest.mark.slow
@pytest.mark.memcached
def test_a_caller_waiting_on_another_process_does_not_take_its_entry_for_other_files(
    memcached: Any, tmp_path: Path
):
    """Two kernels, one key, different files under one path: the one that waited for the
    other's computation computes its own result rather than taking the other's."""
    log = tmp_path / "computations"
    start_at = time.time() + 3.0  # after both interpreters have imported nbcache
    callers = []
    for name, delay in (("north", 0.0), ("south", 1.0)):  # south arrives while north computes
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.txt").write_text(name)
        arguments = [memcached.address, str(log), str(start_at + delay)]
        callers.append(
            subprocess.Popen(
                [sys.executable, "-c", SLOW_READER, *arguments],
                cwd=folder,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [caller.communicate(timeout=60)[0].strip() for caller in callers]
    assert [caller.returncode for caller in callers] == [0, 0]
    assert outputs == ["north", "south"]
    assert log.read_text().split() == ["computed", "computed"]


# -- declared files ----------------------------------------------------------------------------


def test_depends_on_globs_pick_up_an_added_file(cache: nbcache.Cache, workdir: Path):
    (workdir / "data").mkdir()
    (workdir / "data" / "a.bin").write_bytes(b"1")
    calls = Calls()

    @cached_result(cache=cache, depends_on=["data/*.bin"])
    def count() -> int:
        calls.append(1)
        return len(os.listdir("data"))

    assert count() == 1
    assert count() == 1 and len(calls) == 1
    (workdir / "data" / "b.bin").write_bytes(b"2")
    assert count.explain() == "`data/*.bin` now also matches `data/b.bin`"
    assert count() == 2 and len(calls) == 2
    (workdir / "data" / "a.bin").write_bytes(b"x")  # a declared file's content changed
    assert count() == 2 and len(calls) == 3
    assert count() == 2 and len(calls) == 3


def test_depends_on_takes_one_pattern_or_several_and_refuses_other_things():
    @cached_result(cache=SimpleCache(), depends_on="data/*.csv")
    def one() -> int:
        return 1

    @cached_result(cache=SimpleCache(), depends_on=[Path("a.csv"), "b/*.csv"])
    def several() -> int:
        return 1

    assert one() == 1 and several() == 1
    with pytest.raises(TypeError, match="depends_on takes glob patterns"):
        cached_result(depends_on=[3])(lambda: 1)


def test_adding_depends_on_changes_the_key():
    def f() -> int:
        return 1

    plain = cached_result(cache=SimpleCache())(f)
    declared = cached_result(cache=SimpleCache(), depends_on=["*.csv"])(f)
    assert plain.cache_key() != declared.cache_key()


# -- environment variables ------------------------------------------------------------------


def test_environment_variables_read_are_inputs(
    cache: nbcache.Cache, monkeypatch: pytest.MonkeyPatch
):
    calls = Calls()

    @cached_result(cache=cache)
    def mode() -> tuple[str, str | None]:
        calls.append(1)
        return os.environ["NBCACHE_TEST_MODE"], os.getenv("NBCACHE_TEST_LEVEL")

    monkeypatch.setenv("NBCACHE_TEST_MODE", "fast")
    monkeypatch.delenv("NBCACHE_TEST_LEVEL", raising=False)
    assert mode() == ("fast", None)
    assert mode() == ("fast", None) and len(calls) == 1
    monkeypatch.setenv("NBCACHE_TEST_MODE", "slow")
    assert mode.explain() == "environment variable `NBCACHE_TEST_MODE` changed"
    assert mode() == ("slow", None) and len(calls) == 2
    monkeypatch.setenv("NBCACHE_TEST_LEVEL", "3")
    assert mode.explain() == "environment variable `NBCACHE_TEST_LEVEL` is now set"
    assert mode() == ("slow", "3") and len(calls) == 3
    monkeypatch.setenv("NBCACHE_TEST_UNRELATED", "x")
    assert mode() == ("slow", "3") and len(calls) == 3


def test_a_variable_the_function_sets_itself_is_not_an_input(monkeypatch: pytest.MonkeyPatch):
    calls = Calls()
    monkeypatch.delenv("NBCACHE_TEST_OWN", raising=False)

    @cached_result(cache=SimpleCache())
    def configured() -> str:
        calls.append(1)
        os.environ["NBCACHE_TEST_OWN"] = "set by the function"
        return os.environ["NBCACHE_TEST_OWN"]

    assert configured() == "set by the function"
    assert configured() == "set by the function" and len(calls) == 1


def everything_on(server: Any) -> bytes:
    """Every key and value the server holds, as one blob (what anyone who can reach it reads)."""
    listing = server.command(b"lru_crawler metadump all").decode()
    keys = [unquote(line.split()[0].removeprefix("key=")) for line in listing.splitlines()[:-1]]
    assert keys, "the server holds nothing"
    return b"".join(server.command(b"get " + key.encode()) for key in keys)


@pytest.mark.memcached
def test_environment_values_reach_a_shared_server_only_keyed_with_the_secret(
    memcached: Any, monkeypatch: pytest.MonkeyPatch
):
    """A short password in the environment cannot be guessed from its digest on the server;
    every kernel with the secret still checks it."""
    monkeypatch.setenv("NBCACHE_TEST_PASSWORD", "hunter2")
    calls = Calls()

    def password_length() -> int:
        calls.append(1)
        return len(os.environ["NBCACHE_TEST_PASSWORD"])

    kernel_a = cached_result(cache=MemcachedCache([memcached.address]))(password_length)
    assert kernel_a() == 7
    held = everything_on(memcached)
    keyed = Signer(resolve_secrets(None), purpose="digests of secret inputs")
    assert keyed.hex_digest(b"hunter2").encode() in held
    for guessable in (
        xxhash.xxh3_128_hexdigest(b"hunter2"),
        xxhash.xxh3_64_hexdigest(b"hunter2"),
        hashlib.sha256(b"hunter2").hexdigest(),
        hashlib.md5(b"hunter2").hexdigest(),
    ):
        assert guessable.encode() not in held

    kernel_b = cached_result(cache=MemcachedCache([memcached.address]))(password_length)
    assert kernel_b() == 7 and len(calls) == 1
    monkeypatch.setenv("NBCACHE_TEST_PASSWORD", "hunter3")
    assert kernel_b.explain() == "environment variable `NBCACHE_TEST_PASSWORD` changed"
    assert kernel_b() == 7 and len(calls) == 2


@pytest.mark.memcached
@pytest.mark.parametrize("inner_stored_first", [True, False])
def test_a_function_of_another_cache_passes_its_variables_on(
    inner_stored_first: bool, memcached: Any, monkeypatch: pytest.MonkeyPatch
):
    """The inner function's cache keys its digests with its secret; the outer one's entry
    (in-process) keeps its own, so it hits while the variable is unchanged, and only then."""
    monkeypatch.setenv("NBCACHE_TEST_REGION", "eu")
    inner_calls, outer_calls = Calls(), Calls()

    @cached_result(cache=MemcachedCache([memcached.address]))
    def region() -> str:
        inner_calls.append(1)
        return os.environ["NBCACHE_TEST_REGION"]

    @cached_result(cache=SimpleCache())
    def report() -> str:
        outer_calls.append(1)
        return "report for " + region()

    if inner_stored_first:
        assert region() == "eu"
    assert report() == "report for eu"
    assert report() == "report for eu" and len(outer_calls) == 1 and len(inner_calls) == 1
    monkeypatch.setenv("NBCACHE_TEST_REGION", "us")
    assert report.explain() == "environment variable `NBCACHE_TEST_REGION` changed"
    assert report() == "report for us" and len(outer_calls) == 2


# -- global random state -------------------------------------------------------------------


def draws(cache: nbcache.Cache) -> tuple[Callable[[], Any], Calls]:
    calls = Calls()

    @cached_result(cache=cache)
    def sample() -> list[float]:
        calls.append(1)
        return list(np.random.normal(size=3))

    return sample, calls


def test_a_hit_advances_numpy_s_global_generator_as_a_plain_call(cache: nbcache.Cache):
    np.random.seed(7)
    plain = list(np.random.normal(size=3)), np.random.normal()

    sample, calls = draws(cache)
    np.random.seed(7)
    assert sample() == plain[0]
    assert np.random.normal() == plain[1]
    np.random.seed(7)
    assert sample() == plain[0] and len(calls) == 1
    assert np.random.normal() == plain[1], "the hit must advance the generator"


def test_another_seed_does_not_hit_the_first_seed_s_entry(cache: nbcache.Cache):
    sample, calls = draws(cache)
    np.random.seed(7)
    seven = sample()
    np.random.seed(8)
    assert sample.explain() == (
        "the global random state of `numpy.random` differs from the one it was computed with"
    )
    eight = sample()
    assert eight != seven and len(calls) == 2
    np.random.seed(8)
    assert sample() == eight


def test_a_library_drawing_from_the_global_generator_is_followed():
    calls = Calls()
    frame = pd.DataFrame({"x": range(100)})

    @cached_result(cache=SimpleCache())
    def pick(df: pd.DataFrame) -> list[int]:
        calls.append(1)
        return list(df.sample(5)["x"])  # random_state=None: numpy's global generator

    np.random.seed(1)
    first = pick(frame)
    np.random.seed(1)
    assert pick(frame) == first and len(calls) == 1
    np.random.seed(2)
    assert pick(frame) != first and len(calls) == 2


def test_python_s_random_module_is_followed_too():
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def roll() -> list[int]:
        calls.append(1)
        return [random.randint(1, 6) for _ in range(5)]

    random.seed(3)
    plain = [random.randint(1, 6) for _ in range(5)], random.random()
    random.seed(3)
    assert roll() == plain[0]
    random.seed(3)
    assert roll() == plain[0] and len(calls) == 1
    assert random.random() == plain[1]
    random.seed(4)
    roll()
    assert len(calls) == 2


def test_a_function_that_seeds_before_drawing_hits_whatever_the_state_before():
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def seeded() -> float:
        calls.append(1)
        np.random.seed(42)
        return float(np.random.normal())

    np.random.seed(1)
    value = seeded()
    after = np.random.normal()
    np.random.seed(2)
    assert seeded() == value and len(calls) == 1
    assert np.random.normal() == after, "the state a plain call leaves"


def test_a_function_that_draws_nothing_does_not_depend_on_the_generator():
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    np.random.seed(1)
    square(3)
    np.random.normal()
    assert square(3) == 9 and len(calls) == 1


def test_a_draw_of_only_the_cached_gaussian_is_seen():
    """Legacy numpy keeps every second normal deviate: using it consumes no raw draws."""
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def one() -> float:
        calls.append(1)
        return float(np.random.standard_normal())

    np.random.seed(5)
    np.random.standard_normal()  # leaves one deviate cached
    first = one()
    np.random.seed(5)
    assert one() != first and len(calls) == 2, "the cached deviate was part of the state"


# -- outside computations, and faults -----------------------------------------------------


def test_reads_outside_computations_are_nobody_s_inputs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    monkeypatch.setenv("NBCACHE_TEST_OUTSIDE", "1")
    (workdir / "outside.txt").write_text("1")
    assert square(3) == 9
    assert os.environ["NBCACHE_TEST_OUTSIDE"] == "1" and Path("outside.txt").read_text() == "1"
    assert square(3) == 9  # a hit: nothing read around it became its input
    monkeypatch.setenv("NBCACHE_TEST_OUTSIDE", "2")
    (workdir / "outside.txt").write_text("2")
    np.random.seed(4)
    random.seed(4)
    assert square(3) == 9 and len(calls) == 1


def test_seeding_and_the_environment_behave_as_ever_once_followed():
    @cached_result(cache=SimpleCache())
    def draw() -> float:
        return float(np.random.normal()) + random.random()

    draw()
    np.random.seed(4)
    first = np.random.normal()
    np.random.seed(4)
    assert np.random.normal() == first
    random.seed(4)
    python_first = random.random()
    random.setstate(random.getstate())
    random.seed(4)
    assert random.random() == python_first
    assert isinstance(os.environ, os._Environ)  # type: ignore[attr-defined]
    assert dict(os.environ) == os.environ.copy() and "PATH" in os.environ


def test_a_fault_while_recording_never_breaks_the_computation(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from nbcache.inputs.recording import Recording

    def broken(self: Recording, path: Any, *, declared: bool) -> None:
        raise RuntimeError("a bug in recording")

    monkeypatch.setattr(Recording, "_read", broken)
    (workdir / "data.txt").write_text("one")
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def read(path: str) -> str:
        calls.append(path)
        return Path(path).read_text()

    assert read("data.txt") == "one"
    assert read("data.txt") == "one" and len(calls) == 2, "a result recorded badly is not stored"
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("nbcache")]
    assert any("was not stored: recording its inputs failed" in w for w in warnings)


def test_a_variable_set_by_default_on_import_is_not_an_input(monkeypatch: pytest.MonkeyPatch):
    """Libraries set defaults on import (``os.environ.setdefault``): reading first, then setting."""
    calls = Calls()
    monkeypatch.delenv("NBCACHE_TEST_DEFAULT", raising=False)

    @cached_result(cache=SimpleCache())
    def configure() -> str:
        calls.append(1)
        return os.environ.setdefault("NBCACHE_TEST_DEFAULT", "on")

    assert configure() == "on"
    assert configure() == "on" and len(calls) == 1


def test_a_recording_that_cannot_start_still_lets_the_function_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from nbcache.inputs import instrumentation

    def refuse(sink: object) -> None:
        raise RuntimeError("audit hooks are not allowed here")

    monkeypatch.setattr(instrumentation, "start", refuse)
    calls = Calls()

    @cached_result(cache=SimpleCache())
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert double(2) == 4 and double(2) == 4
    assert len(calls) == 2, "a result whose inputs could not be recorded is not stored"
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("nbcache")]
    assert any("audit hooks are not allowed here" in w for w in warnings)


RECORD_ONE_FILE = """
import json, sys
from nbcache.inputs.recording import Recording
with Recording() as recording:
    open(sys.argv[1]).read()
print(json.dumps(recording.inputs.to_json()))
"""


def test_what_recording_itself_reads_is_not_an_input(workdir: Path):
    """Telling library files from the user's reads settings (HOME, ...) on first use: those
    reads are nbcache's, not the computation's."""
    import json

    (workdir / "data.txt").write_text("one")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printed = subprocess.run(
        [sys.executable, "-c", RECORD_ONE_FILE, "data.txt"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    recorded = json.loads(printed)
    assert list(recorded) == ["files"] and list(recorded["files"]) == ["data.txt"]
