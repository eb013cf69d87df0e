"""Values pickle the same way whichever path the serializer takes, and round-trip."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

import cloudpickle
import pytest

from nbcache.entries import serializer


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def self_containing() -> list[Any]:
    value: list[Any] = [1, "two"]
    value.append(value)
    return value


PLAIN = {
    "small dict": {"customer": 1234, "region": "NORTH", "total": 139.93, "tags": ["no", "eur"]},
    "scalars": (None, True, 2**100, -0.0, float("nan"), "é", b"\x00bytes"),
    "sets": {"s": {1, 2, 3}, "f": frozenset({"a"}), "t": (1, (2, (3,)))},
    "deep": nested(400),
    "long list": list(range(10_000)),
    "self-containing": self_containing(),
    "bytearray": [bytearray(b"mutable"), bytearray(200_000)],
}

BY_VALUE = {
    "a lambda in a dict": {"f": lambda x: x + 1},
    "an ordered dict": OrderedDict(a=1),
    "a class from this module": [pytest.param],
    "a pickle buffer": {"data": pickle.PickleBuffer(bytearray(b"out of band"))},
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_values_pickle_to_the_bytes_cloudpickle_gives(name: str) -> None:
    value = PLAIN[name]
    frames = serializer.dumps(value)
    assert frames.buffers == ()
    assert frames.head == cloudpickle.dumps(value, protocol=5)
    again = pickle.loads(frames.head)
    assert repr(again) == repr(value)


@pytest.mark.parametrize("name", list(BY_VALUE))
def test_other_values_go_through_cloudpickle_and_round_trip(name: str) -> None:
    value = BY_VALUE[name]
    assert not serializer.is_plain(value)
    frames = serializer.dumps(value)
    again = serializer.loads(frames.head, list(frames.buffers))
    if name == "a lambda in a dict":
        assert again["f"](1) == 2
    elif name == "a pickle buffer":
        assert bytes(again["data"]) == b"out of band"
    else:
        assert again == value


def test_a_value_whose_pickling_fails_halfway_leaves_the_next_one_intact() -> None:
    class Broken:
        def __reduce__(self) -> Any:
            raise RuntimeError("no")

    assert serializer.plain_dumps({"a": [1, Broken()]}) is None
    value = {"b": [2, 3]}
    assert serializer.plain_dumps(value) == pickle.dumps(value, protocol=5)


def test_a_subclass_of_a_builtin_is_not_plain() -> None:
    class Row(dict[str, int]):
        pass

    assert not serializer.is_plain({"row": Row(a=1)})
    assert not serializer.is_plain([1, 2, [3, Row()]])
    assert serializer.is_plain([1, 2, [3, {}]])
