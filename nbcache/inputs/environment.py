"""Environment variables as inputs: digests of the values a computation read, and their check.

Values are kept as digests, not as text: an entry's metadata travels to a shared server, and
environment variables hold tokens and passwords.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import xxhash

#: Stands for "the set of variable names" (a computation iterated over the environment).
ALL_NAMES = "*"


def value_digest(value: str | bytes | None) -> str | None:
    """The digest of a variable's value; None for an unset variable."""
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return xxhash.xxh3_128_hexdigest(raw)


def names_digest(names: Iterable[str | bytes]) -> str:
    """The digest of a set of variable names."""
    decoded = sorted(os.fsdecode(name) for name in names)
    return xxhash.xxh3_128_hexdigest("\0".join(decoded).encode("utf-8", "surrogateescape"))


def variable_change(name: str, recorded: str | None) -> str | None:
    """Why the variable ``name`` (or, for ALL_NAMES, the set of names) differs, or None."""
    if name == ALL_NAMES:
        if names_digest(os.environ) != recorded:
            return "the set of environment variables changed"
        return None
    current = value_digest(os.environ.get(name))
    if current == recorded:
        return None
    if recorded is None:
        return f"environment variable `{name}` is now set"
    if current is None:
        return f"environment variable `{name}` is no longer set"
    return f"environment variable `{name}` changed"
