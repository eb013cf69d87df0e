"""Miss explanations: why a call of a cached function found no usable entry.

Every entry a cached function stores records in its metadata what went into its key
(:func:`entry_meta`): the digest of each argument by name, of each global input, the code
fingerprint, the function's own code, each user-defined helper's fingerprint, ``version=``
and the function's generation. Next to its entries each function keeps a small record of its
most recent entries (:func:`remember`): their metadata and expiry. :func:`explain` compares a
call's key material with those records and names what differs: "argument `df` changed",
"helper `clean` was edited", "expired 40 s ago", "cleared with cache_clear()".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from nbcache.entries.envelope import Entry
from nbcache.functions.call_key import CallKey
from nbcache.stores.api import NoValue

#: How many recent entries a function's record keeps.
RECENT_ENTRIES = 16

HIT = "hit"
NO_ENTRY = "no entry yet"

Meta = dict[str, Any]
Records = dict[str, dict[str, Any]]


def entry_meta(
    call: CallKey,
    generation: str,
    own_code: str,
    helpers: Mapping[str, str],
) -> Meta:
    """What a stored entry records about its key (JSON-able).

    ``own_code`` digests the function's own code object; ``helpers`` maps each user-defined
    helper it reaches (not the function itself) to its fingerprint.
    """
    return {
        "generation": generation,
        "code": call.code,
        "own_code": own_code,
        "helpers": dict(helpers),
        "version": call.version,
        "args": call.arguments,
        "globals": call.global_inputs,
    }


def remember(
    records: Records | None, key: str, meta: Meta, expires: float | None, now: float
) -> Records:
    """``records`` with the entry under ``key`` added as the newest, oldest ones dropped."""
    updated = {k: v for k, v in (records or {}).items() if k != key}
    updated[key] = {"meta": meta, "expires": expires, "stored": now}
    if len(updated) > RECENT_ENTRIES:
        newest = sorted(updated.items(), key=lambda item: item[1]["stored"])[-RECENT_ENTRIES:]
        updated = dict(newest)
    return updated


def explain(
    call: CallKey,
    generation: str | None,
    entry: Entry | NoValue,
    records: Records | None,
    current_meta: Callable[[], Meta],
    now: float | None = None,
) -> str:
    """Why ``call`` misses (or "hit", or "no entry yet"), as one short sentence.

    ``generation`` is the function's current generation (None if there is none),
    ``entry`` what is stored under the call's key, ``records`` the function's recent-entry
    records, ``current_meta`` builds this call's metadata (helper fingerprints are costly).
    """
    now = time.time() if now is None else now
    if not isinstance(entry, NoValue) and generation is not None:
        if entry.meta.get("generation") == generation:
            return HIT
        return "cleared with cache_clear()"
    if not records:
        return NO_ENTRY
    own = records.get(call.key)
    if own is not None:
        return _same_key_reason(own, generation, now)
    meta = current_meta()
    best: tuple[int, float, list[str]] | None = None
    for record in records.values():
        reasons = _differences(meta, record["meta"])
        if generation is None or record["meta"].get("generation") != generation:
            reasons.append("cleared with cache_clear()")
        candidate = (len(reasons), -float(record["stored"]), reasons)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    assert best is not None
    reasons = best[2] or ["the entry was evicted or invalidated"]
    return "; ".join(reasons)


def _same_key_reason(record: dict[str, Any], generation: str | None, now: float) -> str:
    if generation is None or record["meta"].get("generation") != generation:
        return "cleared with cache_clear()"
    expires = record.get("expires")
    if expires is not None and expires <= now:
        return f"expired {now - float(expires):.0f} s ago"
    return "the entry was evicted or invalidated"


def _differences(now: Meta, then: Meta) -> list[str]:
    """What differs between this call's key material and an earlier entry's."""
    reasons: list[str] = []
    if now.get("version") != then.get("version"):
        reasons.append("version changed")
    if now.get("own_code") != then.get("own_code"):
        reasons.append("the function's code changed")
    helpers_now, helpers_then = now.get("helpers", {}), then.get("helpers", {})
    for name in sorted(set(helpers_now) | set(helpers_then)):
        before, after = helpers_then.get(name), helpers_now.get(name)
        if before == after:
            continue
        if before is None:
            reasons.append(f"helper `{name}` was added")
        elif after is None:
            reasons.append(f"helper `{name}` is no longer used")
        else:
            reasons.append(f"helper `{name}` was edited")
    if now.get("code") != then.get("code") and len(reasons) == 0:
        reasons.append("the function's code changed")
    for section, label in (("args", "argument"), ("globals", "global")):
        mine, theirs = now.get(section, {}), then.get(section, {})
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                reasons.append(f"{label} `{name}` changed")
    return reasons
