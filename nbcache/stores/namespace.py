"""One namespace on a shared store, cleared in O(1) by a random generation token.

A memcached server is shared by every kernel, user and cache that reaches it, so clearing a
cache must never ``flush_all``. Instead each namespace keeps a *generation*: a random 8-byte
token under its own key. Every value is stored followed by the generation it was written
under, and a value whose suffix is not the current generation is a miss. (A suffix, not a
prefix: the value then starts where the inner store put the record, which the inner store
aligns for big values, so arrays rebuilt on it are aligned too.) ``clear()`` writes a
new random generation: every older entry becomes a miss at once, for every process, and is
left to expire or be evicted.

The token is random, not a counter: if the generation key is evicted and a counter restarted
at 0, entries written before an earlier clear could come back to life. A missing generation
key means "everything is a miss"; the next write creates a fresh one, and so does a write that
finds something under the generation key that is not a token (planted or corrupt).

The generation lives on one server. So that one dead server only costs its own keys, a store
that cannot reach the generation's server goes on with the last generation it read there: only
a ``clear()`` changes it, and a ``clear()`` needs that same server. (A client cut off from that
server while others still reach it would miss their clears until it reconnects.)

Writes need the generation before they can be written. Where the inner store can write and
read another key in one round trip (:class:`~nbcache.stores.api.StoreThenGet`, as memcached
does), a write goes under the generation read last and reads the generation back in the same
round trip: if it is still current (the usual case: a missed read is followed by its write),
that was all; if it changed or vanished meanwhile (a clear, a restarted server), the write is
made again under the current one. Otherwise a write reads the generation first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

from nbcache.exceptions import StoreFault
from nbcache.stores.api import (
    NO_VALUE,
    UNCHANGED,
    BigValue,
    Buffer,
    ByteStore,
    CasToken,
    NoValue,
    StoreThenGet,
    Unchanged,
    Versioned,
    VersionedStore,
    byte_view,
    peek,
)
from nbcache.stores.tokens import create_or_read_token

GENERATION_BYTES = 8


class NamespacedStore:
    """A :class:`~nbcache.stores.api.ByteStore` keeping its keys under ``namespace`` in ``inner``.

    Keys of different namespaces never collide, whatever characters the namespace holds (it
    is length-prefixed). Reads fetch the generation together with the values, in one
    ``inner.get_many``, so a clear by another process is seen at the next read. Writes read
    it back with the write where ``inner`` can (see the module's docstring), else first.

    :meth:`add` stores when the key holds only an entry of an older generation. :meth:`delete`
    returns True only if a current-generation value was removed. Faults of ``inner``
    (:class:`~nbcache.exceptions.StoreFault`) propagate unchanged. Thread-safe if ``inner`` is.
    """

    def __init__(self, inner: ByteStore, namespace: str) -> None:
        self.inner = inner
        # Checked once: a runtime protocol check costs tens of microseconds.
        self._versioned = inner if isinstance(inner, VersionedStore) else None
        self.namespace = namespace
        self._prefix = f"{len(namespace)}:{namespace}:"
        # '#' where data keys have ':' after the namespace: no data key equals it.
        self.generation_key = f"{len(namespace)}:{namespace}#generation"
        # The last generation read from the server: written under (and checked) next, and
        # used while that server is unreachable.
        self._last_seen: bytes | None = None
        self._read_back = inner if isinstance(inner, StoreThenGet) else None

    @property
    def max_item_size(self) -> int | None:
        """The inner store's item limit less the generation suffix; None if it has none."""
        inner_limit = getattr(self.inner, "max_item_size", None)
        return None if inner_limit is None else int(inner_limit) - GENERATION_BYTES

    def inner_key(self, key: str) -> str:
        """The key under which ``key`` of this namespace lives in ``inner``."""
        return self._prefix + key

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> Buffer | NoValue:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[Buffer | NoValue]:
        """Values in the order of ``keys``, read with the generation in one round trip."""
        prefix = self._prefix
        inner_keys = [self.generation_key]
        inner_keys += [prefix + key for key in keys]
        generation, *records = self.inner.get_many(inner_keys)
        current = self._generation_read(generation)
        if current is None:
            return [NO_VALUE] * len(keys)
        values: list[Buffer | NoValue] = []
        for record in records:
            if isinstance(record, NoValue):
                values.append(NO_VALUE)
                continue
            view = byte_view(record)
            end = view.nbytes - GENERATION_BYTES
            values.append(view[:end] if end >= 0 and view[end:] == current else NO_VALUE)
        return values

    def get_many_versioned(
        self, keys: Sequence[str], held: Sequence[bytes | None]
    ) -> list[Versioned]:
        """Values and versions (the inner version, then the generation the value was written
        under), read with the generation in one round trip.

        A held value is :data:`~nbcache.stores.api.UNCHANGED` only if the inner store says
        it is unchanged *and* the generation it was written under is still current: a
        ``clear()`` by anyone since makes it a miss.
        """
        inner = self._versioned
        if inner is None:
            return [(value, None) for value in self.get_many(keys)]
        prefix = self._prefix
        inner_keys = [self.generation_key]
        inner_keys += [prefix + key for key in keys]
        # The inner store's part of each held version (the generation is the last bytes).
        inner_held: list[bytes | None] = [None]
        inner_held += [
            None
            if version is None or len(version) <= GENERATION_BYTES
            else version[:-GENERATION_BYTES]
            for version in held
        ]
        (generation, _), *records = inner.get_many_versioned(inner_keys, inner_held)
        current = self._generation_read(_value_or_miss(generation))
        if current is None:
            return [(NO_VALUE, None)] * len(keys)
        results: list[Versioned] = []
        for (record, version), known in zip(records, held, strict=True):
            if isinstance(record, NoValue):
                results.append((NO_VALUE, None))
                continue
            if isinstance(record, Unchanged):
                # The same bytes as the held value, so its suffix is the held generation.
                fresh = known is not None and known[-GENERATION_BYTES:] == current
                results.append((UNCHANGED, known) if fresh else (NO_VALUE, None))
                continue
            view = byte_view(record)
            end = view.nbytes - GENERATION_BYTES
            if end < 0 or view[end:] != current:
                results.append((NO_VALUE, None))
            else:
                results.append((view[:end], None if version is None else version + current))
        return results

    def _generation_read(self, raw: Buffer | NoValue) -> bytes | None:
        """The current generation, given what a read found under its key; None: none."""
        if isinstance(raw, NoValue):
            # Missing, or its server did not answer (a multi-key read hides which): ask alone.
            try:
                raw = self.inner.get(self.generation_key)
            except StoreFault:
                return self._last_seen
        return self._token(raw)

    def _token(self, raw: Buffer | NoValue) -> bytes | None:
        if isinstance(raw, NoValue) or memoryview(raw).nbytes != GENERATION_BYTES:
            return None  # missing, or not a token (planted, corrupt): nothing is current
        self._last_seen = token = bytes(raw)
        return token

    def gets(self, key: str) -> tuple[Buffer | NoValue, CasToken | None]:
        """The value and a token for :meth:`cas`; ``(NO_VALUE, None)`` for a stale entry."""
        try:
            current = self._token(self.inner.get(self.generation_key))
        except StoreFault:
            current = self._last_seen
        if current is None:
            return NO_VALUE, None
        record, token = self.inner.gets(self._prefix + key)
        value = cast(Buffer | NoValue, self._current_value(record, current))
        if isinstance(value, NoValue) or token is None:
            return NO_VALUE, None
        # The token remembers the generation, so cas writes under the one gets saw.
        return value, CasToken((current, token))

    def peek(self, key: str) -> tuple[Buffer | BigValue | NoValue, CasToken | None]:
        """Like :meth:`gets`, but a big value is described, not read (see
        :func:`~nbcache.stores.api.peek`); its generation is read from its tail."""
        try:
            current = self._token(self.inner.get(self.generation_key))
        except StoreFault:
            current = self._last_seen
        if current is None:
            return NO_VALUE, None
        record, token = peek(self.inner, self._prefix + key)
        value = self._current_value(record, current)
        if isinstance(value, NoValue) or token is None:
            return NO_VALUE, None
        return value, CasToken((current, token))

    @staticmethod
    def _current_value(
        record: Buffer | BigValue | NoValue, generation: bytes
    ) -> Buffer | BigValue | NoValue:
        if isinstance(record, NoValue):
            return NO_VALUE
        if isinstance(record, BigValue):
            if len(record.tail) < GENERATION_BYTES or record.tail[-GENERATION_BYTES:] != generation:
                return NO_VALUE
            return BigValue(record.size - GENERATION_BYTES, record.tail[:-GENERATION_BYTES])
        view = byte_view(record)
        end = view.nbytes - GENERATION_BYTES
        if end < 0 or view[end:] != generation:
            return NO_VALUE
        return view[:end]

    # -- writing ----------------------------------------------------------------------------

    def current_generation(self) -> bytes | None:
        """The generation new writes go under, created if missing; None if it cannot be had."""
        try:
            current = create_or_read_token(
                self.inner, self.generation_key, self._token, lambda: os.urandom(GENERATION_BYTES)
            )
        except StoreFault:
            if self._last_seen is None:
                raise
            return self._last_seen
        if current is not None:
            self._last_seen = current
        return current

    def _write_then_check(
        self, command: str, inner_key: str, value: Sequence[Buffer], ttl: float | None
    ) -> tuple[bool, bytes] | None:
        """Write under the last generation read, reading it back in the same round trip:
        whether stored and under which generation, or None if that one is not current (any
        more) or cannot be checked so: the caller writes the long way."""
        generation, read_back = self._last_seen, self._read_back
        if generation is None or read_back is None:
            return None
        stored, found = read_back.store_then_get(
            command, inner_key, [*value, generation], ttl, self.generation_key
        )
        return (stored, generation) if self._token(found) == generation else None

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        inner_key = self._prefix + key
        written = self._write_then_check("set", inner_key, value, ttl)
        if written is not None:
            return written[0]
        generation = self.current_generation()
        if generation is None:
            return False
        return self.inner.set(inner_key, [*value, generation], ttl)

    def set_versioned(
        self, key: str, value: Sequence[Buffer], ttl: float | None
    ) -> tuple[bool, bytes | None]:
        """Store like :meth:`set`; the version is the inner one, then the generation."""
        inner = self._versioned
        if inner is None:
            return self.set(key, value, ttl), None
        generation = self.current_generation()
        if generation is None:
            return False, None
        stored, version = inner.set_versioned(self._prefix + key, [*value, generation], ttl)
        return stored, None if not stored or version is None else version + generation

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        """Store only if ``key`` holds no current-generation value."""
        inner_key = self._prefix + key
        written = self._write_then_check("add", inner_key, value, ttl)
        if written is not None and written[0]:
            return True
        generation = written[1] if written is not None else self.current_generation()
        if generation is None:
            return False
        record: list[Buffer] = [*value, generation]
        if written is None and self.inner.add(inner_key, record, ttl):
            return True
        existing, token = peek(self.inner, inner_key)
        if isinstance(existing, NoValue) or token is None:
            # Gone between add and gets (expired, deleted): one more try.
            return self.inner.add(inner_key, record, ttl)
        if not isinstance(self._current_value(existing, generation), NoValue):
            return False
        # Only a stale entry is there: replace it, unless someone changes it first.
        return self.inner.cas(inner_key, record, ttl, token)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        """Store only if ``key`` is unchanged since :meth:`gets` gave ``token``.

        The value goes under the generation :meth:`gets` saw: if the namespace was cleared
        in between, the write is as if it happened before the clear (a miss afterwards).
        """
        saved = token.value
        if not (
            isinstance(saved, tuple)
            and len(saved) == 2
            and isinstance(saved[0], bytes)
            and isinstance(saved[1], CasToken)
        ):
            raise TypeError(f"cas needs a token from NamespacedStore.gets, got {token!r}")
        generation, inner_token = saved
        return self.inner.cas(self._prefix + key, [*value, generation], ttl, inner_token)

    def delete(self, key: str) -> bool:
        """Delete ``key``; True only if it held a current-generation value."""
        inner_key = self._prefix + key
        record, _ = peek(self.inner, inner_key)  # a big value is not read
        if isinstance(record, NoValue):
            return False
        current = self._generation_read(self.inner.get(self.generation_key))
        live = current is not None and not isinstance(self._current_value(record, current), NoValue)
        # A stale entry is deleted too: it only takes room.
        deleted = self.inner.delete(inner_key)
        return deleted and live

    def clear(self) -> bool:
        """Forget every key of this namespace (only), for every process, in one write."""
        fresh = os.urandom(GENERATION_BYTES)
        cleared = self.inner.set(self.generation_key, [fresh], None)
        if cleared:
            self._last_seen = fresh
        return cleared

    def close(self) -> None:
        self.inner.close()


def _value_or_miss(value: Buffer | NoValue | Unchanged) -> Buffer | NoValue:
    return NO_VALUE if isinstance(value, Unchanged) else value
