"""Big values through memcached without copies: the bulk chunk transport, end to end.

Runs against real memcached servers. Faults in the middle of a transfer are made by a TCP
relay between the store and the real server that passes the server's bytes and then, at a
chosen byte, cuts the connection or stalls it past the store's timeout. Time bounds are
generous upper bounds for a loaded 2-core machine; each test states the ones it asserts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache
from nbcache.exceptions import ConfigurationError, StoreFault
from nbcache.stores.api import NO_VALUE
from nbcache.stores.chunk_reading import ChunkTransport
from nbcache.stores.chunked import ChunkedStore
from nbcache.stores.memcached.store import MemcachedStore
from nbcache.testing import resident_growth

pytestmark = pytest.mark.memcached

SECRET = "bulk-transport-test-secret-0123456789"
MIB = 1024 * 1024


def pattern(size: int, seed: int) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).bytes(size)


class Relay:
    """A TCP relay to a real server that can cut or stall the server's reply at a chosen byte.

    :meth:`arm` sets a fault: after ``after`` more bytes from server to client, ``"cut"``
    closes both sides, ``"stall"`` stops forwarding until :meth:`release`. A fault fires
    ``times`` times (each after ``after`` more bytes), then everything passes.
    """

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so the accept loop sees close() promptly
        self._closed = threading.Event()
        self.port = self.listener.getsockname()[1]
        self.fired = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._fault: tuple[str, int] | None = None
        self._repeat: tuple[str, int, int] | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, mode: str, after: int, times: int = 1) -> None:
        with self._lock:
            self._fault = (mode, after)
            self._repeat = (mode, after, times - 1)
            self.fired.clear()
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(5)
        self.listener.close()

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.server_port))
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream, False)
            self._start(self._pump, upstream, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(256 * 1024):
                if replies:
                    data = self._maybe_fault(data, source, sink)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)

    def _maybe_fault(self, data: bytes, source: socket.socket, sink: socket.socket) -> bytes:
        with self._lock:
            if self._fault is None:
                return data
            mode, after = self._fault
            if len(data) <= after:
                self._fault = (mode, after - len(data))
                return data
            self._fault = None
            if self._repeat is not None and self._repeat[2] > 0:
                self._fault = self._repeat[:2]
                self._repeat = (mode, after, self._repeat[2] - 1)
        sink.sendall(data[:after])
        self.fired.set()
        if mode == "cut":
            raise OSError("relay cut the connection")
        self._released.wait()
        return data[after:]


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def server(memcached_factory: Callable[..., MemcachedServer]) -> MemcachedServer:
    return memcached_factory(memory_mb=512)


@pytest.fixture
def raw_store(server: MemcachedServer) -> Iterator[MemcachedStore]:
    store = MemcachedStore([server.address])
    yield store
    store.close()


@pytest.fixture
def relay(server: MemcachedServer) -> Iterator[Relay]:
    relay = Relay(server.port)
    yield relay
    relay.close()


def test_memcached_store_offers_the_chunk_transport(raw_store: MemcachedStore) -> None:
    assert isinstance(raw_store, ChunkTransport)


def test_set_chunks_and_get_chunks_into_round_trip(raw_store: MemcachedStore) -> None:
    sizes = [0, 1, 1000, 300_000, raw_store.max_value_size]
    values = [pattern(size, size) for size in sizes]
    items = [(f"chunk{index}", [memoryview(value)]) for index, value in enumerate(values)]
    # A value given as several buffers arrives as their concatenation.
    items.append(("pieces", [b"ab", memoryview(b"cdef")[1:], bytearray(b"g")]))
    assert raw_store.set_chunks(items, 60)
    buffer = bytearray(sum(sizes) + 6)
    view, offset, targets = memoryview(buffer), 0, []
    for size in [*sizes, 6]:
        targets.append(view[offset : offset + size])
        offset += size
    keys = [key for key, _ in items]
    assert raw_store.get_chunks_into(keys, targets) == [True] * len(keys)
    assert bytes(buffer) == b"".join(values) + b"abdefg"
    # Readable by the ordinary path too: same keys, same values.
    assert bytes(raw_store.get("chunk3")) == values[3]


def test_missing_or_wrong_length_chunks_are_reported_per_key(raw_store: MemcachedStore) -> None:
    assert raw_store.set_chunks([("a", [b"1234"]), ("b", [b"12345"])], None)
    targets = [memoryview(bytearray(4)) for _ in range(3)]
    assert raw_store.get_chunks_into(["a", "b", "nothing"], targets) == [True, False, False]
    assert bytes(targets[0]) == b"1234"
    # The connection stayed in step: the next call reads correctly.
    target = memoryview(bytearray(5))
    assert raw_store.get_chunks_into(["b"], [target]) == [True]
    assert bytes(target) == b"12345"


def test_a_refused_chunk_is_reported_and_the_connection_stays_usable(
    raw_store: MemcachedStore,
) -> None:
    too_big = memoryview(bytes(2 * MIB))
    items = [("before", [b"one"]), ("too-big", [too_big]), ("after", [b"three"])]
    assert raw_store.set_chunks(items, None) is False
    assert bytes(raw_store.get("before")) == b"one"
    assert bytes(raw_store.get("after")) == b"three"
    assert raw_store.get("too-big") is NO_VALUE


def test_many_chunks_pipeline_past_the_window(raw_store: MemcachedStore) -> None:
    values = [pattern(100, seed) for seed in range(500)]
    assert raw_store.set_chunks([(f"k{i}", [v]) for i, v in enumerate(values)], None)
    targets = [memoryview(bytearray(100)) for _ in values]
    assert all(raw_store.get_chunks_into([f"k{i}" for i in range(500)], targets))
    assert [bytes(target) for target in targets] == values


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_values_around_the_chunk_size_round_trip(raw_store: MemcachedStore, offset: int) -> None:
    store = ChunkedStore(raw_store)
    for size in (0, 1, store.chunk_size + offset, 2 * store.chunk_size + offset):
        value = pattern(size, size)
        assert store.set("k", [value], None), size
        got = store.get("k")
        assert got is not NO_VALUE and bytes(got) == value, size


def server_stat(server: MemcachedServer, name: str) -> int:
    for line in server.command(b"stats").decode().splitlines():
        if line.startswith(f"STAT {name} "):
            return int(line.split()[-1])
    raise AssertionError(f"memcached reported no {name}")


@pytest.mark.parametrize("connections", [1, 2, 3, 7])
def test_a_big_value_travels_over_several_connections_and_comes_back_whole(
    server: MemcachedServer, connections: int
) -> None:
    raw = MemcachedStore([server.address], transfer_connections=connections)
    store = ChunkedStore(raw)
    try:
        value = pattern(60 * MIB + 12345, connections)
        opened = server_stat(server, "total_connections")
        assert store.set("k", [value], None)
        got = store.get("k")
        assert got is not NO_VALUE and bytes(got) == value
        # Each part of a transfer (at least 8 chunks) has a connection of its own.
        parts = min(connections, len(store.chunk_keys("k")) // 8)
        assert parts == connections
        assert server_stat(server, "total_connections") - opened >= connections
    finally:
        store.close()


def test_transfer_connections_must_be_positive(server: MemcachedServer) -> None:
    with pytest.raises(ConfigurationError, match="transfer_connections"):
        MemcachedStore([server.address], transfer_connections=0)


def test_replacing_or_deleting_a_big_value_deletes_its_chunks(raw_store: MemcachedStore) -> None:
    store = ChunkedStore(raw_store)
    assert store.set("k", [pattern(8 * MIB, 1)], None)
    old = store.chunk_keys("k")
    assert len(old) > 8 and all(raw_store.get(key) is not NO_VALUE for key in old)
    assert store.set("k", [pattern(8 * MIB, 2)], None)
    assert all(raw_store.get(key) is NO_VALUE for key in old)
    newer = store.chunk_keys("k")
    assert store.delete("k")
    assert all(raw_store.get(key) is NO_VALUE for key in newer)


def test_64_mib_round_trips_through_several_servers(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    servers = [memcached_factory(memory_mb=256) for _ in range(2)]
    raw = MemcachedStore([s.address for s in servers])
    try:
        store = ChunkedStore(raw)
        value = pattern(64 * MIB, 64)
        assert store.set("big", [value], 300)
        owners = {raw.server_for(chunk) for chunk in store.chunk_keys("big")}
        assert len(owners) == 2, "the chunks should spread over both servers"
        got = store.get("big")
        assert got is not NO_VALUE and bytes(got) == value
    finally:
        raw.close()


def test_a_hit_holds_only_the_result_and_a_write_copies_nothing(server: MemcachedServer) -> None:
    import numpy as np

    cache = MemcachedCache([server.address], secret=SECRET, near_bytes=0)
    array = np.random.default_rng(1).random(64 * MIB // 8)
    # Resident memory, not tracemalloc: values read back live in mappings it cannot see.
    with resident_growth() as write:
        assert cache.set("array", array, 300)
    with resident_growth() as read:
        got = cache.get("array")  # no near copy: the value crosses the network
        got.sum()  # every page of the result touched (array_equal would add a temporary)
    assert np.array_equal(got, array)
    got[0] = -1.0  # the caller's own, writable memory
    assert cache.get("array")[0] == array[0]
    # Performance targets: a hit's peak <= the result's size + 10 %; a write copies no
    # big buffer (10 % allows for pickle heads, chunk keys and the like).
    assert read.peak <= 1.10 * array.nbytes, read.peak / array.nbytes
    assert write.peak <= 0.10 * array.nbytes, write.peak / array.nbytes


def test_server_cut_mid_transfer_is_a_fault_then_the_next_read_is_whole(
    server: MemcachedServer, relay: Relay
) -> None:
    store = ChunkedStore(MemcachedStore([relay.address], timeout=2.0, breaker_cooldown=0.05))
    try:
        value = pattern(8 * MIB, 8)
        assert store.set("k", [value], None)
        # One cut of a pooled connection looks like a server restart: retried on a fresh one.
        relay.arm("cut", after=3 * MIB)
        got = store.get("k")
        assert relay.fired.is_set(), "the relay never cut the transfer"
        assert got is not NO_VALUE and bytes(got) == value
        # Cut again on the fresh connection: a fault.
        relay.arm("cut", after=3 * MIB, times=2)
        with pytest.raises(StoreFault):
            store.get("k")
        assert relay.fired.is_set(), "the relay never cut the transfer"
        _wait_for_breaker(store)
        got = store.get("k")
        assert got is not NO_VALUE and bytes(got) == value
    finally:
        store.close()


def test_timeout_mid_transfer_discards_the_half_read_connection(
    server: MemcachedServer, relay: Relay
) -> None:
    raw = MemcachedStore([relay.address], timeout=0.3, breaker_cooldown=0.05, max_pool_size=1)
    store = ChunkedStore(raw)
    try:
        value = pattern(8 * MIB, 9)
        assert store.set("k", [value], None)
        relay.arm("stall", after=3 * MIB)
        with pytest.raises(StoreFault):
            store.get("k")
        assert relay.fired.is_set(), "the relay never stalled the transfer"
        # The rest of the old reply now arrives on the old socket: had that socket gone back
        # to the pool, the next read would start in the middle of it.
        relay.release()
        _wait_for_breaker(store)
        for _ in range(3):
            got = store.get("k")
            assert got is not NO_VALUE and bytes(got) == value
        assert store.set("small", [b"fine"], None)
        assert bytes(store.get("small")) == b"fine"
    finally:
        store.close()


def test_server_killed_mid_transfer_is_a_fault_and_the_store_recovers(
    memcached_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_factory(memory_mb=256)
    raw = MemcachedStore([server.address], timeout=1.0, breaker_cooldown=0.05)
    store = ChunkedStore(raw)
    value = pattern(64 * MIB, 10)
    outcomes: list[object] = []
    started = threading.Event()

    def read_repeatedly() -> None:
        started.set()
        while True:
            try:
                got = store.get("k")
            except StoreFault as fault:
                outcomes.append(fault)
                return
            # Before the kill: whole values only, never a mix.
            outcomes.append(got is not NO_VALUE and bytes(got) == value)

    try:
        assert store.set("k", [value], None)
        reader = threading.Thread(target=read_repeatedly)
        reader.start()
        started.wait()
        while not outcomes:  # one whole read first, so the kill lands in a later one
            time.sleep(0.001)
        server.kill()
        reader.join(10)
        assert not reader.is_alive(), "the read did not end within 10 s of the kill"
        assert isinstance(outcomes[-1], StoreFault)
        assert all(outcome is True for outcome in outcomes[:-1])
        server.start()  # same port, empty
        _wait_for_breaker(store)
        assert store.get("k") is NO_VALUE
        assert store.set("k", [value], None)
        got = store.get("k")
        assert got is not NO_VALUE and bytes(got) == value
    finally:
        store.close()


def _wait_for_breaker(store: ChunkedStore, within: float = 5.0) -> None:
    """Wait until the store's breakers let calls through again (cool-downs are short here)."""
    deadline = time.monotonic() + within
    while True:
        try:
            store.get("probe")
            return
        except StoreFault:
            assert time.monotonic() < deadline, f"the store did not recover in {within} s"
            time.sleep(0.02)


def test_simple_cache_copies_a_big_value_once_each_way() -> None:
    import numpy as np

    from nbcache import SimpleCache

    cache = SimpleCache()
    array = np.random.default_rng(2).random(32 * MIB // 8)
    with resident_growth() as write:
        assert cache.set("array", array)
    with resident_growth() as read:
        got = cache.get("array")
        got.sum()  # every page of the result touched (array_equal would add a temporary)
    assert np.array_equal(got, array)
    # The store keeps its own copy (in a memory file, outside the resident set until mapped)
    # and hands out the caller's own, copy-on-write: at most one copy each way.
    assert write.peak <= 1.10 * array.nbytes, write.peak / array.nbytes
    assert read.peak <= 1.10 * array.nbytes, read.peak / array.nbytes
