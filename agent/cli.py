"""The `agent` command: one entry point, one subcommand per job.

Handlers import what they need when they run, so `agent --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNRESOLVABLE = 3  # the script cannot be placed on the file (malformed, ambiguous, out of range)
EXIT_BROKEN = 4  # the edit would add syntax errors

TOP_EPILOG = """\
examples:
  agent                                   # the terminal app in this directory (same as agent tui)
  agent run task.md --model embedded      # a task, headless, on the embedded Gemma 3 270M (CPU)
  agent run task.md --model hosted_vllm/google/gemma-4-26B-A4B-it --api-base http://127.0.0.1:8000/v1
  agent serve                             # the embedded model at http://127.0.0.1:8765/v1
  agent serve --engine vllm --model google/gemma-4-26B-A4B-it   # Gemma 4 with its MTP assistant
  agent apply notes.txt edit.ot           # apply an edit script to a file; agent undo reverts it
  agent eval --quick                      # tokens per edit format, decoding speed per drafter

`agent COMMAND --help` explains each command.
"""

APPLY_EPILOG = """\
edit script: operations separated by commas or newlines, optionally in [ ]:
  retain(N)         keep N code points          retain("text")  keep exactly this text
  delete(N)         remove N code points        delete("text")  remove exactly this text
  insert("text")    add text (JSON string: \\n, \\", \\\\, \\uXXXX)
  # comment         ignored to the end of the line
Whatever the script does not reach is kept. Quoted retain/delete re-anchor a miscounted retain.

example:
  printf 'retain(8)\\ndelete("really")\\ninsert("very very")' | agent apply notes.txt -

exit codes: 0 applied, 2 usage or unreadable file, 3 script unresolvable, 4 would add syntax errors
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent",
        description="Retain: a local coding agent that edits files with operational-transform edit scripts.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    apply_p = sub.add_parser(
        "apply",
        help="apply an edit script to a file (tolerant of miscounts, refuses broken syntax)",
        description="Apply an edit script to FILE in place and print the unified diff.",
        epilog=APPLY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply_p.add_argument("file", type=Path, help="the file to edit")
    apply_p.add_argument("script", help="path of the edit script, or - to read it from stdin")
    apply_p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    apply_p.add_argument("--json", action="store_true", help='print {"ok", "corrections", "error", "diff"} as JSON')
    apply_p.add_argument("--allow-broken", action="store_true", help="apply even if the edit adds syntax errors")
    apply_p.set_defaults(handler=_cmd_apply)

    diff_p = sub.add_parser(
        "ot-diff",
        help="print the edit script that turns one file into another",
        description="Print a minimal, self-checking edit script (one op per line) turning BEFORE into AFTER.",
    )
    diff_p.add_argument("before", type=Path)
    diff_p.add_argument("after", type=Path)
    diff_p.add_argument("--counts-only", action="store_true", help="deletes as counts, without their quoted text")
    diff_p.set_defaults(handler=_cmd_ot_diff)

    undo_p = sub.add_parser(
        "undo",
        help="revert the last edit applied by agent (to FILE, if given)",
        description="Restore the content a file had before the last edit applied through Retain.",
    )
    undo_p.add_argument("file", nargs="?", type=Path, help="undo the last edit of this file (default: the last edit)")
    undo_p.add_argument("--force", action="store_true", help="restore even if the file changed since the edit")
    undo_p.set_defaults(handler=_cmd_undo)

    sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible API (--engine embedded|vllm; see agent serve --help)",
        add_help=False,
    )
    sub.add_parser("export-embedded", help="write the embedded Gemma 3 270M as a Hugging Face directory",
                   add_help=False)

    from evals import run as eval_run

    eval_p = sub.add_parser(
        "eval",
        help="editing evals: output tokens per edit format, whether each applies, decoding speed per drafter",
        description="Editing evals: output tokens per edit format, saved vs whole-file rewrites, and correctness; "
        "target forwards and decode time per drafter on the embedded model (reference-forced and free-running); "
        "optionally each case on a live model.",
        epilog=eval_run.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    eval_run.add_arguments(eval_p)
    eval_p.set_defaults(handler=eval_run.run_command)

    bench_p = sub.add_parser(
        "bench", help="benchmarks (apply: how edits land on real commits; decode: speculative decoding speed)"
    )
    bench_p.set_defaults(handler=lambda args: _usage(bench_p))
    bench_sub = bench_p.add_subparsers(dest="bench", metavar="BENCHMARK")
    bench_apply = bench_sub.add_parser(
        "apply",
        help="exact, miscounted and malformed scripts on real edits",
        description="Measure how the applier lands exact, miscounted and malformed edit scripts on real commits.",
    )
    from evals import apply_bench

    apply_bench.add_arguments(bench_apply)
    bench_apply.set_defaults(handler=apply_bench.run_command)
    bench_sub.add_parser(
        "decode", help="plain vs speculative decoding vs transformers' prompt lookup, side by side", add_help=False
    )
    _add_run_parser(sub)
    _add_tui_parser(sub)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _read_script(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    return Path(source).read_text(encoding="utf-8")


def _cmd_apply(args: argparse.Namespace) -> int:
    from tools.edit_file import FileRefused, apply_script_to_file
    from tools.ot import OTError
    from tools.patch import SyntaxRefused

    try:
        script = _read_script(args.script)
    except (OSError, UnicodeDecodeError) as exc:
        return _report_apply(args, EXIT_USAGE, f"cannot read the edit script {args.script}: {exc}")
    try:
        result = apply_script_to_file(args.file, script, allow_broken=args.allow_broken, dry_run=args.dry_run)
    except FileRefused as exc:
        return _report_apply(args, EXIT_USAGE, str(exc))
    except SyntaxRefused as exc:
        return _report_apply(args, EXIT_BROKEN, str(exc))
    except OTError as exc:
        return _report_apply(args, EXIT_UNRESOLVABLE, f"{exc}\nThe file is unchanged.")
    corrections = [c.to_dict() for c in result.edit.corrections]
    if args.json:
        print(json.dumps({"ok": True, "corrections": corrections, "error": None, "diff": result.diff}))
        return EXIT_OK
    for note in [c.message for c in result.edit.corrections] + result.edit.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.diff, end="")
    if args.dry_run:
        print("dry run: nothing written", file=sys.stderr)
    return EXIT_OK


def _report_apply(args: argparse.Namespace, code: int, message: str) -> int:
    if args.json:
        print(json.dumps({"ok": False, "corrections": [], "error": message, "diff": ""}))
    else:
        print(f"agent apply: {message}", file=sys.stderr)
    return code


def _cmd_ot_diff(args: argparse.Namespace) -> int:
    from tools.edit_file import FileRefused, read_text_file
    from tools.ot import format_script, ot_diff

    try:
        before, after = read_text_file(args.before).text, read_text_file(args.after).text
    except FileRefused as exc:
        print(f"agent ot-diff: {exc}", file=sys.stderr)
        return EXIT_USAGE
    script = format_script(ot_diff(before, after, quoted=not args.counts_only))
    if script:
        print(script)
    return EXIT_OK


def _cmd_undo(args: argparse.Namespace) -> int:
    from tools.edit_file import Journal, UndoRefused

    journal = Journal()
    try:
        path, diff = journal.undo(args.file, force=args.force)
    except UndoRefused as exc:
        print(f"agent undo: {exc}", file=sys.stderr)
        return 1
    finally:
        for note in journal.notes:
            print(f"agent undo: note: {note}", file=sys.stderr)
    print(diff, end="")
    print(f"restored {path}", file=sys.stderr)
    return EXIT_OK


def _serve(argv: list[str]) -> int:
    """`agent serve`: the embedded engine in this process, or vLLM as a child process."""
    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument("--engine", choices=("embedded", "vllm"), default="embedded")
    known, rest = engine.parse_known_args(argv)
    if known.engine == "vllm":
        from decoding import vllm_launch

        return vllm_launch.main(rest, prog="agent serve --engine vllm")
    from decoding import server

    return server.main(rest, prog="agent serve")


def _export_embedded(argv: list[str]) -> int:
    from decoding import export

    return export.main(argv, prog="agent export-embedded")


# -- agent run ---------------------------------------------------------------------------------------

RUN_EPILOG = """\
settings: command line, then RETAIN_MODEL / RETAIN_API_BASE, then agent.toml (workspace, then
~/.config/retain/agent.toml). --model embedded starts the embedded server on a free loopback port.

exit codes: 0 done and every edit applied, 1 failed or gave up, 2 usage error, 3 a budget ran out,
4 model server unreachable or misconfigured
"""


def _add_run_parser(sub) -> None:
    run_p = sub.add_parser(
        "run",
        help="carry out the task in TASK.md without asking anything (headless)",
        description="Run the agent on a task file in a workspace; progress on stderr, the result on stdout.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_p.add_argument("task", nargs="?", help="the task, a Markdown or text file (not needed with --resume)")
    _add_agent_options(run_p)
    run_p.add_argument("--workspace", help="the directory to work in (default: the current one)")
    run_p.add_argument("--max-tokens", type=_positive(int), help="prompt + completion tokens at most")
    run_p.add_argument("--timeout", type=_positive(float), help="wall-clock seconds at most")
    run_p.add_argument("--approve", choices=["auto", "never"], help="apply edits? (default auto)")
    run_p.add_argument("--json", metavar="REPORT", help="write the JSON report here (- for stdout)")
    run_p.add_argument("--transcript", metavar="FILE", help="JSONL transcript (default: the state dir's runs/)")
    run_p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its transcript")
    run_p.set_defaults(handler=_cmd_run)


def _add_agent_options(parser: argparse.ArgumentParser) -> None:
    """The model and loop settings `agent run` and `agent tui` share."""
    parser.add_argument("--model", help="litellm model name (provider/model), or 'embedded'")
    parser.add_argument("--api-base", help="the model server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--max-steps", type=_positive(int), help="model turns per task at most (default 30)")
    parser.add_argument("--shell", choices=["never", "ask", "auto"], help="run shell commands? (default ask)")
    parser.add_argument("--tools", choices=["auto", "native", "text"], help="native tool calls or fenced blocks")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.headless import run_command

    # tokens saved are counted with the Gemma tokenizer, loaded on the first edit that needs it
    return run_command(args, count_tokens=_count_tokens)


# -- agent tui --------------------------------------------------------------------------------------

TUI_EPILOG = """\
keys: enter send · esc stop the model · y / n approve or reject an edit · ctrl+t auto-approve
      ctrl+z undo the last edit · @ insert a file path · ctrl+q quit

The workspace is the current directory. Model settings are those of agent run (--model, RETAIN_MODEL,
agent.toml); --model embedded starts the embedded server while the app opens. Sessions are kept in the
state dir's sessions/ and offered for resuming at start.
"""


def _add_tui_parser(sub) -> None:
    tui_p = sub.add_parser(
        "tui",
        help="the terminal app: a conversation with the agent, every edit shown before it is written",
        description="Open the Retain app in the current directory (also what `agent` alone does).",
        epilog=TUI_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_agent_options(tui_p)
    tui_p.add_argument("--resume", metavar="SESSION", help="continue this session")
    tui_p.add_argument("--new", action="store_true", help="start a new session without listing earlier ones")
    tui_p.set_defaults(handler=_cmd_tui)


def _cmd_tui(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_settings, require_model
    from tui.app import RetainApp

    workspace = Path.cwd()
    cli = {"model": args.model, "api_base": args.api_base, "max_steps": args.max_steps, "shell": args.shell,
           "tools": args.tools}
    try:
        settings = load_settings(cli, workspace)
        require_model(settings)
    except ConfigError as exc:
        print(f"agent tui: {exc}", file=sys.stderr)
        return 4
    app = RetainApp(settings, workspace, resume=args.resume, list_earlier=not args.new, count_tokens=_count_tokens)
    app.run()
    if app.session.transcript is not None:
        print(f"session {app.session.session_id}; continue it with: agent tui --resume {app.session.session_id}")
    return EXIT_OK


def _count_tokens(text: str) -> int:
    """Gemma tokens, the tokenizer loaded on the first edit (not while the app opens)."""
    from decoding.tokenizer import gemma_token_counter

    return gemma_token_counter()(text)


def _bench_decode(argv: list[str]) -> int:
    from decoding import bench

    return bench.main(argv, prog="agent bench decode")


# subcommands that parse their own options, by the words that name them
DELEGATED = {("serve",): _serve, ("export-embedded",): _export_embedded, ("bench", "decode"): _bench_decode}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, handler in DELEGATED.items():
        if tuple(argv[: len(words)]) == words:
            return handler(argv[len(words) :])
    parser = build_parser()
    if not argv and sys.stdin.isatty() and sys.stdout.isatty():
        argv = ["tui"]  # `agent` alone at a terminal opens the app
    args = parser.parse_args(argv)
    if args.handler is None:
        parser.print_help()
        return EXIT_USAGE
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
