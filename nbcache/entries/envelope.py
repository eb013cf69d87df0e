"""The versioned, signed envelope every stored value travels in.

Layout of an entry (all integers little-endian)::

    b"NBC" | format (1 byte) | header length (4) | header | key id (4) | MAC (32)
    | pickle head | padding | out-of-band buffer 0 | padding | buffer 1 | ...

Each out-of-band buffer starts at a multiple of :data:`~nbcache.stores.buffers.ALIGNMENT` (64) bytes
from the entry's first byte, after zero bytes of padding (at most 63): a store that delivers
the entry at an aligned address delivers every array in it aligned. The header records the
frames' sizes, not the padding; the reader recomputes the padding from the same rule. The
MAC covers the padding like every other byte after it.

The header (binary: it is read on every hit, so it costs well under a microsecond to parse)
says who wrote the entry (serializer, Python major.minor, cloudpickle version), whether the
pickle holds code pickled by value, when, how long the computation took, when it expires,
the sizes of the payload frames, a short tag and free JSON metadata (parsed only when asked
for). The MAC covers the namespace, the cache key, the header and the payload, so an entry
copied under another key, truncated or altered in any bit is refused. Refusal comes before
anything is unpickled: first the framing, then the MAC, then the versions, and only then the
pickle.

Plain data (numbers, text, containers, arrays, frames, instances of importable classes)
loads under any Python 3 minor version, so a team on two Python versions shares it. An entry
holding code pickled by value (a notebook function, a lambda, a notebook class: see
:mod:`nbcache.entries.by_value`) is refused by every other minor version than its writer's:
bytecode from another version can crash the interpreter outright.

An unsigned envelope (key id and MAC absent, MAC kind "none" in the header) serves the
in-process store, which nothing outside the process can write; a reader that has a signer
refuses unsigned entries, so there is no downgrade.

Opening hands pickle buffers that are writable and aligned (64 bytes from 64 KiB on, else 16):
where the store's memory is read-only or misaligned, the buffer is copied (logged at DEBUG
for a big one: the stores are meant to make that unnecessary).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import sys
import time
from typing import Any, NamedTuple

from nbcache.entries import serializer
from nbcache.entries.code_identity import CodeFingerprint
from nbcache.entries.signing import KEY_ID_SIZE, MAC_SIZE, Signer
from nbcache.exceptions import EntryRefused
from nbcache.stores import buffers as aligned
from nbcache.stores.api import Buffer, byte_view

log = logging.getLogger(__name__)

MAGIC = b"NBC"
#: 3: out-of-band buffers padded to 64-byte offsets. 4: header flags (code by value).
FORMAT = 4
_PREAMBLE = len(MAGIC) + 1 + 4
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"

# serializer id, Python major, minor, MAC kind, flags, created, expires, duration (NaN: none),
# frame count, cloudpickle version length, tag length, meta length
_FIXED = struct.Struct("<BBBBBdddIHHI")
_CODE_BY_VALUE = 1  # flag: the pickle holds code pickled by value
_SERIALIZERS = {serializer.NAME: 1}
_SERIALIZER_NAMES = {number: name for name, number in _SERIALIZERS.items()}
_MAC_KINDS = {"none": 0, "blake3": 1}
_MAC_NAMES = {number: name for name, number in _MAC_KINDS.items()}
_NONE = math.nan
_PADDING = bytes(aligned.ALIGNMENT - 1)


class Header(NamedTuple):
    """The fields of an entry's header (trusted only once its MAC has been verified)."""

    serializer: str
    python: str
    cloudpickle: str
    mac: str
    created: float
    expires: float | None
    duration: float | None
    sizes: list[int]
    tag: str = ""
    meta_json: bytes = b""
    code_by_value: bool = False

    @property
    def meta(self) -> dict[str, Any]:
        """The free metadata (parsed at each call: keep the result)."""
        return _parse_meta(self.meta_json)

    def pack(self) -> bytes:
        """The header's bytes."""
        version, tag = self.cloudpickle.encode(), self.tag.encode("utf-8", "surrogatepass")
        fixed = _FIXED.pack(
            _SERIALIZERS[self.serializer],
            *(int(part) for part in self.python.split(".")),
            _MAC_KINDS[self.mac],
            _CODE_BY_VALUE if self.code_by_value else 0,
            self.created,
            _NONE if self.expires is None else self.expires,
            _NONE if self.duration is None else self.duration,
            len(self.sizes),
            len(version),
            len(tag),
            len(self.meta_json),
        )
        sizes = struct.pack(f"<{len(self.sizes)}Q", *self.sizes)
        return b"".join((fixed, sizes, version, tag, self.meta_json))

    @classmethod
    def unpack(cls, raw: Buffer) -> Header:
        """Parse header bytes; :class:`EntryRefused` if they are not a well-formed header."""
        try:
            (kind, major, minor, mac, flags, created, expires, duration, count, version_size,
             tag_size, meta_size) = _FIXED.unpack_from(raw)  # fmt: skip
            offset = _FIXED.size + 8 * count
            sizes = list(struct.unpack_from(f"<{count}Q", raw, _FIXED.size)) if count else []
            end = offset + version_size + tag_size + meta_size
            if end != len(raw):
                raise EntryRefused("malformed header (lengths do not add up)")
            text = bytes(raw[offset:end])
            return cls(
                _SERIALIZER_NAMES.get(kind, f"#{kind}"),
                f"{major}.{minor}",
                text[:version_size].decode(),
                _MAC_NAMES.get(mac, f"#{mac}"),
                created,
                None if expires != expires else expires,  # NaN stands for None
                None if duration != duration else duration,
                sizes,
                text[version_size : version_size + tag_size].decode("utf-8", "surrogatepass"),
                text[version_size + tag_size :],
                bool(flags & _CODE_BY_VALUE),
            )
        except (struct.error, UnicodeDecodeError, MemoryError, OverflowError) as exc:
            raise EntryRefused(f"malformed header ({exc})") from exc


class Entry:
    """A value read from the cache, with what its envelope says about it (read-only)."""

    __slots__ = ("_meta", "created", "duration", "expires", "meta_json", "tag", "value")

    def __init__(
        self,
        value: Any,
        created: float,
        expires: float | None,
        duration: float | None = None,
        tag: str = "",
        meta_json: bytes = b"",
    ) -> None:
        self.value = value
        self.created = created
        self.expires = expires
        self.duration = duration
        self.tag = tag
        self.meta_json = meta_json
        self._meta: dict[str, Any] | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """The free metadata the writer attached, parsed on first use."""
        if self._meta is None:
            self._meta = _parse_meta(self.meta_json)
        return self._meta

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r}, created={self.created}, expires={self.expires}, "
            f"duration={self.duration}, tag={self.tag!r})"
        )


class Envelope:
    """Wraps values into entries and opens entries back into values, signing if given a signer."""

    def __init__(self, signer: Signer | None = None, context: str = "") -> None:
        """``context`` (a namespace) is bound into every MAC with the key: an entry copied
        from another namespace under the same key is refused too."""
        self.signer = signer
        self.context = context

    def seal(
        self,
        key: str,
        value: Any,
        expires: float | None,
        duration: float | None = None,
        meta: dict[str, Any] | None = None,
        tag: str = "",
        code_fingerprint: CodeFingerprint | None = None,
    ) -> list[Buffer]:
        """The entry for ``value`` under ``key``, as frames (big buffers are not copied).

        ``meta`` must be JSON-able; ``tag`` is a short string a reader can check without
        parsing ``meta``; ``code_fingerprint``, see :mod:`nbcache.entries.code_identity`.
        Raises :class:`~nbcache.exceptions.UnpicklableValueError` if the value can't be
        pickled.
        """
        frames = serializer.dumps(value, key, code_fingerprint)
        header_bytes = Header(
            serializer=serializer.NAME,
            python=PYTHON,
            cloudpickle=serializer.cloudpickle_version(),
            mac="blake3" if self.signer else "none",
            created=time.time(),
            expires=expires,
            duration=duration,
            sizes=frames.sizes,
            tag=tag,
            meta_json=json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
            if meta
            else b"",
            code_by_value=frames.code_by_value,
        ).pack()
        preamble = MAGIC + bytes([FORMAT]) + len(header_bytes).to_bytes(4, "little") + header_bytes
        if self.signer is not None:
            preamble += self.signer.key_id
        payload = _padded(len(preamble) + (MAC_SIZE if self.signer else 0), frames)
        if self.signer is None:
            return [preamble, *payload]
        mac = self.signer.sign(_signed_parts(self.context, key, header_bytes, payload))
        return [preamble + mac, *payload]

    def open_header(self, key: str, entry: Buffer) -> tuple[Header, list[memoryview]]:
        """Check an entry (format, MAC, versions) and split it; nothing is unpickled here.

        Raises :class:`EntryRefused` with a short reason when the entry is not to be trusted.
        """
        view = byte_view(entry)
        if len(view) < _PREAMBLE or bytes(view[:3]) != MAGIC:
            raise EntryRefused("not an nbcache entry")
        if view[3] != FORMAT:
            raise EntryRefused(f"unknown entry format {view[3]}")
        header_end = _PREAMBLE + int.from_bytes(view[4:_PREAMBLE], "little")
        header_bytes = view[_PREAMBLE:header_end]
        if len(header_bytes) != header_end - _PREAMBLE:
            raise EntryRefused("truncated entry")
        offset = header_end
        if self.signer is not None:
            mac_end = offset + KEY_ID_SIZE + MAC_SIZE
            if len(view) < mac_end:
                raise EntryRefused("truncated entry")
            key_id, mac = view[offset : offset + KEY_ID_SIZE], view[offset + KEY_ID_SIZE : mac_end]
            payload = view[mac_end:]
            parts = _signed_parts(self.context, key, header_bytes, [payload])
            if not self.signer.verify(key_id, parts, mac):
                raise EntryRefused("bad signature (tampered, another key, or another secret)")
            offset = mac_end
        header = Header.unpack(header_bytes)
        _check_writer(header, signed=self.signer is not None)
        frames = []
        for index, size in enumerate(header.sizes):
            if index:
                offset += -offset % aligned.ALIGNMENT
            frames.append(view[offset : offset + size])
            offset += size
        if offset != len(view):
            raise EntryRefused("truncated entry")
        return header, frames

    def open(
        self, key: str, entry: Buffer, code_fingerprint: CodeFingerprint | None = None
    ) -> Entry:
        """The value of a trusted entry; :class:`EntryRefused` if untrusted or unloadable.

        ``code_fingerprint``: see :mod:`nbcache.entries.code_identity`.
        """
        header, frames = self.open_header(key, entry)
        buffers = [_usable(key, buffer) for buffer in frames[1:]]
        value = serializer.loads(frames[0], buffers, code_fingerprint)
        return Entry(
            value, header.created, header.expires, header.duration, header.tag, header.meta_json
        )


def _padded(start: int, frames: serializer.Frames) -> list[Buffer]:
    """The payload frames, each out-of-band buffer preceded by the padding that aligns it.

    ``start`` is the payload's offset in the entry.
    """
    payload: list[Buffer] = [frames.head]
    offset = start + len(frames.head)
    for buffer in frames.buffers:
        padding = -offset % aligned.ALIGNMENT
        if padding:
            payload.append(_PADDING[:padding])
        payload.append(buffer)
        offset += padding + buffer.nbytes
    return payload


def _usable(key: str, buffer: memoryview) -> memoryview:
    """``buffer`` if arrays may be rebuilt on it (writable, aligned), else an aligned copy.

    Rebuilt arrays share their buffers, so they must be the caller's own writable memory.
    """
    if aligned.is_aligned(buffer):
        return buffer
    if buffer.nbytes >= aligned.BIG:
        log.debug(
            "nbcache: copying a %d-byte buffer of %r: the store delivered it %s",
            buffer.nbytes,
            key,
            "read-only" if buffer.readonly else "misaligned",
        )
    return aligned.copy_aligned(buffer)


def _signed_parts(context: str, key: str, header: Buffer, payload: list[Buffer]) -> list[Buffer]:
    # The key is bound into the MAC: an entry replayed under another key fails verification.
    # Key and header are length-prefixed; the payload comes last, so its frames need no
    # separators and the writer's frames and the reader's single run give the same MAC.
    context_bytes = context.encode("utf-8", "surrogatepass")
    key_bytes = key.encode("utf-8", "surrogatepass")
    header_size = memoryview(header).nbytes
    return [
        len(context_bytes).to_bytes(8, "little"),
        context_bytes,
        len(key_bytes).to_bytes(8, "little"),
        key_bytes,
        header_size.to_bytes(8, "little"),
        header,
        *payload,
    ]


def _check_writer(header: Header, signed: bool) -> None:
    """Refuse an entry this process must not load (checked after the MAC, before loading)."""
    if signed and header.mac != "blake3":
        raise EntryRefused("unsigned entry where signed entries are required")
    if header.serializer != serializer.NAME:
        raise EntryRefused(f"written with serializer {header.serializer!r}")
    if header.python != PYTHON:
        if header.python.partition(".")[0] != PYTHON.partition(".")[0]:
            raise EntryRefused(f"written by Python {header.python}, this is Python {PYTHON}")
        if header.code_by_value:
            raise EntryRefused(
                f"written by Python {header.python} and holds code pickled by value (a "
                f"notebook function, lambda or class), which only Python {header.python} "
                f"can load; this is Python {PYTHON}"
            )
    if header.cloudpickle.split(".")[0] != serializer.cloudpickle_version().split(".")[0]:
        raise EntryRefused(
            f"written by cloudpickle {header.cloudpickle}, "
            f"this is {serializer.cloudpickle_version()}"
        )


def _parse_meta(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    meta = json.loads(raw)
    return meta if isinstance(meta, dict) else {}
