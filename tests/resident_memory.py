"""Peak resident memory of this process over a block of code, as the kernel counts it.

tracemalloc sees only Python's allocators; values the stores keep in mappings (anonymous or
memory files) are invisible to it, so a needless copy there would pass unnoticed. The kernel's
high-water mark of the resident set (``VmHWM``) sees every page the process touches, whatever
allocated it. It is reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0+).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Growth:
    """Bytes by which the resident set's peak exceeded its size at the start of the block."""

    peak: int = 0


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        found = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}: resident memory cannot be measured")
    return int(found.group(1)) * 1024


@contextmanager
def resident_growth() -> Iterator[Growth]:
    """Measure how far the resident set's peak rises above its level at entry.

    Garbage is collected first, so memory freed before the block is not counted in it.
    Freed memory the allocator keeps for reuse is already resident and costs nothing here,
    so the figure can only under-count copies made into reused memory: the tests keep big
    values well above glibc's mmap threshold (128 KiB), whose memory is returned on free.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as exc:
        raise RuntimeError(f"cannot reset the resident-set peak: {exc}") from exc
    growth = Growth()
    before = _status_bytes("VmRSS")
    if _status_bytes("VmHWM") > before + 1024 * 1024:
        raise RuntimeError("the resident-set peak did not reset: the kernel ignored clear_refs")
    try:
        yield growth
    finally:
        growth.peak = _status_bytes("VmHWM") - before
