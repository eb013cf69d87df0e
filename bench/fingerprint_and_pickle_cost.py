"""What nbcache adds to two things it does once per value or function, as ratios to peers.

* A function's first code fingerprint reads its instructions into a canonical control-flow form
  (``nbcache.keys.bytecode``). Peer: compiling the function's module from source, once.
  Later fingerprints of the same code are remembered (peer: the same).
* Serializing notes whether a value holds code pickled by value (``nbcache.entries.by_value``).
  Peer: plain ``cloudpickle.dumps`` of the same value.

Run: ``PYTHONPATH=. python bench/fingerprint_and_pickle_cost.py`` (a few seconds). Ratios are
meaningful within one run only.
"""

from __future__ import annotations

import datetime
import fractions
import importlib
import inspect
import time
import types
from collections.abc import Callable

import cloudpickle

from nbcache.entries import serializer
from nbcache.keys import fingerprint

MODULES = ["argparse", "json.encoder", "textwrap", "difflib", "statistics", "configparser"]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def module_functions(name: str) -> tuple[str, list[types.CodeType]]:
    module = importlib.import_module(name)
    codes = []
    for value in vars(module).values():
        members = [value, *(vars(value).values() if isinstance(value, type) else [])]
        for member in members:
            if isinstance(member, types.FunctionType) and member.__module__ == module.__name__:
                codes.append(member.__code__)
    return inspect.getsource(module), codes


def fingerprints() -> None:
    print("| module | functions | first code tokens / compiling the module | remembered |")
    print("|---|---|---|---|")
    for name in MODULES:
        source, codes = module_functions(name)

        def first(codes: list[types.CodeType] = codes) -> None:
            fingerprint._code_tokens.clear()
            for code in codes:
                fingerprint.code_token(code)

        def again(codes: list[types.CodeType] = codes) -> None:
            for code in codes:
                fingerprint.code_token(code)

        compiling = best_of(5, lambda: compile(source, name, "exec"))  # noqa: B023
        tokens = best_of(5, first)
        remembered = best_of(5, again)
        print(
            f"| {name} | {len(codes)} | {tokens / compiling:.2f} "
            f"({tokens * 1e3:.1f} ms / {compiling * 1e3:.1f} ms) | {remembered * 1e6:.0f} µs |"
        )


def pickling() -> None:
    day = datetime.datetime(2024, 1, 1)
    values = {
        "100k datetimes": [day + datetime.timedelta(d) for d in range(10**5)],
        "100k fractions": [fractions.Fraction(i, 7) for i in range(10**5)],
        "1M ints": list(range(10**6)),
        "a dict of lambdas": {str(i): (lambda x, i=i: x + i) for i in range(1000)},
    }
    print()
    print("| value | serializer.dumps / cloudpickle.dumps |")
    print("|---|---|")
    for label, value in values.items():
        plain = best_of(7, lambda: cloudpickle.dumps(value, protocol=5))  # noqa: B023
        ours = best_of(7, lambda: serializer.dumps(value))  # noqa: B023
        print(f"| {label} | {ours / plain:.2f} ({ours * 1e3:.1f} ms / {plain * 1e3:.1f} ms) |")


if __name__ == "__main__":
    fingerprints()
    pickling()
