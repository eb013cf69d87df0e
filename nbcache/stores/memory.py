"""The in-process byte store behind :class:`~nbcache.SimpleCache`."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from nbcache.stores import buffers as aligned
from nbcache.stores import settings
from nbcache.stores.api import NO_VALUE, Buffer, CasToken, NoValue, byte_view
from nbcache.stores.memory_files import CAN_MAP_FILES, MemoryFile

log = logging.getLogger(__name__)

#: Values from this size on are kept in a memory file and read as copy-on-write mappings.
MAPPED_SIZE = aligned.MAPPED
#: Seconds at least between two looks of a full store for expired items (each scans them all).
SWEEP_INTERVAL = 0.5


class _Item(NamedTuple):
    data: bytes | bytearray | MemoryFile
    size: int
    expires: float | None  # time.monotonic() deadline
    version: int

    def copy_out(self) -> Buffer:
        """What a reader gets: the value itself if immutable, else its own writable copy."""
        data = self.data
        if type(data) is bytes:
            return data  # small and immutable: nobody can change it through this
        if isinstance(data, MemoryFile):
            return data.view()
        return aligned.copy_aligned(memoryview(data))

    def release(self) -> None:
        if isinstance(self.data, MemoryFile):
            self.data.close()


class MemoryStore:
    """Bytes in a dict, thread-safe, bounded by item count and by total bytes.

    Past ``threshold`` items or ``max_bytes`` bytes, expired items go first, then the least
    recently used. A value larger than ``max_bytes`` on its own is not stored (``set`` returns
    False). Values are copied in on ``set``: the caller may change its buffers afterwards.
    What ``get`` returns can never change what is stored: a small value (under
    :data:`~nbcache.stores.buffers.BIG`) is the stored ``bytes`` object itself, immutable, so
    a small hit copies nothing; a big one is the caller's own writable memory, 64-byte
    aligned: a copy, or for a value of :data:`MAPPED_SIZE` or more (on Linux) a copy-on-write
    mapping of the :class:`MemoryFile` it is kept in, so a hit costs a mapping, not a copy,
    and the caller's writes never reach the store. Such a value holds one file descriptor
    while stored, within a per-process budget (a quarter of the descriptor limit, at most
    :data:`~nbcache.stores.memory_files.MAX_MEMORY_FILES`); past it, big values are kept as
    plain memory and each hit copies them.

    Nothing outside this process can reach it (``process_local``).
    """

    #: No other process reads or writes this store: stampede protection needs no leases in it.
    process_local = True

    def __init__(self, threshold: int = 500, max_bytes: int | None = None) -> None:
        self.threshold = settings.count("threshold", threshold, 1)
        self.max_bytes = None if max_bytes is None else settings.count("max_bytes", max_bytes, 1)
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._bytes = 0
        self._versions = 0
        # When a full store next looks for expired items to drop first (monotonic): once one
        # may have expired, and at most every SWEEP_INTERVAL, never on every write (each look
        # scans every item). Reads never return an expired item either way.
        self._next_sweep = math.inf
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Buffer | NoValue:
        return self.get_many((key,))[0]

    def get_many(self, keys: Sequence[str]) -> list[Buffer | NoValue]:
        found: list[Buffer | NoValue] = []
        copies: list[tuple[int, _Item]] = []
        with self._lock:
            items = self._items
            now = time.monotonic()
            for key in keys:
                item = items.get(key)
                if item is None:
                    found.append(NO_VALUE)
                    continue
                if item.expires is not None and item.expires <= now:
                    self._drop(key)
                    found.append(NO_VALUE)
                    continue
                items.move_to_end(key)
                data = item.data
                if type(data) is bytes:
                    found.append(data)
                elif isinstance(data, MemoryFile):
                    found.append(data.view())  # under the lock: an eviction closes the file
                else:
                    copies.append((len(found), item))
                    found.append(NO_VALUE)
        for position, item in copies:
            found[position] = item.copy_out()  # outside the lock: never mutated in place
        return found

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        data = _copy(value)
        with self._lock:
            return self._put(key, data, ttl)

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        data = _copy(value)
        with self._lock:
            if self._live(key) is not None:
                return False
            return self._put(key, data, ttl)

    def gets(self, key: str) -> tuple[Buffer | NoValue, CasToken | None]:
        with self._lock:
            item = self._live(key)
            if item is None:
                return NO_VALUE, None
            return item.copy_out(), CasToken(item.version)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        data = _copy(value)
        with self._lock:
            item = self._live(key)
            if item is None or item.version != token.value:
                return False
            return self._put(key, data, ttl)

    def delete(self, key: str) -> bool:
        with self._lock:
            live = self._live(key) is not None
            self._drop(key)
            return live

    def clear(self) -> bool:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
            self._bytes = 0
        for item in items:
            item.release()
        return True

    def close(self) -> None:
        self.clear()

    # -- under the lock -------------------------------------------------------------------

    def _live(self, key: str) -> _Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires is not None and item.expires <= time.monotonic():
            self._drop(key)
            return None
        return item

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item.size
            item.release()  # mappings handed out stay valid

    def _put(self, key: str, data: bytes | bytearray | MemoryFile, ttl: float | None) -> bool:
        size = data.size if isinstance(data, MemoryFile) else len(data)
        if self.max_bytes is not None and size > self.max_bytes:
            log.debug("nbcache: not storing %r: %d bytes > max_bytes=%d", key, size, self.max_bytes)
            self._drop(key)  # the old value must not outlive a newer write that didn't fit
            if isinstance(data, MemoryFile):
                data.close()
            return False
        self._drop(key)
        self._versions += 1
        expires = None if ttl is None else time.monotonic() + ttl
        if expires is not None and expires < self._next_sweep:
            self._next_sweep = expires
        self._items[key] = _new_item(_Item, (data, size, expires, self._versions))
        self._bytes += size
        if len(self._items) > self.threshold or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            self._prune()
        return True

    def _over(self) -> bool:
        too_many = len(self._items) > self.threshold
        return too_many or (self.max_bytes is not None and self._bytes > self.max_bytes)

    def _prune(self) -> None:
        now = time.monotonic()
        if self._next_sweep <= now:
            expired = [k for k, item in self._items.items() if item.expires and item.expires <= now]
            for key in expired:
                self._drop(key)
            first_expiry = min(
                (item.expires for item in self._items.values() if item.expires is not None),
                default=math.inf,
            )
            self._next_sweep = max(first_expiry, now + SWEEP_INTERVAL)
        while self._over():
            oldest = next(iter(self._items))
            self._drop(oldest)


# Builds an _Item from a tuple in C: every write makes one.
_new_item = tuple.__new__


def _copy(value: Sequence[Buffer]) -> bytes | bytearray | MemoryFile:
    """The store's own copy of the concatenated buffers.

    ``bytes`` for a small value (immutable: handed out as it is), a memory file for a big one
    where possible, else a ``bytearray`` (copied out aligned on each read).
    """
    size = 0
    for part in value:
        size += len(part) if type(part) is bytes else memoryview(part).nbytes
    if size < aligned.BIG:
        return b"".join(value)
    if size >= MAPPED_SIZE and CAN_MAP_FILES:
        try:
            return MemoryFile(value, size)
        except OSError as exc:  # out of file descriptors or memory: a plain copy still works
            log.debug("nbcache: keeping a %d-byte value in a bytearray: %s", size, exc)
    data = bytearray(size)
    # Assigning through a memoryview is one memcpy; ``data[a:b] = view`` would first copy
    # ``view`` into a temporary bytearray.
    target = memoryview(data)
    offset = 0
    for part in value:
        view = byte_view(part)
        target[offset : offset + len(view)] = view
        offset += len(view)
    target.release()
    return data
