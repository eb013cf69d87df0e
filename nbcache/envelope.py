"""The versioned, signed envelope every stored value travels in.

Layout of an entry (all integers little-endian)::

    b"NBC" | format (1 byte) | header length (4) | header (JSON) | key id (4) | MAC (32)
    | pickle head | out-of-band buffer 0 | buffer 1 | ...

The header says who wrote the entry (serializer, Python major.minor, cloudpickle version), when,
how long the computation took, when it expires, free metadata for explanations, and the sizes of
the payload frames. The MAC covers the header, the cache key and the payload, so an entry
copied under another key, truncated or altered in any bit is refused. Refusal comes before
anything is unpickled: first the MAC, then the versions (a cloudpickled lambda from another
Python minor version can crash this one outright), and only then the pickle.

An unsigned envelope (key id and MAC absent, ``"mac": "none"`` in the header) serves the
in-process store, which nothing outside the process can write; a reader that has a signer
refuses unsigned entries, so there is no downgrade.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import serializer
from .api import Buffer
from .exceptions import EntryRefused
from .signing import KEY_ID_SIZE, MAC_SIZE, Signer

MAGIC = b"NBC"
FORMAT = 1
_PREAMBLE = len(MAGIC) + 1 + 4
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class Entry:
    """A value read from the cache, with what its envelope says about it."""

    value: Any
    created: float
    expires: float | None
    duration: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Header:
    """The decoded header of an entry whose MAC (if any) has been verified."""

    created: float
    expires: float | None
    duration: float | None
    meta: dict[str, Any]
    sizes: list[int]


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
    ) -> list[Buffer]:
        """The entry for ``value`` under ``key``, as frames (big buffers are not copied).

        Raises :class:`~nbcache.exceptions.UnpicklableValueError` if the value can't be pickled.
        """
        frames = serializer.dumps(value, key)
        header = {
            "serializer": serializer.NAME,
            "python": PYTHON,
            "cloudpickle": serializer.cloudpickle_version(),
            "created": time.time(),
            "expires": expires,
            "duration": duration,
            "meta": meta or {},
            "sizes": frames.sizes,
            "mac": "blake3" if self.signer else "none",
        }
        header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        preamble = MAGIC + bytes([FORMAT]) + len(header_bytes).to_bytes(4, "little") + header_bytes
        payload: list[Buffer] = [frames.head, *frames.buffers]
        if self.signer is None:
            return [preamble, *payload]
        mac = self.signer.sign(_signed_parts(self.context, key, header_bytes, payload))
        return [preamble + self.signer.key_id + mac, *payload]

    def open_header(self, key: str, entry: Buffer) -> tuple[Header, list[memoryview]]:
        """Check an entry (format, MAC, versions) and split it; nothing is unpickled here.

        Raises :class:`EntryRefused` with a short reason when the entry is not to be trusted.
        """
        view = memoryview(entry).cast("B") if memoryview(entry).format != "B" else memoryview(entry)
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
        header = _parse_header(header_bytes, signed=self.signer is not None)
        if sum(header.sizes) != len(view) - offset:
            raise EntryRefused("truncated entry")
        frames = []
        for size in header.sizes:
            frames.append(view[offset : offset + size])
            offset += size
        return header, frames

    def open(self, key: str, entry: Buffer) -> Entry:
        """The value of a trusted entry; :class:`EntryRefused` if untrusted or unloadable."""
        header, frames = self.open_header(key, entry)
        buffers = frames[1:]
        if buffers and buffers[0].readonly:
            # Rebuilt arrays share their buffers: they must be writable memory of the caller's.
            buffers = [memoryview(bytearray(buffer)) for buffer in buffers]
        value = serializer.loads(frames[0], buffers)
        return Entry(value, header.created, header.expires, header.duration, header.meta)


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


def _parse_header(raw: memoryview, signed: bool) -> Header:
    try:
        header = json.loads(bytes(raw))
        mac = header["mac"]
        written_by = (header["serializer"], header["python"], header["cloudpickle"])
        result = Header(
            created=float(header["created"]),
            expires=None if header["expires"] is None else float(header["expires"]),
            duration=None if header["duration"] is None else float(header["duration"]),
            meta=dict(header["meta"]),
            sizes=[int(size) for size in header["sizes"]],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise EntryRefused(f"malformed header ({exc})") from exc
    if signed and mac != "blake3":
        raise EntryRefused("unsigned entry where signed entries are required")
    serializer_name, python, cloudpickle = written_by
    if serializer_name != serializer.NAME:
        raise EntryRefused(f"written with serializer {serializer_name!r}")
    if python != PYTHON:
        raise EntryRefused(f"written by Python {python}, this is Python {PYTHON}")
    if str(cloudpickle).split(".")[0] != serializer.cloudpickle_version().split(".")[0]:
        raise EntryRefused(
            f"written by cloudpickle {cloudpickle}, this is {serializer.cloudpickle_version()}"
        )
    return result
