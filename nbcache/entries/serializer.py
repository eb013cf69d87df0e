"""cloudpickle with pickle protocol 5: a value becomes a small head and its big buffers.

Large contiguous buffers (numpy arrays, pandas blocks, bytes-like objects that support it) are
kept out of band: they are not copied into the pickle stream but handed over as memoryviews of
the memory where they already lie, so a 256 MiB array is signed and sent without being copied.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from typing import Any

from nbcache.exceptions import EntryRefused, UnpicklableValueError

#: The serializer's name, as written into every entry's header.
NAME = "cloudpickle"


@dataclass(frozen=True)
class Frames:
    """A serialized value: the pickle stream and its out-of-band buffers, in order."""

    head: bytes
    buffers: tuple[memoryview, ...]

    @property
    def sizes(self) -> list[int]:
        """Byte length of the head, then of each buffer."""
        return [len(self.head), *(buffer.nbytes for buffer in self.buffers)]


@functools.cache
def cloudpickle_version() -> str:
    """The running cloudpickle's version (imported on first use: it is not cheap)."""
    import cloudpickle

    return str(cloudpickle.__version__)


def dumps(value: Any, key: str | None = None) -> Frames:
    """Serialize ``value``; raise :class:`UnpicklableValueError` naming the type if it can't be."""
    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []
    try:
        head = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:  # pickling runs arbitrary __reduce__ code: any error means "can't"
        raise UnpicklableValueError(_type_name(value), _reason(exc), key) from exc
    views = []
    for buffer in buffers:
        try:
            views.append(buffer.raw())
        except BufferError:
            # A non-contiguous buffer: a copy is the only way to make it one run of bytes.
            views.append(memoryview(bytes(memoryview(buffer))))
    return Frames(head, tuple(views))


def loads(head: bytes | memoryview, buffers: list[memoryview]) -> Any:
    """Rebuild a value from its frames; any failure is an :class:`EntryRefused`.

    Buffers must be writable memory the caller owns: arrays rebuilt on them share it.
    """
    try:
        return pickle.loads(head, buffers=buffers)
    except Exception as exc:  # a missing module, a changed class: the entry is unusable here
        raise EntryRefused(f"cannot load the value here: {_reason(exc)}") from exc


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    if module in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
