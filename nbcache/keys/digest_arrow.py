"""Canonical encodings of Arrow data: pyarrow arrays, chunked arrays, tables, record batches.

Text is encoded from its Arrow buffers in place (:mod:`nbcache.keys.digest_text`), exactly as
the same strings held by Python are, so a pandas ``str`` column digests alike whether pyarrow
backs it or not. Integers, floats, booleans and times are read into numpy (without a copy where
Arrow allows it), with what lies under a missing value zeroed; other types (nested, dictionary,
decimal...) are read as Python values. Chunking never changes a digest.

Imported by :mod:`nbcache.keys.digest` the first time a pyarrow value is digested, and by
:mod:`nbcache.keys.digest_pandas` for Arrow-backed pandas columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from nbcache.keys import digest_numpy
from nbcache.keys.digest import TokenWriter, register_handler
from nbcache.keys.digest_text import arrow_blocks, write_text_column

__all__ = ["install_handlers", "is_text", "write_arrow_values"]


def _is_string_view(arrow_type: Any) -> bool:
    # the string_view type came with pyarrow 16; before it, no array can hold one
    test = getattr(pa.types, "is_string_view", None)
    return bool(test is not None and test(arrow_type))


def is_text(arrow_type: Any) -> bool:
    """Whether an Arrow type holds UTF-8 strings."""
    return bool(
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or _is_string_view(arrow_type)
    )


def write_arrow_values(writer: TokenWriter, values: Any) -> None:
    """Append the values of a pyarrow Array or ChunkedArray (its type is written apart)."""
    arrow_type = values.type
    if is_text(arrow_type):
        _write_text(writer, _one_chunk(values))
    elif (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_temporal(arrow_type)
    ):
        _write_numbers(writer, values)
    else:
        writer.raw(b"o")
        writer.value(values.to_pylist())


def _one_chunk(values: Any) -> Any:
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return values.chunk(0)
        return values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return values


def _write_text(writer: TokenWriter, array: Any) -> None:
    if _is_string_view(array.type):
        array = array.cast(pa.large_string())
    missing = _missing(array)
    _, offsets_buffer, data_buffer = array.buffers()
    offset_type = np.int32 if pa.types.is_string(array.type) else np.int64
    if offsets_buffer is None:
        offsets = np.zeros(len(array) + 1, dtype=offset_type)
    else:
        all_offsets = np.frombuffer(offsets_buffer, dtype=offset_type)
        offsets = all_offsets[array.offset : array.offset + len(array) + 1]
    write_text_column(writer, len(array), arrow_blocks(offsets, data_buffer, missing))


def _write_numbers(writer: TokenWriter, values: Any) -> None:
    writer.raw(b"n")
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    missing = np.concatenate([_missing(chunk) for chunk in chunks] or [np.zeros(0, bool)])
    writer.bulk(np.packbits(missing).tobytes())
    for chunk in chunks:
        if chunk.null_count:  # what lies under a missing value is arbitrary: zero it
            zero = pa.scalar(False if pa.types.is_boolean(chunk.type) else 0)
            chunk = chunk.fill_null(zero.cast(chunk.type))
        digest_numpy.write_array_content(writer, chunk.to_numpy(zero_copy_only=False))


def _missing(array: Any) -> np.ndarray[Any, Any]:
    if array.null_count == 0:
        return np.zeros(len(array), dtype=bool)
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _array(writer: TokenWriter, values: Any) -> None:
    writer.tag("pyarrow.Array")
    writer.text(str(values.type))
    writer.count(len(values))
    write_arrow_values(writer, values)


def _table(writer: TokenWriter, table: Any) -> None:
    writer.tag("pyarrow.Table")
    writer.value(list(table.schema.names))
    writer.count(table.num_rows)
    for column in table.columns:
        writer.text(str(column.type))
        write_arrow_values(writer, column)
    metadata = table.schema.metadata or {}
    writer.value({bytes(key): bytes(value) for key, value in metadata.items()})


def install_handlers() -> None:
    """Register the pyarrow handlers (and numpy's) with :mod:`nbcache.keys.digest`."""
    digest_numpy.install_handlers()
    register_handler(pa.Array, _array)
    register_handler(pa.ChunkedArray, _array)
    register_handler(pa.Table, _table)
    register_handler(pa.RecordBatch, _table)
