"""What loopback TCP moves between two processes: the bare-socket figure big transfers face.

:class:`BareSocket` starts a peer process on 127.0.0.1 that, on request, sends ``size`` bytes
from memory it has touched, or receives ``size`` bytes into such memory and acknowledges them.
The benchmarks time :meth:`BareSocket.send` and :meth:`BareSocket.receive` next to nbcache's
writes and first hits, in the same run, so that a ratio of the two means something on a shared
machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

PEER = textwrap.dedent(
    """
    import socket, sys
    size = int(sys.argv[1])
    memory = memoryview(bytearray(size))  # zero-filled, so touched: never the bottleneck
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        command = conn.recv(1)
        if not command:
            break
        if command == b"S":  # send `size` bytes
            conn.sendall(memory)
        else:  # receive `size` bytes, then say so
            done = 0
            while done < size:
                done += conn.recv_into(memory[done:], size - done)
            conn.sendall(b"k")
    """
)


class BareSocket:
    """The bare-socket peer: a process that sends or takes ``size`` bytes on request."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.process = subprocess.Popen(
            [sys.executable, "-c", PEER, str(size)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline())
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = memoryview(bytearray(size))  # touched once: a warm receive buffer

    def send(self, data: memoryview) -> None:
        self.sock.sendall(b"R")
        self.sock.sendall(data)
        assert self.sock.recv(1) == b"k"

    def receive(self) -> None:
        self.sock.sendall(b"S")
        done = 0
        while done < self.size:
            done += self.sock.recv_into(self.buffer[done:], self.size - done)

    def close(self) -> None:
        self.sock.close()
        self.process.wait(10)


def bare_seconds(size: int, rounds: int = 3) -> dict[str, float]:
    """Median seconds for ``size`` bytes over one loopback TCP connection, each way."""
    import time

    peer = BareSocket(size)
    data = memoryview(bytearray(size))
    sends, receives = [], []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            peer.send(data)
            sends.append(time.perf_counter() - started)
            started = time.perf_counter()
            peer.receive()
            receives.append(time.perf_counter() - started)
    finally:
        peer.close()
    return {"send": sorted(sends)[len(sends) // 2], "receive": sorted(receives)[len(receives) // 2]}
