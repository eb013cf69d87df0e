"""Stampede protection: when many callers miss one key at once, one computes, the others wait.

Across processes (kernels sharing memcached) the computing caller holds a *lease*: a small
key next to the entry, created with the store's atomic ``add`` and holding a random token,
with a time to live of ``lease`` seconds. While it computes, a daemon heartbeat thread renews
the lease every third of that time (``gets``, compare the token, ``cas``), so an hour-long
computation keeps it. A holder that dies stops renewing: its lease expires and the next
waiter takes over, so a dead holder blocks no one for longer than ``lease`` seconds plus one
poll. A holder releases only its own lease: ``gets``, compare the token, then ``cas`` a
short-lived tombstone over it, which a waiter may replace at once.

Waiters poll the entry with a backoff from 5 ms up to 0.5 s, and try to take the lease on
each poll. A holder whose computation raises releases the lease without storing anything;
the next waiter then computes itself (and sees the exception itself if it happens again).

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

from nbcache.api import ByteStore, NoValue

log = logging.getLogger(__name__)

#: Seconds a lease lives without renewal: how long a dead holder can keep others waiting.
DEFAULT_LEASE = 30.0
FIRST_POLL = 0.005
MAX_POLL = 0.5
_BACKOFF = 1.6
_TOMBSTONE = b"released"
_TOMBSTONE_TTL = 2.0
_TOKEN_PREFIX = b"lease:"

_T = TypeVar("_T")
_Found = TypeVar("_Found")


class Lease:
    """A lease this process holds on one key, renewed by a heartbeat thread until released."""

    def __init__(self, store: ByteStore, key: str, token: bytes, seconds: float) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.seconds = seconds
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"nbcache-lease-{key[-12:]}", daemon=True
        )
        self._heartbeat.start()

    @classmethod
    def try_acquire(cls, store: ByteStore, key: str, seconds: float) -> Lease | None:
        """The lease if nobody holds it; None if someone does. Store faults propagate."""
        token = _TOKEN_PREFIX + os.urandom(16)
        if store.add(key, [token], seconds):
            return cls(store, key, token, seconds)
        current, cas_token = store.gets(key)
        if isinstance(current, NoValue):  # expired or released between add and gets
            return cls(store, key, token, seconds) if store.add(key, [token], seconds) else None
        if (
            bytes(current) == _TOMBSTONE
            and cas_token is not None
            and store.cas(key, [token], seconds, cas_token)
        ):
            return cls(store, key, token, seconds)
        return None

    def release(self) -> None:
        """Stop renewing and give the lease up, if it is still this holder's."""
        self._stop.set()
        self._heartbeat.join(timeout=5.0)
        try:
            for _ in range(3):
                current, cas_token = self.store.gets(self.key)
                if isinstance(current, NoValue) or cas_token is None:
                    return
                if bytes(current) != self.token:
                    return  # expired and taken over: that lease is someone else's
                if self.store.cas(self.key, [_TOMBSTONE], _TOMBSTONE_TTL, cas_token):
                    return
        except Exception as fault:  # the lease will expire on its own
            log.debug("nbcache: could not release lease %r: %s", self.key, fault)

    def _beat(self) -> None:
        interval = max(self.seconds / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                current, cas_token = self.store.gets(self.key)
                if isinstance(current, NoValue) or bytes(current) != self.token:
                    log.debug("nbcache: lost lease %r; computing on without it", self.key)
                    return
                if cas_token is not None:
                    self.store.cas(self.key, [self.token], self.seconds, cas_token)
            except Exception as fault:  # keep computing; try again next beat
                log.debug("nbcache: could not renew lease %r: %s", self.key, fault)


class _Unprotected:
    """Stands for a lease that could not be had because the store failed: compute anyway."""

    def release(self) -> None:
        pass


def _claim(store: ByteStore, key: str, seconds: float) -> Lease | _Unprotected | None:
    try:
        return Lease.try_acquire(store, key, seconds)
    except Exception as fault:
        log.debug("nbcache: no lease for %r (%s); computing unprotected", key, fault)
        return _Unprotected()


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
        while True:
            found = read()
            if not isinstance(found, NoValue):
                return found
            claimed = _claim(store, lease_key, lease)
            if claimed is not None:
                try:
                    return compute()
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
    while True:
        found = read()
        if not isinstance(found, NoValue):
            return found
        claimed = _claim(store, lease_key, lease)
        if claimed is not None:
            try:
                return await compute()
            finally:
                claimed.release()
        await asyncio.sleep(delay)
        delay = min(delay * _BACKOFF, MAX_POLL)
