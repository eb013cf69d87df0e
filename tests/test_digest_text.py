"""Text columns: one digest for the same strings, whoever holds them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from nbcache.keys.digest import value_digest

SAMPLES = [
    ["a", None, "bc", "", "d\u00e9j\u00e0", "zz"],
    ["with\x00nul", None, "c"],
    ["\x00", ""],
    ["", "\x00"],
    [None, None],
    [],
    [""],
    ["\u4e2d\u6587", "emoji \U0001f600", "plain"],
    [f"row {i}" if i % 5 else None for i in range(40_000)],  # more than one block
]


# pandas 2.3 added text dtypes whose missing value is NaN (pandas 3's default `str`); the
# pd.NA ones exist in every supported pandas. Both semantics are checked where they exist.
NAN_TEXT_DTYPES = tuple(int(part) for part in pd.__version__.split(".")[:2]) >= (2, 3)


def text_dtype(storage: str, missing_as_nan: bool) -> pd.StringDtype:
    if missing_as_nan:
        return pd.StringDtype(storage, na_value=np.nan)
    return pd.StringDtype(storage)


def python_strings(values: list[str | None], missing_as_nan: bool = NAN_TEXT_DTYPES) -> pd.Series:
    return pd.Series(pd.array(values, dtype=text_dtype("python", missing_as_nan)))


def arrow_strings(values: list[str | None], missing_as_nan: bool = NAN_TEXT_DTYPES) -> pd.Series:
    return pd.Series(pd.array(values, dtype=text_dtype("pyarrow", missing_as_nan)))


def test_missing_text_alike_in_python_and_arrow_storage_with_pd_na() -> None:
    for values in SAMPLES:
        na_python = python_strings(values, missing_as_nan=False)
        assert value_digest(na_python) == value_digest(arrow_strings(values, missing_as_nan=False))


@pytest.mark.parametrize("values", SAMPLES, ids=range(len(SAMPLES)))
def test_a_text_column_digests_alike_in_python_and_arrow_storage(values: list[str | None]) -> None:
    assert value_digest(python_strings(values)) == value_digest(arrow_strings(values))


@pytest.mark.parametrize("values", SAMPLES, ids=range(len(SAMPLES)))
def test_chunking_and_slicing_never_change_an_arrow_digest(values: list[str | None]) -> None:
    whole = pa.array(values, pa.string())
    half = len(values) // 2
    chunked = pa.chunked_array([pa.array(values[:half], pa.string()), whole.slice(half)])
    assert value_digest(chunked) == value_digest(whole)
    padded = pa.array(["x", *values, "y"], pa.string()).slice(1, len(values))
    assert value_digest(padded) == value_digest(whole)


@pytest.mark.parametrize(
    "first, second",
    [
        (["ab", "c"], ["a", "bc"]),
        (["a", None], [None, "a"]),
        (["a", ""], ["a", None]),
        (["\x00", ""], ["", "\x00"]),
        (["a"], ["a", "a"]),
    ],
)
def test_different_text_digests_differently(
    first: list[str | None], second: list[str | None]
) -> None:
    for build in (python_strings, arrow_strings, pa.array, pl.Series):
        assert value_digest(build(first)) != value_digest(build(second))


def test_a_null_slot_holding_bytes_is_still_missing() -> None:
    values = pa.array(["keep", "gone", "also"])
    mask = pa.array([False, True, False])
    with_hidden_bytes = pa.StringArray.from_buffers(
        3, values.buffers()[1], values.buffers()[2], pa.array(~np.asarray(mask)).buffers()[1]
    )
    assert with_hidden_bytes.to_pylist() == ["keep", None, "also"]
    assert value_digest(with_hidden_bytes) == value_digest(pa.array(["keep", None, "also"]))


def test_arrow_tables_polars_frames_and_numbers() -> None:
    table = pa.table({"n": [1, None, 3], "s": ["a", "b", None], "f": [0.5, 1.5, None]})
    assert value_digest(table) == value_digest(pa.Table.from_batches(table.to_batches(1)))
    assert value_digest(table) != value_digest(table.rename_columns(["n", "s", "g"]))
    frame = pl.DataFrame({"n": [1, None, 3], "s": ["a", "b", None]})
    assert value_digest(frame) == value_digest(
        pl.DataFrame({"n": [1, None, 3], "s": ["a", "b", None]})
    )
    assert value_digest(frame) != value_digest(
        pl.DataFrame({"n": [1, 2, 3], "s": ["a", "b", None]})
    )
    assert value_digest(pl.Series("x", [1, 2])) != value_digest(pl.Series("y", [1, 2]))
    assert value_digest(pl.Series("x", [1, 2])) != value_digest(pl.Series("x", [1.0, 2.0]))


def test_arrow_backed_pandas_columns_of_other_types_digest_by_value() -> None:
    first = pd.Series(pd.array([1, None, 3], dtype=pd.ArrowDtype(pa.int64())))
    again = pd.Series(pd.array([1, None, 3], dtype=pd.ArrowDtype(pa.int64())))
    other = pd.Series(pd.array([1, None, 4], dtype=pd.ArrowDtype(pa.int64())))
    assert value_digest(first) == value_digest(again) != value_digest(other)
    text = pd.Series(pd.array(["a", None], dtype=pd.ArrowDtype(pa.string())))
    assert value_digest(text) != value_digest(arrow_strings(["a", None]))  # another dtype
