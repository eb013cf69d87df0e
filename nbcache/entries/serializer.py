"""cloudpickle with pickle protocol 5: a value becomes a small head and its big buffers.

Large contiguous buffers (numpy arrays, pandas blocks, bytes-like objects that support it) are
kept out of band: they are not copied into the pickle stream but handed over as memoryviews of
the memory where they already lie, so a 256 MiB array is signed and sent without being copied.

Classes and functions defined in a notebook are pickled by value: loaded in another kernel,
cloudpickle rebuilds copies of them. Given a *code fingerprint* function, :func:`dumps` records
the identity of each and :func:`loads` gives back the loading process's own object where it
is the same code (:mod:`nbcache.entries.code_identity`).

Serializing also notes whether the value holds code pickled by value (see
:mod:`nbcache.entries.by_value`): only such entries are tied to the writer's Python version.

A value made only of builtin scalars and containers (the usual result of a small call) is
pickled by the standard library's C pickler directly: cloudpickle would produce the very same
bytes (it changes only how functions, classes and other objects are handled; such a value
holds no code and no class), at a fraction of the cost for a small value. The C pickler
handles exactly those types itself and asks its ``reducer_override`` about anything else;
ours refuses, and cloudpickle takes over.
"""

from __future__ import annotations

import functools
import io
import pickle
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

from nbcache.entries.by_value import is_code_by_value
from nbcache.entries.code_identity import (
    CodeFingerprint,
    load_with,
    records_identity,
    with_identity,
)
from nbcache.exceptions import EntryRefused, UnpicklableValueError

#: The serializer's name, as written into every entry's header.
NAME = "cloudpickle"


class Frames(NamedTuple):
    """A serialized value: the pickle stream and its out-of-band buffers, in order.

    ``code_by_value``: the stream holds code pickled by value (a notebook function, a lambda,
    a notebook class), which only the same Python minor version can load.
    """

    head: bytes
    buffers: tuple[memoryview, ...]
    code_by_value: bool = False

    @property
    def sizes(self) -> list[int]:
        """Byte length of the head, then of each buffer."""
        return [len(self.head), *(buffer.nbytes for buffer in self.buffers)]


@functools.cache
def cloudpickle_version() -> str:
    """The running cloudpickle's version (imported on first use: it is not cheap)."""
    import cloudpickle

    return str(cloudpickle.__version__)


def dumps(
    value: Any, key: str | None = None, code_fingerprint: CodeFingerprint | None = None
) -> Frames:
    """Serialize ``value``; raise :class:`UnpicklableValueError` naming the type if it can't be.

    ``code_fingerprint``: record the fingerprint of each class and function pickled by value,
    so that :func:`loads` can give back the loading process's own (see the module docstring).
    """
    plain = plain_dumps(value)
    if plain is not None:
        return _new_frames(Frames, (plain, (), False))  # type: ignore[no-any-return]
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = io.BytesIO()
        pickler = _pickler(stream, buffers.append, code_fingerprint)
        pickler.dump(value)
        head = stream.getvalue()
    except Exception as exc:  # pickling runs arbitrary __reduce__ code: any error means "can't"
        raise UnpicklableValueError(_type_name(value), _reason(exc), key) from exc
    views = []
    for buffer in buffers:
        try:
            views.append(buffer.raw())
        except BufferError:
            # A non-contiguous buffer: a copy is the only way to make it one run of bytes.
            views.append(memoryview(bytes(memoryview(buffer))))
    return Frames(head, tuple(views), pickler.code_by_value)


class _NotPlain(Exception):
    """Raised inside the plain pickler: the value holds something else."""


class _PlainPickler(pickle.Pickler):
    """The C pickler, refusing all but the builtin types it handles itself."""

    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain


def _refuse_buffer(buffer: pickle.PickleBuffer) -> None:
    raise _NotPlain  # an out-of-band buffer: cloudpickle's business


# Each thread reuses one pickler and its buffer: making them costs more than a small dump.
_plain = threading.local()


def plain_dumps(value: Any) -> bytes | None:
    """The pickle of ``value`` if it holds only builtin scalars, lists, tuples, sets and
    dicts (exact types), else None."""
    reusable = getattr(_plain, "pickler", None)
    _plain.pickler = None  # in use: a reentrant call (from a finalizer, say) makes its own
    if reusable is None:
        file = io.BytesIO()
        reusable = (file, _PlainPickler(file, protocol=5, buffer_callback=_refuse_buffer))
    file, pickler = reusable
    try:
        pickler.dump(value)
        return file.getvalue()
    except Exception:  # something else inside, or nested too deeply: cloudpickle's turn
        return None
    finally:
        file.seek(0)
        file.truncate()
        pickler.clear_memo()
        _plain.pickler = reusable


def is_plain(value: Any) -> bool:
    """True if ``value`` holds only builtin scalars, lists, tuples, sets and dicts."""
    return plain_dumps(value) is not None


# Builds Frames from a tuple in C: every stored value makes one.
_new_frames = tuple.__new__


def loads(
    head: bytes | memoryview,
    buffers: list[memoryview],
    code_fingerprint: CodeFingerprint | None = None,
) -> Any:
    """Rebuild a value from its frames; any failure is an :class:`EntryRefused`.

    Buffers must be writable memory the caller owns: arrays rebuilt on them share it.
    ``code_fingerprint``: classes and functions recorded with a fingerprint come back as this
    process's own objects of the same name when their fingerprints are equal.
    """
    try:
        if code_fingerprint is None or not records_identity(head):
            return pickle.loads(head, buffers=buffers)
        return load_with(code_fingerprint, lambda: pickle.loads(head, buffers=buffers))
    except Exception as exc:  # a missing module, a changed class: the entry is unusable here
        raise EntryRefused(f"cannot load the value here: {_reason(exc)}") from exc


def _pickler(
    stream: io.BytesIO,
    buffer_callback: Callable[[pickle.PickleBuffer], None],
    code_fingerprint: CodeFingerprint | None,
) -> Any:
    """cloudpickle's pickler, noting code pickled by value, and recording its identity if
    given a fingerprint function."""
    pickler = _pickler_class()(stream, protocol=5, buffer_callback=buffer_callback)
    pickler.code_fingerprint = code_fingerprint
    return pickler


@functools.cache
def _pickler_class() -> type:
    """The pickler class (made on first use: importing cloudpickle is not cheap)."""
    import cloudpickle

    reduce = cloudpickle.Pickler.reducer_override

    class NbcachePickler(cloudpickle.Pickler):  # type: ignore[misc]
        code_fingerprint: CodeFingerprint | None = None
        code_by_value = False

        def reducer_override(self, obj: Any) -> Any:
            reduction = reduce(self, obj)
            # Called for nearly every object pickled: the common case (data that cloudpickle
            # leaves to pickle) is decided here without a call (a fifth of the pickling time
            # of a list of small objects).
            if reduction is NotImplemented and type(obj) is not types.CodeType:
                return reduction
            if is_code_by_value(obj, reduction):
                self.code_by_value = True
            if self.code_fingerprint is not None:
                return with_identity(obj, reduction, self.code_fingerprint)
            return reduction

    return NbcachePickler


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    if module in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
