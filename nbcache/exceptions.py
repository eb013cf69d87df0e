"""nbcache's exceptions. Each carries the data that explains it."""

from __future__ import annotations


class NbcacheError(Exception):
    """Base class of every error nbcache raises."""


class ConfigurationError(NbcacheError, ValueError):
    """A setting (URL, secret, option) is malformed; the message says what to write instead."""


class SecretUnavailable(ConfigurationError):
    """No usable per-user secret file (unwritable, not ours, a link, a FIFO, too short ...).

    ``path`` is the file; ``reason`` says what is wrong with it. A cache that would sign with
    it is off (a miss for every read, one warning) rather than breaking the computation.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"no usable secret at {path}: {reason}")


class UnpicklableValueError(NbcacheError, TypeError):
    """A value cannot be serialized, so nothing was stored.

    ``type_name`` names the type that failed; ``key`` is the cache key, when there is one.
    """

    def __init__(self, type_name: str, reason: str, key: str | None = None) -> None:
        self.type_name = type_name
        self.reason = reason
        self.key = key
        where = f" under key {key!r}" if key is not None else ""
        super().__init__(
            f"cannot cache a value of type {type_name}{where}: {reason}. "
            "Nothing was stored; any older value under that key is unchanged."
        )


class EntryRefused(NbcacheError):
    """A stored entry was not trusted or not usable, so it is treated as a miss.

    ``reason`` is short and human: "bad signature", "written by Python 3.12", ...
    Raised inside nbcache only; callers see a miss and one warning.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StoreFault(NbcacheError):
    """A store could not do what was asked (server down, timed out, refused a write)."""


class UnhashableValue(NbcacheError, TypeError):
    """A value has no meaningful digest, so a key cannot be built from it.

    ``type_name`` names the type that could not be digested (an open file, a lock, a
    generator, anything whose pickling fails); ``reason`` says why. The message suggests
    ``ignore=`` or :func:`nbcache.register_token`.
    """

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason
        super().__init__(
            f"cannot digest a value of type {type_name}: {reason}. Leave the argument out of "
            f"the key with ignore=(...), or teach nbcache its content with "
            f"nbcache.register_token({type_name.rpartition('.')[2]}, fn)."
        )
