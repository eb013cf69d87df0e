"""f.explain(...) and the miss log line name what changed since the function's entries."""

from __future__ import annotations

import logging
import textwrap
import time
from typing import Any

import pandas as pd
import pytest

from nbcache import MemcachedCache, SimpleCache
from nbcache.functions.decorator import cached_result


def notebook(source: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    exec(compile(textwrap.dedent(source), "<ipython-input-2>", "exec"), namespace)
    return namespace


CELL = """
    def clean(df):
        return df.dropna()
    def total(df, column="a"):
        return clean(df)[column].sum()
"""


def test_explains_each_kind_of_miss() -> None:
    ns = notebook(CELL)
    total = cached_result(cache=SimpleCache())(ns["total"])
    frame = pd.DataFrame({"a": [1.0, None, 3.0]})
    assert total.explain(frame) == "no entry yet"
    total(frame)
    assert total.explain(frame) == "hit"
    assert total.explain(pd.DataFrame({"a": [1.0, 2.0]})) == "argument `df` changed"
    notebook("def clean(df):\n    return df.fillna(0)\n", ns)
    assert total.explain(frame) == "helper `clean` was edited"
    total(frame)
    total.cache_clear()
    assert total.explain(frame) == "cleared with cache_clear()"


def test_explains_an_edited_function_and_a_new_version() -> None:
    ns = notebook(CELL)
    cache = SimpleCache()
    frame = pd.DataFrame({"a": [1.0]})
    cached_result(cache=cache)(ns["total"])(frame)
    edited = notebook(CELL.replace("].sum()", "].mean()"), {"__name__": "__main__"})
    assert cached_result(cache=cache)(edited["total"]).explain(frame) == (
        "the function's code changed"
    )
    bumped = cached_result(cache=cache, version=2)(ns["total"])
    assert bumped.explain(frame) == "version changed"


@pytest.mark.slow
@pytest.mark.memcached
def test_explains_expiry(memcached: Any) -> None:
    cache = MemcachedCache([memcached.address])
    ns = notebook(CELL)
    total = cached_result(cache=cache, timeout=1)(ns["total"])
    frame = pd.DataFrame({"a": [2.0]})
    total(frame)
    time.sleep(2.2)
    assert total.explain(frame).startswith("expired ")
    assert total.explain(frame).endswith(" s ago")


def test_a_miss_logs_its_reason_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    ns = notebook(CELL)
    total = cached_result(cache=SimpleCache())(ns["total"])
    total(pd.DataFrame({"a": [1.0]}))
    with caplog.at_level(logging.DEBUG, logger="nbcache"):
        total(pd.DataFrame({"b": [1.0]}), column="b")
    reasons = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
    assert reasons == ["nbcache: total() missed: argument `column` changed; argument `df` changed"]
