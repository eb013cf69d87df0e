"""Remembered digests: an unchanged DataFrame is not digested again, a changed one always is."""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nbcache import SimpleCache
from nbcache.functions.decorator import cached_result
from nbcache.keys import witness
from nbcache.keys.digest import value_digest


def fresh_digest(value: Any) -> str:
    """The digest of an equal copy nothing was remembered for: what a full digest gives."""
    return value_digest(value.copy(deep=True))


COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": np.arange(6, dtype="float64"),
            "n": np.arange(6, dtype="int64"),
            "t": pd.array(list("abcdef"), dtype="str"),
            "k": pd.array([1, 2, None, 4, 5, 6], dtype="Int64"),
            "c": pd.Categorical(list("aabbcc")),
            "d": pd.date_range("2024-01-01", periods=6),
        },
        index=pd.Index(list("uvwxyz"), name="key"),
    )


def numeric_only(df: pd.DataFrame) -> None:
    df.drop(columns=["t", "c", "d", "k"], inplace=True)


def _setitem(df: pd.DataFrame) -> None:
    df["x"] = df["x"] * 2


def _fillna(df: pd.DataFrame) -> None:
    df["k"] = df["k"].fillna(0)


def _fillna_inplace(df: pd.DataFrame) -> None:
    df.fillna({"k": 0}, inplace=True)


def _update(df: pd.DataFrame) -> None:
    df.update(pd.DataFrame({"x": [100.0]}, index=pd.Index(["u"], name="key")))


def _index_name(df: pd.DataFrame) -> None:
    df.index.name = "other"


def _columns_name(df: pd.DataFrame) -> None:
    df.columns.name = "fields"


def _attrs(df: pd.DataFrame) -> None:
    df.attrs["source"] = "test"


def _delete(df: pd.DataFrame) -> None:
    del df["n"]


def _column_series_write(df: pd.DataFrame) -> None:
    column = df["x"]  # a view under copy-on-write: writing it leaves df alone...
    column.iloc[0] = -1.0
    df.iloc[1, 0] = -2.0  # ...and this writes df


WRITES: dict[str, Callable[[pd.DataFrame], object]] = {
    "loc float": lambda df: df.loc.__setitem__(("u", "x"), 9.5),
    "loc text": lambda df: df.loc.__setitem__(("v", "t"), "changed"),
    "loc row slice": lambda df: df.loc.__setitem__((slice("u", "w"), "n"), 7),
    "iloc": lambda df: df.iloc.__setitem__((2, 1), 42),
    "iloc column": lambda df: df.iloc.__setitem__((slice(None), 0), np.ones(6)),
    "at": lambda df: df.at.__setitem__(("x", "k"), 99),
    "iat": lambda df: df.iat.__setitem__((0, 2), "z"),
    "setitem existing column": _setitem,
    "setitem new column": lambda df: df.__setitem__("new", 1),
    "setitem by mask": lambda df: df.loc.__setitem__((df["n"] > 3, "x"), 0.0),
    "fillna": _fillna,
    "fillna inplace": _fillna_inplace,
    "replace inplace": lambda df: df.replace({"t": {"a": "A"}}, inplace=True),
    "clip inplace": lambda df: numeric_only(df) or df.clip(upper=2, inplace=True),
    "where inplace": lambda df: df.where(df != 0, inplace=True),
    "mask inplace": lambda df: df.mask(df["n"] > 2, inplace=True),
    "sort_values inplace": lambda df: df.sort_values("x", ascending=False, inplace=True),
    "sort_index inplace": lambda df: df.sort_index(ascending=False, inplace=True),
    "drop inplace": lambda df: df.drop(columns=["c"], inplace=True),
    "drop rows inplace": lambda df: df.drop(index=["u"], inplace=True),
    "reset_index inplace": lambda df: df.reset_index(inplace=True),
    "set_index inplace": lambda df: df.set_index("n", inplace=True),
    "rename columns inplace": lambda df: df.rename(columns={"x": "y"}, inplace=True),
    "rename index inplace": lambda df: df.rename(index={"u": "U"}, inplace=True),
    "rename_axis inplace": lambda df: df.rename_axis("k2", inplace=True),
    "update": _update,
    "insert": lambda df: df.insert(0, "first", 5),
    "pop": lambda df: df.pop("t"),
    "del": _delete,
    "index name": _index_name,
    "columns name": _columns_name,
    "columns": lambda df: setattr(df, "columns", [f"c{i}" for i in range(df.shape[1])]),
    "index": lambda df: setattr(df, "index", pd.RangeIndex(6)),
    "attrs": _attrs,
    "astype via setitem": lambda df: df.__setitem__("n", df["n"].astype("float64")),
    "categorical": lambda df: df.loc.__setitem__(("u", "c"), "b"),
    "datetime": lambda df: df.loc.__setitem__(("u", "d"), pd.Timestamp("2000-01-01")),
    "series view then frame": _column_series_write,
    "interpolate inplace": lambda df: (
        numeric_only(df)
        or df.__setitem__("x", df["x"].where(df["n"] != 2))
        or df.interpolate(inplace=True)
    ),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_every_write_through_pandas_is_seen(write: str) -> None:
    df = sample_frame()
    before = value_digest(df)
    assert value_digest(df) == before  # remembered
    with warnings.catch_warnings():  # pandas deprecates some inplace= paths; users still use them
        warnings.simplefilter("ignore")
        WRITES[write](df)
    assert value_digest(df) == fresh_digest(df) != before


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.iloc.__setitem__(0, 5.0),
        lambda s: s.loc.__setitem__("b", 5.0),
        lambda s: s.__setitem__(s > 1, 0.0),
        lambda s: setattr(s, "name", "renamed"),
        lambda s: setattr(s.index, "name", "idx"),
        lambda s: s.fillna(0, inplace=True),
        lambda s: s.update(pd.Series([7.0], index=["a"])),
        lambda s: s.sort_values(inplace=True, ascending=False),
        lambda s: s.attrs.__setitem__("unit", "m"),
    ],
)
def test_every_write_to_a_series_is_seen(write: Callable[[pd.Series], object]) -> None:
    series = pd.Series([1.0, np.nan, 3.0], index=["a", "b", "c"], name="s")
    before = value_digest(series)
    assert value_digest(series) == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write(series)
    assert value_digest(series) == fresh_digest(series) != before


@pytest.mark.skipif(not COPY_ON_WRITE, reason="pandas 2: frames are digested on every call")
def test_an_unchanged_frame_is_remembered_not_digested_again() -> None:
    df = sample_frame()
    calls = []
    import nbcache.keys.digest_pandas as digest_pandas

    original = digest_pandas._frame_content

    def counting(writer: Any, frame: Any) -> None:
        calls.append(1)
        original(writer, frame)

    digest_pandas._frame_content = counting
    try:
        for _ in range(3):
            value_digest(df)
            value_digest({"nested": [df]})  # the same frame inside a container too
        assert len(calls) == 1
        df.loc["u", "x"] = -1.0
        value_digest(df)
        assert len(calls) == 2
        odd_names = pd.DataFrame({"_name": [1.0, 2.0], "_attrs": [3.0, 4.0]})
        value_digest(odd_names)
        value_digest(odd_names)
        assert len(calls) == 3
    finally:
        digest_pandas._frame_content = original


@pytest.mark.skipif(COPY_ON_WRITE, reason="pandas 3: copy-on-write, see the test above")
def test_pandas_2_frames_are_digested_on_every_call() -> None:
    """Before copy-on-write a write can leave every pandas object as it was: no witness."""
    df = pd.DataFrame(np.zeros((6, 2)))
    before = value_digest(df)
    df.values[0, 0] = -1.0  # a write through a view of the frame's only block
    assert value_digest(df) == fresh_digest(df) != before


def test_object_columns_are_digested_every_time() -> None:
    cells = [[1], [2]]
    df = pd.DataFrame({"lists": pd.Series(cells, dtype=object)})
    before = value_digest(df)
    cells[0].append(5)  # no pandas write at all: only a full digest can see it
    assert value_digest(df) != before


def test_a_remembered_frame_is_not_kept_alive() -> None:
    df = sample_frame()
    value_digest(df)
    frame_ref = weakref.ref(df)
    block_ref = weakref.ref(df._mgr.blocks[0].values)
    del df
    gc.collect()
    assert frame_ref() is None and block_ref() is None


def test_at_most_a_bounded_number_of_frames_are_remembered() -> None:
    frames = [pd.DataFrame({"a": [i]}) for i in range(witness.REMEMBERED + 10)]
    for frame in frames:
        value_digest(frame)
    assert len(witness._table) <= witness.REMEMBERED


def test_the_same_frame_as_an_argument_is_digested_once() -> None:
    df = sample_frame()
    f = cached_result(cache=SimpleCache())(lambda frame: frame.shape)
    assert f(df) == (6, 6)
    key = f.cache_key(df)
    df.iloc[0, 0] = 123.0
    assert f.cache_key(df) != key
    assert f(df) == (6, 6)
    assert f.cache_info().misses == 2


def test_equal_frames_built_three_ways_share_a_key() -> None:
    data = np.arange(12, dtype="float64").reshape(4, 3)
    from_array = pd.DataFrame(data, columns=["a", "b", "c"])
    from_dict = pd.DataFrame({"a": data[:, 0], "b": data[:, 1], "c": data[:, 2]})
    by_concat = pd.concat([from_dict[["a"]], from_dict[["b", "c"]]], axis=1)
    f = cached_result(cache=SimpleCache())(lambda frame: float(frame.to_numpy().sum()))
    assert f.cache_key(from_array) == f.cache_key(from_dict) == f.cache_key(by_concat)


def test_a_strided_view_and_its_contiguous_copy_share_a_key() -> None:
    base = np.arange(40, dtype="int64").reshape(4, 10)
    view = base[:, ::3]
    assert not view.flags.c_contiguous
    f = cached_result(cache=SimpleCache())(lambda array: int(array.sum()))
    assert f.cache_key(view) == f.cache_key(np.ascontiguousarray(view))
    assert f.cache_key(base[::2].T) == f.cache_key(base[::2].T.copy())


def test_mutating_a_returned_object_never_changes_the_next_result() -> None:
    f = cached_result(cache=SimpleCache())(
        lambda n: {"rows": list(range(n)), "frame": pd.DataFrame({"a": range(n)})}
    )
    first = f(3)
    first["rows"].append(99)
    first["frame"].loc[0, "a"] = -1
    second = f(3)
    assert second["rows"] == [0, 1, 2]
    assert second["frame"]["a"].tolist() == [0, 1, 2]
    second["rows"].clear()
    assert f(3)["rows"] == [0, 1, 2]
    assert f.cache_info().hits == 2
