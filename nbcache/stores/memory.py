"""The in-process byte store behind :class:`~nbcache.SimpleCache`."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

from nbcache.stores import buffers as aligned
from nbcache.stores import settings
from nbcache.stores.api import NO_VALUE, Buffer, CasToken, NoValue, byte_view

log = logging.getLogger(__name__)

#: Values from this size on are kept in a memory file and read as copy-on-write mappings.
MAPPED_SIZE = aligned.MAPPED
_CAN_MAP_FILES = hasattr(os, "memfd_create") and hasattr(mmap, "MAP_PRIVATE")
#: The most memory files this process keeps open, whatever its descriptor limit: each holds
#: a descriptor, and the user's own files, sockets and imports need theirs.
MAX_MEMORY_FILES = 256
#: Seconds at least between two looks of a full store for expired items (each scans them all).
SWEEP_INTERVAL = 0.5


def _memory_file_budget() -> int:
    """Memory files this process may keep open: a quarter of its descriptor limit, at most
    :data:`MAX_MEMORY_FILES`. Past it, big values are kept as plain memory (read by copy)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return MAX_MEMORY_FILES
    return max(0, min(MAX_MEMORY_FILES, soft // 4))


class _Descriptors:
    """Counts the memory files open in this process against their budget. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def take(self) -> bool:
        with self._lock:
            if self.open >= _memory_file_budget():
                return False
            self.open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


_descriptors = _Descriptors()


class MemoryFile:
    """A value written once into an anonymous, sealed memory file (Linux ``memfd``).

    :meth:`view` maps it private and writable: the pages are the file's until the caller
    writes to one, which then gets a private copy of that page. So a reader gets its own
    writable value for the cost of a mapping, not of a copy, and can never change the file.
    A mapping stays valid after :meth:`close`. Each open memory file holds a descriptor;
    the process keeps only a bounded number open (see :data:`MAX_MEMORY_FILES`).
    """

    __slots__ = ("fd", "size")

    def __init__(self, value: Sequence[Buffer], size: int) -> None:
        """Write ``value`` (``size`` bytes) into a new memory file; ``OSError`` if impossible
        (the budget of memory files is spent, say)."""
        self.fd = -1
        self.size = size
        if not _descriptors.take():
            raise OSError(errno.EMFILE, "the budget of memory files is spent")
        flags = os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0)
        try:
            self.fd = os.memfd_create("nbcache-value", flags)
        except BaseException:
            _descriptors.give_back()
            raise
        try:
            for part in value:
                view = byte_view(part)
                while view.nbytes:
                    view = view[os.write(self.fd, view) :]
            _seal(self.fd)
        except BaseException:
            self.close()
            raise

    def view(self) -> memoryview:
        """A new private, writable mapping of the whole value (a copy if mapping fails)."""
        try:
            return _map_private(self.fd, self.size)
        except OSError as exc:  # out of address space or map count: a copy still works
            log.debug("nbcache: copying a %d-byte value out of its memory file: %s", self.size, exc)
            target = aligned.allocate(self.size)
            done = 0
            while done < self.size:
                done += os.preadv(self.fd, [target[done:]], done)
            return target

    def close(self) -> None:
        """Release the file (idempotent); the memory goes once no mapping is left."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
            _descriptors.give_back()

    def __del__(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(Exception):  # at interpreter exit the module may be gone
                self.close()


def _map_private(fd: int, size: int) -> memoryview:
    """A private, writable mapping of the file ``fd``, unmapped when the view's last user goes.

    Not :class:`mmap.mmap`: before Python 3.13 it keeps a duplicate of the descriptor open
    for as long as the mapping lives, so every array handed out would hold one, and a user
    keeping a few hundred results would run out.
    """
    import ctypes
    import weakref

    libc = _libc()
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    address = libc.mmap(None, size, prot, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    memory = (ctypes.c_char * size).from_address(address)
    weakref.finalize(memory, libc.munmap, address, size)
    return memoryview(memory).cast("B")


@functools.cache
def _libc() -> Any:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


def _seal(fd: int) -> None:
    """Forbid any change to the file: it is written once, and readers map it."""
    import fcntl

    seals = ("F_SEAL_WRITE", "F_SEAL_GROW", "F_SEAL_SHRINK", "F_SEAL_SEAL")
    if hasattr(fcntl, "F_ADD_SEALS") and all(hasattr(fcntl, seal) for seal in seals):
        flags = 0
        for seal in seals:
            flags |= getattr(fcntl, seal)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, flags)


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
    :data:`MAX_MEMORY_FILES`); past it, big values are kept as plain memory and each hit
    copies them.

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
    if size >= MAPPED_SIZE and _CAN_MAP_FILES:
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
