"""Environment variables as inputs: digests of the values a computation read, and their check.

Values are kept as digests, not as text: an entry's metadata travels to a shared server, and
environment variables hold tokens and passwords. A plain digest of a short password can be
guessed by trying candidates, so an entry for a shared server keeps them as digests keyed
with the cache's secret (a :data:`ValueDigest` the cache's envelope provides, see
:attr:`nbcache.entries.envelope.Envelope.secret_digest`); :func:`plain_digest` serves the
in-process cache, whose entries never leave the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import xxhash

#: Stands for "the set of variable names" (a computation iterated over the environment).
ALL_NAMES = "*"


#: Turns a value's bytes into the text kept in an entry's metadata.
ValueDigest = Callable[[bytes], str]


def plain_digest(raw: bytes) -> str:
    """An unkeyed digest, for entries that never leave the process."""
    return xxhash.xxh3_128_hexdigest(raw)


def value_digest(value: str | bytes | None, digest: ValueDigest = plain_digest) -> str | None:
    """The digest of a variable's value; None for an unset variable."""
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return digest(raw)


def names_digest(names: Iterable[str | bytes]) -> str:
    """The digest of a set of variable names."""
    decoded = sorted(os.fsdecode(name) for name in names)
    return xxhash.xxh3_128_hexdigest("\0".join(decoded).encode("utf-8", "surrogateescape"))


def variable_change(
    name: str, recorded: str | None, digest: ValueDigest = plain_digest
) -> str | None:
    """Why the variable ``name`` (or, for ALL_NAMES, the set of names) differs, or None.

    ``digest`` is the one the value was recorded with. Names are not secret: the set of
    names has a plain digest.
    """
    if name == ALL_NAMES:
        if names_digest(os.environ) != recorded:
            return "the set of environment variables changed"
        return None
    current = value_digest(os.environ.get(name), digest)
    if current == recorded:
        return None
    if recorded is None:
        return f"environment variable `{name}` is now set"
    if current is None:
        return f"environment variable `{name}` is no longer set"
    return f"environment variable `{name}` changed"
