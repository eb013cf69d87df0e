"""A team on two Python versions shares plain data through one memcached; code pickled by value
(notebook functions, lambdas, notebook classes) stays with the Python version that wrote it,
and cached functions and cells never hit across versions.

These tests run a second interpreter of another minor version, with nbcache's test
dependencies installed. ``scripts/test-matrix.sh`` provides them: it runs the suite under each
interpreter it finds and names the others in ``NBCACHE_TEST_PYTHONS``, and it fails when it
finds fewer than two minor versions. Run alone without that variable, these tests skip.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memcached_server import MemcachedServer

from nbcache import MemcachedCache
from nbcache.cells.analysis import analyze_cell
from nbcache.cells.key import cell_key
from nbcache.functions.decorator import cached_result

pytestmark = [pytest.mark.memcached, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SECRET = "a-team-secret-0123456789abcdef"
THIS_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"

FUNCTION = """
def total(rows, scale=2):
    return sum(len(r) for r in rows if r) * scale
"""

# Run by the other interpreter: argv is the memcached address, the secret and what to do.
PARTNER = """
import json, logging, sys, textwrap
import numpy as np
from nbcache import MemcachedCache
from nbcache.cells.analysis import analyze_cell
from nbcache.cells.key import cell_key
from nbcache.functions.decorator import cached_result

warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("nbcache").addHandler(handler)
cache = MemcachedCache(sys.argv[1], secret=sys.argv[2])
report = {"python": "%d.%d" % sys.version_info[:2], "numpy": np.__version__}
if sys.argv[3] == "write":
    report["stored"] = [
        cache.set("plain", {"array": np.arange(12.0).reshape(3, 4), "rows": [(1, "é"), (2, None)]}),
        cache.set("lambda", {"scale": lambda x: 2 * x}),
    ]
    namespace = {"__name__": "__main__"}
    exec(textwrap.dedent(sys.argv[4]), namespace)
    total = cached_result(namespace["total"], cache=cache)
    report["total"] = total(["a", "", "bc"])
    report["hits_on_a_second_call"] = (total(["a", "", "bc"]), total.cache_info().hits)
    report["function_key"] = total.cache_key(["a", "", "bc"])
    report["cell_key"] = cell_key("cell", analyze_cell("y = sorted(x)"), {"x": "value:1"})
else:
    plain = cache.get("plain")
    if plain is not None:
        report["plain"] = {"array": plain["array"].tolist(), "rows": plain["rows"]}
    report["lambda"] = repr(cache.get("lambda"))
report["warnings"] = warnings
print(json.dumps(report))
"""


def python_version(python: str) -> tuple[str, str]:
    """The minor version and numpy version of an interpreter."""
    script = "import sys, numpy; print('%d.%d' % sys.version_info[:2], numpy.__version__)"
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return "", ""
    version, numpy_version = result.stdout.split()
    return version, numpy_version


@pytest.fixture
def partner() -> str:
    """The other interpreter (before any server starts: without one, the test skips)."""
    return partner_python()


@functools.cache
def partner_python() -> str:
    """An interpreter of another minor version than this one, with the same numpy major
    version (numpy does not promise to load a pickle written by another major version)."""
    listed = os.environ.get("NBCACHE_TEST_PYTHONS")
    if not listed:
        pytest.skip(
            "needs a second Python minor version: scripts/test-matrix.sh runs this test under "
            "each interpreter it finds, naming the others in NBCACHE_TEST_PYTHONS"
        )
    numpy_major = np.__version__.split(".")[0]
    candidates = []
    for python in listed.split(os.pathsep):
        version, numpy_version = python_version(python)
        candidates.append(f"{python}: Python {version or '?'}, numpy {numpy_version or '?'}")
        if version and version != THIS_PYTHON and numpy_version.split(".")[0] == numpy_major:
            return python
    pytest.fail(
        f"NBCACHE_TEST_PYTHONS names no working interpreter of another minor version than "
        f"{THIS_PYTHON} with numpy {numpy_major}.x: " + "; ".join(candidates)
    )


def run_partner(partner: str, server: MemcachedServer, *arguments: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NBCACHE_SECRET", None)
    result = subprocess.run(
        [partner, "-c", PARTNER, server.address, SECRET, *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["python"] != THIS_PYTHON
    return report


def test_plain_data_crosses_python_versions_and_code_by_value_is_refused_with_its_reason(
    partner: str, memcached: MemcachedServer, caplog: pytest.LogCaptureFixture
) -> None:
    written = run_partner(partner, memcached, "write", FUNCTION)
    assert written["stored"] == [True, True]
    other = written["python"]
    cache = MemcachedCache(memcached.address, secret=SECRET)
    caplog.set_level(logging.WARNING, logger="nbcache")

    plain = cache.get("plain")
    np.testing.assert_array_equal(plain["array"], np.arange(12.0).reshape(3, 4))
    assert plain["rows"] == [(1, "é"), (2, None)]

    assert cache.get("lambda") is None
    reason = f"written by Python {other} and holds code pickled by value"
    assert [m for m in caplog.messages if reason in m and "'lambda'" in m], caplog.messages

    # and the other way round: this Python writes, the other one reads
    assert cache.set("plain", {"array": np.arange(12.0).reshape(3, 4), "rows": [(3, "ü")]})
    assert cache.set("lambda", {"scale": lambda x: 3 * x})
    read = run_partner(partner, memcached, "read")
    assert read["plain"] == {"array": np.arange(12.0).reshape(3, 4).tolist(), "rows": [[3, "ü"]]}
    assert read["lambda"] == "None"
    assert any(
        f"written by Python {THIS_PYTHON} and holds code pickled by value" in warning
        for warning in read["warnings"]
    ), read["warnings"]


def test_cached_functions_and_cells_do_not_hit_across_python_versions(
    partner: str, memcached: MemcachedServer
) -> None:
    """Their keys name the Python version: the same source may compute differently."""
    written = run_partner(partner, memcached, "write", FUNCTION)
    cache = MemcachedCache(memcached.address, secret=SECRET)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(FUNCTION), namespace)
    total = cached_result(namespace["total"], cache=cache)

    assert total.cache_key(["a", "", "bc"]) != written["function_key"]
    assert cell_key("cell", analyze_cell("y = sorted(x)"), {"x": "value:1"}) != written["cell_key"]
    # the other version stored its result (its second call hit); this version computes its own
    assert written["hits_on_a_second_call"] == [6, 1]
    assert total(["a", "", "bc"]) == written["total"] == 6
    assert total.cache_info()[:2] == (0, 1)
    assert total(["a", "", "bc"]) == 6
    assert total.cache_info()[:2] == (1, 1)
