"""Real Jupyter kernels for tests: started with jupyter_client, driven cell by cell, shut down.

Each kernel gets the repository on its ``PYTHONPATH`` and private ``IPYTHONDIR`` and
``JUPYTER_RUNTIME_DIR`` directories; callers add nbcache's settings to its environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

REPOSITORY = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60
CELL_TIMEOUT = 60


@dataclass
class CellOutput:
    """What a cell showed in the notebook: streams, displays, its result and its error."""

    status: str
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    #: The kinds of the messages shown, in order: "stdout", "stderr", "display", "result".
    order: list[str] = field(default_factory=list)


def kernel_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment for a test kernel: this one, the repository importable, private dirs."""
    env = dict(os.environ)
    python_path = [str(REPOSITORY), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env.pop("MPLBACKEND", None)  # let ipykernel choose its inline backend
    env.update(settings)
    return env


class Kernel:
    """One running kernel and its client."""

    def __init__(self, env: dict[str, str]) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        except Exception:
            self.shutdown()
            raise

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> CellOutput:
        messages: list[dict[str, Any]] = []
        reply = self.client.execute_interactive(
            code, output_hook=messages.append, timeout=timeout, allow_stdin=False
        )
        output = CellOutput(status=reply["content"]["status"])
        for message in messages:
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    output.stdout += content["text"]
                else:
                    output.stderr += content["text"]
                output.order.append(content["name"])
            elif kind == "display_data":
                output.displays.append(content["data"])
                output.order.append("display")
            elif kind == "execute_result":
                output.result = content["data"]
                output.order.append("result")
            elif kind == "error":
                output.error = f"{content['ename']}: {content['evalue']}"
        return output

    def run_ok(self, code: str) -> CellOutput:
        """Run a cell that must succeed; fail with its error otherwise."""
        output = self.run(code)
        assert output.status == "ok", f"cell failed: {output.error}\n{output.stderr}\n{code}"
        return output

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=True)
