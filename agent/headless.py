"""`agent run TASK.md`: one task, no questions asked, an exit code CI can trust.

Exit codes: 0 the model declared the task done and every edit applied; 1 the agent failed or gave up;
2 usage error; 3 a budget ran out; 4 the model server is unreachable or misconfigured.
Progress goes to stderr (a line per step, and while a reply streams its tokens so far and tok/s), the result
to stdout, the report to `--json` (usage errors too), every event to the JSONL transcript.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from agent.client import ModelUnavailable
from agent.config import (
    APPROVE_MODES,
    GET_A_MODEL,
    RUN_TIMEOUT,
    ConfigError,
    Settings,
    add_agent_options,
    load_settings,
    positive,
    require_model,
    run_timeout,
)
from agent.connection import FIX_UNREACHABLE, open_model
from agent.detect import all_choices, found_lines
from agent.loop import Agent, Hooks, Outcome, RunState, first_messages, printable
from agent.transcript import Redactor, Transcript, read_events
from decoding.engine.tokenizer import count_tokens
from decoding.serving.launch import EmbeddedServerError, EmbeddedServerTimeout
from tools.exit_codes import ExitCode
from tools.formats import agent_format
from tools.state import runs_dir
from tools.workspace import Workspace

EPILOG = f"""\
{GET_A_MODEL}

settings: command line, then RETAIN_MODEL / RETAIN_API_BASE / RETAIN_EDIT_FORMAT, then agent.toml (workspace, then
~/.config/retain/agent.toml). --model embedded (with --allow-demo-model) starts the embedded demo server
on a free loopback port. Budgets: 30 model turns, 2,048 output tokens a reply, 600 s of wall time; a run
also stops after 3 replies in a row without an action.

exit codes: 0 done and every edit applied, 1 failed or gave up, 2 usage error, 3 a budget ran out,
4 model server unreachable or misconfigured
"""


NO_TOKENIZER = "no tokenizer was available to count tokens, so tokens saved are not reported"


def main(argv: Sequence[str] | None = None, prog: str = "agent run") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error; the report says so too
        if exc.code != ExitCode.USAGE:
            raise
        report = {"status": "usage", "exit_code": ExitCode.USAGE, "reason": parser.failure}
        _write_report(_json_target(argv), report)
        return ExitCode.USAGE
    # tokens saved are counted with the Gemma tokenizer, loaded on the first edit that needs it
    return run_command(args, count_tokens=count_tokens)


def _json_target(argv: Sequence[str]) -> str | None:
    """Where --json points in arguments argparse rejected, if it can still be read from them."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--json")
    try:
        return parser.parse_known_args(argv)[0].json
    except (argparse.ArgumentError, SystemExit):
        return None


class _Parser(argparse.ArgumentParser):
    """An argument parser that keeps its usage error's message for the --json report."""

    failure = ""

    def error(self, message: str) -> NoReturn:
        self.failure = message
        super().error(message)


def build_parser(prog: str = "agent run") -> _Parser:
    parser = _Parser(
        prog=prog,
        description="Run the agent on a task file in a workspace; progress on stderr, the result on stdout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", nargs="?", help="the task, a Markdown or text file (not needed with --resume)")
    add_agent_options(parser)
    parser.add_argument("--workspace", help="the directory to work in (default: the current one)")
    parser.add_argument("--max-tokens", type=positive(int), help="prompt + completion tokens at most")
    parser.add_argument(
        "--timeout",
        type=positive(float, zero=True),
        help=f"wall-clock seconds for the whole run (default {RUN_TIMEOUT:g}; 0 = no limit)",
    )
    parser.add_argument("--approve", choices=APPROVE_MODES, help="apply edits? (default auto)")
    parser.add_argument("--json", metavar="REPORT", help="write the JSON report here (- for stdout)")
    parser.add_argument("--transcript", metavar="FILE", help="JSONL transcript (default: the state dir's runs/)")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue a run from its transcript")
    return parser


def run_command(args: argparse.Namespace, count_tokens: Callable[[str], int] | None = None) -> int:
    """The `agent run` handler; `count_tokens` counts with the model's tokenizer for the tokens-saved figures."""
    started = time.monotonic()
    try:
        state, path, previous = _load_run(args)
        workspace = _workspace(args.workspace or previous.get("workspace") or ".")
    except _UsageError as exc:
        return _usage(str(exc), args.json)
    started_with = previous.get("edit_format")
    if started_with and args.edit_format and args.edit_format != started_with:
        return _usage(f"run {state.run_id} edits with --edit-format {started_with}, which its conversation teaches; "
                      "resume it without --edit-format", args.json)

    cli = {
        "model": args.model or previous.get("model"),  # a resumed run keeps its model unless told otherwise
        "api_base": args.api_base or (None if args.model else previous.get("api_base")),
        "max_steps": args.max_steps,
        "max_tokens": args.max_tokens,
        "turn_tokens": args.turn_tokens,
        "timeout": args.timeout,
        "allow_demo_model": args.allow_demo_model,
        "shell": args.shell,
        "approve": args.approve,
        "tools": args.tools,
        "edit_format": args.edit_format or started_with,  # a resumed run keeps the format its prompt teaches
    }
    try:
        settings = load_settings(cli, workspace.root)
        require_model(settings, found="" if settings.model else found_lines(all_choices()))
        settings.timeout = run_timeout(settings)
    except ConfigError as exc:
        print(f"agent run: {exc}", file=sys.stderr)
        _write_report(args.json, {"status": "misconfigured", "exit_code": ExitCode.UNAVAILABLE, "reason": str(exc)})
        return ExitCode.UNAVAILABLE

    redact = Redactor()
    try:
        transcript = Transcript(path, redact)
    except OSError as exc:
        return _usage(f"cannot write the transcript {path}: {exc}; point RETAIN_STATE_DIR or --transcript elsewhere")
    transcript.write(
        "start",
        run_id=state.run_id,
        task=state.task,
        model=settings.model,
        api_base=settings.api_base,
        workspace=str(workspace.root),
        edit_format=settings.edit_format,
        resumed=bool(args.resume),
    )
    if not state.messages:
        for message in first_messages(state.task, workspace, agent_format(settings.edit_format)):
            state.messages.append(message)
            transcript.write("message", message=message)
    _progress(f"run {state.run_id}: transcript {path}")
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # a CI timeout (SIGTERM) still stops the server and records the end
        old_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome, model_name = _run(state, settings, workspace, transcript, count_tokens, started)
    except KeyboardInterrupt:
        outcome, model_name = Outcome("failed", "interrupted"), settings.model
        transcript.write("end", status=outcome.status, exit_code=outcome.exit_code, reason=outcome.reason)
    except Exception as exc:  # a failure of the agent itself still ends the transcript and writes the report
        outcome, model_name = Outcome("failed", f"the agent failed: {type(exc).__name__}: {exc}"), settings.model
        transcript.write("end", status=outcome.status, exit_code=outcome.exit_code, reason=outcome.reason)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
    transcript.close()

    report = redact(_report(state, outcome, model_name, time.monotonic() - started, count_tokens is not None))
    report["transcript"] = str(path)
    _write_report(args.json, report)
    if args.json != "-":  # stdout carries the JSON report alone when asked for
        print(printable(f"{outcome.status}: {report['reason']}"))
        if outcome.exit_code != 0:
            where = f" --transcript {path}" if args.transcript else ""
            print(f"run {state.run_id}; continue it with: agent run --resume {state.run_id}{where}")
    return outcome.exit_code


class _UsageError(Exception):
    pass


def _load_run(args: argparse.Namespace) -> tuple[RunState, Path, dict]:
    """The run to carry on (from its transcript) or to start (from the task file), its transcript path, and
    the settings it was last started with (empty for a new run)."""
    if args.resume:
        path = Path(args.transcript) if args.transcript else runs_dir() / f"{args.resume}.jsonl"
        if not path.is_file():
            raise _UsageError(f"no transcript for run {args.resume} at {path}")
        try:
            events = read_events(path)
            state = RunState.from_events(events)
        except (ValueError, KeyError) as exc:
            raise _UsageError(f"cannot resume from {path}: {exc}") from None
        if state.ended and state.ended["status"] == "done":
            raise _UsageError(f"run {args.resume} already finished (done); nothing to resume")
        return state, path, [e for e in events if e["type"] == "start"][-1]
    if not args.task:
        raise _UsageError("a task file is needed (agent run TASK.md), or --resume RUN_ID")
    try:
        task = Path(args.task).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"cannot read the task {args.task}: {exc}") from None
    state = RunState(uuid.uuid4().hex[:12], task)
    return state, Path(args.transcript) if args.transcript else runs_dir() / f"{state.run_id}.jsonl", {}


def _workspace(directory: str) -> Workspace:
    if not Path(directory).is_dir():
        raise _UsageError(f"workspace {directory} is not a directory")
    return Workspace(directory)


def _run(
    state: RunState, settings: Settings, workspace: Workspace, transcript: Transcript, count_tokens, started: float
) -> tuple[Outcome, str]:
    """Start the embedded server if asked for, check the model server answers, then run the loop; the wall-time
    budget counts from `started`, so starting the server spends it too."""
    server, name, meter = None, settings.model, StreamProgress()
    try:
        limit = settings.timeout  # the run's wall-clock budget (None: none), spent from `started`
        model, server = open_model(settings, _progress, limit - (time.monotonic() - started) if limit else None)
        name = model.name
        hooks = Hooks(
            on_text=meter.text,
            on_turn=meter.turn_ended,
            progress=meter.line,
            approve_command=_ask_on_terminal if sys.stdin.isatty() else None,
        )
        outcome = Agent(model, workspace, transcript, settings, hooks, count_tokens).run(state, started)
    except EmbeddedServerTimeout as exc:
        outcome = Outcome("budget", f"the time budget ran out while the embedded server was starting: {exc}")
        transcript.write("end", status=outcome.status, exit_code=outcome.exit_code, reason=outcome.reason)
    except (ModelUnavailable, EmbeddedServerError) as exc:
        outcome = Outcome("unavailable", str(exc))
        transcript.write("end", status=outcome.status, exit_code=outcome.exit_code, reason=outcome.reason)
    finally:
        meter.turn_ended()
        if server is not None:
            server.stop()
    if outcome.status == "unavailable":
        outcome.reason += f"\n{FIX_UNREACHABLE}"
    return outcome, name


def _report(state: RunState, outcome: Outcome, model: str, wall_time: float, counted: bool) -> dict:
    saved = [e["tokens_saved"] for e in state.edits if e["tokens_saved"] is not None]
    return {
        "run_id": state.run_id,
        "task": state.task,
        "model": model,
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "reason": outcome.reason,
        "steps": state.steps,
        "tool_calls": state.tool_calls,
        "edits": state.edits,
        "usage": state.usage,
        "tokens_saved": sum(saved) if counted else None,
        "tokens_saved_note": (
            "tokens of the whole edited file minus tokens of the edit script, summed over applied edits"
            if counted
            else NO_TOKENIZER
        ),
        "wall_time_s": round(wall_time, 3),
    }


def _write_report(target: str | None, report: dict) -> None:
    if not target:
        return
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    text = printable(text)  # half a surrogate pair becomes its JSON escape
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text, encoding="utf-8")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _ask_on_terminal(command: str) -> bool:
    print(f"run this command in the workspace?\n  {command}\n[y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _usage(message: str, json_target: str | None) -> int:
    print(f"agent run: {message}", file=sys.stderr)
    _write_report(json_target, {"status": "usage", "exit_code": ExitCode.USAGE, "reason": message})
    return ExitCode.USAGE


class StreamProgress:
    """While a reply streams, its tokens so far and tok/s on stderr every `every` seconds: one line rewritten in
    place on a terminal, plain lines otherwise (a CI log). Tokens are estimated from characters until the turn's
    usage arrives, hence the `~`."""

    CHARS_PER_TOKEN = 4.0

    def __init__(self, stream=None, every: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.every, self.clock = every, clock
        self.tty = self.stream.isatty()
        self.first: float | None = None  # when this reply's first text arrived
        self.shown = 0.0  # when the last progress line was written
        self.chars = 0
        self.pending = False  # a rewritten line is on the terminal without its newline

    def text(self, piece: str) -> None:
        now = self.clock()
        if self.first is None:
            self.first = self.shown = now
        self.chars += len(piece)
        if now - self.shown >= self.every:
            self.shown = now
            tokens, elapsed = self.chars / self.CHARS_PER_TOKEN, now - self.first
            self._write(f"model writing: ~{tokens:.0f} tokens, {tokens / elapsed:.1f} tok/s ({elapsed:.0f} s)")

    def turn_ended(self, reply=None) -> None:
        self.first, self.chars = None, 0
        self._clear()

    def line(self, text: str) -> None:
        """A regular progress line (a step's summary), below any progress line being rewritten."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{text}")
            self.pending = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.pending:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.pending = False
