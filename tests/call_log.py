"""A call log for cached functions under test."""

from __future__ import annotations

from typing import Any


class Calls(list[Any]):
    """A call log the functions under test close over; its digest is constant, so logging a
    call does not change the function's fingerprint (closure values are part of it)."""

    def __nbcache_token__(self) -> str:
        return "calls"
