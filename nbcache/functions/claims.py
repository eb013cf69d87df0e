"""Claims on keys within one process: one caller computes a missed key, the others wait.

A claim is an entry in a process-wide dict: taken with one ``setdefault`` and dropped with one
``pop``, each atomic under the GIL, so a miss pays no lock, no thread and no store write for
it. Threads waiting for a claim wait on an event, made only when the first of them arrives;
coroutines poll (an event would block their loop).

The table counts releases, so a caller that read its key before some release can tell
whether anyone may have stored the key since (and read it again) or not (and compute at once).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable


class Claims:
    """The claims of this process: by key, who holds it (see the module's docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._holders: dict[Hashable, object] = {}
        self._events: dict[Hashable, threading.Event] = {}
        #: Releases so far (counted before each release takes effect): two readings differ if
        #: a claim was released in between.
        self.releases = 0

    def take(self, key: Hashable, owner: object) -> object:
        """Claim ``key`` for ``owner``: returns ``owner`` itself if taken, else the holder.

        ``owner`` must be an object of the caller's own (a thread id it got, an asyncio task):
        the holder is told apart by identity.
        """
        return self._holders.setdefault(key, owner)

    def event(self, key: Hashable, holder: object) -> threading.Event:
        """An event set once ``holder`` no longer holds ``key`` (made on first demand)."""
        event = self._events.setdefault(key, threading.Event())
        # The holder drops its claim before it looks for an event to set: either it finds
        # this one, or the claim is gone by now.
        if self._holders.get(key) is not holder:
            event.set()
        return event

    def release(self, key: Hashable, owner: object) -> None:
        """Drop ``owner``'s claim on ``key`` and wake its waiters."""
        self.releases += 1
        if self._holders.get(key) is owner:
            del self._holders[key]
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def __len__(self) -> int:
        return len(self._holders)


claims = Claims()
# A forked child starts with no claims: its parent's callers are not its own.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=claims._reset)
