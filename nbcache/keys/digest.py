"""Canonical value digests: equal values give equal digests in every process and machine.

:func:`value_digest` feeds a type-tagged, length-prefixed encoding of a value into an
xxh3_128 hash, so no two different structures produce the same byte stream and nothing depends
on ``PYTHONHASHSEED``, ``repr`` or memory addresses. Big buffers (numpy arrays, pandas columns)
are hashed where they lie, at memory speed.

Choices a caller should know:

* ``True`` and ``1``, ``1`` and ``1.0``, ``[1]`` and ``(1,)``, ``b"a"`` and ``bytearray(b"a")``
  all digest differently: they are equal in Python but can lead to different results.
* ``-0.0`` and ``0.0`` digest differently (they print and divide differently); every float NaN
  digests the same.
* dicts and sets digest independently of their order; ``OrderedDict`` keeps its order.
* Flat containers of plain values (lists of strings, dicts of settings, lists of records) are
  encoded whole at C speed (:mod:`nbcache.keys.digest_plain`).
* A container that contains itself digests deterministically: a reference back to an object
  that is still being digested is encoded as its distance up the path.
* Types are looked up exactly first, then a class's ``__nbcache_token__`` method, then along the
  MRO in the registry (:func:`register_token`), then dataclasses, and last the pickle protocol
  5 reduction of the object, whose parts are digested canonically in turn.
* Live state (open files, sockets, locks, generators, iterators, threads, database
  connections) and anything that cannot be pickled raise :class:`UnhashableValue`.
* numpy, pandas, pyarrow and polars are never imported here: their handlers register the
  first time a value from one of them is digested (:mod:`nbcache.keys.digest_numpy`,
  :mod:`nbcache.keys.digest_pandas`, :mod:`nbcache.keys.digest_arrow`,
  :mod:`nbcache.keys.digest_polars`).
"""

from __future__ import annotations

import collections.abc
import copyreg
import dataclasses
import enum
import importlib
import struct
import threading
from collections.abc import Callable
from typing import Any

import xxhash

from nbcache.exceptions import UnhashableValue
from nbcache.keys.digest_plain import plain_dict, plain_sequence, plain_set
from nbcache.keys.live_state import live_state_reason
from nbcache.keys.provenance import is_user_module

__all__ = ["TokenWriter", "UnhashableValue", "register_token", "value_digest"]

#: Writes one value's encoding into a :class:`TokenWriter`.
Handler = Callable[["TokenWriter", Any], None]

_FORMAT_VERSION = b"nbcache.keys.digest/3\x00"
_DIRECT_HASH_BYTES = 1 << 16  # buffers this big are hashed in place rather than copied
_MAX_RESOLVED_TYPES = 10_000

_pack_u64 = struct.Struct("<Q").pack
_pack_i64 = struct.Struct("<q").pack
_pack_f64 = struct.Struct("<d").pack
_NAN_BYTES = _pack_f64(float("nan"))
_INT_PREFIX = _FORMAT_VERSION + b"i"
#: Starts the encoding of a container of plain values (:mod:`nbcache.keys.digest_plain`).
_PLAIN = b"\x10"

# Handlers that are not user-registered stand for themselves; a subclass of one of these
# types is tagged with its own class before the base encoding.
_registry: dict[type, Handler] = {}
_resolved: dict[type, Handler] = {}
#: Digests of recently seen small ints and strs; forgotten when a handler is registered.
_remembered: dict[tuple[type, object], str] = {}
_REMEMBERED_VALUES = 1024
_REMEMBERED_TEXT = 256
_builtin_types: set[type] = set()
# numpy and pandas handlers live in their own modules, imported the first time a value whose
# class comes from that library is digested (by then the library is imported anyway).
_lazy_handler_modules = {
    "numpy": "nbcache.keys.digest_numpy",
    "pandas": "nbcache.keys.digest_pandas",
    "pyarrow": "nbcache.keys.digest_arrow",
    "polars": "nbcache.keys.digest_polars",
}
_lazy_lock = threading.RLock()


class TokenWriter:
    """Feeds the canonical encoding of values into one xxh3_128 hash.

    Handlers write a tag first and make every variable-length part self-delimiting (a count
    or a byte length before it), so the encoding of a structure is a prefix-free code.
    """

    __slots__ = ("_hasher", "_path", "_pending")

    def __init__(self, path: dict[int, int] | None = None) -> None:
        self._hasher: Any = None  # created when a big buffer arrives; small values hash at once
        self._pending = bytearray(_FORMAT_VERSION)
        # ids of the objects being digested on the way down, with their depth: an object
        # met again below itself is a cycle, encoded as a back reference.
        self._path: dict[int, int] = {} if path is None else path

    def raw(self, data: bytes) -> None:
        """Append bytes whose length the reader already knows (tags, fixed-size fields)."""
        self._pending += data

    def count(self, number: int) -> None:
        """Append a non-negative count or size as 8 bytes."""
        self._pending += _pack_u64(number)

    def sized(self, data: bytes | bytearray | memoryview) -> None:
        """Append a byte string preceded by its length."""
        if type(data) is bytes and len(data) < _DIRECT_HASH_BYTES:
            self._pending += _pack_u64(len(data))
            self._pending += data
            return
        view = memoryview(data)
        self._pending += _pack_u64(view.nbytes)
        self.bulk(view)

    def text(self, text: str) -> None:
        """Append a string (UTF-8, lone surrogates kept) preceded by its length."""
        self.sized(text.encode("utf-8", "surrogatepass"))

    def tag(self, name: str) -> None:
        """Start the encoding of an extension type, named ``name`` (``"numpy.ndarray"``)."""
        self._pending += b"X"
        self.text(name)

    def bulk(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes whose length the reader knows, hashing big buffers in place."""
        view = memoryview(data)
        if view.nbytes < _DIRECT_HASH_BYTES:
            self._pending += view
            return
        if self._hasher is None:
            self._hasher = xxhash.xxh3_128()
        self._hasher.update(self._pending)
        self._pending.clear()
        self._hasher.update(view if view.c_contiguous else view.tobytes())

    def value(self, obj: object) -> None:
        """Append the canonical encoding of ``obj``."""
        cls = type(obj)
        handler = _resolved.get(cls)
        if handler is None:
            handler = _resolve(cls)
        handler(self, obj)

    def digest_of(self, obj: object) -> bytes:
        """The 16-byte digest of ``obj`` alone (used to sort unordered members)."""
        writer = TokenWriter(self._path)
        writer.value(obj)
        return writer.digest()

    def digest_written_by(self, write: Callable[[TokenWriter], None]) -> bytes:
        """The 16-byte digest of what ``write`` writes into a fresh writer (cycles still seen)."""
        writer = TokenWriter(self._path)
        write(writer)
        return writer.digest()

    def enter(self, obj: object) -> bool:
        """Start a nested object: False (and a back reference written) if it is a cycle.

        A True answer must be paired with :meth:`leave`.
        """
        depth = self._path.get(id(obj))
        if depth is not None:
            self._pending += b"@"
            self._pending += _pack_u64(len(self._path) - depth)
            return False
        self._path[id(obj)] = len(self._path)
        return True

    def leave(self, obj: object) -> None:
        """End a nested object started with :meth:`enter`."""
        del self._path[id(obj)]

    def digest(self) -> bytes:
        """The 16-byte digest of everything written (write nothing after this)."""
        if self._hasher is None:
            return bytes(xxhash.xxh3_128_digest(self._pending))
        self._hasher.update(self._pending)
        self._pending.clear()
        return bytes(self._hasher.digest())


def value_digest(obj: object) -> str:
    """The canonical digest of ``obj``: 32 hex characters, equal for equal values.

    Equal across processes, machines of the same byte order, and ``PYTHONHASHSEED``. Raises
    :class:`UnhashableValue` for live state (open files, sockets, locks, generators,
    iterators, threads, connections), for objects whose pickling fails, and for structures
    nested too deeply to walk.
    """
    cls = type(obj)
    if cls is int or (cls is str and len(obj) <= _REMEMBERED_TEXT):  # type: ignore[arg-type]
        # The usual small argument: remembered. Only exact ints and strs, whose equal values
        # always encode alike (floats do not: 0.0 == -0.0).
        remembered = _remembered.get((cls, obj))
        if remembered is None:
            if cls is int and _resolved.get(int) is _int:
                remembered = _int_digest(obj)  # type: ignore[arg-type]
            else:
                remembered = _fresh_digest(obj)
            if len(_remembered) >= _REMEMBERED_VALUES:
                _remembered.clear()
            _remembered[(cls, obj)] = remembered
        return remembered
    plain = _PLAIN_ENCODERS.get(cls)
    if plain is not None:
        # A flat container of plain values: its encoding (what the handler would write after
        # the format prefix) hashed at once, without a TokenWriter.
        encoded = plain[1](obj)
        if encoded is not None:
            hasher = xxhash.xxh3_128(plain[0] + _pack_u64(len(encoded)))
            hasher.update(encoded)
            return str(hasher.hexdigest())
    return _fresh_digest(obj)


def _int_digest(number: int) -> str:
    """:func:`_fresh_digest` of an int: what :func:`_int` writes, hashed without a writer."""
    if -(1 << 63) <= number < (1 << 63):
        return xxhash.xxh3_128_hexdigest(_INT_PREFIX + _pack_i64(number))
    return _fresh_digest(number)


def _fresh_digest(obj: object) -> str:
    writer = TokenWriter()
    try:
        writer.value(obj)
    except RecursionError:
        raise UnhashableValue(_type_name(type(obj)), "it is nested too deeply") from None
    return writer.digest().hex()


def register_token(type_: type, fn: Callable[[Any], object]) -> None:
    """Digest instances of ``type_`` (and its subclasses) as the digest of ``fn(obj)``.

    ``fn`` returns any value nbcache can digest; the instance's class is part of the digest
    too, so two classes returning the same token still differ. A class can instead define a
    ``__nbcache_token__(self)`` method with the same meaning.
    """

    def token_handler(writer: TokenWriter, obj: object) -> None:
        writer.raw(b"R")
        write_type(writer, type(obj))
        if writer.enter(obj):
            writer.value(fn(obj))
            writer.leave(obj)

    _registry[type_] = token_handler
    _resolved.clear()
    _remembered.clear()


def register_handler(type_: type, handler: Handler, *, builtin: bool = False) -> None:
    """Install a low-level handler (for nbcache's own type support).

    ``builtin`` handlers encode exactly ``type_``: a subclass found through the MRO is then
    tagged with its own class and instance attributes around the base encoding.
    """
    _registry[type_] = handler
    if builtin:
        _builtin_types.add(type_)
    _resolved.clear()
    _remembered.clear()


def use_class_fingerprint(fingerprint: Callable[[type], str]) -> None:
    """Install the fingerprint :func:`write_type` adds for classes of the user's own code.

    :mod:`nbcache.keys.fingerprint` installs its ``class_fingerprint`` on import (importing
    :mod:`nbcache.keys` wires every part up), so that neither module imports the other.
    """
    global _class_fingerprint
    _class_fingerprint = fingerprint
    _resolved.clear()
    _remembered.clear()


def _no_class_fingerprint(cls: type) -> str:
    raise RuntimeError("nbcache.keys.fingerprint was not imported: import nbcache.keys")


_class_fingerprint: Callable[[type], str] = _no_class_fingerprint


def write_type(writer: TokenWriter, cls: type) -> None:
    """Append a class's identity; classes from the user's own code add their fingerprint."""
    module = getattr(cls, "__module__", None) or ""
    writer.raw(b"y")
    writer.text(module)
    writer.text(getattr(cls, "__qualname__", cls.__name__))
    if is_user_module(module):
        writer.raw(b"+")
        writer.raw(bytes.fromhex(_class_fingerprint(cls)))
    else:
        writer.raw(b"-")


def _type_name(cls: type) -> str:
    module = getattr(cls, "__module__", "")
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in ("builtins", "") else f"{module}.{name}"


def _resolve(cls: type) -> Handler:
    """Find the handler of a class not seen before, and remember it."""
    for base in cls.__mro__:
        library = getattr(base, "__module__", "").partition(".")[0]
        if library in _lazy_handler_modules:
            _install_lazy_handlers(library)
    handler = _registry.get(cls)
    if handler is None:
        handler = _find_handler(cls)
    if len(_resolved) > _MAX_RESOLVED_TYPES:  # classes redefined cell after cell
        _resolved.clear()
    _resolved[cls] = handler
    return handler


def _install_lazy_handlers(library: str) -> None:
    with _lazy_lock:  # another thread must not resolve a numpy type before its handler exists
        module_name = _lazy_handler_modules.get(library)
        if module_name is not None:
            importlib.import_module(module_name).install_handlers()
            del _lazy_handler_modules[library]


def _find_handler(cls: type) -> Handler:
    if callable(getattr(cls, "__nbcache_token__", None)):
        return _token_method
    if issubclass(cls, enum.Enum):
        return _enum_member
    for base in cls.__mro__[1:-1]:
        handler = _registry.get(base)
        if handler is not None:
            return _subclass_of(handler) if base in _builtin_types else handler
    if dataclasses.is_dataclass(cls):
        return _dataclass_instance
    reason = live_state_reason(cls)
    if reason is not None:
        return _unhashable(reason)
    return _reduced


def _token_method(writer: TokenWriter, obj: Any) -> None:
    writer.raw(b"R")
    write_type(writer, type(obj))
    if writer.enter(obj):
        writer.value(obj.__nbcache_token__())
        writer.leave(obj)


def _enum_member(writer: TokenWriter, member: enum.Enum) -> None:
    writer.raw(b"E")
    write_type(writer, type(member))
    writer.value(member._value_)


def _dataclass_instance(writer: TokenWriter, obj: Any) -> None:
    writer.raw(b"C")
    write_type(writer, type(obj))
    if not writer.enter(obj):
        return
    fields = dataclasses.fields(obj)
    writer.count(len(fields))
    for field in fields:
        writer.text(field.name)
        writer.value(getattr(obj, field.name, _Missing))
    writer.leave(obj)


class _Missing:
    """Stands for a dataclass field that was never set (``init=False`` without default)."""


def _subclass_of(base_handler: Handler) -> Handler:
    def subclass_instance(writer: TokenWriter, obj: object) -> None:
        writer.raw(b"S")
        write_type(writer, type(obj))
        base_handler(writer, obj)
        attributes = getattr(obj, "__dict__", None)
        writer.value(dict(attributes) if attributes else None)

    return subclass_instance


def _unhashable(reason: str) -> Handler:
    def refuse(writer: TokenWriter, obj: object) -> None:
        raise UnhashableValue(_type_name(type(obj)), reason)

    return refuse


def _reduced(writer: TokenWriter, obj: object) -> None:
    """Digest an object through its pickle protocol 5 reduction, part by part."""
    cls = type(obj)
    reducer = copyreg.dispatch_table.get(cls)
    try:
        reduction = reducer(obj) if reducer is not None else obj.__reduce_ex__(5)
    except Exception as error:
        raise UnhashableValue(
            _type_name(cls), f"it cannot be pickled ({type(error).__name__}: {error})"
        ) from None
    if isinstance(reduction, str):  # pickled by reference: a named global
        writer.raw(b"G")
        write_type(writer, cls)
        writer.text(reduction)
        return
    if not writer.enter(obj):
        return
    writer.raw(b"O")
    writer.count(len(reduction))
    for position, part in enumerate(reduction):
        # positions 3 and 4 are iterators of list items and of dict items
        writer.value(list(part) if position in (3, 4) and part is not None else part)
    writer.leave(obj)


# --- the core builtin types -------------------------------------------------------------


def _none(writer: TokenWriter, obj: None) -> None:
    writer.raw(b"N")


def _bool(writer: TokenWriter, obj: bool) -> None:
    writer.raw(b"T" if obj else b"F")


def _int(writer: TokenWriter, obj: int) -> None:
    if -(1 << 63) <= obj < (1 << 63):
        writer.raw(b"i" + _pack_i64(obj))
    else:
        writer.raw(b"I")
        writer.sized(obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True))


def _float(writer: TokenWriter, obj: float) -> None:
    writer.raw(b"f" + (_NAN_BYTES if obj != obj else _pack_f64(obj)))


def _complex(writer: TokenWriter, obj: complex) -> None:
    real, imag = obj.real, obj.imag
    writer.raw(b"c" + (_NAN_BYTES if real != real else _pack_f64(real)))
    writer.raw(_NAN_BYTES if imag != imag else _pack_f64(imag))


def _str(writer: TokenWriter, obj: str) -> None:
    writer.raw(b"s")
    writer.text(obj)


def _bytes(writer: TokenWriter, obj: bytes) -> None:
    writer.raw(b"b")
    writer.sized(obj)


def _bytearray(writer: TokenWriter, obj: bytearray) -> None:
    writer.raw(b"a")
    writer.sized(obj)


def _memoryview(writer: TokenWriter, obj: memoryview) -> None:
    writer.raw(b"m")
    writer.text(obj.format)
    writer.value(obj.shape)
    writer.sized(obj if obj.c_contiguous else obj.tobytes())


def _sequence(tag: bytes) -> Handler:
    plain_tag = _PLAIN + tag

    def sequence(writer: TokenWriter, obj: list[object] | tuple[object, ...]) -> None:
        encoded = plain_sequence(obj)
        if encoded is not None:
            writer.raw(plain_tag)
            writer.sized(encoded)
            return
        if not writer.enter(obj):
            return
        writer.raw(tag)
        writer.count(len(obj))
        for item in obj:
            writer.value(item)
        writer.leave(obj)

    return sequence


def _dict(writer: TokenWriter, obj: dict[object, object]) -> None:
    encoded = plain_dict(obj)
    if encoded is not None:
        writer.raw(_PLAIN + b"d")
        writer.sized(encoded)
        return
    if not writer.enter(obj):
        return
    keyed = sorted((writer.digest_of(key), position) for position, key in enumerate(obj))
    items = list(obj.values())
    if len({key_digest for key_digest, _ in keyed}) == len(keyed):
        writer.raw(b"d")
        writer.count(len(keyed))
        for key_digest, position in keyed:
            writer.raw(key_digest)
            writer.value(items[position])
    else:  # distinct keys that digest alike (NaNs, objects equal by content): order by pair
        pairs = sorted(key_digest + writer.digest_of(items[p]) for key_digest, p in keyed)
        writer.raw(b"D")
        writer.count(len(pairs))
        for pair in pairs:
            writer.raw(pair)
    writer.leave(obj)


def _set(tag: bytes) -> Handler:
    plain_tag = _PLAIN + tag

    def unordered(writer: TokenWriter, obj: collections.abc.Set[object]) -> None:
        encoded = plain_set(obj)  # type: ignore[arg-type]
        if encoded is not None:
            writer.raw(plain_tag)
            writer.sized(encoded)
            return
        if not writer.enter(obj):
            return
        members = sorted(writer.digest_of(member) for member in obj)
        writer.raw(tag)
        writer.count(len(members))
        for member in members:
            writer.raw(member)
        writer.leave(obj)

    return unordered


_PLAIN_ENCODERS: dict[type, tuple[bytes, Callable[[Any], bytes | None]]] = {
    list: (_FORMAT_VERSION + _PLAIN + b"l", plain_sequence),
    tuple: (_FORMAT_VERSION + _PLAIN + b"t", plain_sequence),
    dict: (_FORMAT_VERSION + _PLAIN + b"d", plain_dict),
}

for _type, _handler in (
    (type(None), _none),
    (bool, _bool),
    (int, _int),
    (float, _float),
    (complex, _complex),
    (str, _str),
    (bytes, _bytes),
    (bytearray, _bytearray),
    (memoryview, _memoryview),
    (tuple, _sequence(b"t")),
    (list, _sequence(b"l")),
    (dict, _dict),
    (set, _set(b"e")),
    (frozenset, _set(b"z")),
):
    register_handler(_type, _handler, builtin=True)
del _type, _handler
