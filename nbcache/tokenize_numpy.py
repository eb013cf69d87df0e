"""Canonical encodings of numpy arrays, dtypes and scalars.

An array digests as its dtype (byte order, structured fields, units), its shape and all of its
content in C order. Contiguous data is hashed straight from the array's buffer, without a copy;
a strided view is hashed in bounded blocks and digests equal to its contiguous copy. Object and
variable-width string arrays digest element by element. Float content is bit-exact: ``-0.0``
and ``0.0`` differ, and so may NaNs with different payloads (a miss, never a wrong hit).

Imported by :mod:`nbcache.tokenize` the first time a numpy value is digested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nbcache.tokenize import TokenWriter

# Strided arrays are copied to contiguous blocks of about this size before hashing.
_BLOCK_BYTES = 1 << 22


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
        for element in array.flat:
            writer.value(element)
        writer.leave(array)
    elif array.nbytes:
        _write_raw(writer, array)


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
        from nbcache.tokenize import write_type

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
    """Register the numpy handlers with :mod:`nbcache.tokenize`."""
    from nbcache.tokenize import register_handler

    register_handler(np.ndarray, _ndarray)
    register_handler(np.ma.MaskedArray, _masked_array)
    register_handler(np.generic, _scalar)
    register_handler(np.dtype, _dtype)  # numpy 2's per-dtype classes find it along the MRO
