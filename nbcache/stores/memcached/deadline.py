"""One deadline and one byte budget for a whole memcached operation, whatever the server does.

A socket timeout bounds each ``recv`` on its own: a server sending one byte every half second
never trips a 2 s timeout and keeps a ``get`` waiting for minutes. Here every call on the
socket gets only the time left until the operation's deadline, so the operation as a whole
ends by then (with ``TimeoutError``, which the pool reports like any other timeout). And a
server that floods a reply (a line without end, a value longer than it could hold) is cut off
once the operation has received more than it can legitimately be sent: what a server says
never makes a reader keep more than that.

:class:`DeadlineClient` is a pymemcache client whose socket is a :class:`DeadlineSocket`;
the pool starts each operation's clock with :meth:`DeadlineClient.start_operation`. The
clock starts once the connection is up: connecting is bounded by ``connect_timeout``. The
store gives operations that move big values more time
(:func:`nbcache.stores.memcached.protocol.transfer_allowance`).
Imported only when a memcached store is made (it imports pymemcache).
"""

from __future__ import annotations

import math
import socket
import time
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheUnknownError

#: Seconds by which an operation may end before or after its deadline. Re-arming the
#: socket's timeout is a system call, so it is skipped while the timeout already set is
#: within this of the time left: a small hit arms the socket at most once.
DEADLINE_SLACK = 0.05


class ReplyTooLong(MemcacheUnknownError):  # type: ignore[misc]
    """The server sent more than the operation's reply can hold: out of protocol."""


class DeadlineSocket:
    """A connected socket whose sends and receives all end by one deadline.

    ``deadline`` is a :func:`time.monotonic` time; calls past it raise ``TimeoutError``.
    ``budget`` is the bytes still allowed to arrive; receiving more raises
    :class:`ReplyTooLong`. Everything else is the wrapped socket's (``wrapped``).
    """

    __slots__ = ("_armed", "budget", "deadline", "wrapped")

    def __init__(self, wrapped: socket.socket) -> None:
        self.wrapped = wrapped
        self.deadline = math.inf
        self.budget: float = math.inf
        self._armed: float | None = wrapped.gettimeout()

    def _count(self, received: int) -> None:
        self.budget -= received
        if self.budget < 0:
            raise ReplyTooLong("the server sent more than the reply can hold")

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out (the operation's deadline passed)")
        armed = self._armed
        # Re-arm unless the timeout set is within the slack of the time left.
        if left < math.inf and (armed is None or abs(armed - left) > DEADLINE_SLACK):
            self.wrapped.settimeout(left)
            self._armed = left

    def recv(self, size: int) -> bytes:
        self._arm()
        data = self.wrapped.recv(size)
        self._count(len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._arm()
        received = self.wrapped.recv_into(buffer, nbytes)
        self._count(received)
        return received

    def send(self, data: Any) -> int:
        self._arm()
        return self.wrapped.send(data)

    def sendall(self, data: Any) -> None:
        # With a timeout set, sendall's timeout bounds the whole send, not each piece.
        self._arm()
        self.wrapped.sendall(data)

    def sendmsg(self, buffers: Any) -> int:
        self._arm()
        return self.wrapped.sendmsg(buffers)

    def settimeout(self, seconds: float | None) -> None:
        self.wrapped.settimeout(seconds)
        self._armed = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class DeadlineClient(Client):  # type: ignore[misc]
    """A pymemcache client whose every operation ends by a deadline (see the module)."""

    sock: Any
    _allowance = 0.0
    _budget: float = math.inf

    def start_operation(self, allowance: float = 0.0, budget: float = math.inf) -> None:
        """Start one operation: it may take ``timeout + allowance`` seconds and receive
        ``budget`` bytes."""
        self._allowance = allowance
        self._budget = budget
        sock = self.sock
        if isinstance(sock, DeadlineSocket):
            self._start(sock)

    def _start(self, sock: DeadlineSocket) -> None:
        sock.deadline = time.monotonic() + self.timeout + self._allowance
        sock.budget = self._budget

    def _connect(self) -> None:
        super()._connect()
        sock = DeadlineSocket(self.sock)
        self._start(sock)
        self.sock = sock
