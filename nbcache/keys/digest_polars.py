"""Canonical encodings of polars Series and DataFrames, read through their Arrow form.

A Series digests as its name, its polars dtype and its values as Arrow data
(:mod:`nbcache.keys.digest_arrow`: text from the string buffers, numbers through numpy); a
DataFrame as its columns in order. Without pyarrow, polars objects take the general encoding.

Imported by :mod:`nbcache.keys.digest` the first time a polars value is digested.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import polars as pl

from nbcache.keys.digest import TokenWriter, register_handler

__all__ = ["install_handlers"]


def _write_series(writer: TokenWriter, series: Any) -> None:
    from nbcache.keys.digest_arrow import write_arrow_values

    writer.text(series.name)
    writer.text(str(series.dtype))
    writer.count(len(series))
    write_arrow_values(writer, series.to_arrow())


def _series(writer: TokenWriter, series: Any) -> None:
    writer.tag("polars.Series")
    _write_series(writer, series)


def _data_frame(writer: TokenWriter, frame: Any) -> None:
    writer.tag("polars.DataFrame")
    writer.count(frame.width)
    for column in frame.get_columns():
        _write_series(writer, column)


def install_handlers() -> None:
    """Register the polars handlers with :mod:`nbcache.keys.digest` (pyarrow is needed)."""
    if importlib.util.find_spec("pyarrow") is None:
        return
    register_handler(pl.Series, _series)
    register_handler(pl.DataFrame, _data_frame)
