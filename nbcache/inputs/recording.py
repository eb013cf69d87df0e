"""Recording one computation's hidden inputs while it runs (a miss)::

    with Recording(depends_on=["data/*.parquet"]) as recording:
        value = compute()
    if recording.problem is None:
        store(value, meta={META_KEY: recording.inputs.to_json()})

Files are recorded as the computation opens them (their identity at that moment: a file
changed while the computation ran then no longer matches, and the next check recomputes);
content digests are taken when the computation ends. A file the computation wrote, renamed
or removed is not an input. Environment variables are recorded as they are read; one the
computation set is not an input either (libraries call ``os.environ.setdefault`` on import).
Each global random generator is snapshotted before and after: one that changed was used, and
is an input unless the run seeded it before drawing.

Recordings nest: a cached computation called inside another records into its own recording,
which passes everything on to the enclosing one when it ends; a hit inside a computation
passes on the inputs its entry recorded (:meth:`HiddenInputs.reuse`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from nbcache.inputs import environment, instrumentation, random_state
from nbcache.inputs.environment import ValueDigest
from nbcache.inputs.files import (
    FileIdentity,
    Found,
    absolute_path,
    digest_limit,
    identity_of,
    is_candidate,
    with_digest,
)
from nbcache.inputs.hidden import HiddenInputs, RandomUse, expand

#: What a recording that saw nothing holds (never changed: each recording makes its own).
_NOTHING = HiddenInputs()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class _Reads:
    """What a computation read and wrote, made on its first report (most record nothing)."""

    __slots__ = ("files", "globs", "seeded_first", "seeding_seen", "variables", "written")

    def __init__(self) -> None:
        # absolute path -> (path as the computation saw it, what was there when first read)
        self.files: dict[str, tuple[str, Found]] = {}
        self.written: set[str] = set()  # files, and environment variables as "$NAME"
        self.globs: dict[str, list[str]] = {}
        self.variables: dict[str, str | None] = {}
        self.seeding_seen: set[str] = set()
        self.seeded_first: set[str] = set()


class Recording:
    """The hidden inputs of one computation, recorded while it runs (a context manager).

    ``depends_on``: glob patterns of files the computation depends on in ways the recording
    cannot see (read by code that bypasses Python's ``open``; a directory listing). After the
    ``with`` block, :attr:`inputs` holds what was recorded and :attr:`problem` says why the
    result must not be stored (None if it may).
    """

    __slots__ = (
        "_cwd",
        "_random_before",
        "_reads",
        "_token",
        "closed",
        "depends_on",
        "digest",
        "inputs",
        "parent",
        "problem",
    )

    def __init__(self, depends_on: Sequence[str] = (), digest: ValueDigest | None = None) -> None:
        self.depends_on = depends_on
        #: Digests the values of environment variables (the cache's keyed digest, or None
        #: for :func:`~nbcache.inputs.environment.plain_digest`).
        self.digest = digest
        self.parent: instrumentation.Sink | None = None
        self.closed = False
        self.inputs = _NOTHING
        self.problem: str | None = None
        self._cwd: str | None = None  # where the computation started, taken when first needed
        self._reads: _Reads | None = None
        self._random_before: dict[str, random_state.Snapshot] = {}
        self._token: Any = None

    def __enter__(self) -> Recording:
        try:
            self.parent = instrumentation.current()
            self._random_before = random_state.snapshots()
            for pattern in self.depends_on:
                matches = expand(pattern)
                self._recorded().globs[pattern] = matches
                for path in matches:
                    self._read(path, declared=True)
            self._token = instrumentation.start(self)
        except Exception as problem:  # the computation runs all the same, and is not stored
            self.failed(problem)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            instrumentation.stop(self, self._token)
        self.closed = True
        if self._token is None:
            return  # it never started
        parent = self.parent if isinstance(self.parent, Recording) else None
        if kind is not None and parent is None:
            return  # nothing will be stored, and no enclosing computation needs to know
        try:
            self._finish()
        except Exception as problem:  # never fail a computation that succeeded
            self.failed(problem)
        if parent is not None:
            parent.absorb(self.inputs, self)

    def _recorded(self) -> _Reads:
        reads = self._reads
        if reads is None:
            reads = self._reads = _Reads()
        return reads

    # -- what instrumentation reports ----------------------------------------------------

    def opened(self, path: Any, mode: Any, flags: Any) -> None:
        writes = isinstance(flags, int) and flags & _WRITE_FLAGS
        if writes or (isinstance(mode, str) and any(c in mode for c in "wax+")):
            self.wrote(path)
        else:
            self._read(path, declared=False)

    def _read(self, path: Any, *, declared: bool) -> None:
        reads = self._recorded()
        absolute = absolute_path(path)
        if absolute is None or absolute in reads.files or absolute in reads.written:
            return
        if not declared and not is_candidate(absolute):
            return
        found = identity_of(absolute, time.time_ns())
        reads.files[absolute] = (self._seen(path, absolute), found)

    def changing_directory(self) -> None:
        """The working directory is about to change: remember where the computation started."""
        for recording in instrumentation.chain(self):
            if isinstance(recording, Recording):
                recording._start_directory()

    def _start_directory(self) -> str:
        if self._cwd is None:
            self._cwd = os.getcwd()
        return self._cwd

    def wrote(self, *paths: Any) -> None:
        written = self._recorded().written
        for path in paths:
            absolute = absolute_path(path)
            if absolute is not None:
                written.add(absolute)

    def read_variable(self, name: str | bytes, value: str | bytes | None) -> None:
        reads = self._recorded()
        decoded = os.fsdecode(name)
        if decoded not in reads.variables and "$" + decoded not in reads.written:
            reads.variables[decoded] = environment.value_digest(
                value, self.digest or environment.plain_digest
            )

    def listed_variables(self, names: list[str]) -> None:
        variables = self._recorded().variables
        if environment.ALL_NAMES not in variables:
            variables[environment.ALL_NAMES] = environment.names_digest(names)

    def wrote_variable(self, name: str | bytes) -> None:
        self._recorded().written.add("$" + os.fsdecode(name))

    def reseeded(self, generator: str) -> None:
        """The computation replaces the generator's state: did it draw before?"""
        for recording in instrumentation.chain(self):
            if not isinstance(recording, Recording):
                continue
            reads = recording._recorded()
            if generator in reads.seeding_seen:
                continue
            reads.seeding_seen.add(generator)
            before = recording._random_before.get(generator)
            if before is not None and random_state.snapshot(generator) == before:
                reads.seeded_first.add(generator)

    def failed(self, problem: BaseException) -> None:
        if self.problem is None:
            self.problem = f"recording its inputs failed ({type(problem).__name__}: {problem})"

    def absorb(self, inputs: HiddenInputs, child: Recording | None = None) -> None:
        """Take in the inputs of a computation run or reused inside this one."""
        if child is not None and child.problem is not None and self.problem is None:
            self.problem = child.problem
        if not inputs and (child is None or child._reads is None):
            return
        reads = self._recorded()
        cwd = child._start_directory() if child is not None else os.getcwd()
        for path, found in inputs.files.items():
            absolute = os.path.normpath(os.path.join(cwd, path))
            if absolute not in reads.files and absolute not in reads.written:
                reads.files[absolute] = (self._seen(path, absolute), found)
        for pattern, matches in inputs.globs.items():
            reads.globs.setdefault(pattern, matches)
        own = inputs.digest == self.digest
        for name, digest in inputs.variables.items():
            if "$" + name in reads.written or name in reads.variables:
                continue
            if not own and digest is not None and name != environment.ALL_NAMES:
                # Made with another cache's digest: the value is the one set now (it was
                # just read, or just checked against the record), so digest it again.
                with instrumentation.unrecorded():
                    value = os.environ.get(name)
                digest = environment.value_digest(value, self.digest or environment.plain_digest)
            reads.variables[name] = digest
        if child is not None and child._reads is not None:
            reads.written |= child._reads.written

    # -- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        reads = self._reads
        now = random_state.snapshots() if self._random_before else {}
        if reads is None and now == self._random_before:
            return  # the common miss: it read nothing hidden
        random = {}
        for name, before in self._random_before.items():
            after = now.get(name)
            if after is None or after == before:
                continue
            if random_state.unsupported(before) or random_state.unsupported(after):
                self.problem = f"it draws from `{name}`'s global generator of a kind not followed"
                continue
            used_before = reads is None or name not in reads.seeded_first
            random[name] = RandomUse(
                random_state.state_digest(name, before) if used_before else None,
                random_state.export(after),
            )
        if reads is None:
            if random:
                self.inputs = HiddenInputs(random=random, digest=self.digest)
            return
        files: dict[str, Found] = {}
        if reads.files:
            with instrumentation.unrecorded():  # nbcache reads them, not the computation
                limit = digest_limit()
                for absolute, (seen, found) in list(reads.files.items()):
                    if absolute in reads.written:
                        continue
                    if isinstance(found, FileIdentity):
                        found = with_digest(absolute, found, limit)
                    files[seen] = found
        variables = {  # a variable the computation set is its own (os.environ.setdefault)
            name: digest
            for name, digest in reads.variables.items()
            if "$" + name not in reads.written
        }
        inputs = HiddenInputs(files, dict(reads.globs), variables, random, self.digest)
        if inputs:
            self.inputs = inputs

    def _seen(self, path: Any, absolute: str) -> str:
        """A path as the computation saw it: relative ones stay relative to where it started."""
        given = os.fsdecode(path) if not isinstance(path, str) else path
        if os.path.isabs(given):
            return os.path.normpath(given)
        return os.path.relpath(absolute, self._start_directory())


def declared_patterns(depends_on: Iterable[str | os.PathLike[str]] | str) -> tuple[str, ...]:
    """``depends_on`` as a tuple of glob patterns: one pattern alone, or several.

    Raises ``TypeError`` for anything that is not a path or a pattern.
    """
    if isinstance(depends_on, str | os.PathLike):
        depends_on = [depends_on]
    patterns = []
    for pattern in depends_on:
        text = os.fspath(pattern) if isinstance(pattern, os.PathLike) else pattern
        if not isinstance(text, str) or not text:
            raise TypeError(
                f"depends_on takes glob patterns of files, like 'data/*.csv', not {pattern!r}"
            )
        patterns.append(text)
    return tuple(patterns)
