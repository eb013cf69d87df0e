"""Classes and functions pickled by value load as the loading process's own when they are the
same code (across kernels: tests/test_kernels.py), and as cloudpickle's copies otherwise."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import cloudpickle
import pytest

from nbcache.entries import serializer
from nbcache.keys.fingerprint import function_fingerprint

SOURCE = """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def scale(v):
    return v * 2
"""


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    """A module of user code that cloudpickle pickles by value, as it does the notebook's."""
    module = types.ModuleType("identity_probe")
    sys.modules[module.__name__] = module
    exec(SOURCE, vars(module))
    cloudpickle.register_pickle_by_value(module)
    yield module
    cloudpickle.unregister_pickle_by_value(module)
    del sys.modules[module.__name__]


def reload(frames: serializer.Frames, fingerprint: bool = True) -> list[object]:
    code_fingerprint = function_fingerprint if fingerprint else None
    return serializer.loads(frames.head, list(frames.buffers), code_fingerprint)  # type: ignore[no-any-return]


def test_the_same_code_defined_again_is_what_loads(module: types.ModuleType):
    frames = serializer.dumps([module.Point(1, 2), module.scale], "k", function_fingerprint)
    exec(SOURCE, vars(module))  # the same code, new objects: as in another kernel
    point, scale = reload(frames)
    assert type(point) is module.Point and (point.x, point.y) == (1, 2)
    assert scale is module.scale


def test_changed_code_loads_as_the_stored_copy(module: types.ModuleType):
    frames = serializer.dumps([module.scale], "k", function_fingerprint)
    exec(SOURCE.replace("v * 2", "v * 3"), vars(module))
    (scale,) = reload(frames)
    assert scale is not module.scale and scale(1) == 2  # type: ignore[operator]
    assert module.scale(1) == 3, "the loading process's own function is left alone"


def test_without_a_fingerprint_the_copy_loads_as_cloudpickle_builds_it(module: types.ModuleType):
    recorded = serializer.dumps([module.scale], "k", function_fingerprint)
    exec(SOURCE, vars(module))
    assert reload(recorded, fingerprint=False)[0] is not module.scale
    plain = serializer.dumps([module.scale], "k")
    assert reload(plain)[0] is not module.scale
