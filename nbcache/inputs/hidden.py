"""What a computation read besides its arguments, as stored in its entry and checked on a hit.

An entry's signed metadata holds, under :data:`META_KEY`, the files the computation read
(with their identities), the glob patterns it declared (with the files they matched), the
environment variables it read (as digests) and, for each global random generator it drew
from, the digest of the state it started from and the state it left. Readers must tell such
an entry without parsing metadata: a cell's entry has a tag ending in :data:`TAG_MARK`
(:func:`entry_change`); a cached function's entry has metadata only then
(:func:`recorded_change`).

Before a hit is used, :meth:`HiddenInputs.first_change` says whether any of them differs now
(a miss, with the reason), and :meth:`HiddenInputs.reuse` then restores the random state a
plain run would leave, and tells an enclosing computation what this one read.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from typing import Any

from nbcache.inputs import environment, instrumentation, random_state
from nbcache.inputs.environment import ValueDigest
from nbcache.inputs.files import Found, file_change, found_from_json, found_to_json

META_KEY = "inputs"
TAG_MARK = "+inputs"
_PARSED_ENTRIES = 256


@dataclass(frozen=True)
class RandomUse:
    """How a computation used a global generator.

    ``before``: digest of the state the run started from, or None if the run replaced the
    state (seeded) before drawing. ``after``: the exported state the run left.
    """

    before: str | None
    after: str


@dataclass
class HiddenInputs:
    """Files, declared globs, environment variables and random generators a computation used.

    Paths are as the computation saw them: relative ones resolve against the working
    directory of whoever checks them. ``digest`` made the digests of ``variables`` (the
    cache's keyed one; None: :func:`~nbcache.inputs.environment.plain_digest`).
    """

    files: dict[str, Found] = field(default_factory=dict)
    globs: dict[str, list[str]] = field(default_factory=dict)
    variables: dict[str, str | None] = field(default_factory=dict)
    random: dict[str, RandomUse] = field(default_factory=dict)
    digest: ValueDigest | None = field(default=None, compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.files or self.globs or self.variables or self.random)

    # -- storing --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form kept in an entry's metadata."""
        data: dict[str, Any] = {}
        if self.files:
            data["files"] = {
                path: found_to_json(found) for path, found in sorted(self.files.items())
            }
        if self.globs:
            data["globs"] = dict(sorted(self.globs.items()))
        if self.variables:
            data["env"] = dict(sorted(self.variables.items()))
        if self.random:
            data["random"] = {
                name: [use.before, use.after] for name, use in sorted(self.random.items())
            }
        return data

    @classmethod
    def from_json(cls, data: Any, digest: ValueDigest | None = None) -> HiddenInputs:
        """The inputs :meth:`to_json` wrote (with ``digest``); ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError("hidden inputs are not a mapping")
        files = {
            _text(path): found_from_json(found)
            for path, found in _mapping(data.get("files")).items()
        }
        globs = {
            _text(pattern): [_text(path) for path in _list(matches)]
            for pattern, matches in _mapping(data.get("globs")).items()
        }
        variables = {
            _text(name): None if digest is None else _text(digest)
            for name, digest in _mapping(data.get("env")).items()
        }
        random = {}
        for name, use in _mapping(data.get("random")).items():
            before, after = _list(use)
            if name not in random_state.GENERATORS:
                raise ValueError(f"unknown random generator {name!r}")
            random[name] = RandomUse(None if before is None else _text(before), _text(after))
        return cls(files, globs, variables, random, digest)

    # -- checking -------------------------------------------------------------------------

    def first_change(self) -> str | None:
        """Why a plain run now could differ (the first input found changed), or None.

        Never raises: a file that vanished or cannot be read is a change.
        """
        made_by = self.digest or environment.plain_digest
        for name, recorded in self.variables.items():
            reason = environment.variable_change(name, recorded, made_by)
            if reason is not None:
                return reason
        for name, use in self.random.items():
            if use.before is None:
                continue
            now = random_state.snapshot(name)
            if (
                now is None
                or random_state.unsupported(now)
                or random_state.state_digest(name, now) != use.before
            ):
                return (
                    f"the global random state of `{name}` differs from the one it was computed with"
                )
        for pattern, matches in self.globs.items():
            reason = _glob_change(pattern, matches)
            if reason is not None:
                return reason
        for path, identity in self.files.items():
            reason = file_change(path, identity)
            if reason is not None:
                return reason
        return None

    def reuse(self) -> None:
        """Leave the world as a plain run would: restore random states, inform enclosing runs.

        Call it once the hit is certain. A restore that fails raises (the caller treats the
        hit as a miss).
        """
        recording = instrumentation.current()
        for name, use in self.random.items():
            if use.before is None and recording is not None:
                recording.reseeded(name)  # as the run did: the enclosing runs learn it
            random_state.restore(name, use.after)
        if recording is not None:
            recording.absorb(self)


def expand(pattern: str) -> list[str]:
    """The paths a declared pattern matches now, sorted (``**`` matches across directories)."""
    return sorted(glob.glob(pattern, recursive=True))


def _glob_change(pattern: str, matches: list[str]) -> str | None:
    now = expand(pattern)
    if now == matches:
        return None
    added = sorted(set(now) - set(matches))
    if added:
        return f"`{pattern}` now also matches `{added[0]}`"
    gone = sorted(set(matches) - set(now))
    return f"`{pattern}` no longer matches `{gone[0]}`"


_parsed: dict[tuple[bytes, ValueDigest | None], HiddenInputs] = {}


def from_meta_json(meta_json: bytes, digest: ValueDigest | None = None) -> HiddenInputs:
    """The hidden inputs in an entry's metadata; ``ValueError`` if there are none or bad ones.

    ``digest``: the one the entry's cache records secret values with. Parsed once per
    distinct metadata: a hit of the same entry costs a dictionary lookup.
    """
    found = _parsed.get((meta_json, digest))
    if found is not None:
        return found
    try:
        meta = json.loads(meta_json)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"unreadable metadata: {error}") from None
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise ValueError("the entry records no hidden inputs")
    inputs = HiddenInputs.from_json(meta[META_KEY], digest)
    if len(_parsed) >= _PARSED_ENTRIES:
        _parsed.clear()
    _parsed[bytes(meta_json), digest] = inputs
    return inputs


def entry_change(
    tag: str, meta_json: bytes, digest: ValueDigest | None = None
) -> tuple[str | None, HiddenInputs | None]:
    """For an entry's tag and metadata: why it cannot be used now, and its hidden inputs.

    ``digest``: the cache's envelope's :attr:`~nbcache.entries.envelope.Envelope.secret_digest`.

    ``(None, None)`` for an entry without hidden inputs, ``(None, inputs)`` for one whose
    inputs are unchanged (call ``inputs.reuse()`` when using it), ``(reason, None)`` else.
    """
    if not tag.endswith(TAG_MARK):
        return None, None
    try:
        inputs = from_meta_json(meta_json, digest)
    except ValueError as error:
        return f"its record of hidden inputs is unusable ({error})", None
    with instrumentation.unrecorded():  # an enclosing computation learns them from reuse()
        try:
            reason = inputs.first_change()
        except Exception as error:  # a check that fails is a change, never an error
            reason = f"its hidden inputs could not be checked ({type(error).__name__}: {error})"
    return (reason, None) if reason is not None else (None, inputs)


def recorded_change(
    meta_json: bytes, digest: ValueDigest | None = None
) -> tuple[str | None, HiddenInputs | None]:
    """:func:`entry_change` for an entry whose metadata is known to hold hidden inputs."""
    return entry_change(TAG_MARK, meta_json, digest)


def _mapping(value: Any) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value
