"""Containers of plain values: encoded whole, still canonical."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from nbcache.keys.digest import value_digest


def nan_with_payload(payload: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000 | payload))[0]
    return value


def test_equal_values_built_differently_digest_alike() -> None:
    word = "".join(["ab", "cd"])  # not interned, unlike the literal
    assert value_digest(["abcd", "abcd"]) == value_digest([word, "abcd"])
    shared = "x" * 10
    assert value_digest([shared, shared]) == value_digest([shared, "".join(["x"] * 10)])
    assert value_digest({"b": 1, "a": 2}) == value_digest({"a": 2, "b": 1})
    assert value_digest({"b", "a", "c"}) == value_digest({"c", "a", "b"})
    rows = [{"id": 1, "name": "a"}, {"name": "b", "id": 2}]
    assert value_digest(rows) == value_digest([{"name": "a", "id": 1}, {"id": 2, "name": "b"}])


@pytest.mark.parametrize(
    "first, second",
    [
        ([1], [True]),
        ([1], [1.0]),
        ([0.0], [-0.0]),
        (["a"], [b"a"]),
        ([b"a"], [bytearray(b"a")]),
        (["a"], ("a",)),
        ([None], []),
        ({"a": 1}, {"a": True}),
        ({1: "a"}, {"1": "a"}),
        ({"a", "b"}, frozenset({"a", "b"})),
        ([{"a": 1}], [{"a": 1, "b": None}]),
        ([{"a": 1, "b": 2}], [{"a": 2, "b": 1}]),
        ([{"a": 1}, {"a": 2}], [{"a": 2}, {"a": 1}]),
        ([{"a": 1}], [("a", 1)]),
        (["ab", "c"], ["a", "bc"]),
        ([1 << 70], [(1 << 70) + 1]),
    ],
)
def test_different_values_digest_differently(first: object, second: object) -> None:
    assert value_digest(first) != value_digest(second)


def test_every_nan_digests_alike_inside_plain_containers() -> None:
    first, second = nan_with_payload(1), nan_with_payload(2)
    assert struct.pack("<d", first) != struct.pack("<d", second)
    assert value_digest([first, "a"]) == value_digest([second, "a"])
    assert value_digest({"x": first}) == value_digest({"x": second})
    assert value_digest([{"x": first}]) == value_digest([{"x": second}])


def test_plain_and_general_members_mix() -> None:
    assert value_digest([1, [2, 3]]) == value_digest([1, [2, 3]])
    assert value_digest([1, [2, 3]]) != value_digest([1, (2, 3)])
    assert value_digest({"a": [1]}) != value_digest({"a": (1,)})
    assert value_digest({1: "a", "b": 2}) == value_digest({"b": 2, 1: "a"})


def test_plain_containers_digest_alike_across_processes_and_hash_seeds() -> None:
    script = (
        "from nbcache.keys.digest import value_digest\n"
        "print(value_digest([{'id': i, 'tag': f't{i}'} for i in range(50)]),"
        " value_digest({f'k{i}' for i in range(50)}),"
        " value_digest({f'k{i}': float(i) for i in range(50)}))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(done.stdout.strip())
    expected = " ".join(
        [
            value_digest([{"id": i, "tag": f"t{i}"} for i in range(50)]),
            value_digest({f"k{i}" for i in range(50)}),
            value_digest({f"k{i}": float(i) for i in range(50)}),
        ]
    )
    assert outputs == {expected}


@pytest.mark.parametrize(
    "value",
    [[], ["a", "b"], ("a", 1, 2.5, None, True, b"x"), {"k": 1, "j": "v"}, [{"a": 1}, {"a": 2}]],
)
def test_the_shortcut_for_a_whole_value_gives_the_handlers_digest(value: object) -> None:
    from nbcache.keys.digest import _fresh_digest

    assert value_digest(value) == _fresh_digest(value)
