"""The test servers themselves: they start, answer, and stop by PID."""

import os

import pytest
from memcached_server import MemcachedServer

pytestmark = pytest.mark.memcached


def test_server_starts_answers_and_stops() -> None:
    server = MemcachedServer().start()
    try:
        pid = server.pid
        assert server.command(b"version").startswith(b"VERSION")
        assert server.command(b"set k 0 0 1\r\nx").startswith(b"STORED")
    finally:
        server.stop()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:  # pragma: no cover - the process must be gone
        raise AssertionError(f"memcached {pid} is still running")


def test_restart_keeps_port_and_empties(memcached: MemcachedServer) -> None:
    port = memcached.port
    memcached.command(b"set k 0 0 1\r\nx")
    memcached.restart()
    assert memcached.port == port
    assert memcached.command(b"get k") == b"END\r\n"
