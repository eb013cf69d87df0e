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
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, overload

from nbcache.cache import Cache
from nbcache.exceptions import UnhashableValue, UnpicklableValueError
from nbcache.functions.call_key import CallKey, CallKeyBuilder, UnhashableArgument
from nbcache.functions.explain import entry_meta, explain, remember
from nbcache.functions.stampede import DEFAULT_LEASE, compute_once, compute_once_async
from nbcache.keys.digest import value_digest
from nbcache.keys.fingerprint import code_token, function_fingerprint
from nbcache.keys.snapshot import CodeSnapshot, FingerprintMemo
from nbcache.stores import settings
from nbcache.stores.api import NO_VALUE, NoValue

log = logging.getLogger(__name__)

#: The lease keys this thread (or asyncio task) is computing now. A call that finds its own
#: key here is the computation calling itself: waiting for the result would wait on itself.
_computing: ContextVar[frozenset[str]] = ContextVar("nbcache_computing", default=frozenset())

_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


class CacheInfo(NamedTuple):
    """Counts of this process's calls: ``time_saved`` sums the compute time of the hits."""

    hits: int
    misses: int
    time_saved: float


class _Hit(NamedTuple):
    value: Any
    duration: float | None


class _Computed(NamedTuple):
    value: Any


class CachedCallable(Protocol[_P, _R_co]):
    """What ``@cached_result`` returns: the function, plus its cache's controls."""

    __wrapped__: Callable[..., Any]

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., _R_co]: ...

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

    The wrapper has ``cache_key(*a, **kw)``, ``invalidate(*a, **kw)``, ``cache_clear()``,
    ``cache_info()``, ``explain(*a, **kw)`` and ``__wrapped__``. For a method, pass the
    instance explicitly to these (``Class.method.cache_key(obj, x)``).
    """

    def decorate(function: Callable[..., Any]) -> Any:
        state = CachedFunction(function, timeout, cache, key, ignore, version, lease)
        if inspect.iscoroutinefunction(function):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await state.call_async(args, kwargs)

            wrapper: Any = async_wrapper
        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return state.call(args, kwargs)

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
    ) -> None:
        self.func = func
        self.timeout = None if timeout is None else settings.expiry_seconds("timeout", timeout)
        self.lease = settings.wait_seconds("lease", lease)
        self._cache = cache
        self.keys = CallKeyBuilder(func, ignore=ignore, version=version, key=key)
        self.memo = FingerprintMemo(func)
        self.name = func.__qualname__
        self._stats_lock = threading.Lock()
        self._hits = self._misses = 0
        self._saved = 0.0
        self._warned: set[tuple[str, ...]] = set()
        # Globals a run of this code was seen changing: state, not inputs. Tied to the
        # fingerprint they were learned under; edited code learns afresh.
        self._learned_state: tuple[str, frozenset[str]] = ("", frozenset())

    def __nbcache_token__(self) -> object:
        # Callers reaching this function through the wrapper fingerprint what it computes.
        return ("cached_result", function_fingerprint(self.func), self.keys.version)

    # -- the call -------------------------------------------------------------------------

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self._key_or_none(args, kwargs)
        if call is None or self._computing_already(call):
            return self.func(*args, **kwargs)
        cache = self.cache()
        found: _Hit | _Computed | NoValue = self._read(cache, call)
        if isinstance(found, NoValue):
            self._log_miss(cache, call)
            found = compute_once(
                cache.store,
                self.keys.lease_key(call.key),
                self.lease,
                lambda: self._read(cache, call),
                lambda: self._compute(cache, call, args, kwargs),
            )
        return self._count(found)

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self._key_or_none(args, kwargs)
        if call is None or self._computing_already(call):
            return await self.func(*args, **kwargs)
        cache = self.cache()
        found: _Hit | _Computed | NoValue = self._read(cache, call)
        if isinstance(found, NoValue):
            self._log_miss(cache, call)

            async def compute() -> _Computed:
                marked = _computing.set(_computing.get() | {self.keys.lease_key(call.key)})
                try:
                    started = time.perf_counter()
                    value = await self.func(*args, **kwargs)
                finally:
                    _computing.reset(marked)
                self._store(cache, call, value, time.perf_counter() - started)
                return _Computed(value)

            found = await compute_once_async(
                cache.store,
                self.keys.lease_key(call.key),
                self.lease,
                lambda: self._read(cache, call),
                compute,
            )
        return self._count(found)

    def cache(self) -> Cache:
        """The cache this function uses now."""
        if self._cache is not None:
            return self._cache
        from nbcache.config import get_cache

        return get_cache()

    def _key_or_none(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallKey | None:
        try:
            return self.call_key(args, kwargs)
        except UnhashableArgument as problem:
            self._warn_once(
                ("argument", problem.argument, problem.type_name),
                "nbcache: %s() runs uncached: %s",
                self.name,
                problem,
            )
        except TypeError as problem:  # arguments that do not fit: let the call say so
            if isinstance(problem, UnhashableValue):
                self._warn_once(("code",), "nbcache: %s() runs uncached: %s", self.name, problem)
            else:
                log.debug("nbcache: %s(): %s", self.name, problem)
        except Exception as problem:
            self._warn_once(
                ("key",), "nbcache: %s() runs uncached: no key (%r)", self.name, problem
            )
        return None

    def call_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallKey:
        """The key and key material of one call (raises when it has none)."""
        snapshot = self.memo.current()
        arguments = self.keys.argument_digests(args, kwargs)
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
        return self.keys.build(snapshot.fingerprint, arguments, global_digests)

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

    def _read(self, cache: Cache, call: CallKey) -> _Hit | NoValue:
        # The generation is a raw token read in the same round trip: only the entry is
        # opened (and MAC-checked), and its signed tag must name the current generation.
        generation, (entry,) = cache.entries.get_token_and_entries(
            self.keys.generation_key, [call.key], function_fingerprint
        )
        if isinstance(entry, NoValue) or generation is None or entry.tag != generation:
            return NO_VALUE
        return _Hit(entry.value, entry.duration)

    def _computing_already(self, call: CallKey) -> bool:
        """True (after one warning) if this thread or task is computing ``call`` already: the
        function calls itself with arguments of the same key (some of them ignored, say)."""
        if self.keys.lease_key(call.key) not in _computing.get():
            return False
        self._warn_once(
            ("recursion",),
            "nbcache: %s() called itself with arguments of the same key while computing it; "
            "the inner call runs uncached",
            self.name,
        )
        return True

    def _compute(
        self, cache: Cache, call: CallKey, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Computed:
        marked = _computing.set(_computing.get() | {self.keys.lease_key(call.key)})
        try:
            started = time.perf_counter()
            value = self.func(*args, **kwargs)
        finally:
            _computing.reset(marked)
        self._store(cache, call, value, time.perf_counter() - started)
        return _Computed(value)

    def _count(self, found: _Hit | _Computed | NoValue) -> Any:
        assert not isinstance(found, NoValue)
        with self._stats_lock:
            if isinstance(found, _Hit):
                self._hits += 1
                self._saved += found.duration or 0.0
            else:
                self._misses += 1
        return found.value

    # -- storing --------------------------------------------------------------------------

    def _store(self, cache: Cache, call: CallKey, value: Any, duration: float) -> None:
        try:
            call = self._without_state_changed_by_run(call)
            generation = cache.entries.current_token(self.keys.generation_key)
            if generation is None:
                return
            meta = self._meta(call, generation)
            cache.entries.set(
                call.key,
                value,
                self.timeout,
                duration=duration,
                meta=meta,
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
            return
        except Exception as problem:  # never break a computation that succeeded
            log.warning("nbcache: could not store %s()'s result: %r", self.name, problem)
            return
        try:
            now = time.time()
            timeout = cache.default_timeout if self.timeout is None else self.timeout
            expires = None if timeout == 0 else now + timeout
            records = cache.get(self.keys.records_key)
            updated = remember(
                records if isinstance(records, dict) else None, call.key, meta, expires, now
            )
            cache.set(self.keys.records_key, updated, 0)
        except Exception as problem:  # explanations are a convenience
            log.debug("nbcache: could not record %s()'s entry: %r", self.name, problem)

    def _meta(self, call: CallKey, generation: str) -> dict[str, Any]:
        func = self.func
        own = (
            value_digest((code_token(func.__code__), func.__defaults__, func.__kwdefaults__))
            if hasattr(func, "__code__")
            else call.code
        )
        parts = self.memo.current().parts()
        module = getattr(func, "__module__", None) or ""
        own_names = {func.__qualname__, f"{module}.{func.__qualname__}"}
        helpers = {name: digest for name, digest in parts.items() if name not in own_names}
        return entry_meta(call, generation, own, helpers)

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
        generation, (entry, records) = cache.entries.get_token_and_entries(
            self.keys.generation_key, [call.key, self.keys.records_key]
        )
        return explain(
            call,
            generation,
            entry,
            records.value if not isinstance(records, NoValue) else None,
            lambda: self._meta(call, ""),
        )

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
