"""Canonical encoding of text columns at memory speed, whoever holds the strings.

A text column (pandas' ``str`` and ``string`` dtypes in either storage, Arrow string arrays,
polars ``String`` columns) encodes as its length, then, for each block of :data:`BLOCK`
positions, a bitmap of its missing values, the UTF-8 byte lengths of its present strings
(64-bit), and their bytes. Blocks are counted in positions, not bytes, so the
encoding depends on the strings alone: a column held as Python strings and the same column
held in Arrow buffers encode alike, however either is chunked.

Python strings are joined with NUL separators and UTF-8 encoded (lone surrogates kept) a block
at a time, at C speed, and split with numpy; Arrow strings are read from their offsets and
data buffers in place. A block never copies more than its own text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from nbcache.keys.digest import TokenWriter

__all__ = ["BLOCK", "arrow_blocks", "object_blocks", "write_text_column"]

#: Positions per block of a text column's encoding.
BLOCK = 1 << 14

#: Each block's encoding, as buffers to append in order.
Blocks = Iterator[list[Any]]


def write_text_column(writer: TokenWriter, length: int, blocks: Blocks) -> None:
    """Append a text column of ``length`` positions; ``blocks`` gives its strings.

    ``blocks`` yields, for each :data:`BLOCK` positions in order, the encoding of that block
    (from :func:`object_blocks` or :func:`arrow_blocks`).
    """
    writer.raw(b"t")
    writer.count(length)
    for buffers in blocks:
        for buffer in buffers:
            writer.bulk(_bytes_of(buffer))


def object_blocks(values: np.ndarray[Any, Any]) -> Blocks:
    """The blocks of a column of Python strings and missing values (an object array)."""
    for start in range(0, len(values), BLOCK):
        part = values[start : start + BLOCK]
        try:
            joined = "\x00".join(part)
            strings = part
            missing = np.zeros(len(part), dtype=bool)
        except TypeError:  # a missing value (None, NaN, NA) among the strings
            missing = ~np.fromiter(
                map(isinstance, part, itertools.repeat(str)), dtype=bool, count=len(part)
            )
            strings = part[~missing]
            joined = "\x00".join(strings)
        encoded = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        del joined
        is_separator = encoded == 0
        separators = np.flatnonzero(is_separator)
        if len(separators) == max(len(strings) - 1, 0):
            bounds = np.concatenate(([-1], separators, [len(encoded)]))
            lengths = np.diff(bounds) - 1 if len(strings) else np.zeros(0, dtype="<i8")
            data: Any = encoded[~is_separator] if len(separators) else encoded
        else:  # a string holds a NUL itself: measure each one
            pieces = [text.encode("utf-8", "surrogatepass") for text in strings]
            lengths = np.fromiter(map(len, pieces), dtype="<i8", count=len(pieces))
            data = b"".join(pieces)
        yield [np.packbits(missing), lengths.astype("<i8"), data]


def arrow_blocks(offsets: np.ndarray[Any, Any], data: Any, missing: np.ndarray[Any, Any]) -> Blocks:
    """The blocks of an Arrow string array from its buffers.

    ``offsets``: the ``len + 1`` offsets of the array's slots (already sliced to its window),
    ``data``: its UTF-8 data buffer, ``missing``: its null flags.
    """
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    for start in range(0, len(missing), BLOCK):
        window = offsets[start : start + BLOCK + 1]
        absent = missing[start : start + BLOCK]
        lengths = np.diff(window).astype("<i8")
        text = data[window[0] : window[-1]]
        if absent.any():
            if lengths[absent].any():  # a null slot may hold bytes: leave them out
                text = text[np.repeat(~absent, lengths)]
            lengths = lengths[~absent]
        yield [np.packbits(absent), lengths, text]


def _bytes_of(data: Any) -> memoryview:
    view: memoryview = memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view
