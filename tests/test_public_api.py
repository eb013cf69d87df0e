"""The public API: what ``import nbcache`` offers, what it costs, and how it takes settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nbcache
from nbcache.exceptions import UnhashableValue

SECRET = "0123456789abcdef0123456789abcdef"
PUBLIC = {
    "Cache",
    "CacheInfo",
    "ConfigurationError",
    "Entry",
    "GAEMemcachedCache",
    "MemcachedCache",
    "NO_VALUE",
    "NbcacheError",
    "SimpleCache",
    "UnhashableValue",
    "UnpicklableValueError",
    "cached_result",
    "configure",
    "get_cache",
    "load_ipython_extension",
    "register_token",
}


def test_dir_lists_the_public_names_and_each_resolves() -> None:
    assert set(dir(nbcache)) == PUBLIC | {"__version__"}
    assert set(nbcache.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(nbcache, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'SimpleCahce'"):
        _ = nbcache.SimpleCahce  # type: ignore[attr-defined]


def test_importing_and_using_the_in_process_cache_loads_no_heavy_library() -> None:
    script = (
        "import sys, nbcache\n"
        "cache = nbcache.SimpleCache()\n"
        "cache.set('k', {'a': 1}); assert cache.get('k') == {'a': 1}\n"
        "f = nbcache.cached_result(lambda x: x + 1); assert f(1) == f(1) == 2\n"
        "heavy = ('IPython', 'numpy', 'pandas', 'pymemcache')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_memcached_cache_takes_a_comma_separated_server_string() -> None:
    cache = nbcache.MemcachedCache("127.0.0.1:1, 127.0.0.1:2", secret=SECRET)
    assert cache.servers == ["127.0.0.1:1", "127.0.0.1:2"]
    assert nbcache.MemcachedCache(["127.0.0.1:1"], secret=SECRET).servers == ["127.0.0.1:1"]


@pytest.mark.parametrize(
    "servers", [["127.0.0.1:1,127.0.0.1:2"], "", [], ["127.0.0.1"], ["h:port"], [":11211"]]
)
def test_a_malformed_server_spec_is_refused_when_the_cache_is_made(servers: object) -> None:
    with pytest.raises(nbcache.ConfigurationError, match=r"HOST:PORT|no memcached server"):
        nbcache.MemcachedCache(servers, secret=SECRET)  # type: ignore[arg-type]


def test_an_unhashable_value_names_the_public_registration_function() -> None:
    problem = UnhashableValue("mylib.Handle", "it is an open file")
    assert "nbcache.register_token(Handle, fn)" in str(problem)
    assert isinstance(problem, TypeError)
