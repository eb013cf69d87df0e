"""A per-user secret file that cannot be used turns memcached caching off; it never breaks a call.

Each fault runs in a child process as a kernel would meet it (``NBCACHE_URL`` set, no
``NBCACHE_SECRET``): a home it cannot write, a config "directory" that is a file, a FIFO where
the secret belongs. The computation must run and return, with one warning saying how to set
``NBCACHE_SECRET``. Then the checks that keep the file trustworthy: no symbolic links
(followed, or chmod'ed through), no file of another user, no relative base directory, no
directory others can write to.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache
from nbcache.entries.secrets import resolve_secrets, secret_path
from nbcache.exceptions import SecretUnavailable

pytestmark = pytest.mark.memcached

CALLER = """
from nbcache import cached_result

@cached_result
def square(x):
    return x * x

print(square(7), square(7), flush=True)
"""
#: Without these capabilities root is held to file modes like any user.
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def run_kernel_like(
    memcached: MemcachedServer, cwd: Path, unprivileged: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("NBCACHE_SECRET", "XDG_CONFIG_HOME", "HOME")
    }
    environment.update(env, NBCACHE_URL=memcached.url)
    prefix = UNPRIVILEGED if unprivileged and os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-c", CALLER],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_ran_uncached_with_one_warning(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["49", "49"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("nbcache:")]
    assert len(warnings) == 1, result.stderr
    assert "caching on memcached is off" in warnings[0]
    assert "NBCACHE_SECRET" in warnings[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_unwritable_home_turns_caching_off_and_the_call_runs(
    memcached: MemcachedServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    home.chmod(0o555)
    result = run_kernel_like(memcached, tmp_path, unprivileged=True, HOME=str(home))
    assert_ran_uncached_with_one_warning(result)
    assert list(home.iterdir()) == []


@pytest.mark.slow
def test_a_file_as_config_directory_turns_caching_off_and_the_call_runs(
    memcached: MemcachedServer, tmp_path: Path
) -> None:
    result = run_kernel_like(memcached, tmp_path, HOME=str(tmp_path), XDG_CONFIG_HOME="/etc/passwd")
    assert_ran_uncached_with_one_warning(result)


@pytest.mark.slow
def test_a_fifo_at_the_secret_path_does_not_hang(
    memcached: MemcachedServer, tmp_path: Path
) -> None:
    directory = tmp_path / "config" / "nbcache"
    directory.mkdir(parents=True, mode=0o700)
    os.mkfifo(directory / "secret", 0o600)
    result = run_kernel_like(
        memcached, tmp_path, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config")
    )
    assert_ran_uncached_with_one_warning(result)


@pytest.mark.slow
def test_a_relative_config_home_never_puts_the_secret_in_the_working_directory(
    memcached: MemcachedServer, tmp_path: Path
) -> None:
    repository, home = tmp_path / "repository", tmp_path / "home"
    repository.mkdir()
    home.mkdir()
    result = run_kernel_like(
        memcached, repository, HOME=str(home), XDG_CONFIG_HOME="relative-config"
    )
    assert result.returncode == 0, result.stderr
    assert list(repository.iterdir()) == []
    assert (home / ".config" / "nbcache" / "secret").is_file()


def test_a_symlinked_secret_file_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    profile.write_text("export PATH=$HOME/bin:$PATH  # a file of the user's\n")
    profile.chmod(0o644)
    path = secret_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.symlink_to(profile)
    with pytest.raises(SecretUnavailable, match="symbolic link"):
        resolve_secrets()
    assert stat.S_IMODE(profile.stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_secret_file_of_another_user_is_refused() -> None:
    path = secret_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text("0123456789abcdef0123456789abcdef")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(SecretUnavailable, match="belongs to user id 65534"):
        resolve_secrets()


@pytest.mark.parametrize("which", ["nbcache directory", "config directory"])
def test_a_directory_every_user_can_write_is_refused(which: str) -> None:
    path = secret_path()
    path.parent.mkdir(parents=True, mode=0o700)
    directory = path.parent if which == "nbcache directory" else path.parent.parent
    directory.chmod(0o777)
    with pytest.raises(SecretUnavailable, match="writable by"):
        resolve_secrets()
    assert not path.exists()


def test_a_group_writable_nbcache_directory_is_refused() -> None:
    path = secret_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.parent.chmod(0o770)
    with pytest.raises(SecretUnavailable, match="writable by other users"):
        resolve_secrets()


def test_an_oversized_secret_file_is_refused() -> None:
    path = secret_path()
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(b"x" * 1_000_000)
    path.chmod(0o600)
    with pytest.raises(SecretUnavailable, match="too long"):
        resolve_secrets()


def test_a_cache_without_a_usable_secret_is_off_with_one_warning(
    memcached: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = secret_path()
    path.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(path, 0o600)
    caplog.set_level(logging.DEBUG, logger="nbcache")
    cache = MemcachedCache([memcached.address])
    assert cache.set("k", 1) is False
    assert cache.get("k") is None
    assert cache.add("k", 1) is False
    assert cache.inc("n") is None
    assert not cache.has("k")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "NBCACHE_SECRET" in warnings[0], warnings
    assert str(path) in warnings[0]
