"""Where Retain keeps what outlives a run: the undo journal, `agent run` transcripts, the app's sessions."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """$RETAIN_STATE_DIR, else $XDG_STATE_HOME/retain, else ~/.local/state/retain; the journal lives at its top."""
    if env := os.environ.get("RETAIN_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "retain"


def runs_dir() -> Path:
    """`agent run` transcripts, one JSONL file per run."""
    return state_dir() / "runs"


def sessions_dir() -> Path:
    """The app's conversations, one JSONL transcript per session."""
    return state_dir() / "sessions"
