"""The chunks of a big value moved over several connections to each server at once.

memcached serves each connection on one of its worker threads (4 by default), and the kernel
copies a connection's bytes on the thread that sends or receives them, so several connections
move more bytes per second than one, up to the cores there are. ``recv_into`` and
``sendmsg`` release the GIL, so Python threads are enough to drive them.

A server's chunks are dealt round-robin into *parts* (one pooled connection each): chunk 0
to part 0, chunk 1 to part 1, and so on, so they arrive roughly in order and a caller can
check them as they land (:func:`receive`'s ``landed``). Parts run on worker threads; the
calling thread waits, passing each landed chunk on. A call returns only when every part has
ended, so no worker writes into the caller's buffers after it: a fault in one part is raised
once all of them are done.

The whole transfer has one deadline, as one operation over one connection would
(:mod:`nbcache.stores.memcached.deadline`): the store's timeout plus the allowance for all
its bytes, counted from the call. A part that starts late (waiting for a worker thread) gets
only what is left of it, and each part's connection may receive only its own part's replies
(its byte budget), so a slow or flooding server costs no more than it would serially.

The pool retries an operation once on a fresh connection when a pooled one turns out to be
stale (the server restarted). A part resumes with the chunks that have not landed yet, so a
chunk reported as landed is never written again.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from nbcache.exceptions import StoreFault
from nbcache.stores.memcached import protocol
from nbcache.stores.memcached.pool import Refused, ServerConnection

if TYPE_CHECKING:
    from nbcache.stores.memcached.deadline import DeadlineClient as Client

T = TypeVar("T")

#: Fewest chunks worth a connection of their own: a small value goes over one.
MIN_CHUNKS_PER_PART = 8
#: Worker threads shared by all transfers of this process.
MAX_WORKERS = 16

_workers: ThreadPoolExecutor | None = None
_workers_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _workers
    with _workers_lock:
        if _workers is None:
            _workers = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="nbcache-transfer")
        return _workers


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's threads: it starts its own pool when needed.
    global _workers, _workers_lock
    _workers = None
    _workers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def parts_of(count: int, connections: int) -> list[list[int]]:
    """Positions ``0..count-1`` dealt round-robin into at most ``connections`` parts."""
    parts = max(1, min(connections, count // MIN_CHUNKS_PER_PART))
    return [list(range(start, count, parts)) for start in range(parts)]


def deal(items: Sequence[T], connections: int) -> list[list[T]]:
    """``items`` dealt round-robin into at most ``connections`` parts (see :func:`parts_of`)."""
    return [[items[position] for position in part] for part in parts_of(len(items), connections)]


class ReceivePart(NamedTuple):
    """Some chunks of one server, read over one connection: their positions in the whole
    transfer, memcached names and targets."""

    server: ServerConnection
    positions: list[int]
    names: list[bytes]
    targets: list[memoryview]
    #: Bytes this part's replies may take in all.
    budget: float


class SendPart(NamedTuple):
    """Some chunks of one server, written over one connection: ``(name, buffers)`` items."""

    server: ServerConnection
    items: list[tuple[bytes, list[memoryview]]]
    #: Bytes this part's replies may take in all.
    budget: float


def receive(
    parts: Sequence[ReceivePart],
    found: list[bool],
    landed: Callable[[int], None] | None,
    allowance: float,
) -> None:
    """Read every part's values into its targets, in parallel; set ``found`` per position.

    ``landed`` is called in the calling thread with each position whose target is whole
    (and will not be written again). The transfer ends by the store's timeout plus
    ``allowance`` seconds from now. Raises :class:`StoreFault` once every part has ended,
    if one failed.
    """
    ends = time.monotonic() + allowance
    if len(parts) == 1 and landed is None:
        _run(parts[0], ends, _receiver(parts[0], found, lambda position: None))
        return
    events: queue.SimpleQueue[int] = queue.SimpleQueue()
    futures = []
    for part in parts:
        future = _pool().submit(_run, part, ends, _receiver(part, found, events.put))
        future.add_done_callback(lambda _: events.put(_PART_ENDED))
        futures.append(future)
    try:
        running = len(futures)
        while running:
            try:
                event = events.get(timeout=1.0)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue
            if event == _PART_ENDED:
                running -= 1
            elif landed is not None:
                landed(event)
    finally:
        outcomes = _settle(futures)
    _raise_first(outcomes)


def send(parts: Sequence[SendPart], expire: int, allowance: float) -> bool:
    """``set`` every part's items, in parallel; True if every item was stored.

    The transfer ends by the store's timeout plus ``allowance`` seconds from now. Raises
    :class:`StoreFault` once every part has ended, if one failed.
    """
    ends = time.monotonic() + allowance
    futures = [_pool().submit(_run, part, ends, _sender(part, expire)) for part in parts[1:]]
    try:
        stored = bool(_run(parts[0], ends, _sender(parts[0], expire)))
    finally:
        outcomes = _settle(futures)
    _raise_first(outcomes)
    return stored and all(outcome is True for outcome in outcomes)


_PART_ENDED = -1


def _receiver(
    part: ReceivePart, found: list[bool], arrived: Callable[[int], None]
) -> Callable[[Client], None]:
    def run(client: Client) -> None:
        # On a retry (a stale pooled connection), only what has not landed yet.
        todo = [index for index, position in enumerate(part.positions) if not found[position]]

        def landed(index: int) -> None:
            position = part.positions[todo[index]]
            found[position] = True
            arrived(position)

        protocol.get_into(
            protocol.connected_socket(client),
            [part.names[index] for index in todo],
            [part.targets[index] for index in todo],
            landed,
        )

    return run


def _sender(part: SendPart, expire: int) -> Callable[[Client], bool]:
    def run(client: Client) -> bool:
        return all(protocol.set_items(protocol.connected_socket(client), part.items, expire))

    return run


def _run(part: ReceivePart | SendPart, ends: float, operation: Callable[[Client], Any]) -> Any:
    # What is left of the transfer's allowance (negative if the part started late: its
    # deadline is then sooner than the timeout alone would make it).
    try:
        return part.server.run(operation, ends - time.monotonic(), part.budget)
    except Refused as error:
        raise StoreFault(str(error)) from error


def _settle(futures: list[Future[Any]]) -> list[Any]:
    """Every future's result or exception, once all have ended."""
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result())
        except BaseException as error:  # raised by _raise_first once all have ended
            outcomes.append(error)
    return outcomes


def _raise_first(outcomes: list[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
