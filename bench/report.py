"""The benchmark's markdown report: machine, table of figures, and nbcache's performance targets.

``results`` is what ``run.py`` collects: ``{"machine": {...}, "workloads": {name: {"label",
"result_bytes", "bare", "contestants": {contestant: figures}}}}``; figures are seconds and
bytes. Everything printed here can be pasted into the README as it is.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

NBCACHE_MEMORY = "nbcache SimpleCache"
NBCACHE_MEMCACHED = "nbcache MemcachedCache"
FLOOR = "floor: dict + xxh3"
JOBLIB = "joblib.Memory"


def machine(memcached_version: str) -> dict[str, Any]:
    """Where and when this run happened."""
    import numpy
    import pandas

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "memcached": memcached_version,
        "commit": commit or "unknown",
        "platform": platform.platform(),
    }


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    magnitude = abs(seconds)
    if magnitude < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if magnitude < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if magnitude < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def bytes_text(count: float | None) -> str:
    if count is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def table(results: dict[str, Any]) -> str:
    """One row per workload and contestant: hits, speeds, miss overhead, peak memory."""
    lines = [
        "| workload | contestant | repeated hit, same kernel | first hit, other kernel "
        "| first-hit speed (x bare socket) | miss overhead | peak memory, hit |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in results["workloads"].values():
        label = workload["label"]
        size = workload["result_bytes"]
        bare = workload.get("bare_socket")
        context = f"{seconds_text(workload['bare'])}"
        if bare:
            context += (
                f"; bare socket moves the result in {seconds_text(bare['receive'])} "
                f"({size / bare['receive'] / 1e9:.2f} GB/s)"
            )
        lines.append(
            f"| {label} | *bare function* (result {bytes_text(size)}) | {context} | | | | |"
        )
        for name, figures in workload["contestants"].items():
            if "error" in figures:
                lines.append(f"| {label} | {name} | failed: {figures['error']} | | | | |")
                continue
            hit = figures.get("hit")
            first = figures.get("first_hit")
            speed = ""
            if first is not None and size >= 2**20:
                speed = f"{size / first / 1e9:.2f} GB/s"
                bare_receive = figures.get("bare_receive") or (bare or {}).get("receive")
                if bare_receive:
                    speed += f" ({bare_receive / first:.2f}x)"
            method = figures.get("peak_memory_method")
            memory = bytes_text(figures.get("peak_memory"))
            if method == "tracemalloc":
                memory += " (tracemalloc)"
            lines.append(
                f"| {label} | {name} | {seconds_text(hit)} ({figures.get('hit_calls', '?')} calls) "
                f"| {seconds_text(first)} | {speed} "
                f"| {seconds_text(figures.get('miss_overhead'))} | {memory} |"
            )
    return "\n".join(lines)


@dataclass
class Target:
    """One performance target: a ratio of two figures in this run, and its bound."""

    text: str
    workload: str
    ratio_text: str
    bound: float
    at_most: bool  # True: ratio <= bound; False: ratio >= bound

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        raise NotImplementedError


@dataclass
class RatioTarget(Target):
    top: tuple[str, str] = ("", "")  # (contestant, figure)
    bottom: tuple[str, str] = ("", "")

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        return float(figures[self.top[0]][self.top[1]] / figures[self.bottom[0]][self.bottom[1]])


@dataclass
class SpeedTarget(Target):
    contestant: str = ""
    figure: str = "hit"

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        return float(workload["result_bytes"] / figures[self.contestant][self.figure] / 1e9)


@dataclass
class BareSocketTarget(Target):
    """A figure of one contestant against the bare socket moving the result's bytes (measured
    just before it, in the same process)."""

    contestant: str = ""
    figure: str = ""
    direction: str = "receive"

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        # The bare socket measured in the same process as the figure, else in the parent.
        own = figures[self.contestant].get(f"bare_{self.direction}")
        bare = own if own is not None else workload["bare_socket"][self.direction]
        return float(figures[self.contestant][self.figure] / bare)


@dataclass
class NearHitTarget(Target):
    """A repeated hit through memcached against the in-process hit plus one round trip."""

    round_trip: float = 0.0

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        floor = figures[NBCACHE_MEMORY]["hit"] + self.round_trip
        return float(figures[NBCACHE_MEMCACHED]["hit"] / floor)


@dataclass
class MicrosecondsTarget(Target):
    """A figure of one contestant, in microseconds (a bound the user feels per call)."""

    figure: tuple[str, str] = ("", "")  # (contestant, figure)

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        return float(figures[self.figure[0]][self.figure[1]] * 1e6)


@dataclass
class MemoryTarget(Target):
    contestant: str = ""

    def ratio(self, figures: dict[str, dict[str, Any]], workload: dict[str, Any]) -> float:
        return float(figures[self.contestant]["peak_memory"] / workload["result_bytes"])


def targets(round_trip: float | None = None) -> list[Target]:
    """nbcache's performance targets, each as the ratio it names.

    ``round_trip``: one raw memcached ``get`` in this run (the small workload's), for the
    repeated-hit target.
    """
    memory, memcached = NBCACHE_MEMORY, NBCACHE_MEMCACHED
    found: list[Target] = [
        RatioTarget(
            "small hit on SimpleCache <= 3x the floor", "small", "nbcache SimpleCache / floor",
            3, at_most=True, top=(memory, "hit"), bottom=(FLOOR, "hit"),
        ),
        RatioTarget(
            "small hit on SimpleCache >= 20x faster than joblib.Memory", "small",
            "joblib / nbcache SimpleCache", 20, at_most=False,
            top=(JOBLIB, "hit"), bottom=(memory, "hit"),
        ),
        RatioTarget(
            "small hit on memcached <= 1.3x one raw pymemcache get", "small",
            "nbcache MemcachedCache / raw get", 1.3, at_most=True,
            top=(memcached, "hit"), bottom=("raw pymemcache get", "hit"),
        ),
        MicrosecondsTarget(
            "small miss overhead on SimpleCache <= 10 µs", "small", "µs, nbcache SimpleCache",
            10, at_most=True, figure=(memory, "miss_overhead"),
        ),
        MicrosecondsTarget(
            "100,000 distinct small calls on SimpleCache add <= 1 s (<= 10 µs each, in a loop)",
            "small", "µs per call, nbcache SimpleCache", 10, at_most=True,
            figure=(memory, "loop_miss_overhead"),
        ),
        RatioTarget(
            "small miss overhead on memcached <= 3 raw gets (read, write, one round trip more)",
            "small", "nbcache MemcachedCache / raw get", 3, at_most=True,
            top=(memcached, "miss_overhead"), bottom=("raw pymemcache get", "hit"),
        ),
        RatioTarget(
            "array hit through memcached >= 3x faster than joblib.Memory", "array",
            "joblib / nbcache MemcachedCache", 3, at_most=False,
            top=(JOBLIB, "hit"), bottom=(memcached, "hit"),
        ),
        NearHitTarget(
            "array repeated hit through memcached <= 2x (in-process hit + one round trip)",
            "array", "nbcache MemcachedCache / (SimpleCache + raw get)", 2, at_most=True,
            round_trip=round_trip if round_trip is not None else float("nan"),
        ),
        SpeedTarget(
            "array first hit through memcached moves >= 3 GB/s", "array",
            "GB/s, nbcache MemcachedCache", 3, at_most=False, contestant=memcached,
            figure="first_hit",
        ),
        BareSocketTarget(
            "array first hit through memcached <= 1.5x a bare socket moving its bytes",
            "array", "first hit / bare socket", 1.5, at_most=True, contestant=memcached,
            figure="first_hit",
        ),
        BareSocketTarget(
            "array miss overhead through memcached (a write) <= 1.5x a bare socket send",
            "array", "miss overhead / bare send", 1.5, at_most=True, contestant=memcached,
            figure="miss_overhead", direction="send",
        ),
        RatioTarget(
            "array hit in-process <= 1.5x the floor", "array", "nbcache SimpleCache / floor",
            1.5, at_most=True, top=(memory, "hit"), bottom=(FLOOR, "hit"),
        ),
    ]  # fmt: skip
    for contestant in (memcached, memory):
        found.append(
            RatioTarget(
                f"DataFrame hit >= 10x faster than joblib.Memory ({contestant})", "frame",
                f"joblib / {contestant}", 10, at_most=False,
                top=(JOBLIB, "hit"), bottom=(contestant, "hit"),
            )
        )  # fmt: skip
    for contestant in (memory, memcached):
        found.append(
            RatioTarget(
                f"array miss overhead <= 1.5x the floor's ({contestant})", "array",
                f"{contestant} / floor", 1.5, at_most=True,
                top=(contestant, "miss_overhead"), bottom=(FLOOR, "miss_overhead"),
            )
        )  # fmt: skip
    for workload in ("array", "frame"):
        for contestant in (memory, memcached):
            found.append(
                MemoryTarget(
                    f"{workload} hit peak memory <= result size + 10 % ({contestant})",
                    workload, "peak / result size", 1.1, at_most=True, contestant=contestant,
                )
            )  # fmt: skip
    return found


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its ratio in this run and whether it is met."""
    rows = []
    small = results["workloads"].get("small", {}).get("contestants", {})
    round_trip = small.get("raw pymemcache get", {}).get("hit")
    for target in targets(round_trip):
        workload = results["workloads"].get(target.workload)
        row: dict[str, Any] = {"target": target.text, "ratio_of": target.ratio_text}
        try:
            if workload is None:
                raise KeyError(target.workload)
            ratio: float | None = target.ratio(workload["contestants"], workload)
        except (KeyError, TypeError, ZeroDivisionError):
            ratio = None
        if ratio is None or ratio != ratio:  # NaN: a figure it needs was not measured
            row.update(ratio=None, met=None)
        else:
            met = ratio <= target.bound if target.at_most else ratio >= target.bound
            row.update(ratio=ratio, met=met)
        row["bound"] = f"{'<=' if target.at_most else '>='} {target.bound:g}"
        rows.append(row)
    return rows


def targets_table(results: dict[str, Any]) -> str:
    lines = ["| target | ratio | this run | bound | |", "|---|---|---|---|---|"]
    for row in target_rows(results):
        ratio = "not measured" if row["ratio"] is None else f"{row['ratio']:.2f}"
        verdict = {True: "met", False: "**missed**", None: "—"}[row["met"]]
        lines.append(
            f"| {row['target']} | {row['ratio_of']} | {ratio} | {row['bound']} | {verdict} |"
        )
    return "\n".join(lines)


def loop_table(results: dict[str, Any]) -> str:
    """The small workload's misses in a loop of distinct calls: overhead per call, and what
    100,000 calls would add."""
    small = results["workloads"].get("small")
    if small is None:
        return ""
    lines = [
        "| contestant | distinct calls timed | miss overhead per call, in a loop "
        "| 100,000 calls add |",
        "|---|---|---|---|",
    ]
    for name, figures in small["contestants"].items():
        overhead = figures.get("loop_miss_overhead")
        if overhead is None:
            continue
        lines.append(
            f"| {name} | {figures['loop_calls']} | {seconds_text(overhead)} "
            f"| {seconds_text(overhead * 100_000)} |"
        )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    about = results["machine"]
    size = "--quick sizes" if results["quick"] else "full sizes"
    heading = (
        f"Run {about['date']} ({size}), commit {about['commit']}: {about['cpu']}, "
        f"{about['cores']} cores, Python {about['python']}, numpy {about['numpy']}, "
        f"pandas {about['pandas']}, memcached {about['memcached']}, {about['platform']}."
    )
    loops = loop_table(results)
    if loops:
        loops = "Small misses in a loop of distinct calls (warm, the store filling up):\n\n" + loops
    return "\n\n".join(
        [heading, table(results), *([loops] if loops else []),
         "Performance targets, ratios within this run:", targets_table(results)]
    )  # fmt: skip


def print_markdown(results: dict[str, Any]) -> None:
    sys.stdout.write(markdown(results) + "\n")
