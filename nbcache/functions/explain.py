"""Miss explanations: why a call of a cached function found no usable entry.

For each entry a cached function stores, it keeps a *record* of what went into the key
(:func:`entry_meta`): the digest of each argument by name, of each global input, the code
fingerprint, the function's own code, each user-defined helper's fingerprint, ``version=``
and the function's generation, with the entry's expiry. :func:`explain` compares a call's key
material with the records of the function's recent entries and names what differs: "argument
`df` changed", "helper `clean` was edited", "expired 40 s ago", "cleared with cache_clear()".

Records are a convenience, so a miss never waits for one: it hands its record to this
process's :class:`RecordBook` (an append to a bounded queue) and goes on. The book keeps the
last :data:`RECENT_ENTRIES` records of each function for explanations in this process. For a
shared store it also writes them to the store about a second later, from the process's
background timer, each into one of :data:`RECENT_ENTRIES` slots beside the function's entries
(chosen by the entry's key, so a key's newer record replaces its older one): explanations
then work in every kernel sharing the store. No record is ever read back and rewritten.
An entry whose hidden inputs changed says which: "`sales.csv` changed 2 min ago".
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from nbcache.entries.entry_store import EntryStore
from nbcache.entries.envelope import Entry
from nbcache.functions.call_key import CallKey
from nbcache.functions.timer import shared_timer
from nbcache.inputs.environment import ValueDigest
from nbcache.inputs.hidden import recorded_change
from nbcache.stores.api import NoValue

log = logging.getLogger(__name__)

#: How many recent entries' records a function keeps (and slots it writes them to).
RECENT_ENTRIES = 16
#: Seconds a record waits in this process before it is written to a shared store.
WRITE_DELAY = 1.0

HIT = "hit"
NO_ENTRY = "no entry yet"

Meta = dict[str, Any]
Records = dict[str, dict[str, Any]]


def entry_meta(
    call: CallKey,
    generation: str,
    own_code: str,
    helpers: Mapping[str, str],
) -> Meta:
    """What a stored entry records about its key (JSON-able).

    ``own_code`` digests the function's own code object; ``helpers`` maps each user-defined
    helper it reaches (not the function itself) to its fingerprint.
    """
    return {
        "generation": generation,
        "code": call.code,
        "own_code": own_code,
        "helpers": dict(helpers),
        "version": call.version,
        "args": call.arguments,
        "globals": call.global_inputs,
    }


class Record(NamedTuple):
    """One stored entry's record, as a miss hands it over (its metadata is built later)."""

    call: CallKey
    generation: str
    own_code: str
    helpers: Mapping[str, str]
    expires: float | None
    stored: float

    def as_dict(self) -> dict[str, Any]:
        """The record as it is kept in a store and compared by :func:`explain`."""
        meta = entry_meta(self.call, self.generation, self.own_code, self.helpers)
        return {"key": self.call.key, "meta": meta, "expires": self.expires, "stored": self.stored}


def record_slot_key(records_key: str, entry_key: str) -> str:
    """The store key of the slot the record of ``entry_key`` goes to."""
    # Entry keys end in hex digits of a hash: their last four pick the slot evenly.
    return f"{records_key}:{int(entry_key[-4:], 16) % RECENT_ENTRIES}"


def record_slot_keys(records_key: str) -> list[str]:
    """Every slot key of a function's records."""
    return [f"{records_key}:{slot}" for slot in range(RECENT_ENTRIES)]


class Shelf:
    """One function's records in one store: the recent ones, and those not written yet."""

    __slots__ = ("recent", "shared", "unwritten")

    def __init__(self, shared: bool) -> None:
        self.recent: deque[Record] = deque(maxlen=RECENT_ENTRIES)
        self.unwritten: dict[str, Record] = {}
        #: Whether the store is shared: its records are written there.
        self.shared = shared


class RecordBook:
    """The records of this process's cached functions (see the module's docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._shelves: weakref.WeakKeyDictionary[EntryStore, dict[str, Shelf]] = (
            weakref.WeakKeyDictionary()
        )
        self._write_pending = False
        self._exit_hook = False

    def shelf(self, entries: EntryStore, records_key: str, shared: bool) -> Shelf:
        """Where the records of one function in one store go (keep it: it does not change)."""
        with self._lock:
            shelves = self._shelves.get(entries)
            if shelves is None:
                shelves = self._shelves[entries] = {}
            shelf = shelves.get(records_key)
            if shelf is None:
                shelf = shelves[records_key] = Shelf(shared)
            return shelf

    def add(self, shelf: Shelf, record: Record) -> None:
        """Keep ``record`` on ``shelf``; for a shared store, write it there soon."""
        shelf.recent.append(record)  # a deque append: safe without the lock
        if not shelf.shared:
            return
        with self._lock:
            unwritten = shelf.unwritten
            unwritten.pop(record.call.key, None)
            unwritten[record.call.key] = record
            if len(unwritten) > RECENT_ENTRIES:
                del unwritten[next(iter(unwritten))]
            if self._write_pending:
                return
            self._write_pending = True
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self.write)
        shared_timer.call_at(time.monotonic() + WRITE_DELAY, self._write_job)

    def recent(self, entries: EntryStore, records_key: str) -> list[Record]:
        """This process's recent records of one function in one store, oldest first."""
        with self._lock:
            shelf = self._shelves.get(entries, {}).get(records_key)
        return [] if shelf is None else list(shelf.recent)

    def write(self) -> None:
        """Write every unwritten record to its store now (failures are logged at DEBUG)."""
        with self._lock:
            self._write_pending = False
            batches = []
            for entries, shelves in list(self._shelves.items()):
                for records_key, shelf in shelves.items():
                    if shelf.unwritten:
                        batches.append((entries, records_key, list(shelf.unwritten.values())))
                        shelf.unwritten.clear()
        for entries, records_key, records in batches:
            for record in records:
                try:
                    slot = record_slot_key(records_key, record.call.key)
                    entries.set(slot, record.as_dict(), 0)
                except Exception as problem:  # explanations are a convenience
                    log.debug("nbcache: could not write the record of %r: %r", slot, problem)

    def forget_unwritten(self) -> None:
        """Drop every record not written yet (their stores are gone, say)."""
        with self._lock:
            for shelves in self._shelves.values():
                for shelf in shelves.values():
                    shelf.unwritten.clear()

    def _write_job(self) -> None:
        self.write()


book = RecordBook()
# A forked child keeps no records of its parent's and has no pending write of its own.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=book._reset)


def explain(
    call: CallKey,
    generation: str | None,
    entry: Entry | NoValue,
    records: Records | None,
    current_meta: Callable[[], Meta],
    now: float | None = None,
    digest: ValueDigest | None = None,
) -> str:
    """Why ``call`` misses (or "hit", or "no entry yet"), as one short sentence.

    ``generation`` is the function's current generation (None if there is none),
    ``entry`` what is stored under the call's key, ``records`` the function's recent-entry
    records, ``current_meta`` builds this call's metadata (helper fingerprints are costly),
    ``digest`` the cache's digest of secret inputs (its envelope's ``secret_digest``).
    """
    now = time.time() if now is None else now
    if not isinstance(entry, NoValue) and generation is not None:
        if entry.tag == generation:
            if entry.meta_json:  # hidden inputs recorded: are they unchanged?
                reason, _ = recorded_change(entry.meta_json, digest)
                return HIT if reason is None else reason
            return HIT
        return "cleared with cache_clear()"
    if not records:
        return NO_ENTRY
    own = records.get(call.key)
    if own is not None:
        return _same_key_reason(own, generation, now)
    meta = current_meta()
    best: tuple[int, float, list[str]] | None = None
    for record in records.values():
        reasons = _differences(meta, record["meta"])
        if generation is None or record["meta"].get("generation") != generation:
            reasons.append("cleared with cache_clear()")
        candidate = (len(reasons), -float(record["stored"]), reasons)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    assert best is not None
    reasons = best[2] or ["the entry was evicted or invalidated"]
    return "; ".join(reasons)


def _same_key_reason(record: dict[str, Any], generation: str | None, now: float) -> str:
    if generation is None or record["meta"].get("generation") != generation:
        return "cleared with cache_clear()"
    expires = record.get("expires")
    if expires is not None and expires <= now:
        return f"expired {now - float(expires):.0f} s ago"
    return "the entry was evicted or invalidated"


def _differences(now: Meta, then: Meta) -> list[str]:
    """What differs between this call's key material and an earlier entry's."""
    reasons: list[str] = []
    if now.get("version") != then.get("version"):
        reasons.append("version changed")
    if now.get("own_code") != then.get("own_code"):
        reasons.append("the function's code changed")
    helpers_now, helpers_then = now.get("helpers", {}), then.get("helpers", {})
    for name in sorted(set(helpers_now) | set(helpers_then)):
        before, after = helpers_then.get(name), helpers_now.get(name)
        if before == after:
            continue
        if before is None:
            reasons.append(f"helper `{name}` was added")
        elif after is None:
            reasons.append(f"helper `{name}` is no longer used")
        else:
            reasons.append(f"helper `{name}` was edited")
    if now.get("code") != then.get("code") and len(reasons) == 0:
        reasons.append("the function's code changed")
    for section, label in (("args", "argument"), ("globals", "global")):
        mine, theirs = now.get(section, {}), then.get(section, {})
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                reasons.append(f"{label} `{name}` changed")
    return reasons
