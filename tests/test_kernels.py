"""Two real kernels share one private memcached: a cell computed in one is restored in the other."""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kernel_session import Kernel, kernel_environment
from memcached_server import MemcachedServer

pytestmark = [pytest.mark.kernel, pytest.mark.memcached, pytest.mark.slow]

SHARED_SECRET = "kernel-test-shared-secret"


@pytest.fixture
def start_kernel(
    tmp_path: Path, memcached: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], Kernel]]:
    """Start kernels on the private memcached, with the setup cells run; all shut down after."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    env = kernel_environment(tmp_path, NBCACHE_URL=memcached.url, NBCACHE_SECRET=SHARED_SECRET)
    kernels: list[Kernel] = []
    counter_file = tmp_path / "runs.txt"

    def start() -> Kernel:
        kernel = Kernel(env)
        kernels.append(kernel)
        kernel.run_ok("%load_ext nbcache")
        kernel.run_ok(
            f"counter_file = {str(counter_file)!r}\n"
            "def count_run():\n"
            "    with open(counter_file, 'a') as f:\n"
            "        f.write('ran\\n')\n"
            "data = list(range(1000))"
        )
        return kernel

    yield start
    for kernel in kernels:
        kernel.shutdown()


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


SUMMARY_CELL = """%%cache summary
count_run()
total = sum(data)
print('total is', total)
{'total': total, 'count': len(data)}"""


def test_kernels_run_the_python_under_test(start_kernel: Callable[[], Kernel]) -> None:
    """Run under another interpreter (scripts/test-matrix.sh), the kernels run that one too."""
    shown = start_kernel().run_ok("import sys\nprint(sys.executable, sys.version_info[:3])")
    assert shown.stdout == f"{sys.executable} {tuple(sys.version_info[:3])}\n"


def test_a_cell_computed_in_one_kernel_is_restored_in_another(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    kernel_a, kernel_b = start_kernel(), start_kernel()

    computed = kernel_a.run_ok(SUMMARY_CELL)
    assert runs(tmp_path) == 1
    assert computed.stdout == "total is 499500\n"
    assert computed.result is not None and "499500" in computed.result["text/plain"]

    restored = kernel_b.run_ok(SUMMARY_CELL)
    assert runs(tmp_path) == 1, "kernel B ran the cell instead of restoring it"
    note, _, replayed = restored.stdout.partition("\n")
    assert note.startswith("nbcache: restored total from memcached (computed ")
    assert replayed == computed.stdout
    assert restored.result == computed.result
    assert kernel_b.run_ok("print(total)").stdout == "499500\n"

    kernel_b.run_ok("data = list(range(1001))")
    changed = kernel_b.run_ok(SUMMARY_CELL)
    assert runs(tmp_path) == 2, "a changed input must recompute"
    assert changed.stdout == "total is 500500\n"


def test_an_inline_figure_is_replayed_as_png_in_the_other_kernel(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    kernel_a, kernel_b = start_kernel(), start_kernel()
    cell = (
        "%%cache plot\ncount_run()\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot(data[:50])\nax.set_title('first fifty')"
    )
    drawn = kernel_a.run_ok(cell)
    images_a = [d["image/png"] for d in drawn.displays if "image/png" in d]
    assert len(images_a) == 1

    replayed = kernel_b.run_ok(cell)
    assert runs(tmp_path) == 1
    images_b = [d["image/png"] for d in replayed.displays if "image/png" in d]
    assert images_b == images_a, "kernel B must show the same one image, and only it"
    assert base64.b64decode(images_b[0]).startswith(b"\x89PNG")
    assert kernel_b.run_ok("print(fig.axes[0].get_title())").stdout == "first fifty\n"


NOTEBOOK_CODE = """from dataclasses import dataclass
import numpy as np

@dataclass
class Point:
    x: int
    y: int

    def norm2(self):
        return self.x ** 2 + self.y ** 2

def log1p_features(X):
    return np.log1p(X)"""


def test_notebook_classes_and_functions_restored_in_another_kernel_are_that_kernels_own(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    kernel_a, kernel_b = start_kernel(), start_kernel()
    cell = (
        "%%cache shapes\ncount_run()\n"
        "from sklearn.preprocessing import FunctionTransformer\n"
        "q = Point(5, 6)\npipe = FunctionTransformer(log1p_features)"
    )
    check = "print(isinstance(q, Point), q == Point(5, 6), pipe.func is log1p_features)"
    for kernel in (kernel_a, kernel_b):
        kernel.run_ok(NOTEBOOK_CODE)
        kernel.run_ok(cell)
        assert kernel.run_ok(check).stdout == "True True True\n"
    assert runs(tmp_path) == 1, "kernel B ran the cell instead of restoring it"


def test_a_class_the_restoring_kernel_defines_differently_comes_back_as_the_stored_copy(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    kernel_a, kernel_b = start_kernel(), start_kernel()
    cell = (
        "%%cache local\ncount_run()\n"
        "class Local:\n    def version(self):\n        return 'stored'\nobj = Local()"
    )
    kernel_a.run_ok(cell)
    kernel_b.run_ok("class Local:\n    def version(self):\n        return 'other'\nbefore = Local")
    kernel_b.run_ok(cell)
    assert runs(tmp_path) == 1
    check = "print(obj.version(), isinstance(obj, Local), Local is before)"
    assert kernel_b.run_ok(check).stdout == "stored True False\n"


def test_a_cached_function_result_holds_the_restoring_kernels_own_classes(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    kernel_a, kernel_b = start_kernel(), start_kernel()
    define = (
        "from nbcache import cached_result\n"
        "@cached_result\n"
        "def corners(n):\n    count_run()\n    return [Point(i, -i) for i in range(n)]"
    )
    for kernel in (kernel_a, kernel_b):
        kernel.run_ok(NOTEBOOK_CODE)
        kernel.run_ok(define)
        kernel.run_ok("points = corners(3)")
        check = "print(all(isinstance(p, Point) for p in points), points[2] == Point(2, -2))"
        assert kernel.run_ok(check).stdout == "True True\n"
    assert runs(tmp_path) == 1, "kernel B computed instead of restoring"


def test_a_figure_shown_with_the_cells_result_comes_after_it_as_in_a_plain_run(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    kernel_a, kernel_b = start_kernel(), start_kernel()
    body = "import matplotlib.pyplot as plt\nplt.plot(data[:20])"
    plain = kernel_a.run_ok(body)
    assert plain.order == ["result", "display"]

    computed = kernel_a.run_ok("%%cache lines\ncount_run()\n" + body)
    restored = kernel_b.run_ok("%%cache lines\ncount_run()\n" + body)
    assert runs(tmp_path) == 1
    assert computed.order == ["result", "display"]
    assert restored.order == ["stdout", "result", "display"]  # the note, then as computed
    assert restored.displays == computed.displays


LOAD_CELL = """%%cache load
count_run()
import pandas as pd
sales = pd.read_csv('sales.csv')
print('total is', int(sales.x.sum()))"""


def test_kernels_with_different_files_under_one_path_share_no_result(
    start_kernel: Callable[[], Kernel], tmp_path: Path
):
    """The same cell and the same relative path: only a kernel whose file matches may hit."""
    folders = {}
    for name, rows in (("north", "x\n1\n2\n"), ("south", "x\n5\n6\n"), ("copy", "x\n1\n2\n")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "sales.csv").write_text(rows)
    kernels = {}
    for name, folder in folders.items():
        kernels[name] = start_kernel()
        kernels[name].run_ok(f"import os\nos.chdir({str(folder)!r})")

    assert kernels["north"].run_ok(LOAD_CELL).stdout == "total is 3\n"
    copy = kernels["copy"].run_ok(LOAD_CELL)
    assert runs(tmp_path) == 1, "the same bytes in another folder are the same input"
    assert copy.stdout.startswith("nbcache: restored sales from memcached")
    assert copy.stdout.endswith("total is 3\n")

    south = kernels["south"].run_ok(LOAD_CELL)
    assert runs(tmp_path) == 2, "a kernel whose sales.csv differs must compute its own"
    assert south.stdout.startswith("nbcache: running cell 'load': `sales.csv` changed")
    assert south.stdout.endswith("total is 11\n")
    assert kernels["south"].run_ok("print(int(sales.x.sum()))").stdout == "11\n"


BIG_FUNCTION_CELL = """from nbcache import cached_result
import numpy as np

@cached_result
def scaled(seed):
    count_run()
    return np.random.default_rng(seed).random(2 * 1024 * 1024) * 3  # 16 MiB
"""


def server_bytes_sent(server: MemcachedServer) -> int:
    for line in server.command(b"stats").decode().splitlines():
        if line.startswith("STAT bytes_written "):
            return int(line.split()[-1])
    raise AssertionError("memcached reported no bytes_written")


def test_a_big_result_repeats_from_the_kernels_near_copy_until_another_kernel_clears_it(
    start_kernel: Callable[[], Kernel], tmp_path: Path, memcached: MemcachedServer
):
    kernel_a, kernel_b = start_kernel(), start_kernel()
    for kernel in (kernel_a, kernel_b):
        kernel.run_ok(BIG_FUNCTION_CELL)
    kernel_a.run_ok("first = scaled(1)")
    kernel_a.run_ok("import nbcache; nbcache.get_cache().entries.near.settle()")
    before = server_bytes_sent(memcached)
    kernel_a.run_ok("again = scaled(1)\nassert (again == first).all()")
    assert runs(tmp_path) == 1
    assert server_bytes_sent(memcached) - before < 64 * 1024, "the hit moved the value again"

    kernel_b.run_ok(
        "assert (scaled(1) == np.random.default_rng(1).random(2 * 1024 * 1024) * 3).all()"
    )
    assert runs(tmp_path) == 1, "kernel B must read kernel A's result"
    kernel_b.run_ok("scaled.cache_clear()")
    kernel_a.run_ok("third = scaled(1)\nassert (third == first).all()")
    assert runs(tmp_path) == 2, "after kernel B's cache_clear, kernel A must recompute"
