"""The cache front-end: the Flask/cachelib contract over an envelope and a byte store.

``get`` returns None on a miss, like every Flask-style cache; :meth:`Cache.get_entry` returns
:data:`~nbcache.stores.api.NO_VALUE` instead, with the entry's metadata, for callers to
whom ``None`` is a real result. Faults of the store never raise from here: a read becomes a
miss and a write returns False, and the store (or this class, for faults it does not know)
logs one warning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from nbcache.entries.envelope import Entry, Envelope
from nbcache.exceptions import EntryRefused, StoreFault
from nbcache.stores.api import NO_VALUE, ByteStore, NoValue

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300
_T = TypeVar("_T")
_CAS_ATTEMPTS = 100


class Cache:
    """Python values under string keys, with expiry, in any :class:`~nbcache.stores.api.ByteStore`.

    ``timeout`` everywhere: None means ``default_timeout``; 0 means never expires; a negative
    number means already expired (nothing live is stored). Values come back as the caller's own
    copy: changing a returned object never changes the cache.
    """

    def __init__(
        self,
        store: ByteStore,
        envelope: Envelope | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        name: str = "cache",
    ) -> None:
        self.store = store
        self.envelope = envelope or Envelope()
        self.default_timeout = default_timeout
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- reads ----------------------------------------------------------------------------

    def get_entry(self, key: str) -> Entry | NoValue:
        """The entry under ``key`` with its metadata, or NO_VALUE on a miss (or refusal)."""
        raw = self._store_call(self.store.get, NO_VALUE, key)
        return self._open(key, raw)

    def get(self, key: str) -> Any:
        """The value under ``key``, or None on a miss."""
        entry = self.get_entry(key)
        return None if isinstance(entry, NoValue) else entry.value

    def has(self, key: str) -> bool:
        """True if ``key`` holds a live, trusted entry (even one whose value is None)."""
        raw = self._store_call(self.store.get, NO_VALUE, key)
        if isinstance(raw, NoValue):
            return False
        try:
            header, _ = self.envelope.open_header(key, raw)
        except EntryRefused as refusal:
            _warn_refused(key, refusal)
            return False
        return not _expired(header.expires)

    def get_many(self, *keys: str) -> list[Any]:
        """Values in the order of ``keys``, None for each miss; one store round trip."""
        raws = self._store_call(self.store.get_many, [NO_VALUE] * len(keys), list(keys))
        entries = [self._open(key, raw) for key, raw in zip(keys, raws, strict=True)]
        return [None if isinstance(e, NoValue) else e.value for e in entries]

    def get_entries(self, *keys: str) -> list[Entry | NoValue]:
        """Entries in the order of ``keys``, NO_VALUE for each miss; one store round trip."""
        raws = self._store_call(self.store.get_many, [NO_VALUE] * len(keys), list(keys))
        return [self._open(key, raw) for key, raw in zip(keys, raws, strict=True)]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        """``{key: value}`` for ``keys``, None for each miss."""
        return dict(zip(keys, self.get_many(*keys), strict=True))

    def get_token_and_entries(
        self, token_key: str, *keys: str
    ) -> tuple[str | None, list[Entry | NoValue]]:
        """The token under ``token_key`` (see :meth:`set_token`) and the entries; one round trip.

        The token is None if missing, or if what is there is not a token (planted, corrupt).
        """
        raws = self._store_call(
            self.store.get_many, [NO_VALUE] * (len(keys) + 1), [token_key, *keys]
        )
        entries = [self._open(key, raw) for key, raw in zip(keys, raws[1:], strict=True)]
        return _token(raws[0]), entries

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
    ) -> bool:
        """Store ``value``; True if stored.

        ``duration`` (seconds the value took to compute), ``meta`` (JSON-able) and ``tag`` (a
        short string readers check cheaply) travel in the entry's header. Raises
        :class:`~nbcache.exceptions.UnpicklableValueError` if the value cannot be serialized;
        nothing is stored then and an older value is left as it was.
        """
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.delete(key)
            return True
        frames = self.envelope.seal(key, value, _expires(ttl), duration, meta, tag)
        return bool(self._store_call(self.store.set, False, key, frames, ttl))

    def add(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """Store ``value`` only if ``key`` holds no live entry; True if it did not."""
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            return not self.has(key)
        frames = self.envelope.seal(key, value, _expires(ttl))
        if self._store_call(self.store.add, False, key, frames, ttl):
            return True
        # Something is there; it may be an entry we must not trust or an expired one.
        for _ in range(_CAS_ATTEMPTS):
            raw, token = self._store_call(self.store.gets, (NO_VALUE, None), key)
            if isinstance(raw, NoValue) or token is None:
                return bool(self._store_call(self.store.add, False, key, frames, ttl))
            if self._live_header(key, raw):
                return False
            if self._store_call(self.store.cas, False, key, frames, ttl, token):
                return True
        return False

    def set_token(self, key: str, token: str) -> bool:
        """Store a token (1 to 64 lowercase hex digits) under ``key``, never expiring.

        Tokens are small random markers (a function's generation) kept as raw bytes, outside
        the envelope: cheap to read next to an entry. They are not signed, so a token may only
        ever *select* entries whose own signed header names it: a forged one turns hits into
        misses, never a wrong value into a hit.
        """
        return bool(self._store_call(self.store.set, False, key, [_token_bytes(token)], None))

    def add_token(self, key: str, token: str) -> bool:
        """Store a token under ``key`` only if nothing is there; True if it was stored."""
        return bool(self._store_call(self.store.add, False, key, [_token_bytes(token)], None))

    def set_many(self, mapping: Mapping[str, Any], timeout: float | None = None) -> list[str]:
        """Store every item; the keys that were stored."""
        return [key for key, value in mapping.items() if self.set(key, value, timeout)]

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if something was removed."""
        return bool(self._store_call(self.store.delete, False, key))

    def delete_many(self, *keys: str) -> list[str]:
        """Remove every key; the keys that were removed."""
        return [key for key in keys if self.delete(key)]

    def clear(self) -> bool:
        """Forget every entry of this cache (only of this cache: a shared server keeps others)."""
        return bool(self._store_call(self.store.clear, False))

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` to the integer under ``key`` (a missing key counts as 0), atomically.

        Returns the new value, or None if the store failed or the value is not an integer.
        """
        try:
            for _ in range(_CAS_ATTEMPTS):
                raw, token = self.store.gets(key)
                entry = self._open(key, raw)
                if isinstance(entry, NoValue):
                    new, expires = delta, _expires(self._ttl(None))
                elif isinstance(entry.value, bool) or not isinstance(entry.value, int):
                    log.warning("nbcache: cannot inc %r: it holds a %s", key, type(entry.value))
                    return None
                else:
                    new, expires = entry.value + delta, entry.expires
                ttl = None if expires is None else max(expires - time.time(), 0.001)
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
        log.warning("nbcache: gave up incrementing %r after %d contested tries", key, _CAS_ATTEMPTS)
        return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        """Subtract ``delta`` from the integer under ``key``; see :meth:`inc`."""
        return self.inc(key, -delta)

    # -- internals ------------------------------------------------------------------------

    def _ttl(self, timeout: float | None) -> float | None:
        """Seconds to live, None for never; negative means already expired."""
        if timeout is None:
            timeout = self.default_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        if timeout == 0:
            return None
        return float(timeout)

    def _open(self, key: str, raw: Any) -> Entry | NoValue:
        if isinstance(raw, NoValue):
            return NO_VALUE
        try:
            entry = self.envelope.open(key, raw)
        except EntryRefused as refusal:
            _warn_refused(key, refusal)
            return NO_VALUE
        if _expired(entry.expires):
            return NO_VALUE
        return entry

    def _live_header(self, key: str, raw: Any) -> bool:
        try:
            header, _ = self.envelope.open_header(key, raw)
        except EntryRefused:
            return False
        return not _expired(header.expires)

    def _store_call(self, method: Callable[..., _T], on_fault: Any, *args: Any) -> _T:
        try:
            return method(*args)
        except StoreFault as fault:
            log.debug("nbcache: %s failed on %s: %s", method.__name__, self.name, fault)
            return cast(_T, on_fault)
        except NotImplementedError:
            raise
        except Exception as fault:  # a store bug or an unforeseen fault must not break the caller
            log.warning(
                "nbcache: %s on %s failed (%s: %s); treating it as a miss",
                method.__name__,
                self.name,
                type(fault).__name__,
                fault,
            )
            return cast(_T, on_fault)


_TOKEN_DIGITS = frozenset(b"0123456789abcdef")


def _token_bytes(token: str) -> bytes:
    raw = token.encode("ascii")
    if not 0 < len(raw) <= 64 or not _TOKEN_DIGITS.issuperset(raw):
        raise ValueError(f"a token is 1 to 64 lowercase hex digits, not {token!r}")
    return raw


def _token(raw: Any) -> str | None:
    """The token a store read found, or None for a miss or anything that is not a token."""
    if isinstance(raw, NoValue):
        return None
    view = memoryview(raw)
    if not 0 < view.nbytes <= 64:
        return None
    data = view.tobytes()
    return data.decode("ascii") if _TOKEN_DIGITS.issuperset(data) else None


def _expires(ttl: float | None) -> float | None:
    return None if ttl is None else time.time() + ttl


def _expired(expires: float | None) -> bool:
    return expires is not None and expires <= time.time()


def _warn_refused(key: str, refusal: EntryRefused) -> None:
    log.warning("nbcache: ignored the entry under %r: %s", key, refusal.reason)
