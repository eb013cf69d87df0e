"""Change an object in place into a restored copy, so every name that refers to it sees the change.

When a cell changes an object in place (``df.loc[0, "x"] = 99``, ``metrics["acc"] = 0.9``),
every other name bound to that object (``backup = df``) sees the change in a plain run. A hit
restores a copy; :func:`update_in_place` makes the existing object equal to it instead of
rebinding the name, for the types where that is exact: lists, dicts, sets, bytearrays, numpy
arrays of the same shape and dtype, pandas DataFrames and Series on an equal index. Anything
else is left alone (False): the caller rebinds the name and says which other names still
refer to the old object.

numpy and pandas are never imported here: a value of theirs means they are imported already.
"""

from __future__ import annotations

import sys
from typing import Any


def update_in_place(target: Any, restored: Any) -> bool:
    """Make ``target`` equal to ``restored`` without replacing it; False if that is not possible.

    On False, ``target`` is unchanged. ``restored`` must be the caller's own copy: its parts
    may end up inside ``target``.
    """
    if target is restored:
        return True
    kind = type(target)
    if kind is not type(restored):
        return False
    if kind is list or kind is bytearray:
        target[:] = restored
        return True
    if kind is dict or kind is set:
        target.clear()
        target.update(restored)
        return True
    module = kind.__module__.partition(".")[0]
    if module == "numpy":
        return _update_array(target, restored)
    if module == "pandas":
        return _update_pandas(target, restored)
    return False


def _update_array(target: Any, restored: Any) -> bool:
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(target, numpy.ndarray):
        return False
    if target.shape != restored.shape or target.dtype != restored.dtype:
        return False
    if not target.flags.writeable or target.dtype.hasobject:
        return False  # object arrays hold references: a copy into them would not be the same
    numpy.copyto(target, restored)
    return True


def _update_pandas(target: Any, restored: Any) -> bool:
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return False
    if isinstance(target, pandas.DataFrame):
        return _update_frame(target, restored)
    if isinstance(target, pandas.Series):
        return _update_series(target, restored)
    return False


def _same_index(target: Any, restored: Any) -> bool:
    return type(target) is type(restored) and bool(target.equals(restored))


def _update_series(target: Any, restored: Any) -> bool:
    if not _same_index(target.index, restored.index) or target.dtype != restored.dtype:
        return False
    target.iloc[:] = restored.array
    target.index = restored.index
    target.name = restored.name
    target.attrs = dict(restored.attrs)
    return True


def _update_frame(target: Any, restored: Any) -> bool:
    """Columns replaced, added (at their place) and removed; rows only if the index is equal."""
    if not _same_index(target.index, restored.index):
        return False
    old, new = list(target.columns), list(restored.columns)
    old_set, new_set = set(old), set(new)
    if len(old_set) != len(old) or len(new_set) != len(new):
        return False  # duplicate labels: a column cannot be named alone
    kept = [label for label in old if label in new_set]
    if kept != [label for label in new if label in old_set]:
        return False  # the kept columns were reordered: no in-place operation does that
    for label in old:
        if label not in new_set:
            del target[label]
    for position, label in enumerate(new):
        if label in old_set:
            target[label] = restored[label]
        else:
            target.insert(position, label, restored[label])
    target.columns = restored.columns
    target.index = restored.index
    target.attrs = dict(restored.attrs)
    return True
