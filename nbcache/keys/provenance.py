"""Where code comes from: the user's own (the notebook, their modules) or a library.

Fingerprints follow the user's own code into its helpers and digest libraries by name and
version instead; this module tells the two apart. It imports only the standard library, so
the digest and fingerprint modules can both use it without importing each other.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
import types
from typing import Any

__all__ = [
    "display_name",
    "is_library_file",
    "is_user_module",
    "library_identity",
    "module_version",
]


@functools.lru_cache(maxsize=4096)
def is_library_file(path: str) -> bool:
    """Whether ``path`` lies in the interpreter's library or an installed package's directory."""
    real = os.path.realpath(path)
    return any(real.startswith(directory) for directory in _library_directories())


@functools.lru_cache(maxsize=1)
def _library_directories() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    candidates = [paths.get(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    candidates += site.getsitepackages() if hasattr(site, "getsitepackages") else []
    candidates.append(site.getusersitepackages())
    return tuple(os.path.realpath(path) + os.sep for path in candidates if path)


def is_user_module(module_name: str | None) -> bool:
    """Whether code from ``module_name`` is the user's own: the notebook or their modules.

    Not user code: the standard library, anything installed in site-packages, and nbcache.
    Code run in a namespace that is not an imported module (a notebook cell, ``exec``) is.
    """
    if not module_name or module_name == "__main__":
        return True
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top in ("nbcache", "builtins"):
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return True
    path = getattr(module, "__file__", None)
    return not path or not is_library_file(path)


def module_version(module: types.ModuleType) -> str | None:
    """The ``__version__`` of a module or of its top-level package, as a string."""
    version = getattr(module, "__version__", None)
    if version is None:
        top = sys.modules.get(module.__name__.partition(".")[0])
        version = getattr(top, "__version__", None)
    return None if version is None else str(version)


def library_identity(obj: Any) -> tuple[str, str, str | None]:
    """A library object's module name, qualified name and package version."""
    module_name = getattr(obj, "__module__", None) or ""
    module = sys.modules.get(module_name)
    version = module_version(module) if module is not None else None
    return module_name, getattr(obj, "__qualname__", repr(obj)), version


def display_name(obj: Any) -> str:
    """How a function or class is named in explanations: bare in the notebook."""
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", repr(obj))
    return name if module == "__main__" else f"{module}.{name}"
