"""`agent run TASK.md`: one task, no questions asked, an exit code CI can trust.

Exit codes: 0 the model declared the task done and every edit applied; 1 the agent failed or gave up;
2 usage error; 3 a budget ran out; 4 the model server is unreachable or misconfigured.
Progress goes to stderr (a line per step), the result to stdout, the report to `--json`, every event to
the JSONL transcript.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.config import ConfigError, Settings, load_settings, require_model
from agent.embedded import EmbeddedServer, EmbeddedServerError
from agent.loop import Agent, Budget, Outcome, RunState, first_messages, printable
from agent.model import Model, ModelUnavailable, supports_native_tools
from agent.transcript import Redactor, Transcript, read_events
from tools.edit_file import state_dir
from tools.workspace import Workspace

EXIT_USAGE = 2
EXIT_MISCONFIGURED = 4
FIX_UNREACHABLE = (
    "fix: start the model server, or point --api-base (or RETAIN_API_BASE, or api_base in agent.toml) at one that "
    "is running; `agent run TASK.md --model embedded` starts the embedded server for the run"
)
NO_TOKENIZER = "no tokenizer was available to count tokens, so tokens saved are not reported"


def runs_dir() -> Path:
    return state_dir() / "runs"


def run_command(args: argparse.Namespace, count_tokens: Callable[[str], int] | None = None) -> int:
    """The `agent run` handler; `count_tokens` counts with the model's tokenizer for the tokens-saved figures."""
    started = time.monotonic()
    try:
        state, path, previous = _load_run(args)
        workspace = _workspace(args.workspace or previous.get("workspace") or ".")
    except _UsageError as exc:
        return _usage(str(exc))

    cli = {
        "model": args.model or previous.get("model"),  # a resumed run keeps its model unless told otherwise
        "api_base": args.api_base or (None if args.model else previous.get("api_base")),
        "max_steps": args.max_steps,
        "max_tokens": args.max_tokens,
        "timeout": args.timeout,
        "shell": args.shell,
        "approve": args.approve,
        "tools": args.tools,
    }
    try:
        settings = load_settings(cli, workspace.root)
        require_model(settings)
    except ConfigError as exc:
        print(f"agent run: {exc}", file=sys.stderr)
        _write_report(args.json, {"status": "misconfigured", "exit_code": EXIT_MISCONFIGURED, "reason": str(exc)})
        return EXIT_MISCONFIGURED

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
        resumed=bool(args.resume),
    )
    if not state.messages:
        for message in first_messages(state.task, workspace):
            state.messages.append(message)
            transcript.write("message", message=message)
    _progress(f"run {state.run_id}: transcript {path}")
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # a CI timeout (SIGTERM) still stops the server and records the end
        old_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome, model_name = _run(state, settings, workspace, transcript, count_tokens)
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
    state: RunState, settings: Settings, workspace: Workspace, transcript: Transcript, count_tokens
) -> tuple[Outcome, str]:
    """Start the embedded server if asked for, check the model server answers, then run the loop."""
    server, name = None, settings.model
    try:
        model, server, native = open_model(settings, _progress)
        name = model.name
        agent = Agent(
            model,
            workspace,
            transcript,
            budget=Budget(settings.max_steps, settings.max_tokens, settings.timeout),
            shell=settings.shell,
            approve=settings.approve,
            native_tools=native,
            count_tokens=count_tokens,
            confirm=_ask_on_terminal if sys.stdin.isatty() else None,
            progress=_progress,
        )
        outcome = agent.run(state)
    except (ModelUnavailable, EmbeddedServerError) as exc:
        outcome = Outcome("unavailable", str(exc))
        transcript.write("end", status=outcome.status, exit_code=outcome.exit_code, reason=outcome.reason)
    finally:
        if server is not None:
            server.stop()
    if outcome.status == "unavailable":
        outcome.reason += f"\n{FIX_UNREACHABLE}"
    return outcome, name


def open_model(settings: Settings, progress: Callable[[str], None]) -> tuple[Model, EmbeddedServer | None, bool]:
    """The model the settings name, answering: (model, the embedded server started for it or None, whether to
    use native tool calls). The caller stops the server; on any failure here it is already stopped."""
    name, api_base = settings.model, settings.api_base
    server = EmbeddedServer() if name == "embedded" else None
    try:
        if server is not None:
            progress("starting the embedded model server …")
            server.start()
            name, api_base = f"openai/{server.model_id}", server.api_base
            progress(f"embedded server ready at {api_base} ({server.model_id})")
        model = Model(name, api_base, settings.api_key)
        model.check_reachable()
        native = settings.tools == "native" or (settings.tools == "auto" and supports_native_tools(name))
    except BaseException:  # an interrupt too: never leave the server running
        if server is not None:
            server.stop()
        raise
    return model, server, native


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


def _usage(message: str) -> int:
    print(f"agent run: {message}", file=sys.stderr)
    return EXIT_USAGE
