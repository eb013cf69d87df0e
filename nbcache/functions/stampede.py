"""Stampede protection: when many callers miss one key at once, one computes, the others wait.

Within one process the callers of a key queue on a claim (:mod:`nbcache.functions.claims`):
the first computes, threads wait for its release, coroutines poll. That is all an in-process
store needs: nothing outside the process shares it, so a miss there writes nothing but its
entry.

A shared store (memcached) needs more: across processes the one caller that holds the claim
in its process also takes the key's *lease* in the store (:mod:`nbcache.entries.leases`): a
lease record under the entry's own key, taken with one ``add``, replaced by the entry when the
computation ends. Other processes find the record where they look for the entry and wait,
polling the key with a backoff from 5 ms up to 0.5 s. A computation that outlives a third of
its lease has it renewed by the process's one background timer
(:mod:`nbcache.functions.timer`), which renews every live lease of the process; a lease whose
computation ended, raised or was abandoned is renewed no more. A holder that dies stops
renewing, so a dead holder blocks no one for longer than ``lease`` seconds plus one poll.

Anyone who can write to memcached can also plant bytes under a key, with no expiry. A waiter
therefore never trusts the server's expiry alone: it watches the record it sees
(:class:`HolderWatch`) and stops waiting when its heartbeat has not moved for longer than
``lease`` seconds by the waiter's own clock, or when the key holds something unreadable. It
then takes the key over and computes, after one warning naming the key. A holder whose
computation raises releases the lease without storing anything; the next waiter computes
itself (and sees the exception itself if it happens again). While a caller computes a key, the
key is marked in its context (its thread, or its asyncio task): :func:`computing_already`
tells a computation that calls itself with the same key, which must not wait for itself.

The protocol is written once, as a generator of *steps* (:func:`compute_once_steps`): it
yields :data:`COMPUTE` when the computation must run and :class:`Wait` when it must wait, and
returns what it found or computed. :func:`run` drives it on a thread, :func:`run_async` in a
coroutine. Store faults never raise from here: a caller that cannot reach the store computes
at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Hashable
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from nbcache.entries.leases import Held, Lease, acquire, is_lease_record, take_over
from nbcache.functions.claims import claims
from nbcache.functions.timer import shared_timer
from nbcache.stores.api import Buffer, ByteStore, NoValue

log = logging.getLogger(__name__)

#: Seconds a lease lives without renewal: how long a dead holder can keep others waiting.
DEFAULT_LEASE = 30.0
FIRST_POLL = 0.005
MAX_POLL = 0.5
_BACKOFF = 1.6
#: A lease is renewed once its computation has held it for this part of its life.
RENEW_AFTER = 1 / 3
#: Reads in a row on which a key held something a lease could not be taken over (not a race
#: between an expiry and another caller's ``add``, which the next read would resolve).
_UNREADABLE_POLLS = 3

#: The claim keys this thread (or asyncio task) is computing now.
_computing: ContextVar[frozenset[Hashable]] = ContextVar("nbcache_computing", default=frozenset())

_Found = TypeVar("_Found")
_Found_co = TypeVar("_Found_co", covariant=True)
_T = TypeVar("_T")


class Wait(NamedTuple):
    """A step: wait ``seconds``; a thread waits less if ``holder`` (of ``claim_key``) lets go
    of its claim meanwhile."""

    seconds: float
    claim_key: Hashable = None
    holder: object = None


class _Compute:
    def __repr__(self) -> str:
        return "COMPUTE"


#: A step: run the computation, then send ``(True, result)`` or ``(False, exception)``.
COMPUTE = _Compute()


class Computed(NamedTuple):
    """The outcome of steps that computed: the computation's result."""

    value: Any


class Failed(NamedTuple):
    """The outcome of steps whose computation raised: the drivers raise it again."""

    error: BaseException


Steps = Generator[Wait | _Compute, tuple[bool, Any], _T]


class MissTarget(Protocol[_Found_co]):
    """The missed key, as the steps see it.

    ``claim_key`` names the key among this process's claims; ``store`` is where leases live,
    None for a store no other process reaches; ``key`` is the key there. ``seen`` is what the
    caller's own read found, if it read the key already (None: read first), and ``releases``
    the count of :attr:`~nbcache.functions.claims.Claims.releases` taken before that read.
    """

    @property
    def seen(self) -> Held | NoValue | None: ...

    @property
    def releases(self) -> int | None: ...

    @property
    def claim_key(self) -> Hashable: ...

    @property
    def store(self) -> ByteStore | None: ...

    @property
    def key(self) -> str: ...

    def read(self) -> _Found_co | Held | NoValue:
        """What the key holds now: something found, a lease record, or nothing usable."""
        ...

    def live(self, raw: Buffer) -> bool:
        """True if ``raw``, read under the key, is something to read rather than replace."""
        ...

    def store_result(self, value: Any, seconds: float) -> bool:
        """Store a computed value (``seconds`` it took) where :meth:`read` finds it."""
        ...


def compute_once_steps(
    target: MissTarget[_Found], lease: float, owner: object
) -> Steps[_Found | Computed | Failed]:
    """The steps of one missed call (see the module's docstring).

    ``owner`` names the caller (a thread id, an asyncio task).
    """
    seen, releases = target.seen, target.releases
    if seen is None:
        releases = claims.releases
        found = target.read()
        if not isinstance(found, (NoValue, Held)):
            return found
        seen = found
    delay = FIRST_POLL
    claim_key = target.claim_key
    while True:
        holder = claims.take(claim_key, owner)
        if holder is owner:
            break
        yield Wait(delay, claim_key, holder)
        delay = min(delay * _BACKOFF, MAX_POLL)
        found = target.read()
        if not isinstance(found, (NoValue, Held)):
            return found
        seen, releases = found, None
    try:
        if releases is not None and releases != claims.releases:
            # Another caller may have stored the key between our read and our claim.
            found = target.read()
            if not isinstance(found, (NoValue, Held)):
                return found
            seen = found
        lease_held: Lease | None = None
        store = target.store
        if store is not None:
            outcome = yield from _lease_steps(target, store, lease, seen)
            if isinstance(outcome, _Unprotected):
                pass
            elif isinstance(outcome, Lease):
                lease_held = outcome
            else:
                return outcome
        started = time.perf_counter()
        marked = _computing.set(_computing.get() | {claim_key})
        try:
            ok, result = yield COMPUTE
        finally:
            _computing.reset(marked)
        if not ok:
            if lease_held is not None:
                renewals.end(lease_held)
                lease_held.release()
            return Failed(result)
        stored = target.store_result(result, time.perf_counter() - started)
        if lease_held is not None:
            renewals.end(lease_held)
            if not stored:
                lease_held.release()  # nothing replaced it: let the waiters go now
        return Computed(result)
    finally:
        claims.release(claim_key, owner)


class _Unprotected(NamedTuple):
    """Leave to compute without a lease: the store failed, or the holder is gone."""


def _lease_steps(
    target: MissTarget[_Found], store: ByteStore, lease: float, seen: Held | NoValue
) -> Generator[Wait | _Compute, Any, _Found | Lease | _Unprotected]:
    """The steps that take the key's lease in a shared store, or find the key stored."""
    watch = HolderWatch(target.key, lease)
    delay = FIRST_POLL
    while True:
        try:
            if isinstance(seen, Held):
                taken: Lease | Held | None = seen
            else:
                taken = acquire(store, target.key, lease, target.live)
            if isinstance(taken, Lease):
                return renewals.start(taken)
            record = None if taken is None else taken.record
            if watch.gives_up(record):
                taken = take_over(store, target.key, lease, record)
                return _Unprotected() if taken is None else renewals.start(taken)
        except Exception as fault:
            log.debug("nbcache: no lease on %r (%s); computing unprotected", target.key, fault)
            return _Unprotected()
        if record is not None:
            yield Wait(delay)
            delay = min(delay * _BACKOFF, MAX_POLL)
        found = target.read()
        if not isinstance(found, (NoValue, Held)):
            return found
        seen = found


class HolderWatch:
    """What one waiter has seen under a key, to tell a live lease holder from none.

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

    def gives_up(self, seen: bytes | None) -> bool:
        """True (after one warning naming the key) if this waiter should stop waiting.

        ``seen`` is the record read under the key, None if what is there could be neither
        read nor replaced.
        """
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
            "nbcache: stopped waiting on the lease of %r: %s; computing without it",
            self.key,
            reason,
        )
        return True


class Renewals:
    """The live leases of this process, renewed by the shared timer while they are held.

    Taking a lease costs a set insertion; a lease is first renewed when its computation has
    held it for a third of its life, so a fast computation never causes a renewal.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[Lease, float] = {}  # lease -> when it is next due (monotonic)
        self._scheduled: float | None = None  # when the one pending renewal job runs

    def start(self, lease: Lease) -> Lease:
        """Renew ``lease`` until :meth:`end`; returns it."""
        due = time.monotonic() + lease.seconds * RENEW_AFTER
        with self._lock:
            self._live[lease] = due
            if self._scheduled is not None and self._scheduled <= due:
                return lease
            self._scheduled = due
        shared_timer.call_at(due, self._renew_due)
        return lease

    def end(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its computation ended or raised)."""
        lease.done = True
        with self._lock:
            self._live.pop(lease, None)

    def __len__(self) -> int:
        return len(self._live)

    def _renew_due(self) -> float | None:
        now = time.monotonic()
        with self._lock:
            due = [lease for lease, when in self._live.items() if when <= now]
        for lease in due:
            try:
                kept = lease.renew()
            except Exception as fault:  # keep computing; try again next time
                log.debug("nbcache: could not renew the lease on %r: %s", lease.key, fault)
                kept = True
            with self._lock:
                if lease in self._live:
                    if kept:
                        self._live[lease] = now + lease.seconds * RENEW_AFTER
                    else:
                        log.debug("nbcache: lost the lease on %r; computing on", lease.key)
                        del self._live[lease]
        with self._lock:
            # Only one renewal job is ever pending: this one decides the next, if any.
            self._scheduled = min(self._live.values(), default=None)
            return self._scheduled


renewals = Renewals()
# A forked child renews none of its parent's leases, and has no renewal job pending (its timer
# starts empty): it schedules its own.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=renewals._reset)


def run(steps: Steps[_T | Failed], compute: Callable[[], Any]) -> _T:
    """Drive ``steps`` on this thread: ``compute()`` runs the computation, waits block."""
    try:
        request = next(steps)
        while True:
            if request is COMPUTE:
                try:
                    outcome: tuple[bool, Any] = (True, compute())
                except BaseException as error:  # the steps release what they hold, then re-raise
                    outcome = (False, error)
                request = steps.send(outcome)
            else:
                assert isinstance(request, Wait)
                if request.holder is not None:
                    claims.event(request.claim_key, request.holder).wait(request.seconds)
                else:
                    time.sleep(request.seconds)
                request = next(steps)
    except StopIteration as stop:
        result = stop.value
    finally:
        steps.close()
    if isinstance(result, Failed):
        raise result.error
    return result  # type: ignore[no-any-return]


async def run_async(steps: Steps[_T | Failed], compute: Callable[[], Awaitable[Any]]) -> _T:
    """Drive ``steps`` in a coroutine: the computation is awaited, waits sleep the coroutine."""
    try:
        request = next(steps)
        while True:
            if request is COMPUTE:
                try:
                    outcome: tuple[bool, Any] = (True, await compute())
                except BaseException as error:  # cancellation included: the steps clean up
                    outcome = (False, error)
                request = steps.send(outcome)
            else:
                assert isinstance(request, Wait)
                await asyncio.sleep(request.seconds)
                request = next(steps)
    except StopIteration as stop:
        result = stop.value
    finally:
        steps.close()
    if isinstance(result, Failed):
        raise result.error
    return result  # type: ignore[no-any-return]


def computing_already(claim_key: Hashable) -> bool:
    """True if this thread (or asyncio task) is computing ``claim_key`` now, further up its
    own stack."""
    return claim_key in _computing.get()


def compute_once(
    target: MissTarget[_Found], lease: float, compute: Callable[[], Any]
) -> _Found | Computed:
    """What ``target`` holds, or ``compute()`` run (and stored) by one caller at a time.

    Returns what :meth:`MissTarget.read` found, possibly after waiting for another caller,
    or :class:`Computed`.
    """
    steps = compute_once_steps(target, lease, threading.get_ident())
    return cast("_Found | Computed", run(steps, compute))


async def compute_once_async(
    target: MissTarget[_Found], lease: float, compute: Callable[[], Awaitable[Any]]
) -> _Found | Computed:
    """:func:`compute_once` for coroutines: waits sleep the coroutine, not the thread."""
    steps = compute_once_steps(target, lease, asyncio.current_task() or object())
    return cast("_Found | Computed", await run_async(steps, compute))
