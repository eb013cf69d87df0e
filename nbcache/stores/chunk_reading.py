"""Reading big values back from their chunks: into one aligned buffer, checked as they land.

A value's chunks are read into the one buffer that becomes the value
(:func:`nbcache.stores.buffers.allocate`: aligned), straight from the socket when the inner
store offers :class:`ChunkTransport` (memcached does), else copied once from what
``get_many`` returns. The value's digest is computed as its chunks land, in order, while
later ones are still arriving, and compared with the manifest's: whatever is missing, of the
wrong size or corrupt is a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from nbcache.stores import buffers as aligned
from nbcache.stores.api import NO_VALUE, Buffer, ByteStore, NoValue
from nbcache.stores.chunk_layout import Manifest, chunk_key, digest, hasher, manifest_chunk_keys

log = logging.getLogger(__name__)


@runtime_checkable
class ChunkTransport(Protocol):
    """What an inner store may offer to move many chunks without copying them."""

    def set_chunks(self, items: Sequence[tuple[str, Sequence[Buffer]]], ttl: float | None) -> bool:
        """Store every ``(key, buffers)`` item; True if all were stored."""
        ...

    def get_chunks_into(
        self,
        keys: Sequence[str],
        targets: Sequence[memoryview],
        landed: Callable[[int], None] | None = None,
    ) -> list[bool]:
        """Read each key's value into its target; per key, True if found with that length.

        ``landed(index)`` is called in the calling thread as each target is whole; a target
        is not written again after that.
        """
        ...

    def delete_chunks(self, keys: Sequence[str]) -> None:
        """Delete every key, all at once (cleanup: faults may propagate)."""
        ...


def read_values(
    inner: ByteStore, transport: ChunkTransport | None, wanted: Sequence[tuple[str, Manifest]]
) -> list[memoryview | NoValue]:
    """The big values the manifests name (``(key, manifest)`` pairs), all chunks in one call.

    A miss for each value that cannot be read whole and intact. Faults of ``inner``
    propagate. With a transport, each value's memory is allocated as its manifest says
    before anything is received: the caller passes only manifests it trusts (authenticated,
    or whose chunks the store has shown to be there with those sizes).
    """
    if transport is not None:
        return _receive(transport, wanted)
    keys = [chunk for key, manifest in wanted for chunk in manifest_chunk_keys(key, manifest)]
    chunks = inner.get_many(keys)
    values: list[memoryview | NoValue] = []
    start = 0
    for key, manifest in wanted:
        end = start + len(manifest.sizes)
        values.append(_assemble(key, manifest, chunks[start:end]))
        start = end
    return values


class InOrderDigest:
    """The digest of a value whose chunks land in any order, computed as they land.

    Chunks are hashed in order, each as soon as it and all before it have landed; the rest
    when the digest is asked for (a transport that does not report landings).
    """

    def __init__(self, chunks: list[memoryview]) -> None:
        self._chunks = chunks
        self._landed = [False] * len(chunks)
        self._next = 0
        self._hasher = hasher()

    def landed(self, index: int) -> None:
        """Chunk ``index`` is whole and will not change."""
        self._landed[index] = True
        while self._next < len(self._chunks) and self._landed[self._next]:
            self._hasher.update(self._chunks[self._next])
            self._next += 1

    def digest(self) -> bytes:
        """The value's digest (hashing what has not been yet); the views are released."""
        for chunk in self._chunks[self._next :]:
            self._hasher.update(chunk)
        self.release()
        return bytes(self._hasher.digest())

    def release(self) -> None:
        """Drop the views of the value's buffer."""
        self._chunks = []
        self._next = 0


def _receive(
    transport: ChunkTransport, wanted: Sequence[tuple[str, Manifest]]
) -> list[memoryview | NoValue]:
    """Each value received into its final buffer (no copy), its digest computed as it lands."""
    # Not prefaulted: the receiving threads fault in their own chunks' pages, in parallel.
    buffers = [aligned.allocate(manifest.total, prefault=False) for _, manifest in wanted]
    chunk_keys: list[str] = []
    targets: list[memoryview] = []
    digests: list[InOrderDigest] = []
    owners: list[tuple[InOrderDigest, int]] = []
    for (key, manifest), view in zip(wanted, buffers, strict=True):
        chunks = []
        offset = 0
        for index, size in enumerate(manifest.sizes):
            chunk_keys.append(chunk_key(key, manifest.write_id, index))
            chunks.append(view[offset : offset + size])
            offset += size
        value_digest = InOrderDigest(chunks)
        digests.append(value_digest)
        owners.extend((value_digest, index) for index in range(len(chunks)))
        targets.extend(chunks)

    def landed(position: int) -> None:
        value_digest, index = owners[position]
        value_digest.landed(index)

    found = transport.get_chunks_into(chunk_keys, targets, landed)
    # The buffers are the caller's now, without views of ours on them.
    targets.clear()
    owners.clear()
    values: list[memoryview | NoValue] = []
    start = 0
    for (key, manifest), buffer, value_digest in zip(wanted, buffers, digests, strict=True):
        arrived = found[start : start + len(manifest.sizes)]
        start += len(manifest.sizes)
        if not all(arrived):
            log.debug(
                "nbcache: chunked value %r: chunk %d is missing or has the wrong size",
                key,
                arrived.index(False),
            )
            value_digest.release()
            values.append(NO_VALUE)
        elif value_digest.digest() != manifest.digest:
            _warn_digest_mismatch(key)
            values.append(NO_VALUE)
        else:
            values.append(buffer)
    return values


def _assemble(
    key: str, manifest: Manifest, chunks: Sequence[Buffer | NoValue]
) -> memoryview | NoValue:
    """The whole value from its chunks, or a miss if any is missing, wrong or corrupt.

    The chunks are checked before the value's memory is allocated: its size is then what
    arrived, not only what the manifest says.
    """
    views: list[memoryview] = []
    for index, (size, chunk) in enumerate(zip(manifest.sizes, chunks, strict=True)):
        if isinstance(chunk, NoValue):
            log.debug("nbcache: chunked value %r: chunk %d is missing", key, index)
            return NO_VALUE
        view = memoryview(chunk)
        if view.nbytes != size:
            log.debug("nbcache: chunked value %r: chunk %d has %d bytes", key, index, view.nbytes)
            return NO_VALUE
        views.append(view)
    value = aligned.allocate(manifest.total)
    target = value  # assigning through a view: one memcpy per chunk, no temporary copy
    offset = 0
    for view in views:
        target[offset : offset + view.nbytes] = view
        offset += view.nbytes
    if digest([value]) != manifest.digest:
        _warn_digest_mismatch(key)
        return NO_VALUE
    return value


def _warn_digest_mismatch(key: str) -> None:
    log.warning(
        "nbcache: refused the chunked value under %r: digest mismatch (its chunks are corrupt "
        "or were tampered with)",
        key,
    )
