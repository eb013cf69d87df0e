"""Remembered digests of big values that provably did not change: an unchanged input costs O(1).

Digesting a 1e6-row DataFrame reads every byte of it, hundreds of milliseconds, on every call
of a function that reads it. A *witness* is what proves, in microseconds, that a value is
exactly as it was when it was digested: for a pandas object under copy-on-write, the
identities of its blocks, arrays and axes while nbcache holds a shallow copy of it (see
:mod:`nbcache.keys.witness_pandas`). A value is digested in full whenever no witness can be
established, or the one it had fails; nothing is sampled or guessed.

What is held for a witness never keeps the value itself alive: each remembered digest is tied
to its value by a weak reference and forgotten with it, and at most :data:`REMEMBERED` digests
are kept (the oldest go first).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["REMEMBERED", "Witness", "forget_all", "remembered_digest"]

#: How many witnessed values keep their digest at most.
REMEMBERED = 64


class Witness(Protocol):
    """Proof that a value is unchanged since its digest, checked in O(1)."""

    def holds(self, value: Any) -> bool:
        """True only if ``value`` cannot differ from what it was when the witness was made."""
        ...


class _Remembered:
    __slots__ = ("digest", "reference", "witness")

    def __init__(self, reference: weakref.ref[Any], witness: Witness, digest: bytes) -> None:
        self.reference = reference
        self.witness = witness
        self.digest = digest


_table: dict[int, _Remembered] = {}
_lock = threading.Lock()


def remembered_digest(
    value: Any,
    make_witness: Callable[[Any], Witness | None],
    compute: Callable[[], bytes],
) -> bytes:
    """``compute()``, the digest of ``value``, or what it returned before if nothing changed.

    ``make_witness(value)`` returns a witness, or None when none can be established (then
    every call computes). The witness is made before the digest is computed: a change made
    while computing fails the next check rather than hiding behind the digest.
    """
    key = id(value)
    remembered = _table.get(key)
    if (
        remembered is not None
        and remembered.reference() is value
        and remembered.witness.holds(value)
    ):
        return remembered.digest
    witness = make_witness(value)
    digest = compute()
    if witness is None:
        if remembered is not None:
            _forget(key, remembered.reference)
        return digest
    reference = weakref.ref(value, functools.partial(_forget, key))
    with _lock:
        _table.pop(key, None)
        _table[key] = _Remembered(reference, witness, digest)
        while len(_table) > REMEMBERED:
            del _table[next(iter(_table))]
    return digest


def forget_all() -> None:
    """Forget every remembered digest (and release what their witnesses hold)."""
    with _lock:
        _table.clear()


def _forget(key: int, reference: weakref.ref[Any]) -> None:
    with _lock:
        remembered = _table.get(key)
        if remembered is not None and remembered.reference is reference:
            del _table[key]
