"""A byte store on App Engine's memcache service, through ``google.appengine.api.memcache``.

App Engine's memcache takes no server list: every instance and version of an app shares one
service, reached through the bundled-services SDK (the ``appengine-python-standard`` package;
``pip install "nbcache[gae]"``). This store speaks to it through the SDK's ``Client``:

* Keys of any text map injectively to valid memcache keys
  (:mod:`nbcache.stores.memcached.keys`). Left to itself the SDK replaces a key over 250 bytes
  by its bare SHA-1 in hex, which a short key could equal.
* Values travel as plain bytes. The SDK unpickles a value flagged as a pickle when it reads
  one; this store hands it an unpickler that never unpickles. A value someone else stored
  under one of its keys (a pickle, text, a number) reads as an empty value: never code run,
  never a valid record, and the layers above replace it as they replace any corrupt one.
* Every write waits for the service's verdict: a value over the service's limit
  (:data:`MAX_VALUE_SIZE`), or one the service does not store, returns False.
* Faults (the service down, over quota or past the deadline, or no service at all in this
  process) raise :class:`~nbcache.exceptions.StoreFault`. The SDK would report them as misses
  and failed writes; here a circuit breaker then refuses calls for a short cool-down, and
  the ``nbcache`` logger warns once per outage.
* Many values are read or written in parallel calls of at most :data:`VALUES_PER_CALL` values:
  the service takes at most 32 MB per call.
* App Engine's own namespaces (``namespace_manager``) are not used: every key lives in the
  default namespace, so the namespace of the request at hand never changes where an entry is.
  Separate caches with :class:`~nbcache.stores.namespace.NamespacedStore`.
* Expiries over 30 days are sent as absolute times, as the service expects
  (:func:`~nbcache.stores.memcached.store.memcached_expiry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

from nbcache.exceptions import ConfigurationError, StoreFault
from nbcache.stores.api import NO_VALUE, Buffer, CasToken, NoValue, join
from nbcache.stores.memcached.breaker import CircuitBreaker
from nbcache.stores.memcached.keys import memcached_key
from nbcache.stores.memcached.store import memcached_expiry

log = logging.getLogger(__name__)

T = TypeVar("T")
Value = Buffer | NoValue
#: Starts one call to the service on the RPC object it is given, and returns that RPC.
Call = Callable[[Any], Any]

#: The most bytes of value the SDK sends under one key. (The service's own limit, 1 MiB less
#: the key and ~73 bytes, is a little higher.)
MAX_VALUE_SIZE: Final = 1_000_000
#: Values per call when many are read or written: the service takes at most 32 MB per call.
VALUES_PER_CALL: Final = 16
#: Calls of a big value's chunks in flight at once: bounds the copies held in memory.
CALLS_IN_FLIGHT: Final = 4
#: App Engine's namespace for every call: the default one, whatever the request's is.
SERVICE_NAMESPACE: Final = ""
INSTALL_HINT: Final = 'pip install "nbcache[gae]"'


def import_memcache() -> Any:
    """The SDK's ``google.appengine.api.memcache`` module.

    Raises :class:`~nbcache.exceptions.ConfigurationError` saying what to install when the
    SDK is missing.
    """
    try:
        from google.appengine.api import memcache
    except ImportError as error:
        raise ConfigurationError(
            f"App Engine's memcache needs the bundled-services SDK, which is not installed "
            f"({error}). Install it with: {INSTALL_HINT}"
        ) from error
    return memcache


#: What a read gives for a value this store cannot have written: empty, so unreadable above.
FOREIGN: Final = b""


class _NoUnpickling:
    """The unpickler the SDK is given: a value flagged as a pickle is never unpickled."""

    def __init__(self, file: object) -> None:
        del file

    def load(self) -> bytes:
        return FOREIGN


class GAEMemcacheStore:
    """A :class:`~nbcache.stores.api.ByteStore` on App Engine's memcache service.

    ``deadline`` (seconds) bounds every call to the service. ``breaker_cooldown`` and
    ``breaker_max_cooldown`` shape the circuit breaker that stops calling a failing service
    for a while. Raises :class:`~nbcache.exceptions.ConfigurationError` when the SDK is not
    installed. Thread-safe. :meth:`clear` is not available: the service is the whole app's;
    wrap the store in a namespaced store for that.
    """

    def __init__(
        self,
        *,
        deadline: float = 2.0,
        breaker_cooldown: float = 1.0,
        breaker_max_cooldown: float = 8.0,
    ) -> None:
        if not deadline > 0:
            raise ConfigurationError(
                f"deadline must be a positive number of seconds, not {deadline!r}"
            )
        self._memcache = import_memcache()
        self.deadline = deadline
        self.breaker = CircuitBreaker(breaker_cooldown, breaker_max_cooldown)
        self._last_error = ""
        # Shared by every call but gets/cas, whose CAS ids the SDK keeps on the client.
        self._client = self._new_client()

    def _new_client(self) -> Any:
        return self._memcache.Client(unpickler=_NoUnpickling)

    @property
    def max_item_size(self) -> int:
        """The largest value the service stores under one key, in bytes."""
        return MAX_VALUE_SIZE

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[Value]:
        """Values in the order of ``keys``, in parallel calls of at most 16 keys each."""
        names = [memcached_key(key) for key in keys]
        found: dict[str, object] = {}
        calls = [self._get(self._client, batch) for batch in _batches(names, VALUES_PER_CALL)]
        for result in self._run(calls):
            found.update(result)
        return [_own(found.get(name)) for name in names]

    def gets(self, key: str) -> tuple[Value, CasToken | None]:
        name = memcached_key(key)
        client = self._new_client()  # it remembers the CAS id of this read, and only this one
        (found,) = self._run([self._get(client, [name], for_cas=True)])
        value = _own(found.get(name))
        if isinstance(value, NoValue):
            return NO_VALUE, None
        return value, CasToken(client)

    def _get(self, client: Any, names: Sequence[str], for_cas: bool = False) -> Call:
        def call(rpc: Any) -> Any:
            return client.get_multi_async(
                names, namespace=SERVICE_NAMESPACE, for_cas=for_cas, rpc=rpc
            )

        return call

    # -- writes -----------------------------------------------------------------------

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self._store(self._client.set_multi_async, key, value, ttl)

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self._store(self._client.add_multi_async, key, value, ttl)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        client = token.value if isinstance(token, CasToken) else None
        if not isinstance(client, self._memcache.Client):
            raise TypeError(f"cas needs the token gets() returned, got {token!r}")
        return self._store(client.cas_multi_async, key, value, ttl)

    def _store(
        self, method: Callable[..., Any], key: str, value: Sequence[Buffer], ttl: float | None
    ) -> bool:
        name = memcached_key(key)
        mapping = {name: join(value)}
        if not _fits(mapping):
            return False
        (statuses,) = self._run([self._write(method, mapping, ttl)])
        return self._stored(statuses, mapping)

    def _write(
        self, method: Callable[..., Any], mapping: dict[str, bytes], ttl: float | None
    ) -> Call:
        expire = memcached_expiry(ttl)

        def call(rpc: Any) -> Any:
            return method(mapping, time=expire, namespace=SERVICE_NAMESPACE, rpc=rpc)

        return call

    def _stored(self, statuses: dict[str, int] | None, mapping: dict[str, bytes]) -> bool:
        stored = self._memcache.STORED
        return statuses is not None and all(statuses.get(name) == stored for name in mapping)

    def delete(self, key: str) -> bool:
        name = memcached_key(key)

        def call(rpc: Any) -> Any:
            return self._client.delete_multi_async([name], namespace=SERVICE_NAMESPACE, rpc=rpc)

        (statuses,) = self._run([call])
        return bool(statuses == [self._memcache.DELETE_SUCCESSFUL])

    def clear(self) -> bool:
        """Not available: the service is shared by the whole app, and this store never
        flushes it. Wrap the store in ``nbcache.stores.namespace.NamespacedStore``."""
        raise NotImplementedError(
            "GAEMemcacheStore never flushes App Engine's memcache, which the whole app shares; "
            "wrap it in nbcache.stores.namespace.NamespacedStore, which provides clear()"
        )

    def close(self) -> None:
        """Nothing to close: the SDK holds no connection of this store's."""

    # -- the chunks of big values -----------------------------------------------------

    def set_chunks(self, items: Sequence[tuple[str, Sequence[Buffer]]], ttl: float | None) -> bool:
        """Store every ``(key, buffers)`` item, in parallel calls; True if all were stored.

        False as soon as the service refuses one (the others may be stored).
        """
        batches = list(_batches(items, VALUES_PER_CALL))
        for window in _batches(batches, CALLS_IN_FLIGHT):
            mappings = [{memcached_key(key): join(pieces) for key, pieces in b} for b in window]
            if not all(_fits(mapping) for mapping in mappings):
                return False
            calls = [self._write(self._client.set_multi_async, m, ttl) for m in mappings]
            results = self._run(calls)
            if not all(map(self._stored, results, mappings)):
                return False
        return True

    def get_chunks_into(self, keys: Sequence[str], targets: Sequence[memoryview]) -> list[bool]:
        """Read the value of each key into the target at the same position, in parallel calls.

        Per key: True if the value was there with exactly the target's length.
        """
        names = [memcached_key(key) for key in keys]
        found = [False] * len(names)
        batches = list(_batches(list(range(len(names))), VALUES_PER_CALL))
        for window in _batches(batches, CALLS_IN_FLIGHT):
            calls = [self._get(self._client, [names[i] for i in batch]) for batch in window]
            for batch, result in zip(window, self._run(calls), strict=True):
                for i in batch:
                    value = result.get(names[i])
                    if isinstance(value, bytes) and len(value) == targets[i].nbytes:
                        targets[i][:] = value
                        found[i] = True
        return found

    # -- calls ------------------------------------------------------------------------

    def _run(self, calls: Sequence[Call]) -> list[Any]:
        """Start every call, then collect their results; StoreFault if the service failed."""
        if not calls:
            return []
        if not self.breaker.allow():
            raise StoreFault(
                f"App Engine's memcache service is unavailable ({self._last_error}); "
                f"next try in {self.breaker.retry_in():.1f} s"
            )
        try:
            rpcs = [call(self._memcache.create_rpc(deadline=self.deadline)) for call in calls]
            for rpc in rpcs:
                # Raises the service's error, which the SDK's own result would hide as a miss.
                rpc.check_success()
        except Exception as error:
            self._failed(error)
            raise StoreFault(f"App Engine's memcache service failed: {self._last_error}") from error
        except BaseException:
            self.breaker.abandoned()
            raise
        if self.breaker.succeeded():
            log.info("nbcache: App Engine's memcache service is back")
        try:
            return [rpc.get_result() for rpc in rpcs]
        except Exception as error:
            # The service answered with a value the SDK cannot decode: one stored by someone
            # else, with flags nbcache never writes.
            raise StoreFault(
                f"App Engine's memcache returned a value nbcache cannot read: {_describe(error)}"
            ) from error

    def _failed(self, error: Exception) -> None:
        self._last_error = _describe(error)
        if "No api proxy found" in str(error):
            self._last_error += (
                " (App Engine's bundled services are not set up in this process: on App "
                "Engine, turn on app_engine_apis and wrap the app with wrap_wsgi_app; in "
                "tests, activate a google.appengine.ext.testbed with its memcache stub)"
            )
        if self.breaker.failed():
            log.warning(
                "nbcache: App Engine's memcache service failed (%s): reads are misses and "
                "writes fail until it answers again; retrying in %.1f s",
                self._last_error,
                self.breaker.cooldown,
            )


def _own(value: object) -> Value:
    """What a read found: NO_VALUE for nothing, :data:`FOREIGN` for a value not of bytes."""
    if value is None:
        return NO_VALUE
    return value if isinstance(value, bytes) else FOREIGN


def _fits(mapping: dict[str, bytes]) -> bool:
    """True if the service can take every value; logs the refusal otherwise."""
    for name, data in mapping.items():
        if len(data) > MAX_VALUE_SIZE:
            log.debug(
                "nbcache: App Engine's memcache refuses %d bytes under %r (the limit is %d)",
                len(data),
                name,
                MAX_VALUE_SIZE,
            )
            return False
    return True


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
