"""How IPython's magics and shell escapes, as ``transform_cell`` writes them, touch names.

``%name line`` becomes ``get_ipython().run_line_magic('name', 'line')``, ``%%name`` a
``run_cell_magic`` call, ``!cmd`` a ``system``/``getoutput`` call. IPython expands ``$name``
and ``{expr}`` in those strings from the user namespace, so they are reads. A magic not known
to be harmless may read or bind anything, so it makes the cell opaque to analysis.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

#: Line magics that neither read nor bind names beyond ``$name``/``{expr}`` expansion.
HARMLESS_LINE_MAGICS = frozenset(
    {
        *("matplotlib", "config", "load_ext", "reload_ext", "unload_ext", "pip", "conda"),
        *("mamba", "autoreload", "aimport", "precision", "pwd", "cd", "env", "who", "whos"),
        *("who_ls", "lsmagic", "history", "pinfo", "pinfo2", "psearch", "pdoc", "pdef"),
        *("psource", "pfile", "page", "magic", "quickref", "colors", "xmode", "automagic"),
        "autocall",
    }
)
#: Cell magics whose body is not Python and which bind no names.
HARMLESS_CELL_MAGICS = frozenset(
    {"html", "HTML", "javascript", "js", "latex", "markdown", "svg", "writefile"}
)
#: Magics whose argument is Python code run in the user namespace.
CODE_MAGICS = frozenset({"time", "timeit"})
_SHELL_CALLS = frozenset({"system", "getoutput"})
_NAMESPACE_CALLS = frozenset({"exec", "eval", "globals", "locals", "vars", "dir"})
_DOLLAR_NAME = re.compile(r"\$\$?([A-Za-z_]\w*)")
_BRACED = re.compile(r"\{([^{}]+)\}")


@dataclass
class CallEffect:
    """What one call does to names besides its ordinary reads.

    ``reads``: names expanded into a magic line; ``code``: Python source the call runs in the
    user namespace (``%timeit stmt``); ``opaque``: why the call may touch unknown names.
    """

    reads: set[str] = field(default_factory=set)
    code: str | None = None
    opaque: str = ""


def call_effect(node: ast.Call) -> CallEffect:
    """The hidden reads and binds of a call: namespace builtins and ``get_ipython()`` calls."""
    function = node.func
    if isinstance(function, ast.Name) and function.id in _NAMESPACE_CALLS:
        if function.id in ("vars", "dir") and node.args:
            return CallEffect()
        return CallEffect(opaque=f"{function.id}() reads or binds names nbcache cannot see")
    if not is_ipython_attribute(function):
        return CallEffect()
    assert isinstance(function, ast.Attribute)
    texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if len(texts) != len(node.args):
        return CallEffect(opaque=f"get_ipython().{function.attr} with computed arguments")
    if node.keywords:
        return CallEffect(opaque=f"get_ipython().{function.attr} with keyword arguments")
    if function.attr in _SHELL_CALLS and texts:
        return CallEffect(reads=expanded_names(texts[0]))
    if function.attr in ("run_line_magic", "run_cell_magic") and len(texts) >= 2:
        body = texts[2] if len(texts) > 2 else ""
        return _magic_effect(function.attr == "run_cell_magic", texts[0], texts[1], body)
    return CallEffect(opaque=f"get_ipython().{function.attr} may touch any name")


def _magic_effect(cell: bool, name: str, line: str, body: str) -> CallEffect:
    if name in CODE_MAGICS:
        return CallEffect(code=body if cell else line)
    if name in (HARMLESS_CELL_MAGICS if cell else HARMLESS_LINE_MAGICS):
        return CallEffect(reads=expanded_names(line))
    return CallEffect(opaque=f"%{'%' if cell else ''}{name} may read or bind any name")


def expanded_names(text: str) -> set[str]:
    """Names IPython's ``$name`` / ``{expr}`` expansion of a magic line may read."""
    names = set(_DOLLAR_NAME.findall(text))
    for braced in _BRACED.findall(text):
        try:
            parsed = ast.parse(braced.strip(), mode="eval")
        except SyntaxError:
            continue
        names |= {n.id for n in ast.walk(parsed) if isinstance(n, ast.Name)}
    return names


def is_ipython_attribute(node: ast.expr) -> bool:
    """``get_ipython().something``."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "get_ipython"
    )


def timed_code(node: ast.expr) -> str | None:
    """The code of a statement-level ``%time stmt`` or ``%%time`` cell, else None."""
    if not (isinstance(node, ast.Call) and is_ipython_attribute(node.func)):
        return None
    assert isinstance(node.func, ast.Attribute)
    values = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
    if not values or values[0] != "time" or node.keywords:
        return None
    if node.func.attr == "run_line_magic" and len(values) == 2 and isinstance(values[1], str):
        return values[1]
    if node.func.attr == "run_cell_magic" and len(values) == 3 and isinstance(values[2], str):
        return values[2]
    return None
