"""Stampede protection: when many callers miss one key at once, one computes, the others wait.

Across processes (kernels sharing memcached) the computing caller holds a *lease*: a small
key next to the entry, created with the store's atomic ``add``, living ``lease`` seconds (plus
:data:`STORE_CLOCK_STEP`) on the server. Its value is a *lease record*: a random token naming
the holder, then a heartbeat counter. While it computes, a daemon heartbeat thread renews the
lease every third of that time (``gets``, compare the token, ``cas`` the record with the
counter one higher), so an hour-long computation keeps it. A holder that dies stops renewing,
so a dead holder blocks no one for longer than ``lease`` seconds plus one poll: its lease
expires and the next waiter takes it, or a waiter sees the record stand still (below). A
holder releases only its own lease: ``gets``, compare the token, then ``cas`` a short-lived
tombstone over it, which a waiter may replace at once.

Anyone who can write to memcached can also plant bytes under a lease key, with no expiry. A
waiter therefore never trusts the server's expiry alone: it watches the record it sees, and
stops waiting when the record is not a lease record at all, or when its heartbeat has not
moved for longer than ``lease`` seconds by the waiter's own monotonic clock. It then computes
itself, unprotected, after one warning naming the key.

Waiters poll the entry with a backoff from 5 ms up to 0.5 s, and try to take the lease on
each poll. A caller that takes the lease reads the entry once more before computing: the holder
before it may have stored its result and let the lease go between its miss and its claim. A
holder whose computation raises releases the lease without storing anything; the next waiter
then computes itself (and sees the exception itself if it happens again).

Within one process, threads missing the same key also queue on a per-key lock, so only one
of them polls the store. Coroutines do not take that lock (it would block the event loop);
they poll with ``asyncio.sleep``.

Store faults never raise from here: a caller that cannot reach the store computes at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from nbcache.stores.api import Buffer, ByteStore, NoValue

log = logging.getLogger(__name__)

#: Seconds a lease lives without renewal: how long a dead holder can keep others waiting.
DEFAULT_LEASE = 30.0
FIRST_POLL = 0.005
MAX_POLL = 0.5
_BACKOFF = 1.6
#: Added to the lease's ttl on the server. memcached counts time in whole seconds: an item
#: stored for n seconds lives between n - 1 and n, so a 1 s lease would die before its first
#: renewal. Waiters still give a silent holder only ``lease`` seconds (see HolderWatch).
STORE_CLOCK_STEP = 1.0
_TOMBSTONE = b"released"
_TOMBSTONE_TTL = 2.0
_TOKEN_PREFIX = b"lease:"
_TOKEN_BYTES = len(_TOKEN_PREFIX) + 16
_BEAT_BYTES = 8
_BEAT_MODULUS = 1 << (8 * _BEAT_BYTES)
#: Polls in a row on which a lease key held something the store could not read (not a race
#: between an expiry and another caller's ``add``, which the next poll would resolve).
_UNREADABLE_POLLS = 3

_T = TypeVar("_T")
_Found = TypeVar("_Found")

#: What a waiter saw under a lease key it could not take: the record, or None if unreadable.
Seen = bytes | None


def lease_record(token: bytes, beat: int) -> bytes:
    """The value of a lease: the holder's token, then its heartbeat counter."""
    return token + (beat % _BEAT_MODULUS).to_bytes(_BEAT_BYTES, "little")


def is_lease_record(value: bytes) -> bool:
    """True if ``value`` has the shape of :func:`lease_record` (or is the release tombstone)."""
    if value == _TOMBSTONE:
        return True
    return len(value) == _TOKEN_BYTES + _BEAT_BYTES and value.startswith(_TOKEN_PREFIX)


class Lease:
    """A lease this process holds on one key, renewed by a heartbeat thread until released."""

    def __init__(self, store: ByteStore, key: str, token: bytes, seconds: float) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.seconds = seconds
        self._beats = 0
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"nbcache-lease-{key[-12:]}", daemon=True
        )
        self._heartbeat.start()

    @classmethod
    def try_acquire(cls, store: ByteStore, key: str, seconds: float) -> Lease | Seen:
        """The lease if nobody holds it, else what the key holds. Store faults propagate."""
        token = _TOKEN_PREFIX + os.urandom(_TOKEN_BYTES - len(_TOKEN_PREFIX))
        first = [lease_record(token, 0)]
        ttl = seconds + STORE_CLOCK_STEP
        if store.add(key, first, ttl):
            return cls(store, key, token, seconds)
        current, cas_token = store.gets(key)
        if isinstance(current, NoValue):  # expired or released between add and gets
            return cls(store, key, token, seconds) if store.add(key, first, ttl) else None
        seen = bytes(current)
        if seen == _TOMBSTONE and cas_token is not None and store.cas(key, first, ttl, cas_token):
            return cls(store, key, token, seconds)
        return seen

    @classmethod
    def take_over(cls, store: ByteStore, key: str, seconds: float, abandoned: Seen) -> Lease | None:
        """The lease in place of an abandoned record, if the key still holds just that.

        An abandoned record is one a dead or hung holder left, or one planted without expiry
        by someone who can write to the server: replacing it spares later callers the wait.
        Store faults propagate.
        """
        token = _TOKEN_PREFIX + os.urandom(_TOKEN_BYTES - len(_TOKEN_PREFIX))
        first = [lease_record(token, 0)]
        ttl = seconds + STORE_CLOCK_STEP
        current, cas_token = store.gets(key)
        if isinstance(current, NoValue):
            return cls(store, key, token, seconds) if store.add(key, first, ttl) else None
        if abandoned is not None and bytes(current) != abandoned:
            return None  # changed since: someone else's now
        if cas_token is not None and store.cas(key, first, ttl, cas_token):
            return cls(store, key, token, seconds)
        return None

    def holds(self, current: Buffer | NoValue) -> bool:
        """True if ``current`` (read under the lease key) is this holder's record."""
        if isinstance(current, NoValue):
            return False
        record = bytes(current)
        return is_lease_record(record) and record[:_TOKEN_BYTES] == self.token

    def release(self) -> None:
        """Stop renewing and give the lease up, if it is still this holder's."""
        self._stop.set()
        self._heartbeat.join(timeout=5.0)
        try:
            for _ in range(3):
                current, cas_token = self.store.gets(self.key)
                if cas_token is None or not self.holds(current):
                    return  # expired, or taken over: that lease is someone else's
                if self.store.cas(self.key, [_TOMBSTONE], _TOMBSTONE_TTL, cas_token):
                    return
        except Exception as fault:  # the lease will expire on its own
            log.debug("nbcache: could not release lease %r: %s", self.key, fault)

    def _beat(self) -> None:
        interval = max(self.seconds / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                current, cas_token = self.store.gets(self.key)
                if not self.holds(current):
                    log.debug("nbcache: lost lease %r; computing on without it", self.key)
                    return
                # A new counter each time: waiters tell a live holder by its record changing.
                record = [lease_record(self.token, self._beats + 1)]
                if cas_token is not None and self.store.cas(
                    self.key, record, self.seconds + STORE_CLOCK_STEP, cas_token
                ):
                    self._beats += 1
            except Exception as fault:  # keep computing; try again next beat
                log.debug("nbcache: could not renew lease %r: %s", self.key, fault)


class _Unprotected:
    """Stands for a lease nobody can have: the store failed, or the holder is gone."""

    def release(self) -> None:
        pass


def _claim(store: ByteStore, key: str, seconds: float) -> Lease | _Unprotected | Seen:
    try:
        return Lease.try_acquire(store, key, seconds)
    except Exception as fault:
        log.debug("nbcache: no lease for %r (%s); computing unprotected", key, fault)
        return _Unprotected()


class HolderWatch:
    """What one waiter has seen under a lease key, to tell a live holder from none.

    A live holder changes its record at least every ``lease / 3`` seconds. A record unchanged
    for longer than ``lease`` seconds (by this waiter's clock) belongs to a holder that is dead
    or hung, or was planted by someone who can write to the server; something that is not a
    lease record at all was planted or corrupted. Either way, waiting on is pointless.
    """

    def __init__(self, key: str, lease: float) -> None:
        self.key = key
        self.lease = lease
        self._record: bytes | None = None
        self._since = 0.0
        self._unreadable = 0

    def gives_up(self, seen: Seen) -> bool:
        """True (after one warning naming the key) if this waiter should stop waiting."""
        now = time.monotonic()
        if seen is None:
            self._unreadable += 1
            if self._unreadable < _UNREADABLE_POLLS:
                return False
            reason = "it holds something the store cannot read"
        else:
            self._unreadable = 0
            if not is_lease_record(seen):
                reason = "it holds something that is not a lease record"
            elif seen != self._record:
                self._record, self._since = seen, now
                return False
            elif now - self._since <= self.lease:
                return False
            else:
                reason = f"its record has not changed for {now - self._since:.1f} s"
        log.warning(
            "nbcache: stopped waiting on lease %r: %s; computing without it", self.key, reason
        )
        return True


def _settle(
    claimed: Lease | _Unprotected | Seen, watch: HolderWatch, store: ByteStore
) -> Lease | _Unprotected | None:
    """What the caller holds now: a lease, leave to compute unprotected, or nothing (wait)."""
    if isinstance(claimed, (Lease, _Unprotected)):
        return claimed
    if not watch.gives_up(claimed):
        return None
    try:
        taken = Lease.take_over(store, watch.key, watch.lease, claimed)
    except Exception as fault:
        log.debug("nbcache: could not take over lease %r (%s)", watch.key, fault)
        taken = None
    return taken if taken is not None else _Unprotected()


class _KeyLocks:
    """One lock per key for the threads of this process, dropped when nobody uses it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


_key_locks = _KeyLocks()


def compute_once(
    store: ByteStore,
    lease_key: str,
    lease: float,
    read: Callable[[], _Found | NoValue],
    compute: Callable[[], _T],
) -> _Found | _T:
    """``read()`` if it finds something, else ``compute()`` by one caller at a time.

    ``compute`` must store its result where ``read`` finds it. Returns what ``read`` found
    (after waiting for another holder) or what ``compute`` returned.
    """
    with _key_locks.hold(lease_key):
        delay = FIRST_POLL
        watch = HolderWatch(lease_key, lease)
        while True:
            found = read()
            if not isinstance(found, NoValue):
                return found
            claimed = _settle(_claim(store, lease_key, lease), watch, store)
            if claimed is not None:
                try:
                    found = read()  # the last holder may have stored and let go since
                    return found if not isinstance(found, NoValue) else compute()
                finally:
                    claimed.release()
            time.sleep(delay)
            delay = min(delay * _BACKOFF, MAX_POLL)


async def compute_once_async(
    store: ByteStore,
    lease_key: str,
    lease: float,
    read: Callable[[], _Found | NoValue],
    compute: Callable[[], Awaitable[_T]],
) -> _Found | _T:
    """:func:`compute_once` for coroutines: waits with ``asyncio.sleep``."""
    delay = FIRST_POLL
    watch = HolderWatch(lease_key, lease)
    while True:
        found = read()
        if not isinstance(found, NoValue):
            return found
        claimed = _settle(_claim(store, lease_key, lease), watch, store)
        if claimed is not None:
            try:
                found = read()  # the last holder may have stored and let go since
                return found if not isinstance(found, NoValue) else await compute()
            finally:
                claimed.release()
        await asyncio.sleep(delay)
        delay = min(delay * _BACKOFF, MAX_POLL)
