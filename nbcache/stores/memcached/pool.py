"""One memcached server: a pool of pymemcache connections behind a circuit breaker.

A thread takes a connection from the pool for one call and gives it back afterwards, so
replies never cross between threads. A connection whose call failed in any way is closed,
never pooled again: a half-read reply must not be the next caller's answer.

A process made by ``os.fork()`` inherits the pool's sockets, which are the parent's
connections: used from both sides, replies would cross between processes. The child drops
every inherited connection (closing only its own copies of the descriptors) and its locks,
and connects afresh.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from nbcache.exceptions import StoreFault
from nbcache.stores.memcached.breaker import CircuitBreaker

if TYPE_CHECKING:
    from nbcache.stores.memcached.deadline import DeadlineClient as Client

log = logging.getLogger(__name__)

T = TypeVar("T")


class Refused(StoreFault):
    """The server answered but would not store the value (too large, out of memory)."""


class ServerConnection:
    """One memcached server: a pool of pymemcache clients behind a circuit breaker."""

    def __init__(
        self,
        address: str,
        new_client: Callable[[], Client],
        max_idle: int,
        breaker: CircuitBreaker,
    ) -> None:
        self.address = address
        self.breaker = breaker
        self._new_client = new_client
        self._max_idle = max_idle
        self._idle: list[Client] = []
        self._lock = threading.Lock()
        self._last_error = ""
        #: Times a connection was made again after an outage or to a restarted server: its
        #: settings (the item limit) may have changed.
        self.reconnects = 0
        # A store dropped without close() still closes its sockets (no ResourceWarning).
        weakref.finalize(self, _close_all, self._idle)
        _pools.add(self)

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's connections and any lock a parent thread held."""
        self._lock = threading.Lock()
        self.breaker.forget_inherited()
        inherited = self._idle.copy()
        self._idle.clear()
        # Closing the child's copy of a descriptor leaves the parent's connection open.
        _close_all(inherited)

    def run(
        self, operation: Callable[[Client], T], allowance: float = 0.0, budget: float = math.inf
    ) -> T:
        """``operation`` on a pooled client, guarded by the breaker.

        The operation as a whole gets the client's timeout plus ``allowance`` seconds (for
        big transfers), however slowly the server answers, and may receive ``budget`` bytes
        (a server sending more is out of protocol). Raises :class:`StoreFault` when
        the server is unreachable, times out, or the breaker is open; ``Refused`` when the
        server answered with a SERVER_ERROR.
        """
        if not self.breaker.allow():
            raise StoreFault(
                f"memcached server {self.address} is unavailable ({self._last_error}); "
                f"next try in {self.breaker.retry_in():.1f} s"
            )
        try:
            result = self._run_on_pool(operation, allowance, budget)
        except BaseException as error:
            reachable = self._answered(error)
            if reachable is None:
                # Says nothing about the server (a bug, an interrupt): re-arm a pending trial.
                self.breaker.abandoned()
                raise
            self._record(reachable, error)
            from pymemcache.exceptions import MemcacheServerError

            if reachable and isinstance(error, MemcacheServerError):
                raise Refused(f"memcached server {self.address} refused: {error}") from error
            raise StoreFault(
                f"memcached server {self.address} failed: {_describe(error)}"
            ) from error
        self._record(True, None)
        return result

    def _answered(self, error: BaseException) -> bool | None:
        """True if the server answered (refusal, bad request), False if it could not be
        reached, None for errors that say nothing about the server."""
        from pymemcache.exceptions import (
            MemcacheClientError,
            MemcacheError,
            MemcacheServerError,
            MemcacheUnexpectedCloseError,
        )

        if isinstance(error, MemcacheUnexpectedCloseError):
            return False
        if isinstance(error, (MemcacheServerError, MemcacheClientError)):
            return True
        if isinstance(error, (OSError, MemcacheError)):
            return False  # refused, reset, timed out, TLS failure, or a garbled reply
        return None

    def _run_on_pool(self, operation: Callable[[Client], T], allowance: float, budget: float) -> T:
        client = self._checkout()
        reused = client.sock is not None
        client.start_operation(allowance, budget)
        try:
            result = operation(client)
        except BaseException as error:
            client.close()
            if not (reused and _found_closed(error)):
                raise
            # A pooled connection found closed: the server restarted since it was last used.
            # Every idle connection is as stale; retry once on a fresh one.
            log.debug("nbcache: stale connection to %s (%s); reconnecting", self.address, error)
            self.reconnects += 1
            self.drop_idle()
            client = self._new_client()
            client.start_operation(allowance, budget)
            try:
                result = operation(client)
            except BaseException:
                client.close()
                raise
        self._checkin(client)
        return result

    def _record(self, reachable: bool, error: BaseException | None) -> None:
        if reachable:
            if self.breaker.succeeded():
                self.reconnects += 1
                log.info("nbcache: memcached server %s is back", self.address)
            return
        assert error is not None
        self._last_error = _describe(error)
        self.drop_idle()
        if self.breaker.failed():
            log.warning(
                "nbcache: memcached server %s failed (%s): its keys read as misses and writes to "
                "them fail until it answers again; retrying in %.1f s",
                self.address,
                self._last_error,
                self.breaker.cooldown,
            )

    def _checkout(self) -> Client:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_client()

    def _checkin(self, client: Client) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(client)
                return
        client.close()

    def drop_idle(self) -> None:
        """Close every idle connection (calls in progress keep theirs)."""
        with self._lock:
            idle = self._idle.copy()
            self._idle.clear()
        _close_all(idle)


_pools: weakref.WeakSet[ServerConnection] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool.forget_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _found_closed(error: BaseException) -> bool:
    """True if ``error`` says the connection was closed by the other end (a stale one)."""
    from pymemcache.exceptions import MemcacheUnexpectedCloseError

    return isinstance(error, MemcacheUnexpectedCloseError | ConnectionError)


def _close_all(clients: list[Client]) -> None:
    for client in clients:
        client.close()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
