"""Get-or-run for one notebook cell: the logic of ``%%cache``, independent of IPython's Magics.

The key is the cell's label, its normalised code and a digest of every input the cell reads
from the user namespace (:mod:`nbcache.cells.key`). On a miss the body runs while its output
is recorded (and still shown live); if it succeeds, the run's effects on the namespaces are
stored with the recording and the value of its last expression. On a hit those effects are
replayed (:mod:`nbcache.cells.effects`), the output is replayed in order, and the last
expression's value becomes the cell's result.

What the cell reads besides the namespace is recorded while it runs and checked before a hit
(:mod:`nbcache.inputs`): the files it opens, the environment variables it reads, the global
random state it draws from (which a hit then advances as the run did). A changed one makes
the cell run again, with a note saying which ("`sales.csv` changed 2 min ago").

Nothing here may break the user's computation: an input without a digest, code the analysis
cannot trust, an output that cannot be pickled or a cache fault each cost one warning on the
``nbcache`` logger and the cell runs (or has run) as if uncached. Errors raised by the cell's
own code propagate unchanged, and nothing is stored for such a run.
"""

from __future__ import annotations

import ast
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from nbcache.cache import Cache
from nbcache.cells.analysis import CellCode, analyze_cell, display_suppressed
from nbcache.cells.effects import (
    Before,
    Effects,
    apply_effects,
    measure_effects,
    take_before,
    top_level_bindings,
)
from nbcache.cells.execution import run_body
from nbcache.cells.key import Watched, cell_key, input_state
from nbcache.cells.output import (
    RecordedOutput,
    hold_figures,
    record_output,
    replay_output,
    show_after_cell,
)
from nbcache.cells.stats import SessionStats, format_seconds
from nbcache.entries.envelope import Entry
from nbcache.exceptions import UnhashableValue, UnpicklableValueError
from nbcache.inputs.hidden import META_KEY, TAG_MARK, HiddenInputs, entry_change
from nbcache.inputs.recording import Recording
from nbcache.keys.fingerprint import function_fingerprint
from nbcache.stores.api import NO_VALUE, NoValue

log = logging.getLogger(__name__)

#: Changes whenever the stored payload's layout changes.
PAYLOAD_FORMAT = 2
_NAMES_IN_NOTE = 6
# A restore this long, and at least this share of the compute time, is named in the note.
_NOTABLE_RESTORE = 0.05
_NOTABLE_RESTORE_SHARE = 0.1


@dataclass(frozen=True)
class CellOptions:
    """How one ``%%cache`` cell is cached.

    ``timeout``: seconds the entry lives (0: until evicted). ``force``: run and store even on
    a hit. ``quiet``: no note when a cell is restored or runs again because a file, an
    environment variable or the random state it used changed. ``depends_on``: glob patterns
    of files the cell depends on that nbcache cannot see it read.
    """

    name: str = ""
    timeout: float = 300
    force: bool = False
    quiet: bool = False
    depends_on: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"cell {self.name!r}" if self.name else "this cell"


@dataclass(frozen=True)
class _Restored:
    result: Any
    duration: float | None
    restore_time: float


@dataclass(frozen=True)
class _Plan:
    key: str
    code: CellCode
    input_digests: dict[str, str]
    surely_bound: frozenset[str]
    #: What a run may change besides the cell's own names (see nbcache.cells.effects).
    watched: list[Watched]
    namespaces: dict[str, dict[str, Any]]


def run_cached_cell(
    shell: Any,
    header: str,
    body: str,
    options: CellOptions,
    cache: Cache | None,
    stats: SessionStats,
) -> Any:
    """Run ``body`` (a cell without its ``%%cache`` line ``header``) or restore it.

    With ``cache`` None (none could be made; the caller has warned) the cell just runs.

    Returns the value the cell's last expression had, for IPython to display as the cell's
    result, or None when there is none (or display is suppressed with ``;``).
    """
    __tracebackhide__ = True
    python_source = shell.transform_cell(body)
    plan = None if cache is None else _plan_or_warn(shell, python_source, options)
    if cache is None or plan is None:
        stats.record_uncached()
        show = not display_suppressed(python_source)
        return _shown(run_body(shell, python_source, header, show_result=show))
    if not options.force:
        restored = _restore(shell, cache, plan, options)
        if restored is not None:
            stats.record_hit(restored.duration, restored.restore_time)
            return _shown(restored.result)
    stats.record_miss()
    show = plan.code.last_expression and not plan.code.display_suppressed
    before = take_before(
        shell.user_ns,
        plan.code.outputs | plan.code.deleted,
        plan.surely_bound,
        plan.namespaces,
        plan.watched,
    )
    started = time.perf_counter()
    with record_output(shell) as recorded:
        with Recording(options.depends_on, cache.entries.envelope.secret_digest) as reads:
            result = run_body(shell, python_source, header, show_result=show)
        if _displayed(result):  # a plain run shows the figures after the result
            recorded.after_result = hold_figures(shell)
    duration = time.perf_counter() - started
    show_after_cell(shell, recorded.after_result)
    _store(shell, cache, plan, options, before, recorded, result, duration, reads)
    return _shown(result)


def hit_note(
    names: list[str],
    cache_name: str,
    created: float,
    duration: float | None,
    expires: float | None,
    now: float,
    restore_time: float = 0.0,
) -> str:
    """The one line shown when a cell is restored.

    The restore time is shown when it is a sizeable part of what computing took (or of what
    a user notices), so that a hit that barely saves anything says so.
    """
    if not names:
        what = "the cell's output"
    elif len(names) > _NAMES_IN_NOTE:
        shown = ", ".join(names[:_NAMES_IN_NOTE])
        what = f"{shown} and {len(names) - _NAMES_IN_NOTE} more"
    else:
        what = ", ".join(names)
    computed = f"computed {format_seconds(max(now - created, 0.0))} ago"
    if duration is not None:
        computed += f" in {format_seconds(duration)}"
    if restore_time >= _NOTABLE_RESTORE and (
        duration is None or restore_time >= _NOTABLE_RESTORE_SHARE * duration
    ):
        computed += f", restored in {format_seconds(restore_time)}"
    lifetime = (
        "never expires"
        if expires is None
        else f"expires in {format_seconds(max(expires - now, 0.0))}"
    )
    return f"nbcache: restored {what} from {cache_name} ({computed}, {lifetime})"


# -- planning --------------------------------------------------------------------------------


def _plan_or_warn(shell: Any, python_source: str, options: CellOptions) -> _Plan | None:
    try:
        return _plan(shell, python_source, options)
    except Exception as error:  # a bug or surprise in analysis must not stop the cell
        log.warning(
            "nbcache: could not build a key for %s (%s: %s); running it without the cache",
            options.label,
            type(error).__name__,
            error,
        )
        return None


def _plan(shell: Any, python_source: str, options: CellOptions) -> _Plan | None:
    try:
        code = analyze_cell(python_source)
    except SyntaxError:
        return None  # running the cell reports the error as Python would
    if code.opaque:
        log.warning(
            "nbcache: running %s without the cache: %s", options.label, "; ".join(code.opaque)
        )
        return None
    user_ns = shell.user_ns
    digests: dict[str, str] = {}
    watched: list[Watched] = []
    namespaces: dict[str, dict[str, Any]] = {}
    for name in sorted(code.inputs):
        if name not in user_ns:
            continue  # a builtin, or a name the cell will fail on: absence is part of the key
        try:
            state = input_state(user_ns[name], code.chains(name), name=name, namespace=user_ns)
        except UnhashableValue as error:
            log.warning(
                "nbcache: running %s without the cache: its input %r has no digest (%s: %s)",
                options.label,
                name,
                error.type_name,
                error.reason,
            )
            return None
        digests[name] = state.digest
        watched += state.watched
        for module, namespace in state.namespaces.items():
            namespaces.setdefault(module, namespace)
    surely_bound = top_level_bindings(ast.parse(python_source))
    key = cell_key(options.name, code, digests, options.depends_on)
    return _Plan(key, code, digests, surely_bound, watched, namespaces)


# -- hits ------------------------------------------------------------------------------------


def _restore(shell: Any, cache: Cache, plan: _Plan, options: CellOptions) -> _Restored | None:
    """Apply a stored run to the namespace and show its output; None on a miss."""
    started = time.perf_counter()
    entry = cache.entries.get(plan.key, function_fingerprint)
    if isinstance(entry, NoValue):
        return None
    payload = entry.value
    if not _is_payload(payload):
        log.warning("nbcache: ignored the entry for %s: it is not a cell entry", options.label)
        return None
    hidden_inputs = _unchanged_inputs(entry, cache, options)
    if hidden_inputs is None:
        return None
    effects: Effects = payload["effects"]
    try:
        apply_effects(shell, effects, options.label)
        restore_time = time.perf_counter() - started
        if not options.quiet:
            names = [n for n in effects.restored_names() if n not in plan.code.incidental]
            when = (entry.created, entry.duration, entry.expires, time.time(), restore_time)
            _note(hit_note(names, cache.name, *when))
        recorded: RecordedOutput = payload["output"]
        replay_output(shell, recorded, show_result=False)
        if _displayed(payload["result"]):
            show_after_cell(shell, recorded.after_result)
        else:
            replay_output(shell, RecordedOutput(recorded.after_result))
        hidden_inputs.reuse()
    except Exception as error:  # a half-applied restore is overwritten by running the cell
        log.warning(
            "nbcache: could not restore %s (%s: %s); running it",
            options.label,
            type(error).__name__,
            error,
        )
        return None
    return _Restored(payload["result"], entry.duration, restore_time)


def _note(line: str) -> None:
    """Print one note line in one write, so a kernel never sends it split across two messages."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _unchanged_inputs(entry: Entry, cache: Cache, options: CellOptions) -> HiddenInputs | None:
    """The entry's hidden inputs if none changed (a note says which did otherwise), or None."""
    digest = cache.entries.envelope.secret_digest
    reason, inputs = entry_change(entry.tag, entry.meta_json, digest)
    if reason is not None:
        if not options.quiet:
            _note(f"nbcache: running {options.label}: {reason}")
        return None
    return inputs or HiddenInputs()


def _is_payload(payload: object) -> bool:
    return (
        isinstance(payload, dict)
        and payload.get("format") == PAYLOAD_FORMAT
        and isinstance(payload.get("effects"), Effects)
        and isinstance(payload.get("output"), RecordedOutput)
        and "result" in payload
    )


# -- misses ----------------------------------------------------------------------------------


def _store(
    shell: Any,
    cache: Cache,
    plan: _Plan,
    options: CellOptions,
    before: Before,
    recorded: RecordedOutput,
    result: Any,
    duration: float,
    reads: Recording,
) -> None:
    if reads.problem is not None:
        log.warning("nbcache: %s ran, but nothing was stored: %s", options.label, reads.problem)
        return
    try:
        effects = measure_effects(before)
    except Exception as error:  # measuring effects must not break a cell that succeeded
        log.warning(
            "nbcache: %s ran, but nothing was stored (%s: %s)",
            options.label,
            type(error).__name__,
            error,
        )
        return
    payload = {
        "format": PAYLOAD_FORMAT,
        "effects": effects,
        "output": recorded,
        "result": result,
    }
    meta: dict[str, Any] = {"cell": options.name, "bound": effects.restored_names()}
    tag = ""
    if reads.inputs:
        meta[META_KEY] = reads.inputs.to_json()
        tag = TAG_MARK
    try:
        cache.entries.set(
            plan.key,
            payload,
            options.timeout,
            duration=duration,
            meta=meta,
            tag=tag,
            code_fingerprint=function_fingerprint,
        )
    except UnpicklableValueError as error:
        log.warning(
            "nbcache: %s ran, but nothing was stored: %s cannot be pickled (%s)",
            options.label,
            _unpicklable_part(effects, result),
            error.reason,
        )
    except Exception as error:  # a cache fault costs the entry, never the computation
        log.warning(
            "nbcache: %s ran, but storing it failed (%s: %s)",
            options.label,
            type(error).__name__,
            error,
        )


def _unpicklable_part(effects: Effects, result: Any) -> str:
    """Names the first stored part that cannot be pickled, for the warning."""
    from nbcache.entries.serializer import dumps

    candidates: list[tuple[str, Any]] = [
        (repr(name), value) for name, value in {**effects.bound, **effects.mutated}.items()
    ]
    candidates += [
        (repr(f"{module}.{name}"), value)
        for (module, name), value in {**effects.module_bound, **effects.module_mutated}.items()
    ]
    if not isinstance(result, NoValue):
        candidates.append(("the cell's result", result))
    for label, value in candidates:
        try:
            dumps(value)
        except UnpicklableValueError as error:
            return f"{label} (a {error.type_name})"
    return "the recorded output"


def _displayed(result: Any) -> bool:
    """Whether IPython's display hook shows ``result`` as the cell's ``Out``."""
    return result is not NO_VALUE and result is not None


def _shown(result: Any) -> Any:
    return None if result is NO_VALUE else result
