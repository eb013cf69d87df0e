"""Canonical encodings of flat containers of plain values, written at C speed.

Notebooks hold lists of strings, dicts of settings, lists of records. Walking them value by
value in Python costs ten times what pickling them does; these encodings cost about what
pickling does. They apply to a list, tuple, set or frozenset whose members, a dict whose keys
and values, and a list of dicts whose keys and values are all *plain*: exactly ``str``,
``int``, ``float``, ``bool``, ``None`` or ``bytes`` (never a subclass). Anything else takes
the general encoding of :mod:`nbcache.keys.digest`; which one applies depends only on the
value, so equal values always encode alike.

Items all of one type take the shortest road: strings joined with NUL separators and UTF-8
encoded (lone surrogates kept), ints as 64-bit integers. Other plain items are serialised by
:mod:`marshal` format 2, which writes each value by its type and content alone: binary
floats, no back references and no string interning (format 3 and later mark shared objects,
so equal values could encode differently). Unordered members are sorted
first: dict keys and set members must then all be of one type among ``str``, ``int`` and
``bytes``, which sort totally. A float NaN anywhere, whose bits vary while every NaN must
digest alike, takes the general encoding too.
"""

from __future__ import annotations

import array
import marshal
import operator
import struct
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["plain_dict", "plain_sequence", "plain_set"]

_MARSHAL_FORMAT = 2
_pack_u64 = struct.Struct("<Q").pack
_pack_header = struct.Struct("<cQQ").pack  # kind, count, byte size
_PLAIN = frozenset({str, int, float, bool, type(None), bytes})
_SORTABLE = frozenset({str, int, bytes})
# A list of dicts with more key layouts than this is not a table: encoded dict by dict.
_MAX_RECORD_LAYOUTS = 16


def plain_sequence(items: list[Any] | tuple[Any, ...]) -> bytes | None:
    """The encoding of a list's or tuple's items, or None if they are not plain.

    Items that are all dicts sharing one set of keys are encoded as a table (see
    :func:`_records`).
    """
    types = set(map(type, items))
    if types == {dict}:
        return _records(items)
    return _values(items, types)


def plain_set(members: set[Any] | frozenset[Any]) -> bytes | None:
    """The encoding of a set's members in sorted order, or None (see the module docstring)."""
    types = set(map(type, members))
    if len(types) != 1 or not _SORTABLE.issuperset(types):
        return None
    return _values(sorted(members), types)


def plain_dict(mapping: dict[Any, Any]) -> bytes | None:
    """The encoding of a dict's items in key order, or None (see the module docstring)."""
    key_types = set(map(type, mapping))
    if len(key_types) != 1 or not _SORTABLE.issuperset(key_types):
        return None
    value_types = set(map(type, mapping.values()))
    if not _PLAIN.issuperset(value_types):
        return None
    if float in value_types and _has_nan(list(mapping.values())):
        return None
    items = marshal.dumps(sorted(mapping.items()), _MARSHAL_FORMAT)
    return _framed(b"d", len(mapping), items)


def _values(items: Sequence[Any], types: set[type]) -> bytes | None:
    """Plain items, self-delimiting: a kind byte, their count, the byte size, the bytes."""
    if types == {str}:
        joined = "\x00".join(items)
        if joined.count("\x00") == len(items) - 1 or not items:  # no item holds a NUL itself
            return _framed(b"s", len(items), joined.encode("utf-8", "surrogatepass"))
    elif types == {int}:
        try:
            return _framed(b"q", len(items), array.array("q", items).tobytes())
        except OverflowError:
            pass  # an int beyond 64 bits: marshal writes it
    elif types == {float}:
        if _has_nan(items):
            return None
        return _framed(b"f", len(items), array.array("d", items).tobytes())
    if not _PLAIN.issuperset(types) or (float in types and _has_nan(items)):
        return None
    data = marshal.dumps(items, _MARSHAL_FORMAT)  # type: ignore[arg-type]
    return _framed(b"m", len(items), data)


def _framed(kind: bytes, count: int, data: bytes) -> bytes:
    return _pack_header(kind, count, len(data)) + data


def _records(rows: list[Any] | tuple[Any, ...]) -> bytes | None:
    """The encoding of dicts sharing one set of keys, as a table, or None.

    Every item is exactly a ``dict``. The keys are sorted once and the table is written column
    by column, so rows that list their keys in different orders encode alike.
    """
    keys: list[Any] | None = None
    layouts = set(map(tuple, rows))
    if len(layouts) > _MAX_RECORD_LAYOUTS:
        return None
    for layout in layouts:
        types = set(map(type, layout))
        if len(types) != 1 or not _SORTABLE.issuperset(types):
            return None
        ordered = sorted(layout)
        if keys is None:
            keys = ordered
        elif ordered != keys:
            return None
    if not keys:
        return None
    columns = [list(map(operator.itemgetter(key), rows)) for key in keys]
    encoded_keys = _values(keys, {type(keys[0])})
    assert encoded_keys is not None  # keys of one sortable type are plain
    encoded = [encoded_keys]
    for column in columns:
        encoded_column = _values(column, set(map(type, column)))
        if encoded_column is None:
            return None
        encoded.append(encoded_column)
    return _framed(b"r", len(rows), b"".join(encoded))


def _has_nan(items: Iterable[Any]) -> bool:
    # x != x only for NaN; the other plain types compare at C speed
    return any(map(operator.ne, items, items))
