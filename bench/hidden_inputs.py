"""What recording and checking hidden inputs costs: a hit that read 10 files, a miss reading none.

Run from a checkout::

    python bench/hidden_inputs.py                       # timings, this tree
    python bench/hidden_inputs.py --callgrind           # instructions per call (valgrind)
    python bench/hidden_inputs.py --callgrind --baseline /path/to/other/checkout

Timings are medians of ~1 ms loops over a budget, all measured in this run; ratios and
differences against peers from the same run are what to read (the machine is shared). With
``--callgrind`` each workload runs twice under ``valgrind --tool=callgrind`` with different
call counts, and the difference of the instruction totals divided by the difference of the
counts is the cost of one call: repeatable whatever else the machine does. ``--baseline``
runs the same workloads with another checkout of nbcache (say, one without hidden inputs)
for comparison.

Workloads (``@cached_result`` on a SimpleCache, numpy imported, as in a notebook):

- ``hit``: a small call whose entry records no hidden input (today's hit);
- ``hit-unrecorded``: the same in a process where recording is switched off, so the audit hook
  was never added: the difference is what the hook costs a hit (CPython's auditing of the
  events a hit raises, such as reading a function's ``__code__``);
- ``hit-10-files``: a small call whose entry records 10 files (1 KiB, written a while ago);
  the difference to ``hit`` is the check (target: at most 50 us);
- ``stat-10-files``: ``os.stat`` of those 10 files, the floor of that check;
- ``miss``: a small call computed and stored (a new key each time), opening no file;
- ``miss-unrecorded``: the same with recording switched off (a null recording in its place):
  the difference is what recording adds to a miss;
- ``open-outside``: ``open`` and ``close`` of a file outside any computation, after the audit
  hook was installed by a recording; ``open-no-hook``: the same in a process without it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FILES = 10
WORKLOADS = (
    "hit",
    "hit-unrecorded",
    "hit-10-files",
    "stat-10-files",
    "miss",
    "miss-unrecorded",
    "open-outside",
    "open-no-hook",
)
CALLGRIND_COUNTS = (200, 1200)


def build(name: str, folder: Path) -> Callable[[], Any]:
    """The call one workload repeats; everything it needs is set up here, once."""
    import numpy.random  # noqa: F401  (a notebook has it: its generator is followed too)

    base = str(folder)  # the functions close over one short string: a cheap key
    paths = [f"{base}/part{i}.csv" for i in range(FILES)]
    for path in paths:
        Path(path).write_bytes(b"x,y\n" + b"1,2\n" * 255)
        os.utime(path, ns=(time.time_ns() - 3_600 * 10**9,) * 2)
    if name == "open-no-hook":
        return lambda: open(paths[0], "rb").close()
    if name == "stat-10-files":
        return lambda: [os.stat(path) for path in paths]

    from nbcache import SimpleCache, cached_result

    cache = SimpleCache(threshold=10**7)
    time.sleep(2.1)  # let ctimes age past the window in which timestamps are not trusted

    @cached_result(cache=cache)
    def small(a: int, b: str) -> dict[str, Any]:
        return {"a": a, "b": b, "sum": a + len(b), "base": base}

    @cached_result(cache=cache)
    def reads(a: int, b: str) -> dict[str, Any]:
        sizes = 0
        for i in range(10):
            with open(f"{base}/part{i}.csv", "rb") as file:
                sizes += len(file.read())
        return {"a": a, "b": b, "sum": sizes, "base": base}

    if name in ("hit", "hit-unrecorded"):
        if name == "hit-unrecorded":
            switch_recording_off()
        small(1, "x")
        return lambda: small(1, "x")
    if name == "hit-10-files":
        reads(1, "x")
        return lambda: reads(1, "x")
    if name == "open-outside":
        reads(1, "x")  # a recording installs the audit hook, which stays
        return lambda: open(paths[0], "rb").close()
    if name == "miss-unrecorded":
        switch_recording_off()
    counter = iter(range(10**9))
    return lambda: small(next(counter), "x")


def switch_recording_off() -> None:
    """Replace the decorator's recording by one that records nothing."""
    import nbcache.functions.decorator as decorator
    from nbcache.inputs.hidden import HiddenInputs

    class NullRecording:
        def __init__(self, depends_on: object = ()) -> None:
            self.inputs, self.problem = HiddenInputs(), None

        def __enter__(self) -> NullRecording:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    decorator.Recording = NullRecording  # type: ignore[assignment,misc]


def per_call_seconds(call: Callable[[], Any], budget: float) -> tuple[float, float]:
    """Median and best seconds per call over loops of about a millisecond."""
    started = time.perf_counter()
    call()
    loop = max(1, int(1e-3 / max(time.perf_counter() - started, 1e-7)))
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - began < budget:
        started = time.perf_counter()
        for _ in range(loop):
            call()
        samples.append((time.perf_counter() - started) / loop)
    return statistics.median(samples), min(samples)


def run_timings(budget: float, names: list[str]) -> dict[str, tuple[float, float]]:
    """Each workload in its own process (a hook, once added, stays): median and best seconds
    per call."""
    results = {}
    for name in names:
        output = subprocess.run(
            [sys.executable, __file__, "--time", name, "--budget", str(budget)],
            check=True,
            capture_output=True,
            text=True,
            env=_environment(None),
        ).stdout
        median, best = (float(word) for word in output.split()[-2:])
        results[name] = (median, best)
        print(f"  {name:16s} {median * 1e6:9.2f} us (best {best * 1e6:.2f})", file=sys.stderr)
    return results


def run_callgrind(tree: Path | None, names: list[str]) -> dict[str, float]:
    """Instructions per call of each workload under callgrind."""
    results = {}
    for name in [n for n in names if tree is None or not n.endswith("-unrecorded")]:
        totals = []
        for count in CALLGRIND_COUNTS:
            with tempfile.TemporaryDirectory() as scratch:
                out = Path(scratch) / "callgrind.out"
                subprocess.run(
                    [
                        "valgrind",
                        "--tool=callgrind",
                        f"--callgrind-out-file={out}",
                        sys.executable,
                        __file__,
                        "--repeat",
                        name,
                        "--count",
                        str(count),
                    ],
                    check=True,
                    capture_output=True,
                    env=_environment(tree),
                )
                totals.append(_instructions(out.read_text()))
        per_call = (totals[1] - totals[0]) / (CALLGRIND_COUNTS[1] - CALLGRIND_COUNTS[0])
        results[name] = per_call
        print(f"  {name:16s} {per_call:12,.0f} instructions", file=sys.stderr)
    return results


def _instructions(profile: str) -> int:
    match = re.search(r"^(?:summary|totals): (\d+)", profile, re.MULTILINE)
    assert match, "no instruction total in the callgrind output"
    return int(match.group(1))


def _environment(tree: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree or HERE.parent)
    env["PYTHONHASHSEED"] = "0"
    return env


def report_timings(figures: dict[str, tuple[float, float]]) -> None:
    print("| workload | median us per call | best us per call |\n|---|---|---|")
    for name, (median, best) in figures.items():
        print(f"| {name} | {median * 1e6:.2f} | {best * 1e6:.2f} |")
    print()
    if set(WORKLOADS) - set(figures):
        return
    us = {name: best * 1e6 for name, (_, best) in figures.items()}  # least disturbed
    check = us["hit-10-files"] - us["hit"]
    print("from the best figures (the least disturbed by other processes):")
    print(f"checking 10 files on a hit: {check:.1f} us ({us['stat-10-files']:.1f} us of it stat)")
    print(f"  target <= 50 us: {'met' if check <= 50 else 'missed'}")
    print(f"the audit hook on a small hit: {us['hit'] - us['hit-unrecorded']:.2f} us")
    recording = us["miss"] - us["miss-unrecorded"]
    share = recording / us["miss-unrecorded"]
    print(f"recording on a miss that opens no file: {recording:.2f} us ({share:+.1%})")
    hooked = us["open-outside"] / us["open-no-hook"]
    print(f"open()+close() outside computations, hook installed: {hooked:.2f}x without")


def report_callgrind(figures: dict[str, float], baseline: dict[str, float] | None) -> None:
    print("| workload | instructions per call | baseline |\n|---|---|---|")
    for name, count in figures.items():
        other = "" if baseline is None or name not in baseline else f"{baseline[name]:,.0f}"
        print(f"| {name} | {count:,.0f} | {other} |")
    print()
    print(
        f"checking 10 files on a hit: {figures['hit-10-files'] - figures['hit']:,.0f} instructions"
    )
    print(
        "recording on a miss that opens no file: "
        f"{figures['miss'] - figures['miss-unrecorded']:,.0f} instructions "
        f"({figures['miss'] / figures['miss-unrecorded'] - 1:+.1%})"
    )
    print(
        "the audit hook on a hit: "
        f"{figures['hit'] - figures['hit-unrecorded']:,.0f} instructions "
        f"({figures['hit'] / figures['hit-unrecorded'] - 1:+.1%})"
    )
    if baseline is not None:
        for name in ("hit", "miss"):
            print(f"{name}: {figures[name] / baseline[name] - 1:+.1%} against the baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per timing")
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="a subset"
    )
    parser.add_argument("--time", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time or args.repeat:
        with tempfile.TemporaryDirectory() as folder:
            call = build(args.time or args.repeat, Path(folder))
            if args.time:
                print(*per_call_seconds(call, args.budget))
            else:
                for _ in range(args.count):
                    call()
        return
    if args.callgrind:
        figures = run_callgrind(None, args.workloads)
        baseline = run_callgrind(args.baseline, args.workloads) if args.baseline else None
        report_callgrind(figures, baseline)
    else:
        report_timings(run_timings(args.budget, args.workloads))


if __name__ == "__main__":
    main()
