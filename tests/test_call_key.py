"""Call keys: the fast binding and the remembered scalar digests agree with the slow paths."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from nbcache.functions.call_key import CallKeyBuilder
from nbcache.keys.digest import value_digest


def plain(a: int, b: int = 2, *, c: int = 3, d: int) -> None: ...


def positional_only(a: int, /, b: int = 2) -> None: ...


def variadic(a: int, *rest: int, **options: int) -> None: ...


def no_defaults(a: int, b: int) -> None: ...


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, 3), {}),
    ((1,), {"d": 4}),
    ((1, 5), {"d": 4, "c": 6}),
    ((), {"a": 1, "b": 2}),
    ((), {"b": 2, "a": 1, "d": 0}),
    ((1,), {"a": 1, "d": 4}),
    ((1,), {"d": 4, "unknown": 0}),
    ((1, 2), {"b": 2}),
]


@pytest.mark.parametrize("function", [plain, positional_only, variadic, no_defaults])
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_binding_equals_signature_bind_or_raises_as_it_does(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    signature = inspect.signature(function)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as expected:
        with pytest.raises(TypeError) as raised:
            CallKeyBuilder(function).bound_arguments(args, kwargs)
        assert str(raised.value) == str(expected)
        return
    if any(p.default is not p.empty for p in signature.parameters.values()):
        bound.apply_defaults()
    got = CallKeyBuilder(function).bound_arguments(args, kwargs)
    assert list(got.items()) == list(bound.arguments.items())  # same names, same order


def test_ignored_names_are_left_out_of_a_fast_binding() -> None:
    builder = CallKeyBuilder(plain, ignore=("b",))
    assert builder.bound_arguments((1,), {"d": 4}) == {"a": 1, "c": 3, "d": 4}


@pytest.mark.parametrize(
    "value", [0, 1, -1, 2**80, True, False, "", "north", "n" * 256, "n" * 257, 1.0, -0.0, None]
)
def test_argument_digests_equal_value_digest_on_repeated_calls(value: object) -> None:
    builder = CallKeyBuilder(no_defaults)
    for _ in range(3):  # the first call computes, the next ones may remember
        digests = builder.argument_digests((value, 1), {})
        assert digests == {"a": value_digest(value), "b": value_digest(1)}


def test_equal_scalars_of_different_types_keep_different_keys() -> None:
    builder = CallKeyBuilder(no_defaults)
    keys = set()
    for value in (1, True, 1.0, "1", 0, False, 0.0, -0.0):
        for _ in range(2):
            arguments = builder.argument_digests((value, 0), {})
            key = builder.build("code", arguments).key
        keys.add(key)
    assert len(keys) == 8
