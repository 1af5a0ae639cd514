"""The Retain app: a conversation with the agent in the current directory, every edit shown before it is
written, and the decoding figures live in the status bar.

The agent loop (agent/loop.py) runs in a thread; its hooks post messages to the app (text as it streams,
turns, tool calls) or ask through a modal screen and wait for the answer (edits, commands). Nothing slow
runs before the first frame: the model server is reached (or the embedded one started) in a thread too.
Without a model the app opens on the setup screen (what this machine has running, provider keys, the demo);
`/model` brings it back to switch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header

from agent.client import Model, ModelUnavailable
from agent.config import (
    ConfigError,
    Settings,
    add_agent_options,
    load_settings,
    require_model,
    save_model,
    user_config_path,
)
from agent.connection import FIX_UNREACHABLE, open_model
from agent.detect import Choice
from agent.loop import Agent, EditProposal, Hooks, Outcome, RunState
from agent.protocol import Action
from decoding.engine.tokenizer import count_tokens
from decoding.serving.launch import EmbeddedServer, EmbeddedServerError
from tools.command_line import parse_arguments
from tools.exit_codes import ExitCode
from tools.formats import agent_format
from tools.journal import Journal, UndoRefused
from tools.workspace import OK, ToolResult, Workspace
from tui.screens import (
    CommandApproval,
    EditApproval,
    FilePicker,
    ModelSetup,
    SessionPicker,
    save_targets,
    workspace_files,
)
from tui.session import Session, SessionInfo, Stats, list_sessions
from tui.widgets import AssistantMessage, Note, PromptInput, StatusBar, ToolCall, UserMessage, diff_counts

WELCOME = (
    "Ask for a change in this workspace. Edits are shown as diffs before they are written "
    "(y approve, n reject); ctrl+z undoes the last one."
)
OUTCOME_ICONS = {"done": "●", "failed": "✗", "budget": "◐", "unavailable": "✗", "cancelled": "■"}
NO_MODEL = "No model is configured. Choose one; it is saved to an agent.toml, and /model changes it later."
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


# what the connecting and agent threads post to the app (Textual messages may be dataclasses)


@dataclass
class Connecting(Message):
    line: str


@dataclass
class Connected(Message):
    model: Model
    server: EmbeddedServer | None


@dataclass
class ConnectFailed(Message):
    reason: str


@dataclass
class TextArrived(Message):
    text: str
    at: float


class ShowText(Message):
    """Time to show the reply text received since the last time (at most 20 times a second)."""


@dataclass
class TurnEnded(Message):
    usage: dict
    at: float


@dataclass
class ToolFinished(Message):
    action: Action
    result: ToolResult
    edit: dict | None


@dataclass
class RunEnded(Message):
    outcome: Outcome


class RetainApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "Retain"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+z", "undo", "Undo edit", priority=True),
        Binding("ctrl+t", "toggle_auto_approve", "Auto-approve"),
        Binding("ctrl+f", "pick_file", "Insert file", key_display="@"),
        Binding("ctrl+r", "retry", "Retry"),  # shown only after the model server failed a run
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    auto_approve: reactive[bool] = reactive(False)

    def __init__(
        self,
        settings: Settings,
        workspace: Path,
        *,
        resume: str | None = None,
        list_earlier: bool = True,
        count_tokens: Callable[[str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        setup_note: str = NO_MODEL,
    ) -> None:
        """`count_tokens` counts edit scripts and files for the tokens-saved figure; `clock` times decoding;
        `setup_note` says why the setup screen opens when `settings` names no model."""
        super().__init__()
        self.settings = settings
        self.setup_note = setup_note
        self.workspace = Workspace(workspace)
        self.session = Session(self.workspace)
        self.resume_id = resume
        self.list_earlier = list_earlier
        self.count_tokens = count_tokens
        self.clock = clock
        self.stats = Stats()
        self.model: Model | None = None
        self.server: EmbeddedServer | None = None
        self.connecting: tuple[str, float] | None = None  # the progress line and when connecting began
        self.cancel: threading.Event | None = None
        self.running = False
        self.closed = False
        self.pending: str | None = None  # a prompt sent before the model server answered
        self.can_retry = False  # the last run ended because the model server failed; ctrl+r runs it again
        self.working_since: float | None = None  # when the prompt being worked on was sent
        self.applied: list[Path] = []  # files of this session's applied edits, oldest first, for ctrl+z
        self.for_model: list[str] = []  # what the user did between prompts, told with the next one
        self.reply: AssistantMessage | None = None
        self.unshown: list[str] = []  # reply text received but not yet in the Markdown widget
        self.conversation = VerticalScroll(Note(WELCOME, id="welcome"), id="conversation")
        self.prompt = PromptInput(placeholder="Ask for a change …  (@ inserts a file path)", id="prompt")
        self.status_bar = StatusBar(id="status")

    # -- layout and start ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield self.conversation
        yield self.prompt
        yield self.status_bar
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.workspace.root.name
        self.conversation.anchor()
        if self.settings.model:
            self.start_connecting()
        self.refresh_status()
        self.set_interval(0.25, self.refresh_status)
        earlier = list_sessions(self.workspace.root) if self.list_earlier or self.resume_id else []
        if self.resume_id:
            found = [info for info in earlier if info.session_id == self.resume_id]
            if found:
                self.call_after_refresh(self.resume, found[0])
            else:
                self.notify(f"no session {self.resume_id} in this workspace", severity="error")
        elif earlier:
            self.push_screen(SessionPicker(earlier), callback=self.resume)
        if not self.settings.model:
            self.open_setup(self.setup_note)
        self.prompt.focus()

    def start_connecting(self) -> None:
        self.connecting = ("connecting to the model server …", self.clock())
        self.refresh_status()
        self.connect()

    # -- choosing a model --------------------------------------------------------------------------

    def open_setup(self, note: str) -> None:
        targets = save_targets(self.workspace.root, user_config_path())
        self.push_screen(ModelSetup(note, targets), callback=self.model_chosen)

    async def model_chosen(self, answer: tuple[Choice, Path] | None) -> None:
        """Save the choice, then connect to it (after stopping the embedded server a previous choice started)."""
        if answer is None:
            if not self.settings.model:
                await self.add(Note("no model chosen: type /model to choose one", classes="error"))
            return
        choice, path = answer
        try:
            save_model(path, choice.model, choice.api_base, allow_demo_model=choice.demo)
        except OSError as exc:
            self.notify(f"could not save to {path}: {exc}; using {choice.model} for this session", severity="error")
        else:
            await self.add(Note(f"model {choice.model}, saved to {path} (/model changes it)", classes="setup"))
        if self.server is not None:
            server, self.server = self.server, None
            await asyncio.to_thread(server.stop)
        self.settings.model, self.settings.api_base = choice.model, choice.api_base
        self.settings.allow_demo_model = choice.demo
        self.model = None
        self.stats.model = ""
        self.start_connecting()

    @work(thread=True, group="connect")
    def connect(self) -> None:
        """Reach the model server (or start the embedded one) without holding up the interface."""
        try:
            model, server = open_model(self.settings, lambda line: self.post_message(Connecting(line)))
            model.takes_prediction  # noqa: B018 -- imports litellm now rather than on the first prompt
        except (ModelUnavailable, EmbeddedServerError) as exc:
            self.post_message(ConnectFailed(str(exc)))
            return
        if self.closed and server is not None:  # the app was closed while the server started
            server.stop()
            return
        self.post_message(Connected(model, server))

    def on_connecting(self, message: Connecting) -> None:
        self.connecting = (message.line, self.connecting[1] if self.connecting else self.clock())
        self.refresh_status()

    def on_connected(self, message: Connected) -> None:
        self.model, self.server = message.model, message.server
        self.connecting = None
        self.stats.model = message.model.name
        self.refresh_status()
        if self.pending is not None:
            prompt, self.pending = self.pending, None
            self.start_run(prompt)

    async def on_connect_failed(self, message: ConnectFailed) -> None:
        self.connecting = None
        self.pending = None
        self.working_since = None
        self.stats.model = f"{self.settings.model}: not connected"
        self.refresh_status()
        await self.add(Note(f"✗ {message.reason}\n{FIX_UNREACHABLE}", classes="error"))

    def refresh_status(self) -> None:
        status = self.status_bar
        if not status.is_attached:  # the app is closing
            return
        now = self.clock()
        working = ""
        if self.working_since is not None:  # from the moment a prompt is sent until its run ends
            elapsed = now - self.working_since
            working = f" {SPINNER[int(elapsed * 4) % len(SPINNER)]} working {elapsed:.0f} s │"
        if self.connecting:
            line, since = self.connecting
            status.update(f"{working} {line} ({now - since:.0f} s)")
            return
        if not self.settings.model:
            status.update(" no model: /model chooses one")
            return
        auto = " │ auto-approve" if self.auto_approve else ""
        status.update(working + self.stats.line(now) + auto)

    def watch_auto_approve(self) -> None:
        if self.is_mounted:
            self.refresh_status()

    async def on_unmount(self) -> None:
        self.closed = True
        if self.cancel is not None:
            self.cancel.set()
        if self.server is not None:
            self.server.stop()
        self.session.close()

    # -- sessions ----------------------------------------------------------------------------------

    async def resume(self, info: SessionInfo | None) -> None:
        if info is None:
            return
        self.session, events = Session.resume(self.workspace, info)
        taught = next((e.get("edit_format") for e in events if e["type"] == "start"), None)
        if taught and taught != self.settings.edit_format:  # the session's conversation teaches its own format
            self.settings.edit_format = taught
            self.notify(f"this session edits with --edit-format {taught}, as its conversation teaches")
        for event in events:
            kind = event["type"]
            if kind == "prompt":
                await self.add(UserMessage(event["text"]))
            elif kind == "message" and event["message"]["role"] == "assistant" and event["message"].get("content"):
                await self.add(AssistantMessage(event["message"]["content"]))
            elif kind == "tool":
                call = event["call"]
                await self.add(Note(f"{call['status']}: {call['tool']} {call['summary']}", classes="past-tool"))
            elif kind == "end":
                await self.add(Note(f"{OUTCOME_ICONS.get(event['status'], '·')} {event['reason']}", classes="outcome"))
        self.notify(f"resumed session {info.session_id}")

    # -- prompts and runs --------------------------------------------------------------------------

    @on(PromptInput.Submitted, "#prompt")
    async def send_prompt(self, event: PromptInput.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        if self.running or self.pending is not None:
            self.notify("the model is still working; esc stops it", severity="warning")
            return
        event.input.clear()
        if prompt == "/model":
            self.open_setup(f"The model now: {self.settings.model or 'none'}. Choose another.")
            return
        await self.add(UserMessage(prompt))
        if self.model is None:
            if self.connecting is None:
                await self.add(Note("✗ no model server: see the message above, or /model", classes="error"))
                return
            self.pending = prompt
        else:
            self.start_run(prompt)
        self.working_since = self.clock()
        self.refresh_status()

    def start_run(self, prompt: str) -> None:
        text = "\n".join([*self.for_model, prompt])
        self.for_model.clear()
        edit_format = agent_format(self.settings.edit_format)
        self.launch(self.session.add_prompt(text, self.model.name, edit_format, shown=prompt))

    def launch(self, state: RunState) -> None:
        """Run the agent on the conversation as it stands (a new prompt added, or a failed run again)."""
        self.set_retry(False)
        self.cancel = threading.Event()
        self.running = True
        hooks = Hooks(
            on_text=lambda text: self.post_message(TextArrived(text, self.clock())),
            on_turn=lambda reply: self.post_message(TurnEnded(reply.usage, self.clock())),
            on_tool=lambda action, result: self._tool_finished(state, action, result),
            approve_edit=self._approve_edit,
            approve_command=self._confirm_command,
            cancel=self.cancel,
        )
        agent = Agent(self.model, self.workspace, self.session.transcript, self.settings, hooks, self.count_tokens)
        self.run_agent(agent, state)

    @work(thread=True, group="agent")
    def run_agent(self, agent: Agent, state: RunState) -> None:
        try:
            outcome = agent.run(state)
        except Exception as exc:  # shown in the conversation rather than ending the app
            outcome = Outcome("failed", f"{type(exc).__name__}: {exc}")
        self.post_message(RunEnded(outcome))

    # hooks, called in the agent's thread

    def _tool_finished(self, state: RunState, action: Action, result: ToolResult) -> None:
        edit = state.edits[-1] if action.tool == "edit" and state.edits else None
        self.post_message(ToolFinished(action, result, edit))

    def _approve_edit(self, proposal: EditProposal) -> bool:
        if self.auto_approve:
            return True
        answer = self.call_from_thread(self._ask, EditApproval(proposal))
        if answer == "always":
            self.call_from_thread(setattr, self, "auto_approve", True)
        if answer == "stop" and self.cancel is not None:
            self.cancel.set()
        return answer in ("approve", "always")

    def _confirm_command(self, command: str) -> bool:
        return bool(self.call_from_thread(self._ask, CommandApproval(command)))

    async def _ask(self, screen: Screen):
        answered = asyncio.get_running_loop().create_future()
        await self.push_screen(screen, callback=answered.set_result)
        return await answered

    # what the agent's thread posted

    async def on_text_arrived(self, message: TextArrived) -> None:
        if self.cancel is not None and self.cancel.is_set():
            return  # already stopped: text still queued is not shown
        self.stats.text(message.text, message.at)
        if self.reply is None:
            self.reply = AssistantMessage()
            await self.add(self.reply)
        if not self.unshown:  # batched: rendering Markdown on every token would fall behind a fast model
            self.set_timer(1 / 20, lambda: self.post_message(ShowText()))
        self.unshown.append(message.text)

    async def on_show_text(self, message: ShowText) -> None:
        await self.show_text()

    async def show_text(self) -> None:
        if self.reply is not None and self.unshown:
            text = "".join(self.unshown)
            self.unshown.clear()
            await self.reply.append(text)

    async def on_turn_ended(self, message: TurnEnded) -> None:
        self.stats.turn(message.usage, message.at)
        await self.end_reply()
        self.refresh_status()

    async def on_tool_finished(self, message: ToolFinished) -> None:
        await self.end_reply()
        result = message.result
        await self.add(ToolCall(message.action, result))
        if message.edit is not None and result.status == OK:
            self.stats.edit(message.edit)
        if message.action.tool == "edit" and result.status == OK and result.data.get("written"):
            self.applied.append(self.workspace.resolve(result.data["file"]))
        self.refresh_status()

    async def on_run_ended(self, message: RunEnded) -> None:
        await self.end_reply()
        outcome = message.outcome
        icon = OUTCOME_ICONS.get(outcome.status, "·")
        retry = "\n(the conversation is kept: ctrl+r tries again)" if outcome.status == "unavailable" else ""
        await self.add(Note(f"{icon} {outcome.status}: {outcome.reason}{retry}", classes=f"outcome {outcome.status}"))
        self.set_retry(bool(retry))
        self.running = False
        self.working_since = None
        self.refresh_status()

    async def end_reply(self) -> None:
        await self.show_text()
        self.reply = None

    async def add(self, widget) -> None:
        await self.conversation.mount(widget)

    # -- actions -----------------------------------------------------------------------------------

    async def action_stop(self) -> None:
        """Stop the model: at once in the interface, and in the loop at its next chunk or between turns."""
        if not self.running or self.cancel is None or self.cancel.is_set():
            return
        self.cancel.set()
        self.stats.reply_stopped()
        await self.end_reply()
        self.refresh_status()

    def set_retry(self, possible: bool) -> None:
        self.can_retry = possible
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Retry is offered (and in the footer) only after a run the model server failed."""
        return self.can_retry if action == "retry" else True

    async def action_retry(self) -> None:
        if self.running or not self.can_retry or self.model is None or self.session.state is None:
            return
        await self.add(Note("↻ trying again", classes="outcome"))
        self.working_since = self.clock()
        self.launch(self.session.state)
        self.refresh_status()

    async def action_undo(self) -> None:
        if self.running:
            self.notify("the model is working; esc stops it before an undo", severity="warning")
            return
        if not self.applied:
            self.notify("no edit of this session to undo", severity="warning")
            return
        path = self.applied[-1]
        try:
            restored, diff = Journal().undo(path)
        except UndoRefused as exc:
            self.notify(str(exc), severity="error")
            return
        self.applied.pop()
        name = self.workspace.rel(restored)
        added, removed = diff_counts(diff)
        await self.add(Note(f"↶ undid the last edit of {name} (+{added} −{removed})", classes="undo"))
        self.for_model.append(f"(I undid your last edit of {name}; it is back as it was before that edit.)")

    def action_toggle_auto_approve(self) -> None:
        self.auto_approve = not self.auto_approve
        self.notify("edits apply without asking" if self.auto_approve else "each edit is shown for approval")

    def on_prompt_input_pick_file(self, message: PromptInput.PickFile) -> None:
        self.action_pick_file()

    @work(group="picker", exclusive=True)
    async def action_pick_file(self) -> None:
        paths = await asyncio.to_thread(lambda: workspace_files(self.workspace.root, self.workspace.glob("**/*").paths))
        chosen = await self.push_screen_wait(FilePicker(paths))
        if chosen:
            self.prompt.insert_text_at_cursor(chosen + " ")
        self.prompt.focus()


EPILOG = """\
keys: enter send · esc stop the model · y / n approve or reject an edit · ctrl+t auto-approve
      ctrl+z undo the last edit · @ insert a file path · ctrl+r retry after a server failure · ctrl+q quit

The workspace is the current directory. Model settings are those of agent run (--model, RETAIN_MODEL,
agent.toml); with none, the app opens on a setup screen listing the model servers running on this
machine, provider keys in the environment and the embedded demo, and saves the choice to agent.toml;
/model switches later. Sessions are kept in the state dir's sessions/ and offered for resuming at start.
"""



def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_agent_options(parser)
    parser.add_argument("--resume", metavar="SESSION", help="continue this session")
    parser.add_argument("--new", action="store_true", help="start a new session without listing earlier ones")


def main(argv: Sequence[str] | None = None, prog: str = "agent tui") -> int:
    """`agent tui` (and `agent` alone at a terminal): the app in the current directory."""
    app = build_app(argv, prog)
    if isinstance(app, int):
        return app
    app.run()
    if app.session.transcript is not None:
        print(f"session {app.session.session_id}; continue it with: agent tui --resume {app.session.session_id}")
    return ExitCode.OK


def build_app(argv: Sequence[str] | None, prog: str = "agent tui") -> RetainApp | int:
    """The app for these arguments in the current directory, or an exit code when the settings cannot be read.

    No model configured, or the demo model without --allow-demo-model, opens the app on the setup screen.
    """
    description = "Open the Retain app in the current directory (also what `agent` alone does)."
    args = parse_arguments(argv, prog, description, _add_arguments, EPILOG)
    workspace = Path.cwd()
    cli = {"model": args.model, "api_base": args.api_base, "max_steps": args.max_steps, "shell": args.shell,
           "tools": args.tools, "turn_tokens": args.turn_tokens, "allow_demo_model": args.allow_demo_model,
           "edit_format": args.edit_format}
    try:
        settings = load_settings(cli, workspace)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    note = NO_MODEL
    try:
        require_model(settings)
    except ConfigError as exc:  # no model, or the demo refused: the setup screen says so and offers the rest
        if settings.model:
            note = f"{str(exc).splitlines()[0]}\nChoose a real model (the demo stays on the list)."
        settings.model = None
    return RetainApp(settings, workspace, resume=args.resume, list_earlier=not args.new, count_tokens=count_tokens,
                     setup_note=note)
