"""A ``%%cache`` hit leaves the namespace as a plain run of the cell would: user modules, helpers'
effects on globals, objects changed in place and the names that refer to them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.utils.capture import capture_output


@pytest.fixture
def shell(ipython_shell: Any, tmp_path: Path) -> Iterator[Any]:
    """A shell with nbcache loaded, ``tmp_path`` importable, and a counter of cell runs."""
    ipython_shell.user_ns["counter_file"] = str(tmp_path / "runs.txt")
    counting = "def count_run():\n    with open(counter_file, 'a') as f:\n        f.write('.')"
    ok(ipython_shell, counting)
    ok(ipython_shell, "%load_ext nbcache")
    sys.path.insert(0, str(tmp_path))
    modules = set(sys.modules)
    yield ipython_shell
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - modules:
        if name.startswith("user_helpers"):
            del sys.modules[name]


def ok(shell: Any, source: str) -> str:
    """Run a cell that must succeed; what it printed."""
    with capture_output() as captured:
        outcome = shell.run_cell(source)
    assert outcome.success, f"{source!r} failed: {outcome.error_in_exec!r}\n{captured.stderr}"
    return captured.stdout


def runs(shell: Any) -> int:
    path = Path(shell.user_ns["counter_file"])
    return len(path.read_text()) if path.exists() else 0


def write_module(path: Path, source: str) -> None:
    """Write a module file so that a reload sees it (a newer mtime than any cached bytecode)."""
    path.write_text(source)
    later = path.stat().st_mtime + 10
    os.utime(path, (later, later))


# -- user modules ----------------------------------------------------------------------------


def test_an_edited_user_module_used_through_its_name_recomputes_after_reload(
    shell: Any, tmp_path: Path
):
    module = tmp_path / "user_helpers_reload.py"
    write_module(module, "def scale(values):\n    return [v * 2 for v in values]\n")
    ok(shell, "import importlib\nimport user_helpers_reload as hm")
    cell = "%%cache\ncount_run()\ndoubled = hm.scale([1, 2, 3])"
    ok(shell, cell)
    assert shell.user_ns["doubled"] == [2, 4, 6]

    ok(shell, "importlib.reload(hm)")
    assert "restored doubled" in ok(shell, cell), "an unchanged module must still hit"
    assert runs(shell) == 1

    write_module(module, "def scale(values):\n    return [v * 3 for v in values]\n")
    ok(shell, "importlib.reload(hm)")
    ok(shell, cell)
    assert shell.user_ns["doubled"] == [3, 6, 9]
    assert runs(shell) == 2


def test_an_edited_user_module_recomputes_under_autoreload(shell: Any, tmp_path: Path):
    module = tmp_path / "user_helpers_auto.py"
    write_module(module, "def scale(values):\n    return [v * 2 for v in values]\n")
    ok(shell, "%load_ext autoreload\n%autoreload 2")
    ok(shell, "import user_helpers_auto as hm")
    cell = "%%cache\ndoubled = hm.scale([1, 2, 3])"
    ok(shell, cell)
    assert shell.user_ns["doubled"] == [2, 4, 6]

    write_module(module, "def scale(values):\n    return [v * 3 for v in values]\n")
    ok(shell, cell)
    assert shell.user_ns["doubled"] == [3, 6, 9]


def test_the_globals_a_user_module_function_reads_are_inputs(shell: Any, tmp_path: Path):
    write_module(
        tmp_path / "user_helpers_factor.py",
        "FACTOR = 2\ndef scale(values):\n    return [v * FACTOR for v in values]\n",
    )
    ok(shell, "import user_helpers_factor as hm")
    cell = "%%cache\nscaled = hm.scale([1, 2])\nlimit = hm.FACTOR + 1"
    ok(shell, cell)
    ok(shell, "hm.FACTOR = 5")
    ok(shell, cell)
    assert shell.user_ns["scaled"] == [5, 10]
    assert shell.user_ns["limit"] == 6


def test_a_package_submodule_used_through_a_chain_is_keyed_by_its_code(shell: Any, tmp_path: Path):
    package = tmp_path / "user_helpers_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import ops\n")
    write_module(package / "ops.py", "def shift(v):\n    return v + 1\n")
    ok(shell, "import importlib\nimport user_helpers_pkg")
    cell = "%%cache\nshifted = user_helpers_pkg.ops.shift(1)"
    ok(shell, cell)
    write_module(package / "ops.py", "def shift(v):\n    return v + 100\n")
    ok(shell, "importlib.reload(user_helpers_pkg.ops)")
    ok(shell, cell)
    assert shell.user_ns["shifted"] == 101


# -- effects of helpers ----------------------------------------------------------------------


def test_a_global_a_helper_changes_in_place_is_replayed_on_a_hit(shell: Any):
    ok(shell, "metrics = {}\ndef log_metric(name, value):\n    metrics[name] = value")
    cell = "%%cache\ncount_run()\nacc = 0.75\nlog_metric('accuracy', acc)"
    ok(shell, cell)
    assert shell.user_ns["metrics"] == {"accuracy": 0.75}

    ok(shell, "metrics = {}\nsame = metrics")
    ok(shell, cell)
    assert runs(shell) == 1, "the second run must be a hit"
    assert shell.user_ns["metrics"] == {"accuracy": 0.75}
    assert shell.user_ns["same"] is shell.user_ns["metrics"]


def test_globals_a_helper_rebinds_or_creates_are_replayed_on_a_hit(shell: Any):
    ok(
        shell,
        "calls = 0\n"
        "def fit(x):\n"
        "    global calls, last_fit\n"
        "    calls += 1\n"
        "    last_fit = x * 2\n"
        "    return x",
    )
    cell = "%%cache\ncount_run()\nmodel = fit(21)"
    ok(shell, cell)
    assert (shell.user_ns["calls"], shell.user_ns["last_fit"]) == (1, 42)

    ok(shell, "calls = 0\ndel last_fit")
    ok(shell, cell)
    assert runs(shell) == 1
    assert (shell.user_ns["calls"], shell.user_ns["last_fit"]) == (1, 42)


def test_a_user_module_global_its_function_changes_is_replayed_on_a_hit(shell: Any, tmp_path: Path):
    write_module(
        tmp_path / "user_helpers_registry.py",
        "SEEN = []\ndef remember(item):\n    SEEN.append(item)\n    return len(SEEN)\n",
    )
    ok(shell, "import user_helpers_registry as reg")
    cell = "%%cache\ncount_run()\nn = reg.remember('a')"
    ok(shell, cell)
    module = sys.modules["user_helpers_registry"]
    assert module.SEEN == ["a"]

    ok(shell, "reg.SEEN.clear()")
    ok(shell, cell)
    assert runs(shell) == 1
    assert module.SEEN == ["a"]


# -- objects changed in place ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "change", "expected"),
    [
        ("obj = [1, 2, 3]", "obj.append(4)", "[1, 2, 3, 4]"),
        ("obj = {'a': 1}", "obj['b'] = 2", "{'a': 1, 'b': 2}"),
        ("obj = {1, 2}", "obj.add(3)", "{1, 2, 3}"),
        (
            "import numpy as np\nobj = np.zeros(3)",
            "obj[1] = 7.0",
            "np.array([0.0, 7.0, 0.0])",
        ),
        (
            "import pandas as pd\nobj = pd.DataFrame({'x': [1, 2, 3]})",
            "obj.loc[0, 'x'] = 99\nobj['y'] = obj['x'] * 2",
            "pd.DataFrame({'x': [99, 2, 3], 'y': [198, 4, 6]})",
        ),
        (
            "import pandas as pd\nobj = pd.Series([1.0, 2.0], name='s')",
            "obj.iloc[0] = 5.0",
            "pd.Series([5.0, 2.0], name='s')",
        ),
    ],
    ids=["list", "dict", "set", "ndarray", "DataFrame", "Series"],
)
def test_an_object_changed_in_place_is_changed_in_place_on_a_hit(
    shell: Any, setup: str, change: str, expected: str
):
    cell = f"%%cache\ncount_run()\n{change}"
    ok(shell, f"{setup}\nbackup = obj")
    ok(shell, cell)
    ok(shell, f"{setup}\nbackup = obj")
    ok(shell, cell)
    assert runs(shell) == 1, "the second run must be a hit"
    assert shell.user_ns["backup"] is shell.user_ns["obj"]
    ok(shell, f"expected = {expected}")
    ok(shell, "import pickle\nassert repr(obj) == repr(expected), (obj, expected)")


def test_a_hit_that_can_only_replace_an_object_names_its_other_names(
    shell: Any, caplog: pytest.LogCaptureFixture
):
    ok(shell, "class Box:\n    value = 0\nbox = Box()\nalias = box")
    cell = "%%cache\ncount_run()\nbox.value = 5"
    ok(shell, cell)
    ok(shell, "box = Box()\nalias = box")
    with caplog.at_level(logging.WARNING, logger="nbcache"):
        ok(shell, cell)
    assert runs(shell) == 1
    assert shell.user_ns["box"].value == 5
    messages = [r.getMessage() for r in caplog.records if "refer" in r.getMessage()]
    assert len(messages) == 1
    assert "alias still refers to the old box" in messages[0]
