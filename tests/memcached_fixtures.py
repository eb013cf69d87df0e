"""pytest fixtures that give tests private memcached servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from memcached_server import MemcachedServer


@pytest.fixture
def memcached() -> Iterator[MemcachedServer]:
    """A fresh, empty memcached with stock settings (1 MiB item limit), stopped afterwards."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def memcached_factory() -> Iterator[Callable[..., MemcachedServer]]:
    """Start as many private servers as a test needs; all are stopped afterwards."""
    servers: list[MemcachedServer] = []

    def start(**options: object) -> MemcachedServer:
        server = MemcachedServer(**options).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
