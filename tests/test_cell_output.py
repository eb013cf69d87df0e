"""Recording a cell's output in order while it still shows, and replaying it elsewhere."""

from __future__ import annotations

import base64
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbcache.cells.output import (
    ClearOutput,
    DisplayData,
    ExecuteResult,
    RecordedOutput,
    StreamText,
    record_output,
    replay_output,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PublishedLog:
    """What reaches the shell's real display publisher, seen from outside the recorder."""

    def __init__(self, shell: Any) -> None:
        self.calls: list[tuple[str, Any]] = []
        publisher = shell.display_pub

        def publish(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> None:
            self.calls.append(("display", data))

        def clear_output(wait: bool = False) -> None:
            self.calls.append(("clear", wait))

        publisher.publish = publish
        publisher.clear_output = clear_output


def run(shell: Any, code: str) -> None:
    result = shell.run_cell(code, store_history=False)
    assert result.error_before_exec is None


def plain_sequence(recorded: RecordedOutput) -> list[tuple[str, Any]]:
    sequence: list[tuple[str, Any]] = []
    for item in recorded.items:
        if isinstance(item, StreamText):
            sequence.append((item.name, item.text))
        elif isinstance(item, (DisplayData, ExecuteResult)):
            sequence.append((type(item).__name__, item.data.get("text/plain")))
        else:
            sequence.append(("clear", item.wait))
    return sequence


def test_prints_and_displays_are_recorded_in_order_and_still_shown(
    ipython_shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = PublishedLog(ipython_shell)
    code = (
        "from IPython.display import display, HTML, clear_output\n"
        "print('first')\n"
        "display(HTML('<b>bold</b>'))\n"
        "print('second', end='')\n"
        "print(' same line')\n"
        "import sys; sys.stderr.write('warning text\\n')\n"
        "clear_output(wait=True)\n"
        "41 + 1\n"
    )
    with record_output(ipython_shell) as recorded:
        run(ipython_shell, code)

    assert plain_sequence(recorded) == [
        ("stdout", "first\n"),
        ("DisplayData", "<IPython.core.display.HTML object>"),
        ("stdout", "second same line\n"),
        ("stderr", "warning text\n"),
        ("clear", True),
        ("ExecuteResult", "42"),
    ]
    html = recorded.items[1]
    assert isinstance(html, DisplayData) and html.data["text/html"] == "<b>bold</b>"
    live = capsys.readouterr()
    assert "first\nsecond same line\n" in live.out
    assert "Out[" in live.out and "42" in live.out
    assert live.err == "warning text\n"
    assert [kind for kind, _ in shown.calls] == ["display", "clear"]


def test_replay_shows_the_same_items_in_the_same_order(
    ipython_shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with record_output(ipython_shell) as recorded:
        run(
            ipython_shell,
            "from IPython.display import display, Markdown\n"
            "print('before')\ndisplay(Markdown('*md*'))\nprint('after')\n"
            "import sys; print('oops', file=sys.stderr)\n'value'",
        )
    capsys.readouterr()
    stored = pickle.loads(pickle.dumps(recorded))

    with record_output(ipython_shell) as replayed:
        replay_output(ipython_shell, stored)

    original = plain_sequence(recorded)
    again = plain_sequence(replayed)
    # The final value is replayed as display data: same bundle, no Out[] prompt.
    assert original[-1] == ("ExecuteResult", "'value'")
    assert again[:-1] == original[:-1]
    assert again[-1] == ("DisplayData", "'value'")
    assert replayed.items[1] == recorded.items[1]
    live = capsys.readouterr()
    assert live.out.startswith("before\n")
    assert "oops" in live.err


def test_display_updates_keep_their_display_id(ipython_shell: Any) -> None:
    with record_output(ipython_shell) as recorded:
        run(
            ipython_shell,
            "from IPython.display import display\n"
            "handle = display('v1', display_id='progress')\nhandle.update('v2')",
        )
    first, update = recorded.items
    assert isinstance(first, DisplayData) and isinstance(update, DisplayData)
    assert (first.transient, first.update) == ({"display_id": "progress"}, False)
    assert (update.transient, update.update) == ({"display_id": "progress"}, True)
    assert update.data["text/plain"] == "'v2'"


def test_recorded_output_is_plain_data_that_pickle_round_trips(ipython_shell: Any) -> None:
    with record_output(ipython_shell) as recorded:
        run(
            ipython_shell,
            "from IPython.display import display, Image\n"
            f"display(Image(data={PNG_SIGNATURE + b'rest'!r}, width=3))\nprint('x')",
        )

    def assert_plain(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                assert isinstance(key, str)
                assert_plain(inner)
        elif isinstance(value, list):
            for inner in value:
                assert_plain(inner)
        else:
            assert value is None or isinstance(value, (str, bytes, bool, int, float)), value

    for item in recorded.items:
        assert_plain(vars(item))
    image = recorded.items[0]
    assert isinstance(image, DisplayData)
    assert base64.b64decode(image.data["image/png"]) == PNG_SIGNATURE + b"rest"
    assert image.metadata == {"image/png": {"width": 3}}
    assert pickle.loads(pickle.dumps(recorded)) == recorded


def test_many_small_writes_are_stored_as_one_item(ipython_shell: Any) -> None:
    with record_output(ipython_shell) as recorded:
        run(ipython_shell, "for i in range(1000):\n    print(i, end=' ')")
    assert len(recorded.items) == 1
    assert recorded.text() == " ".join(str(i) for i in range(1000)) + " "


@pytest.fixture
def inline_matplotlib(ipython_shell: Any) -> Iterator[Any]:
    """The shell with ``%matplotlib inline``; matplotlib's global state is put back after."""
    import matplotlib
    import matplotlib.pyplot as plt
    from IPython.core.pylabtools import select_figure_formats

    backend = matplotlib.get_backend()
    was_interactive = matplotlib.is_interactive()
    # The base shell has no GUI event loop to start; the inline backend needs none.
    ipython_shell.enable_gui = lambda gui=None: None
    ipython_shell.run_line_magic("matplotlib", "inline")
    # matplotlib_inline selects figure formats once per process, for the first shell only.
    select_figure_formats(ipython_shell, {"png"})
    try:
        yield ipython_shell
    finally:
        plt.close("all")
        plt.switch_backend(backend)
        matplotlib.interactive(was_interactive)


def test_inline_figure_of_a_nested_run_cell_is_recorded_as_png(inline_matplotlib: Any) -> None:
    shell = inline_matplotlib
    with record_output(shell) as recorded:
        run(shell, "import matplotlib.pyplot as plt\nprint('plotting')\nplt.plot([1, 3, 2]);")
    figures = [i for i in recorded.items if isinstance(i, DisplayData) and "image/png" in i.data]
    assert len(figures) == 1
    assert base64.b64decode(figures[0].data["image/png"]).startswith(PNG_SIGNATURE)
    assert recorded.items[0] == StreamText("stdout", "plotting\n")


def test_inline_figure_drawn_by_exec_is_flushed_inside_the_recording(
    inline_matplotlib: Any,
) -> None:
    shell = inline_matplotlib
    run(shell, "import matplotlib.pyplot as plt")
    with record_output(shell) as recorded:
        exec("plt.plot([1, 2]); print('done')", shell.user_ns)
    assert isinstance(recorded.items[0], StreamText)
    figure = recorded.items[1]
    assert isinstance(figure, DisplayData)
    assert base64.b64decode(figure.data["image/png"]).startswith(PNG_SIGNATURE)
    shown_after = PublishedLog(shell)
    run(shell, "pass")  # the post_execute flush has nothing left to show twice
    assert shown_after.calls == []


def test_every_hook_is_restored_when_the_block_raises(ipython_shell: Any) -> None:
    shell = ipython_shell
    publisher, hook = shell.display_pub, shell.displayhook
    before = (sys.stdout, sys.stderr, vars(publisher).copy(), vars(hook).copy())
    with pytest.raises(ZeroDivisionError), record_output(shell) as recorded:
        print("partial")
        1 / 0  # noqa: B018
    after = (sys.stdout, sys.stderr, vars(publisher).copy(), vars(hook).copy())
    assert after[:2] == before[:2]
    assert after[2].keys() == before[2].keys() and after[3].keys() == before[3].keys()
    assert shell.display_pub is publisher and shell.displayhook is hook
    assert recorded.items == [StreamText("stdout", "partial\n")]


def test_hooks_are_restored_after_a_cell_error_inside_a_nested_run(ipython_shell: Any) -> None:
    shell = ipython_shell
    stdout = sys.stdout
    with record_output(shell):
        result = shell.run_cell("raise ValueError('inside')", store_history=False)
    assert isinstance(result.error_in_exec, ValueError)
    assert sys.stdout is stdout
    assert "publish" not in vars(shell.display_pub)
    assert "write_format_data" not in vars(shell.displayhook)


def test_recordings_nest(ipython_shell: Any) -> None:
    with record_output(ipython_shell) as outer:
        print("a")
        with record_output(ipython_shell) as inner:
            run(ipython_shell, "from IPython.display import display; display(1); print('b')")
        print("c")
    assert plain_sequence(inner) == [("DisplayData", "1"), ("stdout", "b\n")]
    assert plain_sequence(outer) == [
        ("stdout", "a\n"),
        ("DisplayData", "1"),
        ("stdout", "b\nc\n"),
    ]


def test_clear_output_item_replays(ipython_shell: Any) -> None:
    shown = PublishedLog(ipython_shell)
    replay_output(ipython_shell, RecordedOutput([ClearOutput(True)]))
    assert shown.calls == [("clear", True)]


def kernel_outputs(client: Any, code: str) -> list[tuple[str, Any]]:
    """The iopub outputs one execute request produced, consecutive stream text joined."""
    outputs: list[tuple[str, Any]] = []

    def collect(message: dict[str, Any]) -> None:
        kind, content = message["header"]["msg_type"], message["content"]
        if kind == "stream":
            if outputs and outputs[-1][0] == content["name"]:
                outputs[-1] = (content["name"], outputs[-1][1] + content["text"])
            else:
                outputs.append((content["name"], content["text"]))
        elif kind in ("display_data", "execute_result"):
            outputs.append(("display", sorted(content["data"])))
        elif kind == "error":
            outputs.append(("error", "\n".join(content["traceback"])))

    reply = client.execute_interactive(code, output_hook=collect, timeout=120)
    assert reply["content"]["status"] == "ok", outputs
    return outputs


@pytest.mark.slow
@pytest.mark.kernel
def test_output_recorded_in_one_kernel_replays_the_same_in_another(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    repository = Path(__file__).resolve().parent.parent
    environment = {
        **os.environ,
        "PYTHONPATH": str(repository),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = tmp_path / "recorded.pickle"
    body = (
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import display, HTML\n"
        "print('one')\n"
        "display(HTML('<i>two</i>'))\n"
        # The kernel buffers each stream apart; flushing makes the live order the call order.
        "import sys; sys.stdout.flush(); print('three', file=sys.stderr); sys.stderr.flush()\n"
        "plt.plot([1, 2, 3])\n"
        "print('four')\n"
    )
    record = (
        "import pickle\n"
        "from nbcache.cells.output import record_output\n"
        "with record_output(get_ipython()) as recorded:\n"
        f"    get_ipython().run_cell({body!r}, store_history=False)\n"
        f"_ = open({str(saved)!r}, 'wb').write(pickle.dumps(recorded))\n"
    )
    replay = (
        "import pickle\n"
        "from nbcache.cells.output import replay_output\n"
        f"replay_output(get_ipython(), pickle.loads(open({str(saved)!r}, 'rb').read()))\n"
    )
    outputs = []
    for code in (record, replay):
        manager, client = start_new_kernel(env=environment, cwd=str(tmp_path))
        try:
            outputs.append(kernel_outputs(client, code))
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    recorded_run, replayed_run = outputs
    assert recorded_run == [
        ("stdout", "one\n"),
        ("display", ["text/html", "text/plain"]),
        ("stderr", "three\n"),
        ("stdout", "four\n"),
        ("display", ["image/png", "text/plain"]),
    ]
    assert replayed_run == recorded_run
