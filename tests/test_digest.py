"""Canonical value digests: equal values agree everywhere, different values never collide."""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import json
import math
import os
import pathlib
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcache.exceptions import NbcacheError
from nbcache.keys.digest import TokenWriter, UnhashableValue, register_token, value_digest

# pandas 3 stores text in a "str" dtype of its own; pandas 2 as objects.
PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3
NUMPY_1 = int(np.__version__.split(".")[0]) < 2

# --- properties --------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.complex_numbers(allow_nan=False)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.frozensets(st.integers() | st.text(max_size=4), max_size=4)
        | st.sets(st.text(max_size=4), max_size=4)
    ),
    max_leaves=12,
)


def rebuilt(value: Any, reverse: bool) -> Any:
    """An equal value built anew, dicts and sets filled in another order."""
    if isinstance(value, dict):
        items = list(value.items())[:: -1 if reverse else 1]
        return {key: rebuilt(item, reverse) for key, item in items}
    if isinstance(value, (set, frozenset)):
        return type(value)(sorted(value, key=repr, reverse=reverse))
    if isinstance(value, (list, tuple)):
        return type(value)(rebuilt(item, reverse) for item in value)
    return copy.copy(value)


def strict_form(value: Any) -> Any:
    """What must match for two values to digest alike: types, float bits, structure."""
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else struct.pack("<d", value))
    if isinstance(value, complex):
        return ("complex", strict_form(value.real), strict_form(value.imag))
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), repr(strict_form(v))) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(strict_form(v)) for v in value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [strict_form(v) for v in value])
    return (type(value).__name__, value)


@settings(max_examples=150, deadline=None)
@given(values)
def test_equal_values_built_in_any_order_digest_equal(value: Any) -> None:
    assert value_digest(value) == value_digest(rebuilt(value, reverse=True))
    assert value_digest(value) == value_digest(rebuilt(value, reverse=False))


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_values_that_differ_in_type_or_content_digest_differently(a: Any, b: Any) -> None:
    if strict_form(a) != strict_form(b):
        assert value_digest(a) != value_digest(b)
    else:
        assert value_digest(a) == value_digest(b)


@settings(max_examples=100, deadline=None)
@given(st.lists(values, min_size=1, max_size=3), st.integers(0, 2))
def test_changing_one_nested_element_changes_the_digest(items: list[Any], where: int) -> None:
    where %= len(items)
    changed = [*items[:where], ("changed", items[where]), *items[where + 1 :]]
    assert value_digest({"k": items}) != value_digest({"k": changed})


# --- named collision cases ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (True, 1),
        (False, 0),
        (1, 1.0),
        ([1, 2], (1, 2)),
        (("ab", "c"), ("a", "bc")),
        (["ab", "c"], ["a", "bc"]),
        (b"ab", bytearray(b"ab")),
        (b"ab", "ab"),
        (0.0, -0.0),
        (frozenset({1}), {1}),
        ({"a": 1}, [("a", 1)]),
        ({"a": (1, 2)}, {"a": [1, 2]}),
        (None, "None"),
        (10**30, 10**30 + 1),
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (fractions.Fraction(1, 3), fractions.Fraction(2, 3)),
        (range(3), range(0, 3, 2)),
        (slice(1, 2), slice(1, 3)),
        (int, float),
        (json, math),
        (pathlib.PurePosixPath("a/b"), pathlib.PurePosixPath("a/c")),
        (pathlib.PurePosixPath("a"), pathlib.PureWindowsPath("a")),
        (datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)),
        (datetime.timedelta(seconds=1), datetime.timedelta(seconds=2)),
        (collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1)),
    ],
)
def test_named_collisions_digest_differently(a: Any, b: Any) -> None:
    assert value_digest(a) != value_digest(b)


def test_nan_is_canonical_and_digests_are_32_hex_characters() -> None:
    other_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    assert value_digest(float("nan")) == value_digest(other_nan)
    assert len(value_digest(1)) == 32
    int(value_digest(1), 16)


def test_aware_datetimes_differ_by_zone_even_at_the_same_instant() -> None:
    utc = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone.utc)
    plus_one = utc.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
    assert utc == plus_one
    assert value_digest(utc) != value_digest(plus_one)
    assert value_digest(utc) != value_digest(utc.replace(tzinfo=None))
    assert value_digest(utc) == value_digest(copy.deepcopy(utc))


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


@dataclasses.dataclass
class OtherPoint:
    x: int
    y: list[int]


def test_enums_and_dataclasses_digest_by_class_and_content() -> None:
    assert value_digest(Color.RED) != value_digest(Color.GREEN)
    assert value_digest(Level.LOW) != value_digest(1)
    assert value_digest(Point(1, [2])) == value_digest(Point(1, [2]))
    assert value_digest(Point(1, [2])) != value_digest(Point(1, [3]))
    assert value_digest(Point(1, [2])) != value_digest(OtherPoint(1, [2]))


class Plain:
    def __init__(self, tags: set[str]) -> None:
        self.tags = tags


def test_plain_objects_digest_through_their_pickle_reduction() -> None:
    assert value_digest(Plain({"a", "b"})) == value_digest(Plain({"b", "a"}))
    assert value_digest(Plain({"a"})) != value_digest(Plain({"b"}))


def test_functions_digest_by_code_and_partials_by_arguments() -> None:
    assert value_digest(lambda x: x + 1) == value_digest(lambda x: x + 1)
    assert value_digest(lambda x: x + 1) != value_digest(lambda x: x + 2)
    assert value_digest(functools.partial(max, 1)) != value_digest(functools.partial(max, 2))
    assert value_digest(len) != value_digest(max)
    assert value_digest(Plain({"a"}).__init__) != value_digest(Plain({"b"}).__init__)


def test_a_self_referencing_container_digests_deterministically() -> None:
    def cycle() -> list[Any]:
        items: list[Any] = [1, {"k": None}]
        items[1]["k"] = items
        items.append(items)
        return items

    assert value_digest(cycle()) == value_digest(cycle())
    shallow = [1, {"k": [1]}, [1]]
    assert value_digest(cycle()) != value_digest(shallow)


# --- registry ----------------------------------------------------------------------------


class Celsius:
    def __init__(self, degrees: float, note: str) -> None:
        self.degrees = degrees
        self.note = note  # not part of what the value means


class WarmCelsius(Celsius):
    pass


class Kelvin:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __nbcache_token__(self) -> object:
        return self.degrees


def test_registered_tokens_apply_along_the_mro_and_keep_the_class() -> None:
    register_token(Celsius, lambda c: c.degrees)
    assert value_digest(Celsius(1.0, "a")) == value_digest(Celsius(1.0, "b"))
    assert value_digest(Celsius(1.0, "a")) != value_digest(Celsius(2.0, "a"))
    assert value_digest(WarmCelsius(1.0, "a")) == value_digest(WarmCelsius(1.0, "b"))
    assert value_digest(WarmCelsius(1.0, "a")) != value_digest(Celsius(1.0, "a"))
    assert value_digest(Kelvin(1.0)) == value_digest(Kelvin(1.0))
    assert value_digest(Kelvin(1.0)) != value_digest(Kelvin(2.0))
    assert value_digest(Kelvin(1.0)) != value_digest(1.0)


# --- values that cannot be digested ------------------------------------------------------


def generator() -> Any:
    yield 1


class Unpicklable:
    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("no state to give")


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (threading.Lock, "lock"),
        (threading.RLock, "RLock"),
        (generator, "generator"),
        (lambda: iter([1, 2]), "list_iterator"),
        (lambda: threading.Thread(target=print), "Thread"),
        (lambda: sqlite3.connect(":memory:"), "Connection"),
        (Unpicklable, "Unpicklable"),
    ],
)
def test_live_state_raises_naming_the_type(make: Any, type_name: str) -> None:
    value = make()
    with pytest.raises(UnhashableValue) as caught:
        value_digest({"argument": [value]})
    assert type_name in caught.value.type_name
    assert type_name in str(caught.value)
    assert "ignore=" in str(caught.value) and "register_token" in str(caught.value)
    assert isinstance(caught.value, NbcacheError)
    if hasattr(value, "close"):
        value.close()


def test_open_files_and_sockets_raise(tmp_path: pathlib.Path) -> None:
    with open(tmp_path / "f.txt", "w") as handle, pytest.raises(UnhashableValue) as caught:
        value_digest(handle)
    assert "TextIOWrapper" in str(caught.value)
    with socket.socket() as sock, pytest.raises(UnhashableValue, match="socket"):
        value_digest(sock)


# --- numpy -------------------------------------------------------------------------------


def test_arrays_differing_in_one_element_dtype_or_shape_digest_differently() -> None:
    base = np.arange(1000, dtype=np.float64)
    one_changed = base.copy()
    one_changed[500] += 1e-9
    variants = [base, one_changed, base.astype(np.float32), base.reshape(10, 100)]
    variants += [base.reshape(100, 10), base.astype(">f8"), base.view(np.int64)]
    assert len({value_digest(v) for v in variants}) == len(variants)
    assert value_digest(base) == value_digest(np.arange(1000, dtype=np.float64))


def test_strided_views_digest_equal_to_contiguous_copies() -> None:
    grid = np.arange(24 * 36, dtype=np.int32).reshape(24, 36)
    for view in (grid.T, grid[::2], grid[:, ::3], grid[::-1, 5:], np.asfortranarray(grid)):
        assert value_digest(view) == value_digest(np.ascontiguousarray(view))
    wide = np.zeros((2, 1_300_000))  # rows bigger than one hashing block
    wide[1, -2] = 1.0
    assert value_digest(wide[:, ::2]) == value_digest(wide[:, ::2].copy())
    assert value_digest(wide[:, ::2]) != value_digest(np.zeros((2, 650_000)))


def test_structured_object_and_datetime_arrays() -> None:
    pairs = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])
    renamed = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("c", "<f8")])
    assert value_digest(pairs) != value_digest(renamed)
    objects = np.array([1, "a", None, {"k": 1}], dtype=object)
    assert value_digest(objects) == value_digest(objects.copy())
    assert value_digest(objects) != value_digest(np.array([1, "b", None, {"k": 1}], dtype=object))
    days = np.array(["2024-01-01", "NaT"], dtype="datetime64[D]")
    assert value_digest(days) != value_digest(days.astype("datetime64[s]"))
    masked = np.ma.array([1, 2, 3], mask=[0, 1, 0])
    assert value_digest(masked) != value_digest(np.ma.array([1, 2, 3], mask=[0, 0, 1]))
    assert value_digest(np.float64(1.0)) != value_digest(1.0)
    assert value_digest(np.float64(1.0)) != value_digest(np.float32(1.0))
    assert value_digest(np.int64(3)) == value_digest(np.int64(3))


# --- pandas ------------------------------------------------------------------------------


def frame_from_dict() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})


def test_equal_frames_built_in_different_ways_digest_equal() -> None:
    reference = value_digest(frame_from_dict())
    from_array = pd.DataFrame(np.array([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]), columns=["a", "b"])
    halves = frame_from_dict()
    concatenated = pd.concat([halves.iloc[:2], halves.iloc[2:]])
    side_by_side = pd.concat([halves[["a"]], halves[["b"]]], axis=1)
    for frame in (from_array, frame_from_dict().copy(), concatenated, side_by_side):
        assert value_digest(frame) == reference


def test_frames_differing_in_names_dtype_or_index_digest_differently() -> None:
    base = frame_from_dict()
    variants = [
        base,
        base.rename(columns={"b": "c"}),
        base.astype({"a": "float32"}),
        base.set_axis([10, 11, 12]),
        base.rename_axis("row"),
        base.rename_axis(columns="col"),
        base[["b", "a"]],
        base.set_index(pd.MultiIndex.from_tuples([(0, "x"), (1, "y"), (2, "z")])),
    ]
    assert len({value_digest(v) for v in variants}) == len(variants)


def test_series_index_and_extension_types() -> None:
    series = pd.Series([1, 2], index=["x", "y"], name="n")
    assert value_digest(series) == value_digest(series.copy())
    assert value_digest(series) != value_digest(series.rename("m"))
    assert value_digest(pd.RangeIndex(3)) == value_digest(pd.Index([0, 1, 2]))
    by_tuples = pd.MultiIndex.from_tuples([("a", 1), ("b", 2)])
    by_product = pd.MultiIndex.from_product([["a", "b", "c"], [1, 2]])[[0, 3]]
    assert value_digest(by_tuples) == value_digest(by_product)
    nullable = pd.array([1, None, 3], dtype="Int64")
    also = pd.array([1, 2, 3], dtype="Int64")
    also[1] = None
    assert value_digest(nullable) == value_digest(also)
    assert value_digest(nullable) != value_digest(pd.array([1, 0, 3], dtype="Int64"))
    categories = pd.Categorical(["a", "b"], categories=["a", "b"])
    reordered = pd.Categorical(["a", "b"], categories=["b", "a"])
    assert value_digest(categories) != value_digest(reordered)
    stamps = pd.Series(pd.date_range("2024-01-01", periods=3, tz="UTC"))
    assert value_digest(stamps) != value_digest(stamps.dt.tz_convert("Europe/Paris"))
    assert value_digest(pd.Timestamp("2024-01-01")) != value_digest(pd.Timestamp("2024-01-02"))
    assert value_digest(pd.Series(["a", None])) != value_digest(pd.Series(["a", "None"]))


# --- text columns ------------------------------------------------------------------------

elements = st.one_of(
    st.text(max_size=6),  # NULs and lone surrogates included
    st.sampled_from(["", "\x00", "a\x00", "None", "nan"]),
    st.none(),
    st.just(float("nan")),
    st.just(pd.NA),
    st.integers(-3, 3),
    st.builds(np.str_, st.text(max_size=3)),
)


def element_form(element: Any) -> Any:
    if element is pd.NA:
        return ("NA",)
    return (type(element).__name__, strict_form(element))


@settings(max_examples=300, deadline=None)
@given(st.lists(elements, max_size=6), st.lists(elements, max_size=6))
def test_object_arrays_of_text_digest_equal_exactly_when_elements_match(
    a: list[Any], b: list[Any]
) -> None:
    left = np.empty(len(a), dtype=object)
    left[:] = a
    right = np.empty(len(b), dtype=object)
    right[:] = b
    same = [element_form(x) for x in a] == [element_form(y) for y in b]
    assert (value_digest(left) == value_digest(right)) == same


def text_column(rows: int) -> list[str]:
    return [f"SKU-{i:08d}" for i in range(rows)]


@pytest.mark.parametrize("position", [0, 1023, 1024, 70_000, 199_999])
def test_one_changed_or_missing_string_anywhere_in_a_long_column_changes_the_digest(
    position: int,
) -> None:
    texts = text_column(200_000)
    reference = value_digest(pd.Series(texts, dtype="str"))
    assert value_digest(pd.Series(list(texts), dtype="str")) == reference
    changed = list(texts)
    changed[position] += "x"
    missing = list(texts)
    missing[position] = None
    assert value_digest(pd.Series(changed, dtype="str")) != reference
    assert value_digest(pd.Series(missing, dtype="str")) != reference
    split = list(texts)  # the same characters, moved across an element boundary
    split[position - 1 if position else 1] += split[position][:1]
    split[position] = split[position][1:]
    assert value_digest(pd.Series(split, dtype="str")) != reference


def test_missing_values_and_look_alike_strings_stay_distinct_in_text_columns() -> None:
    variants = [
        pd.Series(["a", None], dtype=object),
        pd.Series(["a", float("nan")], dtype=object),
        pd.Series(["a", pd.NA], dtype=object),
        pd.Series(["a", "None"], dtype=object),
        pd.Series(["a", "nan"], dtype=object),
        pd.Series(["a", ""], dtype=object),
        pd.Series(["a", 0], dtype=object),
        pd.Series(["a", np.str_("")], dtype=object),
        pd.Series(["a\x00"], dtype=object),
        pd.Series(["a", None], dtype="string"),
    ]
    if PANDAS_3:
        variants.append(pd.Series(["a", None], dtype="str"))
    assert len({value_digest(v) for v in variants}) == len(variants)
    if PANDAS_3:
        # pandas 3: "str" is a dtype of its own, whose one missing value is NaN
        assert value_digest(pd.Series(["a", None], dtype="str")) == value_digest(
            pd.Series(["a", float("nan")], dtype="str")
        )
    else:
        # pandas 2: dtype="str" makes an object column and leaves None and NaN as they are
        assert pd.Series(["a", None], dtype="str").dtype == np.dtype(object)
        assert value_digest(pd.Series(["a", None], dtype="str")) == value_digest(variants[0])
        assert value_digest(pd.Series(["a", float("nan")], dtype="str")) == value_digest(
            variants[1]
        )


def test_strings_holding_nuls_or_surrogates_are_encoded_exactly() -> None:
    def digest(*texts: str) -> str:
        return value_digest(np.array(texts, dtype=object))

    assert digest("a\x00b") != digest("a", "b")
    assert digest("a\x00", "b") != digest("a", "\x00b")
    assert digest("a\x00", "b") == digest("a\x00", "b")
    assert digest("\ud83d\ude00") != digest("\U0001f600")
    assert digest("\ud800") != digest("\ufffd")
    assert digest("\ud800") == digest("\ud800")


def test_text_columns_of_any_layout_or_storage_digest_by_their_elements() -> None:
    texts = np.array(text_column(3000), dtype=object).reshape(60, 50)
    for view in (texts.T, texts[::2, ::3], texts[::-1]):
        assert value_digest(view) == value_digest(view.copy())
    assert value_digest(texts.T) != value_digest(texts.T.copy().reshape(60, 50))
    inferred = pd.DataFrame({"s": text_column(3000)})
    converted = pd.DataFrame({"s": np.array(text_column(3000), dtype=object)}).astype("str")
    halves = pd.concat([inferred.iloc[:1000], inferred.iloc[1000:]])
    assert value_digest(inferred) == value_digest(converted) == value_digest(halves)
    if PANDAS_3:
        # pandas 3 stores text as its "str" dtype: the same texts as objects are another value
        assert value_digest(inferred) != value_digest(inferred.astype(object))
    else:
        # pandas 2 stores text as objects
        assert inferred.dtypes["s"] == np.dtype(object)
        assert value_digest(inferred) == value_digest(inferred.astype(object))
    assert value_digest(inferred) != value_digest(inferred.astype("string"))


@pytest.mark.skipif(NUMPY_1, reason="variable-width strings (StringDType) came with numpy 2")
def test_numpy_variable_width_strings_digest_by_their_elements() -> None:
    variable = np.array(text_column(3000), dtype=np.dtypes.StringDType())
    assert value_digest(variable[::7]) == value_digest(variable[::7].copy())
    assert value_digest(variable) != value_digest(np.array(text_column(3000), dtype=object))


def test_long_strings_after_short_ones_digest_correctly() -> None:
    texts = ["s"] * 5000 + [f"{i:06d}" * 50_000 for i in range(40)] + ["t"] * 5000
    reference = value_digest(np.array(texts, dtype=object))
    changed = list(texts)
    changed[5020] = changed[5020][:-1] + "!"
    assert value_digest(np.array(list(texts), dtype=object)) == reference
    assert value_digest(np.array(changed, dtype=object)) != reference


@pytest.mark.parametrize(
    "bounds", [(0,), (1,), (5, 50, 3), (100, -200_000, -7), (2**62, 2**62 + 99_999, 3)]
)
def test_a_range_index_digests_as_its_values(bounds: tuple[int, ...]) -> None:
    index = pd.RangeIndex(*bounds)
    values = pd.Index(np.array(list(range(*bounds)), dtype=np.int64))
    assert value_digest(index) == value_digest(values)
    assert value_digest(pd.Series(0, index=index)) == value_digest(pd.Series(0, index=values))
    longer = pd.Index(np.append(values.to_numpy(), np.int64(-1)))
    assert value_digest(index) != value_digest(longer)


def test_digesting_a_million_strings_copies_no_column() -> None:
    import tracemalloc

    column = pd.Series(text_column(1_000_000), dtype="str")
    tracemalloc.start()
    try:
        value_digest(column)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the column's strings take ~60 MiB and its index would be 8 MiB as an array; a digest
    # batch joins about 1 MiB of text at a time
    assert peak < 4 * 1024 * 1024


# --- across processes, imports and speed ---------------------------------------------------

CROSS_PROCESS_SCRIPT = """
import dataclasses, sys
import numpy as np, pandas as pd
from nbcache.keys.digest import value_digest

@dataclasses.dataclass
class Row:
    tags: set
values = [
    {"b": 1, "a": {"x", "y", "z"}}, frozenset({"p", "q", "r"}), Row({"k", "l"}),
    pd.DataFrame({"s": ["u", "v"], "f": [1.5, None]}), np.arange(10).reshape(2, 5).T,
    lambda x: x * 2,
]
print(" ".join(value_digest(v) for v in values))
"""


def test_digests_agree_across_processes_with_different_hash_seeds() -> None:
    outputs = []
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", CROSS_PROCESS_SCRIPT],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        outputs.append(done.stdout.split())
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == value_digest({"a": {"z", "y", "x"}, "b": 1})


def test_importing_tokenize_imports_neither_numpy_nor_pandas() -> None:
    script = (
        "import sys; from nbcache.keys.digest import value_digest; value_digest({'a': [1, 2.5]}); "
        "print(sorted(m for m in ('numpy', 'pandas', 'IPython') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "number", [0, 1, -1, 255, 2**31, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**40]
)
def test_an_int_digests_as_its_canonical_encoding_whichever_path_computes_it(number: int) -> None:
    """Small ints are digested without a writer: the digest is the writer's all the same."""
    writer = TokenWriter()
    writer.value(number)
    assert value_digest(number) == writer.digest().hex()
    assert value_digest(number) != value_digest(float(number)) != value_digest(number == 1)
