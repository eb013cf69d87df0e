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

import functools
import json
import logging
import math
import struct
import sys
import time
from collections.abc import Callable
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
# The fixed fields after the four writer bytes (serializer id, Python major, minor, MAC kind).
_FLAGS_TIMES_AND_LENGTHS = struct.Struct("<BdddIHHI")
_LEAD = struct.Struct("<3sBI")  # magic, format, header length
# An entry of one frame up to its header's text fields: the preamble, the writer bytes, the
# flags and fixed fields after them, and the frame's size.
_ONE_FRAME = struct.Struct("<3sBI4sxdddIHHIQ")
_ONE_FRAME_TEXT_AT = _ONE_FRAME.size
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


class Entry(NamedTuple):
    """A value read from the cache, with what its envelope says about it (read-only)."""

    value: Any
    created: float
    expires: float | None
    duration: float | None = None
    tag: str = ""
    meta_json: bytes = b""

    @property
    def meta(self) -> dict[str, Any]:
        """The free metadata the writer attached (parsed at each call: keep the result)."""
        return _parse_meta(self.meta_json)


# Builds an Entry from a tuple in C: it runs on every hit.
_new_entry = tuple.__new__


class Envelope:
    """Wraps values into entries and opens entries back into values, signing if given a signer."""

    def __init__(
        self, signer: Signer | None = None, context: str = "", digests: Signer | None = None
    ) -> None:
        """``context`` (a namespace) is bound into every MAC with the key: an entry copied
        from another namespace under the same key is refused too. ``digests`` (a signer for
        another purpose than ``signer``'s) keys :attr:`secret_digest`."""
        self.signer = signer
        self.context = context
        #: For values whose digests go into an entry's metadata but must not be guessable by
        #: whoever can read the server (environment variables hold passwords): a digest
        #: keyed with the cache's secret; None for entries that never leave the process (any
        #: digest will do).
        self.secret_digest: Callable[[bytes], str] | None = (
            None if digests is None else digests.hex_digest
        )
        context_bytes = context.encode("utf-8", "surrogatepass")
        self._context_prefix = len(context_bytes).to_bytes(8, "little") + context_bytes
        self._mac_kind = "blake3" if signer else "none"
        # What this process writes, as a reader compares it (cloudpickle's version is read on
        # first use: importing cloudpickle is not cheap).
        self._own_writer = bytes(
            [_SERIALIZERS[serializer.NAME], *sys.version_info[:2], _MAC_KINDS[self._mac_kind]]
        )
        self._own_version: bytes | None = None

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
        head, buffers, code_by_value = serializer.dumps(value, key, code_fingerprint)
        writer, version = _writer_fields(PYTHON, serializer.cloudpickle_version(), self._mac_kind)
        sizes = [len(head), *(buffer.nbytes for buffer in buffers)] if buffers else [len(head)]
        tag_bytes = tag.encode("utf-8", "surrogatepass")
        meta_json = (
            json.dumps(meta, separators=(",", ":"), allow_nan=False).encode() if meta else b""
        )
        header = b"".join(
            (
                writer,
                _FLAGS_TIMES_AND_LENGTHS.pack(
                    _CODE_BY_VALUE if code_by_value else 0,
                    time.time(),
                    _NONE if expires is None else expires,
                    _NONE if duration is None else duration,
                    len(sizes),
                    len(version),
                    len(tag_bytes),
                    len(meta_json),
                ),
                struct.pack(f"<{len(sizes)}Q", *sizes),
                version,
                tag_bytes,
                meta_json,
            )
        )
        preamble = _LEAD.pack(MAGIC, FORMAT, len(header)) + header
        if self.signer is None:
            if not buffers:
                return [preamble, head]
            return [preamble, *_padded(len(preamble), head, buffers)]
        preamble += self.signer.key_id
        payload = _padded(len(preamble) + MAC_SIZE, head, buffers)
        mac = self.signer.sign(self._signed_parts(key, header, payload))
        return [preamble + mac, *payload]

    def open_header(self, key: str, entry: Buffer) -> tuple[Header, list[memoryview]]:
        """Check an entry (format, MAC, versions) and split it; nothing is unpickled here.

        Raises :class:`EntryRefused` with a short reason when the entry is not to be trusted.
        """
        view = byte_view(entry)
        header_end, payload = self._verified(key, view)
        header = Header.unpack(view[_PREAMBLE:header_end])
        _check_writer(header, signed=self.signer is not None)
        return header, _frames(view, header.sizes, payload)

    def open(
        self, key: str, entry: Buffer, code_fingerprint: CodeFingerprint | None = None
    ) -> Entry:
        """The value of a trusted entry; :class:`EntryRefused` if untrusted or unloadable.

        ``code_fingerprint``: see :mod:`nbcache.entries.code_identity`.
        """
        opened = self.open_tagged(key, entry, None, code_fingerprint)
        assert opened is not None
        return opened

    def reopen_header(self, key: str, entry: Buffer) -> tuple[Header, list[memoryview]]:
        """Like :meth:`open_header`, without checking the MAC again.

        Only for the bytes of an entry this envelope has verified or sealed under ``key``,
        read from memory nothing else can have written since (a sealed memory file).
        """
        view = byte_view(entry)
        header_end, payload = self._verified(key, view, check_mac=False)
        header = Header.unpack(view[_PREAMBLE:header_end])
        _check_writer(header, signed=self.signer is not None)
        return header, _frames(view, header.sizes, payload)

    def reopen(
        self, key: str, entry: Buffer, code_fingerprint: CodeFingerprint | None = None
    ) -> Entry:
        """Like :meth:`open`, without checking the MAC again: see :meth:`reopen_header`."""
        header, frames = self.reopen_header(key, entry)
        return _loaded(key, header, frames, code_fingerprint)

    def open_tagged(
        self,
        key: str,
        entry: Buffer,
        tag: str | None,
        code_fingerprint: CodeFingerprint | None = None,
    ) -> Entry | None:
        """:meth:`open` for an entry that must carry ``tag`` (ASCII; None: any tag): None,
        with nothing unpickled, if it carries another one."""
        view = entry if type(entry) is bytes else byte_view(entry)
        # The usual small entry is one frame written by this very writer: read it with one
        # unpack, without a header object or version strings. Anything else, the long way.
        try:
            (magic, version, header_size, writer, created, expires, duration, count,
             version_size, tag_size, meta_size, size) = _ONE_FRAME.unpack_from(view)  # fmt: skip
        except struct.error:
            count = 0
            header_end, payload = self._verified(key, view)  # short: raises if not an entry
        else:
            header_end = _PREAMBLE + header_size
            if self.signer is None and magic == MAGIC and version == FORMAT:
                payload = header_end  # unsigned (in-process): the framing is all to check
                if len(view) < header_end:
                    raise EntryRefused("truncated entry")
            else:
                header_end, payload = self._verified(key, view)
        if count == 1 and writer == self._own_writer and payload + size == len(view):
            tag_at = _ONE_FRAME_TEXT_AT + version_size
            meta_at = tag_at + tag_size
            own_version = self._own_version or self._read_own_version()
            if meta_at + meta_size == header_end and view[_ONE_FRAME_TEXT_AT:tag_at] == own_version:
                if tag is None:
                    tag = str(view[tag_at:meta_at], "utf-8", "surrogatepass") if tag_size else ""
                elif str(view[tag_at:meta_at], "latin-1") != tag:
                    return None
                fields = (
                    serializer.loads(view[payload:], [], code_fingerprint),
                    created,
                    None if expires != expires else expires,  # NaN stands for None
                    None if duration != duration else duration,
                    tag,
                    bytes(view[meta_at:header_end]) if meta_size else b"",
                )
                return _new_entry(Entry, fields)  # type: ignore[no-any-return]
        view = byte_view(view)
        header = Header.unpack(view[_PREAMBLE:header_end])
        _check_writer(header, signed=self.signer is not None)
        if tag is not None and header.tag != tag:
            return None
        return _loaded(key, header, _frames(view, header.sizes, payload), code_fingerprint)

    def _read_own_version(self) -> bytes:
        self._own_version = serializer.cloudpickle_version().encode()
        return self._own_version

    def _verified(
        self, key: str, view: bytes | memoryview, *, check_mac: bool = True
    ) -> tuple[int, int]:
        """Where the header ends and the payload starts in a well-framed, authentic entry.

        Raises :class:`EntryRefused` for anything else; the header is not parsed here.
        ``check_mac`` false: the MAC is not checked (see :meth:`reopen_header`).
        """
        try:
            magic, version, header_size = _LEAD.unpack_from(view)
        except struct.error:
            raise EntryRefused("not an nbcache entry") from None
        if magic != MAGIC:
            raise EntryRefused("not an nbcache entry")
        if version != FORMAT:
            raise EntryRefused(f"unknown entry format {version}")
        header_end = _PREAMBLE + header_size
        if len(view) < header_end:
            raise EntryRefused("truncated entry")
        if self.signer is None:
            return header_end, header_end
        mac_end = header_end + KEY_ID_SIZE + MAC_SIZE
        if len(view) < mac_end:
            raise EntryRefused("truncated entry")
        if not check_mac:
            return header_end, mac_end
        key_id = view[header_end : header_end + KEY_ID_SIZE]
        mac = view[mac_end - MAC_SIZE : mac_end]
        parts = self._signed_parts(key, view[_PREAMBLE:header_end], [view[mac_end:]])
        if not self.signer.verify(key_id, parts, mac):
            raise EntryRefused("bad signature (tampered, another key, or another secret)")
        return header_end, mac_end

    def _signed_parts(self, key: str, header: Buffer, payload: list[Buffer]) -> list[Buffer]:
        # The key is bound into the MAC: an entry replayed under another key fails
        # verification. Context, key and header are length-prefixed; the payload comes last,
        # so its frames need no separators and the writer's frames and the reader's single
        # run give the same MAC.
        key_bytes = key.encode("utf-8", "surrogatepass")
        lengths = b"".join(
            (
                self._context_prefix,
                len(key_bytes).to_bytes(8, "little"),
                key_bytes,
                memoryview(header).nbytes.to_bytes(8, "little"),
            )
        )
        return [lengths, header, *payload]


@functools.lru_cache(maxsize=8)
def _writer_fields(python: str, cloudpickle: str, mac: str) -> tuple[bytes, bytes]:
    """The writer fields of an entry as they appear in its header: the four bytes of serializer
    id, Python major and minor and MAC kind, then the cloudpickle version text."""
    major, minor = (int(part) for part in python.split("."))
    return (
        bytes([_SERIALIZERS[serializer.NAME], major, minor, _MAC_KINDS[mac]]),
        cloudpickle.encode(),
    )


def _loaded(
    key: str, header: Header, frames: list[memoryview], code_fingerprint: CodeFingerprint | None
) -> Entry:
    """The entry whose checked header and frames are given: its value unpickled."""
    buffers = [_usable(key, buffer) for buffer in frames[1:]]
    value = serializer.loads(frames[0], buffers, code_fingerprint)
    return Entry(
        value, header.created, header.expires, header.duration, header.tag, header.meta_json
    )


def _frames(view: memoryview, sizes: list[int], offset: int) -> list[memoryview]:
    """The payload frames of an entry at their aligned offsets; EntryRefused if they do not
    fill the entry exactly."""
    frames = []
    for index, size in enumerate(sizes):
        if index:
            offset += -offset % aligned.ALIGNMENT
        frames.append(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise EntryRefused("truncated entry")
    return frames


def _padded(start: int, head: bytes, buffers: tuple[memoryview, ...]) -> list[Buffer]:
    """The payload frames, each out-of-band buffer preceded by the padding that aligns it.

    ``start`` is the payload's offset in the entry.
    """
    payload: list[Buffer] = [head]
    offset = start + len(head)
    for buffer in buffers:
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
