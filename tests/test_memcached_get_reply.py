"""Small multi-gets through memcached: the lean ``get`` reply parser and its use by the store.

The parser is fed replies directly, in every split, and the store is run against a real
memcached, directly and through a TCP relay that hands the reply over a few bytes at a time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from memcached_server import MemcachedServer
from pymemcache.exceptions import MemcacheError

from nbcache.exceptions import StoreFault
from nbcache.stores.api import NO_VALUE
from nbcache.stores.memcached.protocol import GetReply
from nbcache.stores.memcached.store import MemcachedStore

TRICKY = b"a\r\nEND\r\nVALUE b 0 3\r\nxyz\r\nEND\r\n"


def reply_of(items: list[tuple[bytes, bytes]]) -> bytes:
    parts = [b"VALUE %s 0 %d\r\n%s\r\n" % (name, len(value), value) for name, value in items]
    return b"".join(parts) + b"END\r\n"


def parse(names: list[bytes], pieces: list[bytes]) -> dict[bytes, bytes]:
    reply = GetReply(names)
    done = [reply.feed(piece) for piece in pieces]
    assert done == [False] * (len(pieces) - 1) + [True]
    return {name: bytes(value) for name, value in reply.values.items()}


ITEMS = [(b"a", TRICKY), (b"empty", b""), (b"big", bytes(range(256)) * 40), (b"c", b"END")]


def test_values_holding_end_lines_empty_values_and_big_ones_parse_whole() -> None:
    assert parse([b"a", b"empty", b"big", b"c", b"absent"], [reply_of(ITEMS)]) == dict(ITEMS)


@pytest.mark.parametrize("piece_size", [1, 2, 3, 5, 7, 64, 4099])
def test_a_reply_split_anywhere_parses_the_same(piece_size: int) -> None:
    whole = reply_of(ITEMS)
    pieces = [whole[start : start + piece_size] for start in range(0, len(whole), piece_size)]
    assert parse([b"a", b"empty", b"big", b"c"], pieces) == dict(ITEMS)


def test_an_empty_reply_is_all_misses() -> None:
    assert parse([b"a", b"b"], [b"END\r\n"]) == {}


@pytest.mark.parametrize(
    "reply",
    [
        reply_of([(b"stranger", b"v")]),  # a key not asked for
        reply_of([(b"a", b"v"), (b"a", b"v")]),  # the same key twice
        b"VALUE a 0 3\r\nabcd\r\nEND\r\n",  # a value longer than announced
        b"VALUE a 0 x\r\nabc\r\nEND\r\n",  # a length that is not a number
        b"VALUE a 0\r\nEND\r\n",  # a header without its length
        b"END\r\nEND\r\n",  # bytes after END
        b"SERVER_ERROR out of memory\r\n",
        b"ERROR\r\n",
    ],
)
def test_replies_out_of_protocol_raise(reply: bytes) -> None:
    with pytest.raises(MemcacheError):
        GetReply([b"a"]).feed(reply)


def test_a_connection_closed_mid_reply_raises() -> None:
    reply = GetReply([b"a"])
    assert not reply.feed(b"VALUE a 0 10\r\nabc")
    assert reply.missing == 9  # the rest of the value and its CRLF
    with pytest.raises(MemcacheError):
        reply.feed(b"")


class TrickleRelay:
    """A TCP relay to a real server that forwards the server's replies ``step`` bytes at a
    time (the client sees many small ``recv`` results); ``garble`` replaces the next reply."""

    def __init__(self, server_port: int, step: int) -> None:
        self.server_port = server_port
        self.step = step
        self.garble: bytes | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self.listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            for source, target, step in ((client, server, 1 << 16), (server, client, self.step)):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, step), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket, step: int) -> None:
        try:
            while data := source.recv(65536):
                if step != 1 << 16 and self.garble is not None:
                    data, self.garble = self.garble, None
                for start in range(0, len(data), step):
                    target.sendall(data[start : start + step])
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it (Linux)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def relay(memcached: MemcachedServer) -> Iterator[TrickleRelay]:
    relay = TrickleRelay(memcached.port, step=3)
    yield relay
    relay.close()


@pytest.mark.memcached
def test_values_trickling_in_a_few_bytes_at_a_time_read_whole(relay: TrickleRelay) -> None:
    store = MemcachedStore([f"127.0.0.1:{relay.port}"], timeout=5)
    for name, value in ITEMS:
        assert store.set(name.decode(), [value], None)
    keys = ["c", "absent", "a", "empty", "big", "a"]
    expected = [dict(ITEMS)[key.encode()] if key != "absent" else NO_VALUE for key in keys]
    assert store.get_many(keys) == expected
    store.close()


@pytest.mark.memcached
def test_a_garbled_reply_is_a_fault_and_its_connection_is_discarded(
    relay: TrickleRelay,
) -> None:
    store = MemcachedStore([f"127.0.0.1:{relay.port}"], timeout=5, breaker_cooldown=0.01)
    assert store.set("k", [b"v"], None)
    # A value for a key not asked for, then a wrong value for the key that was: a reused
    # connection would hand the second one to the next caller.
    relay.garble = b"VALUE x 0 1\r\nv\r\nEND\r\nVALUE k 0 1\r\nw\r\nEND\r\n"
    with pytest.raises(StoreFault):
        store.get_many(["k"])
    time.sleep(0.05)  # past the breaker's cool-down
    assert store.get_many(["k"]) == [b"v"]
    store.close()
