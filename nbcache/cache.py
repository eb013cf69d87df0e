"""The caches users hold: the Flask/cachelib contract, in process or on memcached.

``get`` returns None on a miss, like every Flask-style cache; :meth:`Cache.get_entry` returns
:data:`~nbcache.NO_VALUE` instead, with the entry's metadata, for callers to whom ``None`` is
a real result. Faults of the store never raise from here: a read becomes a miss and a write
returns False, and the store (or the entry layer, for faults it does not know) logs one
warning. The work is done by an :class:`~nbcache.entries.entry_store.EntryStore`
(``cache.entries``), which nbcache's decorator and cell magic use directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nbcache.entries.entry_store import DEFAULT_TIMEOUT, EntryStore
from nbcache.entries.envelope import Entry, Envelope
from nbcache.exceptions import ConfigurationError, SecretUnavailable
from nbcache.stores import settings
from nbcache.stores.api import ByteStore, NoValue

if TYPE_CHECKING:
    import ssl

    from nbcache.entries.near import NearCopies
    from nbcache.entries.secrets import SecretSpec
    from nbcache.entries.signing import Signer

log = logging.getLogger(__name__)

__all__ = [
    "CLOCK_TOLERANCE",
    "DEFAULT_TIMEOUT",
    "Cache",
    "GAEMemcachedCache",
    "MemcachedCache",
    "SimpleCache",
]

#: Seconds a kernel's clock may run ahead of another's on a shared cache and still hit its
#: entries. The server expires entries by its own clock; this only bounds how long after its
#: signed expiry an entry replayed into the server is still accepted.
CLOCK_TOLERANCE = 600.0


class Cache:
    """Python values under string keys, with expiry, in any :class:`~nbcache.stores.api.ByteStore`.

    ``timeout`` everywhere: None means ``default_timeout``; 0 means never expires; a negative
    number means already expired (nothing live is stored). Values come back as the caller's own
    copy: changing a returned object never changes the cache.

    ``clock_tolerance``: seconds a reader's clock may run ahead of a writer's (see
    :class:`~nbcache.entries.entry_store.EntryStore`); shared caches use
    :data:`CLOCK_TOLERANCE`.
    """

    def __init__(
        self,
        store: ByteStore,
        envelope: Envelope | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        name: str = "cache",
        clock_tolerance: float = 0.0,
        near: NearCopies | None = None,
    ) -> None:
        self.entries = EntryStore(store, envelope, default_timeout, name, clock_tolerance, near)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def store(self) -> ByteStore:
        """The byte store the entries live in."""
        return self.entries.store

    @property
    def name(self) -> str:
        """A short name for messages: ``"memory"``, ``"memcached"``."""
        return self.entries.name

    @property
    def default_timeout(self) -> float:
        """Seconds an entry lives when ``timeout`` is None."""
        return self.entries.default_timeout

    @default_timeout.setter
    def default_timeout(self, seconds: float) -> None:
        self.entries.default_timeout = seconds

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value under ``key``, or None on a miss."""
        entry = self.entries.get(key)
        return None if isinstance(entry, NoValue) else entry.value

    def get_entry(self, key: str) -> Entry | NoValue:
        """The entry under ``key`` with its metadata, or NO_VALUE on a miss (or refusal)."""
        return self.entries.get(key)

    def has(self, key: str) -> bool:
        """True if ``key`` holds a live, trusted entry (even one whose value is None)."""
        return self.entries.has(key)

    def get_many(self, *keys: str) -> list[Any]:
        """Values in the order of ``keys``, None for each miss; one store round trip."""
        entries = self.entries.get_many(keys)
        return [None if isinstance(e, NoValue) else e.value for e in entries]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        """``{key: value}`` for ``keys``, None for each miss."""
        return dict(zip(keys, self.get_many(*keys), strict=True))

    # -- writes ---------------------------------------------------------------------------

    def set(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """Store ``value``; True if stored.

        Raises :class:`~nbcache.exceptions.UnpicklableValueError` if the value cannot be
        serialized; nothing is stored then and an older value is left as it was.
        """
        return self.entries.set(key, value, timeout)

    def add(self, key: str, value: Any, timeout: float | None = None) -> bool:
        """Store ``value`` only if ``key`` holds no live entry; True if it did not."""
        return self.entries.add(key, value, timeout)

    def set_many(self, mapping: Mapping[str, Any], timeout: float | None = None) -> list[str]:
        """Store every item; the keys that were stored."""
        return [key for key, value in mapping.items() if self.set(key, value, timeout)]

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if something was removed."""
        return self.entries.delete(key)

    def delete_many(self, *keys: str) -> list[str]:
        """Remove every key; the keys that were removed."""
        return [key for key in keys if self.delete(key)]

    def clear(self) -> bool:
        """Forget every entry of this cache (only of this cache: a shared server keeps others)."""
        return self.entries.clear()

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` to the integer under ``key`` (a missing key counts as 0), atomically.

        Returns the new value, or None if the store failed or the value is not an integer.
        """
        return self.entries.inc(key, delta)

    def dec(self, key: str, delta: int = 1) -> int | None:
        """Subtract ``delta`` from the integer under ``key``; see :meth:`inc`."""
        return self.entries.inc(key, -delta)


class SimpleCache(Cache):
    """An in-process cache: no server, thread-safe, bounded by entries and optionally bytes.

    Args:
        threshold: the most entries kept; past it, expired entries are dropped first, then
            the least recently used.
        default_timeout: seconds an entry lives when ``set`` is given no timeout (0: until
            dropped).
        max_bytes: the most bytes of stored values kept (None: no byte bound), dropped in the
            same order; a single value larger than this is not stored.

    Entries are not signed: nothing outside this process writes here.
    """

    def __init__(
        self,
        threshold: int = 500,
        default_timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int | None = None,
    ) -> None:
        from nbcache.stores.memory import MemoryStore

        super().__init__(
            MemoryStore(threshold=threshold, max_bytes=max_bytes),
            Envelope(signer=None),
            default_timeout=default_timeout,
            name="memory",
        )


class MemcachedCache(Cache):
    """A cache on one or more memcached servers, shared by every kernel that can reach them.

    Args:
        servers: ``"HOST:PORT"`` strings, or one string of them separated by commas. Keys
            spread over them by consistent hashing; a dead server costs only its own keys.
        default_timeout: seconds an entry lives when ``set`` is given no timeout (0: until
            evicted).
        key_prefix: the namespace: ``clear()`` forgets this namespace's entries only, and
            caches with different prefixes never meet. By default it is derived from the
            signing secret (``nbcache-`` and the signing key's id), so kernels with different
            secrets never meet either; rotating the signing secret starts a new, empty
            namespace. Give the same ``key_prefix`` to kernels whose secrets differ but must
            read each other's entries during a rotation.
        secret: the signing secret(s): a string, bytes, or a list whose first item signs and
            every item verifies (rotation). None: ``NBCACHE_SECRET``, else this user's
            generated secret; if that file cannot be used (see :mod:`nbcache.entries.secrets`),
            the cache is off: every read misses, one warning says how to set
            ``NBCACHE_SECRET``. An entry that does not verify is never unpickled.
        connect_timeout: seconds to wait for a connection to a server (finite, above 0).
        timeout: seconds a server may take for one whole operation (finite, above 0); a
            server that is down, hung or slow costs at most this (then milliseconds while it
            stays down), never an exception.

    Raises :class:`~nbcache.exceptions.ConfigurationError` naming the setting for a server,
    timeout or secret that cannot work.
        compress: zlib-compress values that shrink by 10 % or more (others are stored as they
            are); it pays on slow links, not on loopback or a fast LAN.
        tls_context: an :class:`ssl.SSLContext` to speak TLS to servers started with TLS on.
        near_bytes: the most bytes of *near copies* this cache keeps in this process (0: none;
            None: a tier shared by the process's caches, an eighth of physical memory). A big
            entry this process stored or read is kept (in memory files, least recently used
            dropped first), and reading it again costs one round trip that proves it is still
            the current entry, not a transfer; the caller gets its own copy-on-write mapping.

    Values larger than the server's item limit are chunked.
    """

    def __init__(
        self,
        servers: Sequence[str] | str = ("127.0.0.1:11211",),
        default_timeout: float = DEFAULT_TIMEOUT,
        key_prefix: str | None = None,
        *,
        secret: SecretSpec = None,
        connect_timeout: float = 0.5,
        timeout: float = 2.0,
        compress: bool = False,
        tls_context: ssl.SSLContext | None = None,
        near_bytes: int | None = None,
    ) -> None:
        from nbcache.entries.near import NearCopies, shared_tier
        from nbcache.stores.memcached.store import MemcachedStore

        if near_bytes is not None:
            near_bytes = settings.count("near_bytes", near_bytes, 0)  # 0: no near copies
        self.servers = server_list(servers)
        raw = MemcachedStore(
            self.servers,
            connect_timeout=connect_timeout,
            timeout=timeout,
            tls_context=tls_context,
        )
        store, envelope, self.key_prefix = shared_layers(raw, key_prefix, secret, "memcached")
        if compress:
            from nbcache.stores.compressed import CompressedStore

            store = CompressedStore(store)
        near = (
            shared_tier() if near_bytes is None else NearCopies(near_bytes) if near_bytes else None
        )
        super().__init__(
            store,
            envelope,
            default_timeout=default_timeout,
            name="memcached",
            clock_tolerance=CLOCK_TOLERANCE,
            near=near,
        )

    def __repr__(self) -> str:
        return f"<MemcachedCache {','.join(self.servers)} prefix={self.key_prefix!r}>"


class GAEMemcachedCache(Cache):
    """A cache on App Engine's memcache service, shared by every instance and version of an app.

    Args:
        default_timeout: seconds an entry lives when ``set`` is given no timeout (0: until
            evicted).
        key_prefix: the namespace, as for :class:`MemcachedCache` (by default derived from
            the signing secret): ``clear()`` forgets this namespace's entries only.
        secret: the signing secret(s), as for :class:`MemcachedCache`. Every version of the
            app reads the same service, so entries are signed and checked like memcached's.
        timeout: seconds the service may take to answer one call; past it the call is a miss
            or a failed write.

    Needs the App Engine SDK (``pip install "nbcache[gae]"``; without it this raises
    :class:`~nbcache.exceptions.ConfigurationError`) and App Engine's bundled services in the
    process: an app with ``app_engine_apis`` on, or a ``google.appengine.ext.testbed`` in
    tests. App Engine's request namespace does not apply: ``key_prefix`` separates caches.
    Values over the service's 1 MB limit are chunked.
    """

    def __init__(
        self,
        default_timeout: float = DEFAULT_TIMEOUT,
        key_prefix: str | None = None,
        secret: SecretSpec = None,
        *,
        timeout: float = 2.0,
    ) -> None:
        from nbcache.stores.gae import GAEMemcacheStore

        store, envelope, self.key_prefix = shared_layers(
            GAEMemcacheStore(deadline=timeout), key_prefix, secret, "App Engine memcache"
        )
        super().__init__(
            store,
            envelope,
            default_timeout=default_timeout,
            name="App Engine memcache",
            clock_tolerance=CLOCK_TOLERANCE,
        )

    def __repr__(self) -> str:
        return f"<GAEMemcachedCache prefix={self.key_prefix!r}>"


def shared_layers(
    raw: ByteStore, key_prefix: str | None, secret: SecretSpec, name: str
) -> tuple[ByteStore, Envelope, str]:
    """The layers a store shared between processes needs, its entries' envelope, its namespace.

    ``raw`` is wrapped in chunks (values over its item limit; each manifest signed, so a
    planted one costs nothing) under a namespace (``clear()`` in O(1), other prefixes
    untouched); entries are signed with ``secret`` in the context of the namespace, so an
    entry copied from another namespace does not verify. The namespace is ``key_prefix``, or
    by default ``nbcache-`` and the signing key's id: caches with different secrets never
    meet. Without a usable per-user secret file the store is off (``name`` says which, in
    one warning).
    """
    from nbcache.entries.secrets import resolve_secrets
    from nbcache.entries.signing import Signer
    from nbcache.stores.chunked import ChunkedStore
    from nbcache.stores.namespace import NamespacedStore

    if key_prefix is not None and not isinstance(key_prefix, str):
        raise ConfigurationError(f"key_prefix={key_prefix!r} is not a string")
    try:
        secrets = resolve_secrets(secret)
    except SecretUnavailable as problem:
        namespace = key_prefix or "nbcache"
        store, signer = _switched_off(problem, name)
        return store, Envelope(signer, context=namespace), namespace
    signer = Signer(secrets)
    namespace = key_prefix or f"nbcache-{signer.key_id.hex()}"
    manifests = Signer(secrets, purpose="chunked value manifest")
    store = NamespacedStore(ChunkedStore(raw, authenticator=manifests), namespace)
    digests = Signer(secrets, purpose="digests of secret inputs")
    return store, Envelope(signer, context=namespace, digests=digests), namespace


def _switched_off(problem: SecretUnavailable, name: str) -> tuple[ByteStore, Signer]:
    """A store that is off, and a throwaway signer, for a cache without a usable secret."""
    import os

    from nbcache.entries.signing import Signer
    from nbcache.stores.unavailable import UnavailableStore

    log.warning(
        "nbcache: caching on %s is off (%s). Computations run uncached. To turn it on, "
        "set NBCACHE_SECRET to a secret of at least 16 bytes shared by every kernel that should "
        "share results (python -c 'import secrets; print(secrets.token_hex(32))'), or fix %s",
        name,
        problem,
        problem.path,
    )
    return UnavailableStore(f"caching on {name} is off: {problem}"), Signer([os.urandom(32)])


def server_list(servers: Sequence[str] | str) -> list[str]:
    """``"HOST:PORT"`` specs from a sequence of them or one comma-separated string.

    Raises :class:`~nbcache.exceptions.ConfigurationError` naming a spec that is not
    ``HOST:PORT`` (a comma inside one spec included).
    """
    specs = servers.split(",") if isinstance(servers, str) else list(servers)
    result = []
    for spec in specs:
        if not isinstance(spec, str):
            raise ConfigurationError(f"a memcached server is a 'HOST:PORT' string, not {spec!r}")
        spec = spec.strip()
        host, _, port = spec.rpartition(":")
        if "@" in host:
            # Not echoed: the part before '@' may be a password.
            raise ConfigurationError(
                f"memcached server '...@{spec.rpartition('@')[2]}' holds a user name or "
                "password; memcached takes none: write HOST:PORT, e.g. 127.0.0.1:11211"
            )
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "," in spec:
            raise ConfigurationError(
                f"memcached server {spec!r} is not HOST:PORT with a port from 1 to 65535, e.g. "
                "127.0.0.1:11211 (give several as a list, or as one string separated by commas)"
            )
        result.append(spec)
    if not result:
        raise ConfigurationError("no memcached server given; e.g. ['127.0.0.1:11211']")
    return result
