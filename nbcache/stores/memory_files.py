"""Values kept in sealed memory files and handed out as copy-on-write mappings (Linux).

A value written once into an anonymous memory file (``memfd``) and sealed can be mapped
private and writable as often as needed: each mapping is its reader's own writable copy of
the value, for the cost of a mapping, not of a copy (a page is copied only when its reader
writes to it), and no reader can change the file. The in-process store keeps its big values
so, and so does the entry layer's tier of near copies.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import mmap
import os
import threading
from collections.abc import Sequence
from typing import Any

from nbcache.stores import buffers as aligned
from nbcache.stores.api import Buffer, byte_view

log = logging.getLogger(__name__)

#: True where values can be kept in memory files (Linux).
CAN_MAP_FILES = hasattr(os, "memfd_create") and hasattr(mmap, "MAP_PRIVATE")
#: The most memory files this process keeps open, whatever its descriptor limit: each holds
#: a descriptor, and the user's own files, sockets and imports need theirs.
MAX_MEMORY_FILES = 256


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

    def __init__(self, value: Sequence[Buffer], size: int, name: str = "nbcache-value") -> None:
        """Write ``value`` (``size`` bytes) into a new memory file; ``OSError`` if impossible
        (the budget of memory files is spent, say).

        ``name`` shows in ``/proc/<pid>/fd`` (as ``/memfd:<name>``), for whoever counts them.
        """
        self.fd = -1
        self.size = size
        if not _descriptors.take():
            raise OSError(errno.EMFILE, "the budget of memory files is spent")
        flags = os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0)
        try:
            self.fd = os.memfd_create(name, flags)
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
    unmap = weakref.finalize(memory, libc.munmap, address, size)
    # Not at exit: the process's memory goes with it anyway, and a thread still reading the
    # mapping then (a near copy being checked) would crash the interpreter on its way out.
    unmap.atexit = False
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
