"""What a cell reads and binds, as the %%cache key and restore rely on."""

from __future__ import annotations

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from nbcache.cells.analysis import CellCode, analyze_cell


def cell(source: str) -> CellCode:
    """Analyse a cell as the magic does: after IPython's own transformation."""
    return analyze_cell(TransformerManager().transform_cell(source))


def inputs(source: str) -> set[str]:
    return set(cell(source).inputs)


def outputs(source: str) -> set[str]:
    return set(cell(source).outputs)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = y + 1\nz = x * 2", {"y"}),
        ("print(f'{name!r:>{width}}')", {"print", "name", "width"}),
        ("v = df.column.mean() + d['key'][0]", {"df", "d"}),
        ("x += 1", {"x"}),
        ("del x", {"x"}),
        ("[a * k for a in items if a > limit]", {"items", "k", "limit"}),
        ("{k: v for k, v in pairs}", {"pairs"}),
        ("squares = (n * n for n in range(count))", {"range", "count"}),
        ("f = lambda q, r=default: q + r + offset", {"default", "offset"}),
        ("@register\ndef f(a=start) -> Ret:\n    return a", {"register", "start", "Ret"}),
        ("class A(Base, metaclass=Meta):\n    size = limit", {"Base", "Meta", "limit"}),
        ("class A:\n    k = 1\n    j = k + 1", set()),
        ("def f():\n    return helper(z)", {"helper", "z"}),
        ("def f(a):\n    b = a\n    return b", set()),
        ("def f():\n    global total\n    total += step", {"total", "step"}),
        (
            "def outer():\n    v = 1\n    def inner():\n        return v + w\n    return inner",
            {"w"},
        ),
        ("if c:\n    x = 1\nprint(x)", {"c", "print", "x"}),
        ("if c:\n    x = 1\nelse:\n    x = 2\nprint(x)", {"c", "print"}),
        ("for i in data:\n    acc = acc + i\nprint(i)", {"data", "acc", "print", "i"}),
        ("while more():\n    seen = item\n    item = step()", {"more", "item", "step"}),
        # Without an exception, e is whatever the namespace held.
        (
            "try:\n    x = f()\nexcept Err as e:\n    x = fb\nprint(x, e)",
            {"f", "Err", "fb", "print", "e"},
        ),
        ("with open(path) as fh:\n    text = fh.read()\ntext", {"open", "path"}),
        ("from contextlib import suppress\nwith suppress(E):\n    x = f()\nx", {"E", "f", "x"}),
        (
            "match cmd:\n    case Point(x=0, y=yy):\n        r = yy\n    case _:\n        r = 0\nr",
            {"cmd", "Point"},
        ),
        ("match cmd:\n    case [a]:\n        r = a\nr", {"cmd", "r"}),
        ("if (n := len(items)) > 3:\n    print(n)", {"len", "items", "print"}),
        ("[(last := v) for v in values]\nprint(last)", {"values", "print", "last"}),
        ("ok = flag or (m := 1)\nm", {"flag", "m"}),
    ],
)
def test_inputs_are_the_names_read_before_the_cell_surely_binds_them(
    source: str, expected: set[str]
) -> None:
    assert inputs(source) == expected


def test_a_function_body_reads_globals_when_called_not_when_defined() -> None:
    # Bound by the cell before anything could call f: not an input.
    assert inputs("def f():\n    return helper()\ndef helper():\n    return 1\nr = f()") == set()
    # f runs before z is bound, so it reads z from the namespace.
    assert "z" in inputs("def f():\n    return z\nr = f()\nz = 1")
    # A lambda called in the same statement that binds the name it reads.
    assert "y" in inputs("y = (lambda: y)()")
    # A decorator may call the function; a recursive call of its own name is not an input.
    assert inputs("@cache\ndef fib(n):\n    return fib(n - 1) + shift") == {"cache", "shift"}
    # A function defined late in a loop body may be called early in the next round.
    loop = "for i in r:\n    if i:\n        g()\n    def g():\n        return late\nlate = 0"
    assert "late" in inputs(loop)


def test_get_ipython_is_not_an_input_but_expanded_names_are() -> None:
    assert inputs("!echo $fname {a + b}") == {"fname", "a", "b"}
    assert inputs("%matplotlib inline\nplt.plot(xs)") == {"plt", "xs"}
    files = cell("files = !ls {folder}")
    assert (set(files.inputs), set(files.outputs)) == ({"folder"}, {"files"})


def test_timed_code_is_analysed_as_the_code_it_times() -> None:
    timed = cell("%time model = fit(data)\nmodel.score(data)")
    assert (set(timed.inputs), set(timed.outputs)) == ({"fit", "data"}, {"model"})
    timed_cell = cell("%%time\nresult = compute(n)\n")
    assert (set(timed_cell.inputs), set(timed_cell.outputs)) == ({"compute", "n"}, {"result"})
    assert cell("%timeit f(x)").inputs == {"f", "x"}


@pytest.mark.parametrize(
    "source",
    [
        "exec(code)",
        "eval('x')",
        "globals()['x'] = 1",
        "print(locals())",
        "from numpy import *",
        "%run script.py",
        "%%capture captured\nprint(1)",
        "get_ipython().push({'x': 1})",
    ],
)
def test_code_the_analysis_cannot_see_through_is_reported_opaque(source: str) -> None:
    assert cell(source).opaque


def test_plain_code_is_not_opaque() -> None:
    assert cell("import numpy as np\nx = np.arange(n)\n%matplotlib inline\nvars(x)").opaque == ()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a, (b, *c) = t\nd = e = 1", {"a", "b", "c", "d", "e"}),
        ("x += 1\ny: int = 2\nz: int", {"x", "y"}),
        ("for i, j in pairs:\n    pass", {"i", "j"}),
        ("with ctx() as (h, k):\n    pass", {"h", "k"}),
        ("try:\n    pass\nexcept E as err:\n    pass", {"err"}),
        ("if (n := 3):\n    pass\n[(w := v) for v in vs]", {"n", "w"}),
        ("def f():\n    pass\nclass C:\n    attr = 1\nasync def g():\n    pass", {"f", "C", "g"}),
        ("import a.b.c\nimport os.path as osp\nfrom m import n as k, q", {"a", "osp", "k", "q"}),
        (
            "match p:\n    case {'k': v, **rest}:\n        pass\n    case [h, *tail]:\n        ...",
            {"v", "rest", "h", "tail"},
        ),
        ("def bump():\n    global counter\n    counter = 1", {"bump", "counter"}),
        ("d['k'] = 1\nobj.attr = 2", set()),
    ],
)
def test_outputs_are_every_name_the_cell_may_bind(source: str, expected: set[str]) -> None:
    assert outputs(source) == expected


def test_deleted_names_are_reported_apart() -> None:
    code = cell("x = 1\ndel x, y\ndel d['k']\ntry:\n    pass\nexcept E as e:\n    pass")
    assert set(code.deleted) == {"x", "y", "e"}
    assert "y" in code.inputs and "x" not in code.inputs


def test_normalized_code_ignores_comments_and_layout_only() -> None:
    base = cell("x = f(a, b)  # compute\ny = [1, 2]\n").normalized
    same = cell("# header\nx = f(a,\n      b)\n\n\ny = [\n    1,\n    2,\n]\n").normalized
    assert base == same
    for changed in (
        "x = f(a, c)\ny = [1, 2]",
        "x = f(a, b)\ny = [1, 3]",
        "x = f(a, b)\ny = [1] + [2]",
    ):
        assert cell(changed).normalized != base
    assert cell("x = f(a, b) - 1").normalized != cell("x = f(a, b) + 1").normalized


def test_last_expression_and_display_suppression() -> None:
    shown = cell("x = 1\nx")
    assert shown.last_expression and not shown.display_suppressed
    hidden = cell("x = 1\nx;  # quiet")
    assert hidden.last_expression and hidden.display_suppressed
    assert hidden.normalized != shown.normalized
    assert not cell("x = 1").last_expression
    assert cell("%matplotlib inline").last_expression


def test_syntax_errors_raise() -> None:
    with pytest.raises(SyntaxError):
        analyze_cell("x = (1,")
    with pytest.raises(SyntaxError):
        analyze_cell("x = 1\0")


def test_result_is_hashable_and_immutable() -> None:
    code = cell("x = y")
    assert hash(code) == hash(cell("x = y"))
    with pytest.raises(AttributeError):
        code.inputs = frozenset()  # type: ignore[misc]
