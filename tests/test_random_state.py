"""Snapshots of the global random generators: read from memory, equal to the public state.

A snapshot decides whether a computation drew random numbers, and its digest whether a hit may
be used: the fast reading (the generators' memory) must agree with ``getstate()`` in every
state, and restoring a snapshot must continue the sequence exactly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import pytest

from nbcache import SimpleCache, cached_result
from nbcache.inputs import random_state


@pytest.fixture(autouse=True)
def saved_generators() -> Iterator[None]:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def python_public() -> bytes:
    instance = random._inst  # type: ignore[attr-defined]
    words = random_state._python_random_state(instance)
    return random_state.state(("python", words, instance.gauss_next))


def numpy_public() -> bytes:
    return random_state._numpy_state(np.random.mtrand._rand)


def snapshot_state(name: str) -> bytes:
    taken = random_state.snapshot(name)
    assert taken is not None
    return random_state.state(taken)


def test_both_generators_are_read_from_memory_here() -> None:
    random_state.snapshot("random")
    random_state.snapshot("numpy.random")
    assert random_state._views.python is not None
    assert random_state._views.numpy is not None


def test_python_snapshots_equal_the_public_state_in_every_state() -> None:
    random.seed(11)
    for step in range(700):  # across a regeneration of the 624 words
        assert snapshot_state("random") == python_public(), f"after {step} draws"
        if step % 3 == 0:
            random.gauss(0, 1)  # leaves a cached deviate every other call
        else:
            random.random()


def test_numpy_snapshots_equal_the_public_state_in_every_state() -> None:
    np.random.seed(11)
    for step in range(400):
        assert snapshot_state("numpy.random") == numpy_public(), f"step {step}"
        if step % 2:
            np.random.standard_normal(step % 5)  # odd counts leave a cached deviate
        else:
            np.random.random(step % 7)


def test_a_restored_snapshot_continues_the_sequence() -> None:
    np.random.seed(3)
    np.random.standard_normal()
    random.seed(3)
    random.gauss(0, 1)
    saved = {name: random_state.snapshot(name) for name in random_state.GENERATORS}
    expected = (list(np.random.standard_normal(5)), [random.gauss(0, 1) for _ in range(5)])
    np.random.seed(99)
    random.seed(99)
    for name, state in saved.items():
        assert state is not None
        random_state.restore(name, random_state.export(state))
    assert (list(np.random.standard_normal(5)), [random.gauss(0, 1) for _ in range(5)]) == expected


def test_a_generator_of_another_kind_is_not_cached_but_still_computed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = np.random.mtrand._rand._bit_generator
    np.random.set_bit_generator(np.random.PCG64(5))
    try:
        calls: list[int] = []

        @cached_result(cache=SimpleCache())
        def draw() -> float:
            calls.append(1)
            return float(np.random.random())

        with caplog.at_level(logging.WARNING, logger="nbcache"):
            first, second = draw(), draw()
        assert first != second and len(calls) == 2, "a draw it cannot follow is not stored"
        assert any(
            "global generator of a kind not followed" in r.getMessage() for r in caplog.records
        )
    finally:
        np.random.set_bit_generator(original)
