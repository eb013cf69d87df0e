"""Per-call snapshots: the globals code reads through any construct are inputs, and re-checks
see every edit the fingerprint sees."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from nbcache import SimpleCache
from nbcache.functions.decorator import cached_result
from nbcache.keys.fingerprint import function_fingerprint
from nbcache.keys.snapshot import CodeSnapshot, FingerprintMemo


def notebook(source: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``source`` as a notebook cell would: in a namespace named ``__main__``."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    exec(compile(textwrap.dedent(source), "<ipython-input-1>", "exec"), namespace)
    return namespace


# Each construct reaches a function that reads the global G; f must see G change.
CONSTRUCTS = {
    "property": """
        class Box:
            @property
            def scaled(self):
                return G * 2
        def f(x):
            return x + Box().scaled
    """,
    "cached_property": """
        import functools
        class Box:
            @functools.cached_property
            def scaled(self):
                return G * 2
        def f(x):
            return x + Box().scaled
    """,
    "partialmethod": """
        import functools
        def scale(self, factor):
            return G * factor
        class Box:
            scaled = functools.partialmethod(scale, 2)
        def f(x):
            return x + Box().scaled()
    """,
    "staticmethod": """
        class Box:
            @staticmethod
            def scaled():
                return G * 2
        def f(x):
            return x + Box.scaled()
    """,
    "classmethod": """
        class Box:
            @classmethod
            def scaled(cls):
                return G * 2
        def f(x):
            return x + Box.scaled()
    """,
    "functools.partial": """
        import functools
        def scale(factor):
            return G * factor
        scaled = functools.partial(scale, 2)
        def f(x):
            return x + scaled()
    """,
    "functools.wraps chain": """
        import functools
        def logged(func):
            @functools.wraps(func)
            def inner(*args):
                return func(*args)
            return inner
        def twice(func):
            @functools.wraps(func)
            def inner(*args):
                return func(*args)
            return inner
        @twice
        @logged
        def scaled():
            return G * 2
        def f(x):
            return x + scaled()
    """,
    "library wrapper": """
        import functools
        @functools.lru_cache(maxsize=None)
        def lookup(k):
            return k
        @functools.wraps(lookup)
        def scaled():
            return G * 2
        def f(x):
            return x + scaled()
    """,
    "closure": """
        def make():
            def scaled():
                return G * 2
            def f(x):
                return x + scaled()
            return f
        f = make()
    """,
    "method of a user class": """
        class Model:
            def predict(self):
                return G * 2
        model = Model()
        def f(x):
            return x + model.predict()
    """,
    "bound method": """
        class Model:
            def predict(self):
                return G * 2
        predict = Model().predict
        def f(x):
            return x + predict()
    """,
    "default": """
        def scaled():
            return G * 2
        def f(x, helper=scaled):
            return x + helper()
    """,
}


@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_a_global_read_through_any_construct_is_an_input(construct: str) -> None:
    ns = notebook("G = 1\n" + textwrap.dedent(CONSTRUCTS[construct]))
    f = cached_result(cache=SimpleCache())(ns["f"])
    assert f(1) == 3
    ns["G"] = 10
    assert f(1) == 21, f"a global read through a {construct} was not an input"
    assert f(1) == 21
    assert f.cache_info().hits == 1


@pytest.mark.parametrize("construct", sorted(CONSTRUCTS))
def test_editing_code_behind_any_construct_is_seen_by_the_snapshot(construct: str) -> None:
    ns = notebook("G = 1\n" + textwrap.dedent(CONSTRUCTS[construct]))
    memo = FingerprintMemo(ns["f"])
    first = memo.current()
    assert memo.current() is first  # nothing changed: the snapshot is reused
    assert "G" in {g.label for g in first.global_inputs}
    assert first.fingerprint == function_fingerprint(ns["f"])


def test_a_snapshot_is_retaken_when_a_helper_is_rebound() -> None:
    ns = notebook("def helper(x):\n    return x + 1\ndef f(x):\n    return helper(x)\n")
    memo = FingerprintMemo(ns["f"])
    first = memo.current()
    assert first.unchanged()
    notebook("def helper(x):\n    return x + 2\n", ns)
    assert not first.unchanged()
    second = memo.current()
    assert second is not first and second.fingerprint != first.fingerprint


def test_editing_a_method_behind_a_cached_property_changes_the_fingerprint() -> None:
    source = """
        import functools
        class Box:
            @functools.cached_property
            def scaled(self):
                return 2
        def f(x):
            return x + Box().scaled
    """
    ns = notebook(source)
    snapshot = CodeSnapshot.take(ns["f"])
    notebook(source.replace("return 2", "return 3"), ns)
    assert not snapshot.unchanged()
    assert CodeSnapshot.take(ns["f"]).fingerprint != snapshot.fingerprint


def test_mutable_values_held_by_code_make_the_snapshot_volatile() -> None:
    ns = notebook("def f(x, seen=[]):\n    return x\n")
    assert CodeSnapshot.take(ns["f"]).volatile
    ns = notebook("def f(x, k=(1, 'a')):\n    return x\n")
    assert not CodeSnapshot.take(ns["f"]).volatile


def test_global_inputs_are_data_not_code_and_assigned_globals_are_state() -> None:
    ns = notebook(
        """
        import json
        LIMIT = 3
        calls = 0
        def helper(x):
            return x
        def f(x):
            global calls
            calls += 1
            return json.dumps(helper(min(x, LIMIT)))
        """
    )
    snapshot = CodeSnapshot.take(ns["f"])
    assert {g.label for g in snapshot.global_inputs} == {"LIMIT", "calls"}
    assert snapshot.assigned == {"calls"}
    digests, opaque = snapshot.global_digests(leave_out=snapshot.assigned)
    assert set(digests) == {"LIMIT"} and not opaque


def test_global_digests_follow_the_current_values() -> None:
    ns = notebook("LIMIT = 3\nTABLE = {'a': 1}\ndef f(x):\n    return TABLE, LIMIT\n")
    snapshot = CodeSnapshot.take(ns["f"])
    first, _ = snapshot.global_digests()
    assert snapshot.global_digests()[0] == first
    ns["TABLE"]["b"] = 2  # changed in place: same object, new digest
    second, _ = snapshot.global_digests()
    assert second["TABLE"] != first["TABLE"] and second["LIMIT"] == first["LIMIT"]
    ns["LIMIT"] = 4
    assert snapshot.global_digests()[0]["LIMIT"] != first["LIMIT"]


def test_a_global_without_a_digest_is_keyed_by_its_type() -> None:
    import threading

    ns = notebook("def f():\n    return LOCK\n")
    ns["LOCK"] = threading.Lock()
    digests, opaque = CodeSnapshot.take(ns["f"]).global_digests()
    assert set(opaque) == {"LOCK"} and "lock" in str(opaque["LOCK"])
    ns["LOCK"] = threading.Lock()
    assert CodeSnapshot.take(ns["f"]).global_digests()[0] == digests


def test_data_members_of_a_user_module_are_inputs(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "nbcache_test_settings.py").write_text("LIMIT = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ns = notebook(
        "import nbcache_test_settings\ndef f(x):\n    return min(x, nbcache_test_settings.LIMIT)\n"
    )
    try:
        f = cached_result(cache=SimpleCache())(ns["f"])
        assert f(10) == 3
        ns["nbcache_test_settings"].LIMIT = 5
        assert f(10) == 5
    finally:
        import sys

        sys.modules.pop("nbcache_test_settings", None)
