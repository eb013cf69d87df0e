"""Record what a cell shows while it runs, in order, and replay it later in any kernel.

:func:`record_output` tees, never swallows: everything still reaches the user live. It
records text written to ``sys.stdout``/``sys.stderr``, every ``display()`` (``display_data``
and ``update_display_data``, with ``transient`` display ids), ``clear_output`` and the value
the display hook shows (:class:`ExecuteResult`). It hooks IPython's public objects of the
shell it is given: ``shell.display_pub`` (``publish``, ``clear_output``), ``shell.displayhook``
(``write_output_prompt``, ``write_format_data``) and ``sys.stdout``/``sys.stderr``, so it works
alike in a terminal ``InteractiveShell`` and in ipykernel (ZMQ publisher, ``OutStream``).
Everything is put back on exit, also when the block raises.

Not recorded: output written straight to file descriptors 1 and 2 (C extensions,
subprocesses not read through Python), and displays a hook reroutes (an ipywidgets ``Output``
widget) are recorded as plain displays.

Inline matplotlib figures. The inline backend shows the figures a cell drew from a
``post_execute`` hook, after the cell's code, which would be outside the recording: the magic
runs the body with ``exec`` (:mod:`nbcache.cells.execution`), which triggers no event. So
:func:`record_output` shows them itself (:func:`flush_inline_figures`) when the block ends
normally, and they are recorded in place. A cell that shows a result (``Out``) shows its
figures after it, in a plain run; :func:`hold_figures` renders them without showing them, for
:func:`show_after_cell` to show once the result is out (and for
:attr:`RecordedOutput.after_result`, so a replay shows them there too).

A :class:`RecordedOutput` holds only str, bytes, int, float, bool, None, dicts and lists
inside its items, so plain ``pickle`` stores it; consecutive writes to one stream are joined.
Image data is kept base64-encoded, as Jupyter sends it.
"""

from __future__ import annotations

import base64
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

#: Mime types whose payload is text; anything else given as bytes is stored base64-encoded.
_TEXT_MIME_PREFIXES = ("text/", "application/json", "application/javascript", "image/svg+xml")


@dataclass(frozen=True)
class StreamText:
    """Text written to ``stdout`` or ``stderr`` (``name``)."""

    name: str
    text: str


@dataclass(frozen=True)
class DisplayData:
    """One ``display_data`` (or, with ``update``, ``update_display_data``) message."""

    data: dict[str, Any]
    metadata: dict[str, Any]
    transient: dict[str, Any] = field(default_factory=dict)
    update: bool = False


@dataclass(frozen=True)
class ExecuteResult:
    """The value the display hook showed (a final expression), as a mime bundle."""

    data: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ClearOutput:
    """A ``clear_output(wait)`` call."""

    wait: bool


OutputItem = StreamText | DisplayData | ExecuteResult | ClearOutput


@dataclass
class RecordedOutput:
    """What a block showed, in order. Complete once the recording block has exited.

    ``after_result``: what shows after the cell's result (its figures, in a cell that ends
    in an expression), see :func:`hold_figures`.
    """

    items: list[OutputItem] = field(default_factory=list)
    after_result: list[OutputItem] = field(default_factory=list)

    def text(self, name: str = "stdout") -> str:
        """All text written to one stream."""
        return "".join(i.text for i in self.items if isinstance(i, StreamText) and i.name == name)


class _Recorder:
    """Collects items from any thread; writes made while IPython itself prints are skipped."""

    def __init__(self, recorded: RecordedOutput) -> None:
        self.recorded = recorded
        self.lock = threading.Lock()
        self.local = threading.local()
        self.stream_name: str | None = None
        self.stream_parts: list[str] = []

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Skip stream writes while a display publisher or hook prints its own rendering."""
        depth = getattr(self.local, "depth", 0)
        self.local.depth = depth + 1
        try:
            yield
        finally:
            self.local.depth = depth

    def add_text(self, name: str, text: str) -> None:
        if getattr(self.local, "depth", 0) or not text:
            return
        with self.lock:
            if name != self.stream_name:
                self._close_text()
                self.stream_name = name
            self.stream_parts.append(text)

    def add(self, item: OutputItem) -> None:
        with self.lock:
            self._close_text()
            self.recorded.items.append(item)

    def finish(self) -> None:
        with self.lock:
            self._close_text()

    def _close_text(self) -> None:
        if self.stream_name is not None and self.stream_parts:
            self.recorded.items.append(StreamText(self.stream_name, "".join(self.stream_parts)))
        self.stream_name = None
        self.stream_parts = []


class _TeeStream:
    """Writes through to the real stream, then records; everything else is the real stream's."""

    def __init__(self, target: IO[str], name: str, recorder: _Recorder) -> None:
        self._target = target
        self._name = name
        self._recorder = recorder

    def write(self, text: str) -> int:
        written = self._target.write(text)
        if isinstance(text, str):
            self._recorder.add_text(self._name, text)
        return written

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._target, attribute)


@contextmanager
def record_output(shell: Any) -> Iterator[RecordedOutput]:
    """Record everything shown inside the block while still showing it.

    ``shell`` is the running ``InteractiveShell`` (or ipykernel's ``ZMQInteractiveShell``).
    The yielded :class:`RecordedOutput` is complete after the block; inline matplotlib
    figures drawn in the block are shown (and recorded) before it ends.
    """
    recorded = RecordedOutput()
    recorder = _Recorder(recorded)
    undo: list[Callable[[], None]] = []
    try:
        _hook_display_publisher(shell.display_pub, recorder, undo)
        _hook_display_hook(shell.displayhook, recorder, undo)
        _hook_streams(recorder, undo)
        yield recorded
        flush_inline_figures()
    finally:
        for step in reversed(undo):
            step()
        recorder.finish()


def replay_output(shell: Any, recorded: RecordedOutput, *, show_result: bool = True) -> None:
    """Show recorded output again, in order, through ``shell``'s streams and publisher.

    An :class:`ExecuteResult` is published as display data (it shows the same, without an
    ``Out[n]`` prompt) unless ``show_result`` is False, for a caller that returns the value
    itself as the cell's result.
    """
    publisher = shell.display_pub
    previous: IO[str] | None = None
    for item in recorded.items:
        if isinstance(item, StreamText):
            stream = sys.stderr if item.name == "stderr" else sys.stdout
            if previous is not None and previous is not stream:
                # A kernel buffers each stream apart: flush to keep the recorded order.
                previous.flush()
            stream.write(item.text)
            previous = stream
        elif isinstance(item, DisplayData):
            publisher.publish(
                data=dict(item.data),
                metadata=dict(item.metadata),
                transient=dict(item.transient) or None,
                update=item.update,
            )
        elif isinstance(item, ExecuteResult):
            if show_result:
                publisher.publish(data=dict(item.data), metadata=dict(item.metadata))
        else:
            publisher.clear_output(wait=item.wait)
    sys.stdout.flush()
    sys.stderr.flush()


def hold_figures(shell: Any) -> list[OutputItem]:
    """The figures the inline matplotlib backend holds, rendered but not shown (and closed,
    as showing them would)."""
    held: list[OutputItem] = []

    def hold(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> None:
        held.append(
            DisplayData(
                data=plain_bundle(data, mime=True),
                metadata=plain_bundle(metadata, mime=False),
                transient=plain_bundle(kwargs.get("transient"), mime=False),
                update=bool(kwargs.get("update", False)),
            )
        )

    undo: list[Callable[[], None]] = []
    _replace_method(shell.display_pub, "publish", hold, undo)
    try:
        flush_inline_figures()
    finally:
        for step in reversed(undo):
            step()
    return held


def show_after_cell(shell: Any, items: list[OutputItem]) -> None:
    """Show ``items`` once the running cell has finished, after its result (``Out``).

    IPython's display hook shows the result when the cell's code is done; ``post_execute``
    runs after that.
    """
    if not items:
        return

    def show() -> None:
        shell.events.unregister("post_execute", show)
        replay_output(shell, RecordedOutput(list(items)))

    shell.events.register("post_execute", show)


def flush_inline_figures() -> None:
    """Show the figures the inline matplotlib backend is holding for ``post_execute``.

    Does nothing unless matplotlib is already imported and its backend is the inline one.
    """
    backend_inline = sys.modules.get("matplotlib_inline.backend_inline")
    matplotlib = sys.modules.get("matplotlib")
    if backend_inline is None or matplotlib is None:
        return
    # dict.get avoids rcParams resolving an automatic backend (which may import a GUI).
    backend = dict.get(matplotlib.rcParams, "backend", "")
    if isinstance(backend, str) and "inline" in backend:
        backend_inline.flush_figures()


def plain_bundle(bundle: dict[Any, Any] | None, *, mime: bool) -> dict[str, Any]:
    """A JSON-like copy of a mime bundle or metadata dict (binary payloads base64-encoded)."""
    if not bundle:
        return {}
    plain: dict[str, Any] = {}
    for key, value in bundle.items():
        if mime and isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            is_text = str(key).startswith(_TEXT_MIME_PREFIXES)
            plain[str(key)] = raw.decode() if is_text else base64.b64encode(raw).decode("ascii")
        else:
            plain[str(key)] = _plain(value)
    return plain


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _replace_method(owner: Any, name: str, wrapper: Any, undo: list[Callable[[], None]]) -> None:
    """Set ``owner.name = wrapper`` on the instance; undo puts back exactly what was there."""
    had_own = name in vars(owner)
    previous = vars(owner).get(name)
    setattr(owner, name, wrapper)

    def put_back() -> None:
        if had_own:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)

    undo.append(put_back)


def _hook_display_publisher(publisher: Any, recorder: _Recorder, undo: list[Any]) -> None:
    publish = publisher.publish
    clear_output = publisher.clear_output

    def recording_publish(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> Any:
        with recorder.quiet():
            result = publish(data, metadata, *args, **kwargs)
        recorder.add(
            DisplayData(
                data=plain_bundle(data, mime=True),
                metadata=plain_bundle(metadata, mime=False),
                transient=plain_bundle(kwargs.get("transient"), mime=False),
                update=bool(kwargs.get("update", False)),
            )
        )
        return result

    def recording_clear_output(wait: bool = False) -> Any:
        with recorder.quiet():
            result = clear_output(wait)
        recorder.add(ClearOutput(bool(wait)))
        return result

    _replace_method(publisher, "publish", recording_publish, undo)
    _replace_method(publisher, "clear_output", recording_clear_output, undo)


def _hook_display_hook(hook: Any, recorder: _Recorder, undo: list[Any]) -> None:
    write_output_prompt = hook.write_output_prompt
    write_format_data = hook.write_format_data

    def recording_prompt() -> Any:
        with recorder.quiet():
            return write_output_prompt()

    def recording_format_data(format_dict: Any, md_dict: Any = None) -> Any:
        with recorder.quiet():
            result = write_format_data(format_dict, md_dict)
        bundle = plain_bundle(format_dict, mime=True)
        recorder.add(ExecuteResult(bundle, plain_bundle(md_dict, mime=False)))
        return result

    _replace_method(hook, "write_output_prompt", recording_prompt, undo)
    _replace_method(hook, "write_format_data", recording_format_data, undo)


def _hook_streams(recorder: _Recorder, undo: list[Any]) -> None:
    original_out, original_err = sys.stdout, sys.stderr
    sys.stdout = _TeeStream(original_out, "stdout", recorder)
    sys.stderr = _TeeStream(original_err, "stderr", recorder)

    def put_back() -> None:
        sys.stdout, sys.stderr = original_out, original_err

    undo.append(put_back)
