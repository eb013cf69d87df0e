"""Witnesses for pandas objects: copy-on-write makes identities a proof of unchanged content.

Under pandas' copy-on-write (always on from pandas 3), a write through pandas into a block
whose memory another object references copies that block first. nbcache holds a shallow copy
of a DataFrame or Series it digested, so every such write replaces a block (or its array) in
the user's object, and comparing the identities of the blocks, their arrays, their placement,
the manager, the axes and the names tells, in microseconds, whether anything can have changed:
``loc``, ``iloc``, ``at``, ``iat``, ``[]=``, ``inplace=True`` methods, ``update``, ``fillna``,
``insert``, ``del``, ``rename``, new axes, new names all do. The shallow copy costs the user
at most one copy of each block they write to first.

No witness (so a full digest on every call) when any part could change without pandas
knowing: before pandas 3, object columns (their elements may be mutable objects), arrays
whose memory belongs to something other than a NumPy array or ``bytes``, unknown extension
arrays, and non-empty ``attrs`` (a plain dict). Writes that go around pandas are not seen, as
pandas itself does not see them: through ``Series.array`` (pandas keeps it writable), through
a NumPy array the frame was built on with ``copy=False``, or through an array made writable
again by hand.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PandasWitness", "pandas_witness"]

_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


class PandasWitness:
    """The identities of every part of a DataFrame or Series, and a shallow copy of it."""

    __slots__ = ("_kept", "_parts")

    def __init__(self, kept: Any, parts: tuple[object, ...]) -> None:
        self._kept = kept  # what makes pandas copy a block before writing into it
        self._parts = parts

    def holds(self, value: Any) -> bool:
        parts = _parts(value)
        return (
            parts is not None
            and len(parts) == len(self._parts)
            and all(map(operator.is_, parts, self._parts))
        )


def pandas_witness(value: Any) -> PandasWitness | None:
    """A witness for a DataFrame or Series, or None when none is sound (see the module)."""
    if not _COPY_ON_WRITE:
        return None
    parts = _parts(value)
    if parts is None or not all(_is_witnessable(blk.values) for blk in value._mgr.blocks):
        return None
    return PandasWitness(value.copy(deep=False), parts)


def _parts(value: Any) -> tuple[object, ...] | None:
    """Every object a DataFrame's or Series's content hangs on, or None if attrs are set."""
    if value._attrs:
        return None
    manager = value._mgr
    parts: list[object] = [manager, manager.blocks, vars(value).get("_name")]  # a Series name
    for axis in manager.axes:
        parts.append(axis)
        _index_parts(axis, parts)
    for block in manager.blocks:
        values = block.values
        parts += (block, values, block._mgr_locs)
        _array_parts(values, parts)
    return tuple(parts)


def _index_parts(index: Any, parts: list[object]) -> None:
    if isinstance(index, pd.MultiIndex):
        parts += (index._levels, index._codes, *index._names)
        for level in index._levels:
            _index_parts(level, parts)
        return
    parts.append(index._name)
    if isinstance(index, pd.RangeIndex):
        parts.append(index._range)
    else:
        parts.append(index._data)
        _array_parts(index._data, parts)


def _array_parts(array: Any, parts: list[object]) -> None:
    """The arrays inside an extension array (a numpy array has none)."""
    if isinstance(array, np.ndarray):
        return
    for name in ("_ndarray", "_data", "_mask", "_pa_array", "_dtype", "_codes"):
        inner = getattr(array, name, None)
        if inner is not None:
            parts += (name, inner)


def _is_witnessable(array: Any) -> bool:
    """Whether every write to ``array`` must go through pandas (so copy-on-write sees it)."""
    if isinstance(array, np.ndarray):
        return array.dtype != object and _owned_by_numpy(array)
    if isinstance(array, pd.arrays.StringArray):
        return _owned_by_numpy(array._ndarray)  # objects, but only str and missing values
    if hasattr(array, "_pa_array"):
        return True  # Arrow memory is immutable
    inner = [
        getattr(array, name)
        for name in ("_ndarray", "_data", "_mask")
        if isinstance(getattr(array, name, None), np.ndarray)
    ]
    if isinstance(array, pd.Categorical):
        inner.append(array.codes)
    return bool(inner) and all(part.dtype != object and _owned_by_numpy(part) for part in inner)


def _owned_by_numpy(array: np.ndarray[Any, Any]) -> bool:
    """True unless the memory belongs to an object that can change it (mmap, a buffer)."""
    base = array
    while isinstance(base.base, np.ndarray):
        base = base.base
    return base.base is None or isinstance(base.base, bytes)
