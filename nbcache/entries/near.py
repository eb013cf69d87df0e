"""Near copies: big entries this process stored or read, kept to answer repeated hits locally.

A kernel that reads a 256 MiB result a second time should not move 256 MiB again. This tier
keeps the bytes of big entries the process wrote or read, each in a sealed memory file
(:mod:`nbcache.stores.memory_files`), labelled with the *version* of the write they are
(:class:`~nbcache.stores.api.VersionedStore`: a chunked value's write id and digest, then
the namespace generation it was written under). A repeated read hands the version to the
store, which answers :data:`~nbcache.stores.api.UNCHANGED` after one round trip that reads
the entry's current record (and, in the same trip, whatever else the hit depends on: the
namespace generation, a function's generation token). Anything that changed the entry since
(a rewrite by any kernel, ``delete``, expiry of the record, ``clear()``) changes or removes
that record, so the entry is read again, or missed. The caller then gets a copy-on-write
mapping of the memory file: its own writable copy, for the cost of a mapping.

Why a copy can be trusted without checking its MAC again:

* a copy is published only once the envelope has verified the MAC over the copy itself,
  in the memory file, which is then sealed: what the tier hands out is what was verified.
  A caller that changes its result while the copy is being made costs the copy, never a
  wrong value;
* a copy belongs to one *scope* (one :class:`~nbcache.entries.entry_store.EntryStore`: one
  store, one envelope, so one secret and one namespace) and serves no other, so two caches
  with different secrets never accept each other's copies.

Copies are made on one background thread per process, so neither a write nor a first read
waits for one. Nor does a repeated read: a copy still being made is not held yet (the
thread may be busy with other copies, or starved of CPU, for longer than reading the value
again would take), so the read moves the value from the server as if there were no copy,
and leaves the copy being made of that same version alone.

The tier keeps at most ``max_bytes`` bytes of copies (in use or being made), dropping the
least recently used; a copy that leaves closes its file, whose memory goes back to the
system once no caller mapping of it is left. Freeing a big file's pages takes a while (some
50 ms for 256 MiB), so a copy a read or a write replaces, forgets or evicts is closed by the
background thread, before it makes any copy asked for after: the files open never hold more
than ``max_bytes``, and the caller does not wait. (``clear()`` closes them at once.)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from nbcache.stores.api import Buffer
from nbcache.stores.memory_files import CAN_MAP_FILES, MemoryFile

log = logging.getLogger(__name__)

#: Entries smaller than this are not kept: one round trip brings them anyway.
MIN_SIZE = 1024 * 1024
#: Share of physical memory the process-wide tier may use by default.
DEFAULT_SHARE = 1 / 8
#: The most copies a tier keeps by default, whatever the descriptor limit.
MAX_COPIES = 512
#: The name of the tier's memory files (``/proc/<pid>/fd`` shows ``/memfd:nbcache-near``).
FILE_NAME = "nbcache-near"

Slot = tuple[Hashable, str]


@dataclass(eq=False)
class _Copy:
    """One entry's bytes, or the job of making them (``file`` None until published)."""

    version: bytes
    size: int
    expires: float | None
    file: MemoryFile | None = None
    source: Sequence[Buffer] = ()
    check: Callable[[memoryview], bool] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.source = ()
        self.check = None
        if self.file is not None:
            self.file.close()
        self.done.set()


class NearCopies:
    """A bounded, least-recently-used tier of near copies, shared by any number of scopes.

    ``max_bytes`` bounds the bytes of copies kept and being made; ``max_copies`` their number
    (each holds a file descriptor; by default a quarter of this process's limit, at most
    :data:`MAX_COPIES`). Thread-safe.
    """

    def __init__(self, max_bytes: int, max_copies: int | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, not {max_bytes!r}")
        self.max_bytes = max_bytes
        self.max_copies = default_max_copies() if max_copies is None else max_copies
        self._lock = threading.Lock()
        self._copies: OrderedDict[Slot, _Copy] = OrderedDict()
        self._bytes = 0
        self._jobs: queue.SimpleQueue[tuple[Slot | None, _Copy]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        # Copies dropped whose files the background thread is to close (slot None in _jobs).
        self._closing: set[_Copy] = set()
        self._closed = threading.Condition(self._lock)
        _TIERS.add(self)

    @property
    def size_bytes(self) -> int:
        """Bytes of the copies kept and being made now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._copies)

    # -- reads --------------------------------------------------------------------------

    def held(self, scope: Hashable, key: str) -> bytes | None:
        """The version of the copy of ``key`` this scope holds, if any (made and checked:
        a copy still being made is not held yet)."""
        if (scope, key) not in self._copies:  # the usual case for small values: no lock
            return None
        with self._lock:
            copy = self._copies.get((scope, key))
            if copy is None or copy.file is None:
                return None
            if copy.expires is not None and copy.expires <= time.time():
                self._drop((scope, key), now=False)
                return None
            return copy.version

    def take(self, scope: Hashable, key: str, version: bytes) -> memoryview | None:
        """The caller's own copy-on-write mapping of the copy of ``version``, or None.

        None if there is no such copy (dropped, replaced, or not made yet): never waits.
        """
        slot = (scope, key)
        with self._lock:
            copy = self._copies.get(slot)
            if copy is None or copy.version != version or copy.file is None:
                return None
            self._copies.move_to_end(slot)
            return copy.file.view()  # under the lock: dropping a copy closes its file

    # -- writes -------------------------------------------------------------------------

    def keep(
        self,
        scope: Hashable,
        key: str,
        version: bytes,
        entry: Sequence[Buffer],
        size: int,
        expires: float | None,
        check: Callable[[memoryview], bool],
    ) -> bool:
        """Make a copy of ``entry`` (buffers, ``size`` bytes), of ``version``, in the background.

        ``check(copy)`` is called with a mapping of the finished copy and must say whether
        it is exactly the entry that was verified (the envelope checks its MAC); only then is
        the copy published. The buffers are read by the background thread: they are kept
        alive until then, and a change to them in between costs the copy, nothing else.
        A copy of this same version, made or being made, is kept as it is (a read that did
        not wait for it brings the same bytes). False if the entry is too small or too big
        to keep here.
        """
        slot = (scope, key)
        if size < MIN_SIZE or size > self.max_bytes or not CAN_MAP_FILES:
            self.forget(scope, key)
            return False
        job = _Copy(version, size, expires, source=entry, check=check)
        with self._lock:
            kept = self._copies.get(slot)
            if kept is not None and kept.version == version:
                self._copies.move_to_end(slot)
                return True
            self._drop(slot, now=False)
            self._make_room(size)
            self._copies[slot] = job
            self._bytes += size
            self._start_worker()
        self._jobs.put((slot, job))
        return True

    def forget(self, scope: Hashable, key: str) -> None:
        """Drop the copy of ``key`` (its entry changed or went); its file is closed in the
        background."""
        with self._lock:
            self._drop((scope, key), now=False)

    def forget_scope(self, scope: Hashable) -> None:
        """Drop every copy of ``scope``."""
        with self._lock:
            for slot in [slot for slot in self._copies if slot[0] == scope]:
                self._drop(slot)

    def clear(self) -> None:
        """Drop every copy, closing its file now (and those still to be closed)."""
        with self._lock:
            for slot in list(self._copies):
                self._drop(slot)
            for copy in self._closing:
                copy.release()  # the background thread's release then does nothing
            self._closing.clear()
            self._closed.notify_all()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until no copy is being made and no dropped one's file is still open; True if
        so (for tests and benchmarks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            with self._lock:
                pending = [copy for copy in self._copies.values() if not copy.done.is_set()]
                if not pending and not self._closing:
                    return True
                if remaining is not None and remaining <= 0:
                    return False
                if not pending:
                    self._closed.wait(remaining)
                    continue
            pending[0].done.wait(remaining)

    # -- under the lock -----------------------------------------------------------------

    def _drop(self, slot: Slot, *, now: bool = True) -> None:
        """Drop the copy in ``slot``; ``now`` false: a made copy's file is closed by the
        background thread (ahead of any copy asked for after this)."""
        copy = self._copies.pop(slot, None)
        if copy is None:
            return
        self._bytes -= copy.size
        if now or copy.file is None:
            copy.release()  # mappings handed out stay valid
            return
        self._closing.add(copy)
        self._start_worker()
        self._jobs.put((None, copy))

    def _make_room(self, size: int) -> None:
        now = time.time()
        expired = [s for s, c in self._copies.items() if c.expires is not None and c.expires <= now]
        for slot in expired:
            self._drop(slot, now=False)
        while self._copies and (
            self._bytes + size > self.max_bytes or len(self._copies) >= self.max_copies
        ):
            self._drop(next(iter(self._copies)), now=False)

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._work, name="nbcache-near-copies", daemon=True
            )
            self._worker.start()

    # -- the background thread ----------------------------------------------------------

    def _work(self) -> None:
        while True:
            slot, job = self._jobs.get()
            if slot is None:  # a dropped copy, to close
                job.release()
                with self._lock:
                    self._closing.discard(job)
                    self._closed.notify_all()
                continue
            try:
                self._make(slot, job)
            except Exception as problem:  # a copy is an optimisation: never let one kill the thread
                log.debug("nbcache: no near copy of %r: %r", slot[1], problem)
                with self._lock:
                    if self._copies.get(slot) is job:
                        self._drop(slot)
                job.release()

    def _make(self, slot: Slot, job: _Copy) -> None:
        with self._lock:
            if self._copies.get(slot) is not job:
                return  # dropped or replaced before its turn
            source, check = job.source, job.check
            job.source = ()
        assert check is not None
        try:
            made = MemoryFile(source, job.size, FILE_NAME)
        except OSError as problem:
            log.debug("nbcache: no near copy of %r: %s", slot[1], problem)
            made = None
        del source
        good = made is not None and _checked(made, check)
        with self._lock:
            if self._copies.get(slot) is job and good:
                job.file = made
                job.check = None
                job.done.set()
                return
            if self._copies.get(slot) is job:
                self._drop(slot)
        if made is not None:
            made.close()
        job.release()

    def _reset_after_fork(self) -> None:
        # The child has none of the parent's threads; its copies are the parent's business.
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)
        for copy in [*self._copies.values(), *self._closing]:
            copy.release()
        self._copies.clear()
        self._closing.clear()
        self._bytes = 0
        self._jobs = queue.SimpleQueue()
        self._worker = None


def _checked(made: MemoryFile, check: Callable[[memoryview], bool]) -> bool:
    """True if the copy in ``made`` passes ``check``, read through a mapping of its own
    (unmapped as soon as ``check`` lets go of it)."""
    return check(made.view())


_TIERS: weakref.WeakSet[NearCopies] = weakref.WeakSet()
_shared: NearCopies | None = None
_shared_lock = threading.Lock()


def shared_tier() -> NearCopies:
    """The process's tier, for caches that do not bring their own: :func:`default_max_bytes`."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = NearCopies(default_max_bytes())
        return _shared


def default_max_bytes() -> int:
    """:data:`DEFAULT_SHARE` of the machine's physical memory (1 GiB if it cannot be read)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 1024**3
    return int(physical * DEFAULT_SHARE)


def default_max_copies() -> int:
    """A quarter of this process's file descriptor limit, at most :data:`MAX_COPIES`."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return MAX_COPIES
    return max(1, min(MAX_COPIES, soft // 4))


def _reset_tiers_after_fork() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()
    for tier in list(_TIERS):
        tier._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_tiers_after_fork)
