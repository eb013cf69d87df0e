"""What tests and benchmarks measure nbcache with: private memcached servers, resident memory.

:class:`MemcachedServer` runs a memcached of our own on a free 127.0.0.1 port. Tests kill it,
pause it (SIGSTOP), resume it and restart it on the same port to exercise faults. Only the
process this object started is ever signalled.

:func:`resident_growth` measures how far the resident set's peak rises over a block of code.
tracemalloc sees only Python's allocators; values the stores keep in mappings (anonymous or
memory files) are invisible to it, so a needless copy there would pass unnoticed. The
kernel's high-water mark of the resident set (``VmHWM``) sees every page the process touches,
whatever allocated it. It is reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0+).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def memcached_binary() -> str:
    """The memcached executable; fails with what to do when it is missing."""
    path = os.environ.get("NBCACHE_TEST_MEMCACHED") or shutil.which("memcached")
    if path is None:
        for candidate in ("/usr/bin/memcached", "/usr/local/bin/memcached"):
            if os.path.exists(candidate):
                return candidate
        raise RuntimeError(
            "memcached is not installed, and these tests need a real server. Install it with "
            "'apt-get install memcached' (scripts/test.sh does this), or point "
            "NBCACHE_TEST_MEMCACHED at the binary."
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MemcachedServer:
    """One memcached process of our own on 127.0.0.1."""

    #: Processes started by every instance of this process, so far (tests check their markers).
    started = 0

    def __init__(self, memory_mb: int = 64, item_size: str | None = None) -> None:
        self.memory_mb = memory_mb
        self.item_size = item_size
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"memcached://{self.address}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "server is not running"
        return self.process.pid

    def start(self) -> MemcachedServer:
        args = [
            memcached_binary(),
            "-l",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "0",
            "-m",
            str(self.memory_mb),
            "-t",
            "2",
        ]
        if self.item_size:
            args += ["-I", self.item_size]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        MemcachedServer.started += 1
        self._wait_until_listening()
        return self

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                if "Address already in use" in err or "bind" in err:
                    # Another process took the port between free_port() and exec: pick again.
                    self.port = free_port()
                    self.start()
                    return
                raise RuntimeError(f"memcached exited with {self.process.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"version\r\n")
                    if sock.recv(64).startswith(b"VERSION"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"memcached on port {self.port} did not start in {timeout} s")

    def stop(self) -> None:
        """Stop our process (resuming it first if paused) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.paused:
                os.kill(self.process.pid, signal.SIGCONT)
            # A test server keeps nothing worth a graceful shutdown (which takes memcached ~1 s).
            self.process.kill()
            self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-session, as after a crash."""
        if self.process is not None and self.process.poll() is None:
            if self.paused:
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
        self.stop()

    def pause(self, within: float = 5.0) -> None:
        """SIGSTOP: the server accepts connections but never answers.

        Returns once the kernel reports every thread of the process stopped: ``kill`` returns
        before a multi-threaded process has stopped, and a request sent in between may still
        be answered. Raises :class:`RuntimeError` if that takes longer than ``within`` seconds.
        """
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True
        deadline = time.monotonic() + within
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"memcached {self.pid} did not stop within {within} s")
            time.sleep(0.002)

    def _all_threads_stopped(self) -> bool:
        """True if every thread of the process is in state ``T`` (stopped by a signal)."""
        tasks = f"/proc/{self.pid}/task"
        for task in os.listdir(tasks):
            try:
                with open(f"{tasks}/{task}/stat", "rb") as stat:
                    # The state follows the command name, which is in parentheses and may
                    # itself hold spaces or parentheses: split after the last ")".
                    state = stat.read().rpartition(b")")[2].split()[0]
            except FileNotFoundError:  # that thread has just exited
                continue
            if state != b"T":
                return False
        return True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        """Stop and start again on the same port, empty."""
        self.stop()
        self.start()

    def command(self, line: bytes) -> bytes:
        """Send one raw text-protocol command and return the raw reply (for tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(line + b"\r\n")
            reply = b""
            # A retrieval reply ends with END; every other reply is one line.
            while not (
                reply.endswith(b"END\r\n")
                or (reply.endswith(b"\r\n") and not reply.startswith(b"VALUE"))
            ):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def flush_all(self) -> None:
        """Someone else flushes the whole server."""
        assert self.command(b"flush_all").startswith(b"OK")

    def __enter__(self) -> MemcachedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- resident memory -----------------------------------------------------------------------


@dataclass
class Growth:
    """Bytes by which the resident set's peak exceeded its size at the start of the block."""

    peak: int = 0


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        found = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}: resident memory cannot be measured")
    return int(found.group(1)) * 1024


@contextmanager
def resident_growth() -> Iterator[Growth]:
    """Measure how far the resident set's peak rises above its level at entry.

    Garbage is collected first, so memory freed before the block is not counted in it.
    Freed memory the allocator keeps for reuse is already resident and costs nothing here,
    so the figure can only under-count copies made into reused memory: the tests keep big
    values well above glibc's mmap threshold (128 KiB), whose memory is returned on free.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as exc:
        raise RuntimeError(f"cannot reset the resident-set peak: {exc}") from exc
    growth = Growth()
    before = _status_bytes("VmRSS")
    if _status_bytes("VmHWM") > before + 1024 * 1024:
        raise RuntimeError("the resident-set peak did not reset: the kernel ignored clear_refs")
    try:
        yield growth
    finally:
        growth.peak = _status_bytes("VmHWM") - before


def resident_bytes() -> int:
    """This process's resident set now."""
    return _status_bytes("VmRSS")


def memory_file_bytes(name: str) -> int:
    """Bytes the kernel holds in this process's open memory files called ``name``.

    Memory files (``memfd``) are not in the resident set until mapped; their pages are
    counted here as the kernel allocated them (``st_blocks``).
    """
    total = 0
    for entry in os.listdir("/proc/self/fd"):
        path = f"/proc/self/fd/{entry}"
        try:
            if not os.readlink(path).startswith(f"/memfd:{name} "):
                continue
            total += os.stat(path).st_blocks * 512
        except FileNotFoundError:  # closed while listed
            continue
    return total
