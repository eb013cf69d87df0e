"""pytest fixtures that give tests App Engine's memcache service: the SDK's in-process stub."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def gae_memcache() -> Iterator[Any]:
    """A fresh, empty memcache service for this process (an activated testbed); its stub.

    The SDK must be installed (``pip install "nbcache[gae]"``, part of the test extra): a test
    using this fixture errors without it, never skips.
    """
    with warnings.catch_warnings():
        # The testbed imports every service stub, some of which use deprecated parts of the
        # standard library (cgi, datetime.utcfromtimestamp): the SDK's warnings, not ours.
        warnings.simplefilter("ignore")
        from google.appengine.ext import testbed

    bed = testbed.Testbed()
    bed.activate()
    try:
        bed.init_memcache_stub()
        yield bed.get_stub(testbed.MEMCACHE_SERVICE_NAME)
    finally:
        bed.deactivate()
