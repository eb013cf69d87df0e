"""Call keys remembered for calls of plain values, while the code and its global inputs stay.

A call's key is a pure function of the code fingerprint, the global input digests and the
bound arguments (:mod:`nbcache.functions.call_key`). Binding and digesting the arguments of a
small call costs more than the rest of a hit, and loops call with the same few values again
and again. For arguments that are *plain values* (exact ``int``, ``bool``, ``None``, short
``str`` and ``bytes``, ``float``), the arguments themselves identify their digests, so the
key built the last time is the key again: it is remembered here, looked up by the arguments
and their exact types (``1``, ``True`` and ``1.0`` are equal in Python, never here) — floats
by their bits (``0.0 == -0.0``, never here). Only the keys of calls that hit are remembered
(a call that misses may never come again), and only the key text: nothing the garbage
collector has to walk.

What is remembered holds only while the code snapshot is the same object and the global
inputs have the same digests; anything else (edited code, a changed global, a global learned
to be state) starts afresh. Anything not plain (a list, which can change in place; an array)
takes the long way every time.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

#: At most this many keys are remembered per function (then all are forgotten at once).
MAX_KEYS = 4096
#: Longer text and bytes are not remembered (comparing them costs, and they stay alive).
MAX_LENGTH = 256

_PLAIN_TYPES = frozenset({int, bool, type(None), str, bytes, float})
_SIZED = (str, bytes)
_float_bits = struct.Struct("<d").pack


def call_identity(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """What identifies a call's arguments exactly, if all of them are plain; else None."""
    if kwargs:
        values = (*args, *kwargs.values())
        names = tuple(kwargs)  # in the order given: another order is another identity
    else:
        values, names = args, ()
    types = tuple(map(type, values))
    if not _PLAIN_TYPES.issuperset(types):
        return None
    if str in types or bytes in types or float in types:
        for value in values:
            if type(value) in _SIZED and len(value) > MAX_LENGTH:
                return None
        if float in types:
            values = tuple(_float_bits(v) if type(v) is float else v for v in values)
    return values, names, types


class RememberedKeys:
    """The keys of one function's recent plain calls, for one code snapshot and its globals.

    Safe to share between threads: the snapshot, the globals and their keys are replaced as
    one tuple, so no thread pairs one snapshot's keys with another's.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state: tuple[object, dict[str, str], dict[Any, str]] = (None, {}, {})

    def keys_for(self, snapshot: object, global_digests: dict[str, str]) -> dict[Any, str]:
        """The remembered keys by :func:`call_identity`, for this snapshot and these globals.

        Add to it with :func:`remember`.
        """
        state = self._state
        if state[0] is not snapshot or state[1] != global_digests:
            state = self._state = (snapshot, global_digests, {})
        return state[2]


def remember(keys: dict[Any, str], identity: Any, key: str) -> None:
    """Remember ``key`` under ``identity`` in ``keys``, keeping at most :data:`MAX_KEYS`."""
    if len(keys) >= MAX_KEYS:
        keys.clear()
    keys[identity] = key
