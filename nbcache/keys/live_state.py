"""Objects that hold live state no digest can stand for: files, sockets, locks, iterators.

A key built from such a value would claim a result depends on bytes that say nothing about
what the object will do next; :func:`live_state_reason` names why, for the error message.
"""

from __future__ import annotations

import _thread
import collections.abc
import io
import sys
import types

_LIVE_STATE_TYPES: tuple[tuple[type, str], ...] = (
    (types.GeneratorType, "it is a generator, consumed as it runs"),
    (types.CoroutineType, "it is a coroutine, consumed as it runs"),
    (types.AsyncGeneratorType, "it is an async generator, consumed as it runs"),
    (io.IOBase, "it is an open file or stream"),
    (_thread.LockType, "it is a lock"),
    (_thread.RLock, "it is a lock"),
    (types.FrameType, "it is a live stack frame"),
    (types.TracebackType, "it is a traceback of live frames"),
    (collections.abc.Iterator, "it is an iterator over live state, consumed as it is read"),
)
# Types from modules the caller may not have imported: checked by name when present.
_LIVE_STATE_TYPE_NAMES = (
    ("socket", "socket", "it is a network socket"),
    ("threading", "Thread", "it is a thread"),
    ("threading", "Condition", "it is a lock"),
    ("threading", "Semaphore", "it is a lock"),
    ("threading", "Event", "it is a synchronisation event"),
    ("sqlite3", "Connection", "it is a database connection"),
    ("sqlite3", "Cursor", "it is a database cursor"),
    ("multiprocessing.synchronize", "SemLock", "it is a lock"),
    ("queue", "Queue", "it is a queue of live state"),
    ("selectors", "BaseSelector", "it is a selector over live sockets"),
    ("mmap", "mmap", "it is a memory-mapped file"),
)


def live_state_reason(cls: type) -> str | None:
    """Why instances of ``cls`` hold live state that no digest can stand for, or None."""
    for live_type, reason in _LIVE_STATE_TYPES:
        if issubclass(cls, live_type):
            return reason
    for module_name, type_name, reason in _LIVE_STATE_TYPE_NAMES:
        named_type = getattr(sys.modules.get(module_name), type_name, None)
        if isinstance(named_type, type) and issubclass(cls, named_type):
            return reason
    return None
