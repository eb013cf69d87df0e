"""The test servers live in :mod:`nbcache.testing` (benchmarks use them too)."""

from nbcache.testing import MemcachedServer, free_port, memcached_binary

__all__ = ["MemcachedServer", "free_port", "memcached_binary"]
