from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["memcached_fixtures", "ipython_fixtures"]


@pytest.fixture(autouse=True)
def isolated_nbcache_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own per-user secret file and no inherited nbcache settings."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("NBCACHE_URL", "NBCACHE_SECRET"):
        monkeypatch.delenv(name, raising=False)
    import nbcache.config

    nbcache.config.configure(None)
    yield
    nbcache.config.configure(None)
