"""Where the signing secrets come from: an argument, ``NBCACHE_SECRET``, or a per-user file.

With neither an argument nor the variable, each user gets one secret, generated on first use
and kept at ``$XDG_CONFIG_HOME/nbcache/secret`` (``~/.config/nbcache/secret``) with mode 0600:
every kernel of that user on that machine shares results with no set-up, and someone who can
only write to memcached cannot forge an entry. To share across users or machines, give every
reader and writer the same secret.

The file is trusted only if nobody else could have chosen or read it: it must be a regular
file (not a symbolic link, FIFO or device), owned by this user, in a directory owned by this
user that nobody else can write to, under an absolute base directory that is not world-
writable. It is opened without following links and never read past a few kilobytes. Any
problem with it raises :class:`~nbcache.exceptions.SecretUnavailable` saying what is wrong.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets as random_source
import stat
from collections.abc import Sequence
from pathlib import Path

from nbcache.exceptions import ConfigurationError, SecretUnavailable

log = logging.getLogger(__name__)

ENV_VAR = "NBCACHE_SECRET"
#: The shortest secret accepted, in bytes.
MIN_SECRET_BYTES = 16
#: A secret file longer than this is not one of ours.
_MAX_FILE_BYTES = 4096
_HOW_TO_MAKE_ONE = "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"

#: A secret, or several for rotation (the first signs, all verify).
SecretSpec = str | bytes | Sequence[str | bytes] | None


def secret_path() -> Path:
    """The per-user secret file.

    A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG specification says (it would put
    the secret in whatever directory the kernel started in). Raises
    :class:`~nbcache.exceptions.SecretUnavailable` if there is no absolute home either.
    """
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            raise SecretUnavailable(
                os.path.join(home, ".config", "nbcache", "secret"),
                "no absolute home directory or XDG_CONFIG_HOME to keep it in",
            )
        base = os.path.join(home, ".config")
    return Path(base) / "nbcache" / "secret"


def resolve_secrets(secret: SecretSpec = None) -> list[bytes]:
    """The secrets to use, first one signing: from ``secret``, the environment, or the file.

    Raises :class:`~nbcache.exceptions.ConfigurationError` naming ``secret=`` or
    ``NBCACHE_SECRET`` if it holds no secret or one shorter than 16 bytes (the secret itself
    is never echoed), and :class:`~nbcache.exceptions.SecretUnavailable` if the per-user file
    cannot be used.
    """
    if secret is None:
        from_env = os.environ.get(ENV_VAR)
        if from_env is None or not from_env.strip():
            return [user_secret()]
        # The variable's own bytes: a secret need not be UTF-8 (os.environ decodes with
        # surrogateescape, and fsencode gives the original bytes back).
        parts = [os.fsencode(part.strip()) for part in from_env.split(",") if part.strip()]
        return _checked(parts, ENV_VAR, "is set but holds no secret (only commas and spaces)")
    if isinstance(secret, str | bytes):
        secret = [secret]
    result = [os.fsencode(part) if isinstance(part, str) else bytes(part) for part in secret]
    return _checked(result, "secret=", "was an empty list; give at least one secret")


def _checked(secrets: list[bytes], setting: str, when_empty: str) -> list[bytes]:
    if not secrets:
        raise ConfigurationError(f"{setting} {when_empty}")
    for position, secret in enumerate(secrets, 1):
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"{setting}: secret #{position} is {len(secret)} bytes; a signing secret must be "
                f"at least {MIN_SECRET_BYTES} bytes long; {_HOW_TO_MAKE_ONE}"
            )
    return secrets


def user_secret(path: Path | None = None) -> bytes:
    """This user's secret, created (mode 0600) on first use.

    Raises :class:`~nbcache.exceptions.SecretUnavailable` if the file or its directory cannot
    be trusted, read or created.
    """
    path = path or secret_path()
    try:
        _private_directory(path)
        try:
            return _read_private(path)
        except FileNotFoundError:
            pass
        return _create(path)
    except SecretUnavailable:
        raise
    except OSError as error:  # unwritable home, a file where a directory belongs, ...
        raise SecretUnavailable(str(path), f"{type(error).__name__}: {error.strerror}") from None


def _private_directory(path: Path) -> None:
    """Create the secret's directory (mode 0700) if missing; refuse one others can write to."""
    directory = path.parent
    if not directory.is_absolute():
        raise SecretUnavailable(str(path), "its directory is not an absolute path")
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = directory.parent.stat()
    if base.st_mode & stat.S_IWOTH and not base.st_mode & stat.S_ISVTX:
        raise SecretUnavailable(
            str(path), f"{directory.parent} is writable by every user (chmod o-w it)"
        )
    directory.mkdir(exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid != os.geteuid():
        raise SecretUnavailable(
            str(path), f"{directory} belongs to user id {info.st_uid}, not to you"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SecretUnavailable(str(path), f"{directory} is writable by other users (chmod 700 it)")


def _create(path: Path) -> bytes:
    secret = random_source.token_hex(32).encode()
    # The file appears whole or not at all: a kernel starting at the same moment must never
    # read it half-written. Write a private temporary file, then link it into place (a link
    # never replaces an existing file, so the first kernel's secret wins for everyone).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{random_source.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path, follow_symlinks=False)
    except FileExistsError:  # another kernel created it first: use theirs
        return _read_private(path)
    finally:
        temporary.unlink(missing_ok=True)
    return secret


def _read_private(path: Path) -> bytes:
    """The secret in ``path``; ``FileNotFoundError`` if there is none yet."""
    # O_NOFOLLOW: a link planted in its place is refused, never followed (or chmod'ed).
    # O_NONBLOCK: opening a FIFO must not wait for a writer.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise SecretUnavailable(
                str(path), "it is a symbolic link (delete it to get a new secret)"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretUnavailable(str(path), "it is not a regular file")
        if info.st_uid != os.geteuid():
            raise SecretUnavailable(str(path), f"it belongs to user id {info.st_uid}, not to you")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Others on this machine could read the key and forge entries: tighten it.
            log.warning("nbcache: %s was readable by other users; set its mode to 0600", path)
            os.fchmod(fd, 0o600)
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    secret = data.strip()
    if len(data) > _MAX_FILE_BYTES:
        raise SecretUnavailable(str(path), "it is too long to be an nbcache secret")
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretUnavailable(
            str(path),
            f"it is shorter than {MIN_SECRET_BYTES} bytes; delete the file to get a new one",
        )
    return secret
