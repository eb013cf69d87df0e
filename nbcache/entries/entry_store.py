"""Entries in a byte store: the engine under the public :class:`~nbcache.cache.Cache`.

An :class:`EntryStore` seals values into envelopes, hands the frames to a
:class:`~nbcache.stores.api.ByteStore` and opens what comes back, turning refusals, expired
entries and store faults into misses. The public ``Cache`` is a thin front over it with the
Flask/cachelib contract; nbcache's own front doors (``@cached_result``, ``%%cache``) use it
directly for what users never need: entry metadata (``duration``, ``meta``, ``tag``) and raw
*tokens* (a function's generation) read in the same round trip as its entries.

``timeout`` here has the contract's meaning: None means ``default_timeout``, 0 never expires,
a negative number means already expired.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from nbcache.entries.code_identity import CodeFingerprint
from nbcache.entries.envelope import Entry, Envelope
from nbcache.entries.leases import Held, is_lease_record, is_lease_value
from nbcache.entries.near import NearCopies
from nbcache.exceptions import EntryRefused, StoreFault
from nbcache.stores import settings
from nbcache.stores.api import (
    NO_VALUE,
    BigValue,
    Buffer,
    ByteStore,
    NoValue,
    Unchanged,
    VersionedStore,
    peek,
    total_size,
)
from nbcache.stores.tokens import create_or_read_token

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300
_T = TypeVar("_T")
_CAS_ATTEMPTS = 100
_HEX = "0123456789abcdef"
_TOKEN_DIGITS = frozenset(_HEX.encode())


class EntryStore:
    """Python values in signed, versioned envelopes under string keys of a byte store.

    ``clock_tolerance``: seconds a reader's clock may run ahead of the writer's. An entry
    expires in the store by the store's clock; the expiry signed into it (the writer's
    clock) is checked only this long after it passed, so a reader whose clock is ahead
    still hits, while an old entry replayed into the store is refused.
    """

    def __init__(
        self,
        store: ByteStore,
        envelope: Envelope | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        name: str = "cache",
        clock_tolerance: float = 0.0,
        near: NearCopies | None = None,
    ) -> None:
        self.store = store
        self.envelope = envelope or Envelope()
        self.default_timeout = default_timeout
        self.name = name
        self.clock_tolerance = settings.expiry_seconds("clock_tolerance", clock_tolerance)
        # Only a store that names versions can prove a copy current (checked once: a runtime
        # protocol check costs tens of microseconds).
        self._versioned = store if isinstance(store, VersionedStore) else None
        #: Near copies of big entries (None: none kept).
        self.near = near if self._versioned is not None else None
        # This store's copies serve this store only (its envelope: its secret, its namespace).
        self._scope = object()
        if self.near is not None:
            weakref.finalize(self, self.near.forget_scope, self._scope)

    @property
    def default_timeout(self) -> float:
        """Seconds an entry lives when ``timeout`` is None (0: never expires)."""
        return self._default_timeout

    @default_timeout.setter
    def default_timeout(self, seconds: float) -> None:
        """Raises :class:`~nbcache.exceptions.ConfigurationError` for anything but finite
        seconds >= 0."""
        self._default_timeout = settings.expiry_seconds("default_timeout", seconds)

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str, code_fingerprint: CodeFingerprint | None = None) -> Entry | NoValue:
        """The live entry under ``key``, or NO_VALUE on a miss, a refusal or a fault.

        ``code_fingerprint``: classes and functions pickled by value come back as this
        process's own where they are the same code (:mod:`nbcache.entries.code_identity`).
        Every method taking keys raises ``TypeError`` for a key that is not a ``str``.
        """
        _check_key(key)
        return self._read([], [key], code_fingerprint)[1][0]

    def get_many(self, keys: Sequence[str]) -> list[Entry | NoValue]:
        """Entries in the order of ``keys``, NO_VALUE for each miss; one store round trip."""
        for key in keys:
            _check_key(key)
        return self._read([], list(keys))[1]

    def get_token_and_entries(
        self,
        token_key: str,
        keys: Sequence[str],
        code_fingerprint: CodeFingerprint | None = None,
    ) -> tuple[str | None, list[Entry | NoValue]]:
        """The token under ``token_key`` (see :meth:`set_token`) and the entries; one round trip.

        The token is None if missing, or if what is there is not a token (planted, corrupt).
        ``code_fingerprint``: as for :meth:`get`.
        """
        (token,), entries = self._read([token_key], keys, code_fingerprint)
        return token_from(token), entries

    def read_tagged(
        self, token_key: str, key: str, code_fingerprint: CodeFingerprint | None = None
    ) -> tuple[str | None, Entry | Held | NoValue]:
        """A token and the entry under ``key`` if its tag is that token; one round trip.

        What a cached function's call reads. The token is returned as stored (None if
        missing), not checked: only a real token can equal an entry's signed tag (see
        :meth:`set_token`); check it with :func:`is_token` before writing with it. An entry
        with another tag (or none) is a miss, and is not unpickled. Where a caller holds a
        lease on ``key`` the read finds its record (:class:`~nbcache.entries.leases.Held`).
        ``code_fingerprint``: as for :meth:`get`.
        """
        if self.near is not None:
            token, (found,) = self._read_tagged_near(token_key, [key], code_fingerprint)
            return token, found
        # Every hit runs this: the store call and the entry's opening are written out here.
        try:
            raw_token, raw = self.store.get_many((token_key, key))
        except NotImplementedError:
            raise
        except Exception as fault:
            self._report("get_many", fault)
            return None, NO_VALUE
        if isinstance(raw_token, NoValue):
            return None, self._open_tagged(key, raw, None, code_fingerprint)
        token = str(raw_token, "latin-1")
        return token, self._open_tagged(key, raw, token, code_fingerprint)

    def read_tagged_many(
        self,
        token_key: str,
        keys: Sequence[str],
        code_fingerprint: CodeFingerprint | None = None,
    ) -> tuple[str | None, list[Entry | Held | NoValue]]:
        """:meth:`read_tagged` for many keys, in one store call."""
        if self.near is not None:
            return self._read_tagged_near(token_key, keys, code_fingerprint)
        found = self.call(self.store.get_many, None, [token_key, *keys])
        if found is None:
            return None, [NO_VALUE] * len(keys)
        raw_token = found[0]
        token = None if isinstance(raw_token, NoValue) else str(raw_token, "latin-1")
        return token, [
            self._open_tagged(key, raw, token, code_fingerprint)
            for key, raw in zip(keys, found[1:], strict=True)
        ]

    def _open_tagged(
        self,
        key: str,
        raw: Buffer | NoValue,
        token: str | None,
        code_fingerprint: CodeFingerprint | None,
    ) -> Entry | Held | NoValue:
        if isinstance(raw, NoValue):
            return NO_VALUE
        if token is None:  # no entry is selected; what is there is checked all the same
            try:
                self.envelope.open_header(key, raw)
            except EntryRefused as refusal:
                return _refused(key, raw, refusal)
            return NO_VALUE
        try:
            entry = self.envelope.open_tagged(key, raw, token, code_fingerprint)
        except EntryRefused as refusal:
            return _refused(key, raw, refusal)
        if entry is None or (
            entry.expires is not None and entry.expires + self.clock_tolerance <= time.time()
        ):
            return NO_VALUE
        return entry

    def _read_tagged_near(
        self,
        token_key: str,
        keys: Sequence[str],
        code_fingerprint: CodeFingerprint | None,
    ) -> tuple[str | None, list[Entry | Held | NoValue]]:
        """:meth:`read_tagged_many` with near copies: a big entry this process holds comes
        from its copy when the store says, in that same round trip, that it is still the
        entry's current write (and the token is read in that round trip too)."""
        near, store = self.near, self._versioned
        assert near is not None and store is not None
        scope = self._scope
        every = [token_key]
        every += keys
        held: list[bytes | None] = [None]
        held += [near.held(scope, key) for key in keys]
        for _ in range(2):
            try:
                read = store.get_many_versioned(every, held)
            except NotImplementedError:
                raise
            except Exception as fault:
                self._report("get_many_versioned", fault)
                return None, [NO_VALUE] * len(keys)
            raw_token = read[0][0]
            token = (
                None if isinstance(raw_token, NoValue | Unchanged) else str(raw_token, "latin-1")
            )
            found: list[Entry | Held | NoValue] = []
            for index, key in enumerate(keys, 1):
                value, version = read[index]
                if version is None and held[index] is None:
                    # A small value (no version), and no copy to forget: the plain way.
                    found.append(
                        self._open_tagged(
                            key, cast(Buffer | NoValue, value), token, code_fingerprint
                        )
                    )
                    continue
                entry = self._open_tagged_versioned(
                    key, value, version, held[index] is not None, token, code_fingerprint
                )
                if entry is None:
                    break
                found.append(entry)
            else:
                return token, found
            # A copy vanished between asking the store and taking it (dropped for room):
            # read everything again, holding nothing.
            held = [None] * len(every)
        return token, [NO_VALUE] * len(keys)

    def _open_tagged_versioned(
        self,
        key: str,
        value: Buffer | NoValue | Unchanged,
        version: bytes | None,
        held: bool,
        token: str | None,
        code_fingerprint: CodeFingerprint | None,
    ) -> Entry | Held | NoValue | None:
        """:meth:`_open_tagged` for what a versioned read found (None: its near copy is gone,
        read it again). ``held``: this store held a copy of ``key`` when it asked."""
        near = self.near
        assert near is not None
        if isinstance(value, Unchanged):
            assert version is not None
            copy = near.take(self._scope, key, version)
            if copy is None:
                return None
            try:
                header, _ = self.envelope.reopen_header(key, copy)
                if token is None or header.tag != token or self._expired(header.expires):
                    return NO_VALUE  # another generation's entry: not unpickled
                return self.envelope.reopen(key, copy, code_fingerprint)
            except EntryRefused as refusal:
                _warn_refused(key, refusal)
                near.forget(self._scope, key)
                return NO_VALUE
        entry = self._open_tagged(key, value, token, code_fingerprint)
        if isinstance(entry, Entry) and version is not None and not isinstance(value, NoValue):
            self._keep(key, version, [value], entry.expires)
        elif held:  # what it held is stale now
            near.forget(self._scope, key)
        return entry

    def holds_tagged(
        self,
        key: str,
        raw: Buffer,
        tag: str | None,
        usable: Callable[[bytes], bool] | None = None,
    ) -> bool:
        """True if ``raw``, read under ``key``, is a live, trusted entry tagged ``tag``.

        ``usable(meta_json)``: a further test of the entry's metadata (nothing is unpickled).
        """
        if tag is None:
            return False
        try:
            header, _ = self.envelope.open_header(key, raw)
        except EntryRefused:
            return False
        if header.tag != tag or self._expired(header.expires):
            return False
        return usable is None or usable(header.meta_json)

    def has(self, key: str) -> bool:
        """True if ``key`` holds a live, trusted entry (even one whose value is None)."""
        _check_key(key)
        # A big value is not read: the store vouches for it whole (its chunks are there, and
        # a chunked store with an authenticator checked who wrote it), and expires it itself.
        raw, _ = self.call(peek, (NO_VALUE, None), self.store, key)
        if isinstance(raw, BigValue):
            return True
        return not isinstance(raw, NoValue) and self._live_header(key, raw, warn=True)

    def _read(
        self,
        raw_keys: Sequence[str],
        keys: Sequence[str],
        code_fingerprint: CodeFingerprint | None = None,
    ) -> tuple[list[Buffer | NoValue], list[Entry | NoValue]]:
        """What ``raw_keys`` hold (as stored) and the entries under ``keys``: one round trip.

        With near copies, a big entry this process holds comes from its copy when the store
        says, in that same round trip, that it is still the entry's current write.
        """
        near, store = self.near, self._versioned
        every = [*raw_keys, *keys]
        if near is None or store is None:
            raws = self.call(self.store.get_many, [NO_VALUE] * len(every), every)
            found = raws[len(raw_keys) :]
            entries = [
                self.open(key, raw, code_fingerprint) for key, raw in zip(keys, found, strict=True)
            ]
            return raws[: len(raw_keys)], entries
        read_entries: list[Entry | NoValue | None] = []
        for attempt in range(2):
            # A copy can vanish between asking the store and taking it (dropped for room):
            # the second attempt reads everything again, holding nothing.
            held: list[bytes | None] = [None] * len(raw_keys)
            held += [None if attempt else near.held(self._scope, key) for key in keys]
            read = self.call(store.get_many_versioned, [(NO_VALUE, None)] * len(every), every, held)
            raws = [_value(value) for value, _ in read[: len(raw_keys)]]
            read_entries = [
                self._open_versioned(key, value, version, known is not None, code_fingerprint)
                for key, (value, version), known in zip(
                    keys, read[len(raw_keys) :], held[len(raw_keys) :], strict=True
                )
            ]
            if None not in read_entries:
                break
        return raws, [NO_VALUE if entry is None else entry for entry in read_entries]

    def _open_versioned(
        self,
        key: str,
        value: Buffer | NoValue | Unchanged,
        version: bytes | None,
        held: bool,
        code_fingerprint: CodeFingerprint | None,
    ) -> Entry | NoValue | None:
        """The entry a versioned read found (None: its near copy is gone, read it again).

        ``held``: this store held a copy of ``key`` when it asked.
        """
        near = self.near
        assert near is not None
        if isinstance(value, Unchanged):
            assert version is not None
            copy = near.take(self._scope, key, version)
            if copy is None:
                return None
            try:
                reopened = self.envelope.reopen(key, copy, code_fingerprint)
            except EntryRefused as refusal:
                _warn_refused(key, refusal)
                near.forget(self._scope, key)
                return NO_VALUE
            return NO_VALUE if self._expired(reopened.expires) else reopened
        entry = self.open(key, value, code_fingerprint)
        if isinstance(value, NoValue) or isinstance(entry, NoValue) or version is None:
            if held:  # what it held is stale now (small values are never held otherwise)
                near.forget(self._scope, key)
        else:
            self._keep(key, version, [value], entry.expires)
        return entry

    def _keep(self, key: str, version: bytes, entry: list[Buffer], expires: float | None) -> None:
        """Have the near tier copy ``entry`` (the bytes of a verified or sealed entry)."""
        assert self.near is not None
        envelope = self.envelope

        def check(copy: memoryview) -> bool:
            try:
                envelope.open_header(key, copy)
            except EntryRefused:
                return False
            return True

        self.near.keep(self._scope, key, version, entry, total_size(entry), expires, check)

    # -- writes ---------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: Any,
        timeout: float | None = None,
        *,
        duration: float | None = None,
        meta: dict[str, Any] | None = None,
        tag: str = "",
        code_fingerprint: CodeFingerprint | None = None,
    ) -> bool:
        """Store ``value``; True if stored.

        ``duration`` (seconds the value took to compute), ``meta`` (JSON-able) and ``tag`` (a
        short string readers check cheaply) travel in the entry's header.
        ``code_fingerprint``: recorded for each class and function pickled by value, so that
        a reader passing one to :meth:`get` gets its own back. Raises
        :class:`~nbcache.exceptions.UnpicklableValueError` if the value cannot be serialized;
        nothing is stored then and an older value is left as it was.
        """
        _check_key(key)
        ttl = self.ttl(timeout)
        if ttl is not None and ttl < 0:
            self.delete(key)
            return True
        expires = _expires(ttl)
        frames = self.envelope.seal(key, value, expires, duration, meta, tag, code_fingerprint)
        near, store = self.near, self._versioned
        if near is None or store is None:
            return bool(self.call(self.store.set, False, key, frames, ttl))
        near.forget(self._scope, key)
        stored, version = self.call(store.set_versioned, (False, None), key, frames, ttl)
        if stored and version is not None:
            self._keep(key, version, frames, expires)
        return bool(stored)

    def add(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """Store ``value`` only if ``key`` holds no live entry; True if it did not."""
        _check_key(key)
        ttl = self.ttl(timeout)
        if ttl is not None and ttl < 0:
            return not self.has(key)
        self._forget(key)
        frames = self.envelope.seal(key, value, _expires(ttl))
        if self.call(self.store.add, False, key, frames, ttl):
            return True
        # Something is there; it may be an entry we must not trust or an expired one.
        for _ in range(_CAS_ATTEMPTS):
            raw, token = self.call(peek, (NO_VALUE, None), self.store, key)
            if isinstance(raw, NoValue) or token is None:
                return bool(self.call(self.store.add, False, key, frames, ttl))
            if isinstance(raw, BigValue) or self._live_header(key, raw, warn=False):
                return False
            if self.call(self.store.cas, False, key, frames, ttl, token):
                return True
        return False

    def inc(self, key: str, delta: int) -> int | None:
        """Add ``delta`` to the integer under ``key`` (missing counts as 0), atomically.

        Returns the new value, or None if the store failed or the value is not an integer.
        """
        _check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"inc takes an int delta, not {delta!r}")
        self._forget(key)
        try:
            for _ in range(_CAS_ATTEMPTS):
                raw, token = self.store.gets(key)
                entry = self.open(key, raw)
                if isinstance(entry, NoValue):
                    new, expires = delta, _expires(self.ttl(None))
                elif isinstance(entry.value, bool) or not isinstance(entry.value, int):
                    log.warning("nbcache: cannot inc %r: it holds a %s", key, type(entry.value))
                    return None
                else:
                    new, expires = entry.value + delta, entry.expires
                # (At least a second: a reader whose clock is ahead sees little time left.)
                ttl = None if expires is None else max(expires - time.time(), 1.0)
                frames = self.envelope.seal(key, new, expires)
                if token is None:
                    stored = self.store.add(key, frames, ttl)
                else:
                    stored = self.store.cas(key, frames, ttl, token)
                if stored:
                    return new
        except StoreFault as fault:
            log.debug("nbcache: inc failed on %s: %s", self.name, fault)
            return None
        except Exception as fault:  # a store bug or an unforeseen fault must not break the caller
            log.warning(
                "nbcache: inc of %r on %s failed (%s: %s)",
                key,
                self.name,
                type(fault).__name__,
                fault,
            )
            return None
        log.warning("nbcache: gave up incrementing %r after %d contested tries", key, _CAS_ATTEMPTS)
        return None

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if something was removed."""
        _check_key(key)
        self._forget(key)
        return bool(self.call(self.store.delete, False, key))

    def clear(self) -> bool:
        """Forget every entry of this store's namespace (a shared server keeps the others)."""
        if self.near is not None:
            self.near.forget_scope(self._scope)
        return bool(self.call(self.store.clear, False))

    def _forget(self, key: str) -> None:
        if self.near is not None:
            self.near.forget(self._scope, key)

    # -- tokens ---------------------------------------------------------------------------

    def set_token(self, key: str, token: str) -> bool:
        """Store a token (1 to 64 lowercase hex digits) under ``key``, never expiring.

        Tokens are small random markers (a function's generation) kept as raw bytes, outside
        the envelope: cheap to read next to an entry. They are not signed, so a token may only
        ever *select* entries whose own signed header names it: a forged one turns hits into
        misses, never a wrong value into a hit.
        """
        return bool(self.call(self.store.set, False, key, [token_bytes(token)], None))

    def new_token(self, key: str) -> bool:
        """Replace the token under ``key`` by a fresh random one; True if stored."""
        return self.set_token(key, os.urandom(8).hex())

    def current_token(self, key: str) -> str | None:
        """The token under ``key``, created if there is none; None if the store fails."""
        try:
            raw = create_or_read_token(
                self.store, key, _token_raw, lambda: os.urandom(8).hex().encode("ascii")
            )
        except StoreFault as fault:
            log.debug("nbcache: no token %r on %s: %s", key, self.name, fault)
            return None
        return None if raw is None else raw.decode("ascii")

    # -- internals ------------------------------------------------------------------------

    def ttl(self, timeout: float | None) -> float | None:
        """Seconds to live for ``timeout``, None for never; negative means already expired."""
        if timeout is None:
            timeout = self.default_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        if timeout == 0:
            return None
        return float(timeout)

    def open(
        self, key: str, raw: Any, code_fingerprint: CodeFingerprint | None = None
    ) -> Entry | NoValue:
        """The live, trusted entry in ``raw`` (read under ``key``), or NO_VALUE."""
        if isinstance(raw, NoValue):
            return NO_VALUE
        try:
            entry = self.envelope.open(key, raw, code_fingerprint)
        except EntryRefused as refusal:
            if not is_lease_value(raw):  # a caller computing this key: no entry yet
                _warn_refused(key, refusal)
            return NO_VALUE
        if self._expired(entry.expires):
            return NO_VALUE
        return entry

    def _live_header(self, key: str, raw: Any, *, warn: bool, verified: bool = False) -> bool:
        """True if ``raw`` is a trusted entry that has not expired (``verified``: the bytes of
        a near copy, whose MAC was checked when it was made)."""
        open_header = self.envelope.reopen_header if verified else self.envelope.open_header
        try:
            header, _ = open_header(key, raw)
        except EntryRefused as refusal:
            if warn:
                _warn_refused(key, refusal)
            return False
        return not self._expired(header.expires)

    def _expired(self, expires: float | None) -> bool:
        return expires is not None and expires + self.clock_tolerance <= time.time()

    def call(self, method: Callable[..., _T], on_fault: Any, *args: Any) -> _T:
        """``method(*args)``, or ``on_fault`` if the store fails (never an exception)."""
        try:
            return method(*args)
        except NotImplementedError:
            raise
        except Exception as fault:
            self._report(method.__name__, fault)
            return cast(_T, on_fault)

    def _report(self, operation: str, fault: Exception) -> None:
        """Say that a store operation failed (the caller goes on as if it missed)."""
        if isinstance(fault, StoreFault):
            log.debug("nbcache: %s failed on %s: %s", operation, self.name, fault)
            return
        # A store bug or an unforeseen fault must not break the caller.
        log.warning(
            "nbcache: %s on %s failed (%s: %s); treating it as a miss",
            operation,
            self.name,
            type(fault).__name__,
            fault,
        )


def _refused(key: str, raw: Buffer, refusal: EntryRefused) -> Held | NoValue:
    """What a read makes of bytes the envelope refused: a lease record, or a miss."""
    if is_lease_record(raw):
        return Held(bytes(raw))
    if not is_lease_value(raw):  # a released lease is no entry and no news either
        _warn_refused(key, refusal)
    return NO_VALUE


def is_token(text: str | None) -> bool:
    """True if ``text`` is a token: 1 to 64 lowercase hex digits."""
    return text is not None and 0 < len(text) <= 64 and not text.strip(_HEX)


def _check_key(key: object) -> None:
    # Every store maps str keys its own way; another type would work on one and fail on another.
    if not isinstance(key, str):
        raise TypeError(f"cache keys are str, not {type(key).__name__} ({key!r:.80})")


def token_bytes(token: str) -> bytes:
    """The stored form of a token; ``ValueError`` if it is not 1 to 64 lowercase hex digits."""
    raw = token.encode("ascii")
    if not 0 < len(raw) <= 64 or not _TOKEN_DIGITS.issuperset(raw):
        raise ValueError(f"a token is 1 to 64 lowercase hex digits, not {token!r}")
    return raw


def token_from(raw: Buffer | NoValue) -> str | None:
    """The token a store read found, or None for a miss or anything that is not a token."""
    data = _token_raw(raw)
    return None if data is None else data.decode("ascii")


def _token_raw(raw: Buffer | NoValue) -> bytes | None:
    if isinstance(raw, NoValue):
        return None
    view = memoryview(raw)
    if not 0 < view.nbytes <= 64:
        return None
    data = view.tobytes()
    return data if _TOKEN_DIGITS.issuperset(data) else None


def _value(value: Buffer | NoValue | Unchanged) -> Buffer | NoValue:
    return NO_VALUE if isinstance(value, Unchanged) else value


def _expires(ttl: float | None) -> float | None:
    return None if ttl is None else time.time() + ttl


def _warn_refused(key: str, refusal: EntryRefused) -> None:
    log.warning("nbcache: ignored the entry under %r: %s", key, refusal.reason)
