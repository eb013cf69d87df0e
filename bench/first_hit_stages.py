"""Where a big first hit through MemcachedCache spends its time: each stage alone.

Starts a private memcached, stores a float64 array (256 MiB by default) and times, medians of
5 calls each, in one process:

* **bare receive**: the bytes over one TCP connection into memory touched before (loopback);
* **fault in fresh memory**: allocating the value's buffer and touching every page;
* **chunks into a buffer**: the memcached store's parallel ``get_chunks_into`` alone;
* **chunked read**: the chunked store's read (transfer, and the digest as chunks land);
* **xxh3 digest** and **MAC check** (the envelope's keyed BLAKE3) of the whole value alone;
* **first hit**: ``MemcachedCache.get`` by a cache that holds no copy of it.

Run: ``python bench/first_hit_stages.py [--mib 256]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_socket import BareSocket

from nbcache import MemcachedCache
from nbcache.stores import buffers
from nbcache.stores.chunk_layout import Manifest, digest, manifest_chunk_keys
from nbcache.testing import MemcachedServer

SECRET = "bench-secret-0123456789abcdef"


def median_seconds(call: Callable[[], Any], calls: int = 5) -> float:
    times = []
    for _ in range(calls):
        gc.collect()
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
        del result
    return statistics.median(times)


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    options = parser.parse_args()
    size = options.mib * 1024 * 1024
    server = MemcachedServer(memory_mb=max(1024, 4 * options.mib)).start()
    try:
        array = np.random.default_rng(0).random(size // 8)
        writer = MemcachedCache([server.address], secret=SECRET, near_bytes=0)
        reader = MemcachedCache([server.address], secret=SECRET, near_bytes=0)
        assert writer.set("big", array, 0)
        namespaced: Any = reader.entries.store
        chunked = namespaced.inner
        raw = chunked.inner
        key = namespaced.inner_key("big")
        manifest = chunked._decode_record(key, raw.get(key))
        assert isinstance(manifest, Manifest)
        chunk_keys = manifest_chunk_keys(key, manifest)

        def chunks_into_buffer() -> memoryview:
            buffer = buffers.allocate(manifest.total, prefault=False)
            targets, offset = [], 0
            for chunk_size in manifest.sizes:
                targets.append(buffer[offset : offset + chunk_size])
                offset += chunk_size
            assert all(raw.get_chunks_into(chunk_keys, targets))
            return buffer

        def fault_in() -> None:
            np.frombuffer(buffers.allocate(size, prefault=False), np.uint8).fill(1)

        value = chunked.get(key)
        entry = namespaced.get("big")
        peer = BareSocket(size)
        try:
            stages = {
                "bare receive (one connection)": median_seconds(peer.receive),
                "fault in fresh memory": median_seconds(fault_in),
                "chunks into a buffer (transfer only)": median_seconds(chunks_into_buffer),
                "chunked read (transfer + digest)": median_seconds(lambda: chunked.get(key)),
                "xxh3 digest alone": median_seconds(lambda: digest([value])),
                "MAC check alone": median_seconds(
                    lambda: reader.entries.envelope.open_header("big", entry)
                ),
                "first hit (MemcachedCache.get)": median_seconds(lambda: reader.get("big")),
            }
        finally:
            peer.close()
        print(f"{options.mib} MiB first hit, each stage alone (medians of 5):")
        for name, seconds in stages.items():
            print(f"  {name:38s} {seconds * 1e3:8.1f} ms  {size / 1e9 / seconds:6.2f} GB/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
