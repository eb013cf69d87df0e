"""nbcache: memoization for Jupyter and data science.

``import nbcache`` is cheap: the public names below load their modules on first use, and
nothing here imports IPython, numpy, pandas or pymemcache.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "NO_VALUE": "nbcache.api",
    "Cache": "nbcache.cache",
    "SimpleCache": "nbcache.caches",
    "MemcachedCache": "nbcache.caches",
    "configure": "nbcache.config",
    "get_cache": "nbcache.config",
    "NbcacheError": "nbcache.exceptions",
    "ConfigurationError": "nbcache.exceptions",
    "UnpicklableValueError": "nbcache.exceptions",
    "cached_result": "nbcache.decorator",
    "register_token": "nbcache.tokenize",
}

__all__ = [*sorted(_EXPORTS), "load_ipython_extension"]

if TYPE_CHECKING:
    from .api import NO_VALUE as NO_VALUE
    from .cache import Cache as Cache
    from .caches import MemcachedCache as MemcachedCache
    from .caches import SimpleCache as SimpleCache
    from .config import configure as configure
    from .config import get_cache as get_cache
    from .decorator import cached_result as cached_result
    from .exceptions import ConfigurationError as ConfigurationError
    from .exceptions import NbcacheError as NbcacheError
    from .exceptions import UnpicklableValueError as UnpicklableValueError
    from .tokenize import register_token as register_token


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbcache' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbcache``: register the ``%%cache`` and ``%nbcache`` magics."""
    from .magic import register

    register(ipython)
