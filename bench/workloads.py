"""The three benchmark workloads: the bare functions, their arguments, and fresh variants.

Each workload gives the function every contestant memoizes, one argument tuple for hits,
and ``fresh(i)``: an argument tuple no contestant has seen yet, equal in size, for cold
calls. Functions live at module level so that joblib and nbcache see ordinary, importable
code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024


def summarize_order(customer: int, region: str, quantity: int, currency: str) -> dict[str, Any]:
    """Small in, small out: a handful of ints and strings give a small dict."""
    return {
        "customer": customer,
        "region": region.upper(),
        "total": quantity * 19.99,
        "currency": currency,
        "tags": [region[:2], currency.lower()],
    }


def double_array(values: Any) -> Any:
    """A new array derived from the argument (``x * 2``), as big as the argument."""
    return values * 2


def scale_frame(frame: Any) -> Any:
    """A new DataFrame: numeric columns doubled, text columns carried over."""
    numeric = frame.select_dtypes("number").columns
    return frame.assign(**{name: frame[name] * 2 for name in numeric})


@dataclass
class Workload:
    """One workload: what is called, on what, and how to get unseen arguments."""

    name: str
    label: str
    function: Callable[..., Any]
    hit_args: tuple[Any, ...]
    fresh: Callable[[int], tuple[Any, ...]]

    def result_bytes(self) -> int:
        return value_bytes(self.function(*self.hit_args))


def value_bytes(value: Any) -> int:
    """Bytes a result occupies: array buffer, frame's deep memory usage, else its pickle."""
    if hasattr(value, "memory_usage"):
        return int(value.memory_usage(deep=True).sum())
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    import pickle

    return len(pickle.dumps(value))


def small_workload() -> Workload:
    return Workload(
        name="small",
        label="small args, small dict",
        function=summarize_order,
        hit_args=(1234, "north-east", 7, "EUR"),
        fresh=lambda i: (100_000 + i, "south-west", 3, "USD"),
    )


def array_workload(mib: int) -> Workload:
    import numpy as np

    base = np.random.default_rng(0).random(mib * MIB // 8)

    def fresh(i: int) -> tuple[Any, ...]:
        variant = base.copy()
        variant[0] = -1.0 - i  # one changed element: a different argument, same size
        return (variant,)

    return Workload(
        name="array",
        label=f"{mib} MiB float64 array",
        function=double_array,
        hit_args=(base,),
        fresh=fresh,
    )


def frame_workload(rows: int) -> Workload:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    words = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"])
    ids = np.arange(rows)
    frame = pd.DataFrame(
        {
            "price": rng.random(rows) * 100,
            "weight": rng.random(rows),
            "score": rng.normal(size=rows),
            "ratio": rng.random(rows),
            "quantity": rng.integers(0, 1000, rows),
            "store": rng.integers(0, 50, rows),
            "sku": pd.Series(ids).map("SKU-{:08d}".format).astype(str),
            "city": pd.Series(words[rng.integers(0, len(words), rows)]).astype(str),
            "category": pd.Series(words[ids % len(words)]).astype(str) + "-goods",
            "note": pd.Series(rng.integers(0, 10**9, rows)).map("n{:x}".format).astype(str),
        }
    )

    def fresh(i: int) -> tuple[Any, ...]:
        variant = frame.copy()
        variant.loc[0, "price"] = -1.0 - i
        return (variant,)

    return Workload(
        name="frame",
        label=f"{rows:,} x 10 DataFrame (6 numeric, 4 text)",
        function=scale_frame,
        hit_args=(frame,),
        fresh=fresh,
    )


def build(name: str, quick: bool) -> Workload:
    """The workload called ``name`` at full or ``--quick`` size."""
    if name == "small":
        return small_workload()
    if name == "array":
        return array_workload(16 if quick else 256)
    if name == "frame":
        return frame_workload(100_000 if quick else 1_000_000)
    raise ValueError(f"unknown workload {name!r}")


WORKLOADS = ("small", "array", "frame")
