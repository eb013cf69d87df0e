"""The in-process byte store behind :class:`~nbcache.SimpleCache`."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..api import NO_VALUE, Buffer, CasToken, NoValue, Stored, total_size

log = logging.getLogger(__name__)


@dataclass
class _Item:
    data: bytearray
    expires: float | None  # time.monotonic() deadline
    version: int


class MemoryStore:
    """Bytes in a dict, thread-safe, bounded by item count and by total bytes.

    Past ``threshold`` items or ``max_bytes`` bytes, expired items go first, then the least
    recently used. A value larger than ``max_bytes`` on its own is not stored (``set`` returns
    False). Values are copied in on ``set`` and out on ``get``: the caller may change its
    buffers afterwards, and what ``get`` returns is the caller's own writable memory.
    """

    def __init__(self, threshold: int = 500, max_bytes: int | None = None) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive or None, not {max_bytes}")
        self.threshold = threshold
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._bytes = 0
        self._versions = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Stored | NoValue:
        with self._lock:
            item = self._live(key)
            if item is None:
                return NO_VALUE
            self._items.move_to_end(key)
            data = item.data
        return bytearray(data)  # copied outside the lock: items are never mutated in place

    def get_many(self, keys: Sequence[str]) -> list[Stored | NoValue]:
        return [self.get(key) for key in keys]

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        data = _copy(value)
        with self._lock:
            return self._put(key, data, ttl)

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        data = _copy(value)
        with self._lock:
            if self._live(key) is not None:
                return False
            return self._put(key, data, ttl)

    def gets(self, key: str) -> tuple[Stored | NoValue, CasToken | None]:
        with self._lock:
            item = self._live(key)
            if item is None:
                return NO_VALUE, None
            return bytearray(item.data), CasToken(item.version)

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        data = _copy(value)
        with self._lock:
            item = self._live(key)
            if item is None or item.version != token.value:
                return False
            return self._put(key, data, ttl)

    def delete(self, key: str) -> bool:
        with self._lock:
            live = self._live(key) is not None
            self._drop(key)
            return live

    def clear(self) -> bool:
        with self._lock:
            self._items.clear()
            self._bytes = 0
        return True

    def close(self) -> None:
        self.clear()

    # -- under the lock -------------------------------------------------------------------

    def _live(self, key: str) -> _Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires is not None and item.expires <= time.monotonic():
            self._drop(key)
            return None
        return item

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item.data)

    def _put(self, key: str, data: bytearray, ttl: float | None) -> bool:
        if self.max_bytes is not None and len(data) > self.max_bytes:
            log.debug("not storing %r: %d bytes > max_bytes=%d", key, len(data), self.max_bytes)
            self._drop(key)  # the old value must not outlive a newer write that didn't fit
            return False
        self._drop(key)
        self._versions += 1
        expires = None if ttl is None else time.monotonic() + ttl
        self._items[key] = _Item(data, expires, self._versions)
        self._bytes += len(data)
        self._prune()
        return True

    def _over(self) -> bool:
        too_many = len(self._items) > self.threshold
        return too_many or (self.max_bytes is not None and self._bytes > self.max_bytes)

    def _prune(self) -> None:
        if not self._over():
            return
        now = time.monotonic()
        expired = [k for k, item in self._items.items() if item.expires and item.expires <= now]
        for key in expired:
            self._drop(key)
        while self._over():
            oldest = next(iter(self._items))
            self._drop(oldest)


def _copy(value: Sequence[Buffer]) -> bytearray:
    """One new bytearray holding the concatenated buffers (the store's own copy)."""
    data = bytearray(total_size(value))
    # Assigning through a memoryview is one memcpy; ``data[a:b] = view`` would first copy
    # ``view`` into a temporary bytearray.
    target = memoryview(data)
    offset = 0
    for part in value:
        view = memoryview(part).cast("B") if memoryview(part).format != "B" else memoryview(part)
        target[offset : offset + len(view)] = view
        offset += len(view)
    target.release()
    return data
