"""The IPython adapter: ``%%cache`` and ``%nbcache``, registered by ``%load_ext nbcache``.

Parsing and display only; the caching itself is :func:`nbcache.cells.run.run_cached_cell`.
Settings are traitlets of :class:`NbcacheMagics` (``%config NbcacheMagics.default_timeout =
600``, or an IPython profile's config file) and environment variables: ``NBCACHE_URL`` (the
cache), ``NBCACHE_SECRET`` (signing), ``NBCACHE_TIMEOUT`` (default timeout in seconds).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from traitlets import Bool, Float, Unicode, default, observe

from nbcache.cache import Cache
from nbcache.cells.run import CellOptions, run_cached_cell
from nbcache.cells.stats import SessionStats, format_seconds, status_bundle
from nbcache.config import cache_from, configure, get_cache
from nbcache.exceptions import ConfigurationError, StoreFault

_F = TypeVar("_F", bound=Callable[..., Any])
_Decorator = Callable[[_F], _F]
# IPython's decorators are untyped; these typed names keep mypy --strict meaningful here.
_magic_arguments = cast(Callable[[], _Decorator[Any]], magic_arguments.magic_arguments)
_argument = cast(Callable[..., _Decorator[Any]], magic_arguments.argument)
_parse_argstring = cast(Callable[[Any, str], Any], magic_arguments.parse_argstring)
_cell_magic = cast(_Decorator[Any], cell_magic)
_line_magic = cast(_Decorator[Any], line_magic)
_magics_class: _Decorator[Any] = magics_class

log = logging.getLogger(__name__)

TIMEOUT_ENV_VAR = "NBCACHE_TIMEOUT"
_CELL_USAGE = "%%cache [NAME] [timeout=SECONDS] [--force] [--quiet] [--depends-on PATTERN ...]"
_LINE_USAGE = "%nbcache [use URL | clear]"


def register(ipython: Any) -> None:
    """Register the magics with a running IPython shell."""
    ipython.register_magics(NbcacheMagics(shell=ipython))


@_magics_class
class NbcacheMagics(Magics):  # type: ignore[misc]
    """``%%cache`` caches a cell; ``%nbcache`` shows and changes the cache it uses."""

    default_timeout = Float(
        help="Seconds a cached cell lives when %%cache gives no timeout (0: until evicted). "
        f"Defaults to ${TIMEOUT_ENV_VAR}, else 300."
    ).tag(config=True)
    quiet = Bool(False, help="Hide the one-line note shown when a cell is restored.").tag(
        config=True
    )
    url = Unicode(
        "",
        help="Cache URL (simple://, memcached://HOST:PORT,... or gae://). Empty: $NBCACHE_URL, "
        "else the in-process cache.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)  # type: ignore[no-untyped-call]
        self.stats = SessionStats()
        if self.url:
            self._use(self.url)

    @default("default_timeout")
    def _default_timeout_from_environment(self) -> float:
        text = os.environ.get(TIMEOUT_ENV_VAR, "").strip()
        if not text:
            return 300.0
        return _timeout(text, f"${TIMEOUT_ENV_VAR}")

    @observe("url")
    def _url_changed(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._use(change["new"])

    @_magic_arguments()
    @_argument(
        "words", nargs="*", metavar="NAME | timeout=SECONDS", help="a label, and the timeout"
    )
    @_argument("--timeout", metavar="SECONDS", help="seconds the entry lives")
    @_argument("--force", action="store_true", help="recompute and store")
    @_argument("--quiet", action="store_true", help="no note on a hit")
    @_argument(
        "--depends-on",
        action="append",
        default=[],
        metavar="PATTERN",
        help="files the cell depends on (a glob; repeat for several)",
    )
    @_cell_magic
    def cache(self, line: str, cell: str) -> Any:
        """Cache a cell: restore its variables and output when its code and inputs recur.

        The key is NAME, the cell's code (comments and layout aside) and the values of the
        names it reads. Files it opens, environment variables it reads and the global random
        state it draws from are checked before a hit; ``--depends-on 'data/*.parquet'``
        declares files it reads in ways nbcache cannot see. The default timeout is 300 s
        (``NbcacheMagics.default_timeout``).
        """
        __tracebackhide__ = True
        options = self._cell_options(line)
        header = f"%%cache {line}".rstrip()
        return run_cached_cell(self.shell, header, cell, options, _cache_or_warn(), self.stats)

    @_magic_arguments()
    @_argument("action", nargs="?", metavar="use|clear", help="what to do")
    @_argument("target", nargs="?", metavar="URL", help="the cache URL for use")
    @_line_magic
    def nbcache(self, line: str) -> None:
        """Show the cache, namespace and this session's hits, misses and time saved.

        ``%nbcache use URL`` switches the cache (simple://, memcached://HOST:PORT or gae://);
        ``%nbcache clear`` forgets every entry of this namespace.
        """
        args = _parse_argstring(self.nbcache, line)
        if args.action is None:
            from IPython.display import publish_display_data

            bundle = status_bundle(self._status_rows(get_cache()))
            publish_display_data(bundle)  # type: ignore[no-untyped-call]
        elif args.action == "use":
            if not args.target:
                raise UsageError("%nbcache use needs a URL, e.g. memcached://127.0.0.1:11211")
            cache = self._use(args.target, reach=True)
            print(f"nbcache: now using {cache!r}")
        elif args.action == "clear":
            if args.target:
                raise UsageError(f"%nbcache clear takes no argument; usage: {_LINE_USAGE}")
            cache = get_cache()
            if cache.clear():
                print(f"nbcache: cleared namespace {_namespace(cache)} on {cache!r}")
            else:
                print(f"nbcache: could not clear {cache!r} (see the warning above)")
        else:
            raise UsageError(f"unknown action {args.action!r}; usage: {_LINE_USAGE}")

    def _cell_options(self, line: str) -> CellOptions:
        args = _parse_argstring(self.cache, line)
        timeout = None if args.timeout is None else _timeout(args.timeout, "--timeout")
        names: list[str] = []
        for word in args.words:
            option, equals, value = word.partition("=")
            if not equals:
                names.append(word)
            elif option == "timeout":
                if timeout is not None:
                    raise UsageError(f"the timeout is given twice; usage: {_CELL_USAGE}")
                timeout = _timeout(value, "timeout=")
            else:
                raise UsageError(f"unknown option {word!r}; usage: {_CELL_USAGE}")
        if len(names) > 1:
            raise UsageError(f"one NAME at most, got {' '.join(names)!r}; usage: {_CELL_USAGE}")
        return CellOptions(
            name=names[0] if names else "",
            timeout=self.default_timeout if timeout is None else timeout,
            force=args.force,
            quiet=args.quiet or self.quiet,
            depends_on=tuple(_unquoted(pattern) for pattern in args.depends_on),
        )

    def _status_rows(self, cache: Cache) -> list[tuple[str, str]]:
        return [
            ("backend", repr(cache)),
            ("namespace", _namespace(cache)),
            ("default timeout", format_seconds(self.default_timeout)),
            *self.stats.rows(),
        ]

    def _use(self, url: str, reach: bool = False) -> Cache:
        """Switch to the cache at ``url``; with ``reach``, only if its server answers."""
        try:
            cache = cache_from(url)
        except ConfigurationError as error:
            raise UsageError(str(error)) from None
        problem = _unreachable(cache) if reach else None
        if problem is not None:
            cache.store.close()
            raise UsageError(f"cannot reach {cache!r} ({problem}); still using {get_cache()!r}")
        return configure(cache)


def _cache_or_warn() -> Cache | None:
    """The default cache, or None (and one warning) if it cannot be made: the cell still runs."""
    try:
        return get_cache()
    except Exception as error:  # a bad NBCACHE_URL or a broken backend must not stop the cell
        log.warning(
            "nbcache: no cache available (%s: %s); running the cell without it",
            type(error).__name__,
            error,
        )
        return None


def _unreachable(cache: Cache) -> str | None:
    """Why ``cache``'s store does not answer a read, or None when it does."""
    try:
        cache.store.get("nbcache:reachable")
    except StoreFault as fault:
        return str(fault)
    except Exception as error:  # a broken backend is as unreachable as a dead server
        return f"{type(error).__name__}: {error}"
    return None


def _timeout(text: str, where: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise UsageError(
            f"{where} takes a number of seconds, not {text!r}; usage: {_CELL_USAGE}"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(
            f"{where} must be 0 (until evicted) or a positive number of seconds, not {text}"
        )
    return seconds


def _unquoted(pattern: str) -> str:
    """A pattern without the quotes that keep a shell from expanding it (``'data/*.csv'``)."""
    if len(pattern) >= 2 and pattern[0] == pattern[-1] and pattern[0] in "'\"":
        return pattern[1:-1]
    if not pattern:
        raise UsageError(f"--depends-on needs a file pattern; usage: {_CELL_USAGE}")
    return pattern


def _namespace(cache: Cache) -> str:
    prefix = getattr(cache, "key_prefix", None)
    return repr(prefix) if prefix else "(this process)"
