"""Benchmark nbcache against the caches analysts use today, in one run on this machine.

Run from a checkout after ``pip install -e ".[test,bench]"``::

    python bench/run.py            # full sizes: 256 MiB array, 1e6-row DataFrame (~5-10 min)
    python bench/run.py --quick    # 16 MiB array, 1e5-row DataFrame (< 1 min)
    python bench/run.py --json figures.json

Starts a private memcached on 127.0.0.1 (stopped by PID at exit, Ctrl-C included), then
measures each contestant on each workload in fresh subprocesses, one after another, and
prints a markdown report: the table of figures and nbcache's performance targets as ratios within
this run. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # nbcache from this checkout, even when not installed

import peers  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402

WARM_UP_GIB = 4  # about the run's peak footprint: in-process caches, memcached, disk caches
MEMCACHED_MB = 2048  # a 256 MiB entry and the cold calls' entries fit with room to spare
BIG_WORKLOADS = ("array", "frame")
FIRST_HITS = 3  # fresh processes per contestant, each timing one first hit (median kept)
BARE_SOCKET_ROUNDS = 5
# A memory measurement must see fresh pages: with a fixed (not adaptive) mmap threshold,
# glibc returns big freed blocks to the system instead of reusing them unseen.
MEMORY_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures here")
    parser.add_argument(
        "--workload",
        action="append",
        choices=workloads.WORKLOADS,
        help="run only this workload (repeatable)",
    )
    parser.add_argument(
        "--contestant",
        action="append",
        choices=[c.name for c in peers.CONTESTANTS],
        help="run only this contestant (repeatable)",
    )
    parser.add_argument(
        "--child", choices=("timing", "first-hit", "memory"), help=argparse.SUPPRESS
    )
    parser.add_argument("--memcached", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        return run_child(options)
    results = run_all(
        options.workload or list(workloads.WORKLOADS),
        options.contestant or [c.name for c in peers.CONTESTANTS],
        options.quick,
    )
    report.print_markdown(results)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nRaw figures written to {options.json}", file=sys.stderr)
    return 0


def run_child(options: argparse.Namespace) -> int:
    """In a subprocess: measure one contestant on one workload, print the figures as JSON."""
    import measure

    env = peers.Env(memcached=options.memcached, scratch=options.scratch)
    (workload,) = options.workload
    (contestant,) = options.contestant
    how = {
        "timing": measure.timing,
        "first-hit": measure.first_hit,
        "memory": measure.peak_memory,
    }[options.child]
    figures = how(workload, contestant, env, options.quick)
    print(json.dumps(figures))
    return 0


def run_all(names: list[str], contestants: list[str], quick: bool) -> dict[str, Any]:
    """Every chosen contestant on every chosen workload, against one private memcached."""
    from nbcache.testing import MemcachedServer

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server = MemcachedServer(memory_mb=MEMCACHED_MB)
    scratch = tempfile.mkdtemp(prefix="nbcache-bench-")
    started = time.monotonic()
    try:
        warm_up_memory(1 if quick else WARM_UP_GIB)
        server.start()
        version = server.command(b"version").decode().split()[-1]
        results: dict[str, Any] = {
            "machine": report.machine(version),
            "quick": quick,
            "workloads": {},
        }
        for name in names:
            results["workloads"][name] = run_workload(name, contestants, quick, server, scratch)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(f"Benchmark took {results['seconds']:.0f} s", file=sys.stderr)
    return results


def run_workload(
    name: str, contestants: list[str], quick: bool, server: Any, scratch: str
) -> dict[str, Any]:
    workload = workloads.build(name, quick)
    entry: dict[str, Any] = {
        "label": workload.label,
        "result_bytes": workload.result_bytes(),
        "contestants": {},
    }
    del workload  # the children build their own; free this copy before they run
    if name in BIG_WORKLOADS:
        from bare_socket import bare_seconds

        entry["bare_socket"] = bare_seconds(entry["result_bytes"], BARE_SOCKET_ROUNDS)
        print(f"[{name}] bare socket: {entry['bare_socket']}", file=sys.stderr)
    bare_times = []
    for contestant in peers.CONTESTANTS:
        if contestant.name not in contestants or name not in contestant.workloads:
            continue
        env = peers.Env(memcached=server.address, scratch=tempfile.mkdtemp(dir=scratch))
        try:
            began = time.monotonic()
            figures = child("timing", name, contestant.name, env, quick)
            # Later processes find the timing run's entries on disk and in memcached.
            if name in BIG_WORKLOADS and contestant.shared:
                firsts = sorted(
                    (found["first_hit"], found["bare_receive"])
                    for found in (
                        child("first-hit", name, contestant.name, env, quick)
                        for _ in range(FIRST_HITS)
                    )
                )
                # The median first hit, with the bare socket measured in its own process.
                figures["first_hit"], figures["bare_receive"] = firsts[len(firsts) // 2]
            if name in BIG_WORKLOADS and contestant.is_cache:
                figures.update(child("memory", name, contestant.name, env, quick))
            figures["seconds"] = round(time.monotonic() - began, 1)
        except ChildFailed as failure:
            figures = {"error": str(failure)}
        finally:
            server.flush_all()
            shutil.rmtree(env.scratch, ignore_errors=True)
        if "bare" in figures:
            bare_times.append(figures["bare"])
        entry["contestants"][contestant.name] = figures
        print(f"[{name}] {contestant.name}: {_summary(figures)}", file=sys.stderr)
    # Each child times the bare function; their median is the context figure.
    entry["bare"] = sorted(bare_times)[len(bare_times) // 2] if bare_times else None
    return entry


def warm_up_memory(gib: int) -> None:
    """Touch and free ``gib`` GiB once, so the run's allocations find memory already backed.

    On a freshly booted virtual machine the first touch of a page also faults in the host
    (here ~0.4 GB/s against ~3 GB/s later); whichever contestant ran first would pay for it.
    """
    import numpy as np

    started = time.monotonic()
    block = np.ones(gib * 2**30, dtype=np.uint8)
    del block
    print(f"Memory warm-up: {gib} GiB in {time.monotonic() - started:.1f} s", file=sys.stderr)


class ChildFailed(Exception):
    """A measurement subprocess exited with an error; its last line says why."""


def child(kind: str, workload: str, contestant: str, env: peers.Env, quick: bool) -> dict:
    command = [
        sys.executable,
        str(BENCH / "run.py"),
        "--child",
        kind,
        "--workload",
        workload,
        "--contestant",
        contestant,
        "--memcached",
        env.memcached,
        "--scratch",
        env.scratch,
    ]
    if quick:
        command.append("--quick")
    process_env = dict(os.environ, **(MEMORY_CHILD_ENV if kind == "memory" else {}))
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env
    )
    try:
        out, err = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{kind} took over 900 s") from None
    finally:
        if process.poll() is None:  # interrupted or timed out: stop our child, by its PID
            process.kill()
            process.wait()
    if process.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise ChildFailed(f"{kind} exited {process.returncode}: {last}")
    if err.strip():
        sys.stderr.write(err)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _summary(figures: dict[str, Any]) -> str:
    if "error" in figures:
        return f"failed ({figures['error']})"
    return (
        f"hit {report.seconds_text(figures.get('hit'))}, "
        f"first hit {report.seconds_text(figures.get('first_hit'))}, "
        f"miss overhead {report.seconds_text(figures.get('miss_overhead'))}, "
        f"peak {report.bytes_text(figures.get('peak_memory'))} ({figures['seconds']:.0f} s)"
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop memcached


if __name__ == "__main__":
    sys.exit(main())
