"""Code fingerprints: blind to comments, formatting and file names; alert to edited helpers."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from nbcache.keys.digest import UnhashableValue
from nbcache.keys.fingerprint import (
    function_fingerprint,
    function_fingerprint_parts,
)
from nbcache.keys.provenance import is_user_module


def cell(
    source: str, filename: str = "<ipython-input-1-0a1b2c>", into: dict[str, Any] | None = None
):
    """Run ``source`` as a notebook cell would: in a ``__main__`` namespace, under ``filename``."""
    namespace = into if into is not None else {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


PIPELINE = """
import json

def clean(rows):
    return [r.strip() for r in rows if r]

def total(rows, scale=2):
    return sum(len(r) for r in clean(rows)) * scale
"""


def test_comments_formatting_and_docstrings_do_not_change_it() -> None:
    reformatted = '''
    import json
    # the same pipeline, written differently


    def clean(rows):
        """Drop empty rows."""
        return [r.strip()   # trailing comment
                for r in rows
                if r]

    def total(rows, scale = 2):
        # a comment
        return sum(len(r)
                   for r in clean(rows)) * scale
    '''
    original = cell(PIPELINE)["total"]
    assert function_fingerprint(original) == function_fingerprint(cell(reformatted)["total"])


# The same code written two ways. Each pair once changed a fingerprint on some Python: the
# compiler lays code out by its lines there (3.12+: a condition on its own line inverts a jump
# and duplicates the loop's back jump; 3.13: two loads fuse only on one line, as do two
# stores; 3.10: a `pass` on its own line keeps a NOP; 3.10-3.13: a wrapped `case` pattern).
SAME_CODE = {
    "comprehension condition on its own line": (
        "def f(rows):\n    return [r.strip() for r in rows if r]\n",
        "def f(rows):\n    return [r.strip()\n            for r in rows\n            if r]\n",
    ),
    "generator condition on its own line": (
        "def f(xs):\n    yield from (x for x in xs if x)\n",
        "def f(xs):\n    yield from (x\n                for x in xs\n                if x)\n",
    ),
    "operands on two lines": (
        "def f(a, b):\n    return a + b\n",
        "def f(a, b):\n    return (a\n            + b)\n",
    ),
    "two statements on one line": (
        "def f(t):\n    a, b = t\n    c = a; d = b\n    return c, d\n",
        "def f(t):\n    a, b = t\n    c = a\n    d = b\n    return c, d\n",
    ),
    "a swap written over two lines": (
        "def f(a, b):\n    a, b = b, a\n    return a - b\n",
        "def f(a, b):\n    a, b = (b,\n            a)\n    return a - b\n",
    ),
    "with statement over several lines": (
        "def f(path):\n    with open(path) as fh: return fh.read()\n",
        "def f(path):\n    with open(\n        path\n    ) as fh:\n        return fh.read()\n",
    ),
    "pass on its own line": (
        "def f(x):\n    if x: pass\n    return x\n",
        "def f(x):\n    if x:\n        pass\n    return x\n",
    ),
    "case pattern over two lines": (
        "def f(p):\n    match p:\n        case (x, y): return x + y\n        case _: return 0\n",
        "def f(p):\n    match p:\n        case (x,\n              y):\n            return x + y\n"
        "        case _:\n            return 0\n",
    ),
    "a docstring": (
        "def f(a):\n    return a, None\n",
        'def f(a):\n    """Docs."""\n    return a, None\n',
    ),
}


@pytest.mark.parametrize("pair", SAME_CODE.values(), ids=SAME_CODE.keys())
def test_the_same_code_laid_out_differently_fingerprints_the_same(pair: tuple[str, str]) -> None:
    first, second = (cell(source)["f"] for source in pair)
    assert first.__code__.co_linetable != second.__code__.co_linetable
    assert function_fingerprint(first) == function_fingerprint(second)


# Code that does something else, though its instructions look alike.
OTHER_CODE = {
    "operands swapped": ("return a - b", "return b - a"),
    "comparison": ("return a < b", "return a <= b"),
    "branches swapped": (
        "if a:\n        return 1\n    return 2",
        "if a:\n        return 2\n    return 1",
    ),
    "a statement once or twice in a loop": (
        "for x in a:\n        b.append(x)",
        "for x in a:\n        b.append(x)\n        b.append(x)",
    ),
    "a loop or a branch": (
        "while a:\n        a = b(a)\n    return a",
        "if a:\n        a = b(a)\n    return a",
    ),
    "break or continue": (
        "for x in a:\n        if x:\n            break\n        b(x)",
        "for x in a:\n        if x:\n            continue\n        b(x)",
    ),
    "a call inside or outside a try": (
        "try:\n        y = a()\n    except ValueError:\n        return 0\n    return b(y)",
        "try:\n        y = a()\n        return b(y)\n    except ValueError:\n        return 0",
    ),
    "which exception is caught": (
        "try:\n        return a()\n    except ValueError:\n        return 0",
        "try:\n        return a()\n    except TypeError:\n        return 0",
    ),
    "an int or a float constant": ("return a + 1", "return a + 1.0"),
    "an int or a bool constant": ("return a == 1", "return a == True"),
    "zero or minus zero": ("return a + 0.0", "return a + -0.0"),
    "text or bytes": ("return a == 'x'", "return a == b'x'"),
    "a nested function's body": (
        "return sorted(a, key=lambda x: x + 1)",
        "return sorted(a, key=lambda x: x + 2)",
    ),
}


@pytest.mark.parametrize("pair", OTHER_CODE.values(), ids=OTHER_CODE.keys())
def test_code_that_does_something_else_fingerprints_differently(pair: tuple[str, str]) -> None:
    first, second = (cell(f"def f(a, b=None):\n    {body}\n")["f"] for body in pair)
    assert function_fingerprint(first) != function_fingerprint(second)


def test_same_source_under_two_kernels_file_names_gives_the_same_fingerprint() -> None:
    first = cell(PIPELINE, "<ipython-input-3-5f2e>")["total"]
    second = cell("\n\n\n" + PIPELINE, "/tmp/ipykernel_123/456.py")["total"]
    assert first.__code__.co_filename != second.__code__.co_filename
    assert function_fingerprint(first) == function_fingerprint(second)


def test_editing_a_helper_changes_its_callers_fingerprint() -> None:
    namespace = cell(PIPELINE)
    before = function_fingerprint(namespace["total"])
    cell("def unrelated():\n    return 1\n", into=namespace)
    assert function_fingerprint(namespace["total"]) == before
    cell("def clean(rows):\n    return [r for r in rows if r]\n", into=namespace)
    assert function_fingerprint(namespace["total"]) != before


def test_helpers_two_levels_deep_and_mutual_recursion() -> None:
    source = """
    def even(n):
        return True if n == 0 else odd(n - 1)

    def odd(n):
        return False if n == 0 else even(n - 1)

    def report(n):
        return "even" if even(n) else "odd"
    """
    namespace = cell(source)
    before = function_fingerprint(namespace["report"])
    assert function_fingerprint(cell(source)["report"]) == before
    cell("def odd(n):\n    return n % 2 == 1\n", into=namespace)
    assert function_fingerprint(namespace["report"]) != before


def test_code_changes_defaults_and_closure_values_count() -> None:
    base = cell("def f(x, k=1):\n    return x + k\n")["f"]
    assert function_fingerprint(base) != function_fingerprint(
        cell("def f(x, k=1):\n    return x - k\n")["f"]
    )
    assert function_fingerprint(base) != function_fingerprint(
        cell("def f(x, k=2):\n    return x + k\n")["f"]
    )
    assert function_fingerprint(base) != function_fingerprint(
        cell("def f(x, *, k=1):\n    return x + k\n")["f"]
    )

    def make_adder(amount: object) -> Any:
        def add(x: Any) -> Any:
            return x + amount

        return add

    assert function_fingerprint(make_adder(1)) == function_fingerprint(make_adder(1))
    assert function_fingerprint(make_adder(1)) != function_fingerprint(make_adder(2))
    assert function_fingerprint(make_adder([1, 2])) != function_fingerprint(make_adder([1, 3]))


def test_global_data_values_are_inputs_not_code() -> None:
    namespace = cell("THRESHOLD = 3\ndef over(x):\n    return x > THRESHOLD\n")
    before = function_fingerprint(namespace["over"])
    namespace["THRESHOLD"] = 4
    assert function_fingerprint(namespace["over"]) == before


def test_referenced_modules_count_by_name() -> None:
    namespace = cell("import json as codec\ndef dump(x):\n    return codec.dumps(x)\n")
    before = function_fingerprint(namespace["dump"])
    cell("import pickle as codec\n", into=namespace)
    assert function_fingerprint(namespace["dump"]) != before


def test_classes_count_by_methods_and_attributes() -> None:
    source = """
    class Scaler:
        factor = 2
        def apply(self, x):
            return x * self.factor

    def run(x):
        return Scaler().apply(x)
    """
    namespace = cell(source)
    before = function_fingerprint(namespace["run"])
    assert function_fingerprint(cell(source)["run"]) == before
    edited_method = cell(source.replace("x * self.factor", "x + self.factor"))
    assert function_fingerprint(edited_method["run"]) != before
    edited_attribute = cell(source.replace("factor = 2", "factor = 3"))
    assert function_fingerprint(edited_attribute["run"]) != before
    method = namespace["Scaler"]().apply
    assert function_fingerprint(method) == function_fingerprint(namespace["Scaler"].apply)


def test_helpers_in_the_users_own_modules_count(tmp_path: Path) -> None:
    module_file = tmp_path / "nbcache_test_userlib.py"
    module_file.write_text("def helper(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        userlib = importlib.import_module("nbcache_test_userlib")
        assert is_user_module("nbcache_test_userlib")
        namespace = cell(
            "import nbcache_test_userlib\nfrom nbcache_test_userlib import helper\n"
            "def via_module(x):\n    return nbcache_test_userlib.helper(x)\n"
            "def via_name(x):\n    return helper(x)\n"
        )
        before = [function_fingerprint(namespace[n]) for n in ("via_module", "via_name")]
        module_file.write_text("def helper(x):\n    return x + 2\n")
        importlib.reload(userlib)
        namespace["helper"] = userlib.helper
        after = [function_fingerprint(namespace[n]) for n in ("via_module", "via_name")]
        assert before[0] != after[0] and before[1] != after[1]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("nbcache_test_userlib", None)


def test_library_code_counts_by_name_not_by_walking_it() -> None:
    assert not is_user_module("json") and not is_user_module("pytest")
    assert is_user_module("__main__")
    assert function_fingerprint(json.dumps) == function_fingerprint(json.dumps)
    assert function_fingerprint(json.dumps) != function_fingerprint(json.loads)


def test_decorated_helpers_are_followed_through_their_wrappers() -> None:
    source = """
    import functools

    @functools.lru_cache
    def lookup(x):
        return x * 2

    def uses(x):
        return lookup(x)
    """
    before = function_fingerprint(cell(source)["uses"])
    after = function_fingerprint(cell(source.replace("x * 2", "x * 3"))["uses"])
    assert before != after


def test_parts_name_each_user_callee_so_a_miss_can_be_explained() -> None:
    namespace = cell(PIPELINE)
    before = function_fingerprint_parts(namespace["total"])
    assert set(before) == {"total", "clean"}
    assert before["total"] == function_fingerprint(namespace["total"])
    cell("def clean(rows):\n    return list(rows)\n", into=namespace)
    after = function_fingerprint_parts(namespace["total"])
    assert after["clean"] != before["clean"] and after["total"] != before["total"]


def test_running_a_function_many_times_does_not_change_it() -> None:
    function = cell("def f(x):\n    return x * 2 + len(str(x))\n")["f"]
    before = function_fingerprint(function)
    for i in range(5000):  # lets the interpreter specialise the bytecode in place
        function(i)
    assert function_fingerprint(function) == before


def test_unhashable_closure_values_raise() -> None:
    lock = threading.Lock()

    def guarded() -> None:
        with lock:
            pass

    with pytest.raises(UnhashableValue, match="lock"):
        function_fingerprint(guarded)


def test_partials_and_callable_objects_digest_by_value() -> None:
    assert function_fingerprint(functools.partial(int, base=2)) != function_fingerprint(
        functools.partial(int, base=3)
    )
    assert isinstance(function_fingerprint(types.SimpleNamespace), str)


def test_fingerprints_agree_across_processes_with_different_hash_seeds() -> None:
    script = (
        "import textwrap\nfrom nbcache.keys.fingerprint import function_fingerprint\n"
        f"ns = {{'__name__': '__main__'}}\nexec(compile({PIPELINE!r}, 'cell', 'exec'), ns)\n"
        "print(function_fingerprint(ns['total']))\n"
    )
    outputs = set()
    for seed in ("11", "12"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(done.stdout.strip())
    assert outputs == {function_fingerprint(cell(PIPELINE)["total"])}
