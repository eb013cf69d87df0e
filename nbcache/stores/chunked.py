"""Values bigger than one item: split into chunks under per-write keys, manifest written last.

Every value is stored under its key as one *record* whose first byte tells its kind and
format version:

- an **inline** record (``_INLINE_V1`` then the value) holds a value that fits in one item:
  one item, one round trip to read;
- a **manifest** record (``_MANIFEST_V1`` then write id, total length, chunk count, digest of
  the whole value and the size of every chunk) names the chunks of a bigger value.

Each write of a big value draws a fresh random 16-byte write id and puts its chunks under keys
derived from (key, write id, index), so two writers never overwrite each other's chunks. The
chunks are written first and the manifest last, so a reader sees either the previous manifest
(whose chunks are untouched) or the new one (whose chunks are all written). A chunk that is
missing (evicted, or its writer died), has the wrong size, or a whole value whose digest does
not match is a miss, logged at DEBUG: never an exception, never a mixed or corrupt value.

When the inner store offers :class:`ChunkTransport` (memcached does), chunks are written from
the caller's buffers in one pipelined call and read straight into the one buffer that becomes
the value, so a big value is never copied on its way through this layer.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from nbcache.api import NO_VALUE, Buffer, ByteStore, CasToken, NoValue, total_size
from nbcache.exceptions import StoreFault

logger = logging.getLogger(__name__)

ReadValue = bytes | bytearray | memoryview

_INLINE_V1 = b"\x11"
_MANIFEST_V1 = b"\x12"
# write id, total length, chunk count, xxh3_128 digest of the whole value; then the sizes.
_MANIFEST_HEADER = struct.Struct("<16sQI16s")
_WRITE_ID_BYTES = 16

#: Item limit assumed when neither the caller nor the inner store says: memcached's default.
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024
#: Room left in each item for what the server adds to the value: the key (memcached: up to
#: 250 bytes), the item header (~56 bytes with CAS) and whatever the inner store prepends.
ITEM_OVERHEAD = 1024
#: Chunks live this much longer than their manifest, so a live manifest finds its chunks even
#: though they were written before it. (The other way round would only cost misses.)
CHUNK_TTL_MARGIN = 60.0


@runtime_checkable
class ChunkTransport(Protocol):
    """What an inner store may offer to move many chunks without copying them."""

    def set_chunks(self, items: Sequence[tuple[str, Sequence[Buffer]]], ttl: float | None) -> bool:
        """Store every ``(key, buffers)`` item; True if all were stored."""
        ...

    def get_chunks_into(self, keys: Sequence[str], targets: Sequence[memoryview]) -> list[bool]:
        """Read each key's value into its target; per key, True if found with that length."""
        ...


class _Manifest(NamedTuple):
    write_id: bytes
    total: int
    digest: bytes
    sizes: tuple[int, ...]


def _digest(parts: Sequence[Buffer]) -> bytes:
    import xxhash

    hasher = xxhash.xxh3_128()
    for part in parts:
        hasher.update(part)
    return bytes(hasher.digest())


def _byte_views(value: Sequence[Buffer]) -> list[memoryview]:
    """Flat unsigned-byte views of the caller's buffers (no copy)."""
    views = []
    for part in value:
        view = memoryview(part)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            views.append(view)
    return views


def _chunk_pieces(views: Sequence[memoryview], chunk_size: int) -> Iterator[list[memoryview]]:
    """The value cut into chunks of ``chunk_size`` bytes, each as slices of the given views."""
    pieces: list[memoryview] = []
    room = chunk_size
    for view in views:
        offset = 0
        while offset < view.nbytes:
            take = min(room, view.nbytes - offset)
            pieces.append(view[offset : offset + take])
            offset += take
            room -= take
            if room == 0:
                yield pieces
                pieces = []
                room = chunk_size
    if pieces:
        yield pieces


def chunk_key(key: str, write_id: bytes, index: int) -> str:
    """The key of chunk ``index`` of the write ``write_id`` of ``key``."""
    return f"{key}#chunk:{write_id.hex()}:{index}"


def _parse_manifest(key: str, record: memoryview) -> _Manifest | None:
    body = record[1:]
    if body.nbytes < _MANIFEST_HEADER.size:
        logger.debug("chunked value %r: manifest truncated", key)
        return None
    write_id, total, count, digest = _MANIFEST_HEADER.unpack_from(body)
    if body.nbytes != _MANIFEST_HEADER.size + 4 * count:
        logger.debug("chunked value %r: manifest length does not match its chunk count", key)
        return None
    sizes = struct.unpack_from(f"<{count}I", body, _MANIFEST_HEADER.size)
    if sum(sizes) != total:
        logger.debug("chunked value %r: chunk sizes do not add up to the total", key)
        return None
    return _Manifest(write_id, total, digest, sizes)


class ChunkedStore:
    """A :class:`~nbcache.api.ByteStore` that stores values of any size in a store of small items.

    ``max_item_size`` is the largest item ``inner`` accepts, in bytes, or a function giving it
    (asked at each write, so it may be discovered from the server lazily). By default it is
    ``inner.max_item_size`` when ``inner`` has one, else 1 MiB. :data:`ITEM_OVERHEAD` bytes of
    it are left for the key and item header.

    Faults of ``inner`` (:class:`~nbcache.exceptions.StoreFault`) propagate unchanged, except
    during best-effort cleanup of chunks nobody can read any more. Thread-safe if ``inner`` is.

    Chunks of a replaced big value are deleted after the new manifest lands when the writer
    replaces it with another big value (the old manifest is read first: one small round trip
    next to writing a megabyte or more). Replacing a big value by a small one, ``cas`` and
    ``clear`` leave the old chunks to expire (they live :data:`CHUNK_TTL_MARGIN` seconds past
    their manifest's ttl) or to be evicted.
    """

    def __init__(
        self, inner: ByteStore, max_item_size: int | Callable[[], int] | None = None
    ) -> None:
        self.inner = inner
        self._max_item_size = max_item_size
        self._transport = inner if isinstance(inner, ChunkTransport) else None

    # -- sizes ------------------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """Bytes of value per chunk (also the largest inline record)."""
        limit = self._max_item_size
        if limit is None:
            limit = getattr(self.inner, "max_item_size", None) or DEFAULT_MAX_ITEM_SIZE
        size = limit() if callable(limit) else limit
        if size <= ITEM_OVERHEAD + _MANIFEST_HEADER.size + 1:
            raise ValueError(f"max_item_size {size} leaves no room for a chunk")
        return int(size) - ITEM_OVERHEAD

    @property
    def inline_limit(self) -> int:
        """The largest value stored inline, in one item; anything bigger is chunked."""
        return self.chunk_size - len(_INLINE_V1)

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> ReadValue | NoValue:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[ReadValue | NoValue]:
        """Values in the order of ``keys``: one round trip for the records, one for all chunks."""
        records = self.inner.get_many(keys)
        values: list[ReadValue | NoValue] = [NO_VALUE] * len(keys)
        manifests: list[tuple[int, _Manifest]] = []
        for position, (key, record) in enumerate(zip(keys, records, strict=True)):
            decoded = self._decode_record(key, record)
            if isinstance(decoded, _Manifest):
                manifests.append((position, decoded))
            else:
                values[position] = decoded
        if manifests:
            read = self._read_values([(keys[position], m) for position, m in manifests])
            for (position, _), value in zip(manifests, read, strict=True):
                values[position] = value
        return values

    def gets(self, key: str) -> tuple[ReadValue | NoValue, CasToken | None]:
        """The value and a token for :meth:`cas`; for a big value the token is its manifest's."""
        record, token = self.inner.gets(key)
        decoded = self._decode_record(key, record)
        if isinstance(decoded, _Manifest):
            decoded = self._read_values([(key, decoded)])[0]
        if decoded is NO_VALUE:
            return NO_VALUE, None
        return decoded, token

    def _decode_record(
        self, key: str, record: ReadValue | NoValue
    ) -> ReadValue | NoValue | _Manifest:
        """An inline value (a view into ``record``), a manifest to follow, or a miss."""
        if isinstance(record, NoValue):
            return NO_VALUE
        view = memoryview(record)
        if view.nbytes == 0:
            logger.debug("chunked value %r: empty record", key)
            return NO_VALUE
        tag = view[:1].tobytes()
        if tag == _INLINE_V1:
            return view[1:]
        if tag == _MANIFEST_V1:
            manifest = _parse_manifest(key, view)
            return NO_VALUE if manifest is None else manifest
        logger.debug("chunked value %r: unknown record tag %r", key, tag)
        return NO_VALUE

    def _read_values(self, wanted: Sequence[tuple[str, _Manifest]]) -> list[bytearray | NoValue]:
        """The big values the manifests name, all chunks in one call; a miss for each broken one."""
        if self._transport is not None:
            return self._receive(self._transport, wanted)
        chunk_keys = [
            chunk for key, manifest in wanted for chunk in self._chunk_keys(key, manifest)
        ]
        chunks = self.inner.get_many(chunk_keys)
        values: list[bytearray | NoValue] = []
        start = 0
        for key, manifest in wanted:
            end = start + len(manifest.sizes)
            values.append(self._assemble(key, manifest, chunks[start:end]))
            start = end
        return values

    def _receive(
        self, transport: ChunkTransport, wanted: Sequence[tuple[str, _Manifest]]
    ) -> list[bytearray | NoValue]:
        """Like :meth:`_read_values`, each value received into its final buffer (no copy)."""
        buffers = [bytearray(manifest.total) for _, manifest in wanted]
        chunk_keys: list[str] = []
        targets: list[memoryview] = []
        for (key, manifest), buffer in zip(wanted, buffers, strict=True):
            view, offset = memoryview(buffer), 0
            for index, size in enumerate(manifest.sizes):
                chunk_keys.append(chunk_key(key, manifest.write_id, index))
                targets.append(view[offset : offset + size])
                offset += size
        found = transport.get_chunks_into(chunk_keys, targets)
        del targets  # the buffers are the caller's now, without views of ours on them
        values: list[bytearray | NoValue] = []
        start = 0
        for (key, manifest), buffer in zip(wanted, buffers, strict=True):
            arrived = found[start : start + len(manifest.sizes)]
            start += len(manifest.sizes)
            if not all(arrived):
                logger.debug(
                    "chunked value %r: chunk %d is missing or has the wrong size",
                    key,
                    arrived.index(False),
                )
                values.append(NO_VALUE)
            elif _digest([buffer]) != manifest.digest:
                logger.debug("chunked value %r: digest mismatch", key)
                values.append(NO_VALUE)
            else:
                values.append(buffer)
        return values

    def _assemble(
        self, key: str, manifest: _Manifest, chunks: Sequence[ReadValue | NoValue]
    ) -> bytearray | NoValue:
        """The whole value from its chunks, or a miss if any is missing, wrong or corrupt."""
        value = bytearray(manifest.total)
        target = memoryview(value)  # one memcpy per chunk, no temporary copy
        offset = 0
        for index, (size, chunk) in enumerate(zip(manifest.sizes, chunks, strict=True)):
            if isinstance(chunk, NoValue):
                logger.debug("chunked value %r: chunk %d is missing", key, index)
                return NO_VALUE
            view = memoryview(chunk)
            if view.nbytes != size:
                logger.debug("chunked value %r: chunk %d has %d bytes", key, index, view.nbytes)
                return NO_VALUE
            target[offset : offset + size] = view
            offset += size
        target.release()
        if _digest([value]) != manifest.digest:
            logger.debug("chunked value %r: digest mismatch", key)
            return NO_VALUE
        return value

    def chunk_keys(self, key: str) -> list[str]:
        """Keys of the chunks the manifest under ``key`` names now ([] for an inline value)."""
        decoded = self._decode_record(key, self.inner.get(key))
        return self._chunk_keys(key, decoded) if isinstance(decoded, _Manifest) else []

    @staticmethod
    def _chunk_keys(key: str, manifest: _Manifest) -> list[str]:
        return [chunk_key(key, manifest.write_id, i) for i in range(len(manifest.sizes))]

    # -- writing ----------------------------------------------------------------------------

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        chunk_size = self.chunk_size
        if total_size(value) <= chunk_size - len(_INLINE_V1):
            return self.inner.set(key, [_INLINE_V1, *value], ttl)
        previous = self._decode_record(key, self.inner.get(key))
        written = self._write_chunks(key, value, ttl, chunk_size)
        if written is None:
            return False
        manifest, chunk_keys, manifest_ttl = written
        if not self.inner.set(key, [manifest], manifest_ttl):
            self._delete_quietly(chunk_keys)
            return False
        if isinstance(previous, _Manifest):
            self._delete_quietly(self._chunk_keys(key, previous))
        return True

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        """Store only if ``key`` holds no readable value (a manifest with lost chunks is none)."""
        chunk_size = self.chunk_size
        if total_size(value) <= chunk_size - len(_INLINE_V1):
            record: list[Buffer] = [_INLINE_V1, *value]
            return self.inner.add(key, record, ttl) or self._replace_unreadable(key, record, ttl)
        written = self._write_chunks(key, value, ttl, chunk_size)
        if written is None:
            return False
        manifest, chunk_keys, manifest_ttl = written
        if self.inner.add(key, [manifest], manifest_ttl) or self._replace_unreadable(
            key, [manifest], manifest_ttl
        ):
            return True
        self._delete_quietly(chunk_keys)
        return False

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        """Store only if ``key`` is unchanged since :meth:`gets`; a big value's chunks go first."""
        chunk_size = self.chunk_size
        if total_size(value) <= chunk_size - len(_INLINE_V1):
            return self.inner.cas(key, [_INLINE_V1, *value], ttl, token)
        written = self._write_chunks(key, value, ttl, chunk_size)
        if written is None:
            return False
        manifest, chunk_keys, manifest_ttl = written
        if self.inner.cas(key, [manifest], manifest_ttl, token):
            return True
        self._delete_quietly(chunk_keys)
        return False

    def _replace_unreadable(self, key: str, record: Sequence[Buffer], ttl: float | None) -> bool:
        """After a failed add: store anyway if what ``key`` holds cannot be read as a value."""
        current, token = self.inner.gets(key)
        if current is NO_VALUE or token is None:
            # It vanished between add and gets (expired, evicted): one more try.
            return self.inner.add(key, record, ttl)
        decoded = self._decode_record(key, current)
        if isinstance(decoded, _Manifest):
            decoded = self._read_values([(key, decoded)])[0]
        if decoded is not NO_VALUE:
            return False
        return self.inner.cas(key, record, ttl, token)

    def _write_chunks(
        self, key: str, value: Sequence[Buffer], ttl: float | None, chunk_size: int
    ) -> tuple[bytes, list[str], float | None] | None:
        """Write the chunks of a new write; the manifest record, chunk keys and manifest ttl.

        None if ``inner`` refused a chunk, or if writing took so long that the first chunks
        have already expired; the chunks already written are then deleted.
        """
        write_id = os.urandom(_WRITE_ID_BYTES)
        views = _byte_views(value)
        chunk_ttl = None if ttl is None else ttl + CHUNK_TTL_MARGIN
        started = time.monotonic()
        items = [
            (chunk_key(key, write_id, index), pieces)
            for index, pieces in enumerate(_chunk_pieces(views, chunk_size))
        ]
        keys = [chunk for chunk, _ in items]
        sizes = [sum(piece.nbytes for piece in pieces) for _, pieces in items]
        if not self._send_chunks(key, items, chunk_ttl):
            self._delete_quietly(keys)
            return None
        header = _MANIFEST_HEADER.pack(write_id, sum(sizes), len(sizes), _digest(views))
        manifest = b"".join([_MANIFEST_V1, header, struct.pack(f"<{len(sizes)}I", *sizes)])
        if ttl is None:
            return manifest, keys, None
        # The chunks' clock started before the manifest's: never let the manifest outlive them.
        remaining = ttl + CHUNK_TTL_MARGIN - (time.monotonic() - started)
        if remaining <= 0:
            logger.debug("chunked value %r: its chunks expired while it was written", key)
            self._delete_quietly(keys)
            return None
        return manifest, keys, min(ttl, remaining)

    def _send_chunks(
        self, key: str, items: list[tuple[str, list[memoryview]]], ttl: float | None
    ) -> bool:
        """Write every chunk; False (logged) if ``inner`` refused one."""
        if self._transport is not None:
            if self._transport.set_chunks(items, ttl):
                return True
            logger.debug("chunked value %r: a chunk was refused", key)
            return False
        for index, (chunk, pieces) in enumerate(items):
            if not self.inner.set(chunk, pieces, ttl):
                logger.debug("chunked value %r: chunk %d was refused", key, index)
                return False
        return True

    def _delete_quietly(self, keys: Sequence[str]) -> None:
        """Best-effort cleanup of chunks nobody reads: a fault only leaves them to expire."""
        for key in keys:
            try:
                self.inner.delete(key)
            except StoreFault as fault:
                logger.debug("could not delete chunk %r: %s", key, fault)
                return

    # -- the rest ---------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Delete the value under ``key``; a big value's chunks are deleted best-effort after."""
        decoded = self._decode_record(key, self.inner.get(key))
        deleted = self.inner.delete(key)
        if isinstance(decoded, _Manifest):
            self._delete_quietly(self._chunk_keys(key, decoded))
        return deleted

    def clear(self) -> bool:
        return self.inner.clear()

    def close(self) -> None:
        self.inner.close()
