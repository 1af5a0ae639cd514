"""The `agent` command: the entry point above every package, one table of subcommands.

Each subcommand is a module's `main(argv, prog) -> int` with its own parser, imported only when it runs, so
`agent --help` stays instant and a headless `agent run` never loads the terminal app.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tools.exit_codes import ExitCode

Main = Callable[[Sequence[str], str], int]


def _tui(argv: Sequence[str], prog: str) -> int:
    from tui import app

    return app.main(argv, prog)


def _run(argv: Sequence[str], prog: str) -> int:
    from agent import headless

    return headless.main(argv, prog)


def _apply(argv: Sequence[str], prog: str) -> int:
    from tools import commands

    return commands.apply_main(argv, prog)


def _ot_diff(argv: Sequence[str], prog: str) -> int:
    from tools import commands

    return commands.ot_diff_main(argv, prog)


def _undo(argv: Sequence[str], prog: str) -> int:
    from tools import commands

    return commands.undo_main(argv, prog)


def _serve(argv: Sequence[str], prog: str) -> int:
    """`agent serve`: the embedded engine in this process, or vLLM as a child process (`--engine vllm`)."""
    choose = argparse.ArgumentParser(add_help=False)
    choose.add_argument("--engine", choices=("embedded", "vllm"), default="embedded")
    known, rest = choose.parse_known_args(argv)
    engine = known.engine
    if engine == "vllm":
        from decoding.vllm import launch

        return launch.main(rest, prog=f"{prog} --engine vllm")
    from decoding.serving import server

    return server.main(rest, prog=prog)


def _export_embedded(argv: Sequence[str], prog: str) -> int:
    from decoding.vllm import export

    return export.main(list(argv), prog=prog)


def _eval(argv: Sequence[str], prog: str) -> int:
    from evals import command

    return command.main(argv, prog)


def _eval_grounded(argv: Sequence[str], prog: str) -> int:
    from evals import command

    return command.grounded_main(argv, prog)


def _bench_apply(argv: Sequence[str], prog: str) -> int:
    from evals import apply_bench

    return apply_bench.main(argv, prog)


def _bench_decode(argv: Sequence[str], prog: str) -> int:
    from decoding.lab import bench

    return bench.main(argv, prog=prog)


def _bench_held_out(argv: Sequence[str], prog: str) -> int:
    from decoding.lab import held_out

    return held_out.main(argv, prog=prog)


def _bench_serve(argv: Sequence[str], prog: str) -> int:
    from decoding.lab import serve_load

    return serve_load.main(argv, prog=prog)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    main: Main
    help: str


COMMANDS = (
    Command(("tui",), _tui, "the terminal app: a conversation with the agent, every edit shown before it is written"),
    Command(("run",), _run, "carry out the task in TASK.md without asking anything (headless)"),
    Command(("apply",), _apply, "apply an edit script to a file (tolerant of miscounts, refuses broken syntax)"),
    Command(("ot-diff",), _ot_diff, "print the edit script that turns one file into another"),
    Command(("undo",), _undo, "revert the last edit applied by agent (to FILE, if given)"),
    Command(("serve",), _serve, "serve a model over an OpenAI-compatible API (--engine embedded|vllm)"),
    Command(("export-embedded",), _export_embedded, "write the embedded Gemma 3 270M as a Hugging Face directory"),
    # before ("eval",): the first command whose words begin the arguments runs (`find_command`)
    Command(("eval", "grounded"), _eval_grounded, "grounded decoding: the embedded model writes the suite's edits, "
            "grounding off and on"),
    Command(("eval",), _eval, "editing evals: output tokens per edit format, whether each applies, decoding speed"),
    Command(("bench", "apply"), _bench_apply, "how the applier lands exact, miscounted and malformed scripts"),
    Command(("bench", "decode"), _bench_decode, "plain vs speculative decoding vs transformers' prompt lookup"),
    Command(("bench", "held-out"), _bench_held_out, "drafters on code the MTP head never trained on, via agent serve"),
    Command(("bench", "serve"), _bench_serve, "many clients at once on agent serve: answered, 429, reset, latency"),
)

EXAMPLES = """\
examples:
  agent                                   # the terminal app in this directory (same as agent tui)
  agent run task.md --model hosted_vllm/google/gemma-4-26B-A4B-it --api-base http://127.0.0.1:8000/v1
  agent serve                             # the embedded model at http://127.0.0.1:8765/v1
  agent serve --engine vllm --model google/gemma-4-26B-A4B-it   # Gemma 4 with its MTP assistant
  agent apply notes.txt edit.ot           # apply an edit script to a file; agent undo reverts it
  agent eval --quick                      # tokens per edit format, decoding speed per drafter

`agent COMMAND --help` explains each command."""


def usage(prefix: tuple[str, ...] = ()) -> str:
    """The commands (under `prefix`, e.g. ("bench",)) with what each is for."""
    shown = [c for c in COMMANDS if c.words[: len(prefix)] == prefix]
    width = max(len(" ".join(c.words)) for c in shown)
    lines = [f"usage: agent {' '.join(prefix) + ' ' if prefix else ''}COMMAND [options]", "", "commands:"]
    lines += [f"  {' '.join(c.words):<{width}}  {c.help}" for c in shown]
    if not prefix:
        lines = ["Retain: a local coding agent that edits files with operational-transform edit scripts.", "",
                 *lines, "", EXAMPLES]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # the reader went away (`agent --help | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet too
        return ExitCode.OK


def find_command(argv: Sequence[str]) -> Command | None:
    """The command whose words begin `argv` (the first in COMMANDS: `eval grounded` before `eval`), or None."""
    return next((c for c in COMMANDS if tuple(argv[: len(c.words)]) == c.words), None)


def _dispatch(argv: list[str]) -> int:
    if not argv and sys.stdin.isatty() and sys.stdout.isatty():
        argv = ["tui"]  # `agent` alone at a terminal opens the app
    if command := find_command(argv):
        return command.main(argv[len(command.words) :], "agent " + " ".join(command.words))
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return ExitCode.OK
    groups = {c.words[0] for c in COMMANDS if len(c.words) > 1}
    if argv and argv[0] in groups:
        print(usage((argv[0],)), file=sys.stderr)
        return ExitCode.USAGE
    if argv:
        names = sorted({c.words[0] for c in COMMANDS})
        close = difflib.get_close_matches(argv[0], names, n=1)
        hint = f"; did you mean `agent {close[0]}`?" if close else f"; commands: {', '.join(names)}"
        print(f"agent: unknown command {argv[0]!r}{hint}", file=sys.stderr)
        return ExitCode.USAGE
    print(usage())  # `agent` alone in a pipe or a script: the help, as before
    return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
