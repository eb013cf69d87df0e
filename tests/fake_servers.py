"""Broken and hostile memcached servers: a thread with a listening socket on 127.0.0.1.

Not a mock of a healthy server: each plays one way a real peer goes wrong. ``silent`` accepts
and reads but never answers (a hung process); ``slow`` answers each command correctly but one
byte at a time (an overloaded or hostile server); ``flood`` answers with an endless line
(garbage at full speed); ``garbage`` answers with lines that are not memcached's.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

#: Seconds between the bytes of a slow server's replies.
SLOW_BYTE_INTERVAL = 0.2
#: Bytes a flooding server sends on one connection before it gives up.
FLOOD_LIMIT = 512 * 1024 * 1024


def slow_reply(request: bytes) -> bytes:
    """A correct reply to the first command of ``request`` (a value of 64 bytes for reads)."""
    words = request.split(b"\r\n", 1)[0].split()
    command = words[0] if words else b""
    if command in (b"get", b"gets"):
        names = words[1:]
        cas = b" 1" if command == b"gets" else b""
        items = [b"VALUE %s 0 64%s\r\n%s\r\n" % (name, cas, b"x" * 64) for name in names]
        return b"".join(items) + b"END\r\n"
    if command in (b"set", b"add", b"cas"):
        return b"STORED\r\n"
    if command == b"delete":
        return b"DELETED\r\n"
    if command == b"stats":
        return b"STAT item_size_max 1048576\r\nEND\r\n"
    if command == b"mg":
        return b"HD s64\r\n"
    return b"ERROR\r\n"


class FakeServer:
    """A misbehaving server on a free port of 127.0.0.1 (``behaviour``: see the module)."""

    def __init__(self, behaviour: str) -> None:
        assert behaviour in ("silent", "slow", "flood", "garbage"), behaviour
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._sockets.append(connection)
            self._start(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(0.1)
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                try:
                    request = connection.recv(65536)
                except TimeoutError:
                    continue
                if not request:
                    return
                if self.behaviour == "slow":
                    for byte in slow_reply(request):
                        if self._closed.wait(SLOW_BYTE_INTERVAL):
                            return
                        connection.sendall(bytes([byte]))
                elif self.behaviour == "flood":
                    piece = b"z" * 65536
                    for _ in range(FLOOD_LIMIT // len(piece)):
                        if self._closed.is_set():
                            return
                        try:
                            connection.sendall(piece)
                        except TimeoutError:
                            continue
                elif self.behaviour == "garbage":
                    connection.sendall(b"HELLO THERE\r\nthis is not memcached\r\n")

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)


@contextlib.contextmanager
def fake_server(behaviour: str) -> Iterator[FakeServer]:
    server = FakeServer(behaviour)
    try:
        yield server
    finally:
        server.close()


def elapsed(operation: object) -> tuple[object, float]:
    """``operation()`` and the seconds it took."""
    start = time.monotonic()
    result = operation()  # type: ignore[operator]
    return result, time.monotonic() - start
