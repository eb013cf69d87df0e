"""``%%cache`` and ``%nbcache`` in a real IPython shell, a fresh one per test."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from memcached_server import MemcachedServer, free_port
from traitlets.config import Config

import nbcache
from nbcache.cells.run import hit_note
from nbcache.cells.stats import SessionStats


@dataclass
class Ran:
    """What one cell did, as the user sees it."""

    result: Any
    error: BaseException | None
    stdout: str
    stderr: str
    displays: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.enabled = False  # no history database, no saving thread
    ipython = InteractiveShell.instance(config=config)
    ipython.user_ns["counter_file"] = str(tmp_path / "runs.txt")
    counting = "def count_run():\n    with open(counter_file, 'a') as f:\n        f.write('ran\\n')"
    assert ipython.run_cell(counting).success
    assert ipython.run_cell("%load_ext nbcache").success
    yield ipython
    InteractiveShell.clear_instance()


def run(shell: InteractiveShell, source: str) -> Ran:
    with capture_output() as captured:
        outcome = shell.run_cell(source)
    error = outcome.error_before_exec or outcome.error_in_exec
    displays = [dict(output.data) for output in captured.outputs]
    return Ran(outcome.result, error, captured.stdout, captured.stderr, displays)


def runs(shell: InteractiveShell) -> int:
    """How many times a cell body that counts itself has run."""
    path = Path(shell.user_ns["counter_file"])
    return len(path.read_text().splitlines()) if path.exists() else 0


COUNTED = "count_run()\n"
SLOW_CELL = (
    "%%cache features\n" + COUNTED + "X = [v * 2 for v in data]\nprint('len', len(X))\nsum(X)"
)


def nbcache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("nbcache")]


def test_a_hit_restores_variables_output_and_result_without_running(shell: InteractiveShell):
    shell.run_cell("data = [1, 2, 3]")
    first = run(shell, SLOW_CELL)
    assert first.error is None and first.result == 12 and runs(shell) == 1
    assert "len 3" in first.stdout and "nbcache:" not in first.stdout
    shell.run_cell("del X")

    second = run(shell, SLOW_CELL)

    assert runs(shell) == 1, "the body ran again on a hit"
    assert second.result == 12
    assert shell.user_ns["X"] == [2, 4, 6]
    note, _, replayed = second.stdout.partition("\n")
    assert note.startswith("nbcache: restored X from memory (computed ")
    assert "expires in" in note
    assert replayed.startswith("len 3\n")
    assert shell.user_ns["_"] == 12, "the restored result is the cell's result (Out, _)"


def test_a_changed_input_recomputes(shell: InteractiveShell):
    shell.run_cell("data = [1, 2, 3]")
    run(shell, SLOW_CELL)
    shell.run_cell("data = [1, 2, 4]")
    changed = run(shell, SLOW_CELL)
    assert runs(shell) == 2 and changed.result == 14
    shell.run_cell("data = [1, 2, 3]")
    assert run(shell, SLOW_CELL).result == 12 and runs(shell) == 2, "the first entry still hits"


def test_editing_a_helper_defined_in_another_cell_recomputes(shell: InteractiveShell):
    cell = "%%cache\n" + COUNTED + "y = scale(10)"
    shell.run_cell("def scale(v):\n    return v * 2")
    run(shell, cell)
    run(shell, cell)
    assert runs(shell) == 1 and shell.user_ns["y"] == 20
    shell.run_cell("def scale(v):\n    return v * 3")
    run(shell, cell)
    assert runs(shell) == 2 and shell.user_ns["y"] == 30


def test_changing_a_global_that_a_helper_reads_recomputes(shell: InteractiveShell):
    """The cell reads only `scale`; `scale` reads the global `factor`: its value is an input."""
    cell = "%%cache\n" + COUNTED + "y = scale(10)"
    shell.run_cell("factor = 2\ndef scale(v):\n    return v * factor")
    run(shell, cell)
    run(shell, cell)
    assert runs(shell) == 1 and shell.user_ns["y"] == 20
    shell.run_cell("factor = 3")
    run(shell, cell)
    assert runs(shell) == 2 and shell.user_ns["y"] == 30


def test_comments_and_layout_do_not_change_the_key_but_the_name_does(shell: InteractiveShell):
    shell.run_cell("data = [1]")
    run(shell, SLOW_CELL)
    reformatted = SLOW_CELL.replace("X = [v * 2 for v in data]", "X = [ v*2  for v in data ]  # x")
    assert run(shell, reformatted).result == 2 and runs(shell) == 1
    run(shell, SLOW_CELL.replace("%%cache features", "%%cache other"))
    assert runs(shell) == 2


def test_force_recomputes_and_quiet_hides_the_note(shell: InteractiveShell):
    shell.run_cell("data = [1]")
    run(shell, SLOW_CELL)
    run(shell, SLOW_CELL.replace("features", "features --force"))
    assert runs(shell) == 2
    quiet = run(shell, SLOW_CELL.replace("features", "features --quiet"))
    assert runs(shell) == 2 and "nbcache" not in quiet.stdout and "len 1" in quiet.stdout


def test_timeout_option_expires_the_entry(shell: InteractiveShell):
    cell = "%%cache short timeout=1.5\n" + COUNTED + "v = 1"
    run(shell, cell)
    run(shell, cell)  # a hit, even if this machine stalls for a second in between
    assert runs(shell) == 1
    time.sleep(1.7)
    run(shell, cell.replace("timeout=1.5", "--timeout 1.5"))
    assert runs(shell) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%%cache a b", "one NAME at most"),
        ("%%cache timeout=soon", "number of seconds"),
        ("%%cache timeout=-1", "positive number of seconds"),
        ("%%cache --timeout nan", "positive number of seconds"),
        ("%%cache size=3", "unknown option 'size=3'"),
        ("%%cache --frobnicate", "unrecognized arguments"),
        ("%%cache timeout=1 --timeout 2", "given twice"),
    ],
)
def test_a_wrong_option_is_a_usage_error(shell: InteractiveShell, line: str, message: str):
    ran = run(shell, line + "\n" + COUNTED)
    assert isinstance(ran.error, UsageError)
    assert message in str(ran.error)
    assert runs(shell) == 0


def test_a_cell_that_raises_is_not_cached_and_fails_as_usual(shell: InteractiveShell):
    cell = "%%cache\n" + COUNTED + "print('before')\nratio = 1 / zero"
    shell.run_cell("zero = 0")
    first = run(shell, cell)
    assert isinstance(first.error, ZeroDivisionError)
    assert "before" in first.stdout and "ZeroDivisionError" in first.stdout
    assert "ratio = 1 / zero" in first.stdout, "the traceback shows the user's line"
    assert "line 4" in first.stdout, "line numbers count the %%cache line, as in the notebook"
    second = run(shell, cell)
    assert isinstance(second.error, ZeroDivisionError) and runs(shell) == 2


def test_a_syntax_error_is_reported_at_its_line_in_the_cell(shell: InteractiveShell):
    ran = run(shell, "%%cache\nfine = 1\nbroken = (\n")
    assert isinstance(ran.error, SyntaxError)
    assert ran.error.lineno == 3
    assert "fine" not in shell.user_ns


def test_an_unpicklable_output_warns_once_by_name_and_the_cell_stands(
    shell: InteractiveShell, caplog: pytest.LogCaptureFixture
):
    cell = "%%cache\n" + COUNTED + "import threading\nlock = threading.Lock()\ncount = 3"
    caplog.set_level(logging.WARNING)
    first = run(shell, cell)
    assert first.error is None and shell.user_ns["count"] == 3
    (warning,) = nbcache_warnings(caplog)
    assert "'lock'" in warning and "nothing was stored" in warning
    run(shell, cell)
    assert runs(shell) == 2


def test_an_input_without_a_digest_runs_uncached_with_one_warning(
    shell: InteractiveShell, caplog: pytest.LogCaptureFixture
):
    shell.run_cell("numbers = iter([1, 2, 3])")
    caplog.set_level(logging.WARNING)
    ran = run(shell, "%%cache\n" + COUNTED + "first = next(numbers)\nfirst")
    assert ran.result == 1
    (warning,) = nbcache_warnings(caplog)
    assert "'numbers'" in warning and "without the cache" in warning
    assert run(shell, "%%cache\n" + COUNTED + "first = next(numbers)\nfirst").result == 2


def test_a_hit_applies_deletes_and_in_place_changes_of_inputs(shell: InteractiveShell):
    cell = "%%cache\n" + COUNTED + "rows.append(4)\ntotal = sum(rows) * scratch\ndel scratch"
    shell.run_cell("rows = [1, 2, 3]\nscratch = 2")
    run(shell, cell)
    assert shell.user_ns["rows"] == [1, 2, 3, 4] and "scratch" not in shell.user_ns
    shell.run_cell("rows = [1, 2, 3]\nscratch = 2")
    run(shell, cell)
    assert runs(shell) == 1
    assert shell.user_ns["rows"] == [1, 2, 3, 4]
    assert shell.user_ns["total"] == 20
    assert "scratch" not in shell.user_ns


def test_a_hit_leaves_alone_what_the_run_left_alone(shell: InteractiveShell):
    cell = "%%cache\n" + COUNTED + "if flag:\n    maybe = 1\nnumber = 7"
    shell.run_cell("flag = False\nnumber = 7")
    run(shell, cell)
    shell.run_cell("maybe = 'mine'\nnumber = 0")
    run(shell, cell)
    assert runs(shell) == 1
    assert shell.user_ns["maybe"] == "mine", "a branch not taken must not overwrite"
    assert shell.user_ns["number"] == 7, "rebinding to an equal object is still a binding"


def test_restored_functions_and_classes_read_the_notebook_globals(shell: InteractiveShell):
    cell = (
        "%%cache\n" + COUNTED + "def scaled(x):\n    return x * factor\n"
        "class Scaler:\n    def apply(self, x):\n        return scaled(x)\n"
        "    @staticmethod\n    def unit():\n        return factor\n"
    )
    shell.run_cell("factor = 2")
    run(shell, cell)
    run(shell, cell)
    assert runs(shell) == 1
    shell.run_cell("factor = 10")
    assert run(shell, "scaled(1), Scaler().apply(1), Scaler.unit()").result == (10, 10, 10)


def test_rich_output_is_replayed_and_a_semicolon_suppresses_the_result(shell: InteractiveShell):
    cell = (
        "%%cache\n" + COUNTED + "from IPython.display import HTML, display\n"
        "display(HTML('<b>bold</b>'))\nanswer = 42\nanswer;"
    )
    first = run(shell, cell)
    second = run(shell, cell)
    assert runs(shell) == 1
    assert first.result is None and second.result is None
    assert [d.get("text/html") for d in second.displays] == ["<b>bold</b>"]
    assert second.displays == first.displays


def test_a_dead_cache_server_never_stops_the_cell(
    shell: InteractiveShell, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    nbcache.configure(f"memcached://127.0.0.1:{free_port()}?connect_timeout=0.2&timeout=0.2")
    shell.run_cell("data = [5]")
    for _ in range(2):
        ran = run(shell, SLOW_CELL)
        assert ran.error is None and ran.result == 10
    assert runs(shell) == 2
    assert shell.user_ns["X"] == [10]


def test_a_cache_that_cannot_be_made_never_stops_the_cell(
    shell: InteractiveShell, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    caplog.set_level(logging.WARNING)
    shell.run_cell("data = [5]")
    with monkeypatch.context() as patch:
        patch.setenv("NBCACHE_URL", "nowhere://at-all")
        with pytest.raises(nbcache.ConfigurationError):
            nbcache.configure(None)  # forgets the current cache, then fails to make one
        ran = run(shell, SLOW_CELL)
    assert ran.error is None and ran.result == 10 and shell.user_ns["X"] == [10]
    (warning,) = nbcache_warnings(caplog)
    assert "nowhere://" in warning and "without it" in warning


def test_nbcache_shows_backend_and_session_stats(shell: InteractiveShell):
    shell.run_cell("data = [1]")
    run(shell, SLOW_CELL)
    run(shell, SLOW_CELL)
    status = run(shell, "%nbcache")
    assert status.error is None
    (bundle,) = status.displays
    assert "<table" in bundle["text/html"] and "SimpleCache" in bundle["text/html"]
    plain = bundle["text/plain"]
    assert "hits               1" in plain and "misses             1" in plain
    assert "time saved" in plain and "backend" in plain


@pytest.mark.memcached
def test_nbcache_use_and_clear_on_a_real_memcached(
    shell: InteractiveShell, memcached: MemcachedServer
):
    switched = run(shell, f"%nbcache use {memcached.url}")
    assert switched.error is None and "MemcachedCache" in switched.stdout
    shell.run_cell("data = [1]")
    run(shell, SLOW_CELL)
    assert "from memcached" in run(shell, SLOW_CELL).stdout and runs(shell) == 1
    assert run(shell, "%nbcache clear").error is None
    run(shell, SLOW_CELL)
    assert runs(shell) == 2
    bad = run(shell, "%nbcache use nowhere://")
    assert isinstance(bad.error, UsageError) and "simple://" in str(bad.error)
    assert isinstance(run(shell, "%nbcache frobnicate").error, UsageError)


@pytest.mark.memcached
def test_nbcache_use_of_a_server_that_does_not_answer_keeps_the_cache_in_use(
    shell: InteractiveShell, memcached: MemcachedServer
):
    run(shell, f"%nbcache use {memcached.url}")
    nowhere = f"memcached://127.0.0.1:{free_port()}"
    refused = run(shell, f"%nbcache use {nowhere}")
    assert isinstance(refused.error, UsageError)
    assert "cannot reach" in str(refused.error)
    assert f"still using <MemcachedCache 127.0.0.1:{memcached.port}" in str(refused.error)
    assert "now using" not in refused.stdout
    assert f"127.0.0.1:{memcached.port}" in repr(nbcache.get_cache())


def test_settings_are_traitlets(shell: InteractiveShell):
    shell.run_cell("%config NbcacheMagics.quiet = True\n")
    shell.run_cell("data = [1]")
    run(shell, SLOW_CELL)
    assert "nbcache" not in run(shell, SLOW_CELL).stdout
    shell.run_cell("%config NbcacheMagics.default_timeout = 0.3")
    cell = "%%cache\n" + COUNTED + "w = 1"
    run(shell, cell)
    time.sleep(0.4)
    run(shell, cell)
    assert runs(shell) == 3


def test_the_hit_note_names_results_not_imports_or_loop_variables(shell: InteractiveShell):
    cell = (
        "%%cache\n" + COUNTED + "from math import sqrt\nimport os\n"
        "roots = []\nfor k in range(3):\n    roots.append(sqrt(k))\n"
        "total = sum(roots)"
    )
    run(shell, cell)
    shell.run_cell("del sqrt, os, k, roots, total")
    note = run(shell, cell).stdout.splitlines()[0]
    assert runs(shell) == 1
    assert note.startswith("nbcache: restored roots, total from memory ("), note
    assert all(name in shell.user_ns for name in ("sqrt", "os", "k", "roots", "total"))


def test_time_saved_counts_compute_time_less_restore_time():
    stats = SessionStats()
    stats.record_hit(2.0, 0.5)
    stats.record_hit(0.1, 0.3)
    stats.record_hit(None, 0.2)
    assert stats.time_saved == pytest.approx(1.3)
    assert ("time saved", "1.3 s") in stats.rows()


def test_the_hit_note_shows_a_restore_time_that_is_a_sizeable_part_of_the_compute_time():
    sizeable = hit_note(["df"], "memcached", 100.0, 2.0, None, 160.0, restore_time=0.8)
    assert "(computed 1 min ago in 2.0 s, restored in 0.80 s, never expires)" in sizeable
    negligible = hit_note(["df"], "memcached", 100.0, 2.0, None, 160.0, restore_time=0.06)
    assert "restored in" not in negligible
