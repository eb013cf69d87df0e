"""The two ready-made caches: in-process :class:`SimpleCache` and shared :class:`MemcachedCache`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nbcache.cache import DEFAULT_TIMEOUT, Cache
from nbcache.entries.envelope import Envelope
from nbcache.entries.secrets import SecretSpec, resolve_secrets
from nbcache.entries.signing import Signer
from nbcache.stores.api import ByteStore
from nbcache.stores.memory import MemoryStore

if TYPE_CHECKING:
    import ssl


class SimpleCache(Cache):
    """An in-process cache: no server, thread-safe, bounded by entries and optionally bytes.

    Past ``threshold`` entries or ``max_bytes`` bytes, expired entries are dropped first, then
    the least recently used. Entries are not signed: nothing outside this process writes here.
    """

    def __init__(
        self,
        threshold: int = 500,
        default_timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(
            MemoryStore(threshold=threshold, max_bytes=max_bytes),
            Envelope(signer=None),
            default_timeout=default_timeout,
            name="memory",
        )


class MemcachedCache(Cache):
    """A cache on one or more memcached servers, shared by every kernel that can reach them.

    Entries are signed with ``secret`` (or ``NBCACHE_SECRET``, or this user's generated
    secret): an entry that does not verify is never unpickled. Keys spread over ``servers`` by
    consistent hashing; values larger than the server's item limit are chunked; ``clear()``
    clears only this ``key_prefix``'s namespace. A server that is down or hung costs at most
    ``timeout`` seconds (then milliseconds while it stays down), never an exception.
    ``compress=True`` zlib-compresses values that shrink by 10 % or more (others are stored
    as they are); it pays on slow links, not on loopback or a fast LAN. ``tls_context`` (an
    :class:`ssl.SSLContext`) speaks TLS to servers started with TLS on.
    """

    def __init__(
        self,
        servers: Sequence[str] = ("127.0.0.1:11211",),
        default_timeout: float = DEFAULT_TIMEOUT,
        key_prefix: str | None = None,
        *,
        secret: SecretSpec = None,
        connect_timeout: float = 0.5,
        timeout: float = 2.0,
        compress: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        from nbcache.stores.chunked import ChunkedStore
        from nbcache.stores.memcached.store import MemcachedStore
        from nbcache.stores.namespace import NamespacedStore

        if isinstance(servers, str):
            servers = [servers]
        self.servers = list(servers)
        self.key_prefix = key_prefix or "nbcache"
        raw = MemcachedStore(
            self.servers,
            connect_timeout=connect_timeout,
            timeout=timeout,
            tls_context=tls_context,
        )
        store: ByteStore = NamespacedStore(ChunkedStore(raw), self.key_prefix)
        if compress:
            from nbcache.stores.compressed import CompressedStore

            store = CompressedStore(store)
        super().__init__(
            store,
            Envelope(Signer(resolve_secrets(secret)), context=self.key_prefix),
            default_timeout=default_timeout,
            name="memcached",
        )

    def __repr__(self) -> str:
        return f"<MemcachedCache {','.join(self.servers)} prefix={self.key_prefix!r}>"
