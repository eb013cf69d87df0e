"""Memory for values read back from a store: writable, and aligned so rebuilt arrays are too.

numpy (and numba, and C code handed an array) works on an array's memory where it lies. An
array rebuilt on memory that is not aligned to its element size takes slow paths or is
refused, so every store that produces a value's bytes produces them here: at a 64-byte
boundary (a cache line, and enough for any dtype and SIMD width) when the value is big, at
the allocator's 16 bytes when it is small. The envelope lays out each out-of-band buffer at a
multiple of :data:`ALIGNMENT` from the entry's start, so an aligned entry gives aligned arrays.
"""

from __future__ import annotations

import mmap
import sys

#: Big values start at a multiple of this many bytes.
ALIGNMENT = 64
#: From this size on a buffer counts as big and must be :data:`ALIGNMENT`-aligned; smaller
#: ones need only :data:`SMALL_ALIGNMENT`.
BIG = 64 * 1024
#: What Python's allocators guarantee on 64-bit platforms (pymalloc and malloc alike).
SMALL_ALIGNMENT = 16
#: From this size on a value gets its own anonymous mapping: page-aligned, and returned to the
#: system as soon as it is freed. By default it is prefaulted in one pass by the kernel (about
#: a third cheaper than faulting a fresh buffer in page by page while one thread fills it,
#: measured with 256 MiB); a buffer several threads fill at once is better left to them (each
#: faults in its own pages: ~10 % faster first hits of 256 MiB with two connections, measured
#: alternately in one process). Not transparent huge pages: alone they fault 256 MiB in ~5x
#: faster, but on a virtual machine that hands freed memory back to its host (virtio-balloon
#: free page reporting works on free 2 MiB blocks) each huge page comes back from the host
#: slowly, and first hits of 256 MiB took twice as long as with 4 KiB pages, measured
#: alternately in one process.
MAPPED = 1024 * 1024

_MAP_FLAGS = getattr(mmap, "MAP_PRIVATE", 0)
_PREFAULT = getattr(mmap, "MAP_POPULATE", 0)
_CAN_MAP = sys.platform != "win32" and hasattr(mmap, "MAP_PRIVATE")


def allocate(size: int, *, prefault: bool = True) -> memoryview:
    """A new writable, zero-filled byte view of ``size`` bytes, aligned as :func:`required` says.

    The view is the only reference to its memory: it (or anything built on it, such as an
    array) keeps the memory alive, and the memory is freed when the last of them goes.
    ``prefault=False`` for a buffer that several threads will fill at once (see
    :data:`MAPPED`).
    """
    if size < BIG:
        return memoryview(bytearray(size))
    if size >= MAPPED and _CAN_MAP:
        flags = _MAP_FLAGS | (_PREFAULT if prefault else 0)
        return memoryview(mmap.mmap(-1, size, flags=flags))
    spare = bytearray(size + ALIGNMENT - 1)
    skip = -address(memoryview(spare)) % ALIGNMENT
    return memoryview(spare)[skip : skip + size]


def required(size: int) -> int:
    """The alignment, in bytes, a buffer of ``size`` bytes must have."""
    return ALIGNMENT if size >= BIG else SMALL_ALIGNMENT


def address(view: memoryview) -> int:
    """The address of the first byte of a writable, non-empty byte view."""
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def is_aligned(view: memoryview) -> bool:
    """True if ``view`` is writable and aligned as :func:`required` says for its size."""
    if view.readonly:
        return False
    if not view.nbytes:
        return True
    return address(view) % required(view.nbytes) == 0


def copy_aligned(view: memoryview) -> memoryview:
    """A new aligned, writable copy of the byte view ``view``."""
    target = allocate(view.nbytes)
    target[:] = view
    return target
