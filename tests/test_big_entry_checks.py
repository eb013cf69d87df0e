"""Asking about a big entry moves none of it: ``has``, ``add`` and ``delete`` use its manifest.

The server's own count of bytes it sent (``bytes_written``) is read around each call: a call
that read the value would send its 64 MiB. Each check is also right: a big entry with a chunk
evicted is not there, so ``has`` says no and ``add`` replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

import numpy as np
import pytest
from memcached_server import MemcachedServer
from pymemcache.client.base import Client

from nbcache import MemcachedCache

pytestmark = [pytest.mark.memcached, pytest.mark.slow]  # 64 MiB values

SECRET = "big-entry-checks-secret-0123456789"
MIB = 1024 * 1024
#: Bytes a check may make the server send: manifests, generations and small replies.
SMALL = MIB


@pytest.fixture
def server(memcached_factory: Callable[..., MemcachedServer]) -> MemcachedServer:
    return memcached_factory(memory_mb=512)


def bytes_sent(server: MemcachedServer) -> int:
    client = Client(("127.0.0.1", server.port), timeout=5)
    try:
        return int(client.stats()[b"bytes_written"])
    finally:
        client.close()


def sent_by(server: MemcachedServer, call: Callable[[], object]) -> tuple[object, int]:
    before = bytes_sent(server)
    result = call()
    return result, bytes_sent(server) - before


def big(fill: int) -> np.ndarray:
    return np.full(64 * MIB // 8, fill, dtype=np.int64)


@pytest.mark.parametrize("compress", [False, True])
def test_has_add_and_delete_of_a_big_entry_move_none_of_it(
    server: MemcachedServer, compress: bool
) -> None:
    cache = MemcachedCache([server.address], secret=SECRET, compress=compress)
    value = np.arange(64 * MIB // 8, dtype=np.int64)  # compresses, but not to nothing
    assert cache.set("big", value)
    for name, call, expected in [
        ("has", lambda: cache.has("big"), True),
        ("add", lambda: cache.add("big", big(2)), False),
        ("delete", lambda: cache.delete("big"), True),
        ("has after delete", lambda: cache.has("big"), False),
    ]:
        result, sent = sent_by(server, call)
        assert result is expected, name
        assert sent < SMALL, f"{name} made the server send {sent / MIB:.1f} MiB"
    assert cache.get("big") is None


def test_a_big_entry_missing_a_chunk_is_not_there_and_add_replaces_it(
    server: MemcachedServer,
) -> None:
    cache = MemcachedCache([server.address], secret=SECRET)
    assert cache.set("big", big(1))
    raw = Client(("127.0.0.1", server.port), timeout=5)
    dump = server.command(b"lru_crawler metadump all").decode().split()
    chunks = [unquote(word.removeprefix("key=")) for word in dump if "chunk" in word]
    assert chunks, "the entry should be chunked"
    assert raw.delete(chunks[0], noreply=False)  # evicted, as it were
    raw.close()
    result, sent = sent_by(server, lambda: cache.has("big"))
    assert result is False and sent < SMALL
    result, sent = sent_by(server, lambda: cache.add("big", big(3)))
    assert result is True and sent < SMALL
    np.testing.assert_array_equal(cache.get("big"), big(3))


def test_add_of_a_big_entry_over_a_cleared_one_stores_it(server: MemcachedServer) -> None:
    cache = MemcachedCache([server.address], secret=SECRET)
    assert cache.set("big", big(1))
    assert cache.clear()
    assert not cache.has("big")
    result, sent = sent_by(server, lambda: cache.add("big", big(4)))
    assert result is True and sent < SMALL
    np.testing.assert_array_equal(cache.get("big"), big(4))
