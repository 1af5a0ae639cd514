"""Model servers as child processes: the embedded one for a run (`--model embedded`), and the wait until any
server started this way answers.

The embedded server is `python -m decoding.serving.server --host 127.0.0.1 --port PORT`; it is ready when
`GET /v1/models` answers, and that answer names the model to ask for.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

SERVER_COMMAND = (sys.executable, "-m", "decoding.serving.server", "--host", "127.0.0.1", "--port", "{port}")


def _die_with_parent():
    """On Linux, a function for the child to call after fork: SIGTERM when the starting thread dies.

    So a server is not left running when the agent is killed or crashes. prctl is looked up here, in the
    parent, so the child does no library loading between fork and exec.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def wait_for_server(process: subprocess.Popen, url: str, timeout: float, interval: float = 0.2) -> bytes | None:
    """Poll `url` until it answers 200: its body; None when the process exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return response.read()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(interval)
    return None


class EmbeddedServerError(Exception):
    """The server did not start or did not become ready; the message carries the end of its log."""


class EmbeddedServerTimeout(EmbeddedServerError):
    """The server was still starting when its time ran out."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedServer:
    """`with EmbeddedServer() as server:` gives `server.api_base` and `server.model_id`, then stops it."""

    def __init__(self, command: Sequence[str] | None = None, startup_timeout: float = 600) -> None:
        self.port = free_port()
        self.command = [part.format(port=self.port) for part in command or SERVER_COMMAND]
        self.startup_timeout = startup_timeout
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        self.model_id: str | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- the server's log, kept for its error messages
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
        body = wait_for_server(self._process, f"{self.api_base}/models", self.startup_timeout)
        if body is not None:
            try:
                models = json.loads(body).get("data") or [{}]
            except (ValueError, AttributeError):
                models = [{}]
            self.model_id = models[0].get("id") or "embedded"
            return
        exited = self._process.poll() is not None  # else it is still starting: stopped below, so ask first
        self.stop()
        if exited:
            raise EmbeddedServerError(
                f"the embedded server exited with code {self._process.returncode} before it was ready "
                f"({' '.join(self.command)}):\n{self.log_tail()}"
            )
        raise EmbeddedServerTimeout(
            f"the embedded server did not answer {self.api_base}/models within {self.startup_timeout:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log_tail(self, limit: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")[-limit:]
