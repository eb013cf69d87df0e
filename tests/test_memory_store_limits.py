"""A full MemoryStore makes room by dropping expired items first, then the least recently used,
and a write to a full store costs the same whatever the store holds."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from nbcache.stores.api import NO_VALUE
from nbcache.stores.memory import MemoryStore


def test_a_full_store_drops_an_expired_item_before_an_older_live_one() -> None:
    store = MemoryStore(threshold=3)
    assert store.set("old", [b"1"], None)
    assert store.set("older-used", [b"2"], None)
    assert store.set("short", [b"3"], 0.05)  # the most recently used, but it expires
    time.sleep(0.1)
    assert store.set("new", [b"4"], None)
    assert store.get("short") is NO_VALUE
    assert [store.get(key) for key in ("old", "older-used", "new")] == [b"1", b"2", b"4"]


class _CountedScans(OrderedDict[str, Any]):
    """The store's item table, counting the looks at every item at once."""

    scans = 0

    def items(self) -> Any:
        type(self).scans += 1
        return super().items()

    def values(self) -> Any:
        type(self).scans += 1
        return super().values()


def test_writes_to_a_full_store_do_not_look_at_every_item() -> None:
    """A loop of distinct calls keeps the store full: each write must stay O(1), not scan
    the items for expired ones while none can have expired."""
    store = MemoryStore(threshold=100)
    for number in range(100):
        assert store.set(f"key{number}", [b"value"], 300)
    store._items = _CountedScans(store._items)
    for number in range(100, 1100):
        assert store.set(f"key{number}", [b"value"], 300)
    assert len(store) == 100
    assert _CountedScans.scans <= 1
    assert store.get("key1099") == b"value" and store.get("key1000") == b"value"
    assert store.get("key999") is NO_VALUE
