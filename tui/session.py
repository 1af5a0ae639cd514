"""A conversation in a workspace, kept as an agent transcript so it can be listed and resumed, and the
figures the status bar shows about it.

Each prompt runs the agent loop (agent/loop.py) on the session's RunState; the transcript holds every
event, so `RunState.from_events` rebuilds the conversation exactly as `agent run --resume` does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.loop import RunState, first_messages
from agent.transcript import Redactor, Transcript, read_events
from tools.formats import Format
from tools.state import sessions_dir
from tools.workspace import Workspace

DEFAULT_CHARS_PER_TOKEN = 4.0  # until a finished turn tells the real ratio


@dataclass
class SessionInfo:
    session_id: str
    path: Path
    title: str  # the first line of the first prompt
    started: float  # epoch seconds


def list_sessions(workspace: Path, limit: int = 20) -> list[SessionInfo]:
    """This workspace's sessions, newest first (only each transcript's first line is read)."""
    found = []
    folder = sessions_dir()
    paths = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                start = json.loads(handle.readline())
        except (OSError, ValueError):
            continue
        if start.get("type") != "start" or start.get("workspace") != str(workspace):
            continue
        title = (start.get("task") or "").strip().splitlines()
        found.append(SessionInfo(start["run_id"], path, title[0] if title else "(empty)", start.get("time", 0.0)))
        if len(found) == limit:
            break
    return found


class Session:
    """The conversation: created on the first prompt, or loaded from a transcript to carry on."""

    def __init__(self, workspace: Workspace, session_id: str | None = None) -> None:
        self.workspace = workspace
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.path = sessions_dir() / f"{self.session_id}.jsonl"
        self.state: RunState | None = None
        self.transcript: Transcript | None = None

    @classmethod
    def resume(cls, workspace: Workspace, info: SessionInfo) -> tuple[Session, list[dict]]:
        """The session to carry on, and its events, to show the conversation so far."""
        session = cls(workspace, info.session_id)
        session.path = info.path
        events = read_events(info.path)
        session.state = RunState.from_events(events)
        return session, events

    def add_prompt(self, prompt: str, model: str, edit_format: Format, shown: str | None = None) -> RunState:
        """Put the user's prompt into the conversation (opening the transcript as needed), a new one's system prompt
        teaching `edit_format`; `shown` is the prompt as the user typed it, when the model is told more."""
        if self.transcript is None:
            self.transcript = Transcript(self.path, Redactor())
            resumed = self.state is not None
            task = self.state.task if resumed else prompt
            self.transcript.write(
                "start", run_id=self.session_id, task=task, model=model, workspace=str(self.workspace.root),
                edit_format=edit_format.name, resumed=resumed, front_end="tui",
            )
        self.transcript.write("prompt", text=shown or prompt)
        if self.state is None:
            self.state = RunState(self.session_id, prompt)
            for message in first_messages(prompt, self.workspace, edit_format):
                self._add(message)
            return self.state
        last = self.state.messages[-1] if self.state.messages else None
        if last is not None and last["role"] == "user":  # roles must alternate for many chat templates
            merged = {"role": "user", "content": f"{last['content']}\n\n{prompt}"}
            self.state.messages[-1] = merged
            self.transcript.write("message", message=merged, amends_last=True)
        else:
            self._add({"role": "user", "content": prompt})
        return self.state

    def _add(self, message: dict) -> None:
        self.state.messages.append(message)
        self.transcript.write("message", message=message)

    def close(self) -> None:
        if self.transcript is not None:
            self.transcript.close()


@dataclass
class Stats:
    """Decoding and editing figures for the session: what the status bar shows.

    Tokens/s while a reply streams is estimated from its characters and the characters-per-token ratio of
    the finished turns; when the turn ends it is the server's completion tokens over the streaming time.
    Acceptance and mean accepted length come from the server's `usage.speculation` (none from servers that
    do not report it); tokens saved are those of applied edit scripts against rewriting each file whole.
    """

    model: str = ""
    drafted: int = 0
    accepted: int = 0
    completion_tokens: int = 0
    decode_forwards: float = 0.0  # sum over turns of completion tokens / mean accepted length
    speculated_tokens: int = 0  # completion tokens of the turns that reported speculation
    script_tokens: int = 0
    whole_file_tokens: int = 0
    chars: int = 0  # characters of finished replies
    tokens_per_s: float | None = None
    stream_first: float | None = None  # when the current reply's first text arrived
    stream_chars: int = 0

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.completion_tokens if self.completion_tokens and self.chars else DEFAULT_CHARS_PER_TOKEN

    def text(self, piece: str, now: float) -> None:
        if self.stream_first is None:
            self.stream_first = now
        self.stream_chars += len(piece)

    def live_rate(self, now: float) -> float | None:
        if self.stream_first is None or now - self.stream_first < 0.25:
            return None
        return self.stream_chars / self.chars_per_token / (now - self.stream_first)

    def reply_stopped(self) -> None:
        """The reply was cut short: no usage comes for it, and the live estimate ends."""
        self.stream_first, self.stream_chars = None, 0

    def turn(self, usage: dict, now: float) -> None:
        completion = int(usage.get("completion_tokens") or 0)
        if self.stream_first is not None and now > self.stream_first and completion:
            self.tokens_per_s = completion / (now - self.stream_first)
        if completion:
            self.completion_tokens += completion
            self.chars += self.stream_chars
        speculation = usage.get("speculation") or {}
        if speculation.get("drafted") is not None:
            self.drafted += int(speculation["drafted"])
            self.accepted += int(speculation.get("accepted") or 0)
        mean = speculation.get("mean_accepted_length")
        if mean and completion:
            self.decode_forwards += completion / mean
            self.speculated_tokens += completion
        self.stream_first, self.stream_chars = None, 0

    def edit(self, record: dict) -> None:
        """An applied edit's token counts (from the loop's edit record; none without a tokenizer)."""
        if record.get("tokens_saved") is not None:
            self.script_tokens += record["output_tokens"]
            self.whole_file_tokens += record["whole_file_tokens"]

    def line(self, now: float) -> str:
        live = self.live_rate(now)
        rate = f"~{live:.1f} tok/s" if live is not None else (
            f"{self.tokens_per_s:.1f} tok/s" if self.tokens_per_s is not None else "– tok/s"
        )
        accept = f"accept {self.accepted / self.drafted:.0%}" if self.drafted else "accept –"
        mean = f"mean run {self.speculated_tokens / self.decode_forwards:.2f}" if self.decode_forwards else "mean run –"
        if self.whole_file_tokens:
            saved = self.whole_file_tokens - self.script_tokens
            share = saved / self.whole_file_tokens
            edits = f"saved {saved:,} tok ({share:.0%} vs rewrites)"
        else:
            edits = "saved –"
        return f" {self.model or 'connecting …'} │ {rate} │ {accept} │ {mean} │ {edits}"

