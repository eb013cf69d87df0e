"""Canonical encodings of pandas objects: what a frame holds, not how it was built.

A DataFrame digests as its column labels, its index, and each column's dtype and values (never
its block layout), so frames built from a dict, from a 2-D array or by ``concat`` digest equal
when they are equal, while frames differing only in column names, a dtype or the index differ.
An Index digests by its values, dtype, names and frequency, not its class: a ``RangeIndex`` and
the equal int64 ``Index`` digest equal. A MultiIndex digests level values by position, so
different level/code layouts of equal labels digest equal. ``attrs`` count.

Text columns (``str``, ``string``, Arrow strings) are encoded by
:mod:`nbcache.keys.digest_text`, from Arrow buffers or from Python strings alike; other
extension columns are read as objects a batch at a time and encoded by
:func:`nbcache.keys.digest_numpy.write_object_elements`; a ``RangeIndex`` is written as its
int64 values without materialising them.

Imported by :mod:`nbcache.keys.digest` the first time a pandas value is digested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from nbcache.keys import digest_numpy
from nbcache.keys.digest import TokenWriter, register_handler, write_type
from nbcache.keys.digest_text import object_blocks, write_text_column
from nbcache.keys.witness import remembered_digest
from nbcache.keys.witness_pandas import pandas_witness

# A RangeIndex is written as the int64 values it stands for, generated this many at a time.
_RANGE_BLOCK = 1 << 16


def _write_values(writer: TokenWriter, values: Any) -> None:
    """A column's or an index's dtype and values (``values`` is a Series or an Index)."""
    if isinstance(values, pd.RangeIndex):
        _write_range(writer, values)
    elif isinstance(values.dtype, np.dtype):
        array = values.to_numpy(copy=False)
        writer.raw(b"n")
        digest_numpy.write_dtype(writer, array.dtype)
        writer.count(len(array))
        digest_numpy.write_array_content(writer, array)
    else:
        writer.raw(b"e")
        _extension_array(writer, values.array)


def _write_range(writer: TokenWriter, index: Any) -> None:
    """Write a RangeIndex exactly as its int64 values, without materialising them.

    Materialising would cost a copy as big as an int64 column, and pandas would keep it
    cached on the caller's index.
    """
    writer.raw(b"n")
    digest_numpy.write_dtype(writer, np.dtype(np.int64))
    writer.count(len(index))
    start, step = int(index.start), int(index.step)
    for first in range(0, len(index), _RANGE_BLOCK):
        count = min(_RANGE_BLOCK, len(index) - first)
        block = np.arange(count, dtype=np.int64) * step + (start + first * step)
        digest_numpy.write_array_content(writer, block)


def _extension_array(writer: TokenWriter, array: Any) -> None:
    dtype = array.dtype
    writer.text(f"{type(dtype).__module__}.{type(dtype).__qualname__}")
    writer.text(str(dtype))  # the unit, time zone, storage, categories' dtype...
    writer.count(len(array))
    if isinstance(array, pd.Categorical):
        _index(writer, array.categories)
        writer.value(bool(array.ordered))
        digest_numpy.write_array_content(writer, np.asarray(array.codes))
    elif hasattr(array, "asi8"):  # datetimes, timedeltas, periods: int64 ticks, NaT included
        digest_numpy.write_array_content(writer, np.asarray(array.asi8))
    elif _is_text(dtype):
        _text(writer, array)
    elif hasattr(array, "_data") and hasattr(array, "_mask"):  # nullable Int64, Float64, boolean
        mask = np.asarray(array._mask, dtype=bool)
        data = np.asarray(array._data)
        if mask.any():  # what lies under a missing value is arbitrary: zero it in a copy
            data = np.where(mask, np.zeros((), dtype=data.dtype), data)
        digest_numpy.write_array_content(writer, mask)
        digest_numpy.write_array_content(writer, data)
    else:  # strings, intervals, sparse, arrow-backed: as objects, one batch at a time
        digest_numpy.write_object_elements(writer, len(array), _object_slicer(array))


def _is_text(dtype: Any) -> bool:
    if isinstance(dtype, pd.StringDtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        from nbcache.keys.digest_arrow import is_text

        return is_text(dtype.pyarrow_dtype)  # type: ignore[no-any-return]
    return False


def _text(writer: TokenWriter, array: Any) -> None:
    """A text column, from Arrow buffers or Python strings: both encode alike."""
    if hasattr(array, "_pa_array"):
        from nbcache.keys.digest_arrow import write_arrow_values

        write_arrow_values(writer, array._pa_array)
        return
    values = np.asarray(array._ndarray)  # str objects and missing values, never other types
    write_text_column(writer, len(values), object_blocks(values))


def _object_slicer(array: Any) -> digest_numpy.ElementSlicer:
    """Slices of an extension array as object arrays (a view for python-backed strings)."""

    def elements(start: int, stop: int) -> np.ndarray[Any, Any]:
        return np.asarray(array[start:stop], dtype=object)

    return elements


def _index(writer: TokenWriter, index: Any) -> None:
    if isinstance(index, pd.MultiIndex):
        writer.tag("pandas.MultiIndex")
        writer.value(tuple(index.names))
        writer.count(index.nlevels)
        for level in range(index.nlevels):
            _write_values(writer, index.get_level_values(level))
        return
    writer.tag("pandas.Index")
    writer.value(tuple(index.names))
    writer.value(getattr(index, "freqstr", None))
    _write_values(writer, index)


def _own_class(writer: TokenWriter, obj: object, base: type) -> None:
    """Tag a subclass (a GeoDataFrame is not a DataFrame) before the base encoding."""
    if type(obj) is not base:
        writer.raw(b"S")
        write_type(writer, type(obj))


def _series(writer: TokenWriter, series: Any) -> None:
    _own_class(writer, series, pd.Series)
    writer.tag("pandas.Series")
    writer.raw(_content_digest(writer, series, _series_content))


def _series_content(writer: TokenWriter, series: Any) -> None:
    writer.value(series.name)
    _index(writer, series.index)
    _write_values(writer, series)
    writer.value(dict(series.attrs))


def _data_frame(writer: TokenWriter, frame: Any) -> None:
    _own_class(writer, frame, pd.DataFrame)
    writer.tag("pandas.DataFrame")
    writer.raw(_content_digest(writer, frame, _frame_content))


def _frame_content(writer: TokenWriter, frame: Any) -> None:
    _index(writer, frame.columns)
    _index(writer, frame.index)
    writer.count(frame.shape[1])
    for position in range(frame.shape[1]):
        _write_values(writer, frame.iloc[:, position])
    writer.value(dict(frame.attrs))


def _content_digest(writer: TokenWriter, value: Any, content: Any) -> bytes:
    """The digest of a frame's or series's content: remembered while its witness holds.

    A pandas object is encoded as this 16-byte digest of its content, whether computed now
    or remembered, so its encoding never depends on whether a witness was at hand.
    """
    return remembered_digest(
        value, pandas_witness, lambda: writer.digest_written_by(lambda w: content(w, value))
    )


def _categorical(writer: TokenWriter, categorical: Any) -> None:
    writer.tag("pandas.Categorical")
    _extension_array(writer, categorical)


def _any_extension_array(writer: TokenWriter, array: Any) -> None:
    writer.tag("pandas.ExtensionArray")
    _extension_array(writer, array)


def _timestamp(writer: TokenWriter, stamp: Any) -> None:
    writer.tag("pandas.Timestamp")
    writer.value((stamp.value, stamp.unit, None if stamp.tz is None else str(stamp.tz)))


def _timedelta(writer: TokenWriter, delta: Any) -> None:
    writer.tag("pandas.Timedelta")
    writer.value((delta.value, delta.unit))


def _period(writer: TokenWriter, period: Any) -> None:
    writer.tag("pandas.Period")
    writer.value((period.ordinal, period.freqstr))


def _interval(writer: TokenWriter, interval: Any) -> None:
    writer.tag("pandas.Interval")
    writer.value((interval.left, interval.right, interval.closed))


def _singleton(name: str) -> Any:
    def singleton(writer: TokenWriter, value: object) -> None:
        writer.tag(name)

    return singleton


def install_handlers() -> None:
    """Register the pandas handlers (and numpy's) with :mod:`nbcache.keys.digest`."""
    digest_numpy.install_handlers()
    for type_, handler in (
        (pd.DataFrame, _data_frame),
        (pd.Series, _series),
        (pd.Index, _index),
        (pd.Categorical, _categorical),
        (pd.api.extensions.ExtensionArray, _any_extension_array),
        (pd.Timestamp, _timestamp),
        (pd.Timedelta, _timedelta),
        (pd.Period, _period),
        (pd.Interval, _interval),
        (type(pd.NaT), _singleton("pandas.NaT")),
        (type(pd.NA), _singleton("pandas.NA")),
    ):
        register_handler(type_, handler)
