"""A circuit breaker: after a failure, stop calling a dead server for a growing cool-down.

States: ``closed`` (calls go through), ``open`` (calls are refused at once, costing
microseconds instead of a connect timeout), ``half-open`` (the cool-down is over and exactly
one trial call is let through; its outcome closes or re-opens the breaker).

The caller asks :meth:`CircuitBreaker.allow` before each call and reports the outcome of every
allowed call with :meth:`~CircuitBreaker.succeeded`, :meth:`~CircuitBreaker.failed` or, if
the call ended without telling anything about the server (interrupted),
:meth:`~CircuitBreaker.abandoned`. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Guards one server: refuses calls for a cool-down after it fails.

    ``cooldown`` is the first pause after an outage starts; each failed trial doubles it, up to
    ``max_cooldown``. A success resets it. ``clock`` is monotonic seconds (tests may pass
    their own).
    """

    def __init__(
        self,
        cooldown: float = 1.0,
        max_cooldown: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cooldown <= 0 or max_cooldown < cooldown:
            raise ValueError("need 0 < cooldown <= max_cooldown")
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._cooldown = cooldown
        self._opened_at = 0.0
        self._outage_started_at = 0.0

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half-open`` (an open breaker past its cool-down is open
        until a caller takes the trial)."""
        return self._state

    @property
    def cooldown(self) -> float:
        """Seconds the breaker stays open after its latest failure."""
        return self._cooldown

    def retry_in(self) -> float:
        """Seconds until the next trial call is allowed (0 when calls go through)."""
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self._opened_at + self._cooldown - self._clock())

    def allow(self) -> bool:
        """True if the caller may call the server now (and must then report the outcome)."""
        if self.state == "closed":  # the usual case, read without the lock: one attribute
            return True
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "half-open":
                return False  # a trial is already on its way
            if self._clock() - self._opened_at >= self._cooldown:
                self._state = "half-open"
                return True
            return False

    def succeeded(self) -> bool:
        """Record a call that reached the server. True if this ends an outage."""
        if self.state == "closed" and self._cooldown == self.base_cooldown:
            return False  # nothing to change: the usual case, without the lock
        with self._lock:
            recovered = self._state != "closed"
            self._state = "closed"
            self._cooldown = self.base_cooldown
            return recovered

    def failed(self) -> bool:
        """Record a call that could not reach the server. True if this starts an outage."""
        with self._lock:
            now = self._clock()
            starts_outage = self._state == "closed"
            if starts_outage:
                self._cooldown = self.base_cooldown
                self._outage_started_at = now
            elif self._state == "half-open":
                self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            # A failure while already open (a call allowed before the breaker opened) only
            # restarts the cool-down.
            self._state = "open"
            self._opened_at = now
            return starts_outage

    def forget_inherited(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held this one), and no
        trial call pending (the parent's, if any, never reports to the child)."""
        self._lock = threading.Lock()
        if self._state == "half-open":
            self._state = "open"

    def abandoned(self) -> None:
        """Record an allowed call that ended without a verdict; a pending trial is re-armed."""
        with self._lock:
            if self._state == "half-open":
                self._state = "open"
