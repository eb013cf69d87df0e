"""Leases: a caller computing a missed key marks the key itself as taken until it stores.

A shared store (memcached) is reached by many processes; when several miss one key at once,
one computes and the others wait (:mod:`nbcache.functions.stampede` decides who and how long).
The computing caller holds a *lease*: a *lease record* (a random token naming the holder,
then a heartbeat counter) stored under the entry's own key with the store's atomic ``add``,
living ``seconds`` (plus :data:`STORE_CLOCK_STEP`) on the server. So the lease costs no write
of its own beyond that ``add``, and its release costs none at all: the entry, written when the
computation ends, replaces it. Readers see the record where the entry will be, in the same
read that looks for the entry (:class:`Held`).

While the holder computes, it renews the lease (:meth:`Lease.renew`: ``gets``, compare the
token, ``cas`` the record with the counter one higher). A holder whose computation raised, or
whose result could not be stored, releases its lease (:meth:`Lease.release`: ``gets``,
compare, ``cas`` a short-lived :data:`TOMBSTONE`), which the next caller replaces at once.
A holder only ever renews or releases its own record: one that was taken over is someone
else's.

What a key holds when a caller wants the lease: nothing (``add`` takes it); a lease record
(someone holds it: :class:`Held`); a live entry (someone stored meanwhile: read it); or
something unusable (a tombstone, an expired or stale entry, garbage planted by someone who
can write to the server), which the caller replaces with ``cas`` if it is unchanged since
its ``gets``. Store faults propagate from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NamedTuple

from nbcache.stores.api import Buffer, ByteStore, NoValue, byte_view

log = logging.getLogger(__name__)

#: Added to a lease's ttl on the server. memcached counts time in whole seconds: an item
#: stored for n seconds lives between n - 1 and n, so a 1 s lease would die before its first
#: renewal. Waiters still give a silent holder only ``seconds`` (see the stampede module).
STORE_CLOCK_STEP = 1.0
#: What a released lease leaves behind, and for how long (anyone may replace it at once).
TOMBSTONE = b"released"
TOMBSTONE_TTL = 2.0
_TOKEN_PREFIX = b"lease:"
_TOKEN_BYTES = len(_TOKEN_PREFIX) + 16
_BEAT_BYTES = 8
_RECORD_BYTES = _TOKEN_BYTES + _BEAT_BYTES
_BEAT_MODULUS = 1 << (8 * _BEAT_BYTES)
_RELEASE_ATTEMPTS = 3


def lease_record(token: bytes, beat: int) -> bytes:
    """The value of a lease: the holder's token, then its heartbeat counter."""
    return token + (beat % _BEAT_MODULUS).to_bytes(_BEAT_BYTES, "little")


def is_lease_record(value: Buffer) -> bool:
    """True if ``value`` has the shape of :func:`lease_record` (the tombstone is not one)."""
    view = byte_view(value)
    return view.nbytes == _RECORD_BYTES and view[: len(_TOKEN_PREFIX)] == _TOKEN_PREFIX


def is_lease_value(value: Buffer) -> bool:
    """True for a lease record or a released lease's tombstone: no entry, and no warning."""
    view = byte_view(value)
    return (view.nbytes == len(TOMBSTONE) and view == TOMBSTONE) or is_lease_record(view)


class Held(NamedTuple):
    """What a read found under a key whose lease someone holds: the lease record."""

    record: bytes


class Lease:
    """A lease this process holds on one key (see the module's docstring)."""

    __slots__ = ("_beats", "done", "key", "seconds", "store", "token")

    def __init__(self, store: ByteStore, key: str, token: bytes, seconds: float) -> None:
        self.store = store
        self.key = key
        self.token = token
        self.seconds = seconds
        #: Set once the computation ended: renewals stop.
        self.done = False
        self._beats = 0

    def holds(self, current: Buffer | NoValue) -> bool:
        """True if ``current`` (read under the key) is this holder's record."""
        if isinstance(current, NoValue) or not is_lease_record(current):
            return False
        return byte_view(current)[:_TOKEN_BYTES] == self.token

    def renew(self) -> bool:
        """Extend the lease by ``seconds`` with a new heartbeat; False once it is not ours.

        Waiters tell a live holder by its record changing, so each renewal writes a new one.
        """
        if self.done:
            return False
        current, cas_token = self.store.gets(self.key)
        if self.done or not self.holds(current) or cas_token is None:
            return False
        record = [lease_record(self.token, self._beats + 1)]
        if self.store.cas(self.key, record, self.seconds + STORE_CLOCK_STEP, cas_token):
            self._beats += 1
        return True

    def release(self) -> None:
        """Give the lease up, if the key still holds this holder's record. Never raises."""
        self.done = True
        try:
            for _ in range(_RELEASE_ATTEMPTS):
                current, cas_token = self.store.gets(self.key)
                if cas_token is None or not self.holds(current):
                    return  # expired, stored over, or taken over: not ours any more
                if self.store.cas(self.key, [TOMBSTONE], TOMBSTONE_TTL, cas_token):
                    return
        except Exception as fault:  # the lease will expire on its own
            log.debug("nbcache: could not release the lease on %r: %s", self.key, fault)


def acquire(
    store: ByteStore, key: str, seconds: float, live: Callable[[Buffer], bool]
) -> Lease | Held | None:
    """The lease on ``key``, or the record of whoever holds it, or None: read the key again.

    ``live(value)`` says whether what the key holds is an entry to read rather than replace.
    One ``add`` when the key holds nothing; ``gets`` and maybe ``cas`` otherwise.
    """
    token = _TOKEN_PREFIX + os.urandom(_TOKEN_BYTES - len(_TOKEN_PREFIX))
    first = [lease_record(token, 0)]
    ttl = seconds + STORE_CLOCK_STEP
    if store.add(key, first, ttl):
        return Lease(store, key, token, seconds)
    current, cas_token = store.gets(key)
    if isinstance(current, NoValue):  # expired or deleted between add and gets
        return Lease(store, key, token, seconds) if store.add(key, first, ttl) else None
    if is_lease_record(current):
        return Held(bytes(current))
    if live(current):
        return None
    if cas_token is not None and store.cas(key, first, ttl, cas_token):
        return Lease(store, key, token, seconds)
    return None


def take_over(store: ByteStore, key: str, seconds: float, abandoned: bytes | None) -> Lease | None:
    """The lease in place of an abandoned record, if the key still holds just that.

    An abandoned record is one a dead or hung holder left, or one planted without expiry by
    someone who can write to the server (``None``: something unreadable). Replacing it spares
    later callers the wait.
    """
    token = _TOKEN_PREFIX + os.urandom(_TOKEN_BYTES - len(_TOKEN_PREFIX))
    first = [lease_record(token, 0)]
    ttl = seconds + STORE_CLOCK_STEP
    current, cas_token = store.gets(key)
    if isinstance(current, NoValue):
        return Lease(store, key, token, seconds) if store.add(key, first, ttl) else None
    if abandoned is not None and byte_view(current) != abandoned:
        return None  # changed since: someone else's now
    if cas_token is not None and store.cas(key, first, ttl, cas_token):
        return Lease(store, key, token, seconds)
    return None
