"""The notebooks in notebooks/ execute in a real kernel (nbclient) and show what they promise."""

from __future__ import annotations

from collections.abc import Callable
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
    return execute_notebook(read(name), tmp_path, env)


def read(name: str) -> Any:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{name} is committed with outputs; clear them"
    )
    return notebook


def without_nbcache(notebook: Any) -> Any:
    """The notebook as it runs without nbcache: no extension, no status, no %%cache lines."""
    plain = nbformat.from_dict(notebook)
    plain.cells = [
        cell
        for cell in plain.cells
        if cell.cell_type != "code" or cell.source.strip() not in ("%load_ext nbcache", "%nbcache")
    ]
    for cell in plain.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%cache"):
            cell.source = cell.source.partition("\n")[2]
    return plain


def execute_notebook(notebook: Any, tmp_path: Path, env: dict[str, str]) -> list[Any]:
    """Run a notebook object from a fresh kernel; its code cells, with their outputs."""
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def shown(cell: Any) -> list[tuple[str, str]]:
    """What a cell showed, in order, as a plain run shows it (nbcache's notes left out)."""
    found: list[tuple[str, str]] = []
    for output in cell.outputs:
        if output.output_type == "stream":
            found.append((output.name, output.text))
        elif output.output_type == "execute_result":
            found += [("result " + mime, str(output.data[mime])) for mime in sorted(output.data)]
        elif output.output_type == "display_data":
            found += [("display " + mime, str(output.data[mime])) for mime in sorted(output.data)]
        else:
            found.append((output.output_type, str(output)))
    merged: list[tuple[str, str]] = []
    for kind, text in found:  # the kernel splits a stream into messages where it likes
        if merged and kind in ("stdout", "stderr") and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    plain: list[tuple[str, str]] = []
    for kind, text in merged:  # lines are whole only once the messages are joined
        if kind in ("stdout", "stderr"):
            lines = text.splitlines(keepends=True)
            text = "".join(line for line in lines if not line.startswith("nbcache: restored "))
            if not text:
                continue
        plain.append((kind, text))
    return plain


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
    assert note.startswith("nbcache: restored summary from memcached (computed ")
    assert replayed == stdout(in_a)
    assert result(in_b) == result(in_a)
    assert "MemcachedCache" in status_table(first)["text/plain"]
    assert "hits               1" in status_table(second)["text/plain"]


@pytest.mark.memcached
def test_sales_analysis_shows_the_same_computed_restored_and_without_nbcache(
    tmp_path: Path, memcached_factory: Callable[..., MemcachedServer], monkeypatch
):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    server = memcached_factory(memory_mb=512)
    cached_env = kernel_environment(
        tmp_path, NBCACHE_URL=server.url, NBCACHE_SECRET="notebook-test-shared-secret"
    )
    notebook = read("sales_analysis.ipynb")

    plain = execute_notebook(without_nbcache(notebook), tmp_path, kernel_environment(tmp_path))
    computed = execute_notebook(read("sales_analysis.ipynb"), tmp_path, cached_env)
    restored = execute_notebook(read("sales_analysis.ipynb"), tmp_path, cached_env)

    same = [c for c in computed if c.source.strip() not in ("%load_ext nbcache", "%nbcache")]
    again = [c for c in restored if c.source.strip() not in ("%load_ext nbcache", "%nbcache")]
    assert len(plain) == len(same) == len(again)
    for plain_cell, computed_cell, restored_cell in zip(plain, same, again, strict=True):
        assert shown(computed_cell) == shown(plain_cell), computed_cell.source
        assert shown(restored_cell) == shown(plain_cell), restored_cell.source
    for cell in cached_cells(restored):
        assert stdout(cell).startswith("nbcache: restored "), cell.source
    assert not any("nbcache: restored" in stdout(cell) for cell in computed)
    assert "hits               4" in status_table(restored)["text/plain"]
    (plot,) = [cell for cell in plain if "ax.set_title" in cell.source]
    kinds = [kind for kind, _ in shown(plot)]
    assert kinds.index("result text/plain") < kinds.index("display image/png")
