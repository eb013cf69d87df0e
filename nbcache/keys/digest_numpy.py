"""Canonical encodings of numpy arrays, dtypes and scalars.

An array digests as its dtype (byte order, structured fields, units), its shape and all of its
content in C order. Contiguous data is hashed straight from the array's buffer, without a copy;
a strided view is hashed in bounded blocks and digests equal to its contiguous copy. Float
content is bit-exact: ``-0.0`` and ``0.0`` differ, and so may NaNs with different payloads (a
miss, never a wrong hit).

Object and variable-width string arrays are read in batches (:func:`write_object_elements`).
The elements of a batch whose class is exactly ``str`` are encoded together at C speed: joined
with NUL separators and UTF-8 encoded (lone surrogates kept), or, when an element itself holds a
NUL, as their lengths followed by their concatenation. Either way the encoding is exact, with
no per-element hash, so ``("ab", "c")`` and ``("a", "bc")`` differ. Every other element (None,
NaN, ``pd.NA``, numbers, ``str`` subclasses such as ``numpy.str_``) keeps its own typed
encoding, marked by position. A batch holds about 1 MiB of text, so digesting a column of a
million strings adds a few MiB at most, never a copy of the column.

Imported by :mod:`nbcache.keys.digest` the first time a numpy value is digested.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from nbcache.keys.digest import TokenWriter, register_handler, write_type

# Strided arrays are copied to contiguous blocks of about this size before hashing.
_BLOCK_BYTES = 1 << 22

# Object elements are read in batches sized from the text of the batch before: about this
# much text per batch keeps the joined copy small while the per-batch cost stays negligible.
_TEXT_PER_BATCH = 1 << 20
_FIRST_BATCH = 1 << 10
_MAX_BATCH = 1 << 16

# Batch markers: control bytes, which never start an element's own encoding.
_ALL_STR = b"\x01"
_NO_STR = b"\x02"
_SOME_STR = b"\x03"
_NUL_SEPARATED = b"\x04"
_LENGTH_PREFIXED = b"\x05"

#: Returns the elements ``[start, stop)`` of a sequence as a 1-D object array.
ElementSlicer = Callable[[int, int], "np.ndarray[Any, Any]"]


def write_dtype(writer: TokenWriter, dtype: np.dtype[Any]) -> None:
    """Append a dtype: its kind, size and byte order, fields and offsets, subarray shape."""
    if dtype.fields is not None and dtype.names is not None:
        writer.raw(b"{")
        writer.count(len(dtype.names))
        for name in dtype.names:
            field = dtype.fields[name]
            writer.text(name)
            write_dtype(writer, field[0])
            writer.count(field[1])
            writer.value(field[2] if len(field) > 2 else None)
        writer.count(dtype.itemsize)
        writer.value(bool(dtype.isalignedstruct))
    elif dtype.subdtype is not None:
        base, shape = dtype.subdtype
        writer.raw(b"[")
        write_dtype(writer, base)
        writer.value(tuple(shape))
    else:
        writer.raw(b"=")
        writer.text(dtype.str)  # "<f8", ">i4", "|S5", "<M8[ns]"
        if dtype.kind == "T":  # numpy's variable-width strings: the missing-value marker
            writer.value(getattr(dtype, "na_object", None))


def write_array_content(writer: TokenWriter, array: np.ndarray[Any, Any]) -> None:
    """Append all elements of ``array`` in C order (its shape and dtype are written apart)."""
    dtype = array.dtype
    if dtype.names is not None and dtype.hasobject:
        for name in dtype.names:
            write_array_content(writer, array[name])
    elif dtype.hasobject or dtype.kind == "T":
        if not writer.enter(array):
            return
        write_object_elements(writer, array.size, _object_slicer(array))
        writer.leave(array)
    elif array.nbytes:
        _write_raw(writer, array)


def write_object_elements(writer: TokenWriter, length: int, elements: ElementSlicer) -> None:
    """Append ``length`` elements of any type, read through ``elements`` a batch at a time.

    The encoding depends only on the elements (batch sizes follow from their content), so
    any two sources of the same elements write the same bytes.
    """
    start = 0
    batch = _FIRST_BATCH
    while start < length:
        stop = min(start + batch, length)
        text_bytes = _write_object_batch(writer, elements(start, stop))
        batch = _next_batch_size(stop - start, text_bytes)
        start = stop


def _next_batch_size(count: int, text_bytes: int) -> int:
    """Aim at ``_TEXT_PER_BATCH`` of text, growing at most fourfold from one batch to the next."""
    bytes_per_element = text_bytes // count + 1
    return max(1, min(_TEXT_PER_BATCH // bytes_per_element, 4 * count, _MAX_BATCH))


def _write_object_batch(writer: TokenWriter, batch: np.ndarray[Any, Any]) -> int:
    """Append one batch; return the UTF-8 size of its strings (it sizes the next batch)."""
    # Exact class test: a str subclass may behave differently, so it is digested as itself.
    if all(map(operator.is_, map(type, batch), itertools.repeat(str))):
        writer.raw(_ALL_STR)
        return _write_strings(writer, batch)
    is_str = np.fromiter(
        map(operator.is_, map(type, batch), itertools.repeat(str)), dtype=bool, count=len(batch)
    )
    if not is_str.any():
        writer.raw(_NO_STR)
        for element in batch:
            writer.value(element)
        return 0
    writer.raw(_SOME_STR)
    writer.raw(np.packbits(is_str).tobytes())
    text_bytes = _write_strings(writer, batch[is_str])
    for element in batch[~is_str]:
        writer.value(element)
    return text_bytes


def _write_strings(writer: TokenWriter, strings: np.ndarray[Any, Any]) -> int:
    """Append str elements (their count is known to the reader); return their UTF-8 size."""
    joined = "\x00".join(strings)
    if joined.count("\x00") == max(len(strings) - 1, 0):  # no element holds a NUL itself
        writer.raw(_NUL_SEPARATED)
    else:
        writer.raw(_LENGTH_PREFIXED)
        lengths = np.fromiter(map(len, strings), dtype="<i8", count=len(strings))
        writer.bulk(_bytes_of(lengths))
        joined = "".join(strings)
    encoded = joined.encode("utf-8", "surrogatepass")
    del joined
    writer.sized(encoded)
    return len(encoded)


def _object_slicer(array: np.ndarray[Any, Any]) -> ElementSlicer:
    """Slices of an object or variable-width string array in C order, as object arrays."""
    flat: Any = array.reshape(-1) if array.flags.c_contiguous else array.flat
    as_objects = array.dtype.kind == "T"

    def elements(start: int, stop: int) -> np.ndarray[Any, Any]:
        part: np.ndarray[Any, Any] = flat[start:stop]  # a flatiter slice copies just this part
        return part.astype(object) if as_objects else part

    return elements


def _write_raw(writer: TokenWriter, array: np.ndarray[Any, Any]) -> None:
    if array.flags.c_contiguous:
        writer.bulk(_bytes_of(array))
        return
    row_bytes = array.nbytes // array.shape[0]
    if row_bytes >= _BLOCK_BYTES:
        for row in array:
            _write_raw(writer, row)
        return
    rows = max(1, _BLOCK_BYTES // row_bytes)
    for start in range(0, array.shape[0], rows):
        block = np.ascontiguousarray(array[start : start + rows])
        writer.bulk(_bytes_of(block))


def _bytes_of(array: np.ndarray[Any, Any]) -> memoryview:
    """The bytes of a C-contiguous array, in place (datetime arrays export no buffer)."""
    flat: Any = array.reshape(-1).view(np.uint8)
    return memoryview(flat)


def _ndarray(writer: TokenWriter, array: np.ndarray[Any, Any]) -> None:
    if type(array) is not np.ndarray:  # np.matrix and other subclasses behave differently
        writer.raw(b"S")
        write_type(writer, type(array))
        array = array.view(np.ndarray)
    writer.tag("numpy.ndarray")
    write_dtype(writer, array.dtype)
    writer.value(array.shape)
    write_array_content(writer, array)


def _masked_array(writer: TokenWriter, array: Any) -> None:
    writer.tag("numpy.ma.MaskedArray")
    _ndarray(writer, np.asarray(array.data))
    _ndarray(writer, np.ma.getmaskarray(array))
    writer.value(array.fill_value)
    writer.value(bool(array.hardmask))


def _scalar(writer: TokenWriter, scalar: np.generic) -> None:
    writer.tag("numpy.scalar")
    write_dtype(writer, scalar.dtype)
    write_array_content(writer, np.asarray(scalar))


def _dtype(writer: TokenWriter, dtype: np.dtype[Any]) -> None:
    writer.tag("numpy.dtype")
    write_dtype(writer, dtype)


def install_handlers() -> None:
    """Register the numpy handlers with :mod:`nbcache.keys.digest`."""
    register_handler(np.ndarray, _ndarray)
    register_handler(np.ma.MaskedArray, _masked_array)
    register_handler(np.generic, _scalar)
    register_handler(np.dtype, _dtype)  # numpy 2's per-dtype classes find it along the MRO
