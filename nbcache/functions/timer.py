"""One background timer per process, for the chores of cached functions on shared stores.

Renewing the leases of long computations and writing explanation records to the server are
done here, never on a caller's thread and never by a thread of their own: one daemon thread
runs every due job of the process, sleeping until the next one. It starts with the first
job scheduled (so a process that never misses on a shared store never has it), does not keep
the interpreter from exiting, and after ``fork`` the child starts afresh: the parent's jobs
(its leases, its records) stay the parent's.

A job is a callable returning when it wants to run next (``time.monotonic()`` seconds) or
None when it is done. Jobs must be short and must not raise (an exception is logged at DEBUG
and ends the job).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], float | None]


class SharedTimer:
    """Runs jobs at the times they ask for, on one daemon thread (see the module's docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._queue: list[tuple[float, int, Job]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, job: Job) -> None:
        """Run ``job`` at ``when`` (monotonic seconds), then whenever it asks, until None."""
        with self._wake:
            first = not self._queue or when < self._queue[0][0]
            heapq.heappush(self._queue, (when, next(self._order), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbcache-timer", daemon=True)
                self._thread.start()
            elif first:
                self._wake.notify()

    def pending(self) -> int:
        """How many jobs are waiting to run."""
        with self._wake:
            return len(self._queue)

    def _run(self) -> None:
        wake = self._wake
        queue = self._queue
        while True:
            with wake:
                while True:
                    if not queue:
                        wake.wait()
                        continue
                    delay = queue[0][0] - time.monotonic()
                    if delay <= 0:
                        _, _, job = heapq.heappop(queue)
                        break
                    wake.wait(delay)
            try:
                again = job()
            except Exception as problem:  # a chore must never end the timer
                log.debug("nbcache: a background job failed: %r", problem)
                again = None
            if again is not None:
                with wake:
                    heapq.heappush(queue, (again, next(self._order), job))


shared_timer = SharedTimer()
# A forked child has no timer thread (threads do not survive fork) and must not renew its
# parent's leases: it starts with an empty timer.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=shared_timer._reset)
