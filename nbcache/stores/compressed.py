"""Compression as a wrapping store: values that shrink are stored compressed, others as they are.

Every value is stored as one record whose last byte tells its kind:

- the value then ``_RAW_V2``, for values too small to bother with or that do not compress
  (random floats, already compressed images): reading them costs nothing more, and the value
  starts where the inner store put the record (aligned, for a big one);
- the zlib stream, the value's length (8 bytes, little-endian), then ``_ZLIB_V2``.

(Records of format 1 had the tag first; they read as unreadable, a miss.)

Whether a value compresses is first guessed from samples taken across it, so incompressible
data costs a few hundred microseconds, not a full compression pass; a value whose whole
compression saves less than :data:`MIN_SAVING` is stored raw anyway. On loopback or a fast
network compression costs more time than it saves: it is for slow links or small servers.

Reads decompress into one new buffer of the recorded length
(:func:`nbcache.stores.buffers.allocate`: aligned), which the caller owns and may write to (rebuilt
arrays live in it). A record that does not decompress to exactly its
recorded length is a miss, logged at DEBUG. Records are decompressed before the envelope's
MAC is checked, so the recorded length is bounded by what zlib can expand the stream to:
a forged record cannot make a reader allocate more than about a thousand times its size.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence

from nbcache.stores import buffers as aligned
from nbcache.stores.api import (
    NO_VALUE,
    BigValue,
    Buffer,
    ByteStore,
    CasToken,
    NoValue,
    Unchanged,
    Versioned,
    VersionedStore,
    byte_view,
    peek,
    total_size,
)

log = logging.getLogger(__name__)

_RAW_V2 = b"\x23"
_ZLIB_V2 = b"\x24"
_LENGTH = struct.Struct("<Q")

#: Values smaller than this are stored raw: compressing them saves too little to matter.
MIN_SIZE = 4096
#: Compression must shrink a value by at least this fraction to be kept.
MIN_SAVING = 0.10
#: Bytes in each of the samples that decide whether a value is worth compressing.
SAMPLE_BYTES = 32 * 1024
SAMPLES = 4
#: zlib never expands more than ~1032:1; a record claiming more is forged or corrupt.
_MAX_EXPANSION = 1100
#: Bytes decompressed per step, copied into the value's buffer (small: stays in cache).
_STEP = 1024 * 1024


class CompressedStore:
    """A :class:`~nbcache.stores.api.ByteStore` that zlib-compresses, in ``inner``, what compresses.

    ``level`` is zlib's (1 is fastest; higher levels rarely pay on numeric data). Values
    below ``min_size`` bytes and values whose samples do not shrink by :data:`MIN_SAVING`
    are stored raw. Faults of ``inner`` propagate unchanged. Thread-safe if ``inner`` is.
    """

    def __init__(self, inner: ByteStore, level: int = 1, min_size: int = MIN_SIZE) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"zlib level is 0 to 9, not {level}")
        self.inner = inner
        # Checked once: a runtime protocol check costs tens of microseconds.
        self._versioned = inner if isinstance(inner, VersionedStore) else None
        self.level = level
        self.min_size = min_size

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> Buffer | NoValue:
        return self._decode(key, self.inner.get(key))

    def get_many(self, keys: Sequence[str]) -> list[Buffer | NoValue]:
        records = self.inner.get_many(keys)
        return [self._decode(key, record) for key, record in zip(keys, records, strict=True)]

    def get_many_versioned(
        self, keys: Sequence[str], held: Sequence[bytes | None]
    ) -> list[Versioned]:
        """Values and the inner store's versions of their records (none if it names none)."""
        inner = self._versioned
        if inner is None:
            return [(value, None) for value in self.get_many(keys)]
        results: list[Versioned] = []
        for key, (record, version) in zip(keys, inner.get_many_versioned(keys, held), strict=True):
            if isinstance(record, Unchanged):
                results.append((record, version))
                continue
            value = self._decode(key, record)
            results.append((value, None if isinstance(value, NoValue) else version))
        return results

    def gets(self, key: str) -> tuple[Buffer | NoValue, CasToken | None]:
        record, token = self.inner.gets(key)
        value = self._decode(key, record)
        return (NO_VALUE, None) if isinstance(value, NoValue) else (value, token)

    def peek(self, key: str) -> tuple[Buffer | BigValue | NoValue, CasToken | None]:
        """Like :meth:`gets`, but a big value is described, not read (nor decompressed)."""
        record, token = peek(self.inner, key)
        if not isinstance(record, BigValue):
            value = self._decode(key, record)
            return (NO_VALUE, None) if isinstance(value, NoValue) else (value, token)
        tail = record.tail
        if tail[-1:] == _RAW_V2:
            return BigValue(record.size - 1, tail[:-1]), token
        if tail[-1:] == _ZLIB_V2 and len(tail) >= 1 + _LENGTH.size:
            (size,) = _LENGTH.unpack_from(tail, len(tail) - 1 - _LENGTH.size)
            return BigValue(size, b""), token
        return NO_VALUE, None

    def _decode(self, key: str, record: Buffer | NoValue) -> Buffer | NoValue:
        if isinstance(record, NoValue):
            return NO_VALUE
        view = byte_view(record)
        tag = view[-1:].tobytes()
        if tag == _RAW_V2:
            return view[:-1]
        stream_end = view.nbytes - 1 - _LENGTH.size
        if tag == _ZLIB_V2 and stream_end >= 0:
            (size,) = _LENGTH.unpack_from(view, stream_end)
            stream = view[:stream_end]
            if size <= _MAX_EXPANSION * stream.nbytes + 1024:
                value = _decompress(stream, size)
                if value is not None:
                    return value
        log.debug("nbcache: compressed value %r: unreadable record", key)
        return NO_VALUE

    # -- writing ----------------------------------------------------------------------------

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self.inner.set(key, self._encode(value), ttl)

    def set_versioned(
        self, key: str, value: Sequence[Buffer], ttl: float | None
    ) -> tuple[bool, bytes | None]:
        """Store like :meth:`set`; the version is the inner store's, of the record stored."""
        inner = self._versioned
        if inner is None:
            return self.set(key, value, ttl), None
        return inner.set_versioned(key, self._encode(value), ttl)

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self.inner.add(key, self._encode(value), ttl)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        return self.inner.cas(key, self._encode(value), ttl, token)

    def _encode(self, value: Sequence[Buffer]) -> list[Buffer]:
        """The record for ``value``: compressed if that saves enough, else raw (not copied)."""
        size = total_size(value)
        if size < self.min_size or not self._worth_trying(value, size):
            return [*value, _RAW_V2]
        compressor = zlib.compressobj(self.level)
        pieces: list[Buffer] = []
        compressed = 0
        limit = size * (1 - MIN_SAVING)
        for part in value:
            piece = compressor.compress(part)
            compressed += len(piece)
            if compressed > limit:
                return [*value, _RAW_V2]
            if piece:
                pieces.append(piece)
        pieces.append(compressor.flush())
        if compressed + len(pieces[-1]) > limit:
            return [*value, _RAW_V2]
        return [*pieces, _LENGTH.pack(size), _ZLIB_V2]

    def _worth_trying(self, value: Sequence[Buffer], size: int) -> bool:
        """True if samples from across the value shrink by :data:`MIN_SAVING`."""
        sample = _samples(value, size)
        return len(zlib.compress(sample, self.level)) <= len(sample) * (1 - MIN_SAVING)

    # -- the rest ---------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def clear(self) -> bool:
        return self.inner.clear()

    def close(self) -> None:
        self.inner.close()


def _samples(value: Sequence[Buffer], size: int) -> bytes:
    """:data:`SAMPLES` runs of :data:`SAMPLE_BYTES` spread evenly over the value, joined."""
    if size <= SAMPLES * SAMPLE_BYTES:
        return b"".join(value)
    views = [byte_view(part) for part in value]
    starts = [index * (size - SAMPLE_BYTES) // (SAMPLES - 1) for index in range(SAMPLES)]
    runs: list[bytes] = []
    for start in starts:
        runs.append(_slice(views, start, SAMPLE_BYTES))
    return b"".join(runs)


def _slice(views: Sequence[memoryview], start: int, length: int) -> bytes:
    """``length`` bytes from offset ``start`` of the concatenated views."""
    out: list[bytes] = []
    for view in views:
        if start >= view.nbytes:
            start -= view.nbytes
            continue
        take = view[start : start + length]
        out.append(take.tobytes())
        length -= take.nbytes
        start = 0
        if not length:
            break
    return b"".join(out)


def _decompress(stream: memoryview, size: int) -> memoryview | None:
    """The ``size`` bytes ``stream`` decompresses to, or None if it does not do exactly that."""
    target = aligned.allocate(size)  # assigning through a view copies once, not twice
    decompressor = zlib.decompressobj()
    filled = 0
    pending: Buffer = stream
    try:
        while not decompressor.eof:
            piece = decompressor.decompress(pending, _STEP)
            if filled + len(piece) > size:
                return None
            target[filled : filled + len(piece)] = piece
            filled += len(piece)
            pending = decompressor.unconsumed_tail
            if not piece and not pending:
                break  # truncated: no more input, stream not finished
    except zlib.error:
        return None
    if filled != size or not decompressor.eof or decompressor.unused_data:
        return None
    return target
