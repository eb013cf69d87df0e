"""A byte store on one or more memcached servers, through pymemcache.

What it guarantees, and why each point matters for a cache shared by notebooks:

* Thread-safe: each server has a pool of connections; a thread takes one for a call, so
  replies never cross between threads (a plain pymemcache ``Client`` shared by threads does).
* Every write waits for the server's answer (``noreply`` off), so a refused write (a value
  over the item limit, say) returns ``False`` instead of pretending it was stored.
* Keys of any text map to valid memcached keys (:mod:`nbcache.stores.memcached.keys`).
* Several servers share keys by rendezvous hashing. A dead server's keys are never moved to
  another server: its reads fail, its writes fail, and when it comes back it holds no value
  that a newer write elsewhere would have to beat.
* The chunks of big values (:meth:`MemcachedStore.set_chunks`,
  :meth:`MemcachedStore.get_chunks_into`) bypass pymemcache's copies: they are sent from the
  caller's buffers and received into the caller's buffer (:mod:`nbcache.stores.memcached.protocol`).
* :meth:`MemcachedStore.get_many` reads its reply with a lean parser of its own (one
  ``sendall``, few ``recv`` calls): a small cache hit costs little more than the round trip.
* Faults raise :class:`~nbcache.exceptions.StoreFault`, never a socket or pymemcache error.
  A per-server :class:`~nbcache.stores.memcached.breaker.CircuitBreaker` makes calls to a dead
  server fail in microseconds during a cool-down, then lets one trial call through; one WARNING on
  the ``nbcache`` logger per outage, one INFO when the server is back.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from nbcache.exceptions import ConfigurationError, StoreFault
from nbcache.stores import settings
from nbcache.stores.api import (
    ITEM_OVERHEAD,
    NO_VALUE,
    Buffer,
    CasToken,
    NoValue,
    byte_views,
    join,
)
from nbcache.stores.memcached import protocol, transfer
from nbcache.stores.memcached.breaker import CircuitBreaker
from nbcache.stores.memcached.keys import memcached_key, memcached_name
from nbcache.stores.memcached.pool import Refused, ServerConnection
from nbcache.stores.memcached.protocol import MAX_EXPTIME, transfer_allowance

if TYPE_CHECKING:
    import ssl

    from nbcache.stores.memcached.deadline import DeadlineClient as Client

log = logging.getLogger(__name__)

T = TypeVar("T")
Value = Buffer | NoValue

DEFAULT_PORT: Final = 11211
#: memcached reads an expiry above 30 days as an absolute unix time.
MAX_RELATIVE_EXPIRY: Final = 30 * 24 * 3600
#: memcached's stock item limit (``-I``), assumed when a server cannot tell.
DEFAULT_ITEM_SIZE_MAX: Final = 1024 * 1024
#: Bytes a reply may take besides values: one status line, or a value's line and CRLF.
REPLY_LINE: Final = 1024
#: Bytes the reply to one ``mg <key> s`` may take (``HD s1073741824``).
SIZE_REPLY: Final = 32
#: Bytes a ``stats settings`` reply may take (memcached 1.6 sends about 4 KiB).
STATS_REPLY: Final = 64 * 1024
#: Connections per server over which one big value's chunks travel at once: as many as
#: memcached's default worker threads (4), no more than the cores this process may use (each
#: connection needs a core to copy its bytes).
DEFAULT_TRANSFER_CONNECTIONS: Final = min(
    4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


def memcached_expiry(ttl: float | None, now: float | None = None) -> int:
    """memcached's ``exptime`` for a ttl in seconds: always an int memcached parses.

    None gives 0 (never expires). A positive ttl is rounded up to whole seconds, so it never
    becomes 0 ("never"). Beyond 30 days memcached takes the number as an absolute unix time,
    so such ttls are sent as ``now + ttl`` (``now`` defaults to ``time.time()``); an expiry
    memcached cannot represent (after 2038-01-19, or infinite) gives 0: the item is kept until
    evicted, and the entry layer above still honours the expiry signed into the entry.

    Raises ``ValueError`` for a ttl that is not None or positive (zero, negative, NaN) and
    ``TypeError`` for one that is not a number: nothing is sent then.
    """
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"a store ttl is None or positive seconds, got {ttl!r}")
    if not ttl > 0:
        raise ValueError(f"a store ttl is None or positive seconds, got {ttl!r}")
    if ttl <= MAX_RELATIVE_EXPIRY:
        return math.ceil(ttl)
    moment = int(time.time() if now is None else now) + ttl
    if not moment <= MAX_EXPTIME:  # also inf
        return 0
    return math.ceil(moment)


def parse_server(address: str) -> tuple[str, int] | str:
    """``host:port`` (port defaults to 11211), ``[ipv6]:port``, or a unix socket path
    (``unix:/path`` or ``/path``) as pymemcache wants it."""
    address = address.strip()
    if address.startswith("unix:"):
        return address[len("unix:") :]
    if address.startswith("/"):
        return address
    host, port = address, str(DEFAULT_PORT)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, port = address.split(":")
    if "@" in host:
        raise ConfigurationError(  # not echoed: the part before '@' may be a password
            f"bad memcached server '...@{address.rpartition('@')[2]}': memcached takes no user "
            "name or password; write host:port, e.g. 127.0.0.1:11211"
        )
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"bad memcached server {address!r}: write host:port with a port from 1 to 65535, "
            "e.g. 127.0.0.1:11211"
        )
    return host, int(port)


def rendezvous_owner(seeds: list[bytes], key: str) -> str:
    """The server that owns ``key`` by rendezvous (highest random weight) hashing.

    ``seeds`` are the server addresses, encoded, each followed by a NUL. Each server scores
    the key; the highest score wins. Removing or adding a server moves only the keys it
    owns, and every process computes the same owner. BLAKE2b runs in C, ~20x faster per key
    than pymemcache's pure-Python murmur3.
    """
    name = key.encode()
    best = max(seeds, key=lambda seed: hashlib.blake2b(seed + name, digest_size=8).digest())
    return best[:-1].decode()


def _get_many_of(names: list[bytes]) -> Callable[[Client], dict[bytes, bytes | memoryview]]:
    def get_many(client: Client) -> dict[bytes, bytes | memoryview]:
        sock = client.sock
        if sock is None:
            sock = protocol.connected_socket(client)
        return protocol.get_values(sock, names)

    return get_many


def _reply_size(targets: Sequence[memoryview]) -> int:
    """Bytes a ``get`` of values of exactly the targets' sizes takes, lines included.

    Chunk keys name one write each, so a chunk of another size is out of protocol: the
    budget of a chunk read has no room for one (the read fails, and the value is a miss).
    """
    return sum(target.nbytes for target in targets) + (len(targets) + 1) * REPLY_LINE


def _item_size_max(client: Client) -> int:
    """The server's item limit (``-I``); a reply without one in memcached's range is out of
    protocol (raised inside the operation, so its connection is discarded)."""
    from pymemcache.exceptions import MemcacheUnknownError

    try:
        size = int(client.stats("settings")[b"item_size_max"])
    except (KeyError, ValueError) as error:
        raise MemcacheUnknownError(f"no item_size_max in stats settings ({error})") from None
    if not protocol.MIN_ITEM_BYTES <= size <= protocol.MAX_VALUE_BYTES:
        raise MemcacheUnknownError(f"item_size_max {size} is out of memcached's range")
    return size


class MemcachedStore:
    """A :class:`~nbcache.stores.api.ByteStore` on memcached servers (``"host:port"`` strings).

    ``connect_timeout`` and ``timeout`` (seconds) bound every connect and every socket
    operation, so a hung server costs at most about ``timeout`` per call. ``max_pool_size``
    is the number of idle connections kept per server (more threads still work; the extra
    connections close after use). ``tls_context`` (an ``ssl.SSLContext``) turns on TLS.
    ``breaker_cooldown`` and ``breaker_max_cooldown`` shape each server's circuit breaker.
    ``transfer_connections`` is the number of connections per server that the chunks of one
    big value travel over at once (:mod:`nbcache.stores.memcached.transfer`).

    Faults raise :class:`~nbcache.exceptions.StoreFault` (``get_many`` returns misses for a
    failed server's keys when another server answered). :meth:`clear` is not available: wrap
    the store in a namespaced store for that.
    """

    def __init__(
        self,
        servers: Sequence[str] = ("127.0.0.1:11211",),
        *,
        connect_timeout: float = 0.5,
        timeout: float = 2.0,
        max_pool_size: int = 16,
        tls_context: ssl.SSLContext | None = None,
        breaker_cooldown: float = 1.0,
        breaker_max_cooldown: float = 8.0,
        transfer_connections: int = DEFAULT_TRANSFER_CONNECTIONS,
    ) -> None:
        from nbcache.stores.memcached.deadline import DeadlineClient

        connect_timeout = settings.wait_seconds("connect_timeout", connect_timeout)
        timeout = settings.wait_seconds("timeout", timeout)
        max_pool_size = settings.count("max_pool_size", max_pool_size, 0)
        breaker_cooldown = settings.wait_seconds("breaker_cooldown", breaker_cooldown)
        breaker_max_cooldown = settings.wait_seconds("breaker_max_cooldown", breaker_max_cooldown)
        if breaker_max_cooldown < breaker_cooldown:
            raise ConfigurationError(
                f"breaker_max_cooldown={breaker_max_cooldown!r} is below "
                f"breaker_cooldown={breaker_cooldown!r}"
            )
        self.transfer_connections = settings.count("transfer_connections", transfer_connections, 1)
        if isinstance(servers, str):
            servers = servers.split(",")
        addresses = [address.strip() for address in servers]
        if not addresses or len(set(addresses)) != len(addresses):
            raise ConfigurationError(
                f"memcached servers must be a non-empty list without repeats, got {servers!r}"
            )
        self.timeout = timeout
        self._servers: dict[str, ServerConnection] = {}
        for address in addresses:
            spec = parse_server(address)

            def new_client(spec: tuple[str, int] | str = spec) -> Client:
                return DeadlineClient(
                    spec,
                    connect_timeout=connect_timeout,
                    timeout=timeout,
                    no_delay=True,
                    default_noreply=False,
                    tls_context=tls_context,
                )

            self._servers[address] = ServerConnection(
                address,
                new_client,
                max_pool_size,
                CircuitBreaker(breaker_cooldown, breaker_max_cooldown),
            )
        self._only = self._servers[addresses[0]] if len(addresses) == 1 else None
        self._seeds = [address.encode() + b"\0" for address in addresses]
        # Per server: its item limit, and its reconnect count when that was read.
        self._item_size: dict[str, tuple[int, int]] = {}
        self._memory_limit: int | None = None

    @property
    def servers(self) -> dict[str, ServerConnection]:
        """The servers by address (each has ``.breaker``)."""
        return dict(self._servers)

    def server_for(self, key: str) -> str:
        """The address of the server that holds ``key``, whether or not it is up."""
        return self._server(self._map(key)).address

    def _map(self, key: str) -> str:
        return memcached_key(key)

    def _server(self, mapped: str) -> ServerConnection:
        if self._only is not None:
            return self._only
        return self._servers[rendezvous_owner(self._seeds, mapped)]

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        mapped = self._map(key)
        name = mapped.encode("ascii")
        value = self._read(mapped, lambda client: client.get(name), *self._read_limits(1))
        return NO_VALUE if value is None else value

    def get_many(self, keys: Sequence[str]) -> list[Value]:
        """Values in the order of ``keys``; one round trip per server involved.

        A server that fails gives misses for its keys; StoreFault is raised only when no
        server involved answered.
        """
        names = list(map(memcached_name, keys))
        if self._only is not None:
            # One server (the usual case): no grouping, and its fault is the call's fault.
            found_here = self._only.run(_get_many_of(names), *self._read_limits(len(names)))
            return [found_here.get(name, NO_VALUE) for name in names]
        by_server: dict[ServerConnection, list[bytes]] = {}
        for name in names:
            by_server.setdefault(self._server(name.decode("ascii")), []).append(name)
        found: dict[bytes, bytes | memoryview] = {}
        faults: list[StoreFault] = []
        for server, server_names in by_server.items():
            try:
                limits = self._read_limits(len(server_names))
                found.update(server.run(_get_many_of(server_names), *limits))
            except StoreFault as fault:
                faults.append(fault)
        if faults and len(faults) == len(by_server):
            raise faults[0]
        return [found.get(name, NO_VALUE) for name in names]

    def gets(self, key: str) -> tuple[Value, CasToken | None]:
        mapped = self._map(key)
        name = mapped.encode("ascii")
        value, cas = self._read(mapped, lambda client: client.gets(name), *self._read_limits(1))
        if value is None:
            return NO_VALUE, None
        return value, CasToken(cas)

    def _read(
        self,
        mapped: str,
        operation: Callable[[Client], T],
        allowance: float = 0.0,
        budget: float = REPLY_LINE,
    ) -> T:
        try:
            return self._server(mapped).run(operation, allowance, budget)
        except Refused as error:
            raise StoreFault(str(error)) from error

    def _read_limits(self, values: int) -> tuple[float, int]:
        """Seconds beyond the timeout, and bytes, that a reply of ``values`` values may take."""
        largest = max(self._item_sizes())
        size = values * (largest + REPLY_LINE) + REPLY_LINE
        return transfer_allowance(size), size

    # -- writes -----------------------------------------------------------------------

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self._store("set", key, value, ttl)

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        return self._store("add", key, value, ttl)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        if not isinstance(token, CasToken) or not isinstance(token.value, bytes):
            raise TypeError(f"cas needs the token gets() returned, got {token!r}")
        return self._store("cas", key, value, ttl, token.value)

    def _store(
        self,
        command: str,
        key: str,
        value: Sequence[Buffer],
        ttl: float | None,
        cas: bytes | None = None,
    ) -> bool:
        mapped = self._map(key)
        name = mapped.encode("ascii")
        expire = memcached_expiry(ttl)
        # pymemcache builds the command line around one bytes object (a memoryview would be
        # sent as its repr), so the buffers are joined once here.
        data = join(value)

        def write(client: Client) -> object:
            if command == "cas":
                return client.cas(name, data, cas, expire=expire, noreply=False)
            method = client.set if command == "set" else client.add
            return method(name, data, expire=expire, noreply=False)

        try:
            allowance = transfer_allowance(len(data))
            return self._server(mapped).run(write, allowance, REPLY_LINE) is True
        except Refused as error:
            log.debug("nbcache: %s", error)
            self._forget_limits()
            return False

    def store_then_get(
        self,
        command: str,
        key: str,
        value: Sequence[Buffer],
        ttl: float | None,
        read_key: str,
    ) -> tuple[bool, Value]:
        """``set`` or ``add`` ``value``, then read ``read_key``: one round trip when both keys
        live on one server (one sendall, one reply read), two otherwise."""
        if command not in ("set", "add"):
            raise ValueError(f"store_then_get writes with set or add, not {command!r}")
        mapped = self._map(key)
        server = self._server(mapped)
        if self._server(self._map(read_key)) is not server:
            return self._store(command, key, value, ttl), self.get(read_key)
        name, read_name = memcached_name(key), memcached_name(read_key)
        views = byte_views(value)
        size = sum(view.nbytes for view in views)
        line = b"%s %s 0 %d %d\r\n" % (command.encode(), name, memcached_expiry(ttl), size)

        def write_then_read(client: Client) -> tuple[bytes, dict[bytes, bytes | memoryview]]:
            sock = protocol.connected_socket(client)
            return protocol.store_then_get(sock, line, views, [read_name])

        allowance, budget = self._read_limits(1)
        try:
            status, found = server.run(
                write_then_read, allowance + transfer_allowance(size), budget + REPLY_LINE
            )
        except Refused as error:
            raise StoreFault(str(error)) from error
        if status.startswith(b"SERVER_ERROR"):
            log.debug("nbcache: memcached server %s refused %r: %r", server.address, key, status)
            self._forget_limits()
        return status == b"STORED", found.get(read_name, NO_VALUE)

    # -- chunks of big values, without copies ------------------------------------------

    def set_chunks(self, items: Sequence[tuple[str, Sequence[Buffer]]], ttl: float | None) -> bool:
        """Store every ``(key, buffers)`` item, pipelined, over several connections per server.

        True if all were stored. The buffers are sent where they lie, never joined. False if
        a server refused any item (over its item limit, out of memory): the others may be
        stored. Raises :class:`StoreFault` if a server failed.
        """
        expire = memcached_expiry(ttl)
        by_server: dict[ServerConnection, list[tuple[bytes, list[memoryview]]]] = {}
        for key, value in items:
            mapped = self._map(key)
            item = (mapped.encode("ascii"), byte_views(value))
            by_server.setdefault(self._server(mapped), []).append(item)
        parts = [
            transfer.SendPart(server, items_of_part, len(items_of_part) * REPLY_LINE)
            for server, server_items in by_server.items()
            for items_of_part in transfer.deal(server_items, self.transfer_connections)
        ]
        if not parts:
            return True
        size = sum(view.nbytes for _, value in items for view in byte_views(value))
        # One deadline for the whole write, however its chunks are spread over connections.
        stored = transfer.send(parts, expire, transfer_allowance(size))
        if not stored:
            log.debug("nbcache: a memcached server refused a chunk")
            self._forget_limits()
        return stored

    def get_chunks_into(
        self,
        keys: Sequence[str],
        targets: Sequence[memoryview],
        landed: Callable[[int], None] | None = None,
    ) -> list[bool]:
        """Read the value of each key straight into the target at the same position.

        Per key: True if the value was there with exactly the target's length. Keys must be
        distinct; targets flat writable byte views (slices of one buffer, typically). The
        reply may take only the targets' bytes (and its lines): values much longer than their
        targets make the call fail. Values travel over several connections per server at
        once; ``landed(index)`` is called in the calling thread as each target is whole (it is
        not written again). Raises :class:`StoreFault` if a server failed (a value missing a
        chunk is unusable anyway), once every transfer has ended.
        """
        by_server: dict[ServerConnection, tuple[list[bytes], list[memoryview], list[int]]] = {}
        for index, (key, target) in enumerate(zip(keys, targets, strict=True)):
            mapped = self._map(key)
            names, views, positions = by_server.setdefault(self._server(mapped), ([], [], []))
            names.append(mapped.encode("ascii"))
            views.append(target)
            positions.append(index)
        parts = [
            transfer.ReceivePart(
                server,
                [positions[i] for i in part],
                [names[i] for i in part],
                [views[i] for i in part],
                _reply_size([views[i] for i in part]),
            )
            for server, (names, views, positions) in by_server.items()
            for part in transfer.parts_of(len(names), self.transfer_connections)
        ]
        found = [False] * len(keys)
        if parts:
            # One deadline for the whole read, its allowance for the bytes it is to bring.
            transfer.receive(parts, found, landed, transfer_allowance(_reply_size(targets)))
        return found

    def delete_chunks(self, keys: Sequence[str]) -> None:
        """Delete every key, pipelined per server (cleanup: what is not deleted expires).

        Raises :class:`StoreFault` if a server failed.
        """
        by_server: dict[ServerConnection, list[bytes]] = {}
        for key in keys:
            mapped = self._map(key)
            by_server.setdefault(self._server(mapped), []).append(mapped.encode("ascii"))
        for server, names in by_server.items():

            def delete(client: Client, names: list[bytes] = names) -> list[bool]:
                return protocol.delete_items(protocol.connected_socket(client), names)

            try:
                server.run(delete, 0.0, len(names) * REPLY_LINE)
            except Refused as error:
                raise StoreFault(str(error)) from error

    def value_sizes(self, keys: Sequence[str]) -> list[int | None]:
        """Per key, the size of its value, or None if it has none; the values are not sent.

        One pipelined round trip per server (memcached 1.6's meta commands). Raises
        :class:`StoreFault` if a server failed.
        """
        by_server: dict[ServerConnection, tuple[list[bytes], list[int]]] = {}
        for index, key in enumerate(keys):
            mapped = self._map(key)
            names, positions = by_server.setdefault(self._server(mapped), ([], []))
            names.append(mapped.encode("ascii"))
            positions.append(index)
        sizes: list[int | None] = [None] * len(keys)
        for server, (names, positions) in by_server.items():

            def ask(client: Client, names: list[bytes] = names) -> list[int | None]:
                return protocol.value_sizes(protocol.connected_socket(client), names)

            try:
                found = server.run(ask, 0.0, len(names) * SIZE_REPLY + REPLY_LINE)
            except Refused as error:
                raise StoreFault(str(error)) from error
            for position, size in zip(positions, found, strict=True):
                sizes[position] = size
        return sizes

    def delete(self, key: str) -> bool:
        mapped = self._map(key)
        name = mapped.encode("ascii")
        return self._read(
            mapped, lambda client: protocol.delete(protocol.connected_socket(client), name)
        )

    def clear(self) -> bool:
        """Not available: memcached is shared, and this store never flushes a server.

        Wrap the store in ``nbcache.stores.namespace.NamespacedStore``, whose ``clear()``
        forgets exactly its own keys.
        """
        raise NotImplementedError(
            "MemcachedStore has no namespace of its own and never runs flush_all on a shared "
            "server; wrap it in nbcache.stores.namespace.NamespacedStore, which provides clear()"
        )

    def close(self) -> None:
        """Close idle connections; the store stays usable and reconnects on demand."""
        for server in self._servers.values():
            server.drop_idle()

    # -- limits -----------------------------------------------------------------------

    @property
    def max_item_size(self) -> int:
        """The smallest ``item_size_max`` among the servers (``-I``), 1 MiB when unknown.

        Each server is asked once, and again after it was reconnected (it may have restarted
        with another ``-I``) or a write was refused (the value may have been over a new,
        lower limit). A server that cannot be asked counts as 1 MiB, and is asked again next
        time.
        """
        return min(self._item_sizes())

    def _item_sizes(self) -> list[int]:
        sizes = []
        for server in self._servers.values():
            known = self._item_size.get(server.address)
            if known is None or known[1] != server.reconnects:
                reconnects = server.reconnects
                try:
                    size = server.run(_item_size_max, 0.0, STATS_REPLY)
                except StoreFault:
                    sizes.append(DEFAULT_ITEM_SIZE_MAX)
                    continue
                known = self._item_size[server.address] = (size, reconnects)
            sizes.append(known[0])
        return sizes

    def _forget_limits(self) -> None:
        """Ask the servers for their item and memory limits again at the next use."""
        self._item_size.clear()
        self._memory_limit = None

    @property
    def memory_limit(self) -> int | None:
        """Bytes the servers may hold together (the sum of their ``-m``); None when unknown.

        Read once, like :attr:`max_item_size`, and asked again until every server answered.
        """
        if self._memory_limit is not None:
            return self._memory_limit
        total = 0
        for server in self._servers.values():
            try:
                stats = server.run(lambda client: client.stats(), 0.0, STATS_REPLY)
                total += int(stats[b"limit_maxbytes"])
            except (StoreFault, KeyError, ValueError):
                return None
        self._memory_limit = total
        return total

    @property
    def max_value_size(self) -> int:
        """The largest value every server stores: ``max_item_size`` less the item overhead."""
        return self.max_item_size - ITEM_OVERHEAD
