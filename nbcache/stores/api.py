"""The contract between the layers: the miss sentinel and the byte-store protocol.

Everything below the cache front-end speaks bytes. A store never sees a Python object: it
keeps byte strings under string keys, and it reports a miss with :data:`NO_VALUE`, never with
``None`` (``None`` is a real result in a notebook).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple, Protocol, runtime_checkable

#: A bytes-like object: what a store accepts as a piece of a value, and what it hands back.
#: Stores must not keep a reference to a ``memoryview`` they were given past the call: its
#: memory belongs to the caller.
Buffer = bytes | bytearray | memoryview

#: Bytes of an item in a store with an item limit (memcached, App Engine's memcache) that are
#: not the value: the key (memcached: up to 250 bytes), the item header (~56 bytes with CAS)
#: and the line ends. A value of ``item limit - ITEM_OVERHEAD`` bytes always fits.
ITEM_OVERHEAD: Final = 512


class NoValue:
    """The type of :data:`NO_VALUE`: a miss. Falsy, and only one instance exists."""

    _instance: NoValue | None = None

    def __new__(cls) -> NoValue:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __reduce__(self) -> str:
        return "NO_VALUE"


#: Returned by stores (and by :meth:`nbcache.cache.Cache.get_entry`) on a miss.
NO_VALUE: Final = NoValue()


class BigValue(NamedTuple):
    """A value a store holds but did not read (see :func:`peek`): its size and last bytes.

    ``tail`` is at most a few dozen bytes (possibly none): enough for the layers above to
    check the trailers they append (a namespace's generation) without moving the value.
    """

    size: int
    tail: bytes


class Unchanged:
    """The type of :data:`UNCHANGED`: the value is the write the reader already holds."""

    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


#: Returned by :meth:`VersionedStore.get_many_versioned` in place of a value the reader holds.
UNCHANGED: Final = Unchanged()

#: What a versioned read gives for one key: the value (or a miss, or :data:`UNCHANGED`) and
#: the version of the write it comes from (None: the store names no version for it).
Versioned = tuple[Buffer | NoValue | Unchanged, bytes | None]


class CasToken:
    """An opaque token from :meth:`ByteStore.gets`, handed back to :meth:`ByteStore.cas`."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"CasToken({self.value!r})"


@runtime_checkable
class ByteStore(Protocol):
    """A place that keeps bytes under string keys for a while.

    ``ttl`` is always normalised by the caller: ``None`` means "never expires", otherwise a
    positive number of seconds from now. (Zero and negative timeouts never reach a store.)
    A value is given as a sequence of buffers whose concatenation is the value, so big
    results travel without being joined first; a value read back is one bytes-like object.

    Keys are arbitrary strings; a store that has key rules of its own (memcached) maps them.
    Stores do not raise on a missing key. A store may raise on a fault (server down); the
    layer above turns that into a miss and a warning.
    """

    def get(self, key: str) -> Buffer | NoValue: ...

    def get_many(self, keys: Sequence[str]) -> list[Buffer | NoValue]:
        """Values in the order of ``keys``; in as few round trips as the store can."""
        ...

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool: ...

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        """Store only if ``key`` holds nothing; True if stored."""
        ...

    def gets(self, key: str) -> tuple[Buffer | NoValue, CasToken | None]:
        """The value and a token for :meth:`cas`; ``(NO_VALUE, None)`` on a miss."""
        ...

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        """Store only if ``key`` is unchanged since :meth:`gets` gave ``token``."""
        ...

    def delete(self, key: str) -> bool:
        """True if something was deleted."""
        ...

    def clear(self) -> bool:
        """Forget every key of this store (and only of this store)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StoreThenGet(Protocol):
    """What a store may offer: a write and the read of another key in one round trip.

    A namespace writes under the generation it read last and reads the generation back in
    the same round trip, instead of reading it first.
    """

    def store_then_get(
        self,
        command: str,
        key: str,
        value: Sequence[Buffer],
        ttl: float | None,
        read_key: str,
    ) -> tuple[bool, Buffer | NoValue]:
        """``set`` or ``add`` (``command``) ``value`` under ``key``, then read ``read_key``:
        True if stored, and what ``read_key`` holds after the write."""
        ...


class Authenticator(Protocol):
    """Tags bytes so that only a holder of the same secret can make a tag that checks.

    A store below the entries' own MAC uses it for its bookkeeping records (a chunked
    value's manifest) so that a planted record is refused before it costs anything.
    """

    def tag(self, parts: Sequence[Buffer]) -> bytes:
        """The tag of the concatenation of ``parts``."""
        ...

    def check(self, parts: Sequence[Buffer], tag: Buffer) -> bool:
        """True if ``tag`` is a tag of the concatenation of ``parts``."""
        ...


def peek(store: ByteStore, key: str) -> tuple[Buffer | BigValue | NoValue, CasToken | None]:
    """Like ``store.gets(key)``, but a big value is described, not read, if the store can.

    A store that keeps big values apart (chunks) offers ``peek``: for such a value it returns
    a :class:`BigValue` after checking, cheaply, that the value is there whole. Other stores
    answer with ``gets``. Used to ask whether a value exists, or to replace it, without
    moving gigabytes.
    """
    method = getattr(store, "peek", None)
    if method is None:
        return store.gets(key)
    result: tuple[Buffer | BigValue | NoValue, CasToken | None] = method(key)
    return result


@runtime_checkable
class VersionedStore(Protocol):
    """A store that names each write of a big value, so a reader holding it can skip the transfer.

    A *version* is a short byte string that identifies one write of one value under one key:
    a value is replaced, rewritten by anyone, deleted, expired, or cleared, and it no longer
    has that version. Two reads that report the same version report the same bytes. Small
    values, which cost one round trip whatever happens, may have no version (None).
    """

    def get_many_versioned(
        self, keys: Sequence[str], held: Sequence[bytes | None]
    ) -> list[Versioned]:
        """``(value, version)`` in the order of ``keys``, in as few round trips as possible.

        Where ``held[i]`` is the version of the value under ``keys[i]`` now, the answer is
        ``(UNCHANGED, held[i])`` and the value is not transferred. A miss is
        ``(NO_VALUE, None)``.
        """
        ...

    def set_versioned(
        self, key: str, value: Sequence[Buffer], ttl: float | None
    ) -> tuple[bool, bytes | None]:
        """Store like ``set``; ``(stored, version of this write)``.

        The version is None if the value was not stored or the store names none for it.
        """
        ...


def join(value: Sequence[Buffer]) -> bytes:
    """One ``bytes`` from a sequence of buffers (for stores that need a single string)."""
    if len(value) == 1 and isinstance(value[0], bytes):
        return value[0]
    return b"".join(value)


def total_size(value: Sequence[Buffer]) -> int:
    """Bytes in a sequence of buffers."""
    return sum(memoryview(part).nbytes for part in value)


def byte_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte view of ``data`` (no copy), whatever its format and shape."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def byte_views(value: Sequence[Buffer]) -> list[memoryview]:
    """Flat unsigned-byte views of the caller's buffers (no copy), empty ones left out."""
    views = (byte_view(part) for part in value)
    return [view for view in views if view.nbytes]
