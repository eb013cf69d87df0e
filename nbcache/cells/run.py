"""Get-or-run for one notebook cell: the logic of ``%%cache``, independent of IPython's Magics.

The key is the cell's label, its normalised code and a digest of every input the cell reads
from the user namespace (values by :func:`~nbcache.keys.digest.value_digest`, functions and
classes by code fingerprint, modules by name and version). On a miss the body runs while its
output is recorded (and still shown live); if it succeeds, the cell's effects on the namespace
are stored with the recording and the value of its last expression. On a hit those effects
are applied to the namespace, the output is replayed in order, and the last expression's value
becomes the cell's result.

The effects of a run are measured, not guessed: a name the cell may bind is stored when it
was bound (new, another object, or bound by an unconditional top-level statement), a name the
cell may delete is deleted on a hit only if the run deleted it, and an input whose digest
changed during the run (mutated in place) is stored too. A name the run left alone is left
alone on a hit.

Nothing here may break the user's computation: an input without a digest, code the analysis
cannot trust, an output that cannot be pickled or a cache fault each cost one warning on the
``nbcache`` logger and the cell runs (or has run) as if uncached. Errors raised by the cell's
own code propagate unchanged, and nothing is stored for such a run.
"""

from __future__ import annotations

import ast
import logging
import time
import types
from dataclasses import dataclass
from typing import Any

from nbcache.cache import Cache
from nbcache.cells.analysis import CellCode, analyze_cell, display_suppressed
from nbcache.cells.execution import run_body
from nbcache.cells.output import RecordedOutput, record_output, replay_output
from nbcache.cells.rebind import rebind_globals
from nbcache.cells.stats import SessionStats, format_seconds
from nbcache.exceptions import UnhashableValue, UnpicklableValueError
from nbcache.keys.digest import value_digest
from nbcache.keys.snapshot import CodeSnapshot
from nbcache.stores.api import NO_VALUE, NoValue

log = logging.getLogger(__name__)

#: Changes whenever the key's recipe or the stored payload's layout changes.
KEY_VERSION = "nbcache.cell/1"
PAYLOAD_FORMAT = 1
_NAMES_IN_NOTE = 6


@dataclass(frozen=True)
class CellOptions:
    """How one ``%%cache`` cell is cached.

    ``timeout``: seconds the entry lives (0: until evicted). ``force``: run and store even on
    a hit. ``quiet``: no note when a cell is restored.
    """

    name: str = ""
    timeout: float = 300
    force: bool = False
    quiet: bool = False

    @property
    def label(self) -> str:
        return f"cell {self.name!r}" if self.name else "this cell"


@dataclass(frozen=True)
class _Plan:
    key: str
    code: CellCode
    input_digests: dict[str, str]
    surely_bound: frozenset[str]


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
            stats.record_hit(restored[1])
            return _shown(restored[0])
    stats.record_miss()
    show = plan.code.last_expression and not plan.code.display_suppressed
    before = _snapshot(shell.user_ns, plan.code.outputs | plan.code.deleted)
    started = time.perf_counter()
    with record_output(shell) as recorded:
        result = run_body(shell, python_source, header, show_result=show)
    duration = time.perf_counter() - started
    _store(shell, cache, plan, options, before, recorded, result, duration)
    return _shown(result)


def input_digest(value: object) -> str:
    """The digest an input contributes to a cell's key.

    Functions and classes count by code fingerprint (so editing a helper defined in another
    cell changes the key) and by the values of the global data their code reads (so changing
    a global a helper uses changes it too); modules by name and version; everything else by
    value. Raises :class:`~nbcache.exceptions.UnhashableValue` for values without a digest.
    """
    if isinstance(value, types.FunctionType | type):
        snapshot = CodeSnapshot.take(value)
        global_digests, _ = snapshot.global_digests()
        return "code:" + value_digest((snapshot.fingerprint, sorted(global_digests.items())))
    return "value:" + value_digest(value)


def cell_key(name: str, code: CellCode, input_digests: dict[str, str]) -> str:
    """The cache key of a cell: its label, normalised code and input digests (a pure function)."""
    recipe = (KEY_VERSION, name, code.normalized, sorted(input_digests.items()))
    return "cell:" + value_digest(recipe)


def hit_note(
    names: list[str],
    cache_name: str,
    created: float,
    duration: float | None,
    expires: float | None,
    now: float,
) -> str:
    """The one line shown when a cell is restored."""
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
    for name in sorted(code.inputs):
        if name not in user_ns:
            continue  # a builtin, or a name the cell will fail on: absence is part of the key
        try:
            digests[name] = input_digest(user_ns[name])
        except UnhashableValue as error:
            log.warning(
                "nbcache: running %s without the cache: its input %r has no digest (%s: %s)",
                options.label,
                name,
                error.type_name,
                error.reason,
            )
            return None
    surely_bound = _top_level_bindings(ast.parse(python_source))
    return _Plan(cell_key(options.name, code, digests), code, digests, surely_bound)


# -- hits ------------------------------------------------------------------------------------


def _restore(
    shell: Any, cache: Cache, plan: _Plan, options: CellOptions
) -> tuple[Any, float | None] | None:
    """Apply a stored run to the namespace and show its output; None on a miss."""
    entry = cache.get_entry(plan.key)
    if isinstance(entry, NoValue):
        return None
    payload = entry.value
    if not _is_payload(payload):
        log.warning("nbcache: ignored the entry for %s: it is not a cell entry", options.label)
        return None
    try:
        namespace = shell.user_global_ns
        bound = {name: rebind_globals(v, namespace) for name, v in payload["bound"].items()}
        shell.push(bound, interactive=True)
        for name in payload["deleted"]:
            shell.user_ns.pop(name, None)
        if not options.quiet:
            note = hit_note(
                list(bound), cache.name, entry.created, entry.duration, entry.expires, time.time()
            )
            print(note, flush=True)
        replay_output(shell, payload["output"], show_result=False)
    except Exception as error:  # a half-applied restore is overwritten by running the cell
        log.warning(
            "nbcache: could not restore %s (%s: %s); running it",
            options.label,
            type(error).__name__,
            error,
        )
        return None
    return payload["result"], entry.duration


def _is_payload(payload: object) -> bool:
    return (
        isinstance(payload, dict)
        and payload.get("format") == PAYLOAD_FORMAT
        and isinstance(payload.get("bound"), dict)
        and isinstance(payload.get("deleted"), list)
        and isinstance(payload.get("output"), RecordedOutput)
        and "result" in payload
    )


# -- misses ----------------------------------------------------------------------------------


_ABSENT = object()


def _snapshot(user_ns: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    return {name: user_ns.get(name, _ABSENT) for name in names}


def _store(
    shell: Any,
    cache: Cache,
    plan: _Plan,
    options: CellOptions,
    before: dict[str, Any],
    recorded: RecordedOutput,
    result: Any,
    duration: float,
) -> None:
    try:
        bound, deleted = _effects(shell.user_ns, plan, before)
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
        "bound": bound,
        "deleted": deleted,
        "output": recorded,
        "result": result,
    }
    meta = {"cell": options.name, "bound": sorted(bound)}
    try:
        cache.entries.set(plan.key, payload, options.timeout, duration=duration, meta=meta)
    except UnpicklableValueError as error:
        log.warning(
            "nbcache: %s ran, but nothing was stored: %s cannot be pickled (%s)",
            options.label,
            _unpicklable_part(bound, result),
            error.reason,
        )
    except Exception as error:  # a cache fault costs the entry, never the computation
        log.warning(
            "nbcache: %s ran, but storing it failed (%s: %s)",
            options.label,
            type(error).__name__,
            error,
        )


def _effects(
    user_ns: dict[str, Any], plan: _Plan, before: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """What the run did to the namespace: names it bound (with values), names it deleted."""
    bound: dict[str, Any] = {}
    deleted: list[str] = []
    for name in sorted(before):
        old, new = before[name], user_ns.get(name, _ABSENT)
        if new is _ABSENT:
            if old is not _ABSENT:
                deleted.append(name)
        elif new is not old or name in plan.surely_bound:
            bound[name] = new
    for name, digest in plan.input_digests.items():
        if name in bound or name in before or name not in user_ns:
            continue
        try:
            changed = input_digest(user_ns[name]) != digest
        except UnhashableValue:
            changed = True
        if changed:  # mutated in place: a hit must reproduce the new state
            bound[name] = user_ns[name]
    return bound, deleted


def _unpicklable_part(bound: dict[str, Any], result: Any) -> str:
    """Names the first stored part that cannot be pickled, for the warning."""
    from nbcache.entries.serializer import dumps

    candidates: list[tuple[str, Any]] = [(repr(name), value) for name, value in bound.items()]
    if not isinstance(result, NoValue):
        candidates.append(("the cell's result", result))
    for label, value in candidates:
        try:
            dumps(value)
        except UnpicklableValueError as error:
            return f"{label} (a {error.type_name})"
    return "the recorded output"


def _shown(result: Any) -> Any:
    return None if result is NO_VALUE else result


def _top_level_bindings(tree: ast.Module) -> frozenset[str]:
    """Names bound by unconditional top-level statements: a successful run surely bound them.

    Tells "bound again to the very same object" (``n = 1`` when ``n`` was 1) from "left alone"
    (a branch not taken), which comparing objects before and after cannot.
    """
    names: set[str] = set()
    for statement in tree.body:
        targets: list[ast.expr] = []
        if isinstance(statement, ast.Assign):
            targets = list(statement.targets)
        elif isinstance(statement, ast.AugAssign | ast.AnnAssign):
            if statement.value is not None:
                targets = [statement.target]
        elif isinstance(statement, ast.Import | ast.ImportFrom):
            for alias in statement.names:
                if alias.name != "*":
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.With | ast.AsyncWith):
            targets = [item.optional_vars for item in statement.items if item.optional_vars]
        for target in targets:
            names |= _target_names(target)
    return frozenset(names)


def _target_names(target: ast.expr) -> set[str]:
    """Names an assignment target binds (``a[i] = ...`` and ``a.b = ...`` bind none)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_target_names(element) for element in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()
