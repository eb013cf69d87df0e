"""Many items through one memcached connection without copying them: the bulk transport.

pymemcache joins a value into the command it sends and reads replies 4 KiB per ``recv``,
copying a value about three times on the way in; for the chunks of a big value that caps a
transfer near 1 GB/s. These functions speak the text protocol on the connection's socket
instead:

* :func:`set_items` sends each item as ``[command line, the caller's buffers..., CRLF]`` with
  ``sendmsg`` (scatter-gather: the buffers are sent where they lie), pipelined, and reads
  every reply (``noreply`` stays off, so a refused item is reported, never assumed stored);
* :func:`get_into` sends ``get`` commands and ``recv_into``\\ s each value straight into the
  caller's buffer for it: the bytes are written once, into their final place;
* :func:`get_values` reads a multi-get of small values with a lean parser of its own
  (:class:`GetReply`): one ``sendall``, few ``recv`` calls, values sliced out of what arrived.
  pymemcache's line-by-line parsing costs more than the round trip itself for small hits.

Both raise pymemcache's exceptions or ``OSError`` on faults, like pymemcache itself, so the
connection pool classifies them the same way; a connection that raised must be discarded (the
pool does): its socket may hold half a reply.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pymemcache.client.base import Client

#: The largest expiry memcached parses: it reads the field as a signed 32-bit number, and a
#: command line it cannot parse is refused *before* the value, whose bytes it then reads as
#: commands of their own. As a unix time this is 2038-01-19.
MAX_EXPTIME = 2**31 - 1
#: Items sent before their replies are read. Bounded so that unread replies (8 bytes each)
#: can never fill the socket buffers and stall both sides.
SEND_WINDOW = 64
#: Keys per ``get`` command. memcached takes longer lines, but a bounded line lets the next
#: command be sent while the values of this one arrive, with no risk of both sides blocking.
KEYS_PER_GET = 64
#: Bytes asked for per ``recv`` while reading a ``get`` reply of small values: a whole small
#: reply arrives in one call.
REPLY_READ = 16384
#: The most asked for in one ``recv``, however long the value still arriving.
MAX_REPLY_READ = 4 * 1024 * 1024
#: The slowest transfer a big operation is allowed: an operation moving ``n`` bytes gets
#: ``n / MIN_TRANSFER_RATE`` seconds on top of the store's timeout, so a 1 GiB value still
#: crosses a slow link (about 100 s more), while a server that trickles stays bounded.
MIN_TRANSFER_RATE = 10 * 1000 * 1000
#: The longest value memcached can hold (its ``-I`` goes up to 1024m): a reply announcing a
#: longer one is out of protocol, and is refused before any of it is read.
MAX_VALUE_BYTES = 1024 * 1024 * 1024
#: The smallest item limit memcached accepts (``-I 1k``).
MIN_ITEM_BYTES = 1024
#: Values up to this size are copied out of the reply as ``bytes`` (cheaper to use than a view
#: for small values); larger ones are ``memoryview`` slices of the reply, never copied.
COPY_BELOW = 4096
# A value's header line: its key (printable ASCII), flags and length.
_VALUE_LINE = re.compile(rb"VALUE ([!-~]+) [0-9]+ ([0-9]+)\r\n")
#: Bytes asked for when a reply line is expected. Small, because whatever arrives after the
#: line (the start of a value) is copied once more on its way to the caller's buffer.
LINE_READ = 4096


def transfer_allowance(size: int) -> float:
    """Seconds an operation moving ``size`` bytes gets on top of the timeout."""
    return size / MIN_TRANSFER_RATE


def connected_socket(client: Client) -> socket.socket:
    """The socket of a pooled pymemcache client, connecting it first if needed.

    The pool's clients wrap their sockets so that every ``send``/``recv`` here ends by the
    operation's deadline (:mod:`nbcache.stores.memcached.deadline`).
    """
    if client.sock is None:
        client._connect()  # pymemcache connects lazily; this is how it does so itself
    sock: socket.socket | None = client.sock
    assert sock is not None
    return sock


def set_items(
    sock: socket.socket, items: Sequence[tuple[bytes, Sequence[memoryview]]], expire: int
) -> list[bool]:
    """``set`` each ``(name, buffers)`` item; per item, True if stored, False if refused.

    ``name`` is a valid memcached key; the buffers are flat byte views whose concatenation is
    the value. A refusal (``NOT_STORED``, ``SERVER_ERROR``: over the item limit, out of
    memory) leaves the connection usable. Raises on faults and on replies out of protocol.
    """
    reader = _ReplyReader(sock)
    stored: list[bool] = []
    in_flight = 0
    for name, buffers in items:
        size = sum(buffer.nbytes for buffer in buffers)
        command = b"set %s 0 %d %d\r\n" % (name, expire, size)
        _send(sock, [command, *buffers, b"\r\n"])
        in_flight += 1
        if in_flight == SEND_WINDOW:
            stored.append(_stored(reader.line()))
            in_flight -= 1
    for _ in range(in_flight):
        stored.append(_stored(reader.line()))
    return stored


def store_then_get(
    sock: socket.socket, line: bytes, buffers: Sequence[memoryview], names: Sequence[bytes]
) -> tuple[bytes, dict[bytes, bytes | memoryview]]:
    """One storage command and a ``get`` of ``names``, sent together: a write and a read in
    one round trip.

    ``line`` is the command line with its CRLF (``set <key> <flags> <exptime> <bytes>``),
    ``buffers`` the value. Returns the storage command's reply line (``STORED``,
    ``NOT_STORED``, ``SERVER_ERROR ...``: memcached consumed the value either way) and the
    values found. Raises like :func:`get_values`.
    """
    _send(sock, [line, *buffers, b"\r\n", _get_command(names)])
    reader = _ReplyReader(sock)
    status = reader.line()
    if status != b"STORED" and status != b"NOT_STORED" and not status.startswith(b"SERVER_ERROR"):
        _raise_error_reply(status)
    reply = GetReply(names)
    rest = reader.take_buffered()
    done = reply.feed(rest) if rest else False
    while not done:
        done = reply.feed(sock.recv(min(max(REPLY_READ, reply.missing), MAX_REPLY_READ)))
    return status, reply.values


def delete_items(sock: socket.socket, names: Sequence[bytes]) -> list[bool]:
    """``delete`` each of ``names``, pipelined; per name, True if something was deleted."""
    reader = _ReplyReader(sock)
    deleted: list[bool] = []
    for start in range(0, len(names), SEND_WINDOW):
        batch = names[start : start + SEND_WINDOW]
        sock.sendall(b"".join(b"delete %s\r\n" % name for name in batch))
        for _ in batch:
            line = reader.line()
            if line not in (b"DELETED", b"NOT_FOUND"):
                _raise_error_reply(line)
            deleted.append(line == b"DELETED")
    return deleted


def get_into(
    sock: socket.socket,
    names: Sequence[bytes],
    targets: Sequence[memoryview],
    landed: Callable[[int], None] | None = None,
) -> list[bool]:
    """Read the value of each of ``names`` into the target at the same position.

    Per name: True if its value was found with exactly the target's length and written into
    it; False if missing or of another length (the target's content is then unspecified).
    Names must be distinct valid memcached keys; targets flat writable byte views.
    ``landed(index)`` is called as soon as the value of ``names[index]`` is whole in its
    target; that target is not written again by this call.
    """
    if len(names) != len(targets):
        raise ValueError(f"{len(names)} names but {len(targets)} targets")
    position = {name: index for index, name in enumerate(names)}
    if len(position) != len(names):
        raise ValueError("get_into needs distinct names")
    found = [False] * len(names)
    batches = [names[start : start + KEYS_PER_GET] for start in range(0, len(names), KEYS_PER_GET)]
    if not batches:
        return found
    reader = _ReplyReader(sock)
    sock.sendall(_get_command(batches[0]))
    for index in range(len(batches)):
        if index + 1 < len(batches):
            # The next command waits in the server's socket buffer while this one's values come.
            sock.sendall(_get_command(batches[index + 1]))
        _read_values(reader, position, targets, found, landed)
    return found


def get_values(sock: socket.socket, names: Sequence[bytes]) -> dict[bytes, bytes | memoryview]:
    """The values found for ``names`` (valid memcached keys), by name; missing names are absent.

    Repeated names are asked for once. At most :data:`KEYS_PER_GET` names go in one command,
    whose reply is read whole before the next is sent. Raises pymemcache's exceptions or
    ``OSError`` on faults, on a value for a name not asked for, and on replies out of protocol.
    """
    unique = list(dict.fromkeys(names))
    values: dict[bytes, bytes | memoryview] = {}
    for start in range(0, len(unique), KEYS_PER_GET):
        batch = unique[start : start + KEYS_PER_GET]
        sock.sendall(_get_command(batch))
        reply = GetReply(batch)
        while not reply.feed(sock.recv(min(max(REPLY_READ, reply.missing), MAX_REPLY_READ))):
            pass
        values.update(reply.values)
    return values


def value_sizes(sock: socket.socket, names: Sequence[bytes]) -> list[int | None]:
    """The size of each name's value (None: it has none), without the values.

    Asked with memcached's meta command ``mg <key> s`` (memcached 1.6 or later), pipelined
    :data:`SEND_WINDOW` at a time. Raises on replies out of protocol.
    """
    reader = _ReplyReader(sock)
    sizes: list[int | None] = []
    for start in range(0, len(names), SEND_WINDOW):
        batch = names[start : start + SEND_WINDOW]
        sock.sendall(b"".join([b"mg %s s\r\n" % name for name in batch]))
        for _ in batch:
            line = reader.line()
            if line == b"EN":
                sizes.append(None)
            elif line.startswith(b"HD s") and line[4:].isdigit() and len(line) < 16:
                sizes.append(int(line[4:]))
            else:
                _raise_error_reply(line)
    if reader.buffered:
        _out_of_protocol("bytes after the replies to mg")
    return sizes


def delete(sock: socket.socket, name: bytes) -> bool:
    """``delete`` ``name``: True if it was there. Raises on any reply but ``DELETED`` or
    ``NOT_FOUND`` (pymemcache reads anything else as False, leaving the connection out of
    step with the server)."""
    sock.sendall(b"delete " + name + b"\r\n")
    reader = _ReplyReader(sock)
    line = reader.line()
    if reader.buffered:
        _out_of_protocol("bytes after the reply to delete")
    if line == b"DELETED":
        return True
    if line == b"NOT_FOUND":
        return False
    _raise_error_reply(line)


class GetReply:
    """The parser of one ``get`` reply (``VALUE <key> <flags> <bytes>`` items, then ``END``).

    Feed it the received bytes in any pieces. A value is located by its announced length, so
    its data may hold anything (``END`` lines included). Raises pymemcache's exceptions on a
    reply out of protocol, a value for a name not asked for or sent twice, bytes after
    ``END``, and an empty piece (the server closed the connection).
    """

    def __init__(self, names: Sequence[bytes]) -> None:
        self.values: dict[bytes, bytes | memoryview] = {}
        self._wanted = set(names)
        self._data = b""
        self._position = 0
        self._pieces: list[bytes] = []
        self._pending = 0
        self._need = 1
        self._done = False

    @property
    def missing(self) -> int:
        """Bytes still needed before the next item can be parsed (at least 1)."""
        return max(self._need - (len(self._data) - self._position) - self._pending, 1)

    def feed(self, piece: bytes) -> bool:
        """Take the next received bytes; True once the whole reply has been read."""
        if not piece:
            _closed()
        if self._done:
            _out_of_protocol("bytes after END")
        self._pieces.append(piece)
        self._pending += len(piece)
        if len(self._data) - self._position + self._pending < self._need:
            return False  # a long value still arriving: join its pieces once, at the end
        if self._data or len(self._pieces) > 1:
            self._data = b"".join([self._data[self._position :], *self._pieces])
        else:
            self._data = piece  # the usual small reply: it came whole
        self._position = 0
        self._pieces.clear()
        self._pending = 0
        self._parse()
        return self._done

    def _parse(self) -> None:
        data, position, values, wanted = self._data, self._position, self.values, self._wanted
        size = len(data)
        view = None
        while True:
            # One C call reads a whole header line: this runs for every value of every hit.
            header = _VALUE_LINE.match(data, position)
            if header is None:
                line_end = data.find(b"\r\n", position)
                if line_end < 0:
                    if size - position > LINE_READ:
                        _out_of_protocol("reply line too long")
                    self._need = size - position + 1
                    break
                if line_end == position + 3 and data.startswith(b"END", position):
                    if line_end + 2 != size:
                        _out_of_protocol("bytes after END")
                    position = size
                    self._done = True
                    break
                _raise_error_reply(data[position:line_end])
            name, length = header.groups()
            if name not in wanted or name in values:
                _out_of_protocol(f"unexpected value for key {name[:64]!r}")
            value_size = int(length)
            if value_size > MAX_VALUE_BYTES:
                _out_of_protocol(f"a value of {value_size} bytes announced")
            value_start = header.end()
            value_end = value_start + value_size
            if value_end + 2 > size:
                self._need = value_end + 2 - position
                break
            if data[value_end : value_end + 2] != b"\r\n":
                _out_of_protocol("a value was not followed by CRLF")
            if value_end - value_start < COPY_BELOW:
                values[name] = data[value_start:value_end]
            else:
                view = view or memoryview(data)
                values[name] = view[value_start:value_end]
            position = value_end + 2
        self._position = position


def _out_of_protocol(text: str) -> NoReturn:
    from pymemcache.exceptions import MemcacheUnknownError

    raise MemcacheUnknownError(text)


def _get_command(names: Sequence[bytes]) -> bytes:
    return b"get " + b" ".join(names) + b"\r\n"


def _read_values(
    reader: _ReplyReader,
    position: dict[bytes, int],
    targets: Sequence[memoryview],
    found: list[bool],
    landed: Callable[[int], None] | None,
) -> None:
    """Read one ``get`` reply (values, then ``END``) into ``targets``."""
    from pymemcache.exceptions import MemcacheUnknownError

    while True:
        line = reader.line()
        if line == b"END":
            return
        fields = line.split()
        if len(fields) != 4 or fields[0] != b"VALUE" or not fields[3].isdigit():
            _raise_error_reply(line)
        name, size = fields[1], int(fields[3])
        index = position.get(name)
        if index is None or found[index]:
            raise MemcacheUnknownError(f"unexpected value for key {name[:64]!r}")
        if size == targets[index].nbytes:
            reader.read_into(targets[index])
            found[index] = True
            reader.expect_line_end()
            if landed is not None:
                landed(index)
        else:
            reader.skip(size)
            reader.expect_line_end()


def _stored(line: bytes) -> bool:
    if line == b"STORED":
        return True
    if line == b"NOT_STORED" or line.startswith(b"SERVER_ERROR"):
        # memcached has consumed the value's bytes: the connection is still in step.
        return False
    _raise_error_reply(line)


def _raise_error_reply(line: bytes) -> NoReturn:
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheServerError,
        MemcacheUnknownCommandError,
        MemcacheUnknownError,
    )

    text = line[:200].decode("ascii", "replace")
    if line.startswith(b"CLIENT_ERROR"):
        raise MemcacheClientError(text)
    if line.startswith(b"SERVER_ERROR"):
        raise MemcacheServerError(text)
    if line == b"ERROR":
        raise MemcacheUnknownCommandError(text)
    raise MemcacheUnknownError(f"unexpected reply {text!r}")


def _send(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Send every part, in order, without joining them."""
    if not hasattr(sock, "sendmsg") or _is_tls(sock):
        # TLS sockets have no sendmsg; each part is encrypted from where it lies anyway.
        for part in parts:
            sock.sendall(part)
        return
    pending = [memoryview(part) for part in parts]
    while pending:
        # A socket with a timeout sends what fits, and says how much.
        sent = sock.sendmsg(pending)
        while pending and sent >= pending[0].nbytes:
            sent -= pending[0].nbytes
            pending.pop(0)
        if sent:
            pending[0] = pending[0][sent:]


def _is_tls(sock: socket.socket) -> bool:
    import sys

    ssl = sys.modules.get("ssl")
    # A pooled connection's socket is wrapped (a deadline for the whole operation).
    return ssl is not None and isinstance(getattr(sock, "wrapped", sock), ssl.SSLSocket)


class _ReplyReader:
    """Reply lines from a socket, and values read straight into the caller's memory."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray(LINE_READ * 2)
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return self._end - self._start

    def take_buffered(self) -> bytes:
        """The bytes received and not yet read (they are read now)."""
        taken = bytes(self._buffer[self._start : self._end])
        self._start = self._end
        return taken

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        while True:
            cut = self._buffer.find(b"\r\n", self._start, self._end)
            if cut >= 0:
                line = bytes(self._buffer[self._start : cut])
                self._start = cut + 2
                return line
            self._fill()

    def read_into(self, target: memoryview) -> None:
        """Fill ``target`` exactly: first with what is buffered, then from the socket."""
        size = target.nbytes
        have = min(self._end - self._start, size)
        if have:
            target[:have] = self._buffer[self._start : self._start + have]
            self._start += have
        offset = have
        while offset < size:
            received = self._sock.recv_into(target[offset:])
            if not received:
                _closed()
            offset += received

    def skip(self, size: int) -> None:
        """Drop the next ``size`` bytes (a value nobody wants in that shape)."""
        scratch = memoryview(bytearray(min(size, 1 << 20)))
        while size:
            take = min(size, scratch.nbytes)
            self.read_into(scratch[:take])
            size -= take

    def expect_line_end(self) -> None:
        """Consume the CRLF after a value."""
        from pymemcache.exceptions import MemcacheUnknownError

        if self.line() != b"":
            raise MemcacheUnknownError("a value was not followed by CRLF")

    def _fill(self) -> None:
        if self._start:
            # Keep only the unread part, at the front.
            remaining = self._end - self._start
            self._buffer[:remaining] = self._buffer[self._start : self._end]
            self._start, self._end = 0, remaining
        if self._end >= LINE_READ:
            from pymemcache.exceptions import MemcacheUnknownError

            raise MemcacheUnknownError("reply line too long")
        view = memoryview(self._buffer)
        received = self._sock.recv_into(view[self._end : self._end + LINE_READ])
        if not received:
            _closed()
        self._end += received


def _closed() -> NoReturn:
    from pymemcache.exceptions import MemcacheUnexpectedCloseError

    raise MemcacheUnexpectedCloseError()
