"""Files as inputs: a file's identity when a computation read it, and whether it still holds.

A file's *identity* is what ``stat`` says of it (size, modification and change times in
nanoseconds, inode, device), plus an xxh3 digest of its content for files up to
:func:`digest_limit` bytes. Checking a file is one ``stat``: the same identity means the same
file. When the identity differs (the file was touched, copied back, or this is another
machine, where inodes and times always differ), a recorded content digest decides, and only
then is the file read. A file whose identity differs and that has no digest counts as changed.

Timestamps cannot be trusted for a file modified just before it was read: a filesystem keeps
times at a coarse granularity (milliseconds, up to 2 s on some), so a second write within the
same tick keeps the size and the time. Such a file is *racy* (:data:`RACY_NS`): it is checked
by its content digest even when its identity is unchanged, and without one it counts as
changed, so a later computation records it afresh.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import os
import stat
import time
from dataclasses import dataclass, replace
from typing import Any

import xxhash

from nbcache.keys.provenance import is_library_file

#: Environment variable: files up to this many bytes get a content digest (suffixes K, M, G;
#: "0" for none). Reading a file to digest it costs about what reading it cost the computation.
DIGEST_LIMIT_ENV = "NBCACHE_FILE_DIGEST_LIMIT"
DEFAULT_DIGEST_LIMIT = 16 * 1024 * 1024
#: A file modified less than this before it was read has a timestamp that cannot be trusted.
RACY_NS = 2_000_000_000
_CHUNK = 1 << 20
#: Pseudo files (kernel state, devices): their content changes with no trace in ``stat``.
_PSEUDO_ROOTS = ("/proc/", "/sys/", "/dev/")
#: Code is keyed by fingerprint or by version, not as a file.
_CODE_SUFFIXES = tuple(importlib.machinery.all_suffixes())
_VERIFIED_ENTRIES = 4096
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class FileIdentity:
    """What ``stat`` said of a regular file when it was read, and its content digest if taken."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int
    digest: str | None = None
    racy: bool = False

    @functools.cached_property
    def stat_key(self) -> tuple[int, int, int, int, int]:
        """What ``stat`` must say for the file to be the same, as one tuple."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device)

    def to_json(self) -> list[Any]:
        return [*self.stat_key, self.digest, int(self.racy)]

    @classmethod
    def from_json(cls, data: Any) -> FileIdentity:
        """The identity :meth:`to_json` wrote; ``ValueError`` if ``data`` is not one."""
        if not isinstance(data, list) or len(data) != 7:
            raise ValueError(f"not a file identity: {data!r}")
        size, mtime_ns, ctime_ns, inode, device, digest, racy = data
        numbers = (size, mtime_ns, ctime_ns, inode, device)
        if not all(type(n) is int for n in numbers) or not isinstance(digest, str | None):
            raise ValueError(f"not a file identity: {data!r}")
        return cls(*numbers, digest=digest, racy=bool(racy))


class NotAFile:
    """What a path names when it exists but is no regular file (a directory, a device)."""

    def to_json(self) -> str:
        return "not a file"


NOT_A_FILE = NotAFile()

#: What a computation found at a path: a file, something else, or nothing (None).
Found = FileIdentity | NotAFile | None


def found_to_json(found: Found) -> Any:
    return None if found is None else found.to_json()


def found_from_json(data: Any) -> Found:
    """What :func:`found_to_json` wrote; ``ValueError`` for anything else."""
    if data is None:
        return None
    if data == NOT_A_FILE.to_json():
        return NOT_A_FILE
    return FileIdentity.from_json(data)


def is_candidate(absolute: str) -> bool:
    """Whether a file at ``absolute`` can be a computation's input.

    Not inputs: pseudo files under /proc, /sys and /dev, code (``.py``, ``.pyc``, extension
    modules: the import system reads them, and keys cover code by fingerprint or version), and
    files of the interpreter and installed packages (they change with a package's version).
    """
    return not (
        absolute.startswith(_PSEUDO_ROOTS)
        or absolute.endswith(_CODE_SUFFIXES)
        or is_library_file(absolute)
    )


def identity_of(path: str, now_ns: int | None = None) -> FileIdentity | NotAFile | None:
    """The identity of the file at ``path`` (no digest), NOT_A_FILE, or None if it is absent."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return NOT_A_FILE
    if not stat.S_ISREG(info.st_mode):
        return NOT_A_FILE
    now_ns = time.time_ns() if now_ns is None else now_ns
    return FileIdentity(
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_ino,
        info.st_dev,
        racy=_racy(info, now_ns),
    )


def with_digest(path: str, identity: FileIdentity, limit: int) -> FileIdentity:
    """``identity`` with a content digest if the file is small enough and still the same.

    A file that changed since ``identity`` was taken keeps no digest: its identity no longer
    matches, so the next check sees it as changed.
    """
    if identity.digest is not None or identity.size > limit:
        return identity
    digest = content_digest(path)
    after = identity_of(path)
    if digest is None or not isinstance(after, FileIdentity):
        return identity
    if after.stat_key != identity.stat_key:
        return identity
    return replace(identity, digest=digest)


def content_digest(path: str) -> str | None:
    """The xxh3-128 digest of the file's content, or None if it cannot be read."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as file:
            while count := file.readinto(buffer):
                hasher.update(view[:count])
    except (OSError, ValueError):
        return None
    return hasher.hexdigest()


def digest_limit() -> int:
    """Files up to this many bytes get a content digest (``$NBCACHE_FILE_DIGEST_LIMIT``)."""
    text = os.environ.get(DIGEST_LIMIT_ENV, "").strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_DIGEST_LIMIT
    unit = text[-1] if text[-1] in _UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)])
    except ValueError:
        return DEFAULT_DIGEST_LIMIT
    return max(int(number * _UNITS[unit]), 0)


#: Identities whose content was found to match a digest, while their times were trustworthy.
_verified: dict[tuple[str, int, int, int, int, int], str] = {}


def file_change(path: str, recorded: Found, now: float | None = None) -> str | None:
    """Why the file a computation read at ``path`` is not the one it read, or None.

    ``recorded`` None means the computation found nothing there, NOT_A_FILE something that is
    no regular file. ``path`` is resolved against the current working directory, as the
    computation resolved it against its own.
    """
    if type(recorded) is FileIdentity and not recorded.racy:
        try:  # the common case first: one stat, nothing built (same inode: still a file)
            info = os.stat(path)
        except (OSError, ValueError):
            pass
        else:
            key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)
            if recorded.stat_key == key:
                return None
    current = identity_of(path)
    if recorded is None:
        return None if current is None else f"`{path}` now exists"
    if current is None:
        return f"`{path}` is missing"
    if isinstance(recorded, NotAFile):
        return None if isinstance(current, NotAFile) else f"`{path}` is now a file"
    if isinstance(current, NotAFile):
        return f"`{path}` is no longer a readable file"
    if current.stat_key == recorded.stat_key and not recorded.racy:
        return None
    if recorded.digest is None or current.size != recorded.size:
        return _changed(path, current, recorded, now)
    verified_key = (os.path.abspath(path), *current.stat_key)
    if _verified.get(verified_key) == recorded.digest:
        return None
    digest = content_digest(path)
    if digest is None:
        return f"`{path}` cannot be read"
    if digest != recorded.digest:
        return _changed(path, current, recorded, now)
    if not current.racy:
        if len(_verified) >= _VERIFIED_ENTRIES:
            _verified.clear()
        _verified[verified_key] = digest
    return None


def _changed(path: str, current: FileIdentity, recorded: FileIdentity, now: float | None) -> str:
    if recorded.racy and recorded.digest is None and current.stat_key == recorded.stat_key:
        return f"`{path}` was modified just before it was read, so it is read again"
    if current.mtime_ns > recorded.mtime_ns:
        now = time.time() if now is None else now
        return f"`{path}` changed {_ago(now - current.mtime_ns / 1e9)}"
    return f"`{path}` changed"


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            plural = "s" if unit == "day" and count > 1 else ""
            return f"{count} {unit}{plural} ago"
    return f"{int(seconds)} s ago"


def _racy(info: os.stat_result, now_ns: int) -> bool:
    return max(info.st_mtime_ns, info.st_ctime_ns) > now_ns - RACY_NS


def absolute_path(path: Any) -> str | None:
    """``path`` from an audit event as an absolute ``str``, or None if it names no path."""
    if isinstance(path, int):
        return None  # an open file descriptor
    with contextlib.suppress(TypeError, ValueError):
        return os.path.abspath(os.fsdecode(path))
    return None
