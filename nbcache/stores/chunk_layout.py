"""The bytes :class:`~nbcache.stores.chunked.ChunkedStore` keeps: records, manifests, chunk keys.

Every value is stored under its key as one *record* whose last byte tells its kind and
format version:

- an **inline** record (the value, then :data:`INLINE_V2`) holds a value that fits in one item;
- a **manifest** record names the chunks of a bigger value, stored under :func:`chunk_key`:
  its body (:data:`MANIFEST_HEADER`: write id, total length, chunk count, the xxh3_128 digest
  of the whole value, the length of the tail; then the size of every chunk as a 32-bit
  integer, then the value's last bytes, its *tail*), all little-endian; then an
  authentication tag over the key and the body (empty in an unsigned manifest); then
  :data:`MANIFEST_SIGNED` or :data:`MANIFEST_UNSIGNED`.

The tail lets the layers above read a big value's last bytes (where they keep their own
trailers) from the manifest alone. The tag makes a manifest planted by someone without the
secret unreadable *before* it sizes anything: a reader allocates a big value's memory only for
a manifest whose tag verifies.

The tag comes last so that an inline value starts where the inner store put the record: a
store that delivers records aligned delivers aligned values. (Records of format 1 had the tag
first, and manifests of format 2 had no tail; both read as unknown records, a miss.)

Also how a value is cut into chunk-sized pieces without copying it. Pure functions only: no
I/O, no logging. What cannot be read is returned as :class:`Unreadable` with the reason, for
the store to report.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from nbcache.stores.api import Buffer, byte_view

INLINE_V2 = b"\x13"
MANIFEST_UNSIGNED = b"\x15"
MANIFEST_SIGNED = b"\x16"
# write id, total length, chunk count, xxh3_128 digest of the whole value, tail length; then
# the sizes and the tail.
MANIFEST_HEADER = struct.Struct("<16sQI16sB")
WRITE_ID_BYTES = 16
#: Bytes of a big value's end kept in its manifest.
TAIL_BYTES = 32
#: No chunk is longer than memcached's largest item (``-I 1024m``): a manifest naming a longer
#: one is malformed, whoever wrote it.
MAX_CHUNK_BYTES = 1024 * 1024 * 1024


class Manifest(NamedTuple):
    """Where the chunks of one write of a big value are, and what they must add up to."""

    write_id: bytes
    total: int
    digest: bytes
    sizes: tuple[int, ...]
    tail: bytes


class ManifestRecord(NamedTuple):
    """A manifest as read, before it is trusted: its body, and the tag over key and body."""

    body: memoryview
    tag: memoryview
    signed: bool


class Unreadable(NamedTuple):
    """A record that is not a readable nbcache record, and why."""

    reason: str


def digest(parts: Sequence[Buffer]) -> bytes:
    """The xxh3_128 digest of the concatenation of ``parts`` (not keyed: it finds damage,
    not forgery; the envelope's MAC does that)."""
    value_hasher = hasher()
    for part in parts:
        value_hasher.update(part)
    return bytes(value_hasher.digest())


def hasher() -> Any:
    """A new xxh3_128 hasher (``update``, then ``digest``) for :func:`digest` in pieces."""
    import xxhash

    return xxhash.xxh3_128()


def write_version(write_id: bytes, value_digest: bytes) -> bytes:
    """What names one write of a big value: its write id, then its digest."""
    return write_id + value_digest


def manifest_version(manifest: Manifest) -> bytes:
    """The version of the write ``manifest`` describes (see :func:`write_version`)."""
    return write_version(manifest.write_id, manifest.digest)


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


def encode_manifest(
    write_id: bytes, sizes: Sequence[int], value_digest: bytes, tail: bytes
) -> bytes:
    """The body of the manifest of a write whose chunks have ``sizes``."""
    header = MANIFEST_HEADER.pack(write_id, sum(sizes), len(sizes), value_digest, len(tail))
    return b"".join([header, struct.pack(f"<{len(sizes)}I", *sizes), tail])


def signed_parts(key: str, body: Buffer) -> list[Buffer]:
    """What a manifest's tag covers: the key (length-prefixed) and the body. Binding the key
    means a manifest copied under another key does not verify."""
    key_bytes = key.encode("utf-8", "surrogatepass")
    return [len(key_bytes).to_bytes(8, "little"), key_bytes, body]


def manifest_record(body: bytes, tag: bytes | None) -> list[bytes]:
    """The record for a manifest ``body``: signed with ``tag``, or unsigned for None."""
    if tag is None:
        return [body, MANIFEST_UNSIGNED]
    return [body, tag, MANIFEST_SIGNED]


def decode_record(record: memoryview) -> memoryview | ManifestRecord | Unreadable:
    """An inline value (a view into ``record``), a manifest to check, or why neither."""
    record = byte_view(record)
    if record.nbytes == 0:
        return Unreadable("empty record")
    tag = record[-1:].tobytes()
    if tag == INLINE_V2:
        return record[:-1]
    if tag in (MANIFEST_SIGNED, MANIFEST_UNSIGNED):
        rest = record[:-1]
        if rest.nbytes < MANIFEST_HEADER.size:
            return Unreadable("malformed manifest: truncated")
        _, _, count, _, tail_size = MANIFEST_HEADER.unpack_from(rest)
        body_size = MANIFEST_HEADER.size + 4 * count + tail_size
        if body_size > rest.nbytes or (tag == MANIFEST_UNSIGNED and body_size != rest.nbytes):
            return Unreadable("malformed manifest: its length does not match its chunk count")
        return ManifestRecord(rest[:body_size], rest[body_size:], tag == MANIFEST_SIGNED)
    return Unreadable(f"not an nbcache record (unknown tag {tag!r})")


def parse_manifest(body: memoryview) -> Manifest | Unreadable:
    """The manifest in a checked ``body`` (see :func:`decode_record`), or why it is malformed."""
    write_id, total, count, value_digest, tail_size = MANIFEST_HEADER.unpack_from(body)
    sizes = struct.unpack_from(f"<{count}I", body, MANIFEST_HEADER.size)
    if sum(sizes) != total:
        return Unreadable("malformed manifest: chunk sizes do not add up to the total")
    if not sizes or max(sizes) > MAX_CHUNK_BYTES or min(sizes) == 0:
        return Unreadable("malformed manifest: a chunk size out of range")
    if tail_size > min(total, TAIL_BYTES):
        return Unreadable("malformed manifest: a tail longer than the value")
    tail = body[MANIFEST_HEADER.size + 4 * count :].tobytes()
    return Manifest(write_id, total, value_digest, sizes, tail)
