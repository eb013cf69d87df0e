"""Keyed BLAKE3 MACs over entries, with key rotation.

BLAKE3 in keyed mode is a cryptographic MAC that runs at several GB/s on one core, so signing a
256 MiB result costs tens of milliseconds (HMAC-SHA256 would cost ~150 ms). Each secret is turned
into a MAC key by BLAKE3's key derivation with a context string, so the same secret used for
another purpose never yields this key. A short key id travels with each entry so a reader with
several secrets (rotation) checks only the one that signed it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence

from nbcache.exceptions import ConfigurationError
from nbcache.stores.api import Buffer

MAC_SIZE = 32
KEY_ID_SIZE = 4
_CONTEXT = "nbcache 2026-11 cache entry MAC v1"
#: Entries smaller than this are joined before hashing (a copy that costs less than updates).
_JOIN_BELOW = 64 * 1024
_forked = False


def _note_fork() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


class Signer:
    """Signs with the first secret; verifies with any of them (rotation: new first, old after).

    ``purpose`` separates uses of one secret: signers for different purposes derive
    different keys, so a MAC made for one is never valid for another.
    """

    def __init__(self, secrets: Sequence[bytes], purpose: str = "cache entry") -> None:
        import blake3

        if not secrets:
            raise ConfigurationError("a Signer needs at least one secret")
        for secret in secrets:
            if len(secret) < 16:
                raise ConfigurationError(
                    "a signing secret must be at least 16 bytes long; generate one with "
                    "`python -c 'import secrets; print(secrets.token_hex(32))'`"
                )
        self._blake3 = blake3.blake3
        context = _CONTEXT if purpose == "cache entry" else f"{_CONTEXT} for {purpose}"
        self._keys = [blake3.blake3(s, derive_key_context=context).digest() for s in secrets]
        self._ids = [blake3.blake3(k).digest()[:KEY_ID_SIZE] for k in self._keys]
        # Key ids are public (stored in the clear beside each MAC): looked up, not compared
        # in constant time. The first secret wins if two derive the same id.
        self._key_by_id: dict[bytes, bytes] = {}
        for key_id, key in zip(self._ids, self._keys, strict=True):
            self._key_by_id.setdefault(key_id, key)

    @property
    def key_id(self) -> bytes:
        """The id of the signing key, to store beside the MAC."""
        return self._ids[0]

    def sign(self, parts: Sequence[Buffer]) -> bytes:
        """The MAC of the concatenation of ``parts`` (bytes or flat byte views) under the
        signing key.

        The caller makes the concatenation unambiguous (length prefixes where needed).
        """
        return self._mac(self._keys[0], parts)

    def verify(
        self, key_id: bytes | memoryview, parts: Sequence[Buffer], mac: bytes | memoryview
    ) -> bool:
        """True if ``mac`` is the MAC of ``parts`` under the key called ``key_id``."""
        key = self._key_by_id.get(bytes(key_id))
        return key is not None and hmac.compare_digest(self._mac(key, parts), mac)

    def tag(self, parts: Sequence[Buffer]) -> bytes:
        """The signing key's id and MAC of ``parts``, as one tag (an ``Authenticator``)."""
        return self.key_id + self.sign(parts)

    def check(self, parts: Sequence[Buffer], tag: Buffer) -> bool:
        """True if ``tag`` (from :meth:`tag`) is valid for ``parts`` under any key."""
        view = memoryview(tag)
        if view.nbytes != KEY_ID_SIZE + MAC_SIZE:
            return False
        return self.verify(view[:KEY_ID_SIZE], parts, view[KEY_ID_SIZE:])

    def hex_digest(self, raw: bytes) -> str:
        """A digest of ``raw`` that only holders of the signing secret can make or check:
        the first 16 bytes of its MAC under the signing key, as hex."""
        return self._mac(self._keys[0], [raw])[:16].hex()

    def _mac(self, key: bytes, parts: Sequence[Buffer]) -> bytes:
        size = 0
        for part in parts:
            size += len(part) if type(part) is bytes else memoryview(part).nbytes
        if size < _JOIN_BELOW:
            # A small entry (most hits): joined and hashed in one call, about twice as fast.
            return bytes(self._blake3(b"".join(parts), key=key).digest())
        # AUTO threads: big parts are hashed on every core. Not in a forked child: blake3's
        # thread pool is the parent's, and waiting on it there never ends.
        threads = 1 if _forked else self._blake3.AUTO
        hasher = self._blake3(key=key, max_threads=threads)
        for part in parts:
            hasher.update(part)
        return bytes(hasher.digest())
