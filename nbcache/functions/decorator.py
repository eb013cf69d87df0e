"""``@cached_result``: memoize a function on its code and the values of its inputs.

::

    @cached_result
    def summarize(df, column="price"): ...

    @cached_result(timeout=3600, ignore=("verbose",), version=2)
    def fit(data, verbose=False): ...

The key covers the function's code fingerprint (its helpers too, so editing a helper
invalidates its callers; comments and formatting do not), the canonical digest of every
argument (defaults applied, keyword order irrelevant), the global data its code reads, and
``version``. See :mod:`nbcache.functions.call_key` for the details,
:mod:`nbcache.functions.stampede` for what happens when many callers miss one key at once,
:mod:`nbcache.functions.explain` for ``f.explain``.

A cache fault, an argument without a digest or a result that cannot be pickled never breaks
the call: the function runs and one warning on the ``nbcache`` logger says what happened.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, overload

from nbcache.cache import Cache
from nbcache.config import get_cache
from nbcache.entries.entry_store import EntryStore, is_token
from nbcache.entries.envelope import Entry
from nbcache.entries.leases import Held
from nbcache.exceptions import UnhashableValue, UnpicklableValueError
from nbcache.functions.call_key import CallKey, CallKeyBuilder, UnhashableArgument
from nbcache.functions.claims import claims
from nbcache.functions.explain import (
    Record,
    Shelf,
    book,
    entry_meta,
    explain,
    record_slot_keys,
)
from nbcache.functions.remembered_keys import RememberedKeys, call_identity, remember
from nbcache.functions.stampede import (
    DEFAULT_LEASE,
    Computed,
    compute_once,
    compute_once_async,
    computing_already,
)
from nbcache.inputs.hidden import META_KEY, recorded_change
from nbcache.inputs.recording import Recording, declared_patterns
from nbcache.keys.digest import value_digest
from nbcache.keys.fingerprint import code_token, function_fingerprint
from nbcache.keys.snapshot import CodeSnapshot, FingerprintMemo
from nbcache.stores import settings
from nbcache.stores.api import NO_VALUE, Buffer, ByteStore, NoValue

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


class CacheInfo(NamedTuple):
    """Counts of this process's calls: ``time_saved`` sums the compute time of the hits."""

    hits: int
    misses: int
    time_saved: float


class CachedCallable(Protocol[_P, _R_co]):
    """What ``@cached_result`` returns: the function, plus its cache's controls."""

    __wrapped__: Callable[..., Any]

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., _R_co]: ...

    def map(self, *iterables: Iterable[Any]) -> Any:
        """A list of results (an awaitable of one, for a coroutine function)."""
        ...

    def cache_key(self, *args: _P.args, **kwargs: _P.kwargs) -> str: ...

    def invalidate(self, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...

    def cache_clear(self) -> bool: ...

    def cache_info(self) -> CacheInfo: ...

    def explain(self, *args: _P.args, **kwargs: _P.kwargs) -> str: ...


@overload
def cached_result(func: Callable[_P, _R], /) -> CachedCallable[_P, _R]: ...


@overload
def cached_result(
    *,
    timeout: float | None = None,
    cache: Cache | None = None,
    key: Callable[..., object] | None = None,
    ignore: Iterable[str] = (),
    version: object = None,
    lease: float = DEFAULT_LEASE,
    depends_on: Iterable[str | os.PathLike[str]] | str = (),
) -> Callable[[Callable[_P, _R]], CachedCallable[_P, _R]]: ...


def cached_result(
    func: Callable[..., Any] | None = None,
    /,
    *,
    timeout: float | None = None,
    cache: Cache | None = None,
    key: Callable[..., object] | None = None,
    ignore: Iterable[str] = (),
    version: object = None,
    lease: float = DEFAULT_LEASE,
    depends_on: Iterable[str | os.PathLike[str]] | str = (),
) -> Any:
    """Memoize ``func`` in a cache, keyed on its code and the values of its arguments.

    Use it bare (``@cached_result``) or with options (``@cached_result(timeout=600)``).

    Args:
        timeout: seconds an entry lives; None means the cache's default (5 minutes unless
            configured), 0 never expires.
        cache: the cache to use; None means :func:`nbcache.get_cache` at each call, so a
            later :func:`nbcache.configure` takes effect.
        key: a callable taking the function's arguments and returning a value (anything
            nbcache can digest) that stands for them in the key, for arguments better
            identified by something cheaper (a path and its mtime).
        ignore: parameter names left out of the key (``"self"`` for methods whose instance
            does not matter, ``"verbose"``); a name the function does not take is a
            ``ValueError``.
        version: any value nbcache can digest; changing it starts afresh.
        lease: seconds a caller computing a missed key keeps others waiting if it dies
            (while alive it renews its lease, however long it computes).
        depends_on: glob patterns (``"data/*.parquet"``, ``**`` across directories) of files
            the result depends on that nbcache cannot see being read (read by C code that
            bypasses Python's ``open``; a directory listing): the set of matching files and
            their identities are checked on a hit. One pattern alone or several.

    Files the function opens for reading through Python, environment variables it reads and
    the global ``random``/``numpy.random`` state it draws from are recorded when it runs and
    checked before a hit is used; a hit leaves the global random state as a call would.

    The wrapper has ``map(*iterables)`` (like the builtin ``map``, as a list: every call's
    entry is looked up in one store call, only the misses run; awaitable for a coroutine
    function), ``cache_key(*a, **kw)``, ``invalidate(*a, **kw)``, ``cache_clear()``,
    ``cache_info()``, ``explain(*a, **kw)`` and ``__wrapped__``. For a method, pass the
    instance explicitly to these (``Class.method.cache_key(obj, x)``).
    """

    def decorate(function: Callable[..., Any]) -> Any:
        state = CachedFunction(function, timeout, cache, key, ignore, version, lease, depends_on)
        if inspect.iscoroutinefunction(function):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await state.call_async(args, kwargs)

            wrapper: Any = async_wrapper
            wrapper.map = state.map_async
        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return state.call(args, kwargs)

            wrapper.map = state.map

        functools.update_wrapper(wrapper, function)
        wrapper.cache_key = state.cache_key
        wrapper.invalidate = state.invalidate
        wrapper.cache_clear = state.cache_clear
        wrapper.cache_info = state.cache_info
        wrapper.explain = state.explain
        return wrapper

    return decorate if func is None else decorate(func)


class CachedFunction:
    """Everything ``@cached_result`` knows about one function; the wrapper calls into it."""

    def __init__(
        self,
        func: Callable[..., Any],
        timeout: float | None,
        cache: Cache | None,
        key: Callable[..., object] | None,
        ignore: Iterable[str],
        version: object,
        lease: float,
        depends_on: Iterable[str | os.PathLike[str]] | str = (),
    ) -> None:
        self.func = func
        self.timeout = None if timeout is None else settings.expiry_seconds("timeout", timeout)
        self.lease = settings.wait_seconds("lease", lease)
        self._cache = cache
        self.depends_on = declared_patterns(depends_on)
        if self.depends_on:  # declared files are part of what the function is
            version = (version, ("depends_on", self.depends_on))
        self.keys = CallKeyBuilder(func, ignore=ignore, version=version, key=key)
        self.memo = FingerprintMemo(func)
        self.remembered = RememberedKeys()
        self.name = func.__qualname__
        self._stats_lock = threading.Lock()
        self._hits = self._misses = 0
        self._saved = 0.0
        self._warned: set[tuple[str, ...]] = set()
        # For records: the own-code digest and helper fingerprints by code fingerprint, and
        # where records go in the store last used.
        self._code_parts: tuple[str, str, dict[str, str]] | None = None
        self._shelf: tuple[EntryStore, Shelf] | None = None
        # Globals a run of this code was seen changing: state, not inputs. Tied to the
        # fingerprint they were learned under; edited code learns afresh.
        self._learned_state: tuple[str, frozenset[str]] = ("", frozenset())

    def __nbcache_token__(self) -> object:
        # Callers reaching this function through the wrapper fingerprint what it computes.
        return ("cached_result", function_fingerprint(self.func), self.keys.version)

    # -- the call -------------------------------------------------------------------------
    #
    # Both entry points look the call up the same way (:meth:`_lookup`) and hand a miss to
    # the one stampede protocol, driven on the thread or in the coroutine.

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        found = self._lookup(args, kwargs)
        if type(found) is _Miss:
            return self._finish(compute_once(found, self.lease, found.recorded(args, kwargs)))
        if found is _UNCACHED:
            return self.func(*args, **kwargs)
        return found

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        found = self._lookup(args, kwargs)
        if type(found) is _Miss:
            return self._finish(
                await compute_once_async(found, self.lease, found.recorded_async(args, kwargs))
            )
        if found is _UNCACHED:
            return await self.func(*args, **kwargs)
        return found

    def _lookup(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The hit's value (counted), or a :class:`_Miss`, or ``_UNCACHED`` (no key).

        A call of plain arguments that hit before reads under its remembered key, without
        binding or digesting its arguments (:mod:`nbcache.functions.remembered_keys`).
        """
        cache = self._cache or get_cache()
        releases = claims.releases
        read = None
        try:
            snapshot = self.memo.current()
            global_digests = self._global_digests(snapshot)
            identity = None if self.keys.custom_key else call_identity(args, kwargs)
            if identity is not None:
                remembered = self.remembered.keys_for(snapshot, global_digests)
                key = remembered.get(identity)
                if key is not None:
                    read = self._read(cache, key)
                    if read[2]:
                        return read[1]
            call = self._built_key(snapshot, global_digests, args, kwargs)
        except Exception as problem:
            self._no_key(problem)
            return _UNCACHED
        generation, found, hit = read or self._read(cache, call.key)
        if hit:
            if identity is not None:
                remember(remembered, identity, call.key)
            return found
        miss = _Miss(self, cache, call, generation, found, releases)
        if self._computing_already(miss):
            return _UNCACHED
        self._log_miss(cache, call)
        return miss

    def _read(self, cache: Cache, key: str) -> tuple[str | None, Any, bool]:
        """The function's generation, then the hit's value (counted) and True, or what a
        miss saw (a lease, NO_VALUE) and False."""
        generation, found = cache.entries.read_tagged(
            self.keys.generation_key, key, function_fingerprint
        )
        if isinstance(found, Entry):
            if not found.meta_json or self._unchanged(cache, found):
                with self._stats_lock:
                    self._hits += 1
                    self._saved += found.duration or 0.0
                return generation, found.value, True
            found = NO_VALUE
        return generation, found, False

    def _finish(self, outcome: Entry | Computed) -> Any:
        """Count what the stampede protocol found or computed, and return its value."""
        with self._stats_lock:
            if isinstance(outcome, Computed):
                self._misses += 1
            else:
                self._hits += 1
                self._saved += outcome.duration or 0.0
        return outcome.value

    def map(self, *iterables: Iterable[Any]) -> list[Any]:
        """``[f(*args) for args in zip(*iterables)]``, every entry looked up in one store call."""
        results: list[Any] = []
        for args, found in self._lookup_many(iterables):
            if type(found) is _Miss:
                outcome = compute_once(found, self.lease, found.recorded(args, {}))
                results.append(self._finish(outcome))
            else:
                results.append(self.func(*args) if found is _UNCACHED else found)
        return results

    async def map_async(self, *iterables: Iterable[Any]) -> list[Any]:
        """:meth:`map` for a coroutine function: the misses are awaited one after another."""
        results: list[Any] = []
        for args, found in self._lookup_many(iterables):
            if type(found) is _Miss:
                outcome = await compute_once_async(
                    found, self.lease, found.recorded_async(args, {})
                )
                results.append(self._finish(outcome))
            else:
                results.append((await self.func(*args)) if found is _UNCACHED else found)
        return results

    def _lookup_many(self, iterables: tuple[Iterable[Any], ...]) -> list[tuple[Any, Any]]:
        """Each call's arguments and what :meth:`_lookup` would give, read in one store call."""
        calls = [(args, self._key_or_none(args, {})) for args in zip(*iterables, strict=False)]
        keys = [call.key for _, call in calls if call is not None]
        if not keys:
            return [(args, _UNCACHED) for args, _ in calls]
        cache = self._cache or get_cache()
        releases = claims.releases
        generation, entries = cache.entries.read_tagged_many(
            self.keys.generation_key, keys, function_fingerprint
        )
        found_by_key = dict(zip(keys, entries, strict=True))
        looked_up: list[tuple[Any, Any]] = []
        for args, call in calls:
            if call is None:
                looked_up.append((args, _UNCACHED))
                continue
            found = found_by_key[call.key]
            if isinstance(found, Entry):
                if not found.meta_json or self._unchanged(cache, found):
                    with self._stats_lock:
                        self._hits += 1
                        self._saved += found.duration or 0.0
                    looked_up.append((args, found.value))
                    continue
                found = NO_VALUE
            miss = _Miss(self, cache, call, generation, found, releases)
            looked_up.append((args, _UNCACHED if self._computing_already(miss) else miss))
        return looked_up

    def cache(self) -> Cache:
        """The cache this function uses now."""
        return self._cache or get_cache()

    def _key_or_none(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallKey | None:
        try:
            return self.call_key(args, kwargs)
        except Exception as problem:
            self._no_key(problem)
            return None

    def _no_key(self, problem: Exception) -> None:
        """Say (once) why a call runs uncached."""
        if isinstance(problem, UnhashableArgument):
            self._warn_once(
                ("argument", problem.argument, problem.type_name),
                "nbcache: %s() runs uncached: %s",
                self.name,
                problem,
            )
        elif isinstance(problem, UnhashableValue):
            self._warn_once(("code",), "nbcache: %s() runs uncached: %s", self.name, problem)
        elif isinstance(problem, TypeError):  # arguments that do not fit: the call says so
            log.debug("nbcache: %s(): %s", self.name, problem)
        else:
            self._warn_once(
                ("key",), "nbcache: %s() runs uncached: no key (%r)", self.name, problem
            )

    def call_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallKey:
        """The key and key material of one call (raises when it has none)."""
        snapshot = self.memo.current()
        return self._built_key(snapshot, self._global_digests(snapshot), args, kwargs)

    def _built_key(
        self,
        snapshot: CodeSnapshot,
        global_digests: dict[str, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> CallKey:
        arguments = self.keys.argument_digests(args, kwargs)
        return self.keys.build(snapshot.fingerprint, arguments, global_digests)

    def _global_digests(self, snapshot: CodeSnapshot) -> dict[str, str]:
        """Digests of the global inputs the code reads now (state left out)."""
        global_digests, opaque = snapshot.global_digests(self._state(snapshot))
        for label, problem in opaque.items():
            # A connection or lock read from a global: its state is not an input we can see;
            # keyed by type, and said once.
            self._warn_once(
                ("global", label),
                "nbcache: %s() reads global `%s`, which has no digest (%s); it is keyed "
                "by its type only",
                self.name,
                label,
                problem.reason,
                level=logging.DEBUG,
            )
        return global_digests

    def _state(self, snapshot: CodeSnapshot) -> frozenset[str]:
        """Labels of the globals this code changes as it runs (left out of its keys)."""
        fingerprint, learned = self._learned_state
        if fingerprint == snapshot.fingerprint:
            return snapshot.assigned | learned if learned else snapshot.assigned
        self._learned_state = (snapshot.fingerprint, frozenset())
        for label in sorted(snapshot.assigned):
            self._announce_state(label)
        return snapshot.assigned

    def _announce_state(self, label: str) -> None:
        self._warn_once(
            ("state", label), "nbcache: %s", self._state_note(label), level=logging.INFO
        )

    def _state_note(self, label: str) -> str:
        return (
            f"{self.name}() changes global `{label}` while it runs: it is state, not an "
            "input, and a hit does not replay that change"
        )

    def _without_state_changed_by_run(self, call: CallKey) -> CallKey:
        """``call``'s key less the globals the run just changed, which are state (learned).

        The digests in ``call`` were taken before the run; a global whose digest differs now
        was changed by the run itself, so keying on it would make every call miss.
        """
        if not call.global_inputs:
            return call
        snapshot = self.memo.current()
        leave_out = [
            label for label in self._global_labels(snapshot) if label not in call.global_inputs
        ]
        after, _ = snapshot.global_digests(leave_out)
        changed = {
            label
            for label, digest in call.global_inputs.items()
            if after.get(label, digest) != digest
        }
        if not changed:
            return call
        fingerprint, learned = self._learned_state
        if fingerprint != snapshot.fingerprint:
            learned = frozenset()
        self._learned_state = (snapshot.fingerprint, learned | changed)
        for label in sorted(changed):
            self._announce_state(label)
        inputs = {
            label: digest for label, digest in call.global_inputs.items() if label not in changed
        }
        return self.keys.build(call.code, call.arguments, inputs)

    @staticmethod
    def _global_labels(snapshot: CodeSnapshot) -> list[str]:
        return [global_input.label for global_input in snapshot.global_inputs]

    def _computing_already(self, miss: _Miss) -> bool:
        """True (after one warning) if this thread or task is computing the missed key
        already: the function calls itself with arguments of the same key (some of them
        ignored, say). Waiting for the result would wait on itself."""
        if not computing_already(miss.claim_key):
            return False
        self._warn_once(
            ("recursion",),
            "nbcache: %s() called itself with arguments of the same key while computing it; "
            "the inner call runs uncached",
            self.name,
        )
        return True

    def _unchanged(self, cache: Cache, entry: Entry) -> bool:
        """True if the files, environment and random state ``entry`` recorded are unchanged;
        the hit then leaves the world as a call would (the random state advanced)."""
        reason, inputs = recorded_change(entry.meta_json, cache.entries.envelope.secret_digest)
        if inputs is None:
            log.debug("nbcache: %s() recomputes: %s", self.name, reason)
            return False
        try:
            inputs.reuse()
        except Exception as problem:
            log.warning(
                "nbcache: %s() recomputes: reusing its entry failed (%r)", self.name, problem
            )
            return False
        return True

    # -- storing --------------------------------------------------------------------------

    def _store(
        self,
        cache: Cache,
        call: CallKey,
        value: Any,
        duration: float,
        generation: str | None,
        recording: Recording,
    ) -> bool:
        """Store a computed value under the generation read before computing.

        That generation, not the one current now: a value computed across a ``cache_clear()``
        must not hit after it. True if stored under ``call``'s own key (a run that changed
        globals it reads stores under its key without them: see :meth:`_state`). The hidden
        inputs ``recording`` saw go into the entry's metadata; a recording that failed stores
        nothing.
        """
        if recording.problem is not None:
            self._warn_once(
                ("inputs", recording.problem),
                "nbcache: %s()'s result was not stored: %s",
                self.name,
                recording.problem,
            )
            return False
        entries = cache.entries
        try:
            stored_call = self._without_state_changed_by_run(call)
            if not is_token(generation):
                # Missing (the first call ever) or not a token (planted, corrupt): a fresh one.
                generation = entries.current_token(self.keys.generation_key)
                if generation is None:
                    return False
            assert generation is not None
            stored = entries.set(
                stored_call.key,
                value,
                self.timeout,
                duration=duration,
                meta={META_KEY: recording.inputs.to_json()} if recording.inputs else None,
                tag=generation,
                code_fingerprint=function_fingerprint,
            )
        except UnpicklableValueError as problem:
            self._warn_once(
                ("result", problem.type_name),
                "nbcache: %s() returned a %s, which cannot be cached (%s); nothing was stored",
                self.name,
                problem.type_name,
                problem.reason,
            )
            return False
        except Exception as problem:  # never break a computation that succeeded
            log.warning("nbcache: could not store %s()'s result: %r", self.name, problem)
            return False
        if stored:
            self._record(cache, stored_call, generation)
        return stored and stored_call.key == call.key

    def _record(self, cache: Cache, call: CallKey, generation: str) -> None:
        """Hand the stored entry's record to the record book (explanations)."""
        try:
            own, helpers = self._own_code_and_helpers(call)
            now = time.time()
            timeout = cache.default_timeout if self.timeout is None else self.timeout
            expires = None if timeout == 0 else now + timeout
            material = (call, generation, own, helpers, expires, now)
            book.add(self._records_shelf(cache.entries), _new_record(Record, material))
        except Exception as problem:  # explanations are a convenience
            log.debug("nbcache: could not record %s()'s entry: %r", self.name, problem)

    def _records_shelf(self, entries: EntryStore) -> Shelf:
        known = self._shelf
        if known is not None and known[0] is entries:
            return known[1]
        shared = not getattr(entries.store, "process_local", False)
        shelf = book.shelf(entries, self.keys.records_key, shared)
        self._shelf = (entries, shelf)
        return shelf

    def _own_code_and_helpers(self, call: CallKey) -> tuple[str, dict[str, str]]:
        """The digest of the function's own code and each helper's fingerprint, by name.

        Computed once per version of the code (the fingerprint that keyed ``call``).
        """
        cached = self._code_parts
        if cached is not None and cached[0] == call.code:
            return cached[1], cached[2]
        func = self.func
        own = (
            value_digest((code_token(func.__code__), func.__defaults__, func.__kwdefaults__))
            if hasattr(func, "__code__")
            else call.code
        )
        module = getattr(func, "__module__", None) or ""
        own_names = {func.__qualname__, f"{module}.{func.__qualname__}"}
        snapshot = self.memo.current()
        parts = snapshot.parts()
        helpers = {name: digest for name, digest in parts.items() if name not in own_names}
        self._code_parts = (snapshot.fingerprint, own, helpers)
        return own, helpers

    # -- the wrapper's API ----------------------------------------------------------------

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of ``f(*args, **kwargs)`` (raises if an argument has no digest)."""
        return self.call_key(args, kwargs).key

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the entry of ``f(*args, **kwargs)``; True if there was one."""
        call = self._key_or_none(args, kwargs)
        return call is not None and self.cache().delete(call.key)

    def cache_clear(self) -> bool:
        """Forget every entry of this function, for every kernel sharing the cache, in O(1)."""
        return self.cache().entries.new_token(self.keys.generation_key)

    def cache_info(self) -> CacheInfo:
        """Hits, misses and seconds saved by hits, in this process."""
        with self._stats_lock:
            return CacheInfo(self._hits, self._misses, self._saved)

    def explain(self, *args: Any, **kwargs: Any) -> str:
        """Why ``f(*args, **kwargs)`` would miss now, or "hit", or "no entry yet".

        Globals the function changes as it runs (state, left out of its keys) are named after.
        """
        call = self.call_key(args, kwargs)
        reason = self._explain(self.cache(), call)
        state = sorted(self._state(self.memo.current()))
        return "; ".join([reason, *(self._state_note(label) for label in state)])

    def _explain(self, cache: Cache, call: CallKey) -> str:
        records_key = self.keys.records_key
        slots = record_slot_keys(records_key)
        generation, (entry, *stored) = cache.entries.get_token_and_entries(
            self.keys.generation_key, [call.key, *slots], function_fingerprint
        )
        records: dict[str, dict[str, Any]] = {}
        for slot in stored:
            record = None if isinstance(slot, NoValue) else slot.value
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                records[record["key"]] = record
        for mine in book.recent(cache.entries, records_key):
            known = records.get(mine.call.key)
            if known is None or known.get("stored", 0) <= mine.stored:
                records[mine.call.key] = mine.as_dict()

        def current_meta() -> dict[str, Any]:
            own, helpers = self._own_code_and_helpers(call)
            return entry_meta(call, "", own, helpers)

        digest = cache.entries.envelope.secret_digest
        return explain(call, generation, entry, records or None, current_meta, digest=digest)

    def _log_miss(self, cache: Cache, call: CallKey) -> None:
        if log.isEnabledFor(logging.DEBUG):
            try:
                reason = self._explain(cache, call)
            except Exception as problem:
                reason = f"(no explanation: {problem!r})"
            log.debug("nbcache: %s() missed: %s", self.name, reason)

    def _warn_once(
        self, what: tuple[str, ...], message: str, *args: object, level: int = logging.WARNING
    ) -> None:
        if what in self._warned:
            log.debug(message, *args)
            return
        self._warned.add(what)
        log.log(level, message, *args)


class _Uncached:
    """What a lookup gives when the call has no key: run the function, store nothing."""


_UNCACHED = _Uncached()
# Builds a Record from a tuple in C: every stored miss makes one.
_new_record = tuple.__new__


class _Miss:
    """One missed call: what the stampede protocol reads, checks and stores (a MissTarget)."""

    __slots__ = (
        "cache",
        "call",
        "claim_key",
        "digest",
        "function",
        "generation",
        "key",
        "recording",
        "releases",
        "seen",
        "store",
    )

    def __init__(
        self,
        function: CachedFunction,
        cache: Cache,
        call: CallKey,
        generation: str | None,
        seen: Held | NoValue,
        releases: int,
    ) -> None:
        self.function = function
        self.cache = cache
        self.call = call
        self.key = call.key
        #: The generation the last read saw: the one a computed value is stored under.
        self.generation = generation
        #: What the caller's read found, and the count of claim releases before it.
        self.seen = seen
        self.releases = releases
        entries = cache.entries
        self.claim_key: Hashable = (id(entries), call.key)
        self.store: ByteStore | None = (
            None if getattr(entries.store, "process_local", False) else entries.store
        )
        #: What the computation read besides its arguments, once it ran.
        self.recording: Recording | None = None
        #: How the cache keeps digests of secret inputs (environment values).
        self.digest = entries.envelope.secret_digest

    def recorded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
        """The computation of this call, recording its hidden inputs for :meth:`store_result`."""

        def compute() -> Any:
            with Recording(self.function.depends_on, self.digest) as recording:
                value = self.function.func(*args, **kwargs)
            self.recording = recording
            return value

        return compute

    def recorded_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        """:meth:`recorded` for a coroutine function."""

        async def compute() -> Any:
            with Recording(self.function.depends_on, self.digest) as recording:
                value = await self.function.func(*args, **kwargs)
            self.recording = recording
            return value

        return compute

    def read(self) -> Entry | Held | NoValue:
        # With the fingerprint, as the lookup reads: code in the entry loads as this
        # process's own, whoever stored it.
        generation, found = self.cache.entries.read_tagged(
            self.function.keys.generation_key, self.call.key, function_fingerprint
        )
        self.generation = generation
        if (
            isinstance(found, Entry)
            and found.meta_json
            and not self.function._unchanged(self.cache, found)
        ):
            return NO_VALUE  # stored by a caller that read other files: compute our own
        return found

    def live(self, raw: Buffer) -> bool:
        return self.cache.entries.holds_tagged(
            self.call.key, raw, self.generation, self._inputs_unchanged
        )

    def _inputs_unchanged(self, meta_json: bytes) -> bool:
        """For an entry's metadata: True unless it records hidden inputs that changed."""
        return not meta_json or recorded_change(meta_json, self.digest)[0] is None

    def store_result(self, value: Any, seconds: float) -> bool:
        recording = self.recording
        assert recording is not None, "stored before it was computed"
        return self.function._store(
            self.cache, self.call, value, seconds, self.generation, recording
        )
