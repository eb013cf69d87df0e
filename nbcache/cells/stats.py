"""Counts of what ``%%cache`` did in this session: hits, misses, uncached runs, time saved."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass
class SessionStats:
    """What the cell cache did since the extension was loaded in this kernel.

    ``time_saved`` adds up, for every hit, how long the restored cell took when it was
    computed less how long restoring it took (a hit slower than the computation counts
    against it). ``uncached`` counts cells that ran without the cache (an input without a
    digest, an analysis that could not be trusted, an output that could not be stored).
    """

    hits: int = 0
    misses: int = 0
    uncached: int = 0
    time_saved: float = 0.0

    def record_hit(self, duration: float | None, restore_time: float) -> None:
        """A hit: ``duration`` is what computing took (None: unknown), ``restore_time`` what
        restoring took."""
        self.hits += 1
        if duration is not None:
            self.time_saved += duration - restore_time

    def record_miss(self) -> None:
        self.misses += 1

    def record_uncached(self) -> None:
        self.uncached += 1

    def rows(self) -> list[tuple[str, str]]:
        """Label and value of each counter, for display."""
        return [
            ("hits", str(self.hits)),
            ("misses", str(self.misses)),
            ("run without cache", str(self.uncached)),
            ("time saved", format_seconds(self.time_saved)),
        ]


def format_seconds(seconds: float) -> str:
    """A short human duration: ``0.35 s``, ``41.2 s``, ``3 min``, ``2.5 h``, ``4 days``."""
    if seconds < 0:
        return "-" + format_seconds(-seconds)
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def status_bundle(rows: list[tuple[str, str]]) -> dict[str, str]:
    """A mime bundle with an HTML table (notebooks) and aligned plain text (terminals)."""
    width = max((len(label) for label, _ in rows), default=0)
    text = "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
        f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
        for label, value in rows
    )
    return {"text/plain": text, "text/html": f"<table class='nbcache-status'>{cells}</table>"}
