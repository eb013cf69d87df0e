"""The signed, versioned envelope: what is refused, and that refusal comes before loading.

A refused entry must never reach the unpickler. Where a test says "nothing was loaded", it
proves it either by counting calls to the loader or with a payload whose loading would create
a marker directory (``os.mkdir``), and shows with a control that the same payload does create
it when loaded.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcache import SimpleCache
from nbcache.cache import Cache
from nbcache.entries import serializer
from nbcache.entries.envelope import Entry, Envelope
from nbcache.entries.signing import Signer
from nbcache.exceptions import EntryRefused
from nbcache.stores.api import NO_VALUE
from nbcache.stores.memory import MemoryStore

OLD_SECRET = b"old-secret-0123456789abcdef"
NEW_SECRET = b"new-secret-0123456789abcdef"
OTHER_SECRET = b"someone-elses-secret-0123456"


class MakesMarker:
    """Pickles to ``os.mkdir(path)``: loading it leaves a directory behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def entry_bytes(envelope: Envelope, key: str, value: Any, **options: Any) -> bytes:
    return b"".join(
        bytes(memoryview(frame)) for frame in envelope.seal(key, value, None, **options)
    )


@pytest.fixture
def signed() -> Envelope:
    return Envelope(Signer([NEW_SECRET]))


@pytest.fixture
def loads_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls to the unpickler behind every envelope."""
    calls: list[int] = []
    real_loads = serializer.loads

    def counting_loads(head: Any, buffers: Any, *rest: Any) -> Any:
        calls.append(1)
        return real_loads(head, buffers, *rest)

    monkeypatch.setattr(serializer, "loads", counting_loads)
    return calls


def test_signed_and_unsigned_round_trip(signed: Envelope) -> None:
    array = np.arange(100_000, dtype=np.float64)  # big enough to travel out of band
    value = {"a": 1, "none": None, "text": "é", "array": array}
    for envelope in (signed, Envelope()):
        frames = envelope.seal("key", value, expires=None, duration=1.5, meta={"why": "test"})
        assert len(frames) >= 3, "the array should travel as its own frame"
        entry = envelope.open("key", b"".join(bytes(memoryview(f)) for f in frames))
        assert isinstance(entry, Entry)
        assert entry.value.keys() == value.keys()
        assert entry.value["text"] == "é" and entry.value["none"] is None
        np.testing.assert_array_equal(entry.value["array"], array)
        assert entry.duration == 1.5 and entry.meta == {"why": "test"} and entry.expires is None


def test_every_single_bit_flip_of_a_signed_entry_is_refused_before_loading(
    signed: Envelope, loads_calls: list[int]
) -> None:
    entry = entry_bytes(signed, "key", {"small": [1, 2, 3]})
    assert len(entry) < 400  # keeps the sweep (8 flips per byte) quick
    for position in range(len(entry) * 8):
        damaged = bytearray(entry)
        damaged[position // 8] ^= 1 << (position % 8)
        with pytest.raises(EntryRefused):
            signed.open("key", bytes(damaged))
    assert loads_calls == []
    assert signed.open("key", entry).value == {"small": [1, 2, 3]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fraction=st.floats(min_value=0, max_value=1, exclude_max=True), bit=st.integers(0, 7))
def test_a_bit_flip_anywhere_in_a_big_multi_frame_entry_is_refused(
    fraction: float, bit: int
) -> None:
    envelope = Envelope(Signer([NEW_SECRET]))
    entry = bytearray(_big_entry(envelope))
    position = int(fraction * len(entry))
    entry[position] ^= 1 << bit
    with pytest.raises(EntryRefused):
        envelope.open("big", bytes(entry))


_BIG_ENTRIES: dict[int, bytes] = {}


def _big_entry(envelope: Envelope) -> bytes:
    # One entry per envelope is enough; sealing 800 KB for each example would slow the sweep.
    if id(envelope.signer) not in _BIG_ENTRIES:
        _BIG_ENTRIES.clear()
        value = {"a": np.arange(50_000, dtype=np.int64), "b": np.ones(50_000)}
        _BIG_ENTRIES[id(envelope.signer)] = entry_bytes(envelope, "big", value)
    return _BIG_ENTRIES[id(envelope.signer)]


def test_truncated_at_every_length_is_refused(signed: Envelope, loads_calls: list[int]) -> None:
    entry = entry_bytes(signed, "key", {"small": "value"})
    for length in range(len(entry)):
        with pytest.raises(EntryRefused):
            signed.open("key", entry[:length])
    assert loads_calls == []


def test_unsigned_entries_are_refused_when_truncated_too() -> None:
    unsigned = Envelope()
    entry = entry_bytes(unsigned, "key", list(range(20)))
    for length in range(len(entry)):
        with pytest.raises(EntryRefused):
            unsigned.open("key", entry[:length])


def test_entry_replayed_under_another_key_is_refused(
    signed: Envelope, loads_calls: list[int]
) -> None:
    entry = entry_bytes(signed, "result-of-f(1)", 1)
    for other in ("result-of-f(2)", "result-of-f(1) ", "", "RESULT-OF-F(1)"):
        with pytest.raises(EntryRefused, match="bad signature"):
            signed.open(other, entry)
    assert loads_calls == []
    assert signed.open("result-of-f(1)", entry).value == 1


def test_entry_copied_to_another_namespace_is_refused(loads_calls: list[int]) -> None:
    signer = Signer([NEW_SECRET])
    entry = entry_bytes(Envelope(signer, context="team-a"), "key", "a's value")
    with pytest.raises(EntryRefused, match="bad signature"):
        Envelope(signer, context="team-b").open("key", entry)
    assert loads_calls == []
    assert Envelope(signer, context="team-a").open("key", entry).value == "a's value"


def test_entry_signed_with_another_secret_is_refused(loads_calls: list[int]) -> None:
    entry = entry_bytes(Envelope(Signer([OTHER_SECRET])), "key", "theirs")
    with pytest.raises(EntryRefused, match="bad signature"):
        Envelope(Signer([NEW_SECRET])).open("key", entry)
    assert loads_calls == []


def test_rotation_old_entries_verify_new_entries_are_signed_by_the_first_secret() -> None:
    before = Envelope(Signer([OLD_SECRET]))
    during = Envelope(Signer([NEW_SECRET, OLD_SECRET]))
    after = Envelope(Signer([NEW_SECRET]))
    old_entry = entry_bytes(before, "key", "old")
    assert during.open("key", old_entry).value == "old"

    new_entry = entry_bytes(during, "key", "new")
    assert after.open("key", new_entry).value == "new"
    with pytest.raises(EntryRefused):
        before.open("key", new_entry)
    # Once the old secret is dropped, its entries are refused.
    with pytest.raises(EntryRefused):
        after.open("key", old_entry)


def test_unsigned_entry_is_refused_by_a_signing_reader(
    signed: Envelope, loads_calls: list[int], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    unsigned_entry = entry_bytes(Envelope(), "key", MakesMarker(marker))
    with pytest.raises(EntryRefused):
        signed.open("key", unsigned_entry)
    assert loads_calls == []
    assert not marker.exists()
    # Control: the unsigned reader (the in-process store) does load it.
    Envelope().open("key", unsigned_entry)
    assert marker.is_dir()


def another_minor() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1] + 1}"


@pytest.mark.parametrize("skew", ["python major", "python minor with code", "cloudpickle"])
def test_version_skew_is_refused_before_loading(
    skew: str, signed: Envelope, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is correctly signed; only its header's versions differ from this process."""
    marker = tmp_path / "marker"
    # a lambda is code pickled by value: only its writer's Python minor version may load it
    payload = (MakesMarker(marker), lambda x: x + 1)
    with monkeypatch.context() as writer:
        if skew == "python major":
            other = f"{sys.version_info[0] + 1}.0"
            writer.setattr("nbcache.entries.envelope.PYTHON", other)
            reason = f"written by Python {other}, this is Python"
        elif skew == "python minor with code":
            other = another_minor()
            writer.setattr("nbcache.entries.envelope.PYTHON", other)
            reason = f"written by Python {other} and holds code pickled by value"
        else:
            major = int(serializer.cloudpickle_version().split(".")[0])
            other = f"{major + 1}.0.0"
            writer.setattr(serializer, "cloudpickle_version", lambda: other)
            reason = f"written by cloudpickle {other}"
        entry = entry_bytes(signed, "key", payload)
    with pytest.raises(EntryRefused, match=re.escape(reason)):
        signed.open("key", entry)
    assert not marker.exists()

    # Control: with matching versions the very same payload runs when loaded.
    matching = entry_bytes(signed, "key", payload)
    assert signed.open("key", matching).value[1](1) == 2
    assert marker.is_dir()


def test_plain_data_written_by_another_python_minor_version_loads(
    signed: Envelope, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numbers, text, containers, arrays and importable classes do not depend on bytecode."""
    value = {
        "array": np.arange(100_000, dtype=np.float64),
        "rows": [(1, "a"), (2, "b")],
        "when": datetime.datetime(2024, 5, 1, 12, 30),
        "kind": collections.OrderedDict,
        "join": os.path.join,
    }
    with monkeypatch.context() as writer:
        writer.setattr("nbcache.entries.envelope.PYTHON", another_minor())
        entry = entry_bytes(signed, "key", value)
    header, _ = signed.open_header("key", entry)
    assert header.python == another_minor() and not header.code_by_value
    loaded = signed.open("key", entry).value
    np.testing.assert_array_equal(loaded["array"], value["array"])
    assert {k: v for k, v in loaded.items() if k != "array"} == {
        k: v for k, v in value.items() if k != "array"
    }


def test_the_code_by_value_flag_is_signed(signed: Envelope) -> None:
    """Clearing the flag to pass code off as data breaks the signature."""
    entry = bytearray(entry_bytes(signed, "key", lambda: 1))
    header, _ = signed.open_header("key", bytes(entry))
    assert header.code_by_value
    flags_at = entry.index(header.pack()) + 4  # serializer, major, minor, MAC kind, flags
    assert entry[flags_at] == 1
    entry[flags_at] = 0
    with pytest.raises(EntryRefused, match="bad signature"):
        signed.open("key", bytes(entry))


def test_same_cloudpickle_major_with_another_minor_is_accepted(
    signed: Envelope, monkeypatch: pytest.MonkeyPatch
) -> None:
    major = serializer.cloudpickle_version().split(".")[0]
    with monkeypatch.context() as writer:
        writer.setattr(serializer, "cloudpickle_version", lambda: f"{major}.999.0")
        entry = entry_bytes(signed, "key", [1, 2])
    assert signed.open("key", entry).value == [1, 2]


@pytest.fixture
def vanishing_module() -> Iterator[types.ModuleType]:
    """A module importable while the entry is written, gone when it is read."""
    module = types.ModuleType("nbcache_test_vanishing_module")
    exec("class Thing:\n    def __init__(self, x):\n        self.x = x\n", module.__dict__)
    module.Thing.__module__ = module.__name__
    sys.modules[module.__name__] = module
    yield module
    sys.modules.pop(module.__name__, None)


def test_verified_entry_whose_class_is_not_importable_is_refused(
    signed: Envelope, vanishing_module: types.ModuleType
) -> None:
    entry = entry_bytes(signed, "key", vanishing_module.Thing(3))
    del sys.modules[vanishing_module.__name__]
    with pytest.raises(EntryRefused, match=r"cannot load the value here.*nbcache_test_vanishing"):
        signed.open("key", entry)


def test_at_the_cache_level_an_unloadable_entry_is_a_miss_and_one_warning(
    vanishing_module: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache(MemoryStore(), Envelope(Signer([NEW_SECRET])))
    assert cache.set("thing", vanishing_module.Thing(3))
    assert cache.get("thing").x == 3
    del sys.modules[vanishing_module.__name__]
    caplog.set_level(logging.WARNING, logger="nbcache")
    assert cache.get("thing") is None
    assert cache.get_entry("thing") is NO_VALUE
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per read, each naming the reason
    assert all("'thing'" in w and "nbcache_test_vanishing_module" in w for w in warnings)


def test_at_the_cache_level_a_tampered_entry_is_a_miss_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    cache = Cache(store, Envelope(Signer([NEW_SECRET])))
    assert cache.set("key", "true value")
    raw = bytearray(store.get("key"))  # type: ignore[arg-type]
    raw[-1] ^= 0x01
    store.set("key", [bytes(raw)], None)
    caplog.set_level(logging.WARNING, logger="nbcache")
    assert cache.get("key") is None
    assert not cache.has("key")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2 and all("bad signature" in m for m in messages)


def test_simple_cache_needs_no_signature() -> None:
    cache = SimpleCache()
    assert cache.entries.envelope.signer is None
    assert cache.set("key", {"x": 1}) and cache.get("key") == {"x": 1}


def test_a_forked_child_verifies_a_big_entry_without_hanging() -> None:
    """Notebooks fork (multiprocessing): a child must check MACs as its parent does."""
    import subprocess
    import textwrap

    script = textwrap.dedent(
        """
        import os
        from nbcache.entries.envelope import Envelope
        from nbcache.entries.signing import Signer

        envelope = Envelope(Signer([b"fork-test-secret-0123456789"]))
        entry = b"".join(envelope.seal("k", bytes(64 << 20), None))
        envelope.open("k", entry)  # the parent's MAC work starts blake3's threads
        child = os.fork()
        if child == 0:
            os._exit(0 if envelope.open("k", entry).value == bytes(64 << 20) else 1)
        _, status = os.waitpid(child, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    repository = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repository))
    # A session of its own: a hung child is stopped with its parent, by the group's id.
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        pytest.fail("the forked child never finished checking the MAC")
    assert out.strip() == "0", err
