"""A big entry's MAC computed while its bytes land, so only its tail is left when they have.

A first hit of a big value spends as long checking the entry's MAC after the transfer as a
good share of the transfer itself. A chunked store that receives the value in place tells a
:class:`~nbcache.stores.api.PrefixWatch` how far the bytes have landed (they are not written
again); :class:`FollowedMac` hashes that prefix on a thread of its own (BLAKE3 releases the
GIL) while the rest arrives. When the envelope checks the entry's MAC it asks the follower
(:meth:`FollowedMac.verify`, in place of the signer's), which hashes what is left and compares.

The check is the same check: the MAC covers exactly the bytes the envelope would hash, and the
follower answers only for the very memory it followed (the payload's address and the header's
bytes must match what it hashed); for anything else it verifies in full, as the signer would.
Nothing is unpickled before :meth:`FollowedMac.verify` has said yes.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

from nbcache.entries.envelope import FORMAT, MAGIC, PREAMBLE, Envelope, mac_lead
from nbcache.entries.signing import KEY_ID_SIZE, MAC_SIZE, Signer
from nbcache.stores import buffers
from nbcache.stores.api import Buffer, PrefixWatch

log = logging.getLogger(__name__)

#: Bytes at the end of a received value left for the final check: a store may append bytes of
#: its own (a namespace's generation suffix) that are not the entry's and must not be hashed.
HOLD_BACK = 64 * 1024


class FollowedMac:
    """The keyed MAC of the entry under ``key`` (``size`` bytes as received, trailers and
    all), hashed as its prefix lands. A :class:`~nbcache.stores.api.PrefixWatch`.

    Call :meth:`close` when done with it (it ends the hashing thread), whatever happened.
    """

    def __init__(self, envelope: Envelope, signer: Signer, key: str, size: int) -> None:
        self._envelope = envelope
        self._signer = signer
        self._key = key
        self._limit = size - HOLD_BACK
        self._pieces: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._hasher: Any = None
        self._given_up = self._limit <= 0
        self._failed = False
        # What was hashed before the payload (to compare with what the envelope checks).
        self._key_id = b""
        self._before_payload: tuple[bytes, bytes] = (b"", b"")
        self._payload_address = 0
        self._payload_start = 0
        self._fed = 0  # bytes of the value (from its start) handed to the thread

    # -- as the bytes land (the reading thread) --------------------------------------------

    def landed(self, prefix: memoryview) -> None:
        """The value's first ``prefix.nbytes`` bytes are whole: hash them, on the thread."""
        if self._given_up:
            return
        if self._hasher is None and not self._start(prefix):
            return
        end = min(prefix.nbytes, self._limit)
        if end > self._fed:
            self._pieces.put(prefix[self._fed : end])
            self._fed = end

    def _start(self, prefix: memoryview) -> bool:
        """Begin hashing once the entry's header, key id and MAC have landed; False if not
        yet (or never: then nothing is followed)."""
        lead = mac_lead(prefix)
        if lead is None:
            return False  # not even the lead has landed
        magic, version, header_end = lead
        payload_start = header_end + KEY_ID_SIZE + MAC_SIZE
        if magic != MAGIC or version != FORMAT or payload_start >= self._limit:
            self._given_up = True
            return False
        if prefix.nbytes < payload_start:
            return False  # a header bigger than what has landed: wait for more
        if prefix.readonly:
            self._given_up = True  # its address cannot be taken: the envelope checks in full
            return False
        key_id = bytes(prefix[header_end : header_end + KEY_ID_SIZE])
        hasher = self._signer.hasher(key_id)
        if hasher is None:
            self._given_up = True  # no such key: the envelope refuses it in full
            return False
        header = bytes(prefix[PREAMBLE:header_end])
        lengths = self._envelope.mac_prefix(self._key, header)
        hasher.update(lengths)
        hasher.update(header)
        self._hasher = hasher
        self._key_id = key_id
        self._before_payload = (lengths, header)
        self._payload_start = payload_start
        self._payload_address = buffers.address(prefix) + payload_start
        self._fed = payload_start
        self._thread = threading.Thread(target=self._hash, name="nbcache-mac", daemon=True)
        self._thread.start()
        return True

    def _hash(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self._failed:
                continue
            try:
                self._hasher.update(piece)
            except Exception as problem:  # the envelope then checks in full
                log.debug("nbcache: could not hash an entry as it landed: %r", problem)
                self._failed = True
            del piece

    # -- the check (the reading thread, once the transfer is done) --------------------------

    def verify(
        self, key_id: bytes | memoryview, parts: Sequence[Buffer], mac: bytes | memoryview
    ) -> bool:
        """True if ``mac`` is the MAC of ``parts`` under the key called ``key_id`` (as
        :meth:`Signer.verify <nbcache.entries.signing.Signer.verify>`): only the part not
        hashed yet is hashed now, if ``parts`` are the bytes this follower followed."""
        hasher = self._finish()
        if hasher is not None and len(parts) == 3:
            lengths, header, payload = parts
            view = memoryview(payload)
            hashed = self._fed - self._payload_start
            if (
                bytes(key_id) == self._key_id
                and (bytes(lengths), bytes(header)) == self._before_payload
                and not view.readonly
                and view.nbytes >= hashed
                and buffers.address(view) == self._payload_address
            ):
                hasher.update(view[hashed:])
                return hmac.compare_digest(bytes(hasher.digest()), mac)
        return self._signer.verify(key_id, parts, mac)

    def _finish(self) -> Any:
        """The hasher, once everything handed to the thread is hashed (None: nothing usable)."""
        self.close()
        hasher, self._hasher = self._hasher, None
        return None if self._failed else hasher

    def close(self) -> None:
        """End the hashing thread (what was handed to it is hashed first)."""
        self._given_up = True
        if self._thread is not None:
            self._pieces.put(None)
            self._thread.join()
            self._thread = None


class MacFollowers:
    """The watches of one read (a :data:`~nbcache.stores.api.Watcher`): one
    :class:`FollowedMac` per big signed entry received, for the entry keys at positions
    ``first`` on of ``keys``. :meth:`close` them all once the read's entries are open."""

    def __init__(self, envelope: Envelope, keys: Sequence[str], first: int) -> None:
        self._envelope = envelope
        self._keys = keys
        self._first = first
        self._followers: dict[int, FollowedMac] = {}

    def __call__(self, position: int, size: int) -> PrefixWatch | None:
        signer = self._envelope.signer
        if position < self._first or signer is None:  # unsigned entries: no MAC to follow
            return None
        follower = FollowedMac(self._envelope, signer, self._keys[position], size)
        self._followers[position] = follower
        return follower

    def get(self, position: int) -> FollowedMac | None:
        """The follower of the entry at ``position`` of the read, if it was received so."""
        return self._followers.get(position)

    def close(self) -> None:
        for follower in self._followers.values():
            follower.close()
        self._followers.clear()
