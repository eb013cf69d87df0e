"""What routes a running computation's hidden reads to its recording.

- **Files.** One audit hook (PEP 578) sees every ``open`` made through Python, pandas' and
  numpy's readers included, and the renames and removals.
- **Environment.** ``os.environ`` and ``os.environb`` become of a subclass of
  ``os._Environ`` that reports the names read, listed and written.
- **Seeding.** The module-level ``random.seed``/``setstate`` and ``numpy.random.seed``/
  ``set_state`` report that the generator's whole state is replaced, so that a run that seeds
  before drawing does not depend on the state it started from.
- **Threads.** A ``threading.Thread`` started while a computation runs counts as part of it
  (from Python 3.12 through the audit event of the thread's start, before that by wrapping
  the function ``threading`` starts threads with). Work handed to threads that already ran
  (a pool started earlier) cannot be told apart and is not recorded. Asynchronous tasks see
  the recording through a context variable, so coroutines interleaving on one thread are
  kept apart.

All of it is put in place once, on the first recording (an audit hook cannot be removed;
putting the rest in place and back around every computation would cost each miss more than
it saves), and it is inert outside computations: the audit hook returns after one global
lookup, an environment read or a seeding call costs one context-variable lookup more.

A recording is anything with the :class:`Sink` methods. Nothing here may raise into the
computation: a sink that fails is told so (:meth:`Sink.failed`) and stores nothing.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from nbcache.inputs.random_state import SEEDING


class Sink(Protocol):
    """What a recording receives; ``parent`` and ``closed`` chain nested recordings."""

    parent: Sink | None
    closed: bool

    def opened(self, path: Any, mode: Any, flags: Any) -> None: ...

    def wrote(self, *paths: Any) -> None: ...

    def changing_directory(self) -> None: ...

    def read_variable(self, name: str | bytes, value: str | bytes | None) -> None: ...

    def listed_variables(self, names: list[str]) -> None: ...

    def wrote_variable(self, name: str | bytes) -> None: ...

    def reseeded(self, generator: str) -> None: ...

    def absorb(self, inputs: Any) -> None: ...

    def failed(self, problem: BaseException) -> None: ...


class _Paused:
    """Stands in the context variable while nbcache itself reads (see :class:`unrecorded`)."""


_PAUSED = _Paused()
_current: contextvars.ContextVar[Sink | _Paused | None] = contextvars.ContextVar(
    "nbcache_recording", default=None
)
_adopted: weakref.WeakKeyDictionary[threading.Thread, Sink] = weakref.WeakKeyDictionary()
_any_adopted = False  # cheaper to test than the (Python-level) length of _adopted
_running: list[Sink] = []  # recordings in progress (list operations are atomic)
_lock = threading.Lock()
_installed = False
_unwrapped = set(SEEDING)  # generators whose module was not imported yet


def current() -> Sink | None:
    """The innermost open recording of the running computation, or None."""
    found = _current.get()
    if isinstance(found, _Paused):
        return None
    sink = found
    if sink is None:
        if not _any_adopted:
            return None
        sink = _adopted.get(threading.current_thread())
    while sink is not None and sink.closed:
        sink = sink.parent
    return sink


class unrecorded:  # lower case: used like a function, ``with unrecorded():``
    """Within it, reads are nbcache's own (checking a file, reading a setting), not inputs."""

    def __enter__(self) -> None:
        self._token = _current.set(_PAUSED)

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)


def start(sink: Sink) -> contextvars.Token[Sink | _Paused | None]:
    """Make ``sink`` the current recording (of this thread or task)."""
    if not _installed:
        _install()
    for generator in _unwrapped:
        if generator in sys.modules:  # imported since: follow its seeding too
            _wrap_seeding()
            break
    _running.append(sink)
    return _current.set(sink)


def stop(sink: Sink, token: contextvars.Token[Sink | _Paused | None]) -> None:
    """Undo :func:`start`."""
    try:
        _current.reset(token)
    except ValueError:  # ended in another context than it started (a generator's frame)
        _current.set(sink.parent)
    _running.remove(sink)


def chain(sink: Sink | None) -> Iterator[Sink]:
    """``sink`` and the open recordings around it, innermost first."""
    while sink is not None:
        if not sink.closed:
            yield sink
        sink = sink.parent


# -- the audit hook -----------------------------------------------------------------------


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _running:
        return
    handler = _HANDLERS.get(event)
    if handler is None:
        return
    sink = current()
    if sink is None:
        return
    paused = _current.set(_PAUSED)  # what recording itself reads is not the computation's
    try:
        handler(sink, args)
    except Exception as problem:  # a bug here must not fail the computation's open()
        sink.failed(problem)
    finally:
        _current.reset(paused)


def _on_open(sink: Sink, args: tuple[Any, ...]) -> None:
    sink.opened(*args[:3])


def _on_change(*positions: int) -> Callable[[Sink, tuple[Any, ...]], None]:
    """A handler for an event whose arguments at ``positions`` are paths it changes."""

    def changed(sink: Sink, args: tuple[Any, ...]) -> None:
        sink.wrote(*(args[position] for position in positions))

    return changed


def _on_chdir(sink: Sink, args: tuple[Any, ...]) -> None:
    sink.changing_directory()


def _on_thread_start(sink: Sink, args: tuple[Any, ...]) -> None:
    _adopt(getattr(args[0], "__self__", None), sink)


def _adopt(thread: object, sink: Sink | None) -> None:
    global _any_adopted
    if sink is not None and isinstance(thread, threading.Thread):
        _adopted[thread] = sink
        _any_adopted = True


_HANDLERS: dict[str, Callable[[Sink, tuple[Any, ...]], None]] = {
    "open": _on_open,
    "os.chdir": _on_chdir,
    "os.rename": _on_change(0, 1),  # os.rename and os.replace
    "os.remove": _on_change(0),  # os.remove and os.unlink
    "os.truncate": _on_change(0),
    "os.utime": _on_change(0),
    "os.mkdir": _on_change(0),
    "os.rmdir": _on_change(0),
    "os.link": _on_change(1),
    "os.symlink": _on_change(1),
    "shutil.copyfile": _on_change(1),
    "_thread.start_new_thread": _on_thread_start,
    "_thread.start_joinable_thread": _on_thread_start,
}


# -- routing that is switched on while computations run -----------------------------------


class _RecordingEnviron(os._Environ):  # type: ignore[type-arg]
    """``os.environ`` while computations run: reports reads, listings and writes."""

    def __getitem__(self, key: Any) -> Any:
        sink = current()
        if sink is None:
            return super().__getitem__(key)
        try:
            value = super().__getitem__(key)
        except KeyError:
            _report(sink, sink.read_variable, key, None)
            raise
        _report(sink, sink.read_variable, key, value)
        return value

    def __iter__(self) -> Iterator[Any]:
        sink = current()
        names = list(super().__iter__())
        if sink is not None:
            _report(sink, sink.listed_variables, names)
        return iter(names)

    def __setitem__(self, key: Any, value: Any) -> None:
        sink = current()
        if sink is not None:
            _report(sink, sink.wrote_variable, key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        sink = current()
        if sink is not None:
            _report(sink, sink.wrote_variable, key)
        super().__delitem__(key)


def _report(sink: Sink, method: Callable[..., None], *args: Any) -> None:
    paused = _current.set(_PAUSED)  # what recording itself reads is not the computation's
    try:
        method(*args)
    except Exception as problem:
        sink.failed(problem)
    finally:
        _current.reset(paused)


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        sys.addaudithook(_audit)
        for mapping in (os.environ, getattr(os, "environb", None)):
            if type(mapping) is os._Environ:  # type: ignore[attr-defined]
                mapping.__class__ = _RecordingEnviron
        if sys.version_info < (3, 12):  # no audit event for a thread's start
            starter = _thread_starter(threading._start_new_thread)  # type: ignore[attr-defined]
            threading._start_new_thread = starter  # type: ignore[attr-defined]
        _installed = True


def _wrap_seeding() -> None:
    with _lock:
        ready = [generator for generator in sorted(_unwrapped) if generator in sys.modules]
        _unwrapped.difference_update(ready)
    for generator in ready:
        module = sys.modules[generator]
        for name in SEEDING[generator]:
            original = getattr(module, name, None)
            if callable(original):
                setattr(module, name, _seeding(generator, original))


def _seeding(generator: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def seeding(*args: Any, **kwargs: Any) -> Any:
        sink = current()
        if sink is not None:
            _report(sink, sink.reseeded, generator)
        return original(*args, **kwargs)

    return seeding


def _thread_starter(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def start_new_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
        if _running:
            _adopt(getattr(function, "__self__", None), current())
        return original(function, *args, **kwargs)

    return start_new_thread
