"""nbcache: memoization for Jupyter and data science.

``import nbcache`` is cheap: the public names below load their modules on first use, and
nothing here imports IPython, numpy, pandas or pymemcache.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "NO_VALUE": "nbcache.stores.api",
    "Cache": "nbcache.cache",
    "SimpleCache": "nbcache.cache",
    "MemcachedCache": "nbcache.cache",
    "GAEMemcachedCache": "nbcache.cache",
    "configure": "nbcache.config",
    "get_cache": "nbcache.config",
    "NbcacheError": "nbcache.exceptions",
    "ConfigurationError": "nbcache.exceptions",
    "UnpicklableValueError": "nbcache.exceptions",
    "UnhashableValue": "nbcache.exceptions",
    "Entry": "nbcache.entries.envelope",
    "cached_result": "nbcache.functions.decorator",
    "CacheInfo": "nbcache.functions.decorator",
    "register_token": "nbcache.keys.digest",
}

__all__ = [*sorted(_EXPORTS), "load_ipython_extension"]

if TYPE_CHECKING:
    from nbcache.cache import Cache as Cache
    from nbcache.cache import GAEMemcachedCache as GAEMemcachedCache
    from nbcache.cache import MemcachedCache as MemcachedCache
    from nbcache.cache import SimpleCache as SimpleCache
    from nbcache.config import configure as configure
    from nbcache.config import get_cache as get_cache
    from nbcache.entries.envelope import Entry as Entry
    from nbcache.exceptions import ConfigurationError as ConfigurationError
    from nbcache.exceptions import NbcacheError as NbcacheError
    from nbcache.exceptions import UnhashableValue as UnhashableValue
    from nbcache.exceptions import UnpicklableValueError as UnpicklableValueError
    from nbcache.functions.decorator import CacheInfo as CacheInfo
    from nbcache.functions.decorator import cached_result as cached_result
    from nbcache.keys.digest import register_token as register_token
    from nbcache.stores.api import NO_VALUE as NO_VALUE


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbcache' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (``dir(nbcache)``), whether or not they have been loaded yet."""
    return [*__all__, "__version__"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbcache``: register the ``%%cache`` and ``%nbcache`` magics."""
    from nbcache.cells.magic import register

    register(ipython)
