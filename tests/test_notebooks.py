"""The notebooks in notebooks/ execute in a real kernel (nbclient) and show what they promise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from kernel_session import REPOSITORY, kernel_environment
from memcached_server import MemcachedServer
from nbclient import NotebookClient

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

NOTEBOOKS = REPOSITORY / "notebooks"
CELL_TIMEOUT = 120


def execute(name: str, tmp_path: Path, env: dict[str, str]) -> list[Any]:
    """Run a notebook from a fresh kernel; its code cells, with their outputs."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{name} is committed with outputs; clear them"
    )
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def cached_cells(cells: list[Any]) -> list[Any]:
    return [cell for cell in cells if cell.source.startswith("%%cache")]


def stdout(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def result(cell: Any) -> str:
    (value,) = [o.data["text/plain"] for o in cell.outputs if o.output_type == "execute_result"]
    return str(value)


def status_table(cells: list[Any]) -> Any:
    (status,) = [cell for cell in cells if cell.source.strip() == "%nbcache"]
    (display,) = [o for o in status.outputs if o.output_type == "display_data"]
    return display.data


def test_quickstart_computes_restores_and_recomputes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    cells = execute("quickstart.ipynb", tmp_path, kernel_environment(tmp_path))

    computed, restored, recomputed = cached_cells(cells)
    assert stdout(computed) == "2000 window means\n"
    note, _, replayed = stdout(restored).partition("\n")
    assert note.startswith("nbcache: restored means, window from memory (computed ")
    assert replayed == stdout(computed)
    assert result(restored) == result(computed)
    assert stdout(recomputed) == "1000 window means\n", "a changed input must recompute"

    table = status_table(cells)
    assert "<table" in table["text/html"]
    assert "hits               1" in table["text/plain"]
    assert "misses             2" in table["text/plain"]


@pytest.mark.memcached
def test_sharing_restores_in_a_second_kernel_what_the_first_computed(
    tmp_path: Path, memcached: MemcachedServer, monkeypatch
):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    env = kernel_environment(
        tmp_path, NBCACHE_URL=memcached.url, NBCACHE_SECRET="notebook-test-shared-secret"
    )

    (in_a,) = cached_cells(first := execute("sharing.ipynb", tmp_path, env))
    (in_b,) = cached_cells(second := execute("sharing.ipynb", tmp_path, env))

    assert stdout(in_a) == "summarised 200000 samples\n"
    note, _, replayed = stdout(in_b).partition("\n")
    assert note.startswith("nbcache: restored statistics, summary from memcached (computed ")
    assert replayed == stdout(in_a)
    assert result(in_b) == result(in_a)
    assert "MemcachedCache" in status_table(first)["text/plain"]
    assert "hits               1" in status_table(second)["text/plain"]
