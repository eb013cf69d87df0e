"""The contestants: nbcache and the tools analysts use today, each wrapping one function.

``make(name, function, env)`` returns the memoized callable and a closer. Peers that need a
key get the same hand-made one (:func:`argument_digest`: xxh3_128 over a protocol-5 pickle of
the arguments, buffers hashed where they lie), so they differ only in how they store.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHUNK_BYTES = 1_000_000  # under memcached's stock 1 MiB item limit, with room for key and header


@dataclass
class Env:
    """What a contestant may use: the benchmark's memcached and a scratch directory."""

    memcached: str
    scratch: str


@dataclass
class Contestant:
    name: str
    note: str
    workloads: tuple[str, ...]
    is_cache: bool = True  # False for the raw round trip: it has no miss
    shared: bool = False  # True if another process (kernel) finds what this one stored


ALL = ("small", "array", "frame")

CONTESTANTS = [
    Contestant("floor: dict + xxh3", "in-process dict; a hit returns the stored object", ALL),
    Contestant("functools.lru_cache", "hashable arguments only", ("small",)),
    Contestant("cachelib SimpleCache", "hand-made key; pickles values", ALL),
    Contestant("joblib.Memory", "temp dir", ALL, shared=True),
    Contestant(
        "joblib.Memory mmap_mode='r'",
        "temp dir; arrays come back memory-mapped, read-only",
        ALL,
        shared=True,
    ),
    Contestant("diskcache memoize", "temp dir; arguments pickled into the key", ALL, shared=True),
    Contestant("pickle + pymemcache", "hand-made key, 1 MB chunks", ALL, shared=True),
    Contestant("nbcache SimpleCache", "@cached_result, in-process", ALL),
    Contestant("nbcache MemcachedCache", "@cached_result, memcached on loopback", ALL, shared=True),
    Contestant("raw pymemcache get", "one get of a 100-byte value (reference)", ("small",), False),
]


def by_name(name: str) -> Contestant:
    for contestant in CONTESTANTS:
        if contestant.name == name:
            return contestant
    raise ValueError(f"unknown contestant {name!r}")


def argument_digest(args: tuple[Any, ...]) -> str:
    """A hand-made key: xxh3_128 over the arguments' pickle, big buffers hashed in place."""
    import xxhash

    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(args, protocol=5, buffer_callback=buffers.append)
    hasher = xxhash.xxh3_128(head)
    for buffer in buffers:
        hasher.update(buffer.raw())
    return hasher.hexdigest()


def make(name: str, function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    """The contestant ``name`` memoizing ``function``, and a callable that releases it."""
    builders: dict[str, Callable[[Callable[..., Any], Env], tuple[Callable[..., Any], Any]]] = {
        "floor: dict + xxh3": _floor,
        "functools.lru_cache": _lru_cache,
        "cachelib SimpleCache": _cachelib,
        "joblib.Memory": _joblib,
        "joblib.Memory mmap_mode='r'": _joblib_mmap,
        "diskcache memoize": _diskcache,
        "pickle + pymemcache": _pymemcache,
        "nbcache SimpleCache": _nbcache_memory,
        "nbcache MemcachedCache": _nbcache_memcached,
        "raw pymemcache get": _raw_get,
    }
    return builders[name](function, env)


def _nothing() -> None:
    return None


def settle() -> None:
    """Let nbcache's background work (near copies being made) finish, outside any timing."""
    import sys

    near = sys.modules.get("nbcache.entries.near")
    if near is not None:
        near.shared_tier().settle(60)


def _floor(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    store: dict[tuple[str, str], Any] = {}
    name = function.__qualname__

    def call(*args: Any) -> Any:
        key = (name, argument_digest(args))
        try:
            return store[key]
        except KeyError:
            store[key] = result = function(*args)
            return result

    return call, store.clear


def _lru_cache(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    wrapped = functools.lru_cache(maxsize=None)(function)
    return wrapped, wrapped.cache_clear


def _cachelib(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    from cachelib import SimpleCache

    cache = SimpleCache(threshold=1000, default_timeout=300)
    name = function.__qualname__

    def call(*args: Any) -> Any:
        key = f"{name}:{argument_digest(args)}"
        result = cache.get(key)
        if result is None:
            result = function(*args)
            cache.set(key, result)
        return result

    return call, cache.clear


def _joblib(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    from joblib import Memory

    memory = Memory(_joblib_dir(env, "joblib"), verbose=0)
    return memory.cache(function), _nothing  # the runner deletes the directory


def _joblib_mmap(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    from joblib import Memory

    memory = Memory(_joblib_dir(env, "joblib-mmap"), mmap_mode="r", verbose=0)
    return memory.cache(function), _nothing


def _joblib_dir(env: Env, name: str) -> str:
    """The contestant's directory: the same in every process of one contestant's run, so a
    later process (another kernel) finds what an earlier one stored."""
    import os

    path = os.path.join(env.scratch, name)
    os.makedirs(path, exist_ok=True)
    return path


def _diskcache(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    from diskcache import Cache

    cache = Cache(_joblib_dir(env, "diskcache"), size_limit=2**36)
    return cache.memoize()(function), cache.close


def _memcached_client(env: Env) -> Any:
    from pymemcache.client.base import Client

    host, port = env.memcached.rsplit(":", 1)
    return Client((host, int(port)), connect_timeout=5, timeout=30, no_delay=True)


def _pymemcache(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    client = _memcached_client(env)
    name = function.__qualname__

    def read(key: str) -> Any:
        head = client.get(key)
        if head is None:
            return None
        if head[:1] == b"V":  # the whole pickle fits in one item
            return pickle.loads(memoryview(head)[1:])
        count = int(head[1:])
        chunk_keys = [f"{key}:{i}" for i in range(count)]
        found = client.get_many(chunk_keys)
        if len(found) != count:
            return None
        return pickle.loads(b"".join(found[k] for k in chunk_keys))

    def write(key: str, value: Any) -> None:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) < CHUNK_BYTES:
            client.set(key, b"V" + data, expire=300)
            return
        chunks = {
            f"{key}:{i}": data[start : start + CHUNK_BYTES]
            for i, start in enumerate(range(0, len(data), CHUNK_BYTES))
        }
        client.set_many(chunks, expire=300)
        client.set(key, b"C%d" % len(chunks), expire=300)

    def call(*args: Any) -> Any:
        key = f"{name}:{argument_digest(args)}"
        result = read(key)
        if result is None:
            result = function(*args)
            write(key, result)
        return result

    return call, client.close


def _nbcache(
    function: Callable[..., Any], cache: Any
) -> tuple[Callable[..., Any], Callable[[], None]]:
    from nbcache import cached_result

    return cached_result(cache=cache)(function), _nothing


def _nbcache_memory(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    from nbcache import SimpleCache

    return _nbcache(function, SimpleCache(threshold=1000))


def _nbcache_memcached(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    from nbcache import MemcachedCache

    # One secret per contestant run, so its memory measurement reads what its timing stored.
    secret = "nbcache-bench:" + env.scratch
    cache = MemcachedCache([env.memcached], key_prefix="bench", secret=secret)
    return _nbcache(function, cache)


def _raw_get(function: Callable[..., Any], env: Env) -> tuple[Callable[..., Any], Any]:
    """Not a cache: one pymemcache ``get`` of a small stored value, the round-trip floor."""
    client = _memcached_client(env)
    client.set("bench-raw-get", b"x" * 100, expire=300)

    def call(*args: Any) -> Any:
        return client.get("bench-raw-get")

    return call, client.close
