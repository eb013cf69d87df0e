"""``%%cache`` in a real IPython shell: files, environment variables and random state a cell uses.

A cell that reads a file, an environment variable or the global random state runs again when
it changed (with a note naming it), and a hit leaves the random state where a plain run would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

import nbcache


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.chdir(tmp_path)
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.enabled = False
    ipython = InteractiveShell.instance(config=config)
    assert ipython.run_cell("%load_ext nbcache").success
    assert ipython.run_cell("import os\nimport numpy as np\nimport pandas as pd").success
    yield ipython
    InteractiveShell.clear_instance()


def run(shell: InteractiveShell, source: str) -> tuple[Any, str]:
    """The cell's result and what it printed; fails the test if the cell raised."""
    with capture_output() as captured:
        outcome = shell.run_cell(source)
    assert outcome.success, outcome.error_in_exec or outcome.error_before_exec
    return outcome.result, captured.stdout


def write_csv(path: Path, values: list[int]) -> None:
    path.write_text("x\n" + "".join(f"{v}\n" for v in values))


LOAD = "%%cache load\nprint('reading')\ndf = pd.read_csv('sales.csv')\nint(df.x.sum())"


def test_a_cell_reading_a_csv_recomputes_after_the_file_is_rewritten(
    shell: InteractiveShell, tmp_path: Path
):
    write_csv(tmp_path / "sales.csv", [1, 2])
    assert run(shell, LOAD)[0] == 3
    result, printed = run(shell, LOAD)
    assert result == 3 and printed.startswith("nbcache: restored df from memory")

    write_csv(tmp_path / "sales.csv", [4, 5])  # same size, new content
    result, printed = run(shell, LOAD)
    assert result == 9
    assert printed.startswith("nbcache: running cell 'load': `sales.csv` changed ")
    assert "reading" in printed
    assert run(shell, "int(df.x.sum())")[0] == 9


def test_a_cell_recomputes_after_the_file_is_replaced(shell: InteractiveShell, tmp_path: Path):
    write_csv(tmp_path / "sales.csv", [1, 2])
    assert run(shell, LOAD)[0] == 3
    write_csv(tmp_path / "other.csv", [10, 20])
    os.replace(tmp_path / "other.csv", tmp_path / "sales.csv")
    assert run(shell, LOAD)[0] == 30


def test_a_touched_file_still_restores(shell: InteractiveShell, tmp_path: Path):
    write_csv(tmp_path / "sales.csv", [1, 2])
    run(shell, LOAD)
    os.utime(tmp_path / "sales.csv")
    result, printed = run(shell, LOAD)
    assert result == 3 and printed.startswith("nbcache: restored df")


def test_depends_on_declares_files_the_cell_reads_unseen(shell: InteractiveShell, tmp_path: Path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.csv").write_text("1")
    cell = "%%cache parts --depends-on 'parts/*.csv'\nnames = sorted(os.listdir('parts'))\nnames"
    assert run(shell, cell)[0] == ["a.csv"]
    assert run(shell, cell)[1].startswith("nbcache: restored names")
    (tmp_path / "parts" / "b.csv").write_text("2")
    result, printed = run(shell, cell)
    assert result == ["a.csv", "b.csv"]
    assert printed.startswith(
        "nbcache: running cell 'parts': `parts/*.csv` now also matches `parts/b.csv`"
    )


def test_quiet_hides_the_note_on_a_changed_file(shell: InteractiveShell, tmp_path: Path):
    write_csv(tmp_path / "sales.csv", [1, 2])
    quiet = LOAD.replace("%%cache load", "%%cache load --quiet")
    run(shell, quiet)
    write_csv(tmp_path / "sales.csv", [4, 5])
    result, printed = run(shell, quiet)
    assert result == 9 and printed.startswith("reading\n")


DRAW = "%%cache draw\nx = np.random.normal(size=3)\nfloat(x.sum())"


def test_a_hit_advances_the_global_generator_as_a_plain_run(shell: InteractiveShell):
    run(shell, "np.random.seed(7)\nplain = float(np.random.normal(size=3).sum())")
    plain_next = run(shell, "float(np.random.normal())")[0]

    run(shell, "np.random.seed(7)")
    assert run(shell, DRAW)[0] == run(shell, "plain")[0]
    assert run(shell, "float(np.random.normal())")[0] == plain_next
    run(shell, "np.random.seed(7)")
    result, printed = run(shell, DRAW)
    assert printed.startswith("nbcache: restored x") and result == run(shell, "plain")[0]
    assert run(shell, "float(np.random.normal())")[0] == plain_next


def test_reseeding_does_not_hit_the_other_seed_s_entry(shell: InteractiveShell):
    run(shell, "np.random.seed(7)")
    seven = run(shell, DRAW)[0]
    run(shell, "np.random.seed(8)")
    result, printed = run(shell, DRAW)
    assert result != seven
    assert printed.startswith(
        "nbcache: running cell 'draw': the global random state of `numpy.random` differs"
    )
    run(shell, "np.random.seed(8)\nexpected = float(np.random.normal(size=3).sum())")
    assert result == run(shell, "expected")[0]


def test_a_helper_drawing_random_numbers_is_followed(shell: InteractiveShell):
    run(shell, "import random\ndef jitter(n):\n    return [random.random() for _ in range(n)]")
    cell = "%%cache noisy\nnoise = jitter(3)\nnoise"
    run(shell, "random.seed(1)")
    first = run(shell, cell)[0]
    run(shell, "random.seed(2)")
    assert run(shell, cell)[0] != first


@pytest.fixture(params=["simple", pytest.param("memcached", marks=pytest.mark.memcached)])
def where(request: pytest.FixtureRequest, shell: InteractiveShell) -> Iterator[str]:
    """The cache the shell's cells use, as the restore note names it: the in-process default,
    or a real memcached (whose entries keep environment values as keyed digests)."""
    if request.param == "memcached":
        server = request.getfixturevalue("memcached")
        assert run(shell, f"%nbcache use {server.url}")[0] is None
    yield {"simple": "memory", "memcached": "memcached"}[request.param]
    nbcache.configure(None)


def test_an_environment_variable_read_by_a_cell_is_an_input(
    where: str, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("NBCACHE_TEST_MODE", "fast")
    cell = "%%cache mode\nmode = os.environ['NBCACHE_TEST_MODE'] + str(os.getenv('NOPE_X'))\nmode"
    assert run(shell, cell)[0] == "fastNone"
    restored = run(shell, cell)[1]
    assert restored.startswith(f"nbcache: restored mode from {where}"), restored
    monkeypatch.setenv("NBCACHE_TEST_MODE", "slow")
    result, printed = run(shell, cell)
    assert result == "slowNone"
    assert printed.startswith(
        "nbcache: running cell 'mode': environment variable `NBCACHE_TEST_MODE` changed"
    )
