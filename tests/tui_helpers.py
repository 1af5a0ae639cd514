"""Driving the Retain app in tests: a workspace, the app against a replay server, and waiting for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agent.config import Settings
from tui.app import RetainApp

STATS = "def total(items):\n    return sum(items)\n\n\ndef mean(items):\n    return total(items) / len(items)\n"
FIX_MEAN = 'retain("return total(items) / ")\ndelete("len(items)")\ninsert("max(len(items), 1)")'
FIXED = STATS.replace("/ len(items)", "/ max(len(items), 1)")
SPECULATION = {"method": "ngram", "drafted": 12, "accepted": 9, "mean_accepted_length": 2.5}
SIZE = (110, 36)


def make_workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    (root / "README.md").write_text("# Stats\n")
    return root


def words(text: str) -> int:
    """Whitespace-separated words stand in for a tokenizer: the figures only need to be consistent."""
    return len(text.split())


def make_app(workspace: Path, url: str, **kwargs) -> RetainApp:
    settings = Settings(model="openai/replay-model", api_base=url, tools="text", shell="ask")
    return RetainApp(settings, workspace, count_tokens=words, **kwargs)


async def until(pilot, condition: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    """Let the app run until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


async def send(pilot, prompt: str) -> None:
    """Type a prompt once the model server answers, and send it."""
    await until(pilot, lambda: pilot.app.model is not None, timeout=60, what="the model server (litellm loads)")
    pilot.app.query_one("#prompt").value = prompt
    await pilot.press("enter")
