"""A function's code, defaults and keyword defaults, re-checked without an audit event.

Every call of a cached function checks that the code it was keyed on is still the code
(:mod:`nbcache.keys.snapshot`): for each user function it reaches, that ``__code__``,
``__defaults__`` and ``__kwdefaults__`` are still the same objects. Reading those three
attributes raises an ``object.__getattr__`` audit event (PEP 578), and once any audit hook is
installed — nbcache installs one to see the files a computation opens, debuggers and
security tools install theirs — every event calls every hook: about 2 µs per attribute here,
more than the rest of a small hit's key.

The three fields lie side by side in the C function object. :func:`fields_view` finds where,
once per process, on a private probe function whose fields it knows (and checks that
replacing them moves the view as it moves the attributes), and then gives, for any function,
a view of the words from the first of those fields to the last: reading it is one C slice,
which raises no event. A view compares equal to what it read before exactly when each field
still holds the same object (the snapshot keeps those objects alive, so their addresses
cannot be reused), so comparing it is as strict as the attribute reads it replaces.

Where the layout cannot be found (another interpreter, a big-endian machine, a Python whose
function objects differ), :func:`fields_view` returns None and the attributes are read.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

#: The attributes a view stands for, in the order :func:`expected_words` takes them.
FIELDS = ("__code__", "__defaults__", "__kwdefaults__")

#: Where the fields lie: (start offset, words, index of each field in :data:`FIELDS` order).
Layout = tuple[int, int, tuple[int, ...]]

_layout: Layout | None = None
_searched = False


def fields_view(func: types.FunctionType) -> Callable[[], list[Any]] | None:
    """A function reading ``func``'s field words now (its :data:`FIELDS` among them), or None.

    The caller must keep ``func`` alive for as long as it uses the view.
    """
    layout = _function_layout()
    if layout is None or type(func) is not types.FunctionType:
        return None
    import ctypes

    start, count, _ = layout
    words = (ctypes.c_void_p * count).from_address(id(func) + start)
    return _slicer(words)


def expected_words(view: Callable[[], list[Any]], values: tuple[object, ...]) -> bool:
    """Whether ``view`` reads the words of ``values`` (the :data:`FIELDS` of its function)."""
    layout = _function_layout()
    assert layout is not None
    words = view()
    return all(
        words[index] == (None if value is None else id(value))
        for index, value in zip(layout[2], values, strict=True)
    )


def _slicer(words: Any) -> Callable[[], list[Any]]:
    whole = slice(None)
    get = words.__getitem__
    return lambda: get(whole)  # type: ignore[no-any-return]


def _function_layout() -> Layout | None:
    global _layout, _searched
    if not _searched:
        _searched = True
        try:
            _layout = _find_layout()
        except Exception:
            _layout = None
    return _layout


def _find_layout() -> Layout | None:
    """Where the fields lie: (start offset, words, index of each field), checked; or None."""
    if sys.byteorder != "little" or sys.implementation.name != "cpython":
        return None
    import ctypes

    word = ctypes.sizeof(ctypes.c_void_p)

    def probe(a: object = (), *, b: object = None) -> None:
        pass

    size = type(probe).__basicsize__
    offsets = []
    for value in (probe.__code__, probe.__defaults__, probe.__kwdefaults__):
        raw = ctypes.string_at(id(probe), size)
        needle = id(value).to_bytes(word, "little")
        found = [at for at in range(0, size - word + 1, word) if raw[at : at + word] == needle]
        if len(found) != 1:
            return None
        offsets.append(found[0])
    start, end = min(offsets), max(offsets) + word
    layout = (start, (end - start) // word, tuple((at - start) // word for at in offsets))
    global _layout
    _layout = layout  # fields_view below reads it; the caller replaces it with the answer
    view = fields_view(probe)  # type: ignore[arg-type]
    assert view is not None

    def other(c: object = 1, *, d: object = 2) -> None:
        pass

    changes: list[tuple[str, Any]] = [
        ("__code__", other.__code__),
        ("__defaults__", (3,)),
        ("__kwdefaults__", None),
        ("__defaults__", None),
        ("__kwdefaults__", {"b": 4}),
    ]
    for name, value in changes:
        setattr(probe, name, value)
        if not expected_words(view, (probe.__code__, probe.__defaults__, probe.__kwdefaults__)):
            return None
    return layout
