"""The pieces of the main screen: messages, tool calls, the prompt, the status bar, and diffs as text."""

from __future__ import annotations

from rich.style import Style
from rich.syntax import Syntax
from rich.text import Span, Text
from textual.message import Message
from textual.widgets import Collapsible, Input, Markdown, Static

from agent.loop import action_label
from agent.protocol import Action
from tools.workspace import OK, ToolResult

SHOWN_OUTPUT_LINES = 200  # of a long observation, the head and the tail (half each) are shown
ICONS = {"ok": "✓", "error": "✗", "refused": "⊘"}
ADDED, REMOVED = "on #12361f", "on #3d1519"


def diff_text(diff: str, path: str) -> Text:
    """A unified diff with its code highlighted in the file's language and its changed lines shaded."""
    lines = diff.splitlines()
    body = [line for line in lines if line[:1] in " +-" and not line.startswith(("+++ ", "--- "))]
    code = "\n".join(line[1:] for line in body)
    highlighted = _foreground(Syntax(code, Syntax.guess_lexer(path, code), theme="monokai").highlight(code))
    highlighted = highlighted.split("\n") if body else []
    out, index = Text(), 0
    for line in lines:
        if line.startswith(("+++ ", "--- ")):
            out.append(line + "\n", style="bold")
        elif line.startswith("@@"):
            out.append(line + "\n", style="cyan")
        elif line[:1] in " +-" and index < len(highlighted):
            code_line = highlighted[index]
            index += 1
            shade = {"+": ADDED, "-": REMOVED}.get(line[0], "")
            row = Text(line[0] + " ", style="bold green" if line[0] == "+" else "bold red" if line[0] == "-" else "")
            row.append_text(code_line)
            row.append("\n")
            if shade:
                row.stylize(shade)
            out.append_text(row)
        else:
            out.append(line + "\n", style="dim")
    out.rstrip()
    return out


def _foreground(text: Text) -> Text:
    """The highlighting's colours without the theme's background, so the diff's shading shows."""
    text.style = ""
    text.spans = [
        Span(span.start, span.end, Style(color=span.style.color, bold=span.style.bold, italic=span.style.italic))
        if isinstance(span.style, Style)
        else span
        for span in text.spans
    ]
    return text


def diff_counts(diff: str) -> tuple[int, int]:
    """Lines added and removed."""
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++ "))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("--- "))
    return added, removed


def fold(text: str, limit: int = SHOWN_OUTPUT_LINES) -> str:
    """At most `limit` lines: the head and the tail, with the number of lines left out between them."""
    lines = text.splitlines()
    if len(lines) <= limit:
        return text
    half = limit // 2
    return "\n".join([*lines[:half], f"… {len(lines) - limit} lines folded …", *lines[-half:]])


class UserMessage(Static):
    def __init__(self, prompt: str) -> None:
        super().__init__(Text.assemble(("› ", "bold"), prompt))


class AssistantMessage(Markdown):
    """A reply, streamed in as the model writes it."""


class Note(Static):
    """A line from the app itself: how a run ended, an undo, a connection problem."""


class ToolCall(Collapsible):
    """One tool call in a line (status, tool, target, size); its output or diff folded inside."""

    def __init__(self, action: Action, result: ToolResult) -> None:
        diff = result.data.get("diff") if result.status == OK else None
        title = f"{ICONS.get(result.status, '?')} {action_label(action)}"
        if diff:
            added, removed = diff_counts(diff)
            title += f"  +{added} −{removed}"
            notes = "".join(f"note: {note}\n" for note in result.data.get("notes", []))
            body = Static(Text(notes, style="yellow") + diff_text(diff, result.data["file"]), classes="output")
        else:
            if "exit_code" in result.data:  # a command
                title += f"  exit {result.data['exit_code']}"
            lines = len(result.output.splitlines())
            if lines > 1:
                title += f"  ({lines} lines)"
            body = Static(Text(fold(result.output)), classes="output")
        # failures stay open, so the applier's message is read without a click
        super().__init__(body, title=title, collapsed=result.status == OK)
        self.add_class(result.status)


class StatusBar(Static):
    """Model, decoding speed, speculation and tokens saved: updated while the model writes."""


class PromptInput(Input):
    """The prompt; typing `@` asks for a file to insert instead."""

    class PickFile(Message):
        pass

    def insert_text_at_cursor(self, text: str) -> None:
        if text == "@":
            self.post_message(self.PickFile())
            return
        super().insert_text_at_cursor(text)
