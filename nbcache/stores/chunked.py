"""Values bigger than one item: split into chunks under per-write keys, manifest written last.

Every value is stored under its key as one record (:mod:`nbcache.stores.chunk_layout`): an
inline record for a value that fits in one item (one round trip to read), or a manifest
naming the chunks of a bigger one.

Each write of a big value draws a fresh random 16-byte write id and puts its chunks under keys
derived from (key, write id, index), so two writers never overwrite each other's chunks. The
chunks are written first and the manifest last, so a reader sees either the previous manifest
(whose chunks are untouched) or the new one (whose chunks are all written).

Anyone who can write to the inner store can plant a manifest claiming gigabytes; so a reader
allocates a big value only for a manifest it can trust (one tagged by an authenticator with
this store's secret), or after the inner store has shown the chunks are there.

Whatever cannot be read is a miss, never an exception, never a mixed or corrupt value. A chunk
that is missing (evicted, or its writer died) or has the wrong size is normal in memcached and
logged at DEBUG. A record that is not an nbcache record, a malformed manifest, or a value whose
digest does not match its manifest means tampering or corruption: logged at WARNING, naming
the key and the reason.

When the inner store offers :class:`~nbcache.stores.chunk_reading.ChunkTransport`
(memcached does), chunks are written from the caller's buffers in one pipelined call and read
straight into the one buffer that becomes the value, so a big value is never copied on its
way through this layer (:mod:`nbcache.stores.chunk_reading`: a big value starts 64-byte
aligned, and so do the arrays the envelope rebuilds on it).

Every write of a big value has a *version* (its write id and digest,
:class:`~nbcache.stores.api.VersionedStore`): a reader that holds a value of that version
reads only the manifest, one small record, and no chunk. The version is taken from a
manifest only once it is trusted (its tag checked, when manifests are signed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from nbcache.exceptions import StoreFault
from nbcache.stores.api import (
    ITEM_OVERHEAD,
    NO_VALUE,
    UNCHANGED,
    Authenticator,
    BigValue,
    Buffer,
    ByteStore,
    CasToken,
    NoValue,
    StoreThenGet,
    Versioned,
    byte_views,
    total_size,
)
from nbcache.stores.chunk_layout import (
    INLINE_V2,
    MANIFEST_HEADER,
    TAIL_BYTES,
    WRITE_ID_BYTES,
    Manifest,
    ManifestRecord,
    Unreadable,
    chunk_key,
    chunk_pieces,
    decode_record,
    digest,
    encode_manifest,
    manifest_chunk_keys,
    manifest_record,
    manifest_version,
    parse_manifest,
    signed_parts,
    write_version,
)
from nbcache.stores.chunk_reading import ChunkTransport, read_values

log = logging.getLogger(__name__)

#: Item limit assumed when neither the caller nor the inner store says: memcached's default.
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024
#: Chunks live this much longer than their manifest, so a live manifest finds its chunks even
#: though they were written before it. (The other way round would only cost misses.)
CHUNK_TTL_MARGIN = 60.0
# A value bigger than a quarter of the server's memory is checked after it is written: the
# server may have evicted its first chunks to make room for the last ones.
_CHECKED_SHARE = 4


#: What a write gives: whether it stored, and the version of what it stored (None: none).
Stored = tuple[bool, bytes | None]


class _Written(NamedTuple):
    """The chunks of one write are stored: the manifest record to store, and its ttl."""

    record: list[bytes]
    chunk_keys: list[str]
    ttl: float | None
    version: bytes


@runtime_checkable
class SizeProbe(Protocol):
    """What an inner store may offer to tell the sizes of values without sending them."""

    def value_sizes(self, keys: Sequence[str]) -> list[int | None]:
        """Per key, the size of its value, or None if it holds none."""
        ...


def _mib(size: int | None) -> str:
    return "an unknown amount" if size is None else f"{size / 2**20:.1f} MiB"


class ChunkedStore:
    """A :class:`~nbcache.stores.api.ByteStore` for values of any size, in a store of small items.

    ``max_item_size`` is the largest item ``inner`` accepts, in bytes, or a function giving it
    (asked at each write, so it may be discovered from the server lazily). By default it is
    ``inner.max_item_size`` when ``inner`` has one, else 1 MiB. :data:`ITEM_OVERHEAD` bytes of
    it are left for the key and item header.

    ``authenticator`` (a :class:`~nbcache.stores.api.Authenticator`, e.g. a
    :class:`~nbcache.entries.signing.Signer` for this purpose) tags every manifest, bound to
    its key; a manifest whose tag does not check is refused before it sizes anything.
    Without one, manifests are trusted as far as the inner store's own word goes: a big
    value's memory is allocated only once the inner store says its chunks are there, with
    the sizes the manifest claims (asked without moving them when it offers
    ``value_sizes``), so a planted manifest alone costs nothing.

    Faults of ``inner`` (:class:`~nbcache.exceptions.StoreFault`) propagate unchanged, except
    during best-effort cleanup of chunks nobody can read any more. Thread-safe if ``inner`` is.

    Chunks of a replaced big value are deleted after the new manifest lands when the writer
    replaces it with another big value (the old manifest is read first: one small round trip
    next to writing a megabyte or more). Replacing a big value by a small one, ``cas`` and
    ``clear`` leave the old chunks to expire (they live :data:`CHUNK_TTL_MARGIN` seconds past
    their manifest's ttl) or to be evicted.
    """

    def __init__(
        self,
        inner: ByteStore,
        max_item_size: int | Callable[[], int] | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.inner = inner
        self._max_item_size = max_item_size
        self.authenticator = authenticator
        self._transport = inner if isinstance(inner, ChunkTransport) else None
        self._read_back = inner if isinstance(inner, StoreThenGet) else None
        self._probe = inner if isinstance(inner, SizeProbe) else None
        # The smallest value seen not to stay (evicted while it was written): values at least
        # this big are refused without sending them.
        self._unkept_size: int | None = None
        self._warned_too_big = False

    # -- sizes ------------------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """Bytes of value per chunk (also the largest inline record)."""
        limit = self._max_item_size
        if limit is None:
            limit = getattr(self.inner, "max_item_size", None) or DEFAULT_MAX_ITEM_SIZE
        size = limit() if callable(limit) else limit
        if size <= ITEM_OVERHEAD + MANIFEST_HEADER.size + 1:
            raise StoreFault(f"the item limit ({size} bytes) leaves no room for a chunk")
        return int(size) - ITEM_OVERHEAD

    @property
    def inline_limit(self) -> int:
        """The largest value stored inline, in one item; anything bigger is chunked."""
        return self.chunk_size - len(INLINE_V2)

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> Buffer | NoValue:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[Buffer | NoValue]:
        """Values in the order of ``keys``: one round trip for the records, one for all chunks."""
        records = self.inner.get_many(keys)
        values: list[Buffer | NoValue] = []
        manifests: list[tuple[int, Manifest]] = []
        for position, record in enumerate(records):
            if type(record) is bytes and record[-1:] == INLINE_V2:
                # The usual small value, read as bytes: checked and cut here, on the hit path.
                values.append(memoryview(record)[:-1])
                continue
            decoded = self._decode_record(keys[position], record)
            if isinstance(decoded, Manifest):
                manifests.append((position, decoded))
                decoded = NO_VALUE
            values.append(decoded)
        if manifests:
            read = self._read_values([(keys[position], m) for position, m in manifests])
            for (position, _), value in zip(manifests, read, strict=True):
                values[position] = value
        return values

    def get_many_versioned(
        self, keys: Sequence[str], held: Sequence[bytes | None]
    ) -> list[Versioned]:
        """Values and versions: one round trip for the records, one for the chunks to fetch.

        A big value's version names its write (the trusted manifest's write id and digest); a
        value stored inline has none. Chunks of a held version are not fetched.
        """
        records = self.inner.get_many(keys)
        results: list[Versioned] = [(NO_VALUE, None)] * len(keys)
        manifests: list[tuple[int, Manifest]] = []
        for position, (key, record) in enumerate(zip(keys, records, strict=True)):
            if type(record) is bytes and record[-1:] == INLINE_V2:
                # The usual small value (no version), as in get_many.
                results[position] = (memoryview(record)[:-1], None)
                continue
            decoded = self._decode_record(key, record)
            if isinstance(decoded, Manifest):
                if held[position] is not None and held[position] == manifest_version(decoded):
                    results[position] = (UNCHANGED, held[position])
                else:
                    manifests.append((position, decoded))
            else:
                results[position] = (decoded, None)
        if manifests:
            read = self._read_values([(keys[position], m) for position, m in manifests])
            for (position, manifest), value in zip(manifests, read, strict=True):
                fetched = None if isinstance(value, NoValue) else manifest_version(manifest)
                results[position] = (value, fetched)
        return results

    def gets(self, key: str) -> tuple[Buffer | NoValue, CasToken | None]:
        """The value and a token for :meth:`cas`; for a big value the token is its manifest's."""
        record, token = self.inner.gets(key)
        decoded = self._decode_record(key, record)
        if isinstance(decoded, Manifest):
            decoded = self._read_values([(key, decoded)])[0]
        if decoded is NO_VALUE:
            return NO_VALUE, None
        return decoded, token

    def peek(self, key: str) -> tuple[Buffer | BigValue | NoValue, CasToken | None]:
        """Like :meth:`gets`, but a big value is described, not read.

        A big value is a :class:`~nbcache.stores.api.BigValue` (its size and last bytes, from
        its manifest) once every chunk is there with its size (asked without moving them
        when the inner store can tell sizes); a miss otherwise.
        """
        record, token = self.inner.gets(key)
        decoded = self._decode_record(key, record)
        if isinstance(decoded, Manifest):
            if not self._chunks_present(key, decoded):
                return NO_VALUE, None
            return BigValue(decoded.total, decoded.tail), token
        if decoded is NO_VALUE:
            return NO_VALUE, None
        return decoded, token

    def _decode_record(
        self, key: str, record: Buffer | NoValue, *, warn: bool = True
    ) -> Buffer | NoValue | Manifest:
        """An inline value (a view into ``record``), a trusted manifest to follow, or a miss.

        A record that is not one is logged as a warning, or at DEBUG when ``warn`` is false
        (a read to clean up after: the value's own read warns)."""
        if isinstance(record, NoValue):
            return NO_VALUE
        found = decode_record(memoryview(record))
        decoded = self._trusted_manifest(key, found) if isinstance(found, ManifestRecord) else found
        if isinstance(decoded, Unreadable):
            log.log(
                logging.WARNING if warn else logging.DEBUG,
                "nbcache: refused the record under %r: %s",
                key,
                decoded.reason,
            )
            return NO_VALUE
        return decoded

    def _trusted_manifest(self, key: str, record: ManifestRecord) -> Manifest | Unreadable:
        """The manifest, if its tag shows this store's secret wrote it under ``key``.

        Checked before the manifest is parsed: a planted one never sizes anything. Without an
        authenticator, manifests are taken as the inner store gives them.
        """
        if self.authenticator is not None:
            if not record.signed:
                return Unreadable("an unsigned manifest where signed ones are required")
            if not self.authenticator.check(signed_parts(key, record.body), record.tag):
                return Unreadable("bad signature on its manifest (planted, or another secret)")
        return parse_manifest(record.body)

    def _chunks_present(self, key: str, manifest: Manifest) -> bool:
        """True if every chunk ``manifest`` names is there with its size (not read, if the
        inner store can tell sizes)."""
        keys = manifest_chunk_keys(key, manifest)
        if self._probe is not None:
            return self._probe.value_sizes(keys) == list(manifest.sizes)
        chunks = self.inner.get_many(keys)
        return all(
            not isinstance(chunk, NoValue) and memoryview(chunk).nbytes == size
            for chunk, size in zip(chunks, manifest.sizes, strict=True)
        )

    def _read_values(self, wanted: Sequence[tuple[str, Manifest]]) -> list[memoryview | NoValue]:
        """The big values the manifests name, all chunks in one call; a miss for each broken one.

        A manifest nobody authenticated must not size an allocation on its word alone: when
        chunks are received into a buffer allocated up front, their sizes are asked of the
        inner store first, so what is allocated is what the store actually holds. (Read
        without a transport, chunks are checked before the value's memory is allocated.)
        """
        if self._transport is not None and self.authenticator is None and self._probe is not None:
            present = [(key, m) for key, m in wanted if self._chunks_present(key, m)]
            if len(present) < len(wanted):
                log.debug("nbcache: %d chunked values miss chunks", len(wanted) - len(present))
                values = read_values(self.inner, self._transport, present)
                by_key = dict(zip((key for key, _ in present), values, strict=True))
                return [by_key.get(key, NO_VALUE) for key, _ in wanted]
        return read_values(self.inner, self._transport, wanted)

    def chunk_keys(self, key: str) -> list[str]:
        """Keys of the chunks the manifest under ``key`` names now ([] for an inline value)."""
        decoded = self._decode_record(key, self.inner.get(key))
        return manifest_chunk_keys(key, decoded) if isinstance(decoded, Manifest) else []

    # -- writing ----------------------------------------------------------------------------

    def _at_current_limit(self, write: Callable[[int], Stored]) -> Stored:
        """``write(chunk_size)``, and once more if it failed and the item limit has changed
        meanwhile (a server restarted with another ``-I``: its refusal was of the old size)."""
        chunk_size = self.chunk_size
        result = write(chunk_size)
        if result[0]:
            return result
        current = self.chunk_size
        return write(current) if current != chunk_size else result

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self.set_versioned(key, value, ttl)[0]

    def set_versioned(self, key: str, value: Sequence[Buffer], ttl: float | None) -> Stored:
        """Store like :meth:`set`; a big value's version names this write (inline: None)."""
        return self._at_current_limit(lambda chunk_size: self._set(key, value, ttl, chunk_size))

    def _set(self, key: str, value: Sequence[Buffer], ttl: float | None, chunk_size: int) -> Stored:
        if total_size(value) <= chunk_size - len(INLINE_V2):
            return self.inner.set(key, [*value, INLINE_V2], ttl), None
        previous = self._decode_record(key, self.inner.get(key), warn=False)
        written = self._write_chunks(key, value, ttl, chunk_size)
        if written is None:
            return False, None
        if not self.inner.set(key, written.record, written.ttl):
            self._delete_quietly(written.chunk_keys)
            return False, None
        if isinstance(previous, Manifest):
            self._delete_quietly(manifest_chunk_keys(key, previous))
        return True, written.version

    def store_then_get(
        self,
        command: str,
        key: str,
        value: Sequence[Buffer],
        ttl: float | None,
        read_key: str,
    ) -> tuple[bool, Buffer | NoValue]:
        """``set`` or ``add`` ``value``, then read ``read_key``: one round trip for an inline
        value when the inner store offers it, the long way otherwise."""
        read_back = self._read_back
        if read_back is None or total_size(value) > self.inline_limit:
            stored = self.set(key, value, ttl) if command == "set" else self.add(key, value, ttl)
            return stored, self.get(read_key)
        record: list[Buffer] = [*value, INLINE_V2]
        stored, found = read_back.store_then_get(command, key, record, ttl, read_key)
        if not stored:
            # Refused (the item limit changed, say) or, for add, something is there: the long
            # way decides, as it would have.
            stored = self.set(key, value, ttl) if command == "set" else self.add(key, value, ttl)
        decoded = self._decode_record(read_key, found)
        if isinstance(decoded, Manifest):
            decoded = self._read_values([(read_key, decoded)])[0]
        return stored, decoded

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        """Store only if ``key`` holds no readable value (a manifest with lost chunks is none)."""
        return self._at_current_limit(
            lambda chunk_size: (self._add(key, value, ttl, chunk_size), None)
        )[0]

    def _add(self, key: str, value: Sequence[Buffer], ttl: float | None, chunk_size: int) -> bool:
        if total_size(value) <= chunk_size - len(INLINE_V2):
            record: list[Buffer] = [*value, INLINE_V2]
            return self.inner.add(key, record, ttl) or self._replace_unreadable(key, record, ttl)
        if self._readable(key)[0]:
            return False  # decided before a chunk is sent
        written = self._write_chunks(key, value, ttl, chunk_size)
        if written is None:
            return False
        if self.inner.add(key, written.record, written.ttl) or self._replace_unreadable(
            key, written.record, written.ttl
        ):
            return True
        self._delete_quietly(written.chunk_keys)
        return False

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        """Store only if ``key`` is unchanged since :meth:`gets`; a big value's chunks go first."""
        return self._at_current_limit(
            lambda chunk_size: (self._cas(key, value, ttl, token, chunk_size), None)
        )[0]

    def _cas(
        self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken, chunk_size: int
    ) -> bool:
        if total_size(value) <= chunk_size - len(INLINE_V2):
            return self.inner.cas(key, [*value, INLINE_V2], ttl, token)
        written = self._write_chunks(key, value, ttl, chunk_size)
        if written is None:
            return False
        if self.inner.cas(key, written.record, written.ttl, token):
            return True
        self._delete_quietly(written.chunk_keys)
        return False

    def _replace_unreadable(self, key: str, record: Sequence[Buffer], ttl: float | None) -> bool:
        """After a failed add: store anyway if what ``key`` holds cannot be read as a value."""
        readable, token = self._readable(key)
        if readable:
            return False
        if token is None:
            # Nothing there (it vanished between add and gets: expired, evicted): one more try.
            return self.inner.add(key, record, ttl)
        return self.inner.cas(key, record, ttl, token)

    def _readable(self, key: str) -> tuple[bool, CasToken | None]:
        """Whether ``key`` holds a readable value (a big one is not read), and the record's
        cas token (None if it holds nothing)."""
        current, token = self.inner.gets(key)
        if isinstance(current, NoValue) or token is None:
            return False, None
        decoded = self._decode_record(key, current)
        if isinstance(decoded, Manifest):
            return self._chunks_present(key, decoded), token
        return decoded is not NO_VALUE, token

    def _write_chunks(
        self, key: str, value: Sequence[Buffer], ttl: float | None, chunk_size: int
    ) -> _Written | None:
        """Write the chunks of a new write; what the manifest must then say, and where.

        None if ``inner`` refused a chunk, or if writing took so long that the first chunks
        have already expired; the chunks already written are then deleted.
        """
        write_id = os.urandom(WRITE_ID_BYTES)
        views = byte_views(value)
        size = sum(view.nbytes for view in views)
        if not self._may_stay(key, size):
            return None
        chunk_ttl = None if ttl is None else ttl + CHUNK_TTL_MARGIN
        started = time.monotonic()
        items = [
            (chunk_key(key, write_id, index), pieces)
            for index, pieces in enumerate(chunk_pieces(views, chunk_size))
        ]
        keys = [chunk for chunk, _ in items]
        sizes = [sum(piece.nbytes for piece in pieces) for _, pieces in items]
        value_digest = digest(views)
        if not self._send_chunks(key, items, chunk_ttl) or not self._stayed(key, size, keys):
            self._delete_quietly(keys)
            return None
        body = encode_manifest(write_id, sizes, value_digest, _tail(views, TAIL_BYTES))
        tag = None
        if self.authenticator is not None:
            tag = self.authenticator.tag(signed_parts(key, body))
        record = manifest_record(body, tag)
        version = write_version(write_id, value_digest)
        if ttl is None:
            return _Written(record, keys, None, version)
        # The chunks' clock started before the manifest's: never let the manifest outlive them.
        remaining = ttl + CHUNK_TTL_MARGIN - (time.monotonic() - started)
        if remaining <= 0:
            log.debug("nbcache: chunked value %r: its chunks expired while it was written", key)
            self._delete_quietly(keys)
            return None
        return _Written(record, keys, min(ttl, remaining), version)

    # -- values too big for the server ------------------------------------------------------

    def _may_stay(self, key: str, size: int) -> bool:
        """False (and one warning per store) for a value the server cannot hold: bigger than
        its memory, or at least as big as one that was evicted while it was written."""
        memory = getattr(self.inner, "memory_limit", None)
        if isinstance(memory, int) and size > memory:
            self._refuse(key, size, f"the server holds {_mib(memory)} (-m)")
            return False
        if self._unkept_size is not None and size >= self._unkept_size:
            unkept = _mib(self._unkept_size)
            held = f"the server holds {_mib(memory)} (-m)"
            self._refuse(key, size, f"{held} and a {unkept} value did not stay")
            return False
        return True

    def _stayed(self, key: str, size: int, chunk_keys: Sequence[str]) -> bool:
        """Whether the first chunks of a value that is big for the server are still there.

        memcached evicts the least recently used items first: if a value does not fit, the
        chunks written first are gone by the time the last one is written. Chunks may travel
        over several connections at once (``inner.transfer_connections``), dealt round-robin:
        each connection's first chunk is one of the first ones, so those are looked for
        (without moving them, when the inner store can tell sizes).
        """
        memory = getattr(self.inner, "memory_limit", None)
        if not isinstance(memory, int) or size * _CHECKED_SHARE < memory:
            return True
        connections = getattr(self.inner, "transfer_connections", 1)
        first = chunk_keys[: max(1, int(connections))]
        if self._probe is not None:
            gone = None in self._probe.value_sizes(first)
        else:
            gone = any(isinstance(chunk, NoValue) for chunk in self.inner.get_many(first))
        if not gone:
            return True
        self._unkept_size = min(size, self._unkept_size or size)
        held = f"the server holds {_mib(memory)} (-m)"
        self._refuse(key, size, f"{held} and evicted it as it was written")
        return False

    def _refuse(self, key: str, size: int, reason: str) -> None:
        level = logging.DEBUG if self._warned_too_big else logging.WARNING
        self._warned_too_big = True
        log.debug("nbcache: %r is too big for the server", key)
        log.log(
            level,
            "nbcache: not storing a value of %s: it cannot stay in the server: %s; values this "
            "big are not sent again (give memcached more memory with -m)",
            _mib(size),
            reason,
        )

    def _send_chunks(
        self, key: str, items: list[tuple[str, list[memoryview]]], ttl: float | None
    ) -> bool:
        """Write every chunk; False (logged) if ``inner`` refused one."""
        if self._transport is not None:
            if self._transport.set_chunks(items, ttl):
                return True
            log.debug("nbcache: chunked value %r: a chunk was refused", key)
            return False
        for index, (chunk, pieces) in enumerate(items):
            if not self.inner.set(chunk, pieces, ttl):
                log.debug("nbcache: chunked value %r: chunk %d was refused", key, index)
                return False
        return True

    def _delete_quietly(self, keys: Sequence[str]) -> None:
        """Best-effort cleanup of chunks nobody reads: a fault only leaves them to expire."""
        try:
            if self._transport is not None:
                self._transport.delete_chunks(keys)
                return
            for key in keys:
                self.inner.delete(key)
        except StoreFault as fault:
            log.debug("nbcache: could not delete %d chunks: %s", len(keys), fault)

    # -- the rest ---------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Delete the value under ``key``; a big value's chunks are deleted best-effort after."""
        decoded = self._decode_record(key, self.inner.get(key), warn=False)
        deleted = self.inner.delete(key)
        if isinstance(decoded, Manifest):
            self._delete_quietly(manifest_chunk_keys(key, decoded))
        return deleted

    def clear(self) -> bool:
        return self.inner.clear()

    def close(self) -> None:
        self.inner.close()


def _tail(views: Sequence[memoryview], size: int) -> bytes:
    """The last ``size`` bytes (or fewer, if there are fewer) of the concatenated views."""
    pieces: list[bytes] = []
    for view in reversed(views):
        if size <= 0:
            break
        piece = view[max(view.nbytes - size, 0) :]
        pieces.append(piece.tobytes())
        size -= piece.nbytes
    return b"".join(reversed(pieces))
