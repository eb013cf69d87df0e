"""The global random generators of ``random`` and ``numpy.random``: snapshots, digests, restore.

A computation that draws from a global generator depends on its state before the run (an
input) and leaves it advanced (an output that a hit restores). Telling whether a run drew
means comparing the state before and after every computation, so taking a snapshot must cost
well under a microsecond, and the public ways do not: ``random.getstate()`` builds 625
integers, numpy's ``get_state()`` a dict and an array (5 to 80 us). A snapshot here
(:func:`snapshot`) is a copy of the generator's memory: for ``numpy.random`` from the bit
generator's public ``ctypes`` state address plus the legacy Gaussian cache of
``RandomState``; for ``random`` from its C object. Where that memory lies is found once per
process on a private generator and verified against ``getstate()``; if anything does not
match (another interpreter, another numpy), snapshots come from ``getstate()`` instead:
slower, equally exact. Snapshots compare equal exactly when the states are equal; only a
changed one is turned into the portable layout that is digested and stored (:func:`state`).

Only the generators' default kinds are followed: ``random.Random`` and numpy's legacy
``RandomState`` over ``MT19937``. The snapshot of any other (``np.random.set_bit_generator``)
is :func:`unsupported`: a run that changes it cannot be cached.
"""

from __future__ import annotations

import base64
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

import xxhash

#: Module name -> the generator followed in it; the name appears in explanations.
GENERATORS = ("random", "numpy.random")
#: Module-level functions that replace a generator's whole state.
SEEDING = {"random": ("seed", "setstate"), "numpy.random": ("seed", "set_state")}

#: A snapshot: a kind ("python", "numpy", "state", "unsupported") and what was read.
Snapshot = tuple[Any, ...]

_WORDS = 624
_MT = struct.Struct("<624Ii")  # numpy's mt19937_state: key[624], pos
_PY = struct.Struct("<i624I")  # CPython's RandomObject: index, state[624]
_GAUSS = struct.Struct("<?d")
_LEGACY = struct.Struct("<id")
_NO_GAUSS = bytes(8)
_LITTLE = sys.byteorder == "little"
_UNSUPPORTED: Snapshot = ("unsupported", None)


def snapshot(name: str) -> Snapshot | None:
    """The state of the global generator of module ``name``, or None if it is not imported."""
    module = sys.modules.get(name)
    if module is None:
        return None
    try:
        return _READERS[name](module)
    except Exception:  # a generator replaced by something else: its changes cannot be followed
        return _UNSUPPORTED


def snapshots() -> dict[str, Snapshot]:
    """A snapshot of each global generator whose module is imported."""
    # Taken twice per computation: written out for the two generators, without a loop.
    modules = sys.modules
    taken: dict[str, Snapshot] = {}
    module = modules.get("random")
    if module is not None:
        try:
            taken["random"] = _read_python(module)
        except Exception:  # a generator replaced by something else
            taken["random"] = _UNSUPPORTED
    module = modules.get("numpy.random")
    if module is not None:
        try:
            taken["numpy.random"] = _read_numpy(module)
        except Exception:
            taken["numpy.random"] = _UNSUPPORTED
    return taken


def unsupported(taken: Snapshot) -> bool:
    """Whether ``taken`` is of a generator whose state this module cannot store."""
    return bool(taken[0] == "unsupported")


def state(taken: Snapshot) -> bytes:
    """A supported snapshot in the portable layout, the same on every machine."""
    kind = taken[0]
    if kind == "python":
        _, words, next_gauss = taken
        return bytes(words) + _GAUSS.pack(next_gauss is not None, next_gauss or 0.0)
    if kind == "numpy":
        _, words, legacy = taken
        has_gauss: bytes = legacy[:4]
        cached: bytes = legacy[8:] if has_gauss != b"\0\0\0\0" else _NO_GAUSS
        return bytes(words) + has_gauss + cached
    assert kind == "state", f"no portable state for a {kind} snapshot"
    return bytes(taken[1])


def state_digest(name: str, taken: Snapshot) -> str:
    """A digest of a snapshot's state, the same on every machine for the same state."""
    return xxhash.xxh3_128_hexdigest(name.encode() + b"\0" + state(taken))


def export(taken: Snapshot) -> str:
    """A snapshot's state as text, for an entry's metadata."""
    return base64.b64encode(state(taken)).decode("ascii")


def restore(name: str, exported: str) -> None:
    """Set the global generator of ``name`` to an exported snapshot (importing the module).

    Calls the generator's own method, not the module-level function a computation calls, so
    that restoring is never mistaken for the computation seeding the generator.
    """
    import importlib

    module = importlib.import_module(name)
    raw = base64.b64decode(exported.encode("ascii"), validate=True)
    if name == "random":
        index, *words = _PY.unpack_from(raw)
        has_gauss, gauss = _GAUSS.unpack_from(raw, _PY.size)
        module._inst.setstate((3, (*words, index), gauss if has_gauss else None))
    else:
        import numpy

        key = numpy.frombuffer(raw, "<u4", _WORDS).astype(numpy.uint32)
        pos = _MT.unpack_from(raw)[-1]
        has_gauss, gauss = _LEGACY.unpack_from(raw, _MT.size)
        module.mtrand._rand.set_state(("MT19937", key, pos, has_gauss, gauss))


# -- random -------------------------------------------------------------------------------


class _Views:
    """Where each global generator's state lies in memory, found once per generator object."""

    python_instance: object = None
    python: Any = None  # a ctypes array over index + words, or None: use getstate()
    numpy_generator: object = None
    numpy_bits: object = None
    numpy: tuple[Any, Any] | None = None  # (mt19937 state, has_gauss..gauss), or None


_views = _Views()


def _read_python(module: Any) -> Snapshot:
    """``random._inst``: its index and 624 words, and the cached Gaussian."""
    instance = module._inst
    if instance is not _views.python_instance:
        _views.python_instance, _views.python = instance, _python_random_memory(instance)
    memory = _views.python
    gauss = getattr(instance, "gauss_next", None)
    if memory is not None:
        return ("python", memory.raw, gauss)
    return ("python", _python_random_state(instance), gauss)


def _python_random_state(instance: Any) -> bytes:
    internal = instance.getstate()[1]
    return _PY.pack(internal[_WORDS], *internal[:_WORDS])


def _python_random_memory(instance: Any) -> Any:
    """A view of the C generator's index and words inside ``instance``, verified, or None.

    The place is found and checked on a private generator of the same type (drawing from it
    must move the view as it moves ``getstate()``), then checked once on ``instance``.
    """
    if not _LITTLE:
        return None
    try:
        import ctypes

        probe = type(instance)(20240229)
        offset = _offset_of(probe, _python_random_state(probe)[4:], ctypes)
        if offset is None or offset < 4:
            return None
        view = (ctypes.c_char * _PY.size).from_address(id(probe) + offset - 4)
        for _ in range(2):
            if view.raw != _python_random_state(probe):
                return None
            probe.random()
        view = (ctypes.c_char * _PY.size).from_address(id(instance) + offset - 4)
        return view if view.raw == _python_random_state(instance) else None
    except Exception:
        return None


def _offset_of(instance: object, needle: bytes, ctypes: Any) -> int | None:
    size = type(instance).__basicsize__
    found = ctypes.string_at(id(instance), size).find(needle)
    return None if found < 0 else found


# -- numpy.random -------------------------------------------------------------------------


def _read_numpy(module: Any) -> Snapshot:
    """``numpy.random.mtrand._rand``: MT19937 key and position, and the cached Gaussian."""
    generator = module.mtrand._rand
    bits = generator._bit_generator
    if generator is not _views.numpy_generator or bits is not _views.numpy_bits:
        _views.numpy_generator, _views.numpy_bits = generator, bits
        _views.numpy = _numpy_memory(generator)
    memory = _views.numpy
    if memory is None:
        return _numpy_snapshot(generator)
    words, legacy = memory  # legacy: int has_gauss, 4 bytes of padding, double gauss
    return ("numpy", words.raw, legacy.raw)


def _numpy_snapshot(generator: Any) -> Snapshot:
    if type(generator._bit_generator).__name__ != "MT19937":
        # Another bit generator: its state (a dict) is compared as it is, never restored.
        return ("unsupported", pickle.dumps(generator.get_state(legacy=False)))
    return ("state", _numpy_state(generator))


def _numpy_state(generator: Any) -> bytes:
    _, key, pos, has_gauss, gauss = generator.get_state(legacy=True)
    words: bytes = key.astype("<u4").tobytes()
    return words + struct.pack("<i", pos) + _LEGACY.pack(has_gauss, gauss if has_gauss else 0.0)


def _numpy_memory(generator: Any) -> tuple[Any, Any] | None:
    """Views of the MT19937 state and of RandomState's cached Gaussian, verified, or None.

    The bit generator publishes its state's address. ``RandomState`` keeps a copy of the bit
    generator's C interface (whose first field is that address) and, after it, the legacy
    state: a pointer to that copy, ``int has_gauss``, ``double gauss``; both are found by
    those pointers, on a private generator first.
    """
    if not _LITTLE or type(generator._bit_generator).__name__ != "MT19937":
        return None
    try:
        import ctypes

        from numpy.random import MT19937

        probe = type(generator)(MT19937(20240229))
        legacy_offset = _legacy_offset(probe, ctypes)
        if legacy_offset is None or _legacy_offset(generator, ctypes) != legacy_offset:
            return None
        views = [
            (
                (ctypes.c_char * _MT.size).from_address(g._bit_generator.ctypes.state_address),
                (ctypes.c_char * 16).from_address(id(g) + legacy_offset),
            )
            for g in (probe, generator)
        ]
        key, pos = probe.get_state()[1:3]
        for has_gauss, gauss in ((1, 0.8125), (0, 0.0), (1, -2.5)):
            probe.set_state(("MT19937", key, pos, has_gauss, gauss))
            if _from_views(*views[0]) != _numpy_state(probe):
                return None
        probe.standard_normal(3)
        if _from_views(*views[0]) != _numpy_state(probe):
            return None
        return views[1] if _from_views(*views[1]) == _numpy_state(generator) else None
    except Exception:
        return None


def _from_views(words: Any, legacy: Any) -> bytes:
    return state(("numpy", words.raw, legacy.raw))


def _legacy_offset(generator: Any, ctypes: Any) -> int | None:
    """Where ``has_gauss`` lies in ``generator``: after a pointer to its bit generator copy."""
    size = type(generator).__basicsize__
    memory = ctypes.string_at(id(generator), size)
    words = struct.unpack(f"<{size // 8}Q", memory[: size // 8 * 8])
    state_address = generator._bit_generator.ctypes.state_address
    copies = [index for index, word in enumerate(words) if word == state_address]
    if len(copies) != 1:
        return None
    copy_address = id(generator) + copies[0] * 8
    pointers = [index for index, word in enumerate(words) if word == copy_address]
    if len(pointers) != 1 or (pointers[0] + 3) * 8 > size:
        return None
    return pointers[0] * 8 + 8


_READERS: dict[str, Callable[[Any], Snapshot]] = {
    "random": _read_python,
    "numpy.random": _read_numpy,
}
