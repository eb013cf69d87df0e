"""Someone with raw access to the memcached server tries to make a kernel run their code.

memcached has no access control: anyone who reaches the port reads and writes every key. The
attacker here lists every key the cache uses (``lru_crawler metadump hash``), then overwrites
them with raw pickles, with entries in the cache's own record formats carrying a pickle,
with forged envelopes (wrong MAC; right format signed with another secret), and with chunks
and manifests swapped around. Each payload, if it were ever unpickled, would create a marker
directory; the tests assert it never appears, that each read is a miss, that the caller
recomputes the true value, and that refusals are logged.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memcached_server import MemcachedServer
from pymemcache.client.base import Client

from nbcache import MemcachedCache, cached_result
from nbcache.entries.envelope import Envelope
from nbcache.entries.signing import Signer
from nbcache.stores.api import NO_VALUE
from nbcache.stores.chunk_layout import MANIFEST_HEADER
from nbcache.stores.chunked import ChunkedStore
from nbcache.stores.memcached.store import MemcachedStore
from nbcache.testing import resident_growth

pytestmark = pytest.mark.memcached

SECRET = "the-users-secret-0123456789abcdef"
ATTACKER_SECRET = "the-attackers-own-secret-0123456789"
#: The namespace MemcachedCache derives from SECRET, and where on the server its keys are.
NAMESPACE = MemcachedCache(["127.0.0.1:11211"], secret=SECRET).key_prefix
DATA_KEYS = f"k:{len(NAMESPACE)}:{NAMESPACE}:"
NAMESPACE_GENERATION = f"k:{len(NAMESPACE)}:{NAMESPACE}#generation"
BIG = 3 * 1024 * 1024  # bytes: over the 1 MiB item limit, so the value is chunked
MIB = 1024 * 1024


def _size_id(size: int) -> str:
    return f"{size / MIB:.0f} MiB"


class MakesMarker:
    """Pickles to ``os.mkdir(path)``: unpickling it leaves a directory behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def server_keys(server: MemcachedServer) -> list[str]:
    """Every key on the server, as an attacker lists them.

    The crawl walks the hash table, not the LRU lists: a walk of the LRU lists can miss a key
    that memcached moves between its segments meanwhile (a key read on every hit, like a
    generation). Crawling until a crawl finds nothing new catches keys written meanwhile.
    """
    keys: list[str] = []
    for _ in range(5):
        found = [key for key in _crawl(server) if key not in keys]
        if not found and keys:
            break
        keys += found
    return keys


def _crawl(server: MemcachedServer) -> list[str]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump hash\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            assert chunk, f"server closed the connection after {reply[-200:]!r}"
            reply += chunk
    keys = []
    for line in reply.decode().splitlines():
        if line.startswith("key="):
            keys.append(urllib.parse.unquote(line.split()[0][len("key=") :]))
    return keys


@pytest.fixture
def raw(memcached: MemcachedServer) -> Iterator[Client]:
    """The attacker's own client: raw bytes in, raw bytes out."""
    client = Client(("127.0.0.1", memcached.port), timeout=5)
    yield client
    client.close()


@pytest.fixture
def cache(memcached: MemcachedServer) -> MemcachedCache:
    return MemcachedCache([memcached.address], secret=SECRET)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "attacker-was-here"
    yield path
    assert not path.exists(), "an attacker's pickle was loaded"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("nbcache") and r.levelno == logging.WARNING
    ]


def true_big(n: int) -> np.ndarray:
    return np.full(BIG // 8, n, dtype=np.int64)


def fill(cache: MemcachedCache) -> dict[str, Any]:
    """The user's entries: small ones and a chunked one. Returns the true values."""
    truth: dict[str, Any] = {"small-1": {"answer": 1}, "small-2": [2, 2], "big": true_big(7)}
    for key, value in truth.items():
        assert cache.set(key, value), key
    return truth


def assert_recomputed(cache: MemcachedCache, truth: dict[str, Any]) -> None:
    """Each read is a miss; the caller recomputes and stores the true value, which then hits."""
    for key, value in truth.items():
        assert cache.get(key) is None, key
        assert cache.set(key, value), key
        np.testing.assert_equal(cache.get(key), value)


def generation_key(keys: list[str]) -> str:
    """The namespace's generation key (the decorator keeps generations of its own too)."""
    assert NAMESPACE_GENERATION in keys, keys
    return NAMESPACE_GENERATION


def test_raw_pickles_under_every_data_key_are_never_loaded(
    cache: MemcachedCache,
    memcached: MemcachedServer,
    raw: Client,
    marker: Path,
) -> None:
    truth = fill(cache)
    keys = server_keys(memcached)
    assert any("#chunk:" in k for k in keys), f"the big value should be chunked: {keys}"
    payload = pickle_payload(marker)
    for key in keys:
        if key != NAMESPACE_GENERATION:
            assert raw.set(key, payload, noreply=False)
    assert_recomputed(cache, truth)


def test_raw_pickles_under_every_key_including_the_generation_are_never_loaded(
    cache: MemcachedCache,
    memcached: MemcachedServer,
    raw: Client,
    marker: Path,
) -> None:
    truth = fill(cache)
    payload = pickle_payload(marker)
    for key in server_keys(memcached):
        assert raw.set(key, payload, noreply=False)
    for key, value in truth.items():
        assert cache.get(key) is None, key
        cache.set(key, value)  # may or may not be kept: what matters is what is read next
        got = cache.get(key)
        assert got is None or np.array_equal(got, value) or got == value


def test_caching_recovers_after_the_generation_key_is_overwritten(
    cache: MemcachedCache, memcached: MemcachedServer, raw: Client, marker: Path
) -> None:
    truth = fill(cache)
    # In the chunked store's inline-record format, so the namespace reads it as its token.
    planted = pickle_payload(marker) + b"\x13"
    assert raw.set(generation_key(server_keys(memcached)), planted, noreply=False)
    assert_recomputed(cache, truth)


def test_pickles_in_the_caches_own_record_format_are_refused_with_a_warning(
    cache: MemcachedCache,
    memcached: MemcachedServer,
    raw: Client,
    marker: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attacker appends the current generation token and the inline-record tag, so the
    bytes reach the envelope: only the envelope stands between them and the unpickler."""
    truth = {"small-1": {"answer": 1}, "small-2": [2, 2]}
    for key, value in truth.items():
        assert cache.set(key, value)
    keys = server_keys(memcached)
    generation = raw.get(generation_key(keys))
    # The 8-byte generation token and the inline-record tag: what every record ends with.
    assert generation is not None and len(generation) == 8 + 1
    for key in keys:
        if key != NAMESPACE_GENERATION:
            assert raw.set(key, pickle_payload(marker) + generation, noreply=False)
    caplog.set_level(logging.WARNING, logger="nbcache")
    assert_recomputed(cache, truth)
    warnings = refusals(caplog)
    assert len(warnings) == len(truth)
    assert all("not an nbcache entry" in w for w in warnings), warnings


@pytest.mark.parametrize("forgery", ["wrong MAC", "signed with another secret"])
def test_forged_envelopes_under_every_key_are_refused_with_a_warning(
    forgery: str,
    cache: MemcachedCache,
    memcached: MemcachedServer,
    raw: Client,
    marker: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    truth = {"small-1": {"answer": 1}, "small-2": [2, 2]}
    for key, value in truth.items():
        assert cache.set(key, value)
    keys = server_keys(memcached)
    generation = raw.get(generation_key(keys))
    assert generation is not None
    for key in truth:
        memcached_key = f"{DATA_KEYS}{key}"
        assert memcached_key in keys, keys
        if forgery == "wrong MAC":
            # The user's own format and key id, the attacker's payload, a MAC they guessed.
            genuine = raw.get(memcached_key)[: -len(generation)]
            entry = forge_with_wrong_mac(genuine, marker)
        else:
            attacker = Envelope(Signer([ATTACKER_SECRET.encode()]))
            entry = b"".join(bytes(f) for f in attacker.seal(key, MakesMarker(marker), None))
        assert raw.set(memcached_key, entry + generation, noreply=False)
    caplog.set_level(logging.WARNING, logger="nbcache")
    assert_recomputed(cache, truth)
    warnings = refusals(caplog)
    assert len(warnings) == len(truth)
    assert all("bad signature" in w for w in warnings), warnings


def test_a_chunk_replaced_by_the_attacker_is_a_miss(
    cache: MemcachedCache, memcached: MemcachedServer, raw: Client, marker: Path
) -> None:
    truth = {"big": true_big(7)}
    assert cache.set("big", truth["big"])
    chunks = sorted(k for k in server_keys(memcached) if "#chunk:" in k)
    assert len(chunks) >= 3
    original = raw.get(chunks[1])
    forged = pickle_payload(marker)
    assert raw.set(chunks[1], forged + original[len(forged) :], noreply=False)
    # The writer holds a near copy of its own entry, whose manifest is untouched: it reads
    # no chunk, and gets the true value.
    np.testing.assert_equal(cache.get("big"), truth["big"])
    # Another kernel must read the chunks: a miss, then it recomputes.
    other_kernel = MemcachedCache([memcached.address], secret=SECRET, near_bytes=0)
    assert_recomputed(other_kernel, truth)


def test_a_chunk_replaced_with_a_matching_manifest_digest_is_refused_by_the_mac(
    cache: MemcachedCache,
    memcached: MemcachedServer,
    raw: Client,
    marker: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The chunk digest is not keyed: an attacker can recompute it. The MAC still holds."""
    import struct

    import xxhash

    truth = {"big": true_big(7)}
    assert cache.set("big", truth["big"])
    keys = server_keys(memcached)
    manifest_key = f"{DATA_KEYS}big"
    manifest = raw.get(manifest_key)
    write_id, total, count, _, _ = MANIFEST_HEADER.unpack_from(manifest, 0)
    sizes = struct.unpack_from(f"<{count}I", manifest, MANIFEST_HEADER.size)
    chunk_names = [f"{manifest_key}#chunk:{write_id.hex()}:{i}" for i in range(count)]
    assert set(chunk_names) <= set(keys)
    chunks = [raw.get(name) for name in chunk_names]
    last = bytearray(chunks[-1])
    # Inside the array's bytes (the last 8 are the generation token): loading would give a
    # wrong value.
    last[-16:-8] = b"ATTACKER"
    chunks[-1] = bytes(last)
    assert raw.set(chunk_names[-1], chunks[-1], noreply=False)
    digest = xxhash.xxh3_128(b"".join(chunks)).digest()
    forged = (
        MANIFEST_HEADER.pack(write_id, total, count, digest, manifest[MANIFEST_HEADER.size - 1])
        + manifest[MANIFEST_HEADER.size :]
    )
    assert sizes and raw.set(manifest_key, forged, noreply=False)
    caplog.set_level(logging.WARNING, logger="nbcache")
    assert_recomputed(cache, truth)
    assert any("bad signature" in w for w in refusals(caplog))


def test_manifests_swapped_between_keys_are_misses(
    cache: MemcachedCache,
    memcached: MemcachedServer,
    raw: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    truth = {"big-a": true_big(1), "big-b": true_big(2)}
    for key, value in truth.items():
        assert cache.set(key, value)
    a, b = f"{DATA_KEYS}big-a", f"{DATA_KEYS}big-b"
    manifest_a, manifest_b = raw.get(a), raw.get(b)
    assert raw.set(a, manifest_b, noreply=False) and raw.set(b, manifest_a, noreply=False)
    # Swapped alone, each manifest names chunks that do not exist under its new key.
    for key in truth:
        assert cache.get(key) is None
    # The attacker copies the chunks too, so each key holds the other's whole value: the
    # MAC binds the key, so both are refused.
    for source, target in ((a, b), (b, a)):
        for name in server_keys(memcached):
            if name.startswith(source + "#chunk:"):
                copied = raw.get(name)
                assert raw.set(target + name[len(source) :], copied, noreply=False)
    caplog.set_level(logging.WARNING, logger="nbcache")
    caplog.clear()
    assert_recomputed(cache, truth)
    warnings = refusals(caplog)
    assert len(warnings) == 2 and all("bad signature" in w for w in warnings), warnings


@pytest.fixture
def square(memcached: MemcachedServer) -> Any:
    cache = MemcachedCache([memcached.address], secret=SECRET)

    @cached_result(cache=cache)
    def square(n: int) -> int:
        return n * n

    assert [square(n) for n in range(5)] == [0, 1, 4, 9, 16]
    assert [square(n) for n in range(5)] == [0, 1, 4, 9, 16]
    assert square.cache_info()[:2] == (5, 5)  # hits, misses
    return square


def plant_forged_entries(
    memcached: MemcachedServer, raw: Client, marker: Path, where: Callable[[str], bool]
) -> int:
    """Forged envelopes (signed with the attacker's secret) under the keys ``where`` picks."""
    keys = server_keys(memcached)
    generation = raw.get(generation_key(keys))
    assert generation is not None
    attacker = Envelope(Signer([ATTACKER_SECRET.encode()]))
    planted = 0
    for key in keys:
        if key == NAMESPACE_GENERATION or not where(key):
            continue
        cache_key = key.removeprefix(DATA_KEYS)
        forged = b"".join(bytes(f) for f in attacker.seal(cache_key, MakesMarker(marker), None))
        # A record is the value, the generation token, then the inline-record tag.
        assert raw.set(key, forged + generation, noreply=False)
        planted += 1
    return planted


def test_decorated_function_recomputes_the_true_value_after_an_attack(
    square: Any,
    memcached: MemcachedServer,
    raw: Client,
    marker: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bound: the five attacked calls take < 5 s together."""
    assert plant_forged_entries(memcached, raw, marker, lambda key: not key.endswith("#lease"))
    caplog.set_level(logging.WARNING, logger="nbcache")
    start = time.monotonic()
    assert [square(n) for n in range(5)] == [0, 1, 4, 9, 16]
    assert time.monotonic() - start < 5.0
    assert square.cache_info()[:2] == (5, 10)
    assert refusals(caplog)
    assert [square(n) for n in range(5)] == [0, 1, 4, 9, 16]
    assert square.cache_info()[:2] == (10, 10)


def test_a_planted_lease_never_blocks_a_call_for_long(
    square: Any, memcached: MemcachedServer, raw: Client, marker: Path
) -> None:
    """Bound: a call whose value and lease were both forged returns within 10 s."""
    assert plant_forged_entries(memcached, raw, marker, lambda key: True)
    results: list[int] = []
    caller = threading.Thread(target=lambda: results.append(square(3)), daemon=True)
    caller.start()
    caller.join(timeout=10.0)
    returned = results == [9]
    # A hung caller stops waiting once the server is gone: end it here, not in a later test.
    memcached.kill()
    caller.join(timeout=10.0)
    assert returned


def pickle_payload(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(MakesMarker(marker), protocol=5)


def forge_with_wrong_mac(genuine: bytes, marker: Path) -> bytes:
    """An entry in the exact envelope format with the attacker's pickle and a made-up MAC."""
    from nbcache.entries.envelope import Header

    header_end = 8 + int.from_bytes(genuine[4:8], "little")
    payload = pickle_payload(marker)
    header = Header.unpack(genuine[8:header_end])._replace(sizes=[len(payload)])
    header_bytes = header.pack()
    key_id = genuine[header_end : header_end + 4]
    preamble = genuine[:4] + len(header_bytes).to_bytes(4, "little") + header_bytes
    return preamble + key_id + os.urandom(32) + payload


#: A manifest of each format nbcache has read, claiming ``claim`` bytes: format 2 (before
#: manifests were signed), an unsigned one, and a signed one with a made-up tag.
def planted_manifests(claim: int) -> dict[str, bytes]:
    chunk = min(claim, 1 << 30)
    count = claim // chunk
    sizes = struct.pack(f"<{count}I", *([chunk] * count))
    write_id, digest = os.urandom(16), os.urandom(16)
    current = MANIFEST_HEADER.pack(write_id, claim, count, digest, 0) + sizes
    return {
        "format 2": struct.pack("<16sQI16s", write_id, claim, count, digest) + sizes + b"\x14",
        "unsigned": current + b"\x15",
        "forged tag": current + os.urandom(36) + b"\x16",
    }


@pytest.mark.parametrize("claim", [64 * MIB, 1 << 30, 3 << 30, 200 << 30], ids=_size_id)
def test_a_planted_manifest_costs_the_reader_no_memory(
    claim: int,
    cache: MemcachedCache,
    raw: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone without the secret plants a manifest claiming a huge value under the user's
    key. It is refused before it sizes anything. Bounds: peak resident growth < 32 MiB and
    < 5 s per read."""
    caplog.set_level(logging.WARNING, logger="nbcache")
    for form, manifest in planted_manifests(claim).items():
        key = "victim-" + form.replace(" ", "-")
        assert cache.set(key, "the true value")
        assert raw.set(f"{DATA_KEYS}{key}", manifest, noreply=False)
        caplog.clear()
        with resident_growth() as growth:
            start = time.monotonic()
            assert cache.get(key) is None, form
            assert not cache.has(key), form
            seconds = time.monotonic() - start
        assert growth.peak < 32 * MIB, f"{form}: {growth.peak / MIB:.0f} MiB"
        assert seconds < 5.0, f"{form}: {seconds:.1f} s"
        assert refusals(caplog), form
        assert cache.set(key, "recomputed") and cache.get(key) == "recomputed"


def test_without_an_authenticator_a_manifest_sizes_nothing_the_server_does_not_hold(
    memcached: MemcachedServer, raw: Client
) -> None:
    """A chunked store used on its own (no secret) asks the server for the chunks' sizes
    before it allocates: a manifest's claim alone costs nothing. Bound: peak < 32 MiB."""
    store = ChunkedStore(MemcachedStore([memcached.address]))
    assert store.set("k", [b"x" * (3 * MIB)], None)
    for form, manifest in planted_manifests(3 << 30).items():
        assert raw.set("k:k", manifest, noreply=False)
        with resident_growth() as growth:
            assert store.get("k") is NO_VALUE, form
        assert growth.peak < 32 * MIB, f"{form}: {growth.peak / MIB:.0f} MiB"
    store.close()
