"""The agent loop: ask the model, run the actions it asks for, send back what happened, until it says
it is done or gives up, or a budget (model turns, tokens, wall time) runs out.

Everything the loop does is written to the transcript as it happens, and the run's state (messages,
steps, tool calls, edits, usage) can be rebuilt from those events, which is how `--resume` works.

An agent is its model, workspace and transcript, the run's `Settings` (budgets, shell and approval modes,
tool protocol) and its `Hooks`: how a front end watches and steers the run (see `Hooks`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Literal, NotRequired, TypedDict

from agent.client import (
    REPEAT_LIMIT,
    Model,
    ModelCancelled,
    ModelFailed,
    ModelTimeout,
    ModelUnavailable,
    Reply,
    supports_native_tools,
)
from agent.config import Settings, turn_tokens
from agent.protocol import FINISH_TOOLS, Action, action_from_call, parse_actions, tool_specs
from agent.transcript import Transcript
from tools.exit_codes import ExitCode
from tools.formats import OT, Format, agent_format
from tools.text_files import FileRefused, read_text_file
from tools.workspace import ERROR, OK, REFUSED, PathRefused, ToolResult, Workspace

SYSTEM_PROMPT = Path(__file__).parent / "prompts" / "system.md"
EXIT_CODES = {
    "done": ExitCode.OK,
    "failed": ExitCode.FAILED,
    "budget": ExitCode.BUDGET,
    "unavailable": ExitCode.UNAVAILABLE,
    "cancelled": ExitCode.FAILED,
}
SHELL_TIMEOUT = 120.0
TURN_TIMEOUT = 600.0  # one model turn at most
IDLE_TURNS = 3  # model turns in a row without an action before the run stops: the model is not following along
MAX_PREDICTION_CHARS = 200_000
NO_ACTION = (
    "Your reply contained no tool block. Act with one of the fenced blocks from the instructions, for "
    "example ```read PATH```, ```{fence} PATH``` with {body}, ```shell``` with a command, or ```done``` "
    "with a summary when the task is complete."
)
CUT_OFF = (
    "Your reply was cut off at the output token limit, so its end was not received. Keep replies short: "
    "one file's edit per block, and small steps."
)
REPEATING = (
    "Your reply repeated {chunk} {times} times in a row, so it was cut there. Do not write long runs of one "
    "token; act with one of the fenced blocks from the instructions."
)
IDLE_STOP = (
    f"the model wrote {IDLE_TURNS} replies in a row without an action (no tool block or tool call): it is not "
    "following the protocol. Use an instruction-tuned model that can (agent run --help lists ways to get one)."
)
REPEAT_STOP = (
    f"the model wrote {IDLE_TURNS} replies in a row without an action, the last one repeating itself until it was "
    "cut: it is stuck in a loop. Try again, or use a stronger instruction-tuned model."
)
CANCELLED_NOTE = "\n\n[the user stopped this reply before it was finished]"
DECLINED = "not applied: the user rejected this edit; {file} is unchanged. Do not retry it as it is."
TOOL_FAILED = (
    "the {tool} tool failed on these arguments ({kind}: {error}); check the arguments (paths, patterns, "
    "script), and check the files involved before you retry"
)
INTERRUPTED = (
    "The run was interrupted before the results of your last reply were recorded. Check the current state "
    "of the files you were changing before you continue."
)


OutcomeStatus = Literal["done", "failed", "budget", "unavailable", "cancelled"]


@dataclass
class Outcome:
    status: OutcomeStatus
    reason: str

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.status]


class EditReport(TypedDict):
    """An edit as the transcript and the run's report keep it: where, what, how it landed, and its cost
    against rewriting the file."""

    step: int
    file: str
    script: str  # as the model wrote it, secrets redacted
    status: str  # a tool status: "ok", "refused" or "error"
    corrections: list[dict]
    turn_output_tokens: int | None
    output_tokens: int | None  # Gemma tokens of the script
    whole_file_tokens: int | None  # Gemma tokens of the file as written
    tokens_saved: int | None
    declined: NotRequired[bool]  # the user rejected it


@dataclass
class RunState:
    """What a run has done so far; rebuilt from its transcript on resume."""

    run_id: str
    task: str
    messages: list[dict] = field(default_factory=list)
    steps: int = 0
    tool_calls: list[dict] = field(default_factory=list)
    edits: list[EditReport] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    focus: str | None = None  # the file last read or changed: the likely target of the next edit
    ended: dict | None = None  # the last "end" event

    @classmethod
    def from_events(cls, events: list[dict]) -> RunState:
        start = next((e for e in events if e["type"] == "start"), None)
        if start is None:
            raise ValueError("the transcript has no start event")
        state = cls(start["run_id"], start["task"])
        for event in events:
            kind = event["type"]
            if kind == "message" and event.get("amends_last") and state.messages:
                state.messages[-1] = event["message"]  # a message that grew (a prompt added to an observation)
            elif kind == "message":
                state.messages.append(event["message"])
            elif kind == "turn":
                state.steps = event["step"]
                add_usage(state.usage, event["usage"])
            elif kind == "tool":
                state.tool_calls.append(event["call"])
                state.focus = event.get("focus", state.focus)
                if "edit" in event:
                    state.edits.append(event["edit"])
            elif kind == "end":
                state.ended = event
        return state


def add_usage(total: dict, usage: dict) -> None:
    """Sum token counts (nested ones too, e.g. speculation stats); means cannot be summed and are left out."""
    for key, value in usage.items():
        if isinstance(value, dict):
            add_usage(total.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool) and not key.startswith("mean"):
            total[key] = total.get(key, 0) + value
        elif not isinstance(value, int | float):
            total[key] = value


@dataclass
class EditProposal:
    """An edit prepared but not written yet, as an approver is shown it."""

    tool: str  # "edit" or "create"
    file: str  # relative to the workspace
    diff: str  # unified diff of the file as it would be written
    notes: list[str]  # the applier's corrections and notes, as the model is told them


def _ignore(*args: object) -> None:
    """A hook that watches nothing."""


def _write_every_edit(proposal: EditProposal) -> bool:
    return True


@dataclass
class Hooks:
    """How a front end watches and steers a run. Every hook is optional; all are called in the loop's thread.

    - `on_text`: reply text as it streams in;
    - `on_turn`: each finished model turn (its usage carries the server's speculation stats);
    - `on_tool`: each tool call with its full result;
    - `progress`: one line per turn, its actions and their statuses (for a terminal);
    - `approve_edit`: a yes/no before each edit is written, shown as it will land (with approve "auto");
    - `approve_command`: a yes/no before each shell command (with shell "ask"); None: nobody can be asked,
      so such commands are refused;
    - `cancel`: set from any thread to end the run at the next streamed chunk or between turns.
    """

    on_text: Callable[[str], None] = _ignore
    on_turn: Callable[[Reply], None] = _ignore
    on_tool: Callable[[Action, ToolResult], None] = _ignore
    progress: Callable[[str], None] = _ignore
    approve_edit: Callable[[EditProposal], bool] = _write_every_edit
    approve_command: Callable[[str], bool] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


def system_prompt(edit_format: Format = OT) -> str:
    """The system prompt, teaching `edit_format` (its slots of prompts/system.md)."""
    prompt = edit_format.prompt
    assert prompt is not None, f"{edit_format.name} is no format the agent offers"
    slots = {"doing": prompt.doing, "read": prompt.read, "tool": prompt.tool, "section": prompt.section}
    return Template(SYSTEM_PROMPT.read_text(encoding="utf-8")).substitute(slots)


def first_messages(task: str, workspace: Workspace, edit_format: Format = OT) -> list[dict]:
    top = workspace.list("*").output
    return [
        {"role": "system", "content": system_prompt(edit_format)},
        {"role": "user", "content": f"Workspace top level:\n{top}\n\nTask:\n{task}"},
    ]


class Agent:
    def __init__(
        self,
        model: Model,
        workspace: Workspace,
        transcript: Transcript,
        settings: Settings,
        hooks: Hooks | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        """`count_tokens` (a tokenizer's count) prices each edit against rewriting the file; None: not priced."""
        self.model = model
        self.workspace = workspace
        self.transcript = transcript
        self.settings = settings
        self.hooks = hooks or Hooks()
        self.count_tokens = count_tokens
        self.edit_format = agent_format(settings.edit_format)
        tools = settings.tools
        self.native_tools = tools == "native" or (tools == "auto" and supports_native_tools(model.name))
        self.started = time.monotonic()  # when the wall-time budget began; set again by run()
        self._idle_turns = 0  # replies in a row without an action

    @property
    def timeout(self) -> float | None:
        """The run's wall-clock seconds; None: no limit (the setting unset or 0)."""
        return self.settings.timeout or None

    def run(self, state: RunState, started: float | None = None) -> Outcome:
        """Carry `state` on until the run ends. The wall-time budget counts from `started` (time.monotonic())
        when the run began earlier (starting a model server spends it too), else from now."""
        self.started = time.monotonic() if started is None else started
        steps, tokens, self._idle_turns = 0, 0, 0
        # tool work stops at the run's wall-clock end too
        self.workspace.deadline = None if self.timeout is None else self.started + self.timeout
        self._close_interrupted_turn(state)
        while True:
            if self.hooks.cancel.is_set():
                return self._end(state, Outcome("cancelled", "stopped by the user"))
            spent = self._budget_spent(steps, tokens)
            if spent:
                return self._end(state, Outcome("budget", spent))
            prediction = self._prediction(state)
            try:
                reply = self.model.complete(
                    self.transcript.redact(state.messages),  # secrets in the task or a reply never reach the model
                    tools=tool_specs(self.edit_format) if self.native_tools else None,
                    prediction=prediction,
                    prediction_path=state.focus if prediction is not None else None,
                    max_tokens=self._tokens_left(tokens),
                    timeout=self._time_left(TURN_TIMEOUT),
                    on_text=self.hooks.on_text,
                    cancel=self.hooks.cancel,
                    on_retry=self.hooks.progress,
                )
            except ModelCancelled as exc:
                if exc.text:  # what the user saw stays in the conversation, marked as cut short
                    self._add_message(state, {"role": "assistant", "content": exc.text + CANCELLED_NOTE})
                return self._end(state, Outcome("cancelled", "stopped by the user while the model was writing"))
            except ModelUnavailable as exc:
                return self._end(state, Outcome("unavailable", str(exc)))
            except ModelTimeout as exc:
                return self._end(state, Outcome("budget", f"wall time ran out during a model turn: {exc}"))
            except ModelFailed as exc:
                return self._end(state, Outcome("failed", str(exc)))
            steps += 1
            state.steps += 1
            tokens += reply.usage.get("total_tokens", 0)
            add_usage(state.usage, reply.usage)
            self.transcript.write("turn", step=state.steps, usage=reply.usage)
            self.hooks.on_turn(reply)
            outcome = self._act(state, reply)
            if outcome:
                return self._end(state, outcome)
            if self._idle_turns >= IDLE_TURNS:
                repeating = reply.finish_reason == "repetition"
                return self._end(state, Outcome("failed", REPEAT_STOP if repeating else IDLE_STOP))

    # -- one turn ------------------------------------------------------------------------------------

    def _act(self, state: RunState, reply: Reply) -> Outcome | None:
        """Record the reply, run its actions, send back their results; an Outcome when the run ends."""
        message: dict = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in reply.tool_calls
            ]
        self._add_message(state, message)
        native = bool(reply.tool_calls)
        if native:
            actions = [action_from_call(c["id"], c["name"], c["arguments"]) for c in reply.tool_calls]
        else:
            actions = parse_actions(reply.text, self.edit_format)
        self._idle_turns = 0 if actions else self._idle_turns + 1
        results = [(a, self._execute(state, a, reply)) for a in actions if a.tool not in FINISH_TOOLS]
        finishes = [a for a in actions if a.tool in FINISH_TOOLS]
        outcome = None
        if finishes:
            outcome, verdict = self._judge(state, finishes[0], [r for _, r in results])
            results.append((finishes[0], verdict))
            results += [(a, ToolResult(ERROR, "ignored: one done or failed per reply")) for a in finishes[1:]]
        self._observe(state, results, native, reply)
        summary = ", ".join(f"{action_label(a)} {r.status}" for a, r in results) or "no action"
        if reply.finish_reason == "repetition":
            summary += f"; the model repeated {_excerpt(reply.repeated)} {REPEAT_LIMIT} times, reply cut"
        tokens = reply.usage.get("completion_tokens", "?")
        self.hooks.progress(printable(f"step {state.steps}: {summary} ({tokens} tokens out)"))
        return outcome

    def _judge(self, state: RunState, finish: Action, results: list[ToolResult]) -> tuple[Outcome | None, ToolResult]:
        """Accept `done` only when this reply's actions succeeded and the last edit of every file applied."""
        summary = str(finish.args.get("summary", "")).strip()
        if finish.tool == "failed":
            return Outcome("failed", f"the model gave up: {summary}"), ToolResult(OK, "run ended as failed")
        if any(r.status != OK for r in results):
            return None, ToolResult(ERROR, "not accepted: an action in the same reply did not succeed; fix it first")
        last = {}
        for edit in state.edits:
            if not edit.get("declined"):  # an edit the user rejected is not one the model must land
                last[edit["file"]] = edit["status"]
        unapplied = sorted(f for f, status in last.items() if status != OK)
        if unapplied and self.settings.approve == "never":
            reason = f"the model declared the task done, but its edits were not applied (--approve never): {unapplied}"
            return Outcome("failed", reason), ToolResult(REFUSED, "run ended: edits not approved")
        if unapplied:
            message = f"not accepted: the last edit of {', '.join(unapplied)} did not apply; fix it first"
            return None, ToolResult(ERROR, message)
        return Outcome("done", summary), ToolResult(OK, "run ended as done")

    def _execute(self, state: RunState, action: Action, reply: Reply) -> ToolResult:
        try:
            result = self._dispatch(action)
        except _BadArguments as exc:
            result = ToolResult(ERROR, str(exc))
        except Exception as exc:  # whatever a model sends, the run goes on and the model hears what went wrong
            result = ToolResult(ERROR, TOOL_FAILED.format(tool=action.tool, kind=type(exc).__name__, error=exc))
        result.output = self.transcript.redact(result.output)
        event: dict = {"step": state.steps, "call": _call_record(state.steps, action, result)}
        if action.tool in ("read", "edit", "create") and result.status == OK:
            state.focus = event["focus"] = result.data["file"]
        if action.tool == "edit":
            event["edit"] = self._edit_report(state.steps, action, result, reply)
            state.edits.append(event["edit"])
        state.tool_calls.append(event["call"])
        self.transcript.write("tool", **event)
        self.hooks.on_tool(action, result)
        return result

    def _dispatch(self, action: Action) -> ToolResult:
        args, ws = action.args, self.workspace
        if action.tool == "invalid":
            return ToolResult(ERROR, args["error"])
        if action.tool == "read":
            start, end = _arg(args, "start_line", int, None), _arg(args, "end_line", int, None)
            return ws.read(_arg(args, "path", str), start, end)
        if action.tool == "edit":
            path, script = _arg(args, "path", str), _arg(args, "script", str)
            preview = ws.edit(path, script, dry_run=True, edit_format=self.edit_format)
            if preview.status != OK:
                return preview
            if self.settings.approve == "auto":
                return self._if_approved(action.tool, preview)
            note = "not applied: edits are not approved in this run (--approve never). It "
            return ToolResult(REFUSED, note + preview.output, preview.data)
        if action.tool == "create":
            path, content = _arg(args, "path", str), _arg(args, "content", str)
            overwrite = _arg(args, "overwrite", bool, False)
            if self.settings.approve == "never":
                return ToolResult(REFUSED, "not written: edits are not approved in this run (--approve never)")
            preview = ws.create(path, content, overwrite=overwrite, dry_run=True)
            if preview.status != OK:
                return preview
            return self._if_approved(action.tool, preview)
        if action.tool == "list":
            return ws.list(_arg(args, "pattern", str, "**/*"))
        if action.tool == "search":
            return ws.search(_arg(args, "regex", str), _arg(args, "glob", str, "**/*"))
        if action.tool == "shell":
            return self._shell(_arg(args, "command", str))
        raise _BadArguments(f"there is no tool {action.tool!r}")

    def _if_approved(self, tool: str, preview: ToolResult) -> ToolResult:
        """Write exactly the previewed edit if the approver says yes (refused if the file changed meanwhile);
        an edit that changes nothing is not asked about."""
        if preview.prepared is None:
            return preview
        data = preview.data
        if self.hooks.approve_edit(EditProposal(tool, data["file"], data["diff"], data["notes"])):
            return self.workspace.commit(preview)
        return ToolResult(REFUSED, DECLINED.format(file=data["file"]), {**data, "declined": True})

    def _shell(self, command: str) -> ToolResult:
        shell, approve_command = self.settings.shell, self.hooks.approve_command
        if shell == "never":
            return ToolResult(REFUSED, "refused: shell commands are disabled in this run (--shell never)")
        if shell == "ask":
            if approve_command is None:
                return ToolResult(
                    REFUSED,
                    "refused: shell commands need approval in this run (--shell ask) and nobody is at a terminal "
                    "to approve them; continue without running commands",
                )
            if not approve_command(command):
                return ToolResult(REFUSED, "refused: the user declined to run this command")
        return self.workspace.shell(command, timeout=self._time_left(SHELL_TIMEOUT))

    def _edit_report(self, step: int, action: Action, result: ToolResult, reply: Reply) -> EditReport:
        """The report's view of an edit: where, what, how it landed, and its cost against rewriting the file."""
        script = str(action.args.get("script", ""))
        record: EditReport = {
            "step": step,
            "file": result.data.get("file", str(action.args.get("path"))),
            "script": self.transcript.redact(script),
            "status": result.status,
            "corrections": result.data.get("corrections", []),
            "turn_output_tokens": reply.usage.get("completion_tokens"),
            "output_tokens": None,
            "whole_file_tokens": None,
            "tokens_saved": None,
        }
        if result.data.get("declined"):
            record["declined"] = True
        if self.count_tokens is not None:
            record["output_tokens"] = output = self.count_tokens(script)
            if result.status == OK and result.file_text is not None:
                record["whole_file_tokens"] = whole = self.count_tokens(result.file_text)
                record["tokens_saved"] = whole - output
        return record

    def _observe(self, state: RunState, results: list[tuple[Action, ToolResult]], native: bool, reply: Reply) -> None:
        """Send the results back: one tool message per native call, one user message for text blocks."""
        if native:
            for action, result in results:
                self._add_message(state, {"role": "tool", "tool_call_id": action.call_id, "content": result.output})
            return
        prompt = self.edit_format.prompt
        assert prompt is not None  # agent_format offers only formats with a prompt
        no_action = NO_ACTION.format(fence=self.edit_format.fence, body=prompt.body_description)
        parts = [f"[{action_label(a)}: {r.status}]\n{r.output}" for a, r in results] or [no_action]
        if reply.finish_reason == "length":
            parts.insert(0, CUT_OFF)
        elif reply.finish_reason == "repetition":
            parts.insert(0, REPEATING.format(chunk=_excerpt(reply.repeated), times=REPEAT_LIMIT))
        self._add_message(state, {"role": "user", "content": "\n\n".join(parts)})

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _add_message(self, state: RunState, message: dict) -> None:
        state.messages.append(message)
        self.transcript.write("message", message=message)

    def _close_interrupted_turn(self, state: RunState) -> None:
        """On resume after a crash mid-turn, answer the last reply so the conversation is well-formed."""
        last = state.messages[-1] if state.messages else None
        if not last or last["role"] != "assistant":
            return
        for call in last.get("tool_calls") or []:
            self._add_message(state, {"role": "tool", "tool_call_id": call["id"], "content": INTERRUPTED})
        if not last.get("tool_calls"):
            self._add_message(state, {"role": "user", "content": INTERRUPTED})

    def _budget_spent(self, steps: int, tokens: int) -> str | None:
        max_steps, max_tokens = self.settings.max_steps, self.settings.max_tokens
        if steps >= max_steps:
            return f"the step budget ran out ({max_steps} model turns)"
        if max_tokens is not None and tokens >= max_tokens:
            return f"the token budget ran out ({tokens} of {max_tokens} tokens used)"
        if self.timeout is not None and time.monotonic() - self.started >= self.timeout:
            return f"the time budget ran out ({self.timeout:g} s)"
        return None

    def _tokens_left(self, used: int) -> int:
        """One reply's output cap: the turn's, or less when the run's token budget has less left."""
        if self.settings.max_tokens is None:
            return turn_tokens(self.settings)
        return max(1, min(turn_tokens(self.settings), self.settings.max_tokens - used))

    def _time_left(self, limit: float) -> float:
        """`limit` seconds, or less when the wall-time budget ends sooner."""
        if self.timeout is None:
            return limit
        return max(1.0, min(limit, self.timeout - (time.monotonic() - self.started)))

    def _prediction(self, state: RunState) -> str | None:
        """The focus file's current text, redacted like tool output, for servers that draft from it (not with
        native tools: OpenAI refuses)."""
        if self.native_tools or state.focus is None:
            return None
        try:
            path = self.workspace.resolve(state.focus)
            if path.stat().st_size > 4 * MAX_PREDICTION_CHARS:  # too long whatever its encoding: not read
                return None
            text = read_text_file(path).text
        except (PathRefused, FileRefused, OSError):
            return None
        return self.transcript.redact(text) if len(text) <= MAX_PREDICTION_CHARS else None

    def _end(self, state: RunState, outcome: Outcome) -> Outcome:
        self.transcript.write("end", status=outcome.status, exit_code=outcome.exit_code, reason=outcome.reason)
        return outcome


class _BadArguments(Exception):
    pass


_MISSING = object()


def _arg(args: dict, name: str, kind: type, default=_MISSING):
    value = args.get(name, default)
    if value is _MISSING:
        raise _BadArguments(f"missing argument {name!r}")
    if value is not default and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise _BadArguments(f"argument {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _excerpt(chunk: str | None) -> str:
    """A repeated chunk as a progress line and the model can show it: quoted, short, on one line."""
    text = repr(chunk or "")
    return text if len(text) <= 40 else text[:37] + "…"


def printable(text: str) -> str:
    """`text` safe to print: half a surrogate pair (from a model's cut escape) shown as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def action_label(action: Action) -> str:
    """A tool call in a few words: the tool and its path, pattern or the command's first line."""
    target = action.args.get("path") or action.args.get("pattern") or action.args.get("regex") or ""
    if action.tool == "shell":
        target = str(action.args.get("command", "")).splitlines()[0][:60] if action.args.get("command") else ""
    return f"{action.tool} {target}".strip()


def _call_record(step: int, action: Action, result: ToolResult) -> dict:
    """A tool call for the report: long arguments cut, the first line of the observation as its summary."""
    args = {k: (v if not isinstance(v, str) or len(v) <= 200 else v[:200] + "…") for k, v in action.args.items()}
    first_line = result.output.splitlines()[0] if result.output else ""
    return {"step": step, "tool": action.tool, "args": args, "status": result.status, "summary": first_line[:200]}
