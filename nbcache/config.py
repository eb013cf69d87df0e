"""The default cache: what ``@cached_result`` and ``%%cache`` use when given none.

Set it with :func:`configure` (a cache object or a URL) or the ``NBCACHE_URL`` environment
variable, read at first use. With neither, an in-process :class:`~nbcache.SimpleCache`.

URLs::

    simple://                                   in-process
        query: threshold, max_bytes, default_timeout
    memcached://127.0.0.1:11211                 one server
    memcached://127.0.0.1:11211,127.0.0.1:11212 several (consistent hashing)
        query: key_prefix, default_timeout, timeout, connect_timeout, near_bytes
    gae://                                      App Engine's memcache service
        query: key_prefix, default_timeout, timeout
"""

from __future__ import annotations

import os
import threading
from urllib.parse import parse_qsl, urlsplit

from nbcache.cache import Cache, GAEMemcachedCache, MemcachedCache, SimpleCache
from nbcache.exceptions import ConfigurationError

ENV_VAR = "NBCACHE_URL"
_lock = threading.Lock()
_default: Cache | None = None

_SIMPLE_OPTIONS = {"threshold": int, "max_bytes": int, "default_timeout": float}
_MEMCACHED_OPTIONS = {
    "key_prefix": str,
    "default_timeout": float,
    "timeout": float,
    "connect_timeout": float,
    "near_bytes": int,
}
_GAE_OPTIONS = {"key_prefix": str, "default_timeout": float, "timeout": float}


def configure(cache: Cache | str | None = None) -> Cache:
    """Set the default cache that ``@cached_result`` and ``%%cache`` use; returns it.

    Args:
        cache: a cache object (``SimpleCache(...)``, ``MemcachedCache(...)``), a URL, or
            None to go back to ``NBCACHE_URL`` (read again at the next use) or, without it,
            an in-process cache. URLs:

            - ``simple://`` with query options ``threshold``, ``max_bytes``,
              ``default_timeout``;
            - ``memcached://HOST:PORT[,HOST:PORT...]`` with query options ``key_prefix``,
              ``default_timeout``, ``timeout``, ``connect_timeout``.

    Raises :class:`~nbcache.exceptions.ConfigurationError` for a URL it cannot use, naming
    what is wrong; the previous default stays in place then.
    """
    global _default
    new_default = None if cache is None else cache_from(cache)
    with _lock:
        _default = new_default
    return get_cache()


def get_cache() -> Cache:
    """The default cache, made on first use from ``NBCACHE_URL`` or in-process."""
    global _default
    with _lock:
        if _default is None:
            _default = cache_from(os.environ.get(ENV_VAR) or "simple://")
        return _default


def cache_from(spec: Cache | str) -> Cache:
    """A cache from a cache object (returned as is) or a URL."""
    if isinstance(spec, Cache):
        return spec
    if not isinstance(spec, str):
        raise ConfigurationError(
            f"expected a cache object or a URL string, got {type(spec).__name__}"
        )
    parts = urlsplit(spec.strip())
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "simple":
        return SimpleCache(**_typed(spec, options, _SIMPLE_OPTIONS))  # type: ignore[arg-type]
    if parts.scheme == "memcached":
        if "@" in parts.netloc:
            # Not echoed: the part before '@' may be a password.
            raise ConfigurationError(
                f"the cache URL memcached://...@{parts.netloc.rpartition('@')[2]} holds a user "
                "name or password; memcached takes none: write memcached://HOST:PORT[,HOST:PORT...]"
            )
        if parts.path.strip("/") or parts.fragment:
            raise ConfigurationError(
                f"{spec!r} has a path or fragment; write memcached://HOST:PORT[,HOST:PORT...]"
                "[?option=value&...]"
            )
        if not parts.netloc.strip(" ,"):
            raise ConfigurationError(
                f"no server in {spec!r}; write memcached://HOST:PORT[,HOST:PORT...]"
            )
        servers = [server for server in parts.netloc.split(",") if server.strip()]
        return MemcachedCache(servers, **_typed(spec, options, _MEMCACHED_OPTIONS))  # type: ignore[arg-type]
    if parts.scheme == "gae":
        if parts.netloc or parts.path.strip("/"):
            raise ConfigurationError(
                f"App Engine's memcache takes no server: write gae:// (with ?key_prefix=... "
                f"if you like), not {spec!r}"
            )
        return GAEMemcachedCache(**_typed(spec, options, _GAE_OPTIONS))  # type: ignore[arg-type]
    raise ConfigurationError(
        f"unknown cache URL {spec!r}: use simple://, memcached://HOST:PORT[,HOST:PORT...] or gae://"
    )


def _typed(spec: str, options: dict[str, str], known: dict[str, type]) -> dict[str, object]:
    result: dict[str, object] = {}
    for name, text in options.items():
        if name not in known:
            raise ConfigurationError(
                f"unknown option {name!r} in {spec!r}; known: {', '.join(sorted(known))}"
            )
        try:
            result[name] = known[name](text)
        except ValueError:
            raise ConfigurationError(
                f"option {name}={text!r} in {spec!r} is not a valid {known[name].__name__}"
            ) from None
    return result
