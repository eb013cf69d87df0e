"""pytest fixtures that give tests a fresh IPython shell, isolated from the user's profile."""

from __future__ import annotations

import builtins
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def ipython_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A new ``InteractiveShell`` singleton with its own IPYTHONDIR and no history file.

    Interpreter state the shell changes (``__main__``, display and exception hooks, the
    names it adds to builtins) is put back afterwards.
    """
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    saved_main = sys.modules["__main__"]
    saved_hooks = (sys.displayhook, sys.excepthook, sys.stdout, sys.stderr)
    saved_builtins = set(vars(builtins))
    config = Config()
    config.HistoryManager.enabled = False
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()
        sys.modules["__main__"] = saved_main
        sys.displayhook, sys.excepthook, sys.stdout, sys.stderr = saved_hooks
        for name in set(vars(builtins)) - saved_builtins:
            delattr(builtins, name)
