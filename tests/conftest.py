from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from memcached_server import MemcachedServer

pytest_plugins = ["memcached_fixtures", "ipython_fixtures", "gae_fixtures"]

_SERVERS_BEFORE = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[_SERVERS_BEFORE] = MemcachedServer.started
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """A test that starts a memcached server must say so with the ``memcached`` marker."""
    result = yield
    started = MemcachedServer.started - item.stash.get(_SERVERS_BEFORE, MemcachedServer.started)
    if started and item.get_closest_marker("memcached") is None:
        pytest.fail(
            f"{item.nodeid} started {started} memcached server(s) but has no "
            "@pytest.mark.memcached marker",
            pytrace=False,
        )
    return result


@pytest.fixture(autouse=True)
def isolated_nbcache_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own per-user secret file and no inherited nbcache settings."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("NBCACHE_URL", "NBCACHE_SECRET"):
        monkeypatch.delenv(name, raising=False)
    import nbcache.config

    nbcache.config.configure(None)
    yield
    nbcache.config.configure(None)
    # Explanation records not written yet would go to this test's servers, stopped by now.
    from nbcache.functions.explain import book

    book.forget_unwritten()
