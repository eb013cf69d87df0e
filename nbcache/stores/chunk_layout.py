"""The bytes :class:`~nbcache.stores.chunked.ChunkedStore` keeps: records, manifests, chunk keys.

Every value is stored under its key as one *record* whose last byte tells its kind and
format version:

- an **inline** record (the value, then :data:`INLINE_V2`) holds a value that fits in one item;
- a **manifest** record (write id, total length, chunk count, the xxh3_128 digest of the whole
  value, then the size of every chunk as a 32-bit integer, all little-endian, then
  :data:`MANIFEST_V2`) names the chunks of a bigger value, stored under :func:`chunk_key`.

The tag comes last so that an inline value starts where the inner store put the record: a
store that delivers records aligned delivers aligned values. (Records of format 1 had the tag
first; they read as unknown records, a miss.)

Also how a value is cut into chunk-sized pieces without copying it. Pure functions only: no
I/O, no logging. What cannot be read is returned as :class:`Unreadable` with the reason, for
the store to report.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from nbcache.stores.api import Buffer, byte_view

INLINE_V2 = b"\x13"
MANIFEST_V2 = b"\x14"
# write id, total length, chunk count, xxh3_128 digest of the whole value; then the sizes.
MANIFEST_HEADER = struct.Struct("<16sQI16s")
WRITE_ID_BYTES = 16


class Manifest(NamedTuple):
    """Where the chunks of one write of a big value are, and what they must add up to."""

    write_id: bytes
    total: int
    digest: bytes
    sizes: tuple[int, ...]


class Unreadable(NamedTuple):
    """A record that is not a readable nbcache record, and why."""

    reason: str


def digest(parts: Sequence[Buffer]) -> bytes:
    """The xxh3_128 digest of the concatenation of ``parts`` (not keyed: it finds damage,
    not forgery; the envelope's MAC does that)."""
    import xxhash

    hasher = xxhash.xxh3_128()
    for part in parts:
        hasher.update(part)
    return bytes(hasher.digest())


def chunk_key(key: str, write_id: bytes, index: int) -> str:
    """The key of chunk ``index`` of the write ``write_id`` of ``key``."""
    return f"{key}#chunk:{write_id.hex()}:{index}"


def manifest_chunk_keys(key: str, manifest: Manifest) -> list[str]:
    """The keys of every chunk ``manifest`` names, in order."""
    return [chunk_key(key, manifest.write_id, i) for i in range(len(manifest.sizes))]


def chunk_pieces(views: Sequence[memoryview], chunk_size: int) -> Iterator[list[memoryview]]:
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


def encode_manifest(write_id: bytes, sizes: Sequence[int], value_digest: bytes) -> bytes:
    """The manifest record of a write whose chunks have ``sizes``."""
    header = MANIFEST_HEADER.pack(write_id, sum(sizes), len(sizes), value_digest)
    return b"".join([header, struct.pack(f"<{len(sizes)}I", *sizes), MANIFEST_V2])


def decode_record(record: memoryview) -> memoryview | Manifest | Unreadable:
    """An inline value (a view into ``record``), a manifest to follow, or why neither."""
    record = byte_view(record)
    if record.nbytes == 0:
        return Unreadable("empty record")
    tag = record[-1:].tobytes()
    if tag == INLINE_V2:
        return record[:-1]
    if tag == MANIFEST_V2:
        return _parse_manifest(record[:-1])
    return Unreadable(f"not an nbcache record (unknown tag {tag!r})")


def _parse_manifest(body: memoryview) -> Manifest | Unreadable:
    if body.nbytes < MANIFEST_HEADER.size:
        return Unreadable("malformed manifest: truncated")
    write_id, total, count, value_digest = MANIFEST_HEADER.unpack_from(body)
    if body.nbytes != MANIFEST_HEADER.size + 4 * count:
        return Unreadable("malformed manifest: its length does not match its chunk count")
    sizes = struct.unpack_from(f"<{count}I", body, MANIFEST_HEADER.size)
    if sum(sizes) != total:
        return Unreadable("malformed manifest: chunk sizes do not add up to the total")
    return Manifest(write_id, total, value_digest, sizes)
