"""Which stored values hold code pickled by value (only the writer's Python minor version may
load those) and which are plain data that every Python version shares."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import fractions
import functools
import os
import textwrap
import types
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from nbcache.entries import serializer


def notebook_namespace() -> dict[str, Any]:
    """Functions and classes defined as in a notebook cell: in ``__main__``, not importable."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    source = """
    import dataclasses

    def clean(rows):
        return [r for r in rows if r]

    class Point:
        def __init__(self, x):
            self.x = x

    class Empty:
        pass

    @dataclasses.dataclass
    class Row:
        name: str
    """
    exec(compile(textwrap.dedent(source), "<ipython-input-1-abc>", "exec"), namespace)
    return namespace


def nested_function() -> Any:
    def inner(x: int) -> int:
        return x * 2

    return inner


class Colour(enum.Enum):
    RED = 1


def holds_code(value: Any) -> bool:
    return serializer.dumps(value).code_by_value


NOTEBOOK = notebook_namespace()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(lambda x: x + 1, id="lambda"),
        pytest.param(nested_function(), id="nested function"),
        pytest.param(NOTEBOOK["clean"], id="notebook function"),
        pytest.param(NOTEBOOK["Point"], id="notebook class"),
        pytest.param(NOTEBOOK["Point"](1), id="instance of a notebook class"),
        pytest.param(NOTEBOOK["Empty"](), id="instance of a notebook class without methods"),
        pytest.param(NOTEBOOK["Row"]("a"), id="notebook dataclass instance"),
        pytest.param({"rows": [1, 2], "fn": NOTEBOOK["clean"]}, id="function deep in a dict"),
        pytest.param(functools.partial(NOTEBOOK["clean"], []), id="partial of a notebook function"),
        pytest.param(NOTEBOOK["Point"](1).__init__, id="bound method of a notebook class"),
        pytest.param((lambda: 0).__code__, id="bare code object"),
        pytest.param(
            pd.DataFrame({"obj": [NOTEBOOK["Point"](1)]}), id="frame holding a notebook object"
        ),
    ],
)
def test_code_pickled_by_value_is_noted(value: Any) -> None:
    assert holds_code(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="None"),
        pytest.param([1, 2.5, "text", b"bytes", (True, None)], id="plain containers"),
        pytest.param({"nested": {"set": {1, 2}, "frozen": frozenset("ab")}}, id="nested dict"),
        pytest.param(np.arange(100_000, dtype=np.float64), id="big array (out of band)"),
        pytest.param(np.array([1, "a"], dtype=object), id="object array"),
        pytest.param(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), id="data frame"),
        pytest.param(datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc), id="datetime"),
        pytest.param(fractions.Fraction(1, 3), id="fraction"),
        pytest.param(collections.Counter("abca"), id="counter"),
        pytest.param(Colour.RED, id="importable enum member"),
        pytest.param(os.path.join, id="library function"),
        pytest.param(len, id="builtin function"),
        pytest.param(collections.OrderedDict, id="library class"),
        pytest.param(type(None), id="NoneType"),
        pytest.param(types.FunctionType, id="a type defined in C"),
        pytest.param(functools.partial(os.path.join, "a"), id="partial of a library function"),
        pytest.param(dataclasses.field, id="library function (dataclasses)"),
    ],
)
def test_plain_data_holds_no_code(value: Any) -> None:
    assert not holds_code(value)


def test_a_module_registered_for_pickling_by_value_holds_code() -> None:
    """``cloudpickle.register_pickle_by_value`` turns a library's functions into code."""
    import json.decoder as module

    assert not holds_code(module.JSONDecoder)
    cloudpickle.register_pickle_by_value(module)
    try:
        assert holds_code(module.JSONDecoder)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def test_the_note_does_not_change_the_pickle() -> None:
    """The stream is cloudpickle's own: any reader with cloudpickle loads it."""
    value = {"fn": NOTEBOOK["clean"], "rows": ["a", "", "b"]}
    frames = serializer.dumps(value)
    assert frames.head == cloudpickle.dumps(value, protocol=5)
    loaded = serializer.loads(frames.head, [])
    assert loaded["fn"](loaded["rows"]) == ["a", "b"]
