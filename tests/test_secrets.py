"""Where signing secrets come from, and what sharing (or not sharing) one means for a cache.

conftest gives every test its own ``XDG_CONFIG_HOME`` and no ``NBCACHE_SECRET``.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from call_log import Calls
from memcached_server import MemcachedServer

from nbcache import ConfigurationError, MemcachedCache, cached_result
from nbcache.entries.secrets import ENV_VAR, resolve_secrets, secret_path, user_secret

SHARED = "a-team-secret-0123456789abcdef"

PRINT_USER_SECRET = (
    "from nbcache.entries.secrets import resolve_secrets; print(resolve_secrets()[0].decode())"
)


def test_user_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = secret_path()
    assert path == tmp_path / "config" / "nbcache" / "secret"
    assert not path.exists()
    first = resolve_secrets()
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert len(first) == 1 and len(first[0]) >= 32
    assert resolve_secrets() == first
    assert path.read_bytes().strip() == first[0]


def test_another_process_of_the_same_user_gets_the_same_secret() -> None:
    mine = resolve_secrets()[0].decode()
    theirs = subprocess.run(
        [sys.executable, "-c", PRINT_USER_SECRET],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout.strip()
    assert theirs == mine


RACE = """
import sys, time
from pathlib import Path
from nbcache.entries.secrets import user_secret
start, base, rounds = float(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for i in range(rounds):
    while time.time() < start + i * 0.05:  # spin: every process starts round i together
        pass
    try:
        print(i, user_secret(base / str(i) / "secret").decode(), flush=True)
    except Exception as error:
        print(i, "ERROR", repr(error), flush=True)
"""


@pytest.mark.slow
def test_kernels_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    """Six processes race 20 times to create a secret file: all must read the winner's, whole."""
    rounds, racers = 20, 6
    start = str(time.time() + 2.0)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, start, str(tmp_path), str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(racers)
    ]
    lines = [line for p in processes for line in p.communicate(timeout=60)[0].splitlines()]
    assert [p.returncode for p in processes] == [0] * racers
    seen: dict[str, set[str]] = {}
    for line in lines:
        index, result = line.split(" ", 1)
        seen.setdefault(index, set()).add(result)
    for index in range(rounds):
        on_disk = (tmp_path / str(index) / "secret").read_text().strip()
        assert seen[str(index)] == {on_disk}, f"round {index}: {seen[str(index)]}"


def test_a_group_readable_secret_file_is_tightened_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = user_secret()
    path = secret_path()
    path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="nbcache")
    assert user_secret() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any(str(path) in r.getMessage() for r in caplog.records)


def test_environment_variable_wins_over_the_user_file(monkeypatch: pytest.MonkeyPatch) -> None:
    user_secret()
    monkeypatch.setenv(ENV_VAR, SHARED)
    assert resolve_secrets() == [SHARED.encode()]


def test_environment_variable_lists_secrets_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "new-secret-0123456789, old-secret-0123456789")
    assert resolve_secrets() == [b"new-secret-0123456789", b"old-secret-0123456789"]
    assert not secret_path().exists()


def test_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, SHARED)
    assert resolve_secrets("argument-secret-0123456789") == [b"argument-secret-0123456789"]
    assert resolve_secrets([b"first-secret-0123456789", "second-secret-012345"]) == [
        b"first-secret-0123456789",
        b"second-secret-012345",
    ]


@pytest.mark.memcached
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_too_short_secret_is_a_configuration_error_saying_what_to_do(
    how: str, monkeypatch: pytest.MonkeyPatch, memcached: MemcachedServer
) -> None:
    options = {}
    if how == "argument":
        options["secret"] = "short"
    else:
        monkeypatch.setenv(ENV_VAR, "short")
    with pytest.raises(ConfigurationError, match=r"at least 16 bytes.*token_hex"):
        MemcachedCache([memcached.address], **options)


def test_empty_secret_list_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="at least one secret"):
        resolve_secrets([])


def test_too_short_secret_file_is_a_configuration_error_naming_the_file() -> None:
    path = secret_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match=f"{path}.*delete the file"):
        resolve_secrets()


@pytest.mark.memcached
def test_two_caches_with_the_user_secret_share_entries(memcached: MemcachedServer) -> None:
    writer = MemcachedCache([memcached.address])
    reader = MemcachedCache([memcached.address])
    assert writer.set("model", {"weights": [1.0, 2.0]})
    assert reader.get("model") == {"weights": [1.0, 2.0]}


@pytest.mark.memcached
def test_caches_with_different_secrets_in_one_namespace_refuse_each_others_entries(
    memcached: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With a key_prefix given to both, they meet: each refuses what the other signed."""
    mine = MemcachedCache([memcached.address], key_prefix="team", secret="mine-0123456789abcdef")
    theirs = MemcachedCache(
        [memcached.address], key_prefix="team", secret="theirs-0123456789abcdef"
    )
    assert theirs.set("answer", "their answer")
    caplog.set_level(logging.WARNING, logger="nbcache")

    computed = []

    def answer() -> str:
        value = mine.get("answer")
        if value is None:
            computed.append(1)
            value = "the true answer"
            mine.set("answer", value)
        return str(value)

    assert answer() == "the true answer"
    assert computed == [1]
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 1 and "bad signature" in refusals[0]
    # The recomputed value replaced theirs; now it is a hit for me and a refusal for them.
    assert answer() == "the true answer" and computed == [1]
    assert theirs.get("answer") is None


@pytest.mark.memcached
def test_caches_with_different_secrets_never_see_or_clear_each_others_entries(
    memcached: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    alice = MemcachedCache([memcached.address], secret="alice-0123456789abcdef")
    bob = MemcachedCache([memcached.address], secret="bob-0123456789abcdefgh")
    assert alice.key_prefix != bob.key_prefix
    caplog.set_level(logging.WARNING, logger="nbcache")
    for index in range(100):
        assert alice.set(f"entry-{index}", index)
    assert bob.clear()
    assert alice.get_many(*(f"entry-{index}" for index in range(100))) == list(range(100))
    assert bob.get("entry-1") is None

    calls = Calls()

    def shared(x: int) -> int:
        calls.append(x)
        return x + 1

    as_alice, as_bob = cached_result(cache=alice)(shared), cached_result(cache=bob)(shared)
    assert [(as_alice if turn % 2 else as_bob)(41) for turn in range(10)] == [42] * 10
    assert len(calls) == 2  # once per secret, then hits
    assert [r.getMessage() for r in caplog.records] == []


def test_the_default_namespace_follows_the_signing_secret() -> None:
    """Rotation (``new,old``) signs with the new secret, and so uses its namespace: results
    are computed afresh once; kernels still on the old secret keep theirs."""
    new, old = "new-secret-0123456789", "old-secret-0123456789"

    def namespace(secret: object) -> str:
        return MemcachedCache(["127.0.0.1:11211"], secret=secret).key_prefix  # type: ignore[arg-type]

    assert namespace([new, old]) == namespace(new) != namespace(old)
    assert namespace(new).startswith("nbcache-")
    assert MemcachedCache(["127.0.0.1:11211"], key_prefix="team", secret=new).key_prefix == "team"
