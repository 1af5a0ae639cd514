"""Modal screens: choosing a model, approving an edit or a command, picking a file, picking a session to resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from agent.detect import KNOWN_PORTS, Choice, all_choices
from agent.loop import EditProposal
from tui.session import SessionInfo
from tui.widgets import diff_counts, diff_text

MAX_PICKER_ROWS = 200
LOOKING = "looking for model servers on this machine …"


class ModelSetup(ModalScreen[tuple[Choice, Path] | None]):
    """Choose a model from what this machine has (servers answering on the usual ports, provider keys, the demo),
    then where to save the choice; answers (choice, agent.toml path), or None when closed."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, note: str, targets: list[tuple[str, Path]]) -> None:
        """`note` says why the screen is shown; `targets` are (description, path) of the agent.toml files."""
        super().__init__()
        self.note = note
        self.targets = targets
        self.choices: list[Choice] = []
        self.chosen: Choice | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Choose a model", id="question")
            yield Static(Text(self.note), id="setup-note")
            yield OptionList(Option(LOOKING, disabled=True), id="choices")
        yield Footer()

    def on_mount(self) -> None:
        self.detect()

    @work(thread=True, group="detect")
    def detect(self) -> None:
        """Probe the ports off the interface's thread: the screen is up at once, the list fills in under a second."""
        choices = all_choices()
        self.app.call_from_thread(self.show_choices, choices)

    def show_choices(self, choices: list[Choice]) -> None:
        self.choices = choices
        servers = [(i, c) for i, c in enumerate(choices) if c.api_base]
        keys = [(i, c) for i, c in enumerate(choices) if not c.api_base and not c.demo]
        demo = [(i, c) for i, c in enumerate(choices) if c.demo]
        ports = ", ".join(f"{port} ({kind})" for kind, port in KNOWN_PORTS)
        options: list[Option] = [_heading("model servers running on this machine")]
        options += [Option(c.label, id=str(i)) for i, c in servers] or [_none(f"none answers on {ports}")]
        options.append(_heading("providers with a key in the environment"))
        options += [Option(c.label, id=str(i)) for i, c in keys] or [_none("none (OPENAI_API_KEY, … are unset)")]
        options.append(_heading("no setup"))
        options += [Option(c.label, id=str(i)) for i, c in demo]
        self._set_options(options)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if self.chosen is None:
            self.chosen = self.choices[int(event.option.id)]
            self.query_one("#question", Label).update(f"Save {self.chosen.model} as the model for …")
            self._set_options([Option(label, id=str(i)) for i, (label, _) in enumerate(self.targets)])
        else:
            self.dismiss((self.chosen, self.targets[int(event.option.id)][1]))

    def _set_options(self, options: list[Option]) -> None:
        listed = self.query_one("#choices", OptionList)
        listed.set_options(options)
        listed.highlighted = next((i for i, option in enumerate(options) if not option.disabled), None)
        listed.focus()


def _heading(text: str) -> Option:
    return Option(Text(text, style="bold"), disabled=True)


def _none(text: str) -> Option:
    return Option(Text(f"  {text}", style="dim"), disabled=True)


Bindings = list[BindingType]  # a screen's key bindings, shown in its footer


class EditApproval(ModalScreen[str]):
    """The diff of an edit before it is written; answers "approve", "reject", "always" or "stop"."""

    BINDINGS: ClassVar[Bindings] = [
        Binding("y", "answer('approve')", "Approve"),
        Binding("n", "answer('reject')", "Reject"),
        Binding("a", "answer('always')", "Approve all (auto-approve)"),
        Binding("escape", "answer('stop')", "Reject and stop"),
    ]

    def __init__(self, proposal: EditProposal) -> None:
        super().__init__()
        self.proposal = proposal

    def compose(self) -> ComposeResult:
        proposal = self.proposal
        added, removed = diff_counts(proposal.diff)
        if proposal.tool == "create":
            question = f"Write {proposal.file} whole?  +{added} −{removed}"
        else:
            question = f"Apply this edit to {proposal.file}?  +{added} −{removed}"
        with Vertical(id="dialog"):
            yield Label(question, id="question")
            if proposal.notes:
                yield Static(Text("\n".join(f"note: {note}" for note in proposal.notes)), id="notes")
            with VerticalScroll(id="diff"):
                yield Static(diff_text(proposal.diff, proposal.file))
        yield Footer()

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)


class CommandApproval(ModalScreen[bool]):
    """A shell command the model wants to run in the workspace."""

    BINDINGS: ClassVar[Bindings] = [Binding("y", "answer(True)", "Run"), Binding("n,escape", "answer(False)", "Refuse")]

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Run this command in the workspace?", id="question")
            yield Static(Text(self.command.strip(), style="bold"), id="command")
        yield Footer()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class FilePicker(ModalScreen[str | None]):
    """Fuzzy search over the workspace's files; the chosen path, or None."""

    BINDINGS: ClassVar[Bindings] = [Binding("escape", "dismiss(None)", "Close"),
                                    Binding("down", "focus_list", show=False)]

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Input(placeholder="file to insert (fuzzy)", id="query")
            yield OptionList(id="matches")
        yield Footer()

    def on_mount(self) -> None:
        self._show("")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._show(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        matches = self.query_one(OptionList)
        if matches.option_count:
            self.dismiss(matches.get_option_at_index(matches.highlighted or 0).id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_focus_list(self) -> None:
        self.query_one(OptionList).focus()

    def _show(self, query: str) -> None:
        matcher = Matcher(query)
        if query:
            scored = sorted(((matcher.match(p), p) for p in self.paths), key=lambda item: (-item[0], item[1]))
            shown = [(matcher.highlight(p), p) for score, p in scored if score > 0]
        else:
            shown = [(p, p) for p in self.paths]
        matches = self.query_one(OptionList)
        matches.set_options(Option(label, id=path) for label, path in shown[:MAX_PICKER_ROWS])
        if shown:
            matches.highlighted = 0


class SessionPicker(ModalScreen[SessionInfo | None]):
    """The workspace's earlier sessions, to resume one; None starts a new session."""

    BINDINGS: ClassVar[Bindings] = [Binding("escape", "dismiss(None)", "New session")]

    def __init__(self, sessions: list[SessionInfo]) -> None:
        super().__init__()
        self.sessions = {info.session_id: info for info in sessions}

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Resume a session in this workspace?", id="question")
            options = [Option("+ new session", id="")]
            for info in self.sessions.values():
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.started))
                options.append(Option(f"{when}  {info.session_id}  {info.title[:60]}", id=info.session_id))
            yield OptionList(*options, id="sessions")
        yield Footer()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.sessions.get(event.option.id))


def save_targets(workspace: Path, user_config: Path) -> list[tuple[str, Path]]:
    """Where a model choice can be saved: this workspace's agent.toml, or the user's for every workspace."""
    return [
        (f"this workspace   ({workspace / 'agent.toml'})", workspace / "agent.toml"),
        (f"every workspace  ({user_config})", user_config),
    ]


def workspace_files(root: Path, paths: list[Path]) -> list[str]:
    """Paths relative to the workspace, files only, for the picker."""
    return [path.relative_to(root).as_posix() for path in paths if path.is_file()]
