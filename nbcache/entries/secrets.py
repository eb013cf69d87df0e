"""Where the signing secrets come from: an argument, ``NBCACHE_SECRET``, or a per-user file.

With neither an argument nor the variable, each user gets one secret, generated on first use
and kept at ``$XDG_CONFIG_HOME/nbcache/secret`` (``~/.config/nbcache/secret``) with mode 0600:
every kernel of that user on that machine shares results with no set-up, and someone who can
only write to memcached cannot forge an entry. To share across users or machines, give every
reader and writer the same secret.
"""

from __future__ import annotations

import logging
import os
import secrets as random_source
import stat
from collections.abc import Sequence
from pathlib import Path

from nbcache.exceptions import ConfigurationError

log = logging.getLogger(__name__)

ENV_VAR = "NBCACHE_SECRET"

#: A secret, or several for rotation (the first signs, all verify).
SecretSpec = str | bytes | Sequence[str | bytes] | None


def secret_path() -> Path:
    """The per-user secret file."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nbcache" / "secret"


def resolve_secrets(secret: SecretSpec = None) -> list[bytes]:
    """The secrets to use, first one signing: from ``secret``, the environment, or the file."""
    if secret is None:
        from_env = os.environ.get(ENV_VAR)
        if from_env:
            return [part.strip().encode() for part in from_env.split(",") if part.strip()]
        return [user_secret()]
    if isinstance(secret, str | bytes):
        secret = [secret]
    result = [part.encode() if isinstance(part, str) else bytes(part) for part in secret]
    if not result:
        raise ConfigurationError("secret= was an empty list; give at least one secret")
    return result


def user_secret(path: Path | None = None) -> bytes:
    """This user's secret, created (mode 0600) on first use."""
    path = path or secret_path()
    try:
        return _read_private(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = random_source.token_hex(32).encode()
    # The file appears whole or not at all: a kernel starting at the same moment must never
    # read it half-written. Write a private temporary file, then link it into place (a link
    # never replaces an existing file, so the first kernel's secret wins for everyone).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{random_source.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:  # another kernel created it first: use theirs
        return _read_private(path)
    finally:
        temporary.unlink(missing_ok=True)
    return secret


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Others on this machine could read the key and forge entries: tighten it.
        log.warning("nbcache: %s was readable by other users; set its mode to 0600", path)
        path.chmod(0o600)
    secret = path.read_bytes().strip()
    if len(secret) < 16:
        raise ConfigurationError(
            f"the secret in {path} is shorter than 16 bytes; delete the file to get a new one"
        )
    return secret
